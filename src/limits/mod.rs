//! Protecting OrionVM and the proxy: rate limits per principal (or source address) with the
//! IETF RateLimit fields, coalescing and a micro-cache for polled reads. (The budget toward
//! OrionVM and the circuit breaker of each endpoint are in `crate::upstream`.)
//!
//! The limits decide; the proxy writes. The proxy calls in from its phases with a
//! [`RequestView`] and the request's [`RequestLimits`]: [`admit`] (rate limits, in
//! `request_filter` before the body is read), [`before_upstream`] (breaker fallback, cached
//! reads, invalidation; returns a [`Decision`]), [`response_fields`] and [`finish`]. Everything is skipped when `limits.enabled` is false.
//!
//! State that outlives a request (the counters, the micro-cache and its coalescing groups) is
//! in [`LimitsState`], owned by the process state; [`Limits::build`] reads it, never changes it.

pub mod cache;
pub mod rate;

use crate::config::limits::{self as config, Fallback, LimitsConfig};
use crate::config::model::{Config, RouteKind};
use crate::config::state::OnUnavailable;
use crate::request::{Decision, Reply, RequestView};
use crate::routes::RouteTable;
use crate::store::{CounterOp, Counters, KvStore, Stores};
use crate::upstream::UpstreamError;
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
    /// With a shared backend: the objects' versions, so that a change through another node
    /// drops this node's cached reads of the object.
    versions: Option<Arc<Versions>>,
}

/// The micro-cache's cross-node invalidation: every mutation through any node writes a new
/// random version of the object (tenant + id) into the shared key-value store; a cached read
/// first reads the object's version and drops this node's cached reads of it when the
/// version is not the one it last saw. A node thus never serves a read that a write through
/// another node has replaced; when the store is unreachable the local cache's TTL bounds it.
pub struct Versions {
    kv: Arc<dyn KvStore>,
    seen: parking_lot::Mutex<HashMap<String, Option<Bytes>>>,
}

/// How long an object's version is kept (far longer than any cached read lives).
const VERSION_TTL: Duration = Duration::from_secs(3600);
/// Versions remembered at most per node (past it they are forgotten, which costs a miss).
const MAX_SEEN: usize = 100_000;

impl Versions {
    fn key(group: &str) -> String {
        let mut k = String::with_capacity(9 + group.len());
        k.push_str("cachever:");
        k.push_str(group);
        k
    }

    /// A mutation of the object: a new version for every node.
    async fn bump(&self, group: &str) {
        let v = rand::random::<u64>().to_be_bytes();
        if let Err(e) = self
            .kv
            .put(&Self::key(group), Bytes::copy_from_slice(&v), VERSION_TTL)
            .await
        {
            log::debug!("cache version not written: {e}");
        }
    }

    /// Before a cached read: drops the object's cached reads when another node changed it.
    async fn check(&self, micro: &MicroCache, tenant: &str, object: &str, group: &str) {
        let Ok(now) = self.kv.get(&Self::key(group)).await else {
            return;
        };
        let mut seen = self.seen.lock();
        if seen.get(group) != Some(&now) {
            micro.invalidate(tenant, object);
            if seen.len() >= MAX_SEEN {
                seen.clear();
            }
            seen.insert(group.to_string(), now);
        }
    }
}

impl LimitsState {
    /// The limits' state over the process' backends.
    pub fn new(stores: &Stores) -> LimitsState {
        LimitsState {
            counters: stores.counters.clone(),
            cache: Default::default(),
            versions: stores.shared.as_ref().map(|_| {
                Arc::new(Versions {
                    kv: stores.kv.clone(),
                    seen: Default::default(),
                })
            }),
        }
    }

    /// The micro-cache (for tests and reports).
    pub fn cache(&self) -> &MicroCache {
        &self.cache
    }

    /// The micro-cache, shared: for the facade, whose tasks change objects after the request.
    pub fn cache_handle(&self) -> Arc<MicroCache> {
        self.cache.clone()
    }

    /// Drops an object's cached reads here and, with a shared backend, on every other node (a
    /// new version written in the background): for changes made outside a request's phases
    /// (the facade's tasks).
    pub fn invalidator(&self) -> impl Fn(&str, &str) + Send + Sync + 'static {
        let (cache, versions) = (self.cache.clone(), self.versions.clone());
        move |tenant: &str, object: &str| {
            cache.invalidate(tenant, object);
            if let Some(v) = &versions {
                let (v, group) = (v.clone(), cache::group_key(tenant, object));
                tokio::spawn(async move { v.bump(&group).await });
            }
        }
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
    /// The upstream refused the call before any work (every endpoint's breaker is open);
    /// counted where upstream refused it.
    Upstream(UpstreamError),
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
    /// The shared counters cannot be reached and `state.on_unavailable` is `closed`.
    Unavailable,
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
    /// The policies' verdicts, for the response fields.
    pub verdicts: Verdicts,
    /// The route is a cached read: charged only when it calls OrionVM.
    pub cached: bool,
    /// OrionVM's status and the call's duration when this request's own call answered it (a
    /// cache miss), for the logs.
    pub upstream_answer: Option<(u16, Duration)>,
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
    /// Policy name -> index, for a principal whose credential names its own policy.
    by_name: HashMap<String, u16>,
    routes: HashMap<String, RoutePlan>,
    pub cache: Option<cache::Settings>,
    pub fallback: Fallback,
    /// From the state: the counter backend and the micro-cache.
    counters: Arc<dyn Counters>,
    micro: Arc<MicroCache>,
    versions: Option<Arc<Versions>>,
    /// What the rate limits do when the counter backend fails.
    on_unavailable: OnUnavailable,
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
                    Some(r)
                        if r.method == http::Method::GET
                            && matches!(r.kind, RouteKind::Mirror | RouteKind::Facade) => {}
                    Some(_) => errors.push(format!(
                        "limits.cache.routes[{i}]: '{name}' is not a GET route of the mirror or the facade"
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
        let by_name = index.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        Ok(Limits {
            by_name,
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
            versions: state.versions.clone(),
            on_unavailable: config.state.on_unavailable,
        })
    }

    /// Whether a policy of this name is configured.
    pub fn has_policy(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The policies that apply to the request: the caller's (by role, else the default;
    /// without a principal the anonymous policy) and the route's.
    fn applying<'a>(&'a self, req: &RequestView<'_>) -> impl Iterator<Item = u16> + 'a {
        let route: &[u16] = req
            .route
            .and_then(|r| self.routes.get(&*r.name))
            .map(|p| p.policies.as_slice())
            .unwrap_or(&[]);
        let named = req
            .principal
            .and_then(|p| p.policy.as_deref())
            .and_then(|n| self.by_name.get_key_value(n))
            .map(|(_, i)| std::slice::from_ref(i));
        let base: &[u16] = match req.principal {
            Some(_) if named.is_some() => named.unwrap_or_default(),
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

    /// Charges (or only reads) every policy that applies, through whatever backend, in one
    /// call. When the backend fails, `state.on_unavailable` decides: `open` enforces nothing
    /// for this request (the backend counts and logs the failure), `closed` refuses a caller's
    /// request (503).
    async fn judge(&self, req: &RequestView<'_>, count: bool) -> Verdicts {
        if let Some(v) = self.judge_now(req, count) {
            return v;
        }
        let mut out = Verdicts::default();
        let key = counter_key(req);
        let mut ops = Vec::with_capacity(4);
        let mut ids = Vec::with_capacity(4);
        for i in self.applying(req) {
            let Some(p) = self.policies.get(i as usize) else {
                continue;
            };
            ops.push(CounterOp {
                scope: &p.name,
                window: p.window,
                key: &key,
                cost: u64::from(count),
            });
            ids.push(i);
        }
        if ops.is_empty() {
            return out;
        }
        match self.counters.count_all(&ops).await {
            Ok(counts) => {
                for (i, c) in ids.into_iter().zip(counts) {
                    if let Some(p) = self.policies.get(i as usize) {
                        out.push(p.verdict(i, c, count));
                    }
                }
            }
            Err(e) => {
                log::debug!("request {}: rate limits not counted: {e}", req.request_id);
                // Fail closed applies to the API's callers; the routes without a principal
                // (liveness, readiness, the API document, the token endpoint) stay open, so
                // that a node is not restarted or drained for its state backend.
                if count && self.on_unavailable == OnUnavailable::Closed && req.principal.is_some()
                {
                    out.unavailable = true;
                }
            }
        }
        out
    }

    /// The refusal of charged verdicts, if any, counted in the metrics here.
    fn refuse(&self, v: &Verdicts) -> Option<LimitsError> {
        if v.unavailable {
            return Some(LimitsError::Unavailable);
        }
        let r = v.refusal()?;
        let policy = self.policies.get(r.policy as usize)?.name.clone();
        crate::metrics::rate_limited(&policy);
        Some(LimitsError::RateLimited {
            policy,
            retry_after: r.reset,
            headers: v.headers(&self.policies, self.legacy),
        })
    }

    /// Whether the route's GETs are coalesced and cached. A mirror list asked with a query is
    /// not: the facade pages, filters and sorts it (a listed list is cached only bare).
    fn is_cached_read(&self, req: &RequestView<'_>) -> bool {
        *req.method == http::Method::GET
            && req.route.is_some_and(|r| {
                self.routes.get(&*r.name).is_some_and(|p| p.cached)
                    && !(r.list && r.kind == RouteKind::Mirror && req.query.is_some())
            })
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

/// What the proxy hands to [`before_upstream_with`] beside the request.
#[derive(Default)]
pub struct Extra<'a> {
    /// The mutation's JSON body: the objects it names are changed too (a disks PUT).
    pub body: Option<&'a serde_json::Value>,
    /// For a cached facade read: how to make the facade's answer, once per flight.
    pub local: Option<Box<dyn FnOnce() -> cache::Fetch + Send + 'a>>,
    /// The request's trace: the one shared call is a span of the request that makes it.
    pub trace: crate::upstream::trace::Trace,
}

/// The ids a mutation's body names (at most 32): the objects it changes besides its own.
fn named_ids(body: Option<&serde_json::Value>) -> Vec<&str> {
    fn walk<'v>(v: &'v serde_json::Value, out: &mut Vec<&'v str>) {
        if out.len() >= 32 {
            return;
        }
        match v {
            serde_json::Value::String(s) if s.len() == 36 => out.push(s),
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            serde_json::Value::Object(m) => m.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Some(v) = body {
        out.reserve(32);
        walk(v, &mut out);
    }
    out
}

/// [`before_upstream_with`] for a request without a body or a local answer.
pub async fn before_upstream(
    limits: &Limits,
    req: &RequestView<'_>,
    rl: &mut RequestLimits,
) -> Decision<LimitsError> {
    before_upstream_with(limits, req, rl, Extra::default()).await
}

/// Before any upstream work: drop cached reads of an object being changed (and of the objects
/// linked to it or named by the body), answer fast when every endpoint's breaker is open (with
/// the last good answer under `fallback: stale`), and answer cached reads (from the cache, a
/// shared call or this request's own call; a facade read through `extra.local`).
pub async fn before_upstream_with(
    limits: &Limits,
    req: &RequestView<'_>,
    rl: &mut RequestLimits,
    extra: Extra<'_>,
) -> Decision<LimitsError> {
    if !limits.enabled {
        return Decision::Continue;
    }
    let (Some(route), Some(tenant)) = (req.route, req.tenant) else {
        return Decision::Continue;
    };
    // Mirror and facade mutations alike drop the object's cached reads (on every node).
    if req.is_mutation() {
        // The ids the body names matter only to a cache that holds something, here or (a
        // shared backend) on other nodes: no walk over the body otherwise.
        let named = if limits.versions.is_some() || !limits.micro.holds_nothing() {
            named_ids(extra.body)
        } else {
            Vec::new()
        };
        limits
            .micro
            .invalidate_all(&tenant.name, object_of(req), &named);
        if let Some(v) = &limits.versions {
            for o in std::iter::once(object_of(req)).chain(named.iter().copied()) {
                v.bump(&cache::group_key(&tenant.name, o)).await;
            }
        }
    }
    let local = match route.kind {
        RouteKind::Mirror => None,
        RouteKind::Facade if rl.cached => match extra.local {
            Some(f) => Some(f),
            None => return Decision::Continue,
        },
        _ => return Decision::Continue,
    };
    let available = local.is_some() || tenant.account.available();
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
        return Decision::Fail(LimitsError::Upstream(tenant.account.refuse_open()));
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
    let group = cache::group_key(&tenant.name, object_of(req));
    // On a shared backend a cached read first checks the object's version. When this node
    // holds a fresh answer (a hit unless the version changed) it also needs the rate-limit
    // fields, read without charging: both commands are sent together, one round trip. Otherwise
    // the read is charged (or joins a call) after the check.
    let mut peeked = None;
    if let Some(v) = &limits.versions {
        let check = v.check(&limits.micro, &tenant.name, object_of(req), &group);
        if limits.micro.has_fresh(settings, &group, &cache_path()) {
            let ((), p) = tokio::join!(check, limits.judge(req, false));
            peeked = Some(p);
        } else {
            check.await;
        }
    }
    let mut charged = None;
    // Made only when this request starts the call (a miss): a hit costs no extra copy.
    let fetch = || -> cache::Fetch {
        match local {
            Some(f) => f(),
            None => {
                let (account, path, rid) =
                    (account.clone(), cache_path(), req.request_id.to_string());
                let trace = extra.trace.clone();
                Box::pin(async move {
                    crate::upstream::client::call_traced(
                        &account,
                        http::Method::GET,
                        &path,
                        None,
                        &rid,
                        trace.as_deref(),
                    )
                    .await
                })
            }
        }
    };
    let served = limits
        .micro
        .serve(
            settings,
            fetch,
            &tenant.name,
            group,
            cache_path(),
            wait,
            &mut charged,
            || limits.judge_now(req, true),
            limits.judge(req, true),
        )
        .await;
    rl.verdicts = match (charged, peeked) {
        (Some(v), _) => v,
        (None, Some(v)) => v,
        (None, None) => limits.judge(req, false).await,
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
    if let Ok(a) = &filled.outcome {
        headers.extend(a.headers.iter().cloned());
    }
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

/// Whether [`changed`] has work to do (a shared backend): the proxy then calls it for a
/// mutation's answer before the caller sees it.
pub fn shares_cache(limits: &Limits) -> bool {
    limits.enabled && limits.versions.is_some()
}

/// A mutation was answered: on a shared backend, a new version of the object for every node
/// (a read another node cached while the change was under way must not outlive it).
pub async fn changed(limits: &Limits, req: &RequestView<'_>) {
    if let (Some(v), true, Some(t)) = (&limits.versions, req.is_mutation(), req.tenant) {
        v.bump(&cache::group_key(&t.name, object_of(req))).await;
    }
}

/// At the end of the request: drop cached reads of an object that was just changed, of the
/// objects linked to it and of those its body names (a read that raced the change must not
/// outlive it).
pub fn finish(limits: &Limits, req: &RequestView<'_>, body: Option<&serde_json::Value>) {
    if limits.enabled
        && req.is_mutation()
        && let Some(t) = req.tenant
        && !limits.micro.holds_nothing()
    {
        limits
            .micro
            .invalidate_all(&t.name, object_of(req), &named_ids(body));
    }
}

#[cfg(test)]
mod tests;
