//! No credential ever appears in a response or in the access log: every configured secret is
//! searched for in everything the proxy answered and logged after a mix of traffic.

use crate::harness::*;
use serde_json::json;

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
