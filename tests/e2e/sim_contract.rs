//! Contract tests of the OrionVM v1 simulator, over real sockets.

use std::future::Future;
use std::time::{Duration, Instant};

use orion_sim::{
    CallStats, ErrorBurst, FaultPlan, SimAccount, SimHandle, SimOptions, SimTimings, start,
};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const EXAMPLES: &str = include_str!("../../crates/orion-sim/src/orionvm-v1-examples.json");
const A_STATIC: &str = "alpha-static-token";
const B_STATIC: &str = "beta-static-token";
const SY3: &str = "9e98d1f2-3c4b-4a5d-8e6f-7a8b9c0d1e2f";
const SY3_DISK_TIER: &str = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";
const WEB1: &str = "3b0c2f6e-1111-4222-8333-944455556666";

fn examples() -> Value {
    serde_json::from_str(EXAMPLES).unwrap()
}

fn two_accounts() -> SimOptions {
    SimOptions {
        accounts: vec![
            SimAccount::new("alpha", "alpha-id", "alpha-secret", Some(A_STATIC)),
            SimAccount::new("beta", "beta-id", "beta-secret", Some(B_STATIC)),
        ],
        timings: SimTimings::default(),
        token_ttl: Duration::from_secs(3600),
        signature: None,
    }
}

async fn sim(opts: SimOptions) -> SimHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start(listener, opts).await.unwrap()
}

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A small OrionVM client for one bearer token.
struct Api {
    http: Client,
    base: String,
    token: String,
}

struct Answer {
    status: StatusCode,
    content_type: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
}

impl Api {
    fn new(sim: &SimHandle, token: &str) -> Api {
        Api {
            http: client(),
            base: sim.url(),
            token: token.to_owned(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut rb = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
            // Every OrionVM client sends this, GET and DELETE included.
            .header("content-type", "application/json");
        if let Some(b) = body {
            rb = rb.body(b.to_string());
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        Answer {
            status,
            content_type,
            text,
        }
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let a = self.call(method.clone(), path, body).await;
        assert_eq!(a.status, StatusCode::OK, "{method} {path}: {}", a.text);
        assert!(a.content_type.starts_with("application/json"));
        a.json()
    }

    async fn get(&self, path: &str) -> Value {
        self.ok(Method::GET, path, None).await
    }

    async fn state(&self, id: &str) -> String {
        let v = self.get(&format!("/api/v1/instances/{id}/state")).await;
        v["state"].as_str().unwrap().to_owned()
    }
}

/// Polls `f` every 20 ms until it gives a value or `limit` passes (at least 30 s: the deadline
/// only bounds a failing test, and a loaded machine may stall a process for seconds).
async fn poll<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit.max(Duration::from_secs(30));
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_state(api: &Api, id: &str, want: &str) {
    poll(
        &format!("{id} to be {want}"),
        Duration::from_secs(5),
        || async { (api.state(id).await == want).then_some(()) },
    )
    .await;
}

async fn wait_disk(api: &Api, id: &str, want: &str) {
    poll(
        &format!("disk {id} {want}"),
        Duration::from_secs(5),
        || async {
            let v = api.get(&format!("/api/v1/disks/{id}/state")).await;
            (v["state"] == want).then_some(())
        },
    )
    .await;
}

fn assert_error_body(v: &Value, code: &str) {
    assert_eq!(v["error"], code, "{v}");
    assert!(v["error_description"].is_string(), "{v}");
    assert!(v["details"].is_object(), "{v}");
}

fn assert_ts(v: &Value) {
    let s = v.as_str().unwrap();
    assert_eq!(s.len(), 24, "{s}");
    assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T' && s.as_bytes()[19] == b'.');
}

async fn fresh_disk(api: &Api, name: &str) -> String {
    let d = api
        .ok(
            Method::POST,
            "/api/v1/disks",
            Some(
                json!({"name": name, "performance_tier": SY3_DISK_TIER, "region": SY3,
                         "size": 20, "template": "ubuntu-22-04"}),
            ),
        )
        .await;
    assert_eq!(d["state"], "creating");
    let id = d["id"].as_str().unwrap().to_owned();
    wait_disk(api, &id, "unattached").await;
    id
}

async fn assemble(api: &Api, name: &str) -> Value {
    let disk = fresh_disk(api, &format!("{name}-boot")).await;
    let mut body = examples()["assemble_request"].clone();
    body["name"] = json!(name);
    body["disks"] = json!([disk]);
    body["ip_addresses"] = json!([]);
    api.ok(Method::POST, "/api/v1/instances/assemble", Some(body))
        .await
}

async fn token(http: &Client, base: &str, id: &str, secret: &str) -> reqwest::Response {
    http.post(format!("{base}/oauth/token"))
        .json(
            &json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret}),
        )
        .send()
        .await
        .unwrap()
}

async fn issued_token(sim: &SimHandle, id: &str, secret: &str) -> String {
    let r = token(&client(), &sim.url(), id, secret).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

/// Sends a raw HTTP/1.1 request and reads until EOF or an error.
async fn raw(sim: &SimHandle, extra_headers: &str) -> (Vec<u8>, std::io::Result<()>) {
    let mut s = TcpStream::connect(sim.addr()).await.unwrap();
    let req = format!(
        "GET /api/v1/regions HTTP/1.1\r\nHost: sim\r\nAuthorization: Bearer {A_STATIC}\r\n{extra_headers}Connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("raw read timed out");
    (got, res)
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn token_by_json_and_by_form() {
    let opts = SimOptions {
        token_ttl: Duration::from_secs(7200),
        ..two_accounts()
    };
    let sim = sim(opts).await;
    let http = client();
    let base = sim.url();

    let r = token(&http, &base, "alpha-id", "alpha-secret").await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let t = v["access_token"].as_str().unwrap();
    assert_eq!(t.len(), 64);
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["expires_in"], 7200);
    assert!(v["refresh_token"].is_null() && v.get("refresh_token").is_some());
    assert_eq!(v["scope"], "");

    let r = http
        .post(format!("{base}/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&client_id=beta-id&client_secret=beta-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let form_token = v["access_token"].as_str().unwrap().to_owned();
    assert_eq!(form_token.len(), 64);
    assert_ne!(form_token, t);

    // The form token is beta's: it sees beta's objects.
    let beta = Api::new(&sim, &form_token);
    let list = beta.get("/api/v1/instances").await;
    assert!(list.as_array().unwrap().iter().all(|i| i["id"] != WEB1));

    // HTTP Basic client authentication.
    let r = http
        .post(format!("{base}/oauth/token"))
        .basic_auth("alpha-id", Some("alpha-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let r = token(&http, &base, "alpha-id", "wrong").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_error_body(&r.json::<Value>().await.unwrap(), "invalid_client");
    let r = token(&http, &base, "nobody", "alpha-secret").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let r = http
        .post(format!("{base}/oauth/token"))
        .json(&json!({"grant_type": "password", "client_id": "alpha-id", "client_secret": "alpha-secret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_error_body(&r.json::<Value>().await.unwrap(), "unsupported_grant_type");

    for (ct, body) in [
        ("application/json", "{not json"),
        ("application/json", "{}"),
        ("application/x-www-form-urlencoded", "client_id=alpha-id"),
    ] {
        let r = http
            .post(format!("{base}/oauth/token"))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_error_body(&r.json::<Value>().await.unwrap(), "invalid_request");
    }
    assert_eq!(sim.tokens_issued(), 3);
    assert_eq!(sim.calls().count("POST", "/oauth/token"), 9);
}

#[tokio::test]
async fn static_token_and_auth_failures() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    let list = api.get("/api/v1/instances").await;
    assert!(list.as_array().unwrap().iter().any(|i| i["id"] == WEB1));

    let http = client();
    let r = http
        .get(format!("{}/api/v1/instances", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_error_body(&r.json::<Value>().await.unwrap(), "invalid_token");

    let bad = Api::new(&sim, "not-a-token");
    let a = bad.call(Method::GET, "/api/v1/instances", None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_error_body(&a.json(), "invalid_token");
}

#[tokio::test]
async fn client_quirks_are_accepted() {
    let sim = sim(two_accounts()).await;
    let http = client();
    // A body on a GET, two User-Agent headers, JSON content type on a DELETE.
    let r = http
        .get(format!("{}/api/v1/instances/{WEB1}", sim.url()))
        .bearer_auth(A_STATIC)
        .header("content-type", "application/json")
        .header("user-agent", "hypercloud-go/1.0")
        .header("user-agent", "terraform/1.9")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], WEB1);
    let seen = sim.recent_requests();
    let last = seen.last().unwrap();
    assert_eq!(last.header_values("user-agent").len(), 2);
    assert_eq!(
        last.header_values("authorization"),
        vec!["Bearer <redacted>"]
    );
    assert_eq!(last.account.as_deref(), Some("alpha"));
    assert_eq!(last.route, "/api/v1/instances/{id}");

    let api = Api::new(&sim, A_STATIC);
    let k = api
        .ok(
            Method::POST,
            "/api/v1/public_keys",
            Some(json!({"name": "k", "key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest k@x"})),
        )
        .await;
    let a = api
        .call(
            Method::DELETE,
            &format!("/api/v1/public_keys/{}", k["id"].as_str().unwrap()),
            Some(json!({})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["id"], k["id"]);
}

#[tokio::test]
async fn seeded_objects_follow_the_examples() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    let ex = examples();
    assert_eq!(
        api.get(&format!("/api/v1/instances/{WEB1}")).await,
        ex["instance"]
    );
    assert_eq!(api.state(WEB1).await, "running");
    let disk = ex["disk"]["id"].as_str().unwrap();
    assert_eq!(api.get(&format!("/api/v1/disks/{disk}")).await, ex["disk"]);

    let regions = api.get("/api/v1/regions").await;
    let codes: Vec<&str> = regions
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert!(
        codes.contains(&"SY3") && codes.contains(&"ME2"),
        "{codes:?}"
    );
    assert!(regions.as_array().unwrap().contains(&ex["region"]));
    let tiers = api.get("/api/v1/performance_tiers/instances").await;
    assert!(
        tiers
            .as_array()
            .unwrap()
            .contains(&ex["performance_tier_instance"])
    );
    assert!(
        api.get("/api/v1/performance_tiers/disks")
            .await
            .as_array()
            .unwrap()
            .len()
            >= 2
    );
    let templates = api.get("/api/v1/templates").await;
    assert!(templates.as_array().unwrap().contains(&ex["template"]));
    let nets = api.get("/api/v1/networks").await;
    assert!(nets.as_array().unwrap().contains(&ex["network"]));
    assert!(
        api.get("/api/v1/networks/private")
            .await
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["is_public"] == false)
    );
    let ips = api.get("/api/v1/ip_addresses/public").await;
    assert!(ips.as_array().unwrap().contains(&ex["ip_address"]));
    assert!(
        api.get("/api/v1/public_keys")
            .await
            .as_array()
            .unwrap()
            .contains(&ex["public_key"])
    );
    // Two seeded instances.
    assert_eq!(
        api.get("/api/v1/instances").await.as_array().unwrap().len(),
        2
    );
}

#[tokio::test]
async fn instance_lifecycle() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    let inst = assemble(&api, "web-3").await;
    let id = inst["id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    // The Terraform provider's first GET must say stopped.
    let first = api.get(&format!("/api/v1/instances/{id}")).await;
    assert_eq!(first["state"], "stopped");
    assert_eq!(first["memory"], 4096);
    assert_eq!(first["disks"].as_array().unwrap().len(), 1);
    assert_eq!(first["disks"][0]["position"], 0);
    let ex = examples();
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&first), keys(&ex["instance"]));
    assert_ts(&first["created_at"]);
    assert_ts(&first["updated_at"]);

    let started = api
        .ok(Method::POST, &format!("/api/v1/instances/{id}/start"), None)
        .await;
    assert_eq!(started["id"], id.as_str());
    assert_eq!(started["state"], "starting");
    wait_state(&api, &id, "running").await;

    let again = api
        .call(Method::POST, &format!("/api/v1/instances/{id}/start"), None)
        .await;
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(again.json(), ex["error_validation"]);

    // Memory cannot change while running.
    let put = api
        .call(
            Method::PUT,
            &format!("/api/v1/instances/{id}"),
            Some(json!({"memory": 8192})),
        )
        .await;
    assert_eq!(put.status, StatusCode::UNPROCESSABLE_ENTITY);
    let v = put.json();
    assert_error_body(&v, "validation_failed");
    assert_eq!(v["details"]["state"], json!(["must be stopped"]));
    assert!(v["details"]["memory"].is_array());
    // A rename is fine.
    let renamed = api
        .ok(
            Method::PUT,
            &format!("/api/v1/instances/{id}"),
            Some(json!({"name": "web-3b", "memory": 4096})),
        )
        .await;
    assert_eq!(renamed["name"], "web-3b");

    let stopping = api
        .ok(Method::POST, &format!("/api/v1/instances/{id}/stop"), None)
        .await;
    assert_eq!(stopping["state"], "stopping");
    let a = api
        .call(Method::POST, &format!("/api/v1/instances/{id}/stop"), None)
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(a.json()["details"]["state"], json!(["must be running"]));
    wait_state(&api, &id, "stopped").await;

    let resized = api
        .ok(
            Method::PUT,
            &format!("/api/v1/instances/{id}"),
            Some(json!({"memory": 8192})),
        )
        .await;
    assert_eq!(resized["memory"], 8192);

    let deleted = api
        .call(Method::DELETE, &format!("/api/v1/instances/{id}"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert!(!deleted.text.is_empty());
    assert_eq!(deleted.json()["state"], "terminating");
    let disk_id = first["disks"][0]["id"].as_str().unwrap().to_owned();
    let gone = poll("instance to disappear", Duration::from_secs(5), || async {
        let a = api
            .call(Method::GET, &format!("/api/v1/instances/{id}"), None)
            .await;
        match a.status {
            StatusCode::OK => {
                let s = a.json()["state"].as_str().unwrap().to_owned();
                assert!(s == "terminating" || s == "terminated", "{s}");
                None
            }
            _ => Some(a),
        }
    })
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert!(gone.content_type.starts_with("application/json"));
    assert_error_body(&gone.json(), "not_found");
    // An assembled instance's disk survives it, unattached.
    let d = api.get(&format!("/api/v1/disks/{disk_id}")).await;
    assert_eq!(d["state"], "unattached");
    assert!(d["instance_id"].is_null());
}

#[tokio::test]
async fn terminated_is_visible_then_gone() {
    let opts = SimOptions {
        timings: SimTimings {
            terminated_visible: Duration::from_secs(30),
            ..SimTimings::default()
        },
        ..two_accounts()
    };
    let sim = sim(opts).await;
    let api = Api::new(&sim, A_STATIC);
    let inst = assemble(&api, "short").await;
    let id = inst["id"].as_str().unwrap();
    api.ok(Method::DELETE, &format!("/api/v1/instances/{id}"), None)
        .await;
    wait_state(&api, id, "terminated").await;
    let list = api.get("/api/v1/instances").await;
    assert!(list.as_array().unwrap().iter().any(|i| i["id"] == id));
    let a = api
        .call(Method::POST, &format!("/api/v1/instances/{id}/start"), None)
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let a = api
        .call(Method::DELETE, &format!("/api/v1/instances/{id}"), None)
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn create_basic_provisions() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    let mut body = examples()["create_basic_request"].clone();
    body["start_when_ready"] = json!(false);
    let v = api.ok(Method::POST, "/api/v1/instances", Some(body)).await;
    assert_eq!(v["state"], "provisioning");
    assert_eq!(v["name"], "web-2");
    assert_eq!(v["network_adapters"][0]["network"]["is_public"], true);
    assert_eq!(v["disks"][0]["size"], 20);
    let id = v["id"].as_str().unwrap().to_owned();
    wait_state(&api, &id, "stopped").await;

    let mut body = examples()["create_basic_request"].clone();
    body["name"] = json!("web-4");
    let v = api.ok(Method::POST, "/api/v1/instances", Some(body)).await;
    assert_eq!(v["state"], "provisioning");
    let id = v["id"].as_str().unwrap().to_owned();
    wait_state(&api, &id, "running").await;

    // create-basic disks and addresses go with the instance.
    let ip = v["network_adapters"][0]["ip_addresses"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let disk = v["disks"][0]["id"].as_str().unwrap().to_owned();
    api.ok(Method::DELETE, &format!("/api/v1/instances/{id}"), None)
        .await;
    poll("boot disk deleted", Duration::from_secs(5), || async {
        let a = api
            .call(Method::GET, &format!("/api/v1/disks/{disk}"), None)
            .await;
        (a.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let a = api
        .call(Method::GET, &format!("/api/v1/ip_addresses/{ip}"), None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn body_validation() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    let a = api
        .call(
            Method::POST,
            "/api/v1/instances",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let v = a.json();
    assert_error_body(&v, "validation_failed");
    for f in ["memory", "region", "size", "template"] {
        assert!(v["details"][f].is_array(), "{f}: {v}");
    }
    assert!(v["details"].get("name").is_none());

    let mut body = examples()["create_basic_request"].clone();
    body["memory"] = json!(100);
    let a = api
        .call(Method::POST, "/api/v1/instances", Some(body))
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        a.json()["details"]["memory"],
        json!(["100 is less than the minimum of 512"])
    );

    let a = api
        .http
        .post(format!("{}/api/v1/instances/assemble", api.base))
        .bearer_auth(A_STATIC)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), StatusCode::BAD_REQUEST);
    assert_error_body(&a.json::<Value>().await.unwrap(), "invalid_request");

    // An attached disk cannot be assembled into another instance.
    let mut body = examples()["assemble_request"].clone();
    body["ip_addresses"] = json!([]);
    let a = api
        .call(Method::POST, "/api/v1/instances/assemble", Some(body))
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.json()["details"]["disks"].is_array());

    let a = api
        .call(Method::POST, "/api/v1/disks", Some(json!({})))
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.json()["details"]["name"].is_array());
}

#[tokio::test]
async fn accounts_are_isolated() {
    let sim = sim(two_accounts()).await;
    let a = Api::new(&sim, A_STATIC);
    let b = Api::new(&sim, &issued_token(&sim, "beta-id", "beta-secret").await);
    let inst = assemble(&a, "alpha-only").await;
    let id = inst["id"].as_str().unwrap();
    for (m, p) in [
        (Method::GET, format!("/api/v1/instances/{id}")),
        (Method::GET, format!("/api/v1/instances/{id}/state")),
        (Method::POST, format!("/api/v1/instances/{id}/start")),
        (Method::DELETE, format!("/api/v1/instances/{id}")),
        (Method::GET, format!("/api/v1/instances/{WEB1}")),
    ] {
        let r = b.call(m.clone(), &p, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{m} {p}");
        assert_error_body(&r.json(), "not_found");
    }
    let listed = b.get("/api/v1/instances").await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|i| i["id"] != id && i["id"] != WEB1));
    let disks = b.get("/api/v1/disks").await;
    assert!(
        disks
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["id"] != inst["disks"][0]["id"])
    );
    // Still stopped for its owner: beta's start did nothing.
    assert_eq!(a.state(id).await, "stopped");

    let stats = sim.calls();
    assert_eq!(
        stats.account_count("beta", "POST", "/api/v1/instances/{id}/start"),
        1
    );
    assert_eq!(
        stats.account_count("alpha", "POST", "/api/v1/instances/{id}/start"),
        0
    );
    assert_eq!(stats.account_count("beta", "POST", "/oauth/token"), 1);
}

#[tokio::test]
async fn expired_tokens_answer_invalid_token() {
    let sim = sim(two_accounts()).await;
    let t = issued_token(&sim, "alpha-id", "alpha-secret").await;
    let api = Api::new(&sim, &t);
    api.get("/api/v1/instances").await;
    sim.expire_tokens();
    let a = api.call(Method::GET, "/api/v1/instances", None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let v = a.json();
    assert_eq!(v["error"], "invalid_token");
    assert_eq!(v["error_description"], "The access token expired");
    // Static tokens do not expire; a new token works.
    Api::new(&sim, A_STATIC).get("/api/v1/instances").await;
    let t2 = issued_token(&sim, "alpha-id", "alpha-secret").await;
    Api::new(&sim, &t2).get("/api/v1/instances").await;
    assert_eq!(sim.tokens_issued(), 2);
}

#[tokio::test]
async fn tokens_expire_after_their_ttl() {
    let opts = SimOptions {
        token_ttl: Duration::from_millis(1500),
        ..two_accounts()
    };
    let sim = sim(opts).await;
    let r = token(&client(), &sim.url(), "alpha-id", "alpha-secret").await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["expires_in"], 1);
    let api = Api::new(&sim, v["access_token"].as_str().unwrap());
    api.get("/api/v1/regions").await;
    poll("token to expire", Duration::from_secs(5), || async {
        let a = api.call(Method::GET, "/api/v1/regions", None).await;
        (a.status == StatusCode::UNAUTHORIZED).then(|| a.json())
    })
    .await;
}

#[tokio::test]
async fn unknown_paths_get_a_json_404() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    for (m, p) in [
        (Method::GET, "/nope".to_owned()),
        (Method::GET, "/api/v1/volumes".to_owned()),
        (Method::GET, "//api/v1/instances".to_owned()),
        (Method::PATCH, format!("/api/v1/instances/{WEB1}")),
        (Method::GET, "/api/v2/instances".to_owned()),
    ] {
        let a = api.call(m.clone(), &p, None).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{m} {p}");
        assert!(a.content_type.starts_with("application/json"), "{m} {p}");
        let v = a.json();
        assert_error_body(&v, "not_found");
        assert!(
            v["error_description"].as_str().unwrap().contains(&p),
            "{m} {p}: {v}"
        );
    }
    // Unknown ids under a known route are JSON.
    let a = api
        .call(Method::GET, "/api/v1/instances/not-a-uuid", None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_error_body(&a.json(), "not_found");
    assert_eq!(sim.calls().count("GET", "//api/v1/instances"), 1);
}

#[tokio::test]
async fn other_resources() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    let ex = examples();

    // Disks: create, resize, clone, delete.
    let disk = fresh_disk(&api, "data-1").await;
    let r = api
        .ok(
            Method::POST,
            &format!("/api/v1/disks/{disk}/resize"),
            Some(ex["disk_resize_request"].clone()),
        )
        .await;
    assert_eq!(r["size"], 80);
    assert_eq!(r["state"], "resizing");
    let a = api
        .call(
            Method::POST,
            &format!("/api/v1/disks/{disk}/resize"),
            Some(json!({"size": 10})),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    wait_disk(&api, &disk, "unattached").await;
    let c = api
        .ok(
            Method::POST,
            &format!("/api/v1/disks/{disk}/clone"),
            Some(json!({"name": "data-1-copy"})),
        )
        .await;
    assert_eq!(c["state"], "cloning");
    assert_eq!(c["size"], 80);
    let clone = c["id"].as_str().unwrap().to_owned();
    assert_ne!(clone, disk);
    wait_disk(&api, &clone, "unattached").await;
    let del = api
        .ok(Method::DELETE, &format!("/api/v1/disks/{clone}"), None)
        .await;
    assert_eq!(del["state"], "deleting");
    poll("clone deleted", Duration::from_secs(5), || async {
        let a = api
            .call(Method::GET, &format!("/api/v1/disks/{clone}"), None)
            .await;
        (a.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let attached = ex["disk"]["id"].as_str().unwrap();
    let a = api
        .call(Method::DELETE, &format!("/api/v1/disks/{attached}"), None)
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Addresses and networks.
    let public = ex["network"]["id"].as_str().unwrap();
    let ip = api
        .ok(
            Method::POST,
            "/api/v1/ip_addresses",
            Some(json!({"network": public, "name": "spare"})),
        )
        .await;
    assert!(ip["address"].as_str().unwrap().starts_with("203.0.113."));
    assert_eq!(ip["instance_ids"], json!([]));
    let net = api
        .ok(
            Method::POST,
            "/api/v1/networks",
            Some(json!({"name": "backend", "region": SY3, "specification": "10.99.0.0/24"})),
        )
        .await;
    assert_eq!(net["is_public"], false);
    let net_id = net["id"].as_str().unwrap().to_owned();
    let pip = api
        .ok(
            Method::POST,
            "/api/v1/ip_addresses",
            Some(json!({"network_id": net_id})),
        )
        .await;
    assert!(pip["address"].as_str().unwrap().starts_with("10.99.0."));
    let private = api.get("/api/v1/ip_addresses/private").await;
    assert!(
        private
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == pip["id"])
    );
    let a = api
        .call(Method::DELETE, &format!("/api/v1/networks/{net_id}"), None)
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Reconfigure a stopped instance: disks, keys, adapters, group.
    let inst = assemble(&api, "cfg").await;
    let id = inst["id"].as_str().unwrap().to_owned();
    let boot = inst["disks"][0]["id"].as_str().unwrap().to_owned();
    // The attachment PUTs answer the attached objects, a JSON array (apiclient-go).
    let v = api
        .ok(
            Method::PUT,
            &format!("/api/v1/instances/{id}/disks"),
            Some(json!({"disks": [boot, disk]})),
        )
        .await;
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v[1]["id"], disk.as_str());
    assert_eq!(v[1]["position"], 1);
    assert_eq!(v[1]["state"], "attached");
    assert_eq!(v[1]["instance_id"], id.as_str());
    let key = ex["public_key"]["id"].as_str().unwrap();
    let v = api
        .ok(
            Method::PUT,
            &format!("/api/v1/instances/{id}/public_keys"),
            Some(json!({"public_keys": [key]})),
        )
        .await;
    assert_eq!(v, json!([ex["public_key"]]));
    let v = api
        .ok(
            Method::PUT,
            &format!("/api/v1/instances/{id}/network_adapters"),
            Some(json!({"network_adapters": [
                {"network": public, "ip_addresses": [ip["id"]]},
                {"network": net_id, "ip_addresses": [pip["id"]]}]})),
        )
        .await;
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v[1]["index"], 1);
    assert_eq!(v[0]["ip_addresses"][0]["address"], ip["address"]);
    assert_eq!(api.state(&id).await, "updating_network");
    let got = api.get(&format!("/api/v1/instances/{id}")).await;
    assert_eq!(got["network_adapters"], v);
    wait_state(&api, &id, "stopped").await;
    let v = api
        .ok(
            Method::PUT,
            &format!("/api/v1/instances/{id}/availability_group"),
            Some(json!({"availability_group": [WEB1]})),
        )
        .await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["id"], WEB1);
    assert_eq!(
        api.get(&format!("/api/v1/instances/{id}")).await["availability_group"],
        json!([WEB1])
    );
    let a = api
        .call(
            Method::DELETE,
            &format!("/api/v1/ip_addresses/{}", ip["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Context and note: every context call answers one object per entry, a JSON array.
    assert_eq!(
        api.get(&format!("/api/v1/instances/{id}/context")).await,
        json!([])
    );
    let c = api
        .ok(
            Method::POST,
            &format!("/api/v1/instances/{id}/context"),
            Some(json!({"key": "role", "value": "web"})),
        )
        .await;
    assert_eq!(c, json!([{"key": "role", "value": "web"}]));
    let c = api
        .ok(
            Method::PUT,
            &format!("/api/v1/instances/{id}/context"),
            Some(json!({"a": "1", "b": "2"})),
        )
        .await;
    assert_eq!(
        c,
        json!([{"key": "a", "value": "1"}, {"key": "b", "value": "2"}])
    );
    let c = api
        .ok(
            Method::DELETE,
            &format!("/api/v1/instances/{id}/context/a"),
            None,
        )
        .await;
    assert_eq!(c, json!([{"key": "b", "value": "2"}]));
    assert_eq!(
        api.get(&format!("/api/v1/instances/{id}/context")).await,
        json!([{"key": "b", "value": "2"}])
    );
    let a = api
        .call(
            Method::DELETE,
            &format!("/api/v1/instances/{id}/context/zz"),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(api.get(&format!("/api/v1/instances/{id}/note")).await["note"].is_string());

    // Remote access needs a running instance.
    let a = api
        .call(
            Method::POST,
            &format!("/api/v1/instances/{id}/remote_access"),
            Some(ex["remote_access_request"].clone()),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let s = api
        .ok(
            Method::POST,
            &format!("/api/v1/instances/{WEB1}/remote_access"),
            Some(ex["remote_access_request"].clone()),
        )
        .await;
    assert_eq!(s["type"], "vnc");
    let sid = s["id"].as_str().unwrap();
    assert_eq!(api.get(&format!("/api/v1/console_sessions/{sid}")).await, s);

    // Public keys.
    let a = api
        .call(
            Method::POST,
            "/api/v1/public_keys",
            Some(json!({"name": "bad", "key": "nope"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.json()["details"]["key"].is_array());
    // An RSA 4096 key is about 730 characters.
    let rsa = format!("ssh-rsa AAAAB3NzaC1yc2E{} ops@example", "A".repeat(700));
    let k = api
        .ok(
            Method::POST,
            "/api/v1/public_keys",
            Some(json!({"name": "rsa", "key": rsa})),
        )
        .await;
    assert_eq!(k["key"], rsa.as_str());
    let kid = k["id"].as_str().unwrap();
    assert_eq!(api.get(&format!("/api/v1/public_keys/{kid}")).await, k);
    let listed = api.get("/api/v1/public_keys").await;
    assert!(listed.as_array().unwrap().contains(&k));
}

/// `GET /regions/{id}` and `/templates/{id}`: the Go client's `RegionInfo` and
/// `TemplateInfo`, apiclient-go's `Region.Show` and `Template.Show`, the Terraform region
/// data source.
#[tokio::test]
async fn single_regions_and_templates() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    let ex = examples();
    assert_eq!(
        api.get(&format!("/api/v1/regions/{SY3}")).await,
        ex["region"]
    );
    // By code too (the Go client resolves codes through the list first; harmless).
    assert_eq!(api.get("/api/v1/regions/SY3").await, ex["region"]);
    let t = ex["template"]["id"].as_str().unwrap();
    assert_eq!(
        api.get(&format!("/api/v1/templates/{t}")).await,
        ex["template"]
    );
    for p in [
        "/api/v1/regions/00000000-0000-4000-8000-000000000000",
        "/api/v1/templates/00000000-0000-4000-8000-000000000000",
        "/api/v1/templates/ubuntu-22-04",
    ] {
        let a = api.call(Method::GET, p, None).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{p}");
        assert!(a.content_type.starts_with("application/json"), "{p}");
        assert_error_body(&a.json(), "not_found");
    }
}

/// The Terraform provider's create (and the Go client's test) assembles with no `disks`: a
/// network or cdrom boot. Its first GET must say `stopped`.
#[tokio::test]
async fn assemble_without_disks() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    let tier = examples()["performance_tier_instance"]["id"].clone();
    let v = api
        .ok(
            Method::POST,
            "/api/v1/instances/assemble",
            Some(
                json!({"name": "netboot", "memory": 2048, "performance_tier": tier,
                        "region": SY3, "boot_device": "network"}),
            ),
        )
        .await;
    let id = v["id"].as_str().unwrap();
    let got = api.get(&format!("/api/v1/instances/{id}")).await;
    assert_eq!(got["state"], "stopped");
    assert_eq!(got["disks"], json!([]));
    assert_eq!(got["boot_device"], "network");
    // Still refused without what OrionVM needs.
    let a = api
        .call(
            Method::POST,
            "/api/v1/instances/assemble",
            Some(json!({"name": "x", "region": SY3})),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    let v = a.json();
    assert!(v["details"]["memory"].is_array(), "{v}");
    assert!(v["details"].get("disks").is_none(), "{v}");
}

/// Packer's cleanup, back to back and without waiting: detach every disk (the built disk
/// survives, unattached), remove every adapter, free the address, delete the instance.
#[tokio::test]
async fn packer_cleanup_runs_back_to_back() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    let public = examples()["network"]["id"].clone();
    let ip = api
        .ok(
            Method::POST,
            "/api/v1/ip_addresses",
            Some(json!({"network": public, "name": "Packer: build"})),
        )
        .await;
    let inst = assemble(&api, "Packer: build").await;
    let id = inst["id"].as_str().unwrap();
    let disk = inst["disks"][0]["id"].as_str().unwrap();
    let put = |field: &'static str, value: Value| {
        let api = &api;
        async move {
            api.ok(
                Method::PUT,
                &format!("/api/v1/instances/{id}/{field}"),
                Some(json!({ field: value })),
            )
            .await
        }
    };
    put(
        "network_adapters",
        json!([{"network": public, "ip_addresses": [ip["id"]]}]),
    )
    .await;
    wait_state(&api, id, "stopped").await;

    assert_eq!(put("disks", json!([])).await, json!([]));
    let d = api.get(&format!("/api/v1/disks/{disk}")).await;
    assert_eq!(d["state"], "unattached");
    assert!(d["instance_id"].is_null());
    assert_eq!(put("network_adapters", json!([])).await, json!([]));
    assert_eq!(api.state(id).await, "updating_network");
    let ip_id = ip["id"].as_str().unwrap();
    api.ok(
        Method::DELETE,
        &format!("/api/v1/ip_addresses/{ip_id}"),
        None,
    )
    .await;
    // Right after the adapters PUT, still `updating_network`: the DELETE is taken.
    let del = api
        .ok(Method::DELETE, &format!("/api/v1/instances/{id}"), None)
        .await;
    assert_eq!(del["state"], "terminating");
    wait_state(&api, id, "terminated").await;
    // The built disk outlives the instance.
    let d = api.get(&format!("/api/v1/disks/{disk}")).await;
    assert_eq!(d["state"], "unattached");
}

/// The HyperCloud Go client's `InstanceUpdate` sends its PUTs back to back (disks, network
/// adapters, public keys, then the rest): none waits for the network update.
#[tokio::test]
async fn go_client_update_runs_back_to_back() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    let ex = examples();
    let inst = assemble(&api, "go-upd").await;
    let id = inst["id"].as_str().unwrap();
    let extra = fresh_disk(&api, "go-upd-extra").await;
    let boot = inst["disks"][0]["id"].clone();
    let ip = api
        .ok(
            Method::POST,
            "/api/v1/ip_addresses",
            Some(json!({"region": SY3})),
        )
        .await;
    let base = format!("/api/v1/instances/{id}");
    api.ok(
        Method::PUT,
        &format!("{base}/availability_group"),
        Some(json!({"availability_groups": [WEB1]})),
    )
    .await;
    api.ok(
        Method::PUT,
        &format!("{base}/disks"),
        Some(json!({"disks": [boot, extra]})),
    )
    .await;
    api.ok(
        Method::PUT,
        &format!("{base}/network_adapters"),
        Some(json!({"network_adapters": [{"network": ip["network_id"], "ip_addresses": [ip["id"]]}]})),
    )
    .await;
    let keys = api
        .ok(
            Method::PUT,
            &format!("{base}/public_keys"),
            Some(json!({"public_keys": [ex["public_key"]["id"]]})),
        )
        .await;
    assert_eq!(keys.as_array().unwrap().len(), 1);
    let renamed = api
        .ok(Method::PUT, &base, Some(json!({"name": "go-upd-2"})))
        .await;
    assert_eq!(renamed["name"], "go-upd-2");
    // Memory still needs a stopped instance, and says so with a `state` detail.
    let a = api
        .call(Method::PUT, &base, Some(json!({"memory": 8192})))
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(a.json()["details"]["state"], json!(["must be stopped"]));
    wait_state(&api, id, "stopped").await;
    let got = api.get(&base).await;
    assert_eq!(got["availability_group"], json!([WEB1]));
    assert_eq!(got["disks"].as_array().unwrap().len(), 2);
    assert_eq!(
        got["network_adapters"][0]["ip_addresses"][0]["id"],
        ip["id"]
    );
    assert_eq!(got["name"], "go-upd-2");
}

/// Packer's VNC builder attaches and detaches disks on its running downloader VM, renames the
/// disk with an `md5=` tag, and marks it `cdrom`; the Go client's `DiskUpdate` resends the size
/// it just resized to.
#[tokio::test]
async fn live_disks_and_disk_updates() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    let ex = examples();
    let disk = fresh_disk(&api, "Downloading... build").await;
    let boot = ex["disk"]["id"].as_str().unwrap();
    assert_eq!(api.state(WEB1).await, "running");
    let base = format!("/api/v1/instances/{WEB1}/disks");
    let v = api
        .ok(Method::PUT, &base, Some(json!({"disks": [boot, disk]})))
        .await;
    assert_eq!(v[1]["id"], disk.as_str());
    assert_eq!(v[1]["position"], 1);
    let v = api
        .ok(
            Method::PUT,
            &format!("/api/v1/disks/{disk}"),
            Some(json!({"name": "build md5=0123abcd"})),
        )
        .await;
    assert_eq!(v["name"], "build md5=0123abcd");
    let v = api
        .ok(Method::PUT, &base, Some(json!({"disks": [boot]})))
        .await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    wait_disk(&api, &disk, "unattached").await;
    let v = api
        .ok(
            Method::PUT,
            &format!("/api/v1/disks/{disk}"),
            Some(json!({"cdrom": true})),
        )
        .await;
    assert_eq!(v["cdrom"], true);

    // Resize, then the same body with the new size on the disk itself.
    api.ok(
        Method::POST,
        &format!("/api/v1/disks/{disk}/resize"),
        Some(json!({"size": 30})),
    )
    .await;
    let v = api
        .ok(
            Method::PUT,
            &format!("/api/v1/disks/{disk}"),
            Some(json!({"name": "grown", "size": 30})),
        )
        .await;
    assert_eq!(
        (v["name"].as_str(), v["size"].as_u64()),
        (Some("grown"), Some(30))
    );
    let a = api
        .call(
            Method::PUT,
            &format!("/api/v1/disks/{disk}"),
            Some(json!({"size": 40})),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.json()["details"]["size"].is_array());
    wait_disk(&api, &disk, "unattached").await;
}

/// A moving instance can be deleted; one being terminated cannot.
#[tokio::test]
async fn delete_while_moving() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    let inst = assemble(&api, "mover").await;
    let id = inst["id"].as_str().unwrap();
    let v = api
        .ok(Method::POST, &format!("/api/v1/instances/{id}/start"), None)
        .await;
    assert_eq!(v["state"], "starting");
    let del = api
        .ok(Method::DELETE, &format!("/api/v1/instances/{id}"), None)
        .await;
    assert_eq!(del["state"], "terminating");
    let again = api
        .call(Method::DELETE, &format!("/api/v1/instances/{id}"), None)
        .await;
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        again.json()["details"]["state"],
        json!(["is already terminated"])
    );
    wait_state(&api, id, "terminated").await;
}

/// The Go client's test allocates its public address with nothing but the region, and reads
/// the network from the answer.
#[tokio::test]
async fn ip_address_by_region() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    let ip = api
        .ok(
            Method::POST,
            "/api/v1/ip_addresses",
            Some(json!({"region": SY3})),
        )
        .await;
    assert_eq!(ip["network_id"], examples()["network"]["id"]);
    assert!(ip["address"].as_str().unwrap().starts_with("203.0.113."));
    let me2 = api
        .ok(
            Method::POST,
            "/api/v1/ip_addresses",
            Some(json!({"region": "ME2"})),
        )
        .await;
    assert!(me2["address"].as_str().unwrap().starts_with("198.51.100."));
    for body in [json!({"region": "XX9"}), json!({"name": "nothing"})] {
        let a = api
            .call(Method::POST, "/api/v1/ip_addresses", Some(body.clone()))
            .await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_error_body(&a.json(), "validation_failed");
    }
}

// ---------------------------------------------------------------------------
// Faults.

#[tokio::test]
async fn fault_latency() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    sim.set_faults(FaultPlan {
        path_prefix: Some("/api/v1/regions".into()),
        latency: Some(Duration::from_millis(300)),
        ..FaultPlan::default()
    });
    let t = Instant::now();
    api.get("/api/v1/regions").await;
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    sim.clear_faults();
    let t = Instant::now();
    let a = api
        .http
        .get(format!("{}/api/v1/templates", api.base))
        .bearer_auth(A_STATIC)
        .header("x-sim-fault", "latency=250ms")
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(250));
    assert!(sim.calls().faulted >= 2);
}

#[tokio::test]
async fn fault_error_bursts() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    sim.set_faults(FaultPlan {
        error_burst: Some(ErrorBurst {
            status: 503,
            count: 2,
            html: false,
        }),
        method: Some("GET".into()),
        ..FaultPlan::default()
    });
    // A POST is out of scope.
    api.ok(
        Method::POST,
        "/api/v1/public_keys",
        Some(json!({"name": "k", "key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest k@x"})),
    )
    .await;
    for _ in 0..2 {
        let a = api.call(Method::GET, "/api/v1/instances", None).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(a.content_type.starts_with("application/json"));
        assert_error_body(&a.json(), "service_unavailable");
    }
    api.get("/api/v1/instances").await;

    sim.set_faults(FaultPlan {
        error_burst: Some(ErrorBurst {
            status: 502,
            count: 1,
            html: true,
        }),
        ..FaultPlan::default()
    });
    let a = api.call(Method::GET, "/api/v1/instances", None).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert!(a.content_type.starts_with("text/html"));
    assert!(a.text.contains("502 Bad Gateway"));
    api.get("/api/v1/instances").await;
    // The state change of a failed call did not happen.
    sim.set_faults(FaultPlan {
        error_burst: Some(ErrorBurst {
            status: 500,
            count: 1,
            html: false,
        }),
        ..FaultPlan::default()
    });
    let a = api
        .call(
            Method::POST,
            &format!("/api/v1/instances/{WEB1}/stop"),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(api.state(WEB1).await, "running");
}

#[tokio::test]
async fn fault_reset_is_a_real_rst() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    sim.set_faults(FaultPlan {
        reset: 1,
        path_prefix: Some("/api/v1/instances".into()),
        ..FaultPlan::default()
    });
    let err = api
        .http
        .get(format!("{}/api/v1/instances", api.base))
        .bearer_auth(A_STATIC)
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_status() && !err.is_timeout(), "{err:?}");
    // Only one: the next call answers.
    api.get("/api/v1/instances").await;

    // On the wire: ECONNRESET, not an orderly FIN.
    let (got, res) = raw(&sim, "X-Sim-Fault: reset\r\n").await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    let e = res.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e:?}");
    // A normal request on the same path ends with a FIN after the answer.
    let (got, res) = raw(&sim, "").await;
    assert!(res.is_ok());
    assert!(got.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn fault_reset_mid_body() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    sim.set_faults(FaultPlan {
        reset_mid_body: 1,
        ..FaultPlan::default()
    });
    let resp = api
        .http
        .get(format!("{}/api/v1/instances", api.base))
        .bearer_auth(A_STATIC)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let declared = resp.content_length().unwrap();
    assert!(declared > 0);
    assert!(resp.bytes().await.is_err());
    api.get("/api/v1/instances").await;

    let (got, res) = raw(&sim, "X-Sim-Fault: reset_mid_body\r\n").await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    assert!(
        !body.is_empty() && body.len() < len,
        "{} of {len}",
        body.len()
    );
    assert_eq!(res.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn fault_slow_body() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    let whole = api.get("/api/v1/instances").await;
    sim.set_faults(FaultPlan {
        slow_body: Some(Duration::from_millis(60)),
        ..FaultPlan::default()
    });
    let t = Instant::now();
    let resp = api
        .http
        .get(format!("{}/api/v1/instances", api.base))
        .bearer_auth(A_STATIC)
        .send()
        .await
        .unwrap();
    let headers_after = t.elapsed();
    let mut resp = resp;
    let mut chunks = 0;
    let mut buf = Vec::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        chunks += 1;
        buf.extend_from_slice(&c);
    }
    let total = t.elapsed();
    assert!(chunks >= 3, "{chunks} chunks");
    assert!(
        total >= headers_after + Duration::from_millis(60 * 2),
        "{total:?}"
    );
    let v: Value = serde_json::from_slice(&buf).unwrap();
    assert_eq!(v, whole);

    sim.clear_faults();
    let t = Instant::now();
    let resp = api
        .http
        .get(format!("{}/api/v1/regions", api.base))
        .bearer_auth(A_STATIC)
        .header("x-sim-fault", "slow_body=80ms")
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert!(v.is_array());
    assert!(t.elapsed() >= Duration::from_millis(80));
}

#[tokio::test]
async fn fault_hang_transitions() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    let other = assemble(&api, "other").await;
    let other = other["id"].as_str().unwrap().to_owned();
    // Only transitions begun by a stop hang (a reboot whose stop never ends).
    sim.set_faults(FaultPlan {
        hang_transitions: true,
        path_prefix: Some("/api/v1/instances/{id}/stop".into()),
        ..FaultPlan::default()
    });
    let v = api
        .ok(
            Method::POST,
            &format!("/api/v1/instances/{WEB1}/stop"),
            None,
        )
        .await;
    assert_eq!(v["state"], "stopping");
    api.ok(
        Method::POST,
        &format!("/api/v1/instances/{other}/start"),
        None,
    )
    .await;
    wait_state(&api, &other, "running").await;
    // Ten times the stop timing (100 ms) later it is still stopping.
    let until = Instant::now() + Duration::from_millis(1000);
    while Instant::now() < until {
        assert_eq!(api.state(WEB1).await, "stopping");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.clear_faults();
    wait_state(&api, WEB1, "stopped").await;

    // Unscoped: everything moving hangs, create-basic included.
    sim.set_faults(FaultPlan {
        hang_transitions: true,
        ..FaultPlan::default()
    });
    let v = api
        .ok(
            Method::POST,
            "/api/v1/instances",
            Some(examples()["create_basic_request"].clone()),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_owned();
    let until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < until {
        assert_eq!(api.state(&id).await, "provisioning");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.clear_faults();
    wait_state(&api, &id, "running").await;
}

#[tokio::test]
async fn fault_empty_error() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    sim.set_faults(FaultPlan {
        empty_error: Some(500),
        path_prefix: Some("/api/v1/disks".into()),
        ..FaultPlan::default()
    });
    for _ in 0..2 {
        let a = api.call(Method::GET, "/api/v1/disks", None).await;
        assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(a.text.is_empty());
    }
    api.get("/api/v1/instances").await;
    let (got, _) = raw(&sim, "X-Sim-Fault: empty=502\r\n").await;
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 502"), "{text}");
    assert!(text.contains("content-length: 0"), "{text}");
    assert!(text.ends_with("\r\n\r\n"));
}

#[tokio::test]
async fn fault_header_vocabulary() {
    let sim = sim(two_accounts()).await;
    let http = client();
    let send = |fault: &'static str| {
        http.get(format!("{}/api/v1/regions", sim.url()))
            .bearer_auth(A_STATIC)
            .header("x-sim-fault", fault)
            .send()
    };
    let r = send("status=503").await.unwrap();
    assert_eq!(r.status(), 503);
    assert_error_body(&r.json::<Value>().await.unwrap(), "service_unavailable");
    let r = send("status=502;html").await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let r = send("empty=500").await.unwrap();
    assert_eq!(r.status(), 500);
    assert!(r.bytes().await.unwrap().is_empty());
    assert!(send("reset").await.is_err());
    let r = send("reset_mid_body").await.unwrap();
    assert!(r.bytes().await.is_err());
    let t = Instant::now();
    let r = send("latency=200ms, slow_body=20ms").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.json::<Value>().await.unwrap().is_array());
    assert!(t.elapsed() >= Duration::from_millis(200));
    let r = send("explode=1").await.unwrap();
    assert_eq!(r.status(), 400);
    assert_error_body(&r.json::<Value>().await.unwrap(), "invalid_request");
    // The header fault does not touch the next request.
    let r = http
        .get(format!("{}/api/v1/regions", sim.url()))
        .bearer_auth(A_STATIC)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// ---------------------------------------------------------------------------
// Counting and the control API.

#[tokio::test]
async fn calls_are_counted() {
    let sim = sim(two_accounts()).await;
    let api = Api::new(&sim, A_STATIC);
    api.get("/api/v1/regions").await;
    sim.reset_calls();
    assert_eq!(sim.calls().total, 0);

    let t = issued_token(&sim, "beta-id", "beta-secret").await;
    api.get("/api/v1/instances").await;
    api.get("/api/v1/instances").await;
    api.ok(
        Method::POST,
        &format!("/api/v1/instances/{WEB1}/stop"),
        None,
    )
    .await;
    Api::new(&sim, &t).get("/api/v1/instances").await;
    let _ = client()
        .get(format!("{}/api/v1/instances", sim.url()))
        .send()
        .await
        .unwrap();

    let s = sim.calls();
    assert_eq!(s.total, 6);
    assert_eq!(s.count("GET", "/api/v1/instances"), 4);
    assert_eq!(s.count("post", "/api/v1/instances/{id}/stop"), 1);
    assert_eq!(s.count("POST", "/api/v1/instances/{id}/start"), 0);
    assert_eq!(s.count("POST", "/oauth/token"), 1);
    assert_eq!(s.account_total("alpha"), 3);
    assert_eq!(s.account_total("beta"), 2);
    assert_eq!(s.account_count("alpha", "GET", "/api/v1/instances"), 2);
    assert_eq!(s.api_calls(), 5);
    let text = serde_json::to_string(&s).unwrap();
    assert!(text.contains("POST /api/v1/instances/{id}/stop"));
}

#[tokio::test]
async fn control_api() {
    let sim = sim(two_accounts()).await;
    let http = client();
    let base = sim.url();
    let api = Api::new(&sim, A_STATIC);
    api.get("/api/v1/regions").await;

    let health: Value = http
        .get(format!("{base}/_sim/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let calls: CallStats = http
        .get(format!("{base}/_sim/calls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(calls.total, 1);
    assert_eq!(calls.count("GET", "/api/v1/regions"), 1);
    let r = http
        .post(format!("{base}/_sim/calls/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sim.calls().total, 0);

    let r = http
        .put(format!("{base}/_sim/faults"))
        .json(&json!({"path_prefix": "/api/v1/instances", "error_burst": {"status": 503, "count": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let state: Value = http
        .get(format!("{base}/_sim/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["error_burst_left"], 1);
    let a = api.call(Method::GET, "/api/v1/instances", None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);

    let r = http
        .put(format!("{base}/_sim/faults"))
        .json(&json!({"reset": 5, "latency_ms": 10000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .delete(format!("{base}/_sim/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    api.get("/api/v1/instances").await;

    for bad in [
        json!({"resets": 1}),
        json!({"error_burst": {"status": 200, "count": 1}}),
    ] {
        let r = http
            .put(format!("{base}/_sim/faults"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert_error_body(&r.json::<Value>().await.unwrap(), "invalid_request");
    }

    let t = issued_token(&sim, "alpha-id", "alpha-secret").await;
    let r = http
        .post(format!("{base}/_sim/expire_tokens"))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["expired"], 1);
    let a = Api::new(&sim, &t)
        .call(Method::GET, "/api/v1/instances", None)
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["error"], "invalid_token");

    let reqs: Value = http
        .get(format!("{base}/_sim/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!reqs.as_array().unwrap().is_empty());
    // Control calls are not counted.
    let s = sim.calls();
    assert_eq!(s.total, 4);
    assert!(s.routes.keys().all(|k| !k.contains("/_sim")));
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let sim = sim(two_accounts()).await;
    let addr = sim.addr();
    Api::new(&sim, A_STATIC).get("/api/v1/regions").await;
    sim.shutdown();
    poll("listener to close", Duration::from_secs(5), || async {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
}

#[tokio::test]
async fn demo_options() {
    let o = SimOptions::demo();
    assert!(o.accounts.len() >= 2);
    assert!(o.timings.start >= Duration::from_secs(1));
    let sim = sim(o).await;
    let t = issued_token(
        &sim,
        orion_sim::DEMO_ACME_CLIENT_ID,
        orion_sim::DEMO_ACME_CLIENT_SECRET,
    )
    .await;
    Api::new(&sim, &t).get("/api/v1/instances").await;
    Api::new(&sim, orion_sim::DEMO_GLOBEX_STATIC_TOKEN)
        .get("/api/v1/instances")
        .await;
}
