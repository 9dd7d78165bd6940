//! Reload: SIGHUP and POST /admin/reload swap a valid config in and keep the old one on error;
//! the proxy keeps serving either way.

use crate::harness::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_valid_configs_and_keeps_the_old_one_on_error() {
    let mut h = Harness::start().await;
    let viewer = h.key("viewer").to_string();
    let admin = h.key("admin").to_string();
    assert_eq!(h.get(&viewer, "/api/v1/regions").await.status(), 200);

    // Disable the viewer's key and reload with SIGHUP: refused from then on.
    let text = std::fs::read_to_string(&h.proxy.config_path).unwrap();
    let disabled = text
        .replacen(
            "name: viewer, hash",
            "name: viewer, enabled: false, hash",
            1,
        )
        .replacen(
            "roles: [viewer], tenant: acme, enabled: true",
            "roles: [viewer], tenant: acme",
            1,
        );
    assert_ne!(text, disabled);
    std::fs::write(&h.proxy.config_path, &disabled).unwrap();
    h.proxy.signal(libc::SIGHUP);
    poll(
        "the viewer key refused after SIGHUP",
        Duration::from_secs(10),
        || async { (h.get(&viewer, "/api/v1/regions").await.status() == 401).then_some(()) },
    )
    .await;
    assert!(h.proxy.is_running());

    // A broken file: the admin reload says why, the old config stays.
    std::fs::write(&h.proxy.config_path, "server: {listen: [}").unwrap();
    let r = h
        .http
        .post(format!("{}/admin/reload", h.proxy.admin_url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let body = expect_error(r, 422, "invalid_config").await;
    assert!(
        body["details"]["config"][0]
            .as_str()
            .unwrap()
            .contains("YAML"),
        "{body}"
    );
    h.proxy.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h.proxy.is_running(), "a bad reload does not stop the proxy");
    assert_eq!(
        h.get(&admin, "/api/v1/regions").await.status(),
        200,
        "old config still serving"
    );
    assert_eq!(
        h.get(&viewer, "/api/v1/regions").await.status(),
        401,
        "and it is the last good one"
    );

    // Back to the original through the admin API.
    std::fs::write(&h.proxy.config_path, &text).unwrap();
    let r = h
        .http
        .post(format!("{}/admin/reload", h.proxy.admin_url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.get(&viewer, "/api/v1/regions").await.status(), 200);
    // The OrionVM token survived the reloads (the account did not change).
    assert_eq!(h.sim.tokens_issued(), 1);
}
