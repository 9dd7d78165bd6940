//! Unit tests of the limits: no process, no Pingora session; the simulator on a loopback
//! port for the calls a cached read makes.

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
    let upstreams = Upstreams::build(&config, &UpstreamState::default()).unwrap();
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
        policy: None,
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
        let fields: HashMap<_, _> = response_fields(&limits, &rl)
            .into_iter()
            .map(|(name, value)| (name.name.as_str(), value))
            .collect();
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
async fn simulator() -> (orion_sim::SimHandle, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = orion_sim::start(listener, orion_sim::SimOptions::default())
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
    finish(&limits, &stop.view(), None);
    assert_eq!(
        x_cache(before(&limits, &get).await.0).as_deref(),
        Some("miss")
    );
    // Another object's reads stay.
    let other = w.req(Method::POST, "/api/v1/instances/other/stop", alice);
    finish(&limits, &other.view(), None);
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
    let settings = account.breaker.unwrap();
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
            Decision::Fail(LimitsError::Upstream(UpstreamError::Open { retry_after })) => {
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
        Decision::Fail(LimitsError::Upstream(UpstreamError::Open { .. }))
    ));
}

#[tokio::test]
async fn cache_routes_take_any_get_route_and_refuse_the_others() {
    let w = world(
        "http://127.0.0.1:9",
        "limits:\n  cache: {routes: [disks.get, facade.instances.get, facade.tasks.list, instances.list]}\n",
    );
    let limits = w.limits(&LimitsState::default());
    let p = principal("k1", &["viewer"]);
    for (path, cached) in [
        ("/api/v1/disks/d1", true),
        ("/v1/instances/i1", true),
        ("/v1/tasks", true),
        ("/api/v1/instances", true),
        // A mirror list asked to page is the facade's to answer: not cached.
        ("/api/v1/instances?limit=1", false),
        ("/api/v1/networks/n1", false),
    ] {
        let (r, rl) = admitted(&limits, &w.req(Method::GET, path, p.clone())).await;
        assert!(r.is_ok());
        assert_eq!(rl.cached, cached, "{path}");
    }
    let bad = world(
        "http://127.0.0.1:9",
        "limits:\n  cache: {routes: [disks.create, nope]}\n",
    );
    let errs = Limits::build(
        &bad.config,
        Some(&bad.routes),
        ROLES,
        &LimitsState::default(),
    )
    .err()
    .unwrap()
    .join("\n");
    assert!(
        errs.contains("limits.cache.routes[0]: 'disks.create' is not a GET route"),
        "{errs}"
    );
    assert!(
        errs.contains("limits.cache.routes[1]: unknown route 'nope'"),
        "{errs}"
    );
    // The shipped default covers every single-object read of the shipped routes.
    let shipped = world("http://127.0.0.1:9", "");
    let limits = shipped.limits(&LimitsState::default());
    for r in shipped.routes.routes() {
        let single = r.method == Method::GET
            && r.template.ends_with('}')
            && matches!(r.kind, RouteKind::Mirror | RouteKind::Facade);
        if single {
            let path = r.template.replace("{id}", "x1");
            let (_, rl) = admitted(&limits, &shipped.req(Method::GET, &path, p.clone())).await;
            assert!(rl.cached, "{} is a single-object read", r.name);
        }
    }
}

/// Waits at `meet` once armed: a call that only returns when another armed call is in flight
/// at the same time.
struct Meet {
    armed: std::sync::atomic::AtomicBool,
    meet: tokio::sync::Barrier,
    counters: crate::store::memory::MemoryCounters,
    kv: crate::store::memory::MemoryKv,
}

impl Meet {
    async fn wait(&self) {
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            self.meet.wait().await;
        }
    }
}

struct MeetCounters(Arc<Meet>);
struct MeetKv(Arc<Meet>);

#[async_trait::async_trait]
impl Counters for MeetCounters {
    async fn hit(
        &self,
        scope: &str,
        window: Duration,
        key: &str,
        cost: u64,
    ) -> Result<crate::store::WindowCount, crate::store::StoreError> {
        self.0.counters.hit(scope, window, key, cost).await
    }

    async fn peek(
        &self,
        scope: &str,
        window: Duration,
        key: &str,
    ) -> Result<crate::store::WindowCount, crate::store::StoreError> {
        self.0.wait().await;
        self.0.counters.peek(scope, window, key).await
    }
}

#[async_trait::async_trait]
impl KvStore for MeetKv {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, crate::store::StoreError> {
        self.0.wait().await;
        self.0.kv.get(key).await
    }
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<(), crate::store::StoreError> {
        self.0.kv.put(key, value, ttl).await
    }
    async fn put_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, crate::store::StoreError> {
        self.0.kv.put_if_absent(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool, crate::store::StoreError> {
        self.0.kv.delete(key).await
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&Bytes>,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, crate::store::StoreError> {
        self.0.kv.compare_and_swap(key, expected, value, ttl).await
    }
}

/// On a shared backend, a cached read that this node answers from its cache sends the
/// object's version check and the rate-limit read together (one round trip, not two): here
/// each waits until the other is in flight, so sending them one after the other never ends.
#[tokio::test]
async fn a_cached_hit_on_a_shared_backend_is_one_round_trip() {
    let (sim, id) = simulator().await;
    let w = world(&sim.url(), CACHED);
    let meet = Arc::new(Meet {
        armed: Default::default(),
        meet: tokio::sync::Barrier::new(2),
        counters: Default::default(),
        kv: crate::store::memory::MemoryKv::new(100),
    });
    // A shared backend that is never reached (connections are made at the first command):
    // only its presence matters; the counters and the key-value store are the ones above.
    let settings = crate::store::redis::Settings {
        url: "redis://127.0.0.1:9/0".into(),
        tls: false,
        root_cert: None,
        username: None,
        password: None,
        prefix: "t:".into(),
        connect_timeout: Duration::from_millis(100),
        command_timeout: Duration::from_millis(100),
        pool_size: 1,
        on_error: |_| {},
        on_change: |_| {},
    };
    let mut stores = Stores::redis(
        &settings,
        crate::store::redis::Sync::Exact,
        Duration::from_secs(15),
    )
    .unwrap();
    stores.counters = Arc::new(MeetCounters(meet.clone()));
    stores.kv = Arc::new(MeetKv(meet.clone()));
    let limits = w.limits(&LimitsState::new(&stores));
    let get = w.req(
        Method::GET,
        &format!("/api/v1/instances/{id}"),
        principal("key:alice", &["viewer"]),
    );
    let first = reply(before(&limits, &get).await.0);
    assert_eq!(header(&first, "x-cache"), Some("miss"));
    meet.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let hit = tokio::time::timeout(Duration::from_secs(30), before(&limits, &get))
        .await
        .expect("the version check and the rate-limit read were not in flight together");
    let hit = reply(hit.0);
    assert_eq!(header(&hit, "x-cache"), Some("hit"));
    // The rate-limit fields come from that read (one request charged: the miss).
    let fields = header(&hit, "ratelimit").unwrap_or_default();
    assert!(fields.starts_with("\"default\";r=99;"), "{fields}");
    assert_eq!(sim.calls().count("GET", "/api/v1/instances/{id}"), 1);
}
