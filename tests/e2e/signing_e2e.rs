//! Signed upstream requests (RFC 9421 + RFC 9530) end to end: the proxy signs, the simulator
//! verifies with its own implementation, and anything changed after signing is refused.

use crate::harness::*;
use orion_proxy::upstream::signing::{RequestParts, Signer};
use orion_sim::{SimSignatureAlgorithm, SimSignatureKey};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

const KEYID: &str = "orion-proxy-test-key";
const SECRET: &str = "test-signing-secret-0123456789abcdef0123456789";
const INSTANCE: &str = "3b0c2f6e-1111-4222-8333-944455556666";
const DTIER: &str = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";
const REGION: &str = "9e98d1f2-3c4b-4a5d-8e6f-7a8b9c0d1e2f";

fn hmac_key(account: Option<&str>) -> SimSignatureKey {
    SimSignatureKey {
        keyid: KEYID.into(),
        secret: SECRET.as_bytes().to_vec(),
        algorithm: SimSignatureAlgorithm::HmacSha256,
        account: account.map(str::to_string),
    }
}

/// A simulator verifying signatures and a proxy whose acme account signs with `credentials`.
async fn start(
    key: SimSignatureKey,
    credentials: impl FnOnce(&std::path::Path) -> String,
) -> (Harness, tempfile::TempDir) {
    let mut opts = sim_options();
    opts.signature = Some(key);
    let secrets = tempfile::tempdir().unwrap();
    let acme_credentials = credentials(secrets.path());
    // A route that rewrites, so that the signature is shown to cover the rewritten body.
    let defaults: serde_yaml::Value =
        serde_yaml::from_str(orion_proxy::config::DEFAULTS_YAML).unwrap();
    let mut routes = String::from("routes:\n");
    for r in defaults["routes"].as_sequence().unwrap() {
        if r["name"] == "disks.create" {
            routes += r#"  - {name: disks.create, method: POST, path: "/api/v1/disks", permission: "disks:write", schema: disks.create, rewrite: {defaults: {performance_tier: "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"}, drop: [template]}}"#;
            routes += "\n";
        } else {
            routes += &format!("  - {}\n", serde_json::to_string(r).unwrap());
        }
    }
    let h = Harness::start_on(start_sim(opts).await, |c| {
        c.acme_credentials = Some(acme_credentials);
        c.extra_top = routes;
    })
    .await;
    (h, secrets)
}

fn hmac_credentials(dir: &std::path::Path, secret: &str) -> String {
    let p = dir.join("signing-key");
    std::fs::write(&p, secret).unwrap();
    format!(
        "      type: signature\n      keyid: {KEYID}\n      algorithm: hmac-sha256\n      key: {{file: \"{}\"}}\n",
        p.display()
    )
}

async fn ok_json(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "status {status}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn last<'a>(
    seen: &'a [orion_sim::RecordedRequest],
    method: &str,
    path: &str,
) -> &'a orion_sim::RecordedRequest {
    seen.iter()
        .rev()
        .find(|r| r.method == method && r.path == path)
        .unwrap_or_else(|| panic!("{method} {path} did not reach the simulator"))
}

#[tokio::test]
async fn the_simulator_accepts_the_proxys_signed_get_post_and_delete() {
    let (h, _secrets) = start(hmac_key(Some("acme")), |d| hmac_credentials(d, SECRET)).await;
    let admin = h.key("admin").to_string();

    // GET, with a query.
    let list = ok_json(h.get(&admin, "/api/v1/instances").await).await;
    assert!(list.as_array().is_some_and(|a| !a.is_empty()));
    let state = ok_json(
        h.get(
            &admin,
            &format!("/api/v1/instances/{INSTANCE}/state?probe=1"),
        )
        .await,
    )
    .await;
    assert_eq!(state["state"], "running");
    // POST with a body, rewritten by the route before signing.
    let disk = ok_json(
        h.post(
            &admin,
            "/api/v1/disks",
            json!({"name": "signed-1", "region": REGION, "size": 10, "template": null}),
        )
        .await,
    )
    .await;
    assert_eq!(disk["name"], "signed-1");
    // POST without a body (digest of the empty body).
    let stop = h
        .http
        .post(h.url(&format!("/api/v1/instances/{INSTANCE}/stop")))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    let stopped = ok_json(stop).await;
    assert_eq!(stopped["id"], INSTANCE);
    poll("stopped", Duration::from_secs(10), || async {
        let s = ok_json(
            h.get(&admin, &format!("/api/v1/instances/{INSTANCE}/state"))
                .await,
        )
        .await;
        (s["state"] == "stopped").then_some(())
    })
    .await;
    // DELETE.
    let gone = ok_json(
        h.delete(&admin, &format!("/api/v1/instances/{INSTANCE}"))
            .await,
    )
    .await;
    assert_eq!(gone["id"], INSTANCE);

    let seen = h.sim.recent_requests();
    let post = last(&seen, "POST", "/api/v1/disks");
    let sent: Value = serde_json::from_str(&post.body).unwrap();
    assert_eq!(
        sent,
        json!({"name": "signed-1", "region": REGION, "size": 10, "performance_tier": DTIER})
    );
    assert_eq!(
        post.header_values("content-digest"),
        vec![orion_sim::content_digest(post.body.as_bytes())]
    );
    let state_get = seen
        .iter()
        .find(|r| r.path.ends_with("/state") && r.query.as_deref() == Some("probe=1"))
        .expect("the GET with a query reached the simulator");
    for r in [
        last(&seen, "GET", "/api/v1/instances"),
        state_get,
        last(&seen, "POST", &format!("/api/v1/instances/{INSTANCE}/stop")),
        post,
        last(&seen, "DELETE", &format!("/api/v1/instances/{INSTANCE}")),
    ] {
        let input = r.header_values("signature-input");
        assert_eq!(input.len(), 1, "{r:?}");
        for c in [
            "\"@method\"",
            "\"@authority\"",
            "\"@path\"",
            "\"@query\"",
            "\"content-digest\"",
        ] {
            assert!(input[0].contains(c), "{c} not covered: {}", input[0]);
        }
        // content-type is covered whenever the request has one.
        assert_eq!(
            input[0].contains("\"content-type\""),
            !r.header_values("content-type").is_empty(),
            "{r:?}"
        );
        for p in [
            ";created=",
            ";expires=",
            ";nonce=",
            &format!(";keyid=\"{KEYID}\""),
            ";alg=\"hmac-sha256\"",
        ] {
            assert!(input[0].contains(p), "{p} missing: {}", input[0]);
        }
        assert_eq!(r.header_values("signature").len(), 1);
        // Signature-only account: no bearer token goes out, and the caller's never does.
        assert!(r.header_values("authorization").is_empty(), "{r:?}");
        assert_eq!(r.account.as_deref(), Some("acme"));
    }
    // Nothing was refused along the way.
    assert!(
        h.proxy
            .access_log(4)
            .await
            .iter()
            .all(|l| l["http.response.status_code"] != 502)
    );
}

/// Sends a request straight to the simulator with the given extra headers.
async fn to_sim(
    h: &Harness,
    method: &str,
    path_and_query: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, Value) {
    let mut req = h
        .http
        .request(
            method.parse().unwrap(),
            format!("{}{path_and_query}", h.sim.url()),
        )
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn signed_headers(
    signer: &Signer,
    authority: &str,
    method: &str,
    path: &str,
    body: &[u8],
    at: SystemTime,
    nonce: &str,
) -> Vec<(String, String)> {
    let s = signer
        .sign_at(
            &RequestParts {
                method,
                authority,
                path,
                query: None,
                content_type: Some("application/json"),
                body,
            },
            at,
            nonce,
        )
        .unwrap();
    vec![
        ("content-type".into(), "application/json".into()),
        ("content-digest".into(), s.content_digest),
        ("signature-input".into(), s.signature_input),
        ("signature".into(), s.signature),
    ]
}

fn set(headers: &mut [(String, String)], name: &str, value: String) {
    for (k, v) in headers.iter_mut() {
        if k == name {
            *v = value.clone();
        }
    }
}

#[tokio::test]
async fn changes_after_signing_expiry_and_replays_are_refused() {
    let (h, _secrets) = start(hmac_key(Some("acme")), |d| hmac_credentials(d, SECRET)).await;
    let admin = h.key("admin").to_string();
    let authority = h.sim.addr().to_string();

    // Replaying what the proxy sent, byte for byte: the nonce was used.
    let body = json!({"name": "replayed", "region": REGION, "size": 10});
    ok_json(h.post(&admin, "/api/v1/disks", body.clone()).await).await;
    let seen = h.sim.recent_requests();
    let sent = last(&seen, "POST", "/api/v1/disks").clone();
    let keep = [
        "content-type",
        "content-digest",
        "signature-input",
        "signature",
    ];
    let headers: Vec<(String, String)> = sent
        .headers
        .iter()
        .filter(|(k, _)| keep.contains(&k.as_str()))
        .cloned()
        .collect();
    let (status, err) = to_sim(&h, "POST", "/api/v1/disks", &headers, sent.body.as_bytes()).await;
    assert_eq!(status, 401, "{err}");
    assert_eq!(err["error"], "invalid_signature");
    assert!(
        err["error_description"].as_str().unwrap().contains("nonce"),
        "{err}"
    );
    // The proxy's request with another body: the digest no longer matches.
    let (status, err) = to_sim(
        &h,
        "POST",
        "/api/v1/disks",
        &headers,
        br#"{"name":"other","region":"SY3","size":10}"#,
    )
    .await;
    assert_eq!(status, 401, "{err}");
    assert!(
        err["error_description"]
            .as_str()
            .unwrap()
            .contains("Content-Digest"),
        "{err}"
    );

    // Requests signed here with the proxy's signer, then changed.
    let signer = Signer::hmac_sha256(KEYID, SECRET, Duration::from_secs(60)).unwrap();
    let now = SystemTime::now();
    let path = "/api/v1/public_keys";
    let key_body = br#"{"name":"k-signed","key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIexample k"}"#;

    // Body changed after signing, digest recomputed to match it: only the signature catches it.
    let mut hd = signed_headers(&signer, &authority, "POST", path, key_body, now, "n-body");
    let other = br#"{"name":"k-evil","key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIexample k"}"#;
    set(&mut hd, "content-digest", orion_sim::content_digest(other));
    let (status, err) = to_sim(&h, "POST", path, &hd, other).await;
    assert_eq!(status, 401, "{err}");
    assert!(
        err["error_description"]
            .as_str()
            .unwrap()
            .contains("does not match the request"),
        "{err}"
    );

    // Path changed after signing.
    let hd = signed_headers(
        &signer,
        &authority,
        "GET",
        "/api/v1/regions",
        b"",
        now,
        "n-path",
    );
    let (status, err) = to_sim(&h, "GET", "/api/v1/templates", &hd, b"").await;
    assert_eq!(status, 401, "{err}");

    // Date changed after signing: `created` moved in Signature-Input.
    let mut hd = signed_headers(
        &signer,
        &authority,
        "GET",
        "/api/v1/regions",
        b"",
        now,
        "n-date",
    );
    let input = hd
        .iter()
        .find(|(k, _)| k == "signature-input")
        .unwrap()
        .1
        .clone();
    let created = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    set(
        &mut hd,
        "signature-input",
        input.replace(
            &format!("created={created}"),
            &format!("created={}", created - 1),
        ),
    );
    let (status, err) = to_sim(&h, "GET", "/api/v1/regions", &hd, b"").await;
    assert_eq!(status, 401, "{err}");
    assert!(
        err["error_description"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{err}"
    );

    // Expired: signed two minutes ago with a one-minute lifetime.
    let hd = signed_headers(
        &signer,
        &authority,
        "GET",
        "/api/v1/regions",
        b"",
        now - Duration::from_secs(120),
        "n-old",
    );
    let (status, err) = to_sim(&h, "GET", "/api/v1/regions", &hd, b"").await;
    assert_eq!(status, 401, "{err}");
    assert!(
        err["error_description"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{err}"
    );

    // Wrong key.
    let stranger = Signer::hmac_sha256(
        KEYID,
        "another-secret-0123456789abcdef0123456789",
        Duration::from_secs(60),
    )
    .unwrap();
    let hd = signed_headers(
        &stranger,
        &authority,
        "GET",
        "/api/v1/regions",
        b"",
        now,
        "n-key",
    );
    let (status, _) = to_sim(&h, "GET", "/api/v1/regions", &hd, b"").await;
    assert_eq!(status, 401);

    // No signature at all.
    let (status, _) = to_sim(&h, "GET", "/api/v1/regions", &[], b"").await;
    assert_eq!(status, 401);

    // The control: the same requests unchanged are accepted (once).
    let hd = signed_headers(&signer, &authority, "POST", path, key_body, now, "n-body");
    let (status, created_key) = to_sim(&h, "POST", path, &hd, key_body).await;
    assert_eq!(status, 200, "{created_key}");
    assert_eq!(created_key["name"], "k-signed");
    let hd = signed_headers(
        &signer,
        &authority,
        "GET",
        "/api/v1/regions",
        b"",
        now,
        "n-date",
    );
    let (status, _) = to_sim(&h, "GET", "/api/v1/regions", &hd, b"").await;
    assert_eq!(status, 200);
    let (status, err) = to_sim(&h, "GET", "/api/v1/regions", &hd, b"").await;
    assert_eq!(status, 401, "replayed: {err}");
}

#[tokio::test]
async fn a_proxy_with_the_wrong_key_is_refused_upstream() {
    let (h, _secrets) = start(hmac_key(Some("acme")), |d| {
        hmac_credentials(d, "not-the-simulators-secret-0123456789abcdef")
    })
    .await;
    let resp = h.get(h.key("admin"), "/api/v1/regions").await;
    expect_error(resp, 502, "upstream_auth_failed").await;
    let seen = h.sim.recent_requests();
    assert!(
        !last(&seen, "GET", "/api/v1/regions")
            .header_values("signature")
            .is_empty()
    );
}

#[tokio::test]
async fn ed25519_signatures_with_a_bearer_token_as_well() {
    let seed = [7u8; 32];
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    let key = SimSignatureKey {
        keyid: KEYID.into(),
        secret: public.to_vec(),
        algorithm: SimSignatureAlgorithm::Ed25519,
        // No account: the simulator also wants a valid bearer token.
        account: None,
    };
    let (h, _secrets) = start(key, |d| {
        let k = d.join("ed25519-seed");
        std::fs::write(&k, format!("hex:{}", hex::encode(seed))).unwrap();
        let t = d.join("token");
        std::fs::write(&t, ACME_STATIC_TOKEN).unwrap();
        format!(
            "      type: signature\n      keyid: {KEYID}\n      algorithm: ed25519\n      key: {{file: \"{}\"}}\n      token: {{file: \"{}\"}}\n",
            k.display(),
            t.display()
        )
    })
    .await;
    let admin = h.key("admin").to_string();
    ok_json(h.get(&admin, "/api/v1/regions").await).await;
    let disk = ok_json(
        h.post(
            &admin,
            "/api/v1/disks",
            json!({"name": "ed-1", "region": REGION, "size": 10}),
        )
        .await,
    )
    .await;
    assert_eq!(disk["name"], "ed-1");
    let seen = h.sim.recent_requests();
    let post = last(&seen, "POST", "/api/v1/disks");
    assert_eq!(
        post.header_values("authorization"),
        vec!["Bearer <redacted>"]
    );
    assert!(post.header_values("signature-input")[0].contains("alg=\"ed25519\""));
    assert_eq!(post.account.as_deref(), Some("acme"));
}

/// The proxy's own calls to OrionVM (what the facade's composites use) are signed too.
#[tokio::test]
async fn the_proxys_own_calls_are_signed() {
    let mut opts = sim_options();
    opts.signature = Some(hmac_key(Some("acme")));
    let sim = start_sim(opts).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    std::fs::write(&key, SECRET).unwrap();
    let text = format!(
        "accounts:\n  a:\n    endpoints: [{{url: \"{}\"}}]\n    credentials: {{type: signature, keyid: {KEYID}, key: {{file: \"{}\"}}}}\ntenants: {{t: {{account: a}}}}\n",
        sim.url(),
        key.display()
    );
    let config = orion_proxy::config::parse(&text).unwrap();
    let state = orion_proxy::runtime::State::memory();
    let rt = orion_proxy::runtime::stage(config, &text, &state)
        .unwrap()
        .commit(&state);
    let account = rt.upstreams.accounts["a"].clone();
    let list = orion_proxy::upstream::client::call(
        &account,
        http::Method::GET,
        "/api/v1/regions?x=1",
        None,
        "req-1",
    )
    .await
    .unwrap();
    assert_eq!(list.status, 200, "{:?}", list.json());
    let made = orion_proxy::upstream::client::call(
        &account,
        http::Method::POST,
        "/api/v1/disks",
        Some(&json!({"name": "own-1", "region": REGION, "size": 10})),
        "req-2",
    )
    .await
    .unwrap();
    assert_eq!(made.status, 200, "{:?}", made.json());
    let seen = sim.recent_requests();
    let post = last(&seen, "POST", "/api/v1/disks");
    assert!(post.header_values("authorization").is_empty());
    assert_eq!(post.header_values("signature").len(), 1);
    // And a wrong key is refused there as well.
    std::fs::write(&key, "a-different-secret-0123456789abcdef0123456789").unwrap();
    let config = orion_proxy::config::parse(&text).unwrap();
    let state = orion_proxy::runtime::State::memory();
    let rt = orion_proxy::runtime::stage(config, &text, &state)
        .unwrap()
        .commit(&state);
    let wrong = orion_proxy::upstream::client::call(
        &rt.upstreams.accounts["a"],
        http::Method::GET,
        "/api/v1/regions",
        None,
        "req-3",
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, 401);
}
