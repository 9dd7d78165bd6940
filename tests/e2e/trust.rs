//! Issue 13's trust findings: two different credentials in one request are refused (finding
//! 9); hop-by-hop headers end at the proxy, `X-Forwarded-For`/`Forwarded` are appended to and
//! trusted only from `server.trusted_networks`, and `upstream.forward_headers: allowlist`
//! sends OrionVM only what it needs (finding 13). The pool keys (finding 11) are in
//! `tls_upstream`, the `crit` JWT parameter (finding 12) in `auth::jwt`'s unit tests.

use crate::harness::*;
use orion_sim::RecordedRequest;

/// The simulator's record of the last call on `path`.
fn last_call(h: &Harness, path: &str) -> RecordedRequest {
    h.sim
        .recent_requests()
        .into_iter()
        .rev()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("no call on {path} reached OrionVM"))
}

fn one(call: &RecordedRequest, name: &str) -> Option<String> {
    let values = call.header_values(name);
    assert!(values.len() <= 1, "{name}: {values:?}");
    values.first().map(|v| v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_different_credentials_in_one_request_are_refused() {
    let h = Harness::start().await;
    let acme = h.key("viewer").to_string();
    let globex = h.key("other_tenant_admin").to_string();
    let before = h.sim.calls().api_calls();
    let r = h
        .http
        .get(h.url("/api/v1/instances"))
        .bearer_auth(&globex)
        .header("x-api-key", &acme)
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "conflicting_credentials").await;
    // The admin listener too.
    let r = h
        .http
        .get(format!("{}/admin/config", h.proxy.admin_url))
        .bearer_auth(&globex)
        .header("x-api-key", &acme)
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "conflicting_credentials").await;
    assert_eq!(h.sim.calls().api_calls(), before, "OrionVM was not called");
    // The same key sent both ways is one credential.
    let r = h
        .http
        .get(h.url("/api/v1/regions"))
        .bearer_auth(&acme)
        .header("x-api-key", &acme)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn raw_get(key: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET /api/v1/regions HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer {key}\r\n\
         Connection: close, X-Hop\r\nX-Hop: secret-hop\r\nKeep-Alive: timeout=5\r\n\
         TE: trailers\r\nX-Custom: kept\r\n{extra}\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_appended_and_hop_by_hop_headers_stripped() {
    // The test client (127.0.0.1) is in the default trusted networks: a load balancer.
    let h = Harness::start().await;
    let key = h.key("viewer").to_string();
    let (status, head, _) = raw_request(
        &h.proxy.url,
        &raw_get(
            &key,
            "X-Forwarded-For: 198.51.100.1\r\nForwarded: for=198.51.100.1;proto=https\r\n",
        ),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let call = last_call(&h, "/api/v1/regions");
    assert_eq!(
        one(&call, "x-forwarded-for").as_deref(),
        Some("198.51.100.1, 127.0.0.1")
    );
    assert_eq!(
        one(&call, "forwarded").as_deref(),
        Some("for=198.51.100.1;proto=https, for=127.0.0.1;proto=http")
    );
    for gone in ["x-hop", "keep-alive", "te", "connection"] {
        assert!(
            call.header_values(gone).is_empty(),
            "{gone} reached OrionVM"
        );
    }
    assert_eq!(one(&call, "x-custom").as_deref(), Some("kept"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_client_s_forwarding_headers_are_not_believed() {
    let h = Harness::start_with(|c| {
        c.extra_server = "  trusted_networks: [\"10.0.0.0/8\"]\n".into();
    })
    .await;
    let key = h.key("viewer").to_string();
    let (status, head, _) = raw_request(
        &h.proxy.url,
        &raw_get(
            &key,
            "X-Forwarded-For: 198.51.100.1\r\nForwarded: for=198.51.100.1\r\nX-Real-IP: 198.51.100.1\r\n",
        ),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let call = last_call(&h, "/api/v1/regions");
    assert_eq!(one(&call, "x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        one(&call, "forwarded").as_deref(),
        Some("for=127.0.0.1;proto=http")
    );
    assert_eq!(one(&call, "x-real-ip"), None);
    assert!(call.header_values("x-hop").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allowlist_sends_orionvm_only_the_headers_it_needs() {
    let h = Harness::start_with(|c| {
        c.extra_top = "upstream:\n  forward_headers: allowlist\n".into();
    })
    .await;
    let key = h.key("operator").to_string();
    // A test-only header does not reach the simulator any more: no fault is injected.
    let r = h
        .get_with_fault(&key, "/api/v1/regions", "status=500")
        .await;
    assert_eq!(r.status(), 200);
    let r = h
        .http
        .get(h.url("/api/v1/regions"))
        .bearer_auth(&key)
        .header("accept", "application/json")
        .header("x-internal-debug", "1")
        .header("user-agent", "trust-test/1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let call = last_call(&h, "/api/v1/regions");
    let mut names: Vec<&str> = call.headers.iter().map(|(k, _)| k.as_str()).collect();
    names.sort();
    names.dedup();
    let allowed = [
        "accept",
        "authorization",
        "content-length",
        "forwarded",
        "host",
        "traceparent",
        "user-agent",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-request-id",
    ];
    for n in &names {
        assert!(allowed.contains(n), "{n} reached OrionVM: {names:?}");
    }
    assert_eq!(one(&call, "user-agent").as_deref(), Some("trust-test/1"));
}
