//! The proxy's own `/oauth/token`: the OrionVM client flow end to end with an issued token,
//! tokens verified by a second instance sharing the key, revocation by disabling or removing
//! the client and reloading, OAuth2 errors, and the per-address limit against guessing.

use crate::harness::identity::*;
use crate::harness::*;
use serde_json::{Value, json};

async fn start(identity: &Identity) -> Harness {
    let yaml = identity.yaml();
    Harness::start_with(move |c| c.extra_top = yaml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_as_json_and_form_then_the_lifecycle_with_that_token() {
    let id = Identity::new(default_clients());
    let h = start(&id).await;
    let tf = id.client("acme-terraform");

    // JSON, as apiclient-go sends it.
    let r = request_token(&h.http, &h.proxy.url, &tf.id, &tf.secret, false).await;
    assert_eq!(r.status(), 200, "200, not 201");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: Value = r.json().await.unwrap();
    let token = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 64, "exactly 64 characters: {token}");
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["expires_in"], 3600);
    assert_eq!(v["refresh_token"], Value::Null);
    assert_eq!(v["scope"], "");
    assert_eq!(v.as_object().unwrap().len(), 5, "{v}");

    // Form-urlencoded, as the Go client sends it.
    let r = request_token(&h.http, &h.proxy.url, &tf.id, &tf.secret, true).await;
    let form_token = ok_json(r).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(form_token.len(), 64);
    assert_ne!(form_token, token, "every token is new");

    // HTTP Basic client authentication (RFC 6749 2.3.1).
    let r = h
        .http
        .post(h.url("/oauth/token"))
        .basic_auth(&tf.id, Some(&tf.secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(ok_json(r).await["access_token"].as_str().unwrap().len(), 64);

    lifecycle(&h, &token).await;
    let regions = ok_json(h.get(&form_token, "/api/v1/regions").await).await;
    assert!(regions.is_array());
    let log = h.proxy.access_log(1).await;
    assert!(
        log.iter().any(|l| l["user.id"] == "client:acme-terraform"
            || l["user"]["id"] == "client:acme-terraform"),
        "the access log names the client"
    );
    assert!(
        !h.proxy.access_log_text().contains(&token) && !h.proxy.stderr().contains(&tf.secret),
        "neither the token nor the secret is logged"
    );

    // The token carries the client's roles: an operator client may power but not delete.
    let ci = token_for(&h.http, &h.proxy.url, id.client("acme-ci")).await;
    let inst = assemble(&h, &token, "ci-target").await;
    let iid = inst["id"].as_str().unwrap();
    let denied = expect_error(
        h.delete(&ci, &format!("/api/v1/instances/{iid}")).await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(denied["details"]["permission"], json!(["instances:delete"]));
    ok_json(
        h.post(&ci, &format!("/api/v1/instances/{iid}/start"), json!({}))
            .await,
    )
    .await;

    // The admin listener takes tokens too, and only with the admin role; an admin of one
    // tenant sees that tenant's clients only (issue 13, finding 10).
    let admin = h.proxy.admin_get(&token, "/admin/config").await;
    let cfg = ok_json(admin).await;
    let clients = cfg["clients"].as_array().unwrap();
    assert!(!clients.is_empty(), "{cfg}");
    let tenant = cfg["scope"]["tenant"]
        .as_str()
        .expect("a tenant administrator");
    assert!(clients.iter().all(|c| c["tenant"] == tenant), "{cfg}");
    assert!(
        !cfg.to_string().contains("argon2"),
        "no secret hash in the admin answer"
    );
    let r = h.proxy.admin_get(&ci, "/admin/config").await;
    expect_error(r, 403, "forbidden").await;

    // A token altered in one character is refused.
    let mut bytes = token.clone().into_bytes();
    bytes[30] = if bytes[30] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    expect_error(
        h.get(&tampered, "/api/v1/regions").await,
        401,
        "invalid_token",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_errors_use_the_rfc_6749_codes_in_the_error_body() {
    let id = Identity::new(default_clients());
    let h = start(&id).await;
    let tf = id.client("acme-terraform");
    let r = request_token(&h.http, &h.proxy.url, &tf.id, "wrong-secret", false).await;
    expect_error(r, 401, "invalid_client").await;
    let r = request_token(&h.http, &h.proxy.url, "nobody", &tf.secret, true).await;
    expect_error(r, 401, "invalid_client").await;
    let r = h
        .http
        .post(h.url("/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("client_id", tf.id.as_str()),
            ("client_secret", tf.secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "unsupported_grant_type").await;
    let r = h
        .http
        .post(h.url("/oauth/token"))
        .json(&json!({"client_id": tf.id, "client_secret": tf.secret}))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "invalid_request").await;
    let r = h
        .http
        .post(h.url("/oauth/token"))
        .basic_auth(&tf.id, Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic"),
        "RFC 6749 5.2: Basic clients get a Basic challenge"
    );
    expect_error(r, 401, "invalid_client").await;
    let r = h.http.get(h.url("/oauth/token")).send().await.unwrap();
    expect_error(r, 405, "method_not_allowed").await;
    assert_eq!(
        h.sim.calls().count("POST", "/oauth/token"),
        0,
        "the proxy answers /oauth/token itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_with_the_same_key_accepts_the_token_another_key_does_not() {
    let id = Identity::new(default_clients());
    let h = start(&id).await;
    let token = token_for(&h.http, &h.proxy.url, id.client("acme-terraform")).await;

    // Same config, same signing key, no shared store.
    let second = ProxyProcess::start(&h.config).await;
    let r = second
        .get(&token, &format!("/api/v1/instances/{WEB1}"))
        .await;
    assert_eq!(ok_json(r).await["id"], WEB1);

    // Same clients, another key: refused.
    let mut other = Identity::new(id.clients.clone());
    other.oauth_extra = String::new();
    let mut cfg = ConfigBuilder::new(&h.sim.url());
    cfg.extra_top = other.yaml();
    let third = ProxyProcess::start(&cfg).await;
    let r = third
        .get(&token, &format!("/api/v1/instances/{WEB1}"))
        .await;
    expect_error(r, 401, "invalid_token").await;
}

/// Rewrites the proxy's config file with the identity part changed.
fn rewrite(h: &Harness, old: &Identity, new: &Identity) {
    h.proxy.edit_config(|text| {
        let old_part = old.yaml();
        assert!(text.contains(&old_part));
        text.replace(&old_part, &new.yaml())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_or_removing_a_client_revokes_its_tokens_at_reload() {
    let id = Identity::new(default_clients());
    let h = start(&id).await;
    let ci = token_for(&h.http, &h.proxy.url, id.client("acme-ci")).await;
    let tf = token_for(&h.http, &h.proxy.url, id.client("acme-terraform")).await;
    assert_eq!(h.get(&ci, "/api/v1/regions").await.status(), 200);

    // Disable acme-ci and send SIGHUP.
    let mut disabled = id.with_clients(id.clients.clone());
    disabled
        .clients
        .iter_mut()
        .find(|c| c.id == "acme-ci")
        .unwrap()
        .enabled = false;
    rewrite(&h, &id, &disabled);
    h.reload_by_sighup()
        .await
        .expect("the SIGHUP reload succeeds");
    expect_error(h.get(&ci, "/api/v1/regions").await, 401, "invalid_token").await;
    assert_eq!(
        h.get(&tf, "/api/v1/regions").await.status(),
        200,
        "other clients' tokens stay valid"
    );
    let c = disabled.client("acme-ci");
    let r = request_token(&h.http, &h.proxy.url, &c.id, &c.secret, false).await;
    expect_error(r, 401, "invalid_client").await;

    // Remove acme-terraform and reload through the admin API.
    let mut removed = id.with_clients(disabled.clients.clone());
    removed.clients.retain(|c| c.id != "acme-terraform");
    rewrite(&h, &disabled, &removed);
    h.reload_ok().await;
    expect_error(h.get(&tf, "/api/v1/regions").await, 401, "invalid_token").await;
    // The globex client was untouched.
    let gx = token_for(&h.http, &h.proxy.url, removed.client("globex-terraform")).await;
    assert_eq!(h.get(&gx, "/api/v1/regions").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_lock_the_source_address_out_of_the_token_endpoint() {
    let mut id = Identity::new(default_clients());
    id.oauth_extra = "  max_failures_per_minute: 3\n".into();
    let h = start(&id).await;
    let tf = id.client("acme-terraform");
    ok_json(request_token(&h.http, &h.proxy.url, &tf.id, &tf.secret, false).await).await;
    for i in 0..3 {
        let r = request_token(&h.http, &h.proxy.url, &tf.id, &format!("guess-{i}"), false).await;
        expect_error(r, 401, "invalid_client").await;
    }
    // Locked out, even with the right secret.
    let r = request_token(&h.http, &h.proxy.url, &tf.id, &tf.secret, false).await;
    assert!(r.headers().contains_key("retry-after"));
    expect_error(r, 429, "rate_limited").await;
    let r = request_token(&h.http, &h.proxy.url, &tf.id, "guess-x", false).await;
    expect_error(r, 429, "rate_limited").await;
    // Only the token endpoint: the API still serves the address.
    assert_eq!(
        h.get(h.key("viewer"), "/api/v1/regions").await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_per_address_are_limited() {
    let mut id = Identity::new(default_clients());
    id.oauth_extra = "  max_requests_per_minute: 2\n".into();
    let h = start(&id).await;
    let tf = id.client("acme-terraform");
    for _ in 0..2 {
        ok_json(request_token(&h.http, &h.proxy.url, &tf.id, &tf.secret, true).await).await;
    }
    let r = request_token(&h.http, &h.proxy.url, &tf.id, &tf.secret, true).await;
    expect_error(r, 429, "rate_limited").await;
}

#[test]
fn identity_config_errors_name_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let short_key = dir.path().join("short-key");
    std::fs::write(&short_key, "too short").unwrap();
    let mut cfg = ConfigBuilder::new("http://127.0.0.1:9");
    cfg.extra_top = format!(
        "oauth:\n  signing_key: {{file: \"{}\"}}\n  expires_in: 30\nclients:\n  - {{client_id: a, secret_hash: 'sha256:00', roles: [wizard], tenant: nowhere}}\n  - {{client_id: a, secret_hash: '{}', roles: [viewer], tenant: acme}}\n",
        short_key.display(),
        orion_proxy::auth::tokens::hash_secret("x").unwrap()
    );
    let path = cfg.write(dir.path(), &Ports::free());
    let run = check_config(&path);
    assert!(!run.ok);
    let err = run.stderr;
    for want in [
        "oauth.signing_key: must be at least 32 bytes",
        "oauth.expires_in",
        "clients[0] (a).roles[0]: unknown role 'wizard'",
        "clients[0] (a).tenant: unknown tenant 'nowhere'",
        "clients[0] (a).secret_hash: is not an Argon2 PHC string",
        "clients[1] (a).client_id: duplicate client id",
    ] {
        assert!(err.contains(want), "{want} in:\n{err}");
    }
    assert!(
        !err.contains("too short"),
        "the key's value is never echoed"
    );

    // Clients without a signing key.
    cfg.extra_top = format!(
        "clients:\n  - {{client_id: b, secret_hash: '{}', roles: [viewer], tenant: acme}}\n",
        orion_proxy::auth::tokens::hash_secret("x").unwrap()
    );
    let path = cfg.write(dir.path(), &Ports::free());
    let err = check_config(&path).stderr;
    assert!(
        err.contains("oauth.signing_key: required when clients are configured"),
        "{err}"
    );
}
