//! Every error source produces the one error body with a request id, also in X-Request-Id:
//! the proxy's own refusals and OrionVM's JSON, HTML and empty errors, connect failures,
//! timeouts and resets.

use crate::harness::*;
use orion_sim::{ErrorBurst, FaultPlan};
use serde_json::{Value, json};

const INSTANCE: &str = "3b0c2f6e-1111-4222-8333-944455556666";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_refusals() {
    let h = Harness::start_with(|c| {
        let mut k = Key::new("disabled", &["admin"], "acme");
        k.enabled = false;
        c.keys.push(k);
    })
    .await;
    // 401: missing, unknown, disabled, malformed.
    let r = h.http.get(h.url("/api/v1/instances")).send().await.unwrap();
    assert!(r.headers().get("www-authenticate").is_some());
    expect_error(r, 401, "unauthorized").await;
    expect_error(
        h.get(
            &orion_proxy::auth::api_keys::generate(),
            "/api/v1/instances",
        )
        .await,
        401,
        "invalid_token",
    )
    .await;
    expect_error(
        h.get(h.key("disabled"), "/api/v1/instances").await,
        401,
        "invalid_token",
    )
    .await;
    let r = h
        .http
        .get(h.url("/api/v1/instances"))
        .header("authorization", "Basic YTpi")
        .send()
        .await
        .unwrap();
    expect_error(r, 401, "invalid_token").await;
    // 403: a viewer may not power instances; the body names the permission.
    let body = expect_error(
        h.post(
            h.key("viewer"),
            &format!("/api/v1/instances/{INSTANCE}/stop"),
            json!({}),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(body["details"]["permission"][0], "instances:power");
    // 404 unknown route, 405 known path with another method.
    expect_error(
        h.get(h.key("admin"), "/api/v1/nothing-here").await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        h.get(h.key("admin"), "/somewhere/else").await,
        404,
        "not_found",
    )
    .await;
    let r = h
        .http
        .patch(h.url("/api/v1/regions"))
        .bearer_auth(h.key("admin"))
        .send()
        .await
        .unwrap();
    expect_error(r, 405, "method_not_allowed").await;
    // 400 invalid JSON, 413 too large.
    let r = h
        .http
        .post(h.url("/api/v1/public_keys"))
        .bearer_auth(h.key("admin"))
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "invalid_json").await;
    let big = json!({"name": "k", "key": "x".repeat(70_000)});
    expect_error(
        h.post(h.key("admin"), "/api/v1/public_keys", big).await,
        413,
        "payload_too_large",
    )
    .await;
    // None of the refused requests reached OrionVM.
    let calls = h.sim.calls();
    assert_eq!(calls.api_calls(), 0, "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orionvm_json_errors_keep_their_code_and_details() {
    let h = Harness::start().await;
    let key = h.key("admin");
    // Unknown instance: OrionVM's JSON 404.
    let body = expect_error(
        h.get(
            key,
            "/api/v1/instances/00000000-0000-4000-8000-000000000000",
        )
        .await,
        404,
        "not_found",
    )
    .await;
    assert!(body["error_description"].as_str().unwrap().len() > 3);
    // Validation: OrionVM's 422 with per-field details.
    let body = expect_error(
        h.post(key, "/api/v1/public_keys", json!({"name": "no-key"}))
            .await,
        422,
        "validation_failed",
    )
    .await;
    assert!(body["details"]["key"].is_array(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orionvm_html_and_empty_errors_become_json() {
    let h = Harness::start().await;
    let key = h.key("admin");
    let get_with = |fault: &'static str| h.get_with_fault(key, "/api/v1/regions", fault);

    let body = expect_error(get_with("status=502;html").await, 502, "bad_gateway").await;
    assert!(
        !body.to_string().contains("<html"),
        "no HTML passes through: {body}"
    );
    expect_error(get_with("status=503").await, 503, "upstream_unavailable").await;
    let body = expect_error(get_with("empty=500").await, 500, "upstream_error").await;
    assert_eq!(body["status"], 500);
    // A run-wide burst of HTML 500 pages.
    h.sim.set_faults(FaultPlan {
        error_burst: Some(ErrorBurst {
            status: 500,
            count: 2,
            html: true,
        }),
        path_prefix: Some("/api/v1/templates".into()),
        ..Default::default()
    });
    for _ in 0..2 {
        expect_error(h.get(key, "/api/v1/templates").await, 500, "upstream_error").await;
    }
    assert_eq!(
        h.get(key, "/api/v1/templates").await.status(),
        200,
        "the burst is over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_502_and_timeout_is_504() {
    // An endpoint nobody listens on.
    let config = ConfigBuilder::unreachable();
    let proxy = ProxyProcess::start(&config).await;
    let r = proxy.get(config.key("admin"), "/api/v1/regions").await;
    expect_error(r, 502, "upstream_unreachable").await;
    drop(proxy);

    let h = Harness::start_with(|c| c.read_timeout_ms = 300).await;
    let r = h
        .get_with_fault(h.key("admin"), "/api/v1/regions", "latency=2s")
        .await;
    expect_error(r, 504, "upstream_timeout").await;
    let lines = h.proxy.access_log(1).await;
    assert!(
        lines
            .iter()
            .any(|l| l["http.response.status_code"] == 504
                && l["orion.upstream.failure"] == "timeout"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_before_and_during_the_answer() {
    let h = Harness::start().await;
    let key = h.key("admin");
    // A reset before any answer: 502 in the error body.
    let r = h.get_with_fault(key, "/api/v1/regions", "reset").await;
    expect_error(r, 502, "upstream_reset").await;
    // A reset in the middle of a successful body: the status line is out, so the caller sees
    // the body cut short; the proxy logs it and keeps serving.
    let r = h
        .http
        .get(h.url("/api/v1/instances"))
        .bearer_auth(key)
        .header("x-sim-fault", "reset_mid_body")
        .send()
        .await;
    let cut_short = match r {
        Err(_) => true,
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(
        cut_short,
        "the caller must not receive a truncated body as complete"
    );
    assert_eq!(
        h.get(key, "/api/v1/instances").await.status(),
        200,
        "still serving"
    );
    let lines = h.proxy.access_log(3).await;
    assert!(
        lines.iter().any(|l| l["orion.upstream.failure"] == "reset"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_ulids_unless_a_trusted_caller_sends_one() {
    let h = Harness::start().await;
    let r = h.get(h.key("viewer"), "/api/v1/regions").await;
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(rid.len(), 26);
    // Loopback is trusted by default: a well-formed inbound id is kept, a malformed one replaced.
    let r = h
        .http
        .get(h.url("/api/v1/regions"))
        .bearer_auth(h.key("viewer"))
        .header("x-request-id", "lb-1234.abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "lb-1234.abc");
    let r = h
        .http
        .get(h.url("/api/v1/regions"))
        .bearer_auth(h.key("viewer"))
        .header("x-request-id", "bad id<>")
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "bad id<>");
    // The id reaches OrionVM too, with a traceparent.
    let seen = h.sim.recent_requests();
    let header = |r: &orion_sim::RecordedRequest, name: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert!(
        seen.iter()
            .any(|r| header(r, "x-request-id").as_deref() == Some("lb-1234.abc")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .filter(|r| r.path.starts_with("/api/"))
            .all(|r| header(r, "traceparent").is_some()),
        "traceparent sent upstream: {seen:?}"
    );
    let body: Value = h
        .get(h.key("viewer"), "/api/v1/nope")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["request_id"].as_str().unwrap().len(), 26);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_networks_cannot_set_request_ids() {
    let h =
        Harness::start_with(|c| c.extra_server = "  trusted_networks: [\"10.0.0.0/8\"]\n".into())
            .await;
    let r = h
        .http
        .get(h.url("/api/v1/regions"))
        .bearer_auth(h.key("viewer"))
        .header("x-request-id", "spoofed-id")
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "spoofed-id");
}

/// The error body's media type follows the caller's `Accept`: `application/problem+json`
/// (RFC 9457) when it names it, `application/json` otherwise (OrionVM's clients send
/// `Accept: application/json` or nothing, and keep what they parse). Same body either way, on
/// the proxy listener and on the admin listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_problem_json_when_the_caller_asks_for_it() {
    let h = Harness::start().await;
    let admin = h.key("admin").to_string();
    let viewer = h.key("viewer").to_string();
    let media = |r: &reqwest::Response| {
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let get = |path: &str, accept: Option<&str>, key: Option<&str>| {
        let mut b = h.http.get(h.url(path));
        if let Some(a) = accept {
            b = b.header("accept", a);
        }
        if let Some(k) = key {
            b = b.bearer_auth(k);
        }
        b.send()
    };
    for (accept, want) in [
        (Some("application/problem+json"), "application/problem+json"),
        (
            Some("application/problem+json, application/json;q=0.5"),
            "application/problem+json",
        ),
        (Some("application/json"), "application/json"),
        (Some("*/*"), "application/json"),
        (Some("application/problem+json;q=0"), "application/json"),
        (None, "application/json"),
    ] {
        // The proxy's own refusal (401), and OrionVM's 404 rewritten into the error body.
        let r = get("/api/v1/instances", accept, None).await.unwrap();
        assert_eq!(media(&r), want, "401 with Accept {accept:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], 401);
        assert_eq!(body["error"], "unauthorized");
        let r = get(
            "/api/v1/instances/00000000-0000-4000-8000-000000000000",
            accept,
            Some(&admin),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(media(&r), want, "404 with Accept {accept:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], 404);
        // The admin listener negotiates the same way: no credential (401), a credential
        // without the admin role (403), an unknown admin path (404).
        for (key, path, status) in [
            (None, "/admin/config", 401),
            (Some(viewer.as_str()), "/admin/config", 403),
            (Some(admin.as_str()), "/admin/nothing-here", 404),
        ] {
            let mut b = h.http.get(format!("{}{path}", h.proxy.admin_url));
            if let Some(a) = accept {
                b = b.header("accept", a);
            }
            if let Some(k) = key {
                b = b.bearer_auth(k);
            }
            let r = b.send().await.unwrap();
            assert_eq!(r.status(), status, "admin {path}");
            assert_eq!(media(&r), want, "admin {status} with Accept {accept:?}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["status"], status);
            assert!(body["request_id"].is_string(), "{body}");
        }
    }
}
