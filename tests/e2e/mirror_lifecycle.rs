//! The whole instance lifecycle through the OrionVM mirror, with the proxy's upstream on OAuth2
//! client credentials and on a static token.

use crate::harness::*;
use serde_json::{Value, json};
use std::time::Duration;

async fn ok_json(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "status {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// Lists, disk, assemble, start, stop, delete: what the Terraform provider does.
async fn lifecycle(h: &Harness, key: &str) {
    let regions = ok_json(h.get(key, "/api/v1/regions").await).await;
    let region = regions.as_array().expect("bare array")[0].clone();
    let region_id = region["id"].as_str().unwrap().to_string();
    let templates = ok_json(h.get(key, "/api/v1/templates").await).await;
    assert!(templates.is_array());
    let template = templates
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["region"]["id"] == region["id"])
        .expect("a template in the region")
        .clone();
    let tiers = ok_json(h.get(key, "/api/v1/performance_tiers/instances").await).await;
    let tier = tiers
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["region"]["id"] == region["id"])
        .unwrap()
        .clone();
    let dtiers = ok_json(h.get(key, "/api/v1/performance_tiers/disks").await).await;
    let dtier = dtiers
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["region"]["id"] == region["id"])
        .unwrap()
        .clone();

    // A boot disk, then wait until it can be attached.
    let disk = ok_json(
        h.post(
            key,
            "/api/v1/disks",
            json!({"name": "e2e-boot", "performance_tier": dtier["id"], "region": region_id, "size": 20, "template": template["id"]}),
        )
        .await,
    )
    .await;
    let disk_id = disk["id"].as_str().unwrap().to_string();
    poll("disk unattached", Duration::from_secs(10), || async {
        let d = ok_json(h.get(key, &format!("/api/v1/disks/{disk_id}")).await).await;
        (d["state"] == "unattached").then_some(())
    })
    .await;

    let inst = ok_json(
        h.post(
            key,
            "/api/v1/instances/assemble",
            json!({"name": "e2e-1", "memory": 1024, "performance_tier": tier["id"], "region": region_id, "disks": [disk_id], "virtualization": "hvm", "boot_device": "disk"}),
        )
        .await,
    )
    .await;
    let id = inst["id"].as_str().unwrap().to_string();
    let got = ok_json(h.get(key, &format!("/api/v1/instances/{id}")).await).await;
    assert_eq!(
        got["state"], "stopped",
        "first GET after assemble says stopped"
    );

    let started = ok_json(
        h.post(key, &format!("/api/v1/instances/{id}/start"), json!({}))
            .await,
    )
    .await;
    assert_eq!(
        started["id"],
        id.as_str(),
        "start answers with the instance"
    );
    wait_state(h, key, &id, "running").await;

    // Starting a running instance: OrionVM's 422, normalised, details kept.
    let err = expect_error(
        h.post(key, &format!("/api/v1/instances/{id}/start"), json!({}))
            .await,
        422,
        "validation_failed",
    )
    .await;
    assert!(err["details"]["state"].is_array(), "{err}");

    let stopped = ok_json(
        h.post(key, &format!("/api/v1/instances/{id}/stop"), json!({}))
            .await,
    )
    .await;
    assert_eq!(stopped["id"], id.as_str());
    wait_state(h, key, &id, "stopped").await;

    let deleted = ok_json(h.delete(key, &format!("/api/v1/instances/{id}")).await).await;
    assert_eq!(
        deleted["id"],
        id.as_str(),
        "DELETE answers with a JSON body"
    );
    poll("instance gone", Duration::from_secs(10), || async {
        let r = h.get(key, &format!("/api/v1/instances/{id}")).await;
        (r.status() == 404).then_some(r)
    })
    .await;
    let gone = h.get(key, &format!("/api/v1/instances/{id}")).await;
    expect_error(gone, 404, "not_found").await;
}

async fn wait_state(h: &Harness, key: &str, id: &str, want: &str) {
    poll(want, Duration::from_secs(10), || async {
        let s = ok_json(h.get(key, &format!("/api/v1/instances/{id}/state")).await).await;
        (s["state"] == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_with_oauth2_upstream() {
    let h = Harness::start().await;
    lifecycle(&h, h.key("admin")).await;
    assert_eq!(
        h.sim.tokens_issued(),
        1,
        "the OrionVM token is fetched once and reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_with_static_token_upstream() {
    let h = Harness::start_with(|c| c.acme_upstream = Upstream::Static).await;
    lifecycle(&h, h.key("admin")).await;
    assert_eq!(
        h.sim.tokens_issued(),
        0,
        "a static token needs no token call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_api_key_header_works_too() {
    let h = Harness::start().await;
    let r = h
        .http
        .get(h.url("/api/v1/regions"))
        .header("x-api-key", h.key("viewer"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.json::<Value>().await.unwrap().is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_upstream_token_is_refetched_and_the_request_retried_once() {
    let h = Harness::start().await;
    let key = h.key("admin");
    assert_eq!(h.get(key, "/api/v1/instances").await.status(), 200);
    assert_eq!(h.sim.tokens_issued(), 1);
    h.sim.expire_tokens();
    h.sim.reset_calls();
    // GET and a POST with a body: both replayable, both retried once with a fresh token.
    let r = h.get(key, "/api/v1/instances").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        h.sim.tokens_issued(),
        2,
        "a fresh token after invalid_token"
    );
    h.sim.expire_tokens();
    let r = h
        .post(
            key,
            "/api/v1/public_keys",
            json!({"name": "k1", "key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIexample k1"}),
        )
        .await;
    let status = r.status();
    assert!(status.is_success(), "{status}: {}", r.text().await.unwrap());
    assert_eq!(h.sim.tokens_issued(), 3);
    let calls = h.sim.calls();
    assert_eq!(
        calls.count("POST", "/api/v1/public_keys"),
        2,
        "refused once, then accepted: {calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_token_is_refreshed_ahead_of_expiry() {
    let mut opts = sim_options();
    opts.token_ttl = Duration::from_secs(8);
    let h = Harness::start_on(start_sim(opts).await, |_| {}).await;
    let get = || h.get(h.key("viewer"), "/api/v1/regions");
    assert_eq!(get().await.status(), 200);
    let fetched = tokio::time::Instant::now();
    assert_eq!(h.sim.tokens_issued(), 1);
    // Lifetime 8 s: the proxy refreshes from half-life on (4 s after it asked), before OrionVM
    // would refuse the token (8 s after the first call began). Past the half-life measured from
    // after the first answer, the next call has over 3 s to reach OrionVM: a busy machine's
    // stall doesn't let the token expire first.
    tokio::time::sleep_until(fetched + Duration::from_millis(4500)).await;
    h.sim.reset_calls();
    assert_eq!(get().await.status(), 200);
    assert_eq!(h.sim.tokens_issued(), 2, "refreshed ahead of expiry");
    assert_eq!(
        h.sim.calls().count("GET", "/api/v1/regions"),
        1,
        "no refused call before the refresh"
    );
}
