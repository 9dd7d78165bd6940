//! The proxy's decisions without a process: a Pingora `Session` over a loopback TCP pair, the
//! phases called directly on an `OrionProxy` built from a config in memory, and the answer read
//! back from the client's end of the socket.

use super::OrionProxy;
use super::ctx::Ctx;
use crate::runtime::{SharedState, State};
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

async fn run(proxy: &OrionProxy, request: &[u8]) -> Outcome {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    client.write_all(request).await.unwrap();
    let stream: pingora::protocols::Stream =
        Box::new(pingora::protocols::l4::stream::Stream::from(server));
    let mut session = Session::new_h1(stream);
    assert!(session.read_request().await.unwrap());
    let mut ctx = proxy.new_ctx();
    proxy
        .early_request_filter(&mut session, &mut ctx)
        .await
        .unwrap();
    let answered = proxy.request_filter(&mut session, &mut ctx).await.unwrap();
    if !answered {
        return Outcome::Upstream(Box::new(ctx));
    }
    session.as_downstream_mut().shutdown().await;
    drop(session);
    let mut raw = Vec::new();
    client.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    Outcome::Answered {
        status,
        head: head.to_ascii_lowercase(),
        body: serde_json::from_str(body).unwrap(),
    }
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
