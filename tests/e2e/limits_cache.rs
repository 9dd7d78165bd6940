//! Polling without punishment: identical in-flight reads coalesced, a per-tenant micro-cache,
//! invalidation by a mutation through the proxy, and cached answers not charged.

use crate::harness::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const STATE: &str = "/api/v1/instances/{id}/state";

/// The same read straight from the simulator, as OrionVM would answer it.
async fn direct(h: &Harness, path: &str) -> (u16, bytes::Bytes) {
    let r = h
        .http
        .get(format!("{}{path}", h.sim.url()))
        .bearer_auth(ACME_STATIC_TOKEN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_pollers_cost_a_handful_of_calls_and_no_quota() {
    let h = Harness::start_with(|c| {
        c.acme_upstream = Upstream::Static;
        // A quota far below the number of polls: answers from the cache are not charged.
        c.extra_top = "limits:\n  policies:\n    default: {quota: 20, window_seconds: 60}\n".into();
    })
    .await;
    let key = h.key("viewer").to_string();
    let id = h.first_instance(&key).await;
    let path = format!("/api/v1/instances/{id}/state");
    h.sim.reset_calls();

    let url = h.url(&path);
    let ok = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let run_for = Duration::from_secs(3);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let client = reqwest::Client::new();
        let (url, key, ok) = (url.clone(), key.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let mut bodies = std::collections::HashSet::new();
            // Two answers each at least, however late a loaded machine starts this poller.
            let mut asked = 0;
            while asked < 2 || started.elapsed() < run_for {
                asked += 1;
                let r = client.get(&url).bearer_auth(&key).send().await.unwrap();
                let status = r.status().as_u16();
                let cache = r
                    .headers()
                    .get("x-cache")
                    .map(|v| v.to_str().unwrap().to_string());
                let body = r.bytes().await.unwrap();
                assert_eq!(status, 200, "{cache:?} {body:?}");
                bodies.insert(body);
                ok.fetch_add(1, Ordering::Relaxed);
            }
            bodies
        }));
    }
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        bodies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let calls = h.sim.calls().count("GET", STATE);
    let answered = ok.load(Ordering::Relaxed);
    eprintln!("{answered} answers in {elapsed:.1} s from {calls} OrionVM calls");
    assert!(answered >= 400, "every poller got answers: {answered}");
    assert!(calls >= 1);
    assert!(
        (calls as f64) <= 3.0 * elapsed.ceil() + 2.0,
        "{calls} OrionVM calls in {elapsed:.1} s"
    );
    // Byte for byte what OrionVM answers.
    let (status, want) = direct(&h, &path).await;
    assert_eq!(status, 200);
    assert_eq!(bodies.len(), 1, "one answer while the state holds");
    assert!(bodies.contains(&want), "{bodies:?} vs {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_calls_share_one_upstream_call() {
    let h = Harness::start_with(|c| c.acme_upstream = Upstream::Static).await;
    let key = h.key("viewer").to_string();
    let id = h.first_instance(&key).await;
    let path = format!("/api/v1/instances/{id}");
    h.sim.set_faults(orion_sim::FaultPlan {
        path_prefix: Some(path.clone()),
        latency: Some(Duration::from_millis(400)),
        ..Default::default()
    });
    h.sim.reset_calls();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (url, key) = (h.url(&path), key.clone());
        tasks.push(tokio::spawn(async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            let cache = r.headers()["x-cache"].to_str().unwrap().to_string();
            (r.status().as_u16(), cache, r.bytes().await.unwrap())
        }));
    }
    let mut labels = Vec::new();
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        let (status, cache, body) = t.await.unwrap();
        assert_eq!(status, 200);
        labels.push(cache);
        bodies.insert(body);
    }
    assert_eq!(h.sim.calls().count("GET", "/api/v1/instances/{id}"), 1);
    assert_eq!(
        labels.iter().filter(|l| *l == "miss").count(),
        1,
        "{labels:?}"
    );
    assert!(
        labels
            .iter()
            .all(|l| ["miss", "coalesced", "hit"].contains(&l.as_str()))
    );
    h.sim.clear_faults();
    let (_, want) = direct(&h, &path).await;
    assert_eq!(bodies.len(), 1);
    assert!(bodies.contains(&want), "the client gets OrionVM's bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_per_tenant_and_a_mutation_drops_it() {
    let h = Harness::start_with(|c| {
        c.acme_upstream = Upstream::Static;
        c.extra_top = "limits:\n  cache: {ttl_ms: 30000}\n".into();
    })
    .await;
    let acme = h.key("admin").to_string();
    let id = h.first_instance(&acme).await;
    let path = format!("/api/v1/instances/{id}/state");
    let r = h.get(&acme, &path).await;
    assert_eq!(r.status(), 200);
    let before: serde_json::Value = r.json().await.unwrap();
    let r = h.get(&acme, &path).await;
    assert_eq!(r.headers()["x-cache"], "hit");
    let metrics = h.proxy.scrape().await;
    assert_eq!(
        metrics.value(
            "orion_proxy_cache_requests_total",
            &[("result", "hit"), ("route", "instances.state")]
        ),
        1.0,
        "{}",
        metrics.text
    );

    // Another tenant asking for the same path never gets acme's answer.
    let r = h.get(h.key("other_tenant_admin"), &path).await;
    assert_eq!(r.headers()["x-cache"], "miss");
    expect_error(r, 404, "not_found").await;

    // A mutation of the instance through the proxy drops its cached reads.
    let action = if before["state"] == "running" {
        "stop"
    } else {
        "start"
    };
    let r = h
        .post(
            &acme,
            &format!("/api/v1/instances/{id}/{action}"),
            serde_json::json!({}),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let r = h.get(&acme, &path).await;
    assert_eq!(r.headers()["x-cache"], "miss");
    let after: serde_json::Value = r.json().await.unwrap();
    assert_ne!(after["state"], before["state"], "{before} then {after}");
    let (_, want) = direct(&h, &path).await;
    let want: serde_json::Value = serde_json::from_slice(&want).unwrap();
    // The simulator may have moved on (stopping -> stopped); never back to the old state.
    assert_ne!(want["state"], before["state"]);
}

/// Issue 12: 200 clients busy-polling one disk and one instance through the mirror and the
/// same instance through the facade: a handful of OrionVM calls per second, no 429, although
/// the quota is far below the number of polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn busy_polling_disks_and_facade_instances_costs_a_handful_of_calls() {
    let h = Harness::start_with(|c| {
        c.acme_upstream = Upstream::Static;
        c.extra_top =
            "limits:\n  policies:\n    default: {quota: 300, window_seconds: 60}\n".into();
    })
    .await;
    let key = h.key("viewer").to_string();
    let id = h.first_instance(&key).await;
    let disks = ok_json(h.get(&key, "/api/v1/disks").await).await;
    let disk = disks[0]["id"].as_str().unwrap().to_string();
    let paths = [
        format!("/api/v1/disks/{disk}"),
        format!("/api/v1/instances/{id}"),
        format!("/v1/instances/{id}"),
    ];
    h.sim.reset_calls();

    let answered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let run_for = Duration::from_secs(4);
    let mut tasks = Vec::new();
    for n in 0..200usize {
        let client = reqwest::Client::new();
        let urls: Vec<String> = paths.iter().map(|p| h.url(p)).collect();
        let (key, answered) = (key.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = n;
            let mut refused = Vec::new();
            // Three answers each at least, however late a loaded machine starts this poller.
            while i < n + 3 || started.elapsed() < run_for {
                let url = &urls[i % urls.len()];
                i += 1;
                let r = client.get(url).bearer_auth(&key).send().await.unwrap();
                let status = r.status().as_u16();
                let body = r.bytes().await.unwrap();
                if status != 200 {
                    refused.push((url.clone(), status, body));
                } else {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
            refused
        }));
    }
    let mut refused = Vec::new();
    for t in tasks {
        refused.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let calls = h.sim.calls();
    let disk_calls = calls.count("GET", "/api/v1/disks/{id}");
    let instance_calls = calls.count("GET", "/api/v1/instances/{id}");
    let answered = answered.load(Ordering::Relaxed);
    eprintln!(
        "{answered} answers in {elapsed:.1} s: {disk_calls} disk and {instance_calls} instance calls to OrionVM, {} total",
        calls.total
    );
    assert!(
        refused.is_empty(),
        "no 429, no error: {:?}",
        &refused[..refused.len().min(3)]
    );
    assert!(answered >= 600, "every poller got answers: {answered}");
    // About one call per second and path (ttl 1 s): the facade's instance and the mirror's are
    // two paths, each cached apart.
    let per_path = 3.0 * elapsed.ceil() + 2.0;
    assert!(
        (1..=per_path as u64).contains(&disk_calls),
        "{disk_calls} disk calls in {elapsed:.1} s"
    );
    assert!(
        (1..=2 * per_path as u64).contains(&instance_calls),
        "{instance_calls} instance calls in {elapsed:.1} s"
    );
    // Nothing else reached OrionVM but its health checks (`GET /`).
    let api_calls = calls.total - calls.count("GET", "/");
    assert_eq!(api_calls, disk_calls + instance_calls, "{:?}", calls.routes);
    assert!(
        answered >= 20 * api_calls,
        "{answered} answers from {api_calls} calls"
    );
}

/// A disk PUT drops the disk's cached reads and those of the instance it is attached to; a
/// disks PUT on an instance drops the disks it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_drops_the_object_and_its_linked_objects() {
    let h = Harness::start_with(|c| {
        c.acme_upstream = Upstream::Static;
        c.extra_top = "limits:\n  cache: {ttl_ms: 60000}\n".into();
    })
    .await;
    let key = h.key("admin").to_string();
    let id = h.first_instance(&key).await;
    let inst = ok_json(h.get(&key, &format!("/api/v1/instances/{id}")).await).await;
    let disk = inst["disks"][0]["id"].as_str().unwrap().to_string();
    for path in [
        format!("/api/v1/instances/{id}"),
        format!("/v1/instances/{id}"),
        format!("/api/v1/disks/{disk}"),
    ] {
        let _ = h.get(&key, &path).await;
        let r = h.get(&key, &path).await;
        assert_eq!(r.headers()["x-cache"], "hit", "{path}");
    }
    let r = h
        .http
        .put(h.url(&format!("/api/v1/disks/{disk}")))
        .bearer_auth(&key)
        .json(&serde_json::json!({"name": "renamed-by-test"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    for path in [
        format!("/api/v1/instances/{id}"),
        format!("/v1/instances/{id}"),
        format!("/api/v1/disks/{disk}"),
    ] {
        let r = h.get(&key, &path).await;
        assert_eq!(
            r.headers()["x-cache"],
            "miss",
            "{path} dropped by the disk PUT"
        );
    }
    let d = ok_json(h.get(&key, &format!("/api/v1/disks/{disk}")).await).await;
    assert_eq!(d["name"], "renamed-by-test");
}
