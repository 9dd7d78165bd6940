//! Issue 12, point 4: `Idempotency-Key` on creates. The first answer is replayed to a retry
//! with the same key and body (`Idempotent-Replayed: true`), another body gets 422, a retry
//! while the first is in flight 409; after a reset that left the outcome unknown, a retry looks
//! the object up at OrionVM (found: answered as the create; not found: created); keys are
//! per tenant; metrics and the audit trail record replays.

use crate::harness::facade::facade_config;
use crate::harness::*;
use serde_json::{Value, json};
use std::time::Duration;

const KEY_MATERIAL: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIidempotencytest";

async fn post_with_key(
    h: &Harness,
    api_key: &str,
    path: &str,
    idem: &str,
    body: &Value,
) -> reqwest::Response {
    h.http
        .post(h.url(path))
        .bearer_auth(api_key)
        .header("idempotency-key", format!("\"{idem}\""))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn replayed(r: &reqwest::Response) -> bool {
    r.headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true")
}

async fn names(h: &Harness, key: &str, list: &str, name: &str) -> usize {
    let items = ok_json(h.get(key, list).await).await;
    items
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"] == name)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_gets_the_first_answer_and_another_body_422() {
    let h = Harness::start_with(|c| c.acme_upstream = Upstream::Static).await;
    let admin = h.key("admin").to_string();
    let body = json!({"name": "idem-key-1", "key": KEY_MATERIAL});
    h.sim.reset_calls();

    let first = post_with_key(&h, &admin, "/api/v1/public_keys", "k-1", &body).await;
    assert_eq!(first.status(), 200);
    assert!(!replayed(&first));
    let first_body = first.bytes().await.unwrap();
    let again = post_with_key(&h, &admin, "/api/v1/public_keys", "k-1", &body).await;
    assert_eq!(again.status(), 200);
    assert!(replayed(&again), "{:?}", again.headers());
    let rid = again.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(again.bytes().await.unwrap(), first_body, "the same bytes");
    assert_eq!(h.sim.calls().count("POST", "/api/v1/public_keys"), 1);
    assert_eq!(
        names(&h, &admin, "/api/v1/public_keys", "idem-key-1").await,
        1
    );

    // The same key with another body: 422, nothing created.
    let other = json!({"name": "idem-key-2", "key": KEY_MATERIAL});
    let r = post_with_key(&h, &admin, "/api/v1/public_keys", "k-1", &other).await;
    let err = expect_error(r, 422, "idempotency_key_reused").await;
    assert!(err["details"]["Idempotency-Key"].is_array(), "{err}");
    assert_eq!(h.sim.calls().count("POST", "/api/v1/public_keys"), 1);

    // Without a key, nothing changes: two creates.
    for _ in 0..2 {
        let r = h
            .post(
                &admin,
                "/api/v1/public_keys",
                json!({"name": "no-key", "key": KEY_MATERIAL}),
            )
            .await;
        assert_eq!(r.status(), 200);
        assert!(!replayed(&r));
    }
    assert_eq!(names(&h, &admin, "/api/v1/public_keys", "no-key").await, 2);

    // A malformed key: 400.
    let r = h
        .http
        .post(h.url("/api/v1/public_keys"))
        .bearer_auth(&admin)
        .header("idempotency-key", "x".repeat(300))
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "invalid_idempotency_key").await;

    // Metrics and the audit trail record the replay.
    let m = h.proxy.scrape().await;
    assert_eq!(
        m.value(
            "orion_proxy_idempotency_requests_total",
            &[("route", "public_keys.create"), ("result", "replayed")]
        ),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.value(
            "orion_proxy_idempotency_requests_total",
            &[("route", "public_keys.create"), ("result", "mismatch")]
        ),
        1.0
    );
    let records = poll(
        "the replay's audit record",
        Duration::from_secs(10),
        || async {
            let r: Vec<Value> = h
                .proxy
                .audit_log()
                .into_iter()
                .filter(|r| r["http.request.id"] == rid.as_str())
                .collect();
            (!r.is_empty()).then_some(r)
        },
    )
    .await;
    assert_eq!(records[0]["orion.idempotency"], "replayed", "{records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_while_the_first_is_in_flight_gets_409() {
    // The first create takes 12 s at OrionVM (within the read timeout): room for the retry on a
    // loaded machine.
    let h = Harness::start_with(|c| {
        c.acme_upstream = Upstream::Static;
        c.read_timeout_ms = 40_000;
    })
    .await;
    let admin = h.key("admin").to_string();
    let body = json!({"name": "idem-slow", "key": KEY_MATERIAL});
    let slow = {
        let (url, admin, body) = (h.url("/api/v1/public_keys"), admin.clone(), body.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(admin)
                .header("idempotency-key", "slow-1")
                .header("x-sim-fault", "latency=12s")
                .json(&body)
                .send()
                .await
                .unwrap()
        })
    };
    // Wait until the first reached OrionVM, then retry (a generous deadline: in a loaded full
    // run this wait took more than 20 s twice).
    poll(
        "the first create at OrionVM",
        Duration::from_secs(90),
        || async { (h.sim.calls().count("POST", "/api/v1/public_keys") >= 1).then_some(()) },
    )
    .await;
    let r = post_with_key(&h, &admin, "/api/v1/public_keys", "slow-1", &body).await;
    let err = expect_error(r, 409, "idempotency_key_in_flight").await;
    assert!(err["details"]["Idempotency-Key"].is_array(), "{err}");
    let first = slow.await.unwrap();
    assert_eq!(first.status(), 200);
    let first_body: Value = first.json().await.unwrap();
    let r = post_with_key(&h, &admin, "/api/v1/public_keys", "slow-1", &body).await;
    assert!(replayed(&r));
    assert_eq!(ok_json(r).await, first_body);
    assert_eq!(h.sim.calls().count("POST", "/api/v1/public_keys"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_unknown_outcome_a_retry_finds_the_object_or_creates_it() {
    let h = Harness::start_with(|c| {
        c.acme_upstream = Upstream::Static;
        c.extra_top = facade_config(10_000);
    })
    .await;
    let admin = h.key("admin").to_string();
    let create = |name: &str| {
        json!({"name": name, "memory": 1024, "size": 20, "region": "SY3",
               "template": "debian-12", "allocate_public_ip": false, "start_when_ready": false})
    };
    const CREATE: &str = "/api/v1/instances";

    // OrionVM creates the instance, then the connection is reset: the caller gets 502.
    let body = create("idem-inst-1");
    h.sim.reset_calls();
    h.sim.set_faults(orion_sim::FaultPlan {
        path_prefix: Some(CREATE.into()),
        method: Some("POST".into()),
        reset_after: 1,
        ..Default::default()
    });
    let r = post_with_key(&h, &admin, CREATE, "inst-1", &body).await;
    assert_eq!(r.status(), 502, "{:?}", r.text().await);
    assert_eq!(
        names(&h, &admin, CREATE, "idem-inst-1").await,
        1,
        "created although reset"
    );
    // The retry looks it up and answers as the create would have: no second instance.
    let r = post_with_key(&h, &admin, CREATE, "inst-1", &body).await;
    assert_eq!(r.status(), 200);
    assert!(replayed(&r));
    assert_eq!(r.headers()["x-idempotency"], "recovered");
    let found = ok_json(r).await;
    assert_eq!(found["name"], "idem-inst-1");
    assert!(
        found["id"].is_string() && found["disks"].is_array(),
        "{found}"
    );
    assert_eq!(h.sim.calls().count("POST", CREATE), 1);
    assert_eq!(names(&h, &admin, CREATE, "idem-inst-1").await, 1);
    // And from then on it is a plain replay.
    let r = post_with_key(&h, &admin, CREATE, "inst-1", &body).await;
    assert_eq!(r.headers()["x-idempotency"], "replayed");
    assert_eq!(ok_json(r).await["id"], found["id"]);

    // Reset before OrionVM did anything: the retry finds nothing and creates, once.
    let body = create("idem-inst-2");
    h.sim.set_faults(orion_sim::FaultPlan {
        path_prefix: Some(CREATE.into()),
        method: Some("POST".into()),
        reset: 1,
        ..Default::default()
    });
    let r = post_with_key(&h, &admin, CREATE, "inst-2", &body).await;
    assert_eq!(r.status(), 502);
    assert_eq!(names(&h, &admin, CREATE, "idem-inst-2").await, 0);
    let r = post_with_key(&h, &admin, CREATE, "inst-2", &body).await;
    assert_eq!(r.status(), 200);
    assert!(!replayed(&r));
    let made = ok_json(r).await;
    assert_eq!(names(&h, &admin, CREATE, "idem-inst-2").await, 1);
    let r = post_with_key(&h, &admin, CREATE, "inst-2", &body).await;
    assert!(replayed(&r));
    assert_eq!(ok_json(r).await["id"], made["id"]);

    // The facade's create: the same, answered 201 with its Location.
    let body = json!({"name": "idem-fac-1", "memory": 1024, "region": "sy3",
                      "template": "ubuntu-22-04"});
    h.sim.set_faults(orion_sim::FaultPlan {
        path_prefix: Some(CREATE.into()),
        method: Some("POST".into()),
        reset_after: 1,
        ..Default::default()
    });
    let r = post_with_key(&h, &admin, "/v1/instances", "fac-1", &body).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    let r = post_with_key(&h, &admin, "/v1/instances", "fac-1", &body).await;
    assert_eq!(r.status(), 201);
    assert!(replayed(&r));
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let inst = ok_json(r).await;
    assert_eq!(
        location,
        format!("/v1/instances/{}", inst["id"].as_str().unwrap())
    );
    assert_eq!(names(&h, &admin, CREATE, "idem-fac-1").await, 1);
    h.sim.clear_faults();

    let m = h.proxy.scrape().await;
    assert_eq!(
        m.value(
            "orion_proxy_idempotency_requests_total",
            &[("route", "instances.create"), ("result", "recovered")]
        ),
        1.0,
        "{}",
        m.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_per_tenant_and_facade_tasks_replay() {
    let h = Harness::start_with(|c| {
        c.acme_upstream = Upstream::Static;
        c.extra_top = facade_config(10_000);
    })
    .await;
    let acme = h.key("admin").to_string();
    let globex = h.key("other_tenant_admin").to_string();
    let body = json!({"name": "idem-shared", "key": KEY_MATERIAL});
    let a = post_with_key(&h, &acme, "/api/v1/public_keys", "same-key", &body).await;
    assert_eq!(a.status(), 200);
    let a: Value = a.json().await.unwrap();
    // Tenant B's same key and body is B's own first request: created, not A's answer.
    let b = post_with_key(&h, &globex, "/api/v1/public_keys", "same-key", &body).await;
    assert_eq!(b.status(), 200);
    assert!(!replayed(&b));
    let b: Value = b.json().await.unwrap();
    assert_ne!(a["id"], b["id"]);
    assert_eq!(
        names(&h, &globex, "/api/v1/public_keys", "idem-shared").await,
        1
    );
    let b2 = post_with_key(&h, &globex, "/api/v1/public_keys", "same-key", &body).await;
    assert!(replayed(&b2));
    assert_eq!(ok_json(b2).await["id"], b["id"]);

    // The facade's reboot: the retry gets the first task, one task runs.
    let id = h.first_instance(&acme).await;
    wait_state(&h, &acme, &id, "running").await;
    let path = format!("/v1/instances/{id}/reboot");
    let r = post_with_key(&h, &acme, &path, "reboot-1", &json!({})).await;
    assert_eq!(r.status(), 202);
    let task = ok_json(r).await;
    let r = post_with_key(&h, &acme, &path, "reboot-1", &json!({})).await;
    assert_eq!(r.status(), 202);
    assert!(replayed(&r));
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(ok_json(r).await["id"], task["id"]);
    assert_eq!(
        location,
        format!("/v1/tasks/{}", task["id"].as_str().unwrap())
    );
    let tasks = ok_json(h.get(&acme, "/v1/tasks").await).await;
    assert_eq!(tasks["total"], 1, "{tasks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_never_reached_orionvm_frees_its_key() {
    // An endpoint nobody listens on: the connection is refused, nothing was created.
    let config = ConfigBuilder::unreachable();
    let proxy = ProxyProcess::start(&config).await;
    let body = json!({"name": "idem-free", "key": KEY_MATERIAL});
    for _ in 0..2 {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/public_keys", proxy.url))
            .bearer_auth(config.key("admin"))
            .header("idempotency-key", "free-1")
            .json(&body)
            .send()
            .await
            .unwrap();
        // Not 409, not a replay of the 502: each attempt tries again.
        assert!(!replayed(&r));
        expect_error(r, 502, "upstream_unreachable").await;
    }
    let m = proxy.scrape().await;
    let count = |result| {
        m.value(
            "orion_proxy_idempotency_requests_total",
            &[("route", "public_keys.create"), ("result", result)],
        )
    };
    assert_eq!(count("released"), 2.0, "{}", m.text);
    assert_eq!(
        count("retried"),
        1.0,
        "no lookup: the second attempt creates"
    );
    assert_eq!(count("unknown"), 0.0);
}
