//! Helpers the facade tests share: instances made through the mirror, waits, PATCH.

use super::*;
use serde_json::{Value, json};
use std::time::Duration;

/// The `facade:` config section with a short task timeout and fast polling.
pub fn facade_config(timeout_ms: u64) -> String {
    format!("facade:\n  transition_timeout_ms: {timeout_ms}\n  poll_interval_ms: 20\n")
}

pub async fn patch(h: &Harness, key: &str, path: &str, body: Value) -> reqwest::Response {
    h.http
        .patch(h.url(path))
        .bearer_auth(key)
        .header("content-type", "application/merge-patch+json")
        .body(body.to_string())
        .send()
        .await
        .expect("PATCH")
}

/// An instance made with OrionVM's create-basic through the mirror (not the facade).
pub async fn create_basic(
    h: &Harness,
    key: &str,
    name: &str,
    memory: u64,
    region: &str,
    start: bool,
) -> String {
    let inst = ok_json(
        h.post(
            key,
            "/api/v1/instances",
            json!({"name": name, "memory": memory, "size": 20, "region": region,
                   "template": "debian-12", "allocate_public_ip": false, "start_when_ready": start}),
        )
        .await,
    )
    .await;
    inst["id"].as_str().unwrap().to_string()
}

/// Polls a task until its status is `status` (panics on another final status).
pub async fn wait_task(h: &Harness, key: &str, task: &str, status: &str) -> Value {
    poll(
        &format!("task {task} {status}"),
        Duration::from_secs(20),
        || async {
            let t = ok_json(h.get(key, &format!("/v1/tasks/{task}")).await).await;
            let s = t["status"].as_str().unwrap().to_string();
            if s == status {
                return Some(t);
            }
            assert!(
                s == "pending" || s == "running",
                "task ended {s} instead of {status}: {t}"
            );
            None
        },
    )
    .await
}

/// Polls the simulator's call count of a route until it reaches `n`.
pub async fn wait_count(h: &Harness, method: &str, route: &str, n: u64) {
    poll(
        &format!("{method} {route} called {n} times"),
        Duration::from_secs(10),
        || async { (h.sim.calls().count(method, route) >= n).then_some(()) },
    )
    .await;
    assert_eq!(h.sim.calls().count(method, route), n, "{method} {route}");
}
