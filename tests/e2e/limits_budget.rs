//! The budget toward OrionVM: past the concurrency cap calls wait a bounded time, then get
//! 503 with Retry-After; nothing is lost or duplicated upstream.

use crate::harness::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_excess_waits_then_gets_503_and_nothing_is_duplicated() {
    let h = Harness::start_with(|c| {
        c.acme_upstream = Upstream::Static;
        c.read_timeout_ms = 20_000;
        c.extra_top = concat!(
            "limits:\n",
            "  upstream: {max_concurrent_per_endpoint: 2, max_wait_ms: 300, max_waiting: 50, tenant_share: 1.0, principal_share: 1.0}\n",
        )
        .into();
    })
    .await;
    h.sim.set_faults(orion_sim::FaultPlan {
        path_prefix: Some("/api/v1/regions".into()),
        // Long enough that all six callers are in before the first two are answered, even when
        // a loaded machine starts them seconds apart (they wait 300 ms, then get 503).
        latency: Some(Duration::from_millis(5000)),
        ..Default::default()
    });
    h.sim.reset_calls();
    let key = h.key("viewer").to_string();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (url, key) = (h.url("/api/v1/regions"), key.clone());
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            (r, started.elapsed())
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (r, took) = t.await.unwrap();
        match r.status().as_u16() {
            200 => {
                ok += 1;
                let v: serde_json::Value = r.json().await.unwrap();
                assert!(v.is_array());
            }
            503 => {
                refused += 1;
                assert!(
                    took >= Duration::from_millis(280),
                    "waited before refusing: {took:?}"
                );
                assert_eq!(r.headers()["retry-after"], "1");
                expect_error(r, 503, "upstream_busy").await;
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!((ok, refused), (2, 4));
    assert_eq!(
        h.sim.calls().count("GET", "/api/v1/regions"),
        ok,
        "OrionVM saw exactly the calls that were answered"
    );
    // Once the slow calls are done, the budget is free again.
    h.sim.clear_faults();
    assert_eq!(h.get(&key, "/api/v1/regions").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_rate_toward_orionvm_queues_briefly_then_refuses() {
    let h = Harness::start_with(|c| {
        c.acme_upstream = Upstream::Static;
        c.extra_top = concat!(
            "limits:\n",
            "  upstream: {requests_per_second: 3, max_wait_ms: 100, max_waiting: 50}\n",
        )
        .into();
    })
    .await;
    h.sim.reset_calls();
    let key = h.key("viewer").to_string();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (url, key) = (h.url("/api/v1/regions"), key.clone());
        tasks.push(tokio::spawn(async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count() as u64;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!((3..=6).contains(&ok), "{statuses:?}");
    assert_eq!(h.sim.calls().count("GET", "/api/v1/regions"), ok);
}
