//! Unit tests of the idempotency decisions: the in-memory key-value store, no process.

use super::*;
use crate::auth::permissions::PermissionRegistry;
use crate::routes::{Match, Route};
use crate::store::memory::MemoryKv;
use crate::upstream::{Tenant, UpstreamState, Upstreams};
use http::Method;
use std::sync::Arc;

struct World {
    idem: Idempotency,
    routes: RouteTable,
    upstreams: Upstreams,
    kv: Arc<dyn crate::store::KvStore>,
    _dir: tempfile::TempDir,
}

fn world(extra: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "sim-static-token").unwrap();
    let text = format!(
        "accounts:\n  main:\n    endpoints:\n      - {{url: \"http://127.0.0.1:9\"}}\n    credentials:\n      type: static_token\n      token: {{file: \"{}\"}}\ntenants:\n  acme: {{account: main}}\n  globex: {{account: main}}\n{extra}",
        token.display()
    );
    let config = crate::config::parse(&text).unwrap();
    let defaults = crate::config::defaults().unwrap();
    let routes = RouteTable::build(&defaults.routes, &mut PermissionRegistry::default()).unwrap();
    let upstreams = Upstreams::build(&config, &UpstreamState::default()).unwrap();
    let idem = Idempotency::build(&config, Some(&routes))
        .map_err(|e| e.join("; "))
        .unwrap();
    World {
        idem,
        routes,
        upstreams,
        kv: Arc::new(MemoryKv::new(1000)),
        _dir: dir,
    }
}

struct Req {
    method: Method,
    path: String,
    headers: http::HeaderMap,
    route: Option<Arc<Route>>,
    params: Vec<(String, String)>,
    tenant: Option<Arc<Tenant>>,
}

impl Req {
    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            path: &self.path,
            query: None,
            headers: &self.headers,
            route: self.route.as_ref(),
            params: &self.params,
            principal: None,
            tenant: self.tenant.as_ref(),
            client_ip: None,
            request_id: "test-request",
        }
    }
}

impl World {
    fn req(&self, tenant: &str, method: Method, path: &str, key: Option<&str>) -> Req {
        let (route, params) = match self.routes.find(&method, path) {
            Match::Found(r, params) => (Some(r.clone()), params),
            _ => panic!("no route for {method} {path}"),
        };
        let mut headers = http::HeaderMap::new();
        if let Some(k) = key {
            headers.insert("idempotency-key", k.parse().unwrap());
        }
        Req {
            method,
            path: path.to_string(),
            headers,
            route,
            params,
            tenant: Some(self.upstreams.tenants[tenant].clone()),
        }
    }

    async fn begin(&self, r: &Req, body: &str) -> Result<Begun, IdemError> {
        let view = r.view();
        let key = self.idem.key_of(&view).unwrap().unwrap();
        begin(
            &self.idem,
            &self.kv,
            &view,
            key,
            Some(body.as_bytes()),
            None,
        )
        .await
    }
}

fn claim(b: Result<Begun, IdemError>) -> Box<Claim> {
    match b {
        Ok(Begun::Proceed(c)) => c,
        other => panic!("expected to hold the key: {other:?}"),
    }
}

#[test]
fn the_header_is_read_only_on_listed_creates() {
    let w = world("");
    let get = w.req("acme", Method::GET, "/api/v1/instances", Some("k1"));
    assert!(w.idem.key_of(&get.view()).unwrap().is_none());
    let start = w.req(
        "acme",
        Method::POST,
        "/api/v1/instances/x/start",
        Some("k1"),
    );
    assert!(w.idem.key_of(&start.view()).unwrap().is_none());
    let create = w.req("acme", Method::POST, "/api/v1/instances", Some("\"k-1\""));
    assert_eq!(w.idem.key_of(&create.view()).unwrap(), Some("k-1"));
    let none = w.req("acme", Method::POST, "/api/v1/disks", None);
    assert!(w.idem.key_of(&none.view()).unwrap().is_none());
    let long = "x".repeat(256);
    let bad = w.req("acme", Method::POST, "/api/v1/disks", Some(&long));
    assert!(matches!(
        w.idem.key_of(&bad.view()),
        Err(IdemError::Invalid(_))
    ));
    let off = world("idempotency: {enabled: false}\n");
    let create = off.req("acme", Method::POST, "/api/v1/instances", Some("k1"));
    assert!(off.idem.key_of(&create.view()).unwrap().is_none());
}

#[test]
fn config_errors_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        "accounts: {}\ntenants: {}\nidempotency: {ttl_seconds: 1, routes: [instances.get, nope]}\n";
    let _ = dir;
    let config = crate::config::parse(text).unwrap();
    let defaults = crate::config::defaults().unwrap();
    let routes = RouteTable::build(&defaults.routes, &mut PermissionRegistry::default()).unwrap();
    let errs = Idempotency::build(&config, Some(&routes))
        .err()
        .unwrap()
        .join("\n");
    assert!(errs.contains("idempotency.ttl_seconds"), "{errs}");
    assert!(errs.contains("idempotency.routes[0]"), "{errs}");
    assert!(
        errs.contains("idempotency.routes[1]: unknown route 'nope'"),
        "{errs}"
    );
}

#[tokio::test]
async fn replay_mismatch_in_flight_and_tenants() {
    let w = world("");
    let r = w.req("acme", Method::POST, "/api/v1/disks", Some("key-1"));
    let mut first = claim(w.begin(&r, r#"{"name":"d"}"#).await);
    assert_eq!(first.how, "first");

    // While the first is in flight: 409; another body: 422.
    assert!(matches!(
        w.begin(&r, r#"{"name":"d"}"#).await,
        Err(IdemError::InFlight { .. })
    ));
    assert!(matches!(
        w.begin(&r, r#"{"name":"e"}"#).await,
        Err(IdemError::Mismatch)
    ));

    // Another tenant's same key is its own.
    let g = w.req("globex", Method::POST, "/api/v1/disks", Some("key-1"));
    let other = claim(w.begin(&g, r#"{"name":"d"}"#).await);
    finish(*other, Outcome::NotSent).await;

    first.capture_head(200, [("location", "/x"), ("x-other", "y")]);
    first.capture_body(Some(b"{\"id\":"), false);
    first.capture_body(Some(b"\"1\"}"), true);
    assert!(first.answered());
    finish(*first, Outcome::Answered).await;

    match w.begin(&r, r#"{"name":"d"}"#).await {
        Ok(Begun::Answer(reply, "replayed")) => {
            assert_eq!(reply.status, 200);
            assert_eq!(&reply.body[..], b"{\"id\":\"1\"}");
            assert!(reply.headers.contains(&(REPLAYED, "true".to_string())));
            assert!(reply.headers.contains(&("location", "/x".to_string())));
            assert!(!reply.headers.iter().any(|(n, _)| *n == "x-other"));
        }
        other => panic!("expected a replay: {other:?}"),
    }
    // The other tenant's key was released: its next request creates.
    let again = claim(w.begin(&g, r#"{"name":"d"}"#).await);
    assert_eq!(again.how, "retried");
}

#[tokio::test]
async fn server_errors_and_unknown_outcomes_are_not_replayed() {
    let w = world("");
    let r = w.req(
        "acme",
        Method::POST,
        "/v1/instances/6a0a3ff1-58a8-4d3c-9d7c-5d3b8bfc1a11/reboot",
        Some("k"),
    );
    let mut c = claim(w.begin(&r, "").await);
    c.capture_head(503, []);
    c.capture_body(Some(b"{}"), true);
    finish(*c, Outcome::Answered).await;
    // A task has nothing to look up at OrionVM: the retry runs it.
    let c = claim(w.begin(&r, "").await);
    assert_eq!(c.how, "retried");
    finish(*c, Outcome::Unknown).await;
    let c = claim(w.begin(&r, "").await);
    assert_eq!((c.how, c.generation), ("retried", 2));
}
