//! Reload: SIGHUP and POST /admin/reload swap a valid config in and keep the old one on error;
//! the proxy keeps serving either way.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_valid_configs_and_keeps_the_old_one_on_error() {
    let mut h = Harness::start().await;
    let viewer = h.key("viewer").to_string();
    let admin = h.key("admin").to_string();
    assert_eq!(h.get(&viewer, "/api/v1/regions").await.status(), 200);

    // Disable the viewer's key and reload with SIGHUP: refused from then on.
    let text = h.proxy.edit_config(|text| {
        text.replacen(
            "name: viewer, hash",
            "name: viewer, enabled: false, hash",
            1,
        )
        .replacen(
            "roles: [viewer], tenant: acme, enabled: true",
            "roles: [viewer], tenant: acme",
            1,
        )
    });
    let first = h
        .reload_by_sighup()
        .await
        .expect("the SIGHUP reload succeeds");
    assert_eq!(
        h.get(&viewer, "/api/v1/regions").await.status(),
        401,
        "the viewer key refused after SIGHUP"
    );
    assert!(h.proxy.is_running());

    // A broken file: the admin reload says why, the old config stays.
    h.proxy.write_config("server: {listen: [}");
    let body = expect_error(h.reload().await, 422, "invalid_config").await;
    assert!(
        body["details"]["config"][0]
            .as_str()
            .unwrap()
            .contains("YAML"),
        "{body}"
    );
    assert_eq!(
        h.reload_by_sighup().await,
        None,
        "a broken file is refused at SIGHUP too"
    );
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
    h.proxy.write_config(&text);
    assert_ne!(h.reload_ok().await, first, "another file, another version");
    assert_eq!(h.get(&viewer, "/api/v1/regions").await.status(), 200);
    // The OrionVM token survived the reloads (the account did not change).
    assert_eq!(h.sim.tokens_issued(), 1);
}
