//! Protecting OrionVM and the proxy: rate limits per principal (or source address) with the
//! IETF RateLimit fields, coalescing and a micro-cache for polled reads, the budget toward
//! OrionVM and the circuit breaker of each endpoint.
//!
//! The limits decide; the proxy writes. The proxy calls in from its phases with a
//! [`RequestView`] and the request's [`RequestLimits`]: [`admit`] (rate limits, in
//! `request_filter` before the body is read), [`before_upstream`] (breaker fallback, cached
//! reads, invalidation; returns a [`Decision`]), [`response_fields`], [`upstream_done`] and
//! [`finish`]. Everything is skipped when `limits.enabled` is false.
//!
//! State that outlives a request (the counters, the micro-cache and its coalescing groups) is
//! in [`LimitsState`], owned by the process state; [`Limits::build`] reads it, never changes it.

pub mod breaker;
pub mod budget;
pub mod cache;
pub mod rate;

use crate::config::limits::{self as config, Fallback, LimitsConfig};
use crate::config::model::{Config, RouteKind};
use crate::request::{Decision, Reply, RequestView};
use crate::routes::RouteTable;
use crate::store::{Counters, Stores};
use crate::upstream::client::CallError;
use bytes::Bytes;
use cache::{MicroCache, ServeError, Served};
use rate::{Fields, Policy, Verdicts};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

/// The limits' part of the process state (`runtime::State`): the rate counters (through the
/// state's counter backend) and the micro-cache with its coalescing groups. Both outlive
/// reloads: a reload hands out no fresh quota and keeps the cached reads.
pub struct LimitsState {
    counters: Arc<dyn Counters>,
    cache: Arc<MicroCache>,
}

impl LimitsState {
    /// The limits' state over the process' backends.
    pub fn new(stores: &Stores) -> LimitsState {
        LimitsState {
            counters: stores.counters.clone(),
            cache: Default::default(),
        }
    }

    /// The micro-cache (for tests and reports).
    pub fn cache(&self) -> &MicroCache {
        &self.cache
    }
}

impl Default for LimitsState {
    /// In-memory counters of its own.
    fn default() -> Self {
        LimitsState::new(&Stores::memory())
    }
}

/// Why the limits refused a request, or why a cached read got no good answer.
#[derive(Debug, Clone)]
pub enum LimitsError {
    /// A rate-limit policy's quota is used up.
    RateLimited {
        policy: Arc<str>,
        retry_after: u64,
        headers: Vec<(&'static str, String)>,
    },
    /// The budget toward OrionVM stayed full for the whole wait.
    Busy { reason: &'static str },
    /// The breaker of every endpoint is open.
    Open { retry_after: u64 },
    /// OrionVM answered a cached read with an error: its status and body as sent (the error
    /// layer normalises them), and the fields to add to the answer.
    Answered {
        status: u16,
        body: Bytes,
        headers: Vec<(&'static str, String)>,
    },
    /// The shared call of a cached read failed.
    Call {
        error: Box<CallError>,
        headers: Vec<(&'static str, String)>,
    },
    /// Waiting for the shared call of a cached read failed.
    Wait(WaitFailure),
}

/// How waiting for a shared call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFailure {
    /// It did not end within the wait limit.
    Timeout,
    /// It was dropped before it answered.
    Abandoned,
    /// It ended without an answer.
    Lost,
}

/// The limits' part of the per-request context.
#[derive(Default)]
pub struct RequestLimits {
    /// The claim on an OrionVM endpoint of the current attempt.
    pub attempt: Option<crate::upstream::Attempt>,
    /// The policies' verdicts, for the response fields.
    pub verdicts: Verdicts,
    /// The route is a cached read: charged only when it calls OrionVM.
    pub cached: bool,
    /// OrionVM's status and the call's duration when this request's own call answered it (a
    /// cache miss), for the logs.
    pub upstream_answer: Option<(u16, Duration)>,
}

impl RequestLimits {
    pub fn release_budget(&mut self) {
        if let Some(a) = self.attempt.as_mut() {
            a.release_budget();
        }
    }
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
    /// From the state: the counter backend and the micro-cache.
    counters: Arc<dyn Counters>,
    micro: Arc<MicroCache>,
}

pub fn breaker_settings(c: &config::BreakerConfig) -> breaker::Settings {
    breaker::Settings {
        threshold: c.failure_threshold.max(1),
        reset_timeout: Duration::from_secs_f64(c.reset_timeout_seconds.clamp(0.001, 3600.0)),
        probes: c.half_open_probes.max(1),
    }
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
    /// Validates the `limits:` section into the limits of one config. Reads `state` (the
    /// counters and the micro-cache are handed over), never changes it.
    pub fn build(
        config: &Config,
        routes: Option<&RouteTable>,
        role_names: &[&str],
        state: &LimitsState,
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
        if let Err(e) = budget::Budget::build(&c.upstream, "limits.upstream") {
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
            counters: state.counters.clone(),
            micro: state.cache.clone(),
        })
    }

    /// The policies that apply to the request: the caller's (by role, else the default;
    /// without a principal the anonymous policy) and the route's.
    fn applying<'a>(&'a self, req: &RequestView<'_>) -> impl Iterator<Item = u16> + 'a {
        let route: &[u16] = req
            .route
            .and_then(|r| self.routes.get(&*r.name))
            .map(|p| p.policies.as_slice())
            .unwrap_or(&[]);
        let base: &[u16] = match req.principal {
            Some(p) => p
                .roles
                .iter()
                .find_map(|r| self.roles.get(&**r))
                .map(Vec::as_slice)
                .unwrap_or(&self.default_policy),
            None => &self.anonymous_policy,
        };
        base.iter().chain(route.iter()).copied()
    }

    /// Charges (or, with `count` false, only reads) every policy that applies, when the
    /// counter backend counts synchronously (memory); `None` otherwise.
    fn judge_now(&self, req: &RequestView<'_>, count: bool) -> Option<Verdicts> {
        let memory = self.counters.as_memory()?;
        let mut out = Verdicts::default();
        let mut key = None;
        for i in self.applying(req) {
            let Some(p) = self.policies.get(i as usize) else {
                continue;
            };
            let key = key.get_or_insert_with(|| counter_key(req));
            let w = p.memory_window(memory);
            let c = if count { w.hit(key, 1) } else { w.peek(key) };
            out.push(p.verdict(i, c, count));
        }
        Some(out)
    }

    /// Charges (or only reads) every policy that applies, through whatever backend. A policy
    /// whose backend fails is not enforced for this request (logged): an unreachable counter
    /// store does not take the API down.
    async fn judge(&self, req: &RequestView<'_>, count: bool) -> Verdicts {
        if let Some(v) = self.judge_now(req, count) {
            return v;
        }
        let mut out = Verdicts::default();
        let key = counter_key(req);
        for i in self.applying(req) {
            let Some(p) = self.policies.get(i as usize) else {
                continue;
            };
            let got = if count {
                self.counters.hit(&p.name, p.window, &key, 1).await
            } else {
                self.counters.peek(&p.name, p.window, &key).await
            };
            match got {
                Ok(c) => out.push(p.verdict(i, c, count)),
                Err(e) => log::warn!(
                    "request {}: rate-limit policy '{}' not counted: {e}",
                    req.request_id,
                    p.name
                ),
            }
        }
        out
    }

    /// The refusal of charged verdicts, if any, counted in the metrics here.
    fn refuse(&self, v: &Verdicts) -> Option<LimitsError> {
        let r = v.refusal()?;
        let policy = self.policies.get(r.policy as usize)?.name.clone();
        crate::metrics::rate_limited(&policy);
        Some(LimitsError::RateLimited {
            policy,
            retry_after: r.reset,
            headers: v.headers(&self.policies, self.legacy),
        })
    }

    /// Whether the route's GETs are coalesced and cached.
    fn is_cached_read(&self, req: &RequestView<'_>) -> bool {
        *req.method == http::Method::GET
            && req
                .route
                .and_then(|r| self.routes.get(&*r.name))
                .is_some_and(|p| p.cached)
    }
}

/// The stable key that a request is counted under: the principal's id, or the source address
/// for requests without one. Never a per-process hash: a shared backend counts the same key on
/// every node.
fn counter_key(req: &RequestView<'_>) -> String {
    match req.principal {
        Some(p) => {
            let mut k = String::with_capacity(10 + p.id.len());
            k.push_str("principal:");
            k.push_str(&p.id);
            k
        }
        None => {
            let mut k = String::with_capacity(5 + 39);
            k.push_str("addr:");
            match req.client_ip {
                Some(ip) => {
                    let _ = write!(k, "{ip}");
                }
                None => k.push_str("unknown"),
            }
            k
        }
    }
}

/// Rate limits, before the body is read. Cached reads are charged later, only when they call
/// OrionVM ([`before_upstream`]). `Err`: answer with the refusal (429).
pub async fn admit(
    limits: &Limits,
    req: &RequestView<'_>,
    rl: &mut RequestLimits,
) -> Result<(), LimitsError> {
    if !limits.enabled {
        return Ok(());
    }
    if limits.is_cached_read(req) {
        rl.cached = true;
        return Ok(());
    }
    rl.verdicts = limits.judge(req, true).await;
    match limits.refuse(&rl.verdicts) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn object_of<'a>(req: &RequestView<'a>) -> &'a str {
    req.param("id").unwrap_or("")
}

/// Before any upstream work: drop cached reads of an object being changed, answer fast when
/// every endpoint's breaker is open (with the last good answer under `fallback: stale`), and
/// answer cached reads (from the cache, a shared call or this request's own call).
pub async fn before_upstream(
    limits: &Limits,
    req: &RequestView<'_>,
    rl: &mut RequestLimits,
) -> Decision<LimitsError> {
    if !limits.enabled {
        return Decision::Continue;
    }
    let (Some(route), Some(tenant)) = (req.route, req.tenant) else {
        return Decision::Continue;
    };
    // Mirror and facade mutations alike drop the object's cached reads.
    if req.is_mutation() {
        limits.micro.invalidate(&tenant.name, object_of(req));
    }
    if route.kind != RouteKind::Mirror {
        return Decision::Continue;
    }
    let available = tenant.account.available();
    if !rl.cached && available {
        return Decision::Continue;
    }
    let settings = if rl.cached {
        limits.cache.as_ref()
    } else {
        None
    };
    let cache_path = || {
        let mut path = String::with_capacity(req.path.len() + 1 + req.query.map_or(0, str::len));
        path.push_str(req.path);
        if let Some(q) = req.query {
            path.push('?');
            path.push_str(q);
        }
        path
    };
    if !available {
        if let (Some(settings), Fallback::Stale) = (settings, limits.fallback) {
            let group = cache::group_key(&tenant.name, object_of(req));
            if let Some((status, body)) = limits
                .micro
                .stale(settings, &group, &cache_path())
                .and_then(|f| f.body())
            {
                crate::metrics::cache_lookup(req.route_name(), "stale");
                return Decision::Reply(
                    Reply::json(status, body)
                        .with_header("x-cache", "stale")
                        .with_header("warning", "110 - \"Response is Stale\""),
                );
            }
        }
        crate::metrics::upstream_refused("open");
        return Decision::Fail(LimitsError::Open {
            retry_after: tenant.account.retry_after(),
        });
    }
    let Some(settings) = settings else {
        return Decision::Continue;
    };
    let account = &tenant.account;
    let wait = account
        .endpoints
        .first()
        .map(|e| e.connect_timeout + e.read_timeout)
        .unwrap_or(Duration::from_secs(30))
        + account
            .budget
            .as_ref()
            .map(|b| b.max_wait)
            .unwrap_or_default()
        + Duration::from_secs(1);
    let mut charged = None;
    let served = limits
        .micro
        .serve(
            settings,
            account,
            cache::group_key(&tenant.name, object_of(req)),
            cache_path(),
            req.request_id,
            wait,
            &mut charged,
            || limits.judge_now(req, true),
            limits.judge(req, true),
        )
        .await;
    rl.verdicts = match charged {
        Some(v) => v,
        None => limits.judge(req, false).await,
    };
    let (label, filled) = match served {
        Ok(Served::Hit(f)) => ("hit", f),
        Ok(Served::Coalesced(f)) => ("coalesced", f),
        Ok(Served::Miss(f)) => {
            if let Ok(a) = &f.outcome {
                rl.upstream_answer = Some((a.status, a.elapsed));
            }
            ("miss", f)
        }
        Err(ServeError::Refused) => {
            return match limits.refuse(&rl.verdicts) {
                Some(e) => Decision::Fail(e),
                None => Decision::Fail(LimitsError::Wait(WaitFailure::Lost)),
            };
        }
        Err(ServeError::Timeout) => return Decision::Fail(LimitsError::Wait(WaitFailure::Timeout)),
        Err(ServeError::Abandoned) => {
            return Decision::Fail(LimitsError::Wait(WaitFailure::Abandoned));
        }
        Err(ServeError::Lost) => return Decision::Fail(LimitsError::Wait(WaitFailure::Lost)),
    };
    match label {
        "coalesced" => crate::metrics::coalesced(req.route_name()),
        other => crate::metrics::cache_lookup(req.route_name(), other),
    }
    let mut headers = rl.verdicts.headers(&limits.policies, limits.legacy);
    headers.push(("x-cache", label.to_string()));
    match &filled.outcome {
        Ok(a) if a.status < 400 => Decision::Reply(Reply {
            status: a.status,
            headers,
            body: a.body.clone(),
        }),
        Ok(a) => Decision::Fail(LimitsError::Answered {
            status: a.status,
            body: a.body.clone(),
            headers,
        }),
        Err(e) => Decision::Fail(LimitsError::Call {
            error: Box::new(e.clone()),
            headers,
        }),
    }
}

/// The rate-limit fields for an answer from OrionVM (none when no policy applied).
pub fn response_fields(limits: &Limits, rl: &RequestLimits) -> Fields {
    if rl.verdicts.is_empty() || !limits.enabled {
        return Fields::default();
    }
    rl.verdicts.fields(&limits.policies, limits.legacy)
}

/// The upstream answer is complete: its concurrency slot is free for the next call.
pub fn upstream_done(rl: &mut RequestLimits) {
    rl.release_budget();
}

/// At the end of the request: drop cached reads of an object that was just changed (a read
/// that raced the change must not outlive it).
pub fn finish(limits: &Limits, req: &RequestView<'_>) {
    if limits.enabled
        && req.is_mutation()
        && let Some(t) = req.tenant
    {
        limits.micro.invalidate(&t.name, object_of(req));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::permissions::{PermissionRegistry, PermissionSet};
    use crate::auth::principal::{CredentialKind, Principal};
    use crate::routes::{Match, Route};
    use crate::upstream::{Tenant, UpstreamState, Upstreams};
    use http::Method;
    use std::net::IpAddr;

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

    /// A config with one account on `upstream`, tenant `acme`, and the `limits:` text given;
    /// the shipped routes and roles.
    struct World {
        config: Config,
        routes: RouteTable,
        upstreams: Upstreams,
        _dir: tempfile::TempDir,
    }

    const ROLES: &[&str] = &["viewer", "operator", "admin"];

    fn world(upstream: &str, limits: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "sim-static-token").unwrap();
        let text = format!(
            "accounts:\n  main:\n    endpoints:\n      - {{url: \"{upstream}\"}}\n    credentials:\n      type: static_token\n      token: {{file: \"{}\"}}\ntenants:\n  acme: {{account: main}}\n{limits}",
            token.display()
        );
        let config = crate::config::parse(&text).unwrap();
        let defaults = crate::config::defaults().unwrap();
        let routes = RouteTable::build(&defaults.routes, &mut PermissionRegistry::default())
            .map_err(|e| e.join("; "))
            .unwrap();
        let upstreams = Upstreams::build(&config, &UpstreamState::default(), None).unwrap();
        World {
            config,
            routes,
            upstreams,
            _dir: dir,
        }
    }

    impl World {
        fn limits(&self, state: &LimitsState) -> Limits {
            Limits::build(&self.config, Some(&self.routes), ROLES, state)
                .map_err(|e| e.join("; "))
                .unwrap()
        }

        fn tenant(&self) -> Arc<Tenant> {
            self.upstreams.tenants["acme"].clone()
        }

        /// A request as the proxy would describe it (tenant set when there is a principal).
        fn req(&self, method: Method, target: &str, principal: Option<Arc<Principal>>) -> Req {
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_string(), Some(q.to_string())),
                None => (target.to_string(), None),
            };
            let (route, params) = match self.routes.find(&method, &path) {
                Match::Found(r, params) => (Some(r.clone()), params),
                _ => panic!("no route for {method} {path}"),
            };
            Req {
                tenant: principal.as_ref().map(|_| self.tenant()),
                method,
                path,
                query,
                headers: http::HeaderMap::new(),
                route,
                params,
                principal,
                ip: Some("192.0.2.7".parse().unwrap()),
            }
        }
    }

    struct Req {
        method: Method,
        path: String,
        query: Option<String>,
        headers: http::HeaderMap,
        route: Option<Arc<Route>>,
        params: Vec<(String, String)>,
        principal: Option<Arc<Principal>>,
        tenant: Option<Arc<Tenant>>,
        ip: Option<IpAddr>,
    }

    impl Req {
        fn view(&self) -> RequestView<'_> {
            RequestView {
                method: &self.method,
                path: &self.path,
                query: self.query.as_deref(),
                headers: &self.headers,
                route: self.route.as_ref(),
                params: &self.params,
                principal: self.principal.as_ref(),
                tenant: self.tenant.as_ref(),
                client_ip: self.ip,
                request_id: "test-request",
            }
        }

        fn from(mut self, ip: &str) -> Req {
            self.ip = Some(ip.parse().unwrap());
            self
        }
    }

    fn principal(id: &str, roles: &[&str]) -> Option<Arc<Principal>> {
        Some(Arc::new(Principal {
            id: id.into(),
            kind: CredentialKind::ApiKey,
            roles: roles.iter().map(|r| Arc::from(*r)).collect(),
            tenant: "acme".into(),
            permissions: PermissionSet::default(),
        }))
    }

    /// `(policy, remaining)` of each verdict.
    fn counted(limits: &Limits, rl: &RequestLimits) -> Vec<(String, u64)> {
        rl.verdicts
            .iter()
            .map(|v| {
                (
                    limits.policies[v.policy as usize].name.to_string(),
                    v.remaining,
                )
            })
            .collect()
    }

    async fn admitted(limits: &Limits, req: &Req) -> (Result<(), LimitsError>, RequestLimits) {
        let mut rl = RequestLimits::default();
        let r = admit(limits, &req.view(), &mut rl).await;
        (r, rl)
    }

    const POLICIES: &str = "limits:
  policies:
    default: {quota: 100, window_seconds: 60}
    power: {quota: 50, window_seconds: 60}
    anon: {quota: 10, window_seconds: 60}
    burst: {quota: 20, window_seconds: 10}
    start: {quota: 3, window_seconds: 60}
  default_policy: default
  anonymous_policy: anon
  roles:
    operator: power
  routes:
    \"instances.*\": burst
    instances.start: start
";

    #[tokio::test]
    async fn policies_by_role_default_anonymous_and_route() {
        let w = world("http://127.0.0.1:9", POLICIES);
        let limits = w.limits(&LimitsState::default());
        let viewer = principal("key:viewer", &["viewer"]);
        let operator = principal("key:operator", &["operator"]);
        let names = |rl: &RequestLimits| -> Vec<String> {
            counted(&limits, rl).into_iter().map(|(n, _)| n).collect()
        };

        // No role of the caller names a policy: the default, plus the route pattern's.
        let (r, rl) = admitted(
            &limits,
            &w.req(Method::GET, "/api/v1/instances", viewer.clone()),
        )
        .await;
        assert!(r.is_ok());
        assert_eq!(names(&rl), ["default", "burst"]);
        // A role's policy replaces the default.
        let (_, rl) = admitted(&limits, &w.req(Method::GET, "/api/v1/instances", operator)).await;
        assert_eq!(names(&rl), ["power", "burst"]);
        // An exact route name wins over a pattern.
        let start = w.req(Method::POST, "/api/v1/instances/i-1/start", viewer.clone());
        let (_, rl) = admitted(&limits, &start).await;
        assert_eq!(names(&rl), ["default", "start"]);
        // A route no pattern matches: the caller's policy only.
        let (_, rl) = admitted(
            &limits,
            &w.req(Method::GET, "/api/v1/disks", viewer.clone()),
        )
        .await;
        assert_eq!(names(&rl), ["default"]);
        // No principal: the anonymous policy, per source address.
        let health = || w.req(Method::GET, "/health", None);
        let (_, rl) = admitted(&limits, &health()).await;
        assert_eq!(counted(&limits, &rl), [("anon".to_string(), 9)]);
        let (_, rl) = admitted(&limits, &health()).await;
        assert_eq!(counted(&limits, &rl), [("anon".to_string(), 8)]);
        let (_, rl) = admitted(&limits, &health().from("198.51.100.1")).await;
        assert_eq!(counted(&limits, &rl), [("anon".to_string(), 9)]);
        // Cached reads are not charged before the cache is asked.
        let (r, rl) = admitted(
            &limits,
            &w.req(Method::GET, "/api/v1/instances/i-1", viewer),
        )
        .await;
        assert!(r.is_ok() && rl.cached && rl.verdicts.is_empty());

        // Limits off: nothing counted.
        let mut off = w.config.clone();
        off.limits.enabled = false;
        let limits = Limits::build(&off, Some(&w.routes), ROLES, &LimitsState::default()).unwrap();
        let (r, rl) = admitted(&limits, &health()).await;
        assert!(r.is_ok() && rl.verdicts.is_empty());
    }

    #[tokio::test]
    async fn the_quota_counts_down_then_refuses_with_the_fields() {
        let w = world(
            "http://127.0.0.1:9",
            "limits:\n  legacy_headers: true\n  policies:\n    default: {quota: 3, window_seconds: 60}\n",
        );
        let limits = w.limits(&LimitsState::default());
        let alice = w.req(
            Method::GET,
            "/api/v1/instances",
            principal("key:alice", &["viewer"]),
        );
        for expected in [2, 1, 0] {
            let (r, rl) = admitted(&limits, &alice).await;
            assert!(r.is_ok());
            assert_eq!(counted(&limits, &rl), [("default".to_string(), expected)]);
            let fields: HashMap<_, _> = response_fields(&limits, &rl).into_iter().collect();
            assert_eq!(fields["ratelimit-policy"], "\"default\";q=3;w=60");
            assert!(
                fields["ratelimit"]
                    .to_str()
                    .unwrap()
                    .starts_with(&format!("\"default\";r={expected};t="))
            );
            assert_eq!(
                fields["x-ratelimit-remaining"],
                expected.to_string().as_str()
            );
        }
        let (r, _) = admitted(&limits, &alice).await;
        let Err(LimitsError::RateLimited {
            policy,
            retry_after,
            headers,
        }) = r
        else {
            panic!("expected a refusal, got {r:?}");
        };
        assert_eq!(&*policy, "default");
        assert!((1..=60).contains(&retry_after));
        let headers: HashMap<_, _> = headers.into_iter().collect();
        assert_eq!(headers["ratelimit-policy"], "\"default\";q=3;w=60");
        assert_eq!(
            headers["ratelimit"],
            format!("\"default\";r=0;t={retry_after}")
        );
        assert_eq!(headers["x-ratelimit-limit"], "3");
        // Another principal has a quota of its own.
        let bob = w.req(
            Method::GET,
            "/api/v1/instances",
            principal("key:bob", &["viewer"]),
        );
        let (r, rl) = admitted(&limits, &bob).await;
        assert!(r.is_ok());
        assert_eq!(counted(&limits, &rl), [("default".to_string(), 2)]);
    }

    #[tokio::test]
    async fn counts_survive_a_rebuild_against_the_same_state() {
        let w = world(
            "http://127.0.0.1:9",
            "limits:\n  policies:\n    default: {quota: 5, window_seconds: 60}\n",
        );
        let state = LimitsState::default();
        let alice = w.req(
            Method::GET,
            "/api/v1/instances",
            principal("key:alice", &["viewer"]),
        );
        let first = w.limits(&state);
        for _ in 0..3 {
            assert!(admitted(&first, &alice).await.0.is_ok());
        }
        // A reload builds new limits against the same state: no fresh quota.
        let second = w.limits(&state);
        drop(first);
        let (_, rl) = admitted(&second, &alice).await;
        assert_eq!(counted(&second, &rl), [("default".to_string(), 1)]);
        // The counts are in the state's backend, under a stable key.
        let counters = state.counters.as_memory().unwrap();
        let c = counters.peek_now("default", Duration::from_secs(60), "principal:key:alice");
        assert_eq!(c.count, 4);
        // Another state shares nothing.
        let other = w.limits(&LimitsState::default());
        let (_, rl) = admitted(&other, &alice).await;
        assert_eq!(counted(&other, &rl), [("default".to_string(), 4)]);
    }

    /// A counter backend that is not the memory one: the async path.
    struct Remote(
        crate::store::memory::MemoryCounters,
        std::sync::atomic::AtomicU64,
    );

    #[async_trait::async_trait]
    impl Counters for Remote {
        async fn hit(
            &self,
            scope: &str,
            window: Duration,
            key: &str,
            cost: u64,
        ) -> Result<crate::store::WindowCount, crate::store::StoreError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if key.contains("down") {
                return Err(crate::store::StoreError::Timeout);
            }
            self.0.hit(scope, window, key, cost).await
        }

        async fn peek(
            &self,
            scope: &str,
            window: Duration,
            key: &str,
        ) -> Result<crate::store::WindowCount, crate::store::StoreError> {
            self.0.peek(scope, window, key).await
        }
    }

    #[tokio::test]
    async fn another_backend_counts_through_the_trait_and_fails_open() {
        let w = world(
            "http://127.0.0.1:9",
            "limits:\n  policies:\n    default: {quota: 2, window_seconds: 60}\n",
        );
        let remote = Arc::new(Remote(Default::default(), Default::default()));
        let mut stores = Stores::memory();
        stores.counters = remote.clone();
        let limits = w.limits(&LimitsState::new(&stores));
        let alice = w.req(
            Method::GET,
            "/api/v1/instances",
            principal("key:alice", &["viewer"]),
        );
        assert!(admitted(&limits, &alice).await.0.is_ok());
        assert!(admitted(&limits, &alice).await.0.is_ok());
        assert!(matches!(
            admitted(&limits, &alice).await.0,
            Err(LimitsError::RateLimited { .. })
        ));
        assert_eq!(remote.1.load(std::sync::atomic::Ordering::Relaxed), 3);
        // The backend failing does not refuse the request.
        let down = w.req(
            Method::GET,
            "/api/v1/instances",
            principal("key:down", &["viewer"]),
        );
        let (r, rl) = admitted(&limits, &down).await;
        assert!(r.is_ok() && rl.verdicts.is_empty());
    }

    /// The simulator on a loopback port, and the id of an instance of its first account.
    async fn simulator() -> (crate::sim::SimHandle, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = crate::sim::start(listener, crate::sim::SimOptions::default())
            .await
            .unwrap();
        let list: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/instances", sim.url()))
            .bearer_auth("sim-static-token")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = list[0]["id"].as_str().unwrap().to_string();
        (sim, id)
    }

    const CACHED: &str = "limits:
  policies:
    default: {quota: 100, window_seconds: 60}
  cache: {ttl_ms: 60000}
  breaker: {failure_threshold: 1, reset_timeout_seconds: 60, fallback: stale}
";

    async fn before(limits: &Limits, req: &Req) -> (Decision<LimitsError>, RequestLimits) {
        let mut rl = RequestLimits::default();
        assert!(admit(limits, &req.view(), &mut rl).await.is_ok());
        let d = before_upstream(limits, &req.view(), &mut rl).await;
        (d, rl)
    }

    fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn reply(d: Decision<LimitsError>) -> Reply {
        match d {
            Decision::Reply(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn cached_reads_hit_coalesce_and_are_charged_only_on_a_miss() {
        let (sim, id) = simulator().await;
        let w = world(&sim.url(), CACHED);
        let state = LimitsState::default();
        let limits = w.limits(&state);
        let alice = principal("key:alice", &["viewer"]);
        let get = w.req(
            Method::GET,
            &format!("/api/v1/instances/{id}"),
            alice.clone(),
        );
        let calls = || sim.calls().count("GET", "/api/v1/instances/{id}");

        let (d, rl) = before(&limits, &get).await;
        let miss = reply(d);
        assert_eq!(miss.status, 200);
        assert_eq!(header(&miss, "x-cache"), Some("miss"));
        assert!(
            header(&miss, "ratelimit")
                .unwrap()
                .starts_with("\"default\";r=99;")
        );
        assert_eq!(rl.upstream_answer.map(|a| a.0), Some(200));
        assert_eq!(calls(), 1);

        let (d, rl) = before(&limits, &get).await;
        let hit = reply(d);
        assert_eq!(header(&hit, "x-cache"), Some("hit"));
        assert_eq!(hit.body, miss.body);
        // Not charged: the fields report where the caller stands.
        assert!(
            header(&hit, "ratelimit")
                .unwrap()
                .starts_with("\"default\";r=99;")
        );
        assert!(rl.upstream_answer.is_none());
        assert_eq!(calls(), 1);

        // Two identical reads at once (another query, so not in the cache): one call, one
        // charge.
        let fresh = w.req(
            Method::GET,
            &format!("/api/v1/instances/{id}?v=2"),
            alice.clone(),
        );
        let ((a, _), (b, _)) = tokio::join!(before(&limits, &fresh), before(&limits, &fresh));
        let (a, b) = (reply(a), reply(b));
        assert_eq!(header(&a, "x-cache"), Some("miss"));
        assert_eq!(header(&b, "x-cache"), Some("coalesced"));
        assert!(
            header(&b, "ratelimit")
                .unwrap()
                .starts_with("\"default\";r=98;")
        );
        assert_eq!(calls(), 2);

        // An upstream error is not cached: handed back as OrionVM's status and body.
        let missing = w.req(Method::GET, "/api/v1/instances/no-such-instance", alice);
        for _ in 0..2 {
            let (d, _) = before(&limits, &missing).await;
            match d {
                Decision::Fail(LimitsError::Answered {
                    status, headers, ..
                }) => {
                    assert_eq!(status, 404);
                    assert!(headers.contains(&("x-cache", "miss".to_string())));
                }
                other => panic!("expected OrionVM's error, got {other:?}"),
            }
        }
        assert_eq!(state.cache().len(), 3);
    }

    #[tokio::test]
    async fn cached_reads_through_another_backend_are_charged_only_on_a_miss() {
        let (sim, id) = simulator().await;
        let w = world(&sim.url(), CACHED);
        let remote = Arc::new(Remote(Default::default(), Default::default()));
        let mut stores = Stores::memory();
        stores.counters = remote.clone();
        let limits = w.limits(&LimitsState::new(&stores));
        let get = w.req(
            Method::GET,
            &format!("/api/v1/instances/{id}"),
            principal("key:alice", &["viewer"]),
        );
        let ((a, _), (b, _)) = tokio::join!(before(&limits, &get), before(&limits, &get));
        let mut seen: Vec<String> = [reply(a), reply(b)]
            .iter()
            .map(|r| header(r, "x-cache").unwrap_or_default().to_string())
            .collect();
        seen.sort();
        // Charged outside the map's lock, so the second may join the first's call after its
        // own charge, or be answered from the cache; never a second call.
        assert!(
            seen == ["coalesced", "miss"] || seen == ["hit", "miss"],
            "{seen:?}"
        );
        let hit = reply(before(&limits, &get).await.0);
        assert_eq!(header(&hit, "x-cache"), Some("hit"));
        assert_eq!(sim.calls().count("GET", "/api/v1/instances/{id}"), 1);
        assert!(remote.1.load(std::sync::atomic::Ordering::Relaxed) <= 2);
    }

    #[tokio::test]
    async fn a_mutation_of_the_object_drops_its_cached_reads() {
        let (sim, id) = simulator().await;
        let w = world(&sim.url(), CACHED);
        let state = LimitsState::default();
        let limits = w.limits(&state);
        let alice = principal("key:alice", &["operator"]);
        let get = w.req(
            Method::GET,
            &format!("/api/v1/instances/{id}"),
            alice.clone(),
        );
        let state_read = w.req(
            Method::GET,
            &format!("/api/v1/instances/{id}/state"),
            alice.clone(),
        );
        let x_cache = |d: Decision<LimitsError>| header(&reply(d), "x-cache").map(str::to_string);
        assert_eq!(
            x_cache(before(&limits, &get).await.0).as_deref(),
            Some("miss")
        );
        assert_eq!(
            x_cache(before(&limits, &state_read).await.0).as_deref(),
            Some("miss")
        );
        assert_eq!(
            x_cache(before(&limits, &get).await.0).as_deref(),
            Some("hit")
        );

        // A mutation of the object, before it goes upstream: every cached read of it goes.
        let stop = w.req(
            Method::POST,
            &format!("/api/v1/instances/{id}/stop"),
            alice.clone(),
        );
        let (d, _) = before(&limits, &stop).await;
        assert!(d.is_continue());
        assert_eq!(state.cache().len(), 0);
        assert_eq!(
            x_cache(before(&limits, &get).await.0).as_deref(),
            Some("miss")
        );
        assert_eq!(
            x_cache(before(&limits, &get).await.0).as_deref(),
            Some("hit")
        );
        // And again when it ends (a read that raced the change must not outlive it).
        finish(&limits, &stop.view());
        assert_eq!(
            x_cache(before(&limits, &get).await.0).as_deref(),
            Some("miss")
        );
        // Another object's reads stay.
        let other = w.req(Method::POST, "/api/v1/instances/other/stop", alice);
        finish(&limits, &other.view());
        assert_eq!(
            x_cache(before(&limits, &get).await.0).as_deref(),
            Some("hit")
        );
    }

    #[tokio::test]
    async fn an_open_breaker_answers_stale_or_refuses() {
        let (sim, id) = simulator().await;
        let w = world(&sim.url(), CACHED);
        let limits = w.limits(&LimitsState::default());
        let alice = principal("key:alice", &["viewer"]);
        let get = w.req(
            Method::GET,
            &format!("/api/v1/instances/{id}"),
            alice.clone(),
        );
        let fresh = reply(before(&limits, &get).await.0);

        // One failure opens the breaker of the only endpoint.
        let account = w.tenant().account.clone();
        let settings = account.breaker.clone().unwrap();
        account.endpoints[0]
            .breaker
            .try_acquire(&settings)
            .unwrap()
            .finish(false);
        assert!(!account.available());

        let stale = reply(before(&limits, &get).await.0);
        assert_eq!(stale.status, 200);
        assert_eq!(stale.body, fresh.body);
        assert_eq!(header(&stale, "x-cache"), Some("stale"));
        assert_eq!(
            header(&stale, "warning"),
            Some("110 - \"Response is Stale\"")
        );
        // Nothing kept for this read, or not a cached route: refused without a call.
        let calls = sim.calls().total;
        for target in [
            format!("/api/v1/instances/{id}?v=2"),
            "/api/v1/instances".into(),
        ] {
            let req = w.req(Method::GET, &target, alice.clone());
            match before(&limits, &req).await.0 {
                Decision::Fail(LimitsError::Open { retry_after }) => {
                    assert!((1..=60).contains(&retry_after))
                }
                other => panic!("expected the breaker's refusal, got {other:?}"),
            }
        }
        assert_eq!(sim.calls().total, calls);

        // `fallback: error`: refused even with a good answer kept.
        let mut error = w.config.clone();
        error.limits.breaker.fallback = Fallback::Error;
        let state = LimitsState::default();
        let strict = Limits::build(&error, Some(&w.routes), ROLES, &state).unwrap();
        assert!(matches!(
            before(&strict, &get).await.0,
            Decision::Fail(LimitsError::Open { .. })
        ));
    }
}
