//! Several OrionVM endpoints: active health checks and the breaker move traffic to the healthy
//! one; with all failing the breaker opens, answers fast without calling OrionVM, probes
//! half-open and closes when OrionVM recovers; `GET /admin/endpoints/stats` reports each state.

use crate::harness::*;
use orion_sim::{ErrorBurst, FaultPlan, SimHandle};
use serde_json::Value;
use std::time::{Duration, Instant};

fn failing() -> FaultPlan {
    FaultPlan {
        error_burst: Some(ErrorBurst {
            status: 503,
            count: 1_000_000,
            html: true,
        }),
        ..Default::default()
    }
}

async fn stats(p: &ProxyProcess, key: &str) -> Vec<Value> {
    let v: Value = p
        .admin_get(key, "/admin/endpoints/stats")
        .await
        .json()
        .await
        .unwrap();
    v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["account"] == "acme-orionvm")
        .cloned()
        .collect()
}

async fn wait_stats(
    p: &ProxyProcess,
    key: &str,
    what: &str,
    ok: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    poll(what, Duration::from_secs(30), || async {
        let s = stats(p, key).await;
        ok(&s).then_some(s)
    })
    .await
}

fn api_calls(sim: &SimHandle) -> u64 {
    sim.calls().api_calls()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_moves_to_the_healthy_endpoint_and_the_breaker_cycles() {
    let a = start_sim(sim_options()).await;
    let b = start_sim(sim_options()).await;
    let mut config = ConfigBuilder::new(&a.url());
    config.sim_urls.push(b.url());
    config.acme_upstream = Upstream::Static;
    config.account_extra = "    health_check: {interval_ms: 150, timeout_ms: 500, healthy_threshold: 1, unhealthy_threshold: 1}\n".into();
    config.extra_top = concat!(
        "limits:\n",
        "  breaker: {failure_threshold: 3, reset_timeout_seconds: 4, half_open_probes: 2, fallback: error}\n",
    )
    .into();
    let proxy = ProxyProcess::start(&config).await;
    let key = config.key("admin").to_string();
    let get = |path: &'static str| proxy.get(&key, path);

    // Both healthy: round robin spreads the calls.
    let s = wait_stats(&proxy, &key, "both up", |s| {
        s.iter().all(|e| e["health"] == "up")
    })
    .await;
    assert_eq!(s.len(), 2);
    for e in &s {
        assert_eq!(e["breaker"], "closed");
        assert_eq!(e["version"], "v1");
        assert_eq!(e["auth"], "static_token");
        assert_eq!(e["enabled"], true);
        assert!(
            e["methods"]
                .as_array()
                .unwrap()
                .contains(&Value::from("GET"))
        );
        assert!(e["url"].as_str().unwrap().starts_with("http://127.0.0.1:"));
        assert!(e["last_change"].is_string());
    }
    for _ in 0..10 {
        assert_eq!(get("/api/v1/regions").await.status(), 200);
    }
    assert!(
        api_calls(&a) >= 3 && api_calls(&b) >= 3,
        "both endpoints served"
    );

    // B fails: every caller still gets 200, and B is taken out.
    b.set_faults(failing());
    for _ in 0..10 {
        let r = get("/api/v1/regions").await;
        assert_eq!(r.status(), 200, "a failing endpoint is retried elsewhere");
    }
    let s = wait_stats(&proxy, &key, "B down", |s| s[1]["health"] == "down").await;
    assert_eq!(s[0]["health"], "up");
    assert!(s[1]["counters"]["server_errors"].as_u64().unwrap() >= 1);
    b.reset_calls();
    a.reset_calls();
    for _ in 0..10 {
        assert_eq!(get("/api/v1/regions").await.status(), 200);
    }
    assert_eq!(api_calls(&a), 10, "all traffic on the healthy endpoint");
    assert_eq!(api_calls(&b), 0);

    // Everything fails: the breakers open, callers get 503 fast without OrionVM calls (for
    // 1.2 s of the 4 s reset timeout: the rest is slack for a busy machine's stalls).
    a.set_faults(failing());
    let opened = poll("circuit open", Duration::from_secs(15), || async {
        let r = get("/api/v1/regions").await;
        let status = r.status().as_u16();
        assert!(status >= 500, "{status}");
        let body: Value = r.json().await.unwrap();
        (body["error"] == "circuit_open").then_some(body)
    })
    .await;
    assert_error_body(&opened, 503, "circuit_open");
    let s = stats(&proxy, &key).await;
    assert!(
        s.iter().all(|e| e["breaker"] == "open"),
        "{:?}",
        s.iter().map(|e| &e["breaker"]).collect::<Vec<_>>()
    );
    let before = api_calls(&a) + api_calls(&b);
    let started = Instant::now();
    for _ in 0..20 {
        let r = get("/api/v1/regions").await;
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "circuit_open");
        if started.elapsed() > Duration::from_millis(1200) {
            break;
        }
    }
    assert_eq!(
        api_calls(&a) + api_calls(&b),
        before,
        "an open breaker calls nobody"
    );

    // Past the reset timeout the breakers are ready to probe (half-open).
    wait_stats(&proxy, &key, "half-open", |s| {
        s.iter().all(|e| e["breaker"] == "half_open")
    })
    .await;
    // A probe that fails opens a breaker again.
    let r = get("/api/v1/regions").await;
    assert!(r.status().as_u16() >= 500);
    let s = stats(&proxy, &key).await;
    assert!(s.iter().any(|e| e["breaker"] == "open"), "{s:?}");
    assert!(
        s.iter()
            .any(|e| e["breaker_opened_total"].as_u64().unwrap() >= 2)
    );
    // Each change is in the endpoint's transitions, newest first, with its time.
    let reopened = s
        .iter()
        .find(|e| e["breaker_opened_total"].as_u64().unwrap() >= 2)
        .unwrap();
    let moves: Vec<(String, String)> = reopened["breaker_transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert!(t["at"].as_str().is_some_and(|a| a.ends_with('Z')), "{t}");
            (
                t["from"].as_str().unwrap().into(),
                t["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        moves[..3],
        [
            ("half_open".into(), "open".into()),
            ("open".into(), "half_open".into()),
            ("closed".into(), "open".into())
        ],
        "{moves:?}"
    );
    // The console's endpoints page lists them too.
    let mut console = crate::harness::console::Console::new(&proxy.admin_url);
    assert_eq!(console.sign_in_key(&key).await, 303);
    let page = console.get("/ui/endpoints").await;
    assert_eq!(page.status, 200);
    let table = &page.body[page.body.find("id=\"breaker-transitions\"").unwrap()..];
    assert!(
        table.contains("<td>half_open</td><td class=\"bad\">open</td>"),
        "{table}"
    );

    // OrionVM recovers: the next probes succeed and the breakers close.
    a.clear_faults();
    b.clear_faults();
    // Callers keep coming until both breakers are closed (the one that opened again probes only
    // once its reset timeout is past).
    let closed_seen = std::sync::atomic::AtomicBool::new(false);
    let drive = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ok = 0;
        while Instant::now() < deadline && !closed_seen.load(std::sync::atomic::Ordering::SeqCst) {
            if get("/api/v1/regions").await.status() == 200 {
                ok += 1;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        ok
    };
    let closed = async {
        let s = wait_stats(&proxy, &key, "closed and up", |s| {
            s.iter()
                .all(|e| e["breaker"] == "closed" && e["health"] == "up")
        })
        .await;
        closed_seen.store(true, std::sync::atomic::Ordering::SeqCst);
        s
    };
    let (s, ok) = tokio::join!(closed, drive);
    assert!(ok >= 1, "callers get answers again");
    for e in &s {
        assert!(e["breaker_opened_total"].as_u64().unwrap() >= 1);
        assert!(e["counters"]["requests"].as_u64().unwrap() >= 3);
        assert!(e["counters"]["errors"].as_u64().unwrap() >= 1);
        assert!(e["counters"]["latency_ms"]["p50"].is_number());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_fallback_serves_the_last_good_read() {
    let h = Harness::start_with(|c| {
        c.acme_upstream = Upstream::Static;
        c.account_extra = "    health_check: {enabled: false}\n".into();
        c.extra_top = concat!(
            "limits:\n",
            "  breaker: {failure_threshold: 2, reset_timeout_seconds: 30, fallback: stale}\n",
        )
        .into();
    })
    .await;
    let key = h.key("viewer");
    let id = h.first_instance(key).await;
    let path = format!("/api/v1/instances/{id}");
    let good = h.get(key, &path).await.bytes().await.unwrap();
    h.sim.set_faults(failing());
    poll("breaker open", Duration::from_secs(10), || async {
        let r = h.get(key, "/api/v1/regions").await;
        let body: Value = r.json().await.unwrap();
        (body["error"] == "circuit_open").then_some(())
    })
    .await;
    let r = h.get(key, &path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "stale");
    assert!(r.headers()["warning"].to_str().unwrap().starts_with("110"));
    assert_eq!(
        r.bytes().await.unwrap(),
        good,
        "the last good answer, as it was"
    );
    // A read that was never cached has nothing stale to fall back on.
    let r = h.get(key, "/api/v1/disks").await;
    expect_error(r, 503, "circuit_open").await;
}
