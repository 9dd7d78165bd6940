//! The proxy's decisions without a process: a Pingora `Session` over a loopback TCP pair, the
//! phases called directly on an `OrionProxy` built from a config in memory, and the answer read
//! back from the client's end of the socket.

use super::OrionProxy;
use super::ctx::Ctx;
use super::failure::{TOKEN_REJECTED, classify};
use crate::runtime::{SharedState, State};
use crate::upstream::Failure;
use pingora::{Error, ErrorSource, ErrorType};
use pingora_proxy::{ProxyHttp, Session};
use serde_json::Value;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fixture {
    proxy: OrionProxy,
    viewer: String,
    operator: String,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "orionvm-static-token-for-unit-tests").unwrap();
    let viewer = crate::auth::api_keys::generate();
    let operator = crate::auth::api_keys::generate();
    let hash = |k: &str| hex::encode(crate::auth::api_keys::hash_key(k));
    let text = format!(
        r#"
server: {{listen: "127.0.0.1:0"}}
accounts:
  main:
    endpoints: [{{url: "http://127.0.0.1:9"}}]
    credentials: {{type: static_token, token: {{file: "{}"}}}}
tenants: {{acme: {{account: main}}}}
api_keys:
  - {{name: viewer, hash: "sha256:{}", roles: [viewer], tenant: acme}}
  - {{name: writer, hash: "sha256:{}", roles: [admin], tenant: acme}}
logging: {{access_log: "off"}}
"#,
        token.display(),
        hash(&viewer),
        hash(&operator),
    );
    let model = crate::config::parse(&text).unwrap();
    let state = Arc::new(State::memory());
    let staged = crate::runtime::stage(model, &text, &state).unwrap();
    let shared = SharedState::from_staged(dir.path().join("orion-proxy.yaml"), staged, state);
    Fixture {
        proxy: OrionProxy::new(Arc::new(shared)),
        viewer,
        operator,
        _dir: dir,
    }
}

/// What the request filters decided: an answer written to the client, or "go upstream".
enum Outcome {
    Answered {
        status: u16,
        head: String,
        body: Value,
    },
    Upstream(Box<Ctx>),
}

/// A Pingora session whose request (`request`, written by the client end) is read.
async fn session(request: &[u8]) -> (Session, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    client.write_all(request).await.unwrap();
    let stream: pingora::protocols::Stream =
        Box::new(pingora::protocols::l4::stream::Stream::from(server));
    let mut session = Session::new_h1(stream);
    assert!(session.read_request().await.unwrap());
    (session, client)
}

/// The answer the proxy wrote on `session`, as its client reads it: status, lower-cased head
/// and JSON body.
async fn read_answer(
    mut session: Session,
    client: &mut tokio::net::TcpStream,
) -> (u16, String, Value) {
    session.as_downstream_mut().shutdown().await;
    drop(session);
    let mut raw = Vec::new();
    client.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        head.to_ascii_lowercase(),
        serde_json::from_str(body).unwrap(),
    )
}

async fn run(proxy: &OrionProxy, request: &[u8]) -> Outcome {
    let (mut session, mut client) = session(request).await;
    let mut ctx = proxy.new_ctx();
    proxy
        .early_request_filter(&mut session, &mut ctx)
        .await
        .unwrap();
    let answered = proxy.request_filter(&mut session, &mut ctx).await.unwrap();
    if !answered {
        return Outcome::Upstream(ctx);
    }
    let (status, head, body) = read_answer(session, &mut client).await;
    Outcome::Answered { status, head, body }
}

fn answered(o: Outcome) -> (u16, String, Value) {
    match o {
        Outcome::Answered { status, head, body } => (status, head, body),
        Outcome::Upstream(ctx) => panic!("went upstream for {}", ctx.path),
    }
}

fn assert_error(body: &Value, head: &str, status: u16, code: &str) {
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    let id = body["request_id"].as_str().unwrap();
    assert!(
        head.contains(&format!("x-request-id: {}", id.to_ascii_lowercase())),
        "{head}"
    );
    assert!(body["details"].is_object());
}

#[tokio::test]
async fn health_is_answered_locally() {
    let f = fixture();
    let (status, head, body) =
        answered(run(&f.proxy, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await);
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert!(head.contains("x-request-id: "));
}

#[tokio::test]
async fn no_credentials_is_401_in_the_error_body() {
    let f = fixture();
    let (status, head, body) = answered(
        run(
            &f.proxy,
            b"GET /api/v1/instances HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await,
    );
    assert_eq!(status, 401);
    assert_error(&body, &head, 401, "unauthorized");
}

#[tokio::test]
async fn a_doubled_slash_goes_upstream_normalised_with_the_callers_tenant() {
    let f = fixture();
    let req = format!(
        "GET //api/v1/regions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        f.viewer
    );
    match run(&f.proxy, req.as_bytes()).await {
        Outcome::Upstream(ctx) => {
            assert_eq!(ctx.path, "/api/v1/regions");
            assert_eq!(ctx.route_name(), "regions.list");
            assert_eq!(ctx.tenant_name(), "acme");
            assert!(ctx.error.is_none());
        }
        Outcome::Answered { status, body, .. } => panic!("answered {status}: {body}"),
    }
}

#[tokio::test]
async fn bad_paths_and_methods_are_refused_before_auth() {
    let f = fixture();
    let (status, head, body) = answered(
        run(
            &f.proxy,
            b"GET /api/v1/../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await,
    );
    assert_eq!(status, 400);
    assert_error(&body, &head, 400, "invalid_path");
    let (status, head, body) = answered(
        run(
            &f.proxy,
            b"DELETE /api/v1/regions HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await,
    );
    assert_eq!(status, 405);
    assert_error(&body, &head, 405, "method_not_allowed");
    let (status, head, body) =
        answered(run(&f.proxy, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n").await);
    assert_eq!(status, 404);
    assert_error(&body, &head, 404, "not_found");
}

#[tokio::test]
async fn a_viewer_may_not_stop_an_instance() {
    let f = fixture();
    let req = format!(
        "POST /api/v1/instances/1b4e28ba-2fa1-11d2-883f-0016d3cca427/stop HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {}\r\nContent-Length: 0\r\n\r\n",
        f.viewer
    );
    let (status, head, body) = answered(run(&f.proxy, req.as_bytes()).await);
    assert_eq!(status, 403);
    assert_error(&body, &head, 403, "forbidden");
}

#[tokio::test]
async fn an_invalid_body_is_422_with_every_field_before_upstream() {
    let f = fixture();
    let body = r#"{"name": "x", "memory": 100, "virtualization": "bogus"}"#;
    let req = format!(
        "POST /v1/instances HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        f.operator,
        body.len()
    );
    let (status, head, body) = answered(run(&f.proxy, req.as_bytes()).await);
    assert_eq!(status, 422, "{body}");
    assert_error(&body, &head, 422, "validation_failed");
    assert!(body["details"]["memory"].is_array(), "{body}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_without_reading_it() {
    let f = fixture();
    let req = format!(
        "POST /api/v1/instances/assemble HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 70000\r\n\r\n{{",
        f.operator
    );
    let (status, head, body) = answered(run(&f.proxy, req.as_bytes()).await);
    assert_eq!(status, 413);
    assert_error(&body, &head, 413, "payload_too_large");
    assert!(head.contains("connection: close"), "{head}");
}

// How a request that ended in a Pingora error is answered (`fail_to_proxy`): the error's type
// and source decide the error body and the kind of upstream failure kept for the logs.

fn classified(source: ErrorSource, etype: ErrorType) -> (u16, &'static str, Option<Failure>) {
    let (err, failure) = classify(&source, &etype);
    (err.status, err.code, failure)
}

#[test]
fn a_refused_connection_is_502_upstream_unreachable() {
    for etype in [
        ErrorType::ConnectRefused,
        ErrorType::ConnectNoRoute,
        ErrorType::TLSHandshakeFailure,
    ] {
        assert_eq!(
            classified(ErrorSource::Upstream, etype),
            (502, "upstream_unreachable", Some(Failure::Connect))
        );
    }
}

#[test]
fn a_timeout_is_504_upstream_timeout() {
    for etype in [
        ErrorType::ReadTimedout,
        ErrorType::WriteTimedout,
        ErrorType::ConnectTimedout,
    ] {
        assert_eq!(
            classified(ErrorSource::Upstream, etype),
            (504, "upstream_timeout", Some(Failure::Timeout))
        );
    }
}

#[test]
fn a_connection_reset_by_orionvm_is_502_upstream_reset() {
    for etype in [ErrorType::ConnectionClosed, ErrorType::ReadError] {
        assert_eq!(
            classified(ErrorSource::Upstream, etype),
            (502, "upstream_reset", Some(Failure::Reset))
        );
    }
}

#[test]
fn a_rejected_proxy_token_is_502_upstream_auth_failed() {
    for source in [ErrorSource::Unset, ErrorSource::Upstream] {
        assert_eq!(
            classified(source, TOKEN_REJECTED),
            (502, "upstream_auth_failed", None)
        );
    }
}

#[test]
fn a_raised_status_unreadable_request_or_proxy_fault() {
    assert_eq!(
        classified(ErrorSource::Unset, ErrorType::HTTPStatus(503)),
        (503, "upstream_unavailable", None)
    );
    assert_eq!(
        classified(ErrorSource::Downstream, ErrorType::InvalidHTTPHeader),
        (400, "invalid_request", None)
    );
    assert_eq!(
        classified(ErrorSource::Internal, ErrorType::InternalError),
        (500, "internal_error", None)
    );
}

/// `fail_to_proxy` over a loopback session: the classified error body is written (with the
/// request id, the connection closed) and the failure kind kept for the logs.
#[tokio::test]
async fn fail_to_proxy_writes_the_classified_error() {
    let f = fixture();
    let (mut session, mut client) = session(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut ctx = f.proxy.new_ctx();
    f.proxy
        .early_request_filter(&mut session, &mut ctx)
        .await
        .unwrap();
    let e = Error::new_up(ErrorType::ConnectRefused);
    let out = f.proxy.fail_to_proxy(&mut session, &e, &mut ctx).await;
    assert_eq!(out.error_code, 502);
    assert_eq!(ctx.upstream.failure, Some(Failure::Connect));
    assert_eq!(
        ctx.error.as_ref().map(|e| e.code),
        Some("upstream_unreachable")
    );
    let (status, head, body) = read_answer(session, &mut client).await;
    assert_eq!(status, 502);
    assert_error(&body, &head, 502, "upstream_unreachable");
    assert!(head.contains("connection: close"), "{head}");
}

#[test]
fn a_failure_after_orionvm_received_the_request_says_so() {
    use super::failure::after_sent;
    // Before: a downstream error after the call was made answered 400; a retry that could not
    // connect answered upstream_unreachable.
    let (down, _) = classify(&ErrorSource::Downstream, &ErrorType::ConnectError);
    let (unreachable, _) = classify(&ErrorSource::Upstream, &ErrorType::ConnectRefused);
    let (reset, _) = classify(&ErrorSource::Upstream, &ErrorType::ConnectionClosed);
    for err in [down, unreachable, reset] {
        let e = after_sent(err, true, None, true);
        assert_eq!((e.status, e.code), (502, "upstream_reset"));
        assert_eq!(e.details["request_sent"], serde_json::json!(true));
    }
    let (timeout, _) = classify(&ErrorSource::Upstream, &ErrorType::ReadTimedout);
    let e = after_sent(timeout, true, Some(200), true);
    assert_eq!((e.status, e.code), (504, "upstream_timeout"));
    assert_eq!(e.details["upstream_status"], serde_json::json!(200));
    // Nothing sent: as classified.
    let (unreachable, _) = classify(&ErrorSource::Upstream, &ErrorType::ConnectRefused);
    assert_eq!(
        after_sent(unreachable, false, None, true).code,
        "upstream_unreachable"
    );
}
