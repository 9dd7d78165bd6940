//! Several proxy nodes, one truth (issue 14): two proxy processes sharing one real
//! `redis-server` in front of one simulator behave as one proxy for quotas, tasks, usage and
//! cache freshness; Redis failing degrades as configured and recovers without a restart.

use crate::harness::facade::facade_config;
use crate::harness::redis::RedisServer;
use crate::harness::*;
use serde_json::{Value, json};
use std::time::Duration;

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// `"default";r=4;t=57` -> 4
fn remaining(v: &str) -> u64 {
    v.split(';')
        .find_map(|p| p.strip_prefix("r="))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no r= in {v}"))
}

/// Two nodes with one config (same keys) sharing `redis`.
async fn two_nodes(config: &ConfigBuilder) -> (ProxyProcess, ProxyProcess) {
    let a = ProxyProcess::start(config).await;
    let b = ProxyProcess::start(config).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_quota_of_20_across_two_nodes() {
    let redis = RedisServer::start();
    let sim = start_sim(sim_options()).await;
    let mut config = ConfigBuilder::new(&sim.url());
    config.acme_upstream = Upstream::Static;
    config.extra_top = format!(
        "limits:\n  policies:\n    default: {{quota: 20, window_seconds: 60}}\n{}",
        redis.state_yaml("")
    );
    let (a, b) = two_nodes(&config).await;
    let key = config.key("viewer").to_string();
    // 30 requests at once, spread over both nodes however the scheduler likes.
    let http = reqwest::Client::new();
    let mut calls = Vec::new();
    for i in 0..30 {
        let node = if i % 3 == 0 { &a.url } else { &b.url };
        let req = http
            .get(format!("{node}/api/v1/regions"))
            .bearer_auth(&key)
            .send();
        calls.push(tokio::spawn(async move { req.await.unwrap() }));
    }
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    let mut left = Vec::new();
    let mut refused = 0;
    for r in &answers {
        match r.status().as_u16() {
            200 => left.push(remaining(&header(r, "ratelimit").expect("RateLimit"))),
            429 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
        assert_eq!(
            header(r, "ratelimit-policy").as_deref(),
            Some("\"default\";q=20;w=60")
        );
    }
    left.sort();
    // Exactly 20 answers, each with its own place in the shared count.
    assert_eq!(left, (0..20).collect::<Vec<u64>>(), "{refused} refused");
    assert_eq!(refused, 10);
    // Both nodes agree on what is left.
    for node in [&a, &b] {
        let r = node.get(&key, "/api/v1/regions").await;
        assert_eq!(r.status(), 429);
        assert_eq!(remaining(&header(&r, "ratelimit").unwrap()), 0);
    }
    // Another principal has its own quota.
    let r = b.get(config.key("operator"), "/api/v1/regions").await;
    assert_eq!(remaining(&header(&r, "ratelimit").unwrap()), 19);
}

async fn task_on(node: &ProxyProcess, key: &str, id: &str) -> Value {
    ok_json(node.get(key, &format!("/v1/tasks/{id}")).await).await
}

async fn running_instance(node: &ProxyProcess, key: &str) -> String {
    let list = ok_json(node.get(key, "/api/v1/instances").await).await;
    let id = list.as_array().unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    poll("the instance running", Duration::from_secs(20), || async {
        let s = ok_json(
            node.get(key, &format!("/api/v1/instances/{id}/state"))
                .await,
        )
        .await;
        (s["state"] == "running").then_some(())
    })
    .await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_shared_and_survive_a_killed_node() {
    let redis = RedisServer::start();
    let mut opts = sim_options();
    // A stop that takes a while, so that a node can die in the middle of a reboot.
    opts.timings.stop = Duration::from_secs(2);
    opts.timings.start = Duration::from_millis(100);
    let sim = start_sim(opts).await;
    let mut config = ConfigBuilder::new(&sim.url());
    config.acme_upstream = Upstream::Static;
    config.extra_top = format!("{}{}", facade_config(60_000), redis.state_yaml(""));
    let (a, b) = two_nodes(&config).await;
    let admin = config.key("admin").to_string();
    let id = running_instance(&a, &admin).await;

    // Created through A, polled to completed through B.
    let r = a
        .post(&admin, &format!("/v1/instances/{id}/reboot"), json!({}))
        .await;
    assert_eq!(r.status(), 202);
    let task = ok_json(r).await["id"].as_str().unwrap().to_string();
    let done = poll(
        "the reboot completed via B",
        Duration::from_secs(60),
        || async {
            let t = task_on(&b, &admin, &task).await;
            assert!(t["status"] != "failed", "{t}");
            (t["status"] == "completed").then_some(t)
        },
    )
    .await;
    assert_eq!(
        done["steps_done"],
        json!(["stop", "wait_stopped", "start", "wait_running"])
    );
    // Tenant-scoped on every node.
    expect_error(
        b.get(
            config.key("other_tenant_admin"),
            &format!("/v1/tasks/{task}"),
        )
        .await,
        404,
        "not_found",
    )
    .await;

    // A dies (SIGKILL) in the middle of the next reboot.
    let r = a
        .post(&admin, &format!("/v1/instances/{id}/reboot"), json!({}))
        .await;
    assert_eq!(r.status(), 202);
    let orphan = ok_json(r).await["id"].as_str().unwrap().to_string();
    poll("the reboot running", Duration::from_secs(20), || async {
        let t = task_on(&b, &admin, &orphan).await;
        (t["status"] == "running").then_some(())
    })
    .await;
    a.signal(libc::SIGKILL);
    let killed_at = std::time::Instant::now();
    // Within the lease (3 s) plus a sweep, B ends it: never running forever.
    let ended = poll(
        "the orphaned task ended",
        Duration::from_secs(30),
        || async {
            let t = task_on(&b, &admin, &orphan).await;
            (t["status"] == "failed" || t["status"] == "completed").then_some(t)
        },
    )
    .await;
    if ended["status"] == "failed" {
        assert_eq!(ended["error"]["error"], "task_abandoned", "{ended}");
        assert!(
            ended["error"]["error_description"]
                .as_str()
                .unwrap()
                .contains("lease"),
            "{ended}"
        );
    }
    assert!(killed_at.elapsed() < Duration::from_secs(30));
    drop(a);

    // A again (a new process): both tasks are still listed.
    let a = ProxyProcess::start(&config).await;
    let list = ok_json(a.get(&admin, "/v1/tasks").await).await;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&task.as_str()) && ids.contains(&orphan.as_str()),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_cache_freshness_across_nodes() {
    let redis = RedisServer::start();
    let sim = start_sim(sim_options()).await;
    let mut config = ConfigBuilder::new(&sim.url());
    config.acme_upstream = Upstream::Static;
    config.extra_top = format!(
        "limits:\n  cache: {{ttl_ms: 30000}}\n{}",
        redis.state_yaml("")
    );
    let (a, b) = two_nodes(&config).await;
    let admin = config.key("admin").to_string();
    let viewer = config.key("viewer").to_string();

    // Usage: 3 requests through A, 4 through B; either node reports 7.
    for _ in 0..3 {
        assert_eq!(a.get(&viewer, "/api/v1/regions").await.status(), 200);
    }
    for _ in 0..4 {
        assert_eq!(b.get(&viewer, "/api/v1/regions").await.status(), 200);
    }
    for node in [&a, &b] {
        poll("usage of both nodes", Duration::from_secs(20), || async {
            let u: Value = node
                .admin_get(&admin, "/admin/usage?tenant=acme")
                .await
                .json()
                .await
                .unwrap();
            let v = u["clients"]
                .as_array()?
                .iter()
                .find(|c| c["principal"] == "key:viewer")?
                .clone();
            (v["last_minute"]["requests"] == 7).then_some(())
        })
        .await;
    }

    // Cache: B caches the instance, A changes it, B's next read is the new object.
    let list = ok_json(a.get(&admin, "/api/v1/instances").await).await;
    let id = list.as_array().unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/api/v1/instances/{id}");
    let before = ok_json(b.get(&admin, &path).await).await;
    let r = b.get(&admin, &path).await;
    assert_eq!(header(&r, "x-cache").as_deref(), Some("hit"));
    let new_name = format!("{}-renamed", before["name"].as_str().unwrap());
    let r = a.http_put(&admin, &path, json!({"name": new_name})).await;
    assert!(r.status().is_success(), "{}", r.status());
    let r = b.get(&admin, &path).await;
    assert_eq!(header(&r, "x-cache").as_deref(), Some("miss"));
    let after = ok_json(r).await;
    assert_eq!(after["name"], new_name.as_str(), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failing_degrades_as_configured_and_recovers() {
    let mut redis = RedisServer::start();
    let sim = start_sim(sim_options()).await;
    let mut open = ConfigBuilder::new(&sim.url());
    open.acme_upstream = Upstream::Static;
    open.extra_top = format!(
        "limits:\n  policies:\n    default: {{quota: 1000, window_seconds: 60}}\n{}",
        redis.state_yaml("")
    );
    let mut closed = ConfigBuilder::new(&sim.url());
    closed.acme_upstream = Upstream::Static;
    closed.keys = open
        .keys
        .iter()
        .map(|k| {
            let mut c = Key::new(&k.name, &[], &k.tenant);
            c.key = k.key.clone();
            c.roles = k.roles.clone();
            c
        })
        .collect();
    closed.extra_top = format!(
        "limits:\n  policies:\n    default: {{quota: 1000, window_seconds: 60}}\n{}",
        redis.state_yaml("  on_unavailable: closed\n")
    );
    let a = ProxyProcess::start(&open).await;
    let c = ProxyProcess::start(&closed).await;
    let viewer = open.key("viewer").to_string();
    let admin = open.key("admin").to_string();
    let r = a.get(&viewer, "/api/v1/regions").await;
    assert_eq!(remaining(&header(&r, "ratelimit").unwrap()), 999);
    let ready: Value = a.get(&viewer, "/ready").await.json().await.unwrap();
    assert_eq!(
        ready["state"],
        json!({"backend": "redis", "reachable": true, "ping_ms": ready["state"]["ping_ms"]})
    );

    // Idempotency keys are shared: a create through A, retried through C, is replayed.
    let http = reqwest::Client::new();
    let create = |node: &str, idem: &str| {
        http.post(format!("{node}/api/v1/public_keys"))
            .bearer_auth(&admin)
            .header("idempotency-key", format!("\"{idem}\""))
            .json(&json!({"name": "shared-idem", "key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIsharedidem"}))
            .send()
    };
    let first = create(&a.url, "idem-1").await.unwrap();
    assert!(first.status().is_success(), "{}", first.status());
    let again = create(&c.url, "idem-1").await.unwrap();
    assert_eq!(again.status(), first.status());
    assert_eq!(
        header(&again, "idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(sim.calls().count("POST", "/api/v1/public_keys"), 1);

    // Load on A while Redis goes away: every answer is still a 200 (fail open).
    let load = {
        let url = format!("{}/api/v1/regions", a.url);
        let key = viewer.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut statuses = Vec::new();
            for _ in 0..40 {
                let r = http.get(&url).bearer_auth(&key).send().await.unwrap();
                statuses.push(r.status().as_u16());
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.stop();
    let statuses = load.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // Without Redis: no quota fields (nothing was counted), still 200.
    let r = a.get(&viewer, "/api/v1/regions").await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "ratelimit").is_none());
    // /ready says so (and stays 200 when failing open: the node serves).
    let r = a.get(&viewer, "/ready").await;
    assert_eq!(r.status(), 200);
    let ready: Value = r.json().await.unwrap();
    assert_eq!(ready["state"]["reachable"], false, "{ready}");
    // The metric counts the failures.
    let m = a.scrape().await;
    assert!(
        m.value("orion_proxy_state_errors_total", &[("op", "counters")]) >= 1.0,
        "{}",
        m.text
    );
    assert_eq!(m.value("orion_proxy_state_up", &[]), 0.0);
    // Tasks answer 503 with the error body.
    expect_error(a.get(&admin, "/v1/tasks").await, 503, "store_unavailable").await;
    // Idempotency answers 503 too.
    expect_error(
        create(&a.url, "idem-2").await.unwrap(),
        503,
        "state_unavailable",
    )
    .await;
    // The node that fails closed refuses with 503 and the error body, and is not ready.
    expect_error(
        c.get(&viewer, "/api/v1/regions").await,
        503,
        "state_unavailable",
    )
    .await;
    assert_eq!(c.get(&viewer, "/ready").await.status(), 503);
    // One log line for the change, not one per request.
    let log = a.stderr();
    assert_eq!(log.matches("Redis is unavailable").count(), 1, "{log}");

    // Redis back (empty): limits count again without a restart.
    redis.restart();
    poll("A counting again", Duration::from_secs(30), || async {
        let r = a.get(&viewer, "/api/v1/regions").await;
        header(&r, "ratelimit").map(|v| remaining(&v))
    })
    .await;
    poll("C serving again", Duration::from_secs(30), || async {
        (c.get(&viewer, "/api/v1/regions").await.status() == 200).then_some(())
    })
    .await;
    let ready: Value = a.get(&viewer, "/ready").await.json().await.unwrap();
    assert_eq!(ready["state"]["reachable"], true, "{ready}");
    assert_eq!(a.scrape().await.value("orion_proxy_state_up", &[]), 1.0);
    assert!(a.stderr().contains("Redis is reachable again"));
    assert_eq!(ok_json(a.get(&admin, "/v1/tasks").await).await["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_scales_out_on_a_local_redis() {
    let demo = DemoProcess::start_with(&["--nodes", "2"]).await;
    let urls: Vec<String> = demo.info["proxy_urls"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", demo.info))
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    assert_eq!(urls.len(), 2, "{}", demo.info);
    assert_eq!(urls[0], demo.url("proxy_url"));
    let http = reqwest::Client::new();
    for u in &urls {
        poll("every node ready", Duration::from_secs(60), || async {
            let r = http.get(format!("{u}/ready")).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
    }
    // A task made through the first node is read through the second.
    let admin = demo.key("admin");
    let list: Value = http
        .get(format!("{}/api/v1/instances", urls[0]))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let running = list
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["state"] == "running")
        .map(|i| i["id"].as_str().unwrap().to_string());
    let Some(id) = running else {
        panic!("no running instance in the demo: {list}");
    };
    let r = http
        .post(format!("{}/v1/instances/{id}/reboot", urls[0]))
        .bearer_auth(&admin)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let task: Value = r.json().await.unwrap();
    let r = http
        .get(format!(
            "{}/v1/tasks/{}",
            urls[1],
            task["id"].as_str().unwrap()
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ready: Value = http
        .get(format!("{}/ready", urls[1]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["state"]["backend"], "redis", "{ready}");
}

#[test]
fn check_validates_the_state_section() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ConfigBuilder::unreachable();
    let run = |config: &ConfigBuilder| {
        let path = config.write(dir.path(), &Ports::free());
        check_config(&path)
    };
    config.extra_top = "state:\n  backend: redis\n  redis: {url: \"redis://:hunter2@127.0.0.1:6379/0\", pool_size: 0}\n  bogus: 1\n".into();
    let r = run(&config);
    assert!(!r.ok);
    assert!(r.text().contains("bogus"), "{}", r.text());
    config.extra_top = "state:\n  backend: redis\n  redis: {url: \"redis://:hunter2@127.0.0.1:6379/0\", pool_size: 0, password: {env: ORION_PROXY_TEST_UNSET_REDIS_PW}}\n".into();
    let r = run(&config);
    let text = r.text();
    assert!(!r.ok);
    assert!(
        text.contains("state.redis.url") && !text.contains("hunter2"),
        "{text}"
    );
    assert!(text.contains("state.redis.pool_size"), "{text}");
    assert!(text.contains("ORION_PROXY_TEST_UNSET_REDIS_PW"), "{text}");
    config.extra_top = "state:\n  backend: redis\n  on_unavailable: closed\n  sync: batched\n  redis: {url: \"redis://127.0.0.1:6379/0\"}\n".into();
    let r = run(&config);
    assert!(r.ok, "{}", r.text());
}

/// Runtime-managed credentials (issue 15) on two nodes sharing one Redis: every change made
/// on one node is in force on the other at its very next request, for API keys, clients (their
/// secrets at `/oauth/token` and the tokens issued with them) and console sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_credentials_are_seen_by_a_second_node_at_once() {
    use crate::harness::console::{Console, admin, api, signing_key_yaml, token};
    use reqwest::Method as M;
    let redis = RedisServer::start();
    let sim = start_sim(sim_options()).await;
    let shared = tempfile::tempdir().unwrap();
    let mut config = ConfigBuilder::new(&sim.url());
    config.acme_upstream = Upstream::Static;
    config.extra_top = format!(
        "{}{}",
        signing_key_yaml(shared.path()),
        redis.state_yaml("")
    );
    let (a, b) = two_nodes(&config).await;
    let root = config.key("admin").to_string();
    let http = reqwest::Client::new();
    let on_a = |method: M, path: String, body: Option<Value>| {
        let (http, url, root) = (http.clone(), a.admin_url.clone(), root.clone());
        async move { admin(&http, &url, &root, method, &path, body).await }
    };

    // An API key made on A works on B at once.
    let (s, made) = on_a(
        M::POST,
        "/admin/api-keys".into(),
        Some(json!({"name": "ci", "roles": ["viewer", "console:read"], "tenant": "acme"})),
    )
    .await;
    assert_eq!(s, 201, "{made}");
    let key = made["key"].as_str().unwrap().to_string();
    let id = made["id"].as_str().unwrap().to_string();
    assert_eq!(api(&http, &b.url, &key).await, 200);
    // B lists it too (without its secret).
    let (_, listed) = admin(&http, &b.admin_url, &root, M::GET, "/admin/api-keys", None).await;
    assert!(listed.to_string().contains(&id) && !listed.to_string().contains(&key));
    // A console session on B with that key.
    let mut console = Console::new(&b.admin_url);
    assert_eq!(console.sign_in_key(&key).await, 303);
    assert!(console.signed_in("/ui/clients").await);

    // Disabled on A: refused on B at the next call, the console session on B ends too.
    let (s, _) = on_a(M::POST, format!("/admin/api-keys/{id}/disable"), None).await;
    assert_eq!(s, 200);
    assert_eq!(api(&http, &b.url, &key).await, 401);
    assert!(!console.signed_in("/ui/clients").await);
    // Enabled again on A: B takes it at once.
    let (s, _) = on_a(M::POST, format!("/admin/api-keys/{id}/enable"), None).await;
    assert_eq!(s, 200);
    assert_eq!(api(&http, &b.url, &key).await, 200);
    assert_eq!(console.sign_in_key(&key).await, 303);
    assert!(console.signed_in("/ui/clients").await);

    // Rotated on A: on B the old key is refused and the new one works; the session made with
    // the old key ends.
    let (s, rotated) = on_a(M::POST, format!("/admin/api-keys/{id}/rotate"), None).await;
    assert_eq!(s, 201, "{rotated}");
    let new_key = rotated["key"].as_str().unwrap().to_string();
    assert_eq!(api(&http, &b.url, &key).await, 401);
    assert_eq!(api(&http, &b.url, &new_key).await, 200);
    assert!(!console.signed_in("/ui/clients").await);

    // Deleted on A: refused on B.
    let (s, _) = on_a(M::DELETE, format!("/admin/api-keys/{id}"), None).await;
    assert_eq!(s, 200);
    assert_eq!(api(&http, &b.url, &new_key).await, 401);

    // A client made on A: its secret gets a token from B, and the token works on both.
    let (s, made) = on_a(
        M::POST,
        "/admin/clients".into(),
        Some(json!({"client_id": "robot", "roles": ["viewer", "console:read"], "tenant": "acme"})),
    )
    .await;
    assert_eq!(s, 201, "{made}");
    let cid = made["id"].as_str().unwrap().to_string();
    let secret = made["client_secret"].as_str().unwrap().to_string();
    let t = token(&http, &b.url, "robot", &secret)
        .await
        .expect("B grants a token for a client made on A");
    assert_eq!(api(&http, &b.url, &t).await, 200);
    assert_eq!(api(&http, &a.url, &t).await, 200);
    let mut client_console = Console::new(&b.admin_url);
    assert_eq!(client_console.sign_in_client("robot", &secret).await, 303);
    assert!(client_console.signed_in("/ui/tasks").await);

    // Disabled on A: B refuses its token, its secret and its console session at once.
    let (s, _) = on_a(M::POST, format!("/admin/clients/{cid}/disable"), None).await;
    assert_eq!(s, 200);
    assert_eq!(api(&http, &b.url, &t).await, 401);
    assert!(token(&http, &b.url, "robot", &secret).await.is_none());
    assert!(!client_console.signed_in("/ui/tasks").await);
    let (s, _) = on_a(M::POST, format!("/admin/clients/{cid}/enable"), None).await;
    assert_eq!(s, 200);
    assert_eq!(api(&http, &b.url, &t).await, 200);
    assert_eq!(client_console.sign_in_client("robot", &secret).await, 303);

    // Rotated on A: on B the old secret and the tokens issued with it are refused, the new
    // secret gets a token that works, and the console session made with the old secret ends.
    let (s, rotated) = on_a(M::POST, format!("/admin/clients/{cid}/rotate"), None).await;
    assert_eq!(s, 201, "{rotated}");
    let secret2 = rotated["client_secret"].as_str().unwrap().to_string();
    assert!(token(&http, &b.url, "robot", &secret).await.is_none());
    assert_eq!(api(&http, &b.url, &t).await, 401);
    let t2 = token(&http, &b.url, "robot", &secret2)
        .await
        .expect("the rotated secret works on B");
    assert_eq!(api(&http, &b.url, &t2).await, 200);
    assert!(!client_console.signed_in("/ui/tasks").await);

    // Deleted on A: B refuses the secret and the token.
    let (s, _) = on_a(M::DELETE, format!("/admin/clients/{cid}"), None).await;
    assert_eq!(s, 200);
    assert!(token(&http, &b.url, "robot", &secret2).await.is_none());
    assert_eq!(api(&http, &b.url, &t2).await, 401);

    // And the other way round: made on B, used on A at once.
    let (s, made) = admin(
        &http,
        &b.admin_url,
        &root,
        M::POST,
        "/admin/api-keys",
        Some(json!({"name": "from-b", "roles": ["viewer"], "tenant": "acme"})),
    )
    .await;
    assert_eq!(s, 201, "{made}");
    assert_eq!(api(&http, &a.url, made["key"].as_str().unwrap()).await, 200);

    // Twelve keys made at once, half through each node: none is lost (each change is written
    // over the version it read, or read again).
    let mut calls = Vec::new();
    for i in 0..12 {
        let url = if i % 2 == 0 {
            &a.admin_url
        } else {
            &b.admin_url
        };
        let (http, url, root) = (http.clone(), url.clone(), root.clone());
        calls.push(tokio::spawn(async move {
            admin(
                &http,
                &url,
                &root,
                M::POST,
                "/admin/api-keys",
                Some(json!({"name": format!("burst-{i}"), "roles": ["viewer"], "tenant": "acme"})),
            )
            .await
        }));
    }
    for c in calls {
        let (s, made) = c.await.unwrap();
        assert_eq!(s, 201, "{made}");
    }
    let (_, listed) = admin(&http, &b.admin_url, &root, M::GET, "/admin/api-keys", None).await;
    let burst = listed["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["name"].as_str().is_some_and(|n| n.starts_with("burst-")))
        .count();
    assert_eq!(burst, 12, "{listed}");
}

/// `/ready`'s `state` object on `node`, once `reachable` is `want`.
async fn state_reachable(node: &ProxyProcess, key: &str, want: bool) -> Value {
    poll(
        &format!("/ready to say reachable: {want}"),
        Duration::from_secs(60),
        || async {
            let r = node.get(key, "/ready").await;
            // Failing open, the node stays ready whatever Redis does.
            assert_eq!(r.status(), 200);
            let ready: Value = r.json().await.unwrap();
            (ready["state"]["reachable"] == want).then(|| ready["state"].clone())
        },
    )
    .await
}

/// Redis over TLS (a private CA made by `openssl`) with an ACL user whose password is a secret
/// reference: two nodes share an exact quota through it and say it is reachable; a node that
/// trusts another CA, or has a wrong password, says Redis is down and serves on (fail open),
/// never showing the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_an_acl_user_to_redis() {
    let redis = RedisServer::start_tls();
    let tls = redis.tls.clone().unwrap();
    let sim = start_sim(sim_options()).await;
    let mut config = ConfigBuilder::new(&sim.url());
    config.acme_upstream = Upstream::Static;
    let limits = "limits:\n  policies:\n    default: {quota: 10, window_seconds: 60}\n";
    config.extra_top = format!("{limits}{}", redis.state_yaml(""));
    let (a, b) = two_nodes(&config).await;
    let key = config.key("viewer").to_string();
    for node in [&a, &b] {
        let s = state_reachable(node, &key, true).await;
        assert_eq!(s["backend"], "redis", "{s}");
    }
    // One count over both nodes: 15 requests in turn, exactly 10 answered, and the remaining
    // value goes down by one each time whichever node answers.
    let mut left = Vec::new();
    for i in 0..15 {
        let node = if i % 2 == 0 { &a } else { &b };
        let r = node.get(&key, "/api/v1/regions").await;
        let status = r.status().as_u16();
        let rem = remaining(&header(&r, "ratelimit").expect("RateLimit"));
        match (i < 10, status) {
            (true, 200) => left.push(rem),
            (false, 429) => assert_eq!(rem, 0),
            _ => panic!("request {i}: status {status}"),
        }
    }
    assert_eq!(left, (0..10).rev().collect::<Vec<u64>>());

    // A node that trusts another CA cannot reach Redis: /ready says so, requests still pass
    // (fail open: not counted, no quota fields), the metric counts the failures.
    let mut wrong_ca = config.clone();
    wrong_ca.extra_top = format!("{limits}{}", redis.state_yaml_tls("", &tls.other_ca_file));
    // A node with the right CA and a wrong password is refused by the server.
    let bad_pw = redis
        .tls
        .as_ref()
        .unwrap()
        .password_file
        .with_file_name("wrong-password");
    std::fs::write(&bad_pw, "not-the-password").unwrap();
    let mut wrong_pw = config.clone();
    wrong_pw.extra_top = format!("{limits}{}", redis.state_yaml("")).replace(
        &tls.password_file.display().to_string(),
        &bad_pw.display().to_string(),
    );
    for (cfg, why) in [
        (&wrong_ca, "invalid peer certificate"),
        (&wrong_pw, "AuthenticationFailed"),
    ] {
        let c = ProxyProcess::start(cfg).await;
        let s = state_reachable(&c, &key, false).await;
        // The reason is named: an untrusted certificate, or the server refusing the login.
        let error = s["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(why), "{s}");
        assert!(c.stderr().contains(why), "{}", c.stderr());
        let r = c.get(&key, "/api/v1/regions").await;
        assert_eq!(r.status(), 200);
        assert!(header(&r, "ratelimit").is_none());
        let m = c.scrape().await;
        assert!(
            m.value("orion_proxy_state_errors_total", &[("op", "counters")]) >= 1.0,
            "{}",
            m.text
        );
        assert_eq!(m.value("orion_proxy_state_up", &[]), 0.0);
        // The password is in no answer and no log line.
        for text in [s.to_string(), c.stderr(), m.text.clone()] {
            assert!(!text.contains(&tls.password), "{text}");
            assert!(!text.contains("not-the-password"), "{text}");
        }
    }
    // The shared count is untouched by them, and the good nodes still agree.
    let r = a.get(&key, "/api/v1/regions").await;
    assert_eq!(r.status(), 429);
}
