//! Protecting OrionVM and the proxy: rate limits per principal (or source address) with the
//! IETF RateLimit fields, coalescing and a micro-cache for polled reads. (The budget toward
//! OrionVM and the circuit breaker of each endpoint are in `crate::upstream`.)
//!
//! The proxy calls in from its phases: [`admit`] (rate limits, in `request_filter` before the
//! body is read), [`before_upstream`] (breaker fallback, cached reads, invalidation),
//! [`response_headers`] and [`finish`]. Everything is skipped when `limits.enabled` is false.

/// The limits' part of the process state (`runtime::State`).
#[derive(Default)]
pub struct LimitsState {}

pub mod cache;
pub mod rate;

use crate::config::limits::{self as config, Fallback, LimitsConfig};
use crate::config::model::{Config, RouteKind};
use crate::errors::{self, ApiError};
use crate::proxy::ctx::Ctx;
use crate::proxy::respond;
use crate::routes::RouteTable;
use pingora::http::ResponseHeader;
use pingora_proxy::Session;
use rate::{Policy, Verdicts};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

static KEY_HASHER: once_cell::sync::Lazy<std::collections::hash_map::RandomState> =
    once_cell::sync::Lazy::new(Default::default);

/// Why the limits refused a request.
#[derive(Debug, Clone)]
pub enum LimitsError {
    /// A rate-limit policy's quota is used up.
    RateLimited {
        policy: Arc<str>,
        retry_after: u64,
        headers: Vec<(&'static str, String)>,
    },
}

impl From<LimitsError> for ApiError {
    fn from(e: LimitsError) -> ApiError {
        match e {
            LimitsError::RateLimited {
                policy,
                retry_after,
                headers,
            } => {
                crate::metrics::rate_limited(&policy);
                let mut err = ApiError::new(
                    429,
                    "rate_limited",
                    "Too many requests",
                    format!("the quota of policy '{policy}' is used up; retry in {retry_after} s"),
                )
                .with_detail_entry("policy", policy.to_string())
                .with_retry_after(retry_after);
                err.headers = headers;
                err
            }
        }
    }
}

/// The limits' part of the per-request context.
#[derive(Default)]
pub struct RequestLimits {
    /// The policies' verdicts, for the response fields.
    pub verdicts: Verdicts,
    /// The route is a cached read: charged only when it calls OrionVM.
    pub cached: bool,
}

struct RoutePlan {
    policies: Vec<u16>,
    cached: bool,
}

/// The limits built from one config.
pub struct Limits {
    pub enabled: bool,
    legacy: bool,
    policies: Vec<Policy>,
    default_policy: Vec<u16>,
    anonymous_policy: Vec<u16>,
    roles: HashMap<String, Vec<u16>>,
    routes: HashMap<String, RoutePlan>,
    pub cache: Option<cache::Settings>,
    pub fallback: Fallback,
}

/// `*` matches any run of characters.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            if !tail.contains('*') {
                return rest.len() >= tail.len() && rest.ends_with(tail);
            }
            (0..=rest.len()).any(|i| rest.is_char_boundary(i) && glob(tail, &rest[i..]))
        }
    }
}

impl Limits {
    pub fn build(
        config: &Config,
        routes: Option<&RouteTable>,
        role_names: &[&str],
    ) -> Result<Limits, Vec<String>> {
        let c: &LimitsConfig = &config.limits;
        let mut errors = Vec::new();
        let mut policies = Vec::new();
        let mut index: HashMap<&str, u16> = HashMap::new();
        for (name, p) in &c.policies {
            let at = format!("limits.policies.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "_-.".contains(ch))
            {
                errors.push(format!(
                    "{at}: a policy name is letters, digits, '_', '-' or '.'"
                ));
            }
            if p.quota == 0 {
                errors.push(format!("{at}.quota: must be at least 1"));
            }
            if !(1..=86_400).contains(&p.window_seconds) {
                errors.push(format!("{at}.window_seconds: must be between 1 and 86400"));
            }
            if policies.len() >= u16::MAX as usize {
                errors.push(format!("{at}: too many policies"));
                break;
            }
            index.insert(name.as_str(), policies.len() as u16);
            policies.push(Policy::new(
                name,
                p.quota.max(1),
                p.window_seconds.clamp(1, 86_400),
            ));
        }
        let resolve = |at: &str, names: Vec<&str>, errors: &mut Vec<String>| -> Vec<u16> {
            if names.len() > 4 {
                errors.push(format!("{at}: at most 4 policies"));
            }
            names
                .into_iter()
                .filter_map(|n| match index.get(n) {
                    Some(i) => Some(*i),
                    None => {
                        errors.push(format!("{at}: unknown policy '{n}'"));
                        None
                    }
                })
                .collect()
        };
        let default_policy = c
            .default_policy
            .as_deref()
            .map(|n| resolve("limits.default_policy", vec![n], &mut errors))
            .unwrap_or_default();
        let anonymous_policy = c
            .anonymous_policy
            .as_deref()
            .map(|n| resolve("limits.anonymous_policy", vec![n], &mut errors))
            .unwrap_or_default();
        let mut roles = HashMap::new();
        for (role, r) in &c.roles {
            let at = format!("limits.roles.{role}");
            if !role_names.contains(&role.as_str()) {
                errors.push(format!("{at}: unknown role '{role}'"));
            }
            roles.insert(role.clone(), resolve(&at, r.names(), &mut errors));
        }
        let mut patterns = Vec::new();
        for (pattern, r) in &c.routes {
            let at = format!("limits.routes.{pattern}");
            let ids = resolve(&at, r.names(), &mut errors);
            if let Some(table) = routes
                && !table.routes().iter().any(|rt| glob(pattern, &rt.name))
            {
                errors.push(format!("{at}: matches no route"));
            }
            patterns.push((pattern.as_str(), ids));
        }
        let mut plans = HashMap::new();
        let cache_on = c.enabled && c.cache.enabled;
        if let Some(table) = routes {
            // The shipped list may name routes that a custom route table left out.
            let explicit = c.cache.routes != config::CacheConfig::default().routes;
            for (i, name) in c.cache.routes.iter().enumerate() {
                match table.routes().iter().find(|r| &*r.name == name) {
                    Some(r) if r.method == http::Method::GET && r.kind == RouteKind::Mirror => {}
                    Some(_) => errors.push(format!(
                        "limits.cache.routes[{i}]: '{name}' is not a GET route forwarded to OrionVM"
                    )),
                    None if explicit => {
                        errors.push(format!("limits.cache.routes[{i}]: unknown route '{name}'"))
                    }
                    None => {}
                }
            }
            for r in table.routes() {
                // An exact name wins; otherwise the longest matching pattern.
                let chosen = patterns
                    .iter()
                    .filter(|(p, _)| glob(p, &r.name))
                    .max_by_key(|(p, _)| (!p.contains('*'), p.len()))
                    .map(|(_, ids)| ids.clone())
                    .unwrap_or_default();
                let cached = cache_on && c.cache.routes.iter().any(|n| *n == *r.name);
                if !chosen.is_empty() || cached {
                    plans.insert(
                        r.name.to_string(),
                        RoutePlan {
                            policies: chosen,
                            cached,
                        },
                    );
                }
            }
        }
        let cc = &c.cache;
        if cc.ttl_ms > 60_000 {
            errors.push("limits.cache.ttl_ms: must be at most 60000".into());
        }
        if cc.max_entries == 0 {
            errors.push("limits.cache.max_entries: must be at least 1".into());
        }
        let b = &c.breaker;
        if b.failure_threshold == 0 {
            errors.push("limits.breaker.failure_threshold: must be at least 1".into());
        }
        if !(b.reset_timeout_seconds > 0.0 && b.reset_timeout_seconds <= 3600.0) {
            errors.push(
                "limits.breaker.reset_timeout_seconds: must be above 0 and at most 3600".into(),
            );
        }
        if b.half_open_probes == 0 {
            errors.push("limits.breaker.half_open_probes: must be at least 1".into());
        }
        if let Err(e) = crate::upstream::budget::validate(&c.upstream, "limits.upstream") {
            errors.extend(e);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Limits {
            enabled: c.enabled,
            legacy: c.legacy_headers,
            policies,
            default_policy,
            anonymous_policy,
            roles,
            routes: plans,
            cache: cache_on.then(|| cache::Settings {
                ttl: Duration::from_millis(cc.ttl_ms),
                stale: Duration::from_secs(cc.stale_seconds),
                max_entries: cc.max_entries,
                max_body: cc.max_body_bytes,
            }),
            fallback: b.fallback,
        })
    }

    /// Charges (or, with `count` false, only reads) every policy that applies to the request.
    fn judge(&self, ctx: &Ctx, client_ip: Option<IpAddr>, count: bool) -> Verdicts {
        let mut out = Verdicts::default();
        let route_policies = ctx
            .route
            .as_ref()
            .and_then(|r| self.routes.get(&*r.name))
            .map(|p| p.policies.as_slice())
            .unwrap_or(&[]);
        #[derive(Hash)]
        enum Key<'a> {
            Principal(&'a str),
            Addr(Option<IpAddr>),
        }
        // Hashed once here; the sketch then hashes a u64 instead of the id, four times.
        let hashed = |k: Key| -> u64 {
            use std::hash::BuildHasher;
            KEY_HASHER.hash_one(k)
        };
        let (base, key): (&[u16], u64) = match &ctx.principal {
            Some(p) => {
                let by_role = p
                    .roles
                    .iter()
                    .find_map(|r| self.roles.get(&**r))
                    .map(Vec::as_slice);
                (
                    by_role.unwrap_or(&self.default_policy),
                    hashed(Key::Principal(&p.id)),
                )
            }
            None => (&self.anonymous_policy, hashed(Key::Addr(client_ip))),
        };
        for &i in base.iter().chain(route_policies.iter()) {
            if let Some(p) = self.policies.get(i as usize) {
                out.push(if count {
                    p.charge(i, &key)
                } else {
                    p.peek(i, &key)
                });
            }
        }
        out
    }

    fn refusal(&self, v: &Verdicts) -> Option<LimitsError> {
        let r = v.refusal()?;
        Some(LimitsError::RateLimited {
            policy: self.policies.get(r.policy as usize)?.name.clone(),
            retry_after: r.reset,
            headers: v.headers(&self.policies, self.legacy),
        })
    }
}

/// Rate limits, before the body is read. Cached reads are charged later, only when they call
/// OrionVM. Returns the 429 to answer with, if any.
pub fn admit(ctx: &mut Ctx, method: &http::Method, client_ip: Option<IpAddr>) -> Option<ApiError> {
    let (verdicts, refused) = {
        let limits = &ctx.runtime.as_ref()?.limits;
        if !limits.enabled {
            return None;
        }
        let plan = ctx.route.as_ref().and_then(|r| limits.routes.get(&*r.name));
        if *method == http::Method::GET && plan.is_some_and(|p| p.cached) {
            ctx.limits.cached = true;
            return None;
        }
        let verdicts = limits.judge(ctx, client_ip, true);
        let refused = limits.refusal(&verdicts);
        (verdicts, refused)
    };
    ctx.limits.verdicts = verdicts;
    refused.map(ApiError::from)
}

fn object_of(ctx: &Ctx) -> &str {
    ctx.params
        .iter()
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

fn is_mutation(m: &http::Method) -> bool {
    !matches!(
        *m,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// Before any upstream work: drop cached reads of an object being changed, answer fast when
/// every endpoint's breaker is open, and answer cached reads. `Ok(true)`: answered.
pub async fn before_upstream(session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
    // The common case (limits on, breaker closed, not a cached read) without a clone.
    {
        let Some(rt) = ctx.runtime.as_ref() else {
            return Ok(false);
        };
        if !rt.limits.enabled {
            return Ok(false);
        }
        let (Some(route), Some(tenant)) = (ctx.route.as_ref(), ctx.tenant.as_ref()) else {
            return Ok(false);
        };
        // Mirror and facade mutations alike drop the object's cached reads.
        if is_mutation(&session.req_header().method) {
            cache::invalidate(&tenant.name, object_of(ctx));
        }
        if route.kind != RouteKind::Mirror {
            return Ok(false);
        }
        if !ctx.limits.cached && tenant.account.available() {
            return Ok(false);
        }
    }
    let (Some(rt), Some(tenant)) = (ctx.runtime.clone(), ctx.tenant.clone()) else {
        return Ok(false);
    };
    let limits = &rt.limits;
    let cached = ctx.limits.cached.then_some(limits.cache.as_ref()).flatten();
    let cache_path = |session: &Session, ctx: &Ctx| {
        let mut path = ctx.path.clone();
        if let Some(q) = session.req_header().uri.query() {
            path.push('?');
            path.push_str(q);
        }
        path
    };
    if !tenant.account.available() {
        if let (Some(settings), Fallback::Stale) = (cached, limits.fallback) {
            let group = cache::group_key(&tenant.name, object_of(ctx));
            if let Some(f) = cache::stale(settings, &group, &cache_path(session, ctx))
                && let Some((status, body)) = cache::body(&f)
            {
                let extra = [
                    ("x-cache", "stale".to_string()),
                    ("warning", "110 - \"Response is Stale\"".to_string()),
                ];
                let route_name = ctx.route.as_ref().map(|r| &*r.name).unwrap_or("unmatched");
                crate::metrics::cache_lookup(route_name, "stale");
                respond::json(session, ctx, status, body, &extra).await?;
                return Ok(true);
            }
        }
        let err: ApiError = tenant.account.refuse_open().into();
        respond::error(session, ctx, err).await?;
        return Ok(true);
    }
    let Some(settings) = cached else {
        return Ok(false);
    };
    let client_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let group = cache::group_key(&tenant.name, object_of(ctx));
    let path = cache_path(session, ctx);
    let wait = tenant
        .account
        .endpoints
        .first()
        .map(|e| e.connect_timeout + e.read_timeout)
        .unwrap_or(Duration::from_secs(30))
        + tenant
            .account
            .budget
            .as_ref()
            .map(|b| b.max_wait)
            .unwrap_or_default()
        + Duration::from_secs(1);
    let mut charged = None;
    let served = {
        let ctx_ref: &Ctx = ctx;
        cache::serve(
            settings,
            &tenant.account,
            group,
            path,
            &ctx_ref.request_id,
            wait,
            || {
                let v = limits.judge(ctx_ref, client_ip, true);
                let refused = limits.refusal(&v);
                charged = Some(v);
                match refused {
                    Some(e) => Err(Box::new(e.into())),
                    None => Ok(()),
                }
            },
        )
        .await
    };
    ctx.limits.verdicts = match charged {
        Some(v) => v,
        None => limits.judge(ctx, client_ip, false),
    };
    let served = match served {
        Ok(s) => s,
        Err(err) => {
            respond::error(session, ctx, err).await?;
            return Ok(true);
        }
    };
    let (label, filled) = match served {
        cache::Served::Hit(f) => ("hit", f),
        cache::Served::Coalesced(f) => ("coalesced", f),
        cache::Served::Miss(f) => {
            if let Ok(a) = &f.outcome {
                ctx.upstream.status = Some(a.status);
                ctx.upstream.elapsed = Some(a.elapsed);
            }
            ("miss", f)
        }
    };
    let route_name = ctx.route.as_ref().map(|r| &*r.name).unwrap_or("unmatched");
    match label {
        "coalesced" => crate::metrics::coalesced(route_name),
        other => crate::metrics::cache_lookup(route_name, other),
    }
    let mut extra = limits.response_fields(&ctx.limits.verdicts);
    extra.push(("x-cache", label.to_string()));
    match &filled.outcome {
        Ok(a) if a.status < 400 => {
            respond::json(session, ctx, a.status, a.body.clone(), &extra).await?;
        }
        Ok(a) => {
            let mut err = if a.status == 401 {
                ApiError::bad_gateway(
                    "upstream_auth_failed",
                    "OrionVM refused the proxy's credentials",
                )
            } else {
                errors::from_upstream(a.status, &a.body)
            };
            err.headers.extend(extra);
            respond::error(session, ctx, err).await?;
        }
        Err(e) => {
            let mut err = e.clone();
            err.headers.extend(extra);
            respond::error(session, ctx, err).await?;
        }
    }
    Ok(true)
}

impl Limits {
    fn response_fields(&self, v: &Verdicts) -> Vec<(&'static str, String)> {
        v.headers(&self.policies, self.legacy)
    }
}

/// Adds the rate-limit fields to an answer from OrionVM.
pub fn response_headers(ctx: &Ctx, resp: &mut ResponseHeader) -> pingora::Result<()> {
    if ctx.limits.verdicts.is_empty() {
        return Ok(());
    }
    let Some(rt) = ctx.runtime.as_ref() else {
        return Ok(());
    };
    ctx.limits
        .verdicts
        .apply(&rt.limits.policies, rt.limits.legacy, resp)
}

/// At the end of the request: drop cached reads of an object that was just changed (a read
/// that raced the change must not outlive it).
pub fn finish(ctx: &mut Ctx, method: &http::Method) {
    if is_mutation(method)
        && let Some(t) = &ctx.tenant
        && ctx.runtime.as_ref().is_some_and(|rt| rt.limits.enabled)
    {
        cache::invalidate(&t.name, object_of(ctx));
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn patterns() {
        assert!(glob("instances.*", "instances.start"));
        assert!(glob("*", "anything"));
        assert!(glob("*.state", "disks.state"));
        assert!(glob("instances.*.get", "instances.context.get"));
        assert!(!glob("instances.*", "disks.get"));
        assert!(glob("instances.start", "instances.start"));
        assert!(!glob("instances.start", "instances.stop"));
    }
}
