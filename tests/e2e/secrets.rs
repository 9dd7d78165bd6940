//! No credential ever appears in a response or in the access log: every configured secret is
//! searched for in everything the proxy answered and logged after a mix of traffic.

use crate::harness::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_response_or_log_line() {
    let h = Harness::start().await;
    let mut seen = String::new();
    let keys: Vec<String> = h.config.keys.iter().map(|k| k.key.clone()).collect();
    // A mix: successes, refusals, errors, bodies with secret-looking fields, secrets in queries.
    let mut responses = Vec::new();
    for k in &keys {
        responses.push(h.get(k, "/api/v1/instances").await);
        responses.push(
            h.post(
                k,
                "/api/v1/instances/3b0c2f6e-1111-4222-8333-944455556666/stop",
                json!({}),
            )
            .await,
        );
    }
    responses.push(h.get("not-a-key", "/api/v1/instances").await);
    responses.push(
        h.post(
            &keys[2],
            "/api/v1/public_keys",
            json!({"name": "k", "password": "hunter2-secret", "client_secret": ACME_CLIENT_SECRET}),
        )
        .await,
    );
    responses.push(
        h.http
            .get(h.url(&format!(
                "/api/v1/regions?api_key={}&token=tok-secret-1",
                keys[0]
            )))
            .bearer_auth(&keys[0])
            .send()
            .await
            .unwrap(),
    );
    for fault in ["status=500", "reset"] {
        responses.push(h.get_with_fault(&keys[0], "/api/v1/regions", fault).await);
    }
    h.sim.expire_tokens();
    responses.push(h.get(&keys[0], "/api/v1/regions").await);
    responses.push(h.proxy.admin_get(&keys[2], "/admin/config").await);
    let n = responses.len();
    for r in responses {
        for (k, v) in r.headers() {
            seen.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or_default()));
        }
        seen.push_str(&r.text().await.unwrap_or_default());
        seen.push('\n');
    }
    let log_lines = h.proxy.access_log(n).await;
    assert!(
        log_lines.len() >= n - 1,
        "one access-log line per request: {} for {n}",
        log_lines.len()
    );
    let log = h.proxy.access_log_text();
    let stderr = h.proxy.stderr();

    let mut secrets: Vec<&str> = keys.iter().map(String::as_str).collect();
    secrets.extend([
        ACME_CLIENT_SECRET,
        ACME_STATIC_TOKEN,
        GLOBEX_STATIC_TOKEN,
        GLOBEX_CLIENT_SECRET,
        "hunter2-secret",
        "tok-secret-1",
    ]);
    for s in &secrets {
        assert!(!seen.contains(s), "secret {s} found in a response");
        assert!(!log.contains(s), "secret {s} found in the access log");
        assert!(
            !stderr.contains(s),
            "secret {s} found in the diagnostic log"
        );
    }
    // OrionVM's own tokens never reach the caller either: no 64-character bearer in any answer.
    let without_challenges = seen.replace("Bearer realm=", "");
    assert!(
        !without_challenges.to_ascii_lowercase().contains("bearer "),
        "an Authorization value leaked: {seen}"
    );
    // The query's secret values are redacted, not dropped: the line is still useful.
    assert!(log.contains("api_key=[redacted]"), "{log}");
    // And nothing the caller sent as credentials went to OrionVM.
    for r in h.sim.recent_requests() {
        for (name, value) in &r.headers {
            assert_ne!(name, "x-api-key");
            for k in &keys {
                assert!(
                    !value.contains(k.as_str()),
                    "the caller's key reached OrionVM in {name}"
                );
            }
        }
    }
}

/// Issue 13, finding 3: on an upstream failure Pingora's "Fail to proxy" line named the raw
/// request target, and the access log showed `api-key`, `key`, `sig`, `auth`, `;`-separated
/// parameters and OrionVM context entries (`{"key": "root_password", "value": ...}`) in clear.
/// After a traffic mix with faults, no secret is in stderr, the access log or the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_log_after_faults_with_secrets_in_queries() {
    let h = Harness::start_with(|c| {
        c.extra_logging = "  request_headers: true\n  response_headers: true\n  request_body: true\n  response_body: true\n".into();
    })
    .await;
    let key = h.key("operator").to_string();
    let mut secrets: Vec<String> = Vec::new();
    let names = [
        "api-key",
        "key",
        "sig",
        "auth",
        "access_token",
        "api_key",
        "token",
        "password",
        "secret",
    ];
    let id = h.first_instance(&key).await;
    let mut sent = 1;
    for (i, fault) in ["reset", "status=500", "status=503", "reset"]
        .iter()
        .enumerate()
    {
        let mut query: Vec<String> = Vec::new();
        for (j, name) in names.iter().enumerate() {
            let secret = format!("qs{i}x{j}-S3CRET");
            query.push(format!("{name}={secret}"));
            secrets.push(secret);
        }
        // `&` on even rounds, `;` on odd ones.
        let sep = if i % 2 == 0 { "&" } else { ";" };
        // A mutation: it goes through Pingora to OrionVM (reads may be the cache's own calls).
        let path = format!(
            "/api/v1/instances/{id}/stop?view=full{sep}{}",
            query.join(sep)
        );
        let r = post_with_fault(&h, &key, &path, fault).await;
        let status = r.status().as_u16();
        assert!(
            status >= 500,
            "{fault}: {status} {}",
            r.text().await.unwrap_or_default()
        );
        sent += 1;
    }
    // A context entry whose key looks secret, set and read back (request and response bodies
    // are logged); and asked for by query.
    let ctx_secret = "ctx-ROOT-pw-77".to_string();
    let r = h
        .post(
            h.key("admin"),
            &format!("/api/v1/instances/{id}/context"),
            json!({"key": "root_password", "value": ctx_secret}),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    sent += 1;
    let r = h
        .get(&key, &format!("/api/v1/instances/{id}/context"))
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    sent += 1;
    let r = post_with_fault(
        &h,
        h.key("admin"),
        &format!("/api/v1/instances/{id}/context?key=root_password&value={ctx_secret}"),
        "reset",
    )
    .await;
    assert!(r.status().as_u16() >= 500, "{}", r.status());
    sent += 1;
    secrets.push(ctx_secret);

    h.proxy.access_log(sent).await;
    let audit = poll(
        "the audit record of the context change",
        Duration::from_secs(20),
        || async {
            let text = std::fs::read_to_string(h.proxy.audit_log_path()).unwrap_or_default();
            text.contains("/context").then_some(text)
        },
    )
    .await;
    let access = h.proxy.access_log_text();
    let stderr = h.proxy.stderr();
    // The failures were logged, and with the request named (so the search below means something).
    assert!(stderr.contains("Fail to proxy"), "{stderr}");
    assert!(
        stderr.contains(&format!("/api/v1/instances/{id}/stop?view=full")),
        "{stderr}"
    );
    assert!(stderr.contains("[redacted]"), "{stderr}");
    for s in &secrets {
        assert!(!stderr.contains(s.as_str()), "{s} in stderr:\n{stderr}");
        assert!(
            !access.contains(s.as_str()),
            "{s} in the access log:\n{access}"
        );
        assert!(
            !audit.contains(s.as_str()),
            "{s} in the audit trail:\n{audit}"
        );
    }
    assert!(
        access.contains("root_password"),
        "the entry's key stays: {access}"
    );
}

/// `POST path` with `{}` asking the simulator for a fault.
async fn post_with_fault(h: &Harness, key: &str, path: &str, fault: &str) -> reqwest::Response {
    h.http
        .post(h.url(path))
        .bearer_auth(key)
        .header("x-sim-fault", fault)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
}
