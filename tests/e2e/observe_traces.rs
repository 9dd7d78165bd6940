//! OpenTelemetry traces (`tracing:`): the proxy exports over OTLP/HTTP to a receiver this test
//! runs on a loopback port (axum, decoding the protobuf with `opentelemetry-proto`). A server
//! span per request continues a trusted caller's `traceparent` and starts a new trace for an
//! untrusted one; every call to OrionVM (the mirror's, the facade's own, the token fetch) is a
//! child span whose id is the parent-id of the `traceparent` OrionVM received; sampling ratio 0
//! exports nothing; a collector that is down fails no request.

use crate::harness::facade::{facade_config, wait_task};
use crate::harness::*;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    /// 2: server, 3: client.
    kind: i32,
    /// 2: error.
    status: i32,
    attrs: BTreeMap<String, String>,
    service: String,
}

#[derive(Default)]
struct Received {
    spans: Vec<Got>,
    /// The `x-collector-key` header of each export request.
    keys: Vec<String>,
}

type Shared = Arc<Mutex<Received>>;

async fn export(State(got): State<Shared>, headers: HeaderMap, body: Bytes) -> Vec<u8> {
    let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    let mut got = got.lock().unwrap();
    got.keys.push(
        headers
            .get("x-collector-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
    );
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                got.spans.push(Got {
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent: hex::encode(&s.parent_span_id),
                    name: s.name.clone(),
                    kind: s.kind,
                    status: s.status.as_ref().map_or(0, |st| st.code),
                    attrs: s
                        .attributes
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.clone(),
                                text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect(),
                    service: service.clone(),
                });
            }
        }
    }
    Vec::new()
}

fn text(v: Option<&Any>) -> String {
    match v {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

/// An OTLP/HTTP receiver on 127.0.0.1:0: its URL (no path: the proxy adds `/v1/traces`) and
/// what it received.
async fn receiver() -> (String, Shared) {
    let got: Shared = Arc::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(export))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, got)
}

/// The spans of `trace_id` received so far.
fn spans_of(got: &Shared, trace_id: &str) -> Vec<Got> {
    got.lock()
        .unwrap()
        .spans
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .cloned()
        .collect()
}

/// Waits until the trace has a server span and at least `calls` client spans, among them
/// one named after each of `names`.
async fn wait_trace(got: &Shared, trace_id: &str, calls: usize) -> (Got, Vec<Got>) {
    wait_named(got, trace_id, calls, &[]).await
}

async fn wait_named(got: &Shared, trace_id: &str, calls: usize, names: &[&str]) -> (Got, Vec<Got>) {
    poll(
        &format!("trace {trace_id} with {calls} calls, {names:?} among them"),
        Duration::from_secs(30),
        || async {
            let spans = spans_of(got, trace_id);
            let server = spans.iter().find(|s| s.kind == 2)?.clone();
            let clients: Vec<Got> = spans.into_iter().filter(|s| s.kind == 3).collect();
            let named = names.iter().all(|n| clients.iter().any(|c| c.name == *n));
            (clients.len() >= calls && named).then_some((server, clients))
        },
    )
    .await
}

/// The first access-log line that `pick` accepts (waits for it).
async fn access_line(h: &Harness, pick: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    poll("the access-log line", Duration::from_secs(30), || async {
        h.proxy.access_log(0).await.into_iter().find(|l| pick(l))
    })
    .await
}

fn tracing_config(endpoint: &str, extra: &str) -> String {
    format!("tracing:\n  otlp:\n    endpoint: \"{endpoint}\"\n{extra}")
}

/// The `traceparent` OrionVM got with the last call on `path` (method `method`).
fn sent_traceparent(h: &Harness, method: &str, path: &str) -> String {
    let call = h
        .sim
        .recent_requests()
        .into_iter()
        .rev()
        .find(|r| r.method == method && r.path == path)
        .unwrap_or_else(|| panic!("no {method} {path} reached OrionVM"));
    let values = call.header_values("traceparent");
    assert_eq!(values.len(), 1, "{values:?}");
    values[0].to_string()
}

/// Every `traceparent` OrionVM got on `path`.
fn all_traceparents(h: &Harness, path: &str) -> Vec<String> {
    h.sim
        .recent_requests()
        .into_iter()
        .filter(|r| r.path == path)
        .flat_map(|r| {
            r.header_values("traceparent")
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

const INBOUND_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INBOUND_PARENT: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_with_their_parents_and_name_the_calls_orionvm_got() {
    let (collector, got) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("collector-key");
    std::fs::write(&key_file, "collector-secret-7f3a\n").unwrap();
    let h = Harness::start_with(|c| {
        // 127.0.0.1 is trusted, 127.0.0.2 (the untrusted client below) is not.
        c.extra_server = "  trusted_networks: [\"127.0.0.1/32\"]\n".into();
        c.extra_top = facade_config(20_000)
            + &tracing_config(
                &collector,
                &format!(
                    "    headers:\n      x-collector-key: {{file: \"{}\"}}\n  service_name: orion-proxy-e2e\n",
                    key_file.display()
                ),
            );
    })
    .await;
    let admin = h.key("admin").to_string();

    // The facade's create: the token fetch and the facade's own calls are children of its
    // server span.
    let resp = h
        .post(
            &admin,
            "/v1/instances",
            json!({"name": "traced", "memory": 1024, "region": "sy3", "template": "ubuntu-22-04", "start": true}),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let create_trace = resp.headers().get("x-request-id").cloned();
    let id = ok_json(resp).await["id"].as_str().unwrap().to_string();
    let rid = create_trace.unwrap().to_str().unwrap().to_string();
    let line = access_line(&h, |l| l["http.request.id"] == rid.as_str()).await;
    let trace_id = line["trace.id"].as_str().unwrap().to_string();
    let (server, calls) = wait_named(
        &got,
        &trace_id,
        2,
        &["POST /oauth/token", "POST /api/v1/instances"],
    )
    .await;
    assert_eq!(
        line["span.id"],
        server.span_id.as_str(),
        "access log span.id"
    );
    assert_eq!(server.name, "POST /v1/instances");
    assert_eq!(server.attrs["http.route"], "/v1/instances");
    assert_eq!(server.attrs["http.response.status_code"], "201");
    assert_eq!(server.attrs["orion.tenant"], "acme");
    assert_eq!(server.attrs["orion.principal.id"], "key:admin");
    assert_eq!(server.service, "orion-proxy-e2e");
    assert_ne!(server.status, 2);
    for c in &calls {
        assert_eq!(c.parent, server.span_id, "{c:?}");
    }
    let token = calls
        .iter()
        .find(|c| c.attrs.get("orion.call").map(String::as_str) == Some("token"))
        .unwrap_or_else(|| panic!("no token fetch span: {calls:?}"));
    assert_eq!(token.name, "POST /oauth/token");
    assert_eq!(
        sent_traceparent(&h, "POST", "/oauth/token"),
        format!("00-{trace_id}-{}-01", token.span_id)
    );
    let create = calls
        .iter()
        .find(|c| c.name == "POST /api/v1/instances")
        .unwrap_or_else(|| panic!("no create span: {calls:?}"));
    assert!(create.attrs["http.response.status_code"].starts_with('2'));
    assert_eq!(
        sent_traceparent(&h, "POST", "/api/v1/instances"),
        format!("00-{trace_id}-{}-01", create.span_id)
    );
    // The collector's header went with every export, its value never into a log.
    assert!(
        got.lock()
            .unwrap()
            .keys
            .iter()
            .all(|k| k == "collector-secret-7f3a")
    );

    // A mirror GET with a trusted caller's traceparent: the trace is continued.
    let path = format!("/api/v1/instances/{id}");
    let resp = h
        .http
        .get(h.url(&path))
        .bearer_auth(&admin)
        .header(
            "traceparent",
            format!("00-{INBOUND_TRACE}-{INBOUND_PARENT}-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (server, calls) = wait_trace(&got, INBOUND_TRACE, 1).await;
    assert_eq!(server.parent, INBOUND_PARENT);
    assert_eq!(server.name, "GET /api/v1/instances/{id}");
    assert_eq!(server.attrs["http.route"], "/api/v1/instances/{id}");
    assert_eq!(server.attrs["url.path"], path.as_str());
    assert_eq!(server.attrs["http.request.method"], "GET");
    assert_eq!(server.attrs["http.response.status_code"], "200");
    assert_eq!(server.attrs["orion.tenant"], "acme");
    assert!(!server.attrs["orion.request_id"].is_empty());
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call.parent, server.span_id);
    assert_eq!(call.name, "GET /api/v1/instances/{id}");
    // A single-object read goes through the polling cache: the shared call is the proxy's own.
    assert_eq!(call.attrs["orion.call"], "own");
    assert_eq!(
        sent_traceparent(&h, "GET", &path),
        format!("00-{INBOUND_TRACE}-{}-01", call.span_id)
    );
    let line = access_line(&h, |l| l["trace.id"] == INBOUND_TRACE).await;
    assert_eq!(line["span.id"], server.span_id.as_str());

    // A reboot: its task's calls (stop, the polls, start) are children of the request's span.
    let resp = h
        .post(&admin, &format!("/v1/instances/{id}/reboot"), json!({}))
        .await;
    assert_eq!(resp.status(), 202);
    let task = ok_json(resp).await["id"].as_str().unwrap().to_string();
    wait_task(&h, &admin, &task, "completed").await;
    let stop = format!("/api/v1/instances/{id}/stop");
    let start = format!("/api/v1/instances/{id}/start");
    let stop_tp = sent_traceparent(&h, "POST", &stop);
    let reboot_trace = stop_tp.split('-').nth(1).unwrap().to_string();
    let (server, calls) = wait_named(
        &got,
        &reboot_trace,
        3,
        &[
            "POST /api/v1/instances/{id}/stop",
            "POST /api/v1/instances/{id}/start",
            "GET /api/v1/instances/{id}",
        ],
    )
    .await;
    assert_eq!(server.name, "POST /v1/instances/{id}/reboot");
    assert_eq!(server.attrs["http.response.status_code"], "202");
    let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
    for want in [
        "POST /api/v1/instances/{id}/stop",
        "POST /api/v1/instances/{id}/start",
        "GET /api/v1/instances/{id}",
    ] {
        assert!(names.contains(&want), "{want}: {names:?}");
    }
    for c in &calls {
        assert_eq!(c.parent, server.span_id, "{c:?}");
        assert_eq!(c.attrs["orion.call"], "own");
    }
    for (tp, name) in [
        (stop_tp, "POST /api/v1/instances/{id}/stop"),
        (
            sent_traceparent(&h, "POST", &start),
            "POST /api/v1/instances/{id}/start",
        ),
    ] {
        let span = calls.iter().find(|c| c.name == name).unwrap();
        assert_eq!(tp, format!("00-{reboot_trace}-{}-01", span.span_id));
    }

    // An untrusted caller's traceparent starts a new trace.
    let untrusted = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let other = "0af7651916cd43dd8448eb211c80319c";
    let resp = untrusted
        .get(h.url("/api/v1/regions"))
        .bearer_auth(&admin)
        .header("traceparent", format!("00-{other}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let tp = sent_traceparent(&h, "GET", "/api/v1/regions");
    let new_trace = tp.split('-').nth(1).unwrap().to_string();
    assert_ne!(new_trace, other);
    let (server, calls) = wait_trace(&got, &new_trace, 1).await;
    assert_eq!(server.parent, "", "a root span");
    assert_eq!(server.name, "GET /api/v1/regions");
    assert_eq!(
        calls[0].attrs["orion.call"], "proxied",
        "through Pingora's pipeline"
    );
    assert_eq!(tp, format!("00-{new_trace}-{}-01", calls[0].span_id));
    assert!(spans_of(&got, other).is_empty());

    // An OrionVM failure: the server span's status is an error, with its type.
    let resp = h
        .http
        .get(h.url("/api/v1/regions"))
        .bearer_auth(&admin)
        .header("x-sim-fault", "status=500")
        .header("traceparent", format!("00-{other}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_server_error(), "{}", resp.status());
    let (server, calls) = wait_trace(&got, other, 1).await;
    assert_eq!(server.status, 2, "{server:?}");
    assert!(!server.attrs["error.type"].is_empty(), "{server:?}");
    assert_eq!(calls[0].status, 2, "{:?}", calls[0]);
    assert_eq!(calls[0].attrs["http.response.status_code"], "500");
    assert!(!h.proxy.stderr().contains("collector-secret-7f3a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratio_zero_exports_nothing_but_what_a_trusted_caller_sampled() {
    let (collector, got) = receiver().await;
    let h = Harness::start_with(|c| {
        c.extra_top = tracing_config(&collector, "  sampling_ratio: 0.0\n");
    })
    .await;
    let viewer = h.key("viewer").to_string();
    for _ in 0..3 {
        assert_eq!(h.get(&viewer, "/api/v1/regions").await.status(), 200);
    }
    let unsampled = all_traceparents(&h, "/api/v1/regions");
    assert!(unsampled.len() >= 3, "{unsampled:?}");
    for tp in &unsampled {
        assert!(tp.ends_with("-00"), "not sampled: {tp}");
    }
    // A trusted caller's sampled trace is followed; it goes out after the ones above, so once
    // it arrived they would have too.
    let resp = h
        .http
        .get(h.url("/api/v1/templates"))
        .bearer_auth(&viewer)
        .header(
            "traceparent",
            format!("00-{INBOUND_TRACE}-{INBOUND_PARENT}-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (server, calls) = wait_trace(&got, INBOUND_TRACE, 1).await;
    assert_eq!(server.parent, INBOUND_PARENT);
    assert_eq!(
        sent_traceparent(&h, "GET", "/api/v1/templates"),
        format!("00-{INBOUND_TRACE}-{}-01", calls[0].span_id)
    );
    let got = got.lock().unwrap();
    assert!(
        got.spans.iter().all(|s| s.trace_id == INBOUND_TRACE),
        "only the sampled trace: {:?}",
        got.spans
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_fails_no_request() {
    let down = format!("http://127.0.0.1:{}", free_port());
    let h = Harness::start_with(|c| {
        c.extra_top = tracing_config(&down, "    timeout_ms: 500\n");
    })
    .await;
    let viewer = h.key("viewer").to_string();
    for _ in 0..5 {
        assert_eq!(h.get(&viewer, "/api/v1/regions").await.status(), 200);
    }
    // The spans are dropped and counted; one line says so.
    poll(
        "dropped spans counted and told",
        Duration::from_secs(30),
        || async {
            let scrape = h.proxy.scrape().await;
            (scrape.value("orion_proxy_trace_spans_total", &[("result", "dropped")]) >= 1.0
                && h.proxy.stderr().contains("trace spans to"))
            .then_some(())
        },
    )
    .await;
    let stderr = h.proxy.stderr();
    assert_eq!(
        stderr.matches("trace spans to").count(),
        1,
        "one rate-limited line: {stderr}"
    );
    assert_eq!(h.get(&viewer, "/api/v1/regions").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_traces_to_another_collector_keeps_them_on_a_refused_file_and_turns_them_off()
 {
    let (first, got_first) = receiver().await;
    let (second, got_second) = receiver().await;
    let h = Harness::start_with(|c| c.extra_top = tracing_config(&first, "")).await;
    let viewer = h.key("viewer").to_string();
    // The trace id of one GET of the regions, from the traceparent OrionVM got.
    let traced_get = || async {
        assert_eq!(h.get(&viewer, "/api/v1/regions").await.status(), 200);
        let tp = sent_traceparent(&h, "GET", "/api/v1/regions");
        (tp.split('-').nth(1).unwrap().to_string(), tp)
    };
    let (t1, _) = traced_get().await;
    wait_trace(&got_first, &t1, 1).await;

    let text = std::fs::read_to_string(&h.proxy.config_path).unwrap();
    let moved = text.replace(&first, &second);
    assert_ne!(moved, text);
    h.proxy.write_config(&moved);
    h.reload_ok().await;
    let (t2, _) = traced_get().await;
    wait_trace(&got_second, &t2, 1).await;
    assert!(spans_of(&got_first, &t2).is_empty());

    // A refused file leaves the exporter in force as it was.
    h.proxy
        .write_config(&moved.replace("tracing:\n", "tracing:\n  sampling_ratio: 2.0\n"));
    let r = h.reload().await;
    assert_ne!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("tracing.sampling_ratio"), "{body}");
    let (t3, _) = traced_get().await;
    wait_trace(&got_second, &t3, 1).await;

    // Without `tracing:` the plain propagation is back: no span id in the access log.
    let cut = moved.find("tracing:\n").unwrap();
    h.proxy.write_config(&moved[..cut]);
    h.reload_ok().await;
    let (t4, tp4) = traced_get().await;
    assert!(tp4.ends_with("-01"), "{tp4}");
    let line = access_line(&h, |l| l["trace.id"] == t4.as_str()).await;
    assert!(line.get("span.id").is_none(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_lookup_is_a_span_of_the_retry() {
    let (collector, got) = receiver().await;
    let h = Harness::start_with(|c| c.extra_top = tracing_config(&collector, "")).await;
    let admin = h.key("admin").to_string();
    const CREATE: &str = "/api/v1/instances";
    let body = json!({"name": "traced-idem", "memory": 1024, "size": 20, "region": "SY3",
                      "template": "debian-12", "allocate_public_ip": false, "start_when_ready": false});
    let post = || {
        h.http
            .post(h.url(CREATE))
            .bearer_auth(&admin)
            .header("idempotency-key", "\"traced-1\"")
            .json(&body)
            .send()
    };
    // OrionVM creates, then resets the connection: the outcome is unknown.
    h.sim.set_faults(orion_sim::FaultPlan {
        path_prefix: Some(CREATE.into()),
        method: Some("POST".into()),
        reset_after: 1,
        ..Default::default()
    });
    assert_eq!(post().await.unwrap().status(), 502);
    // The retry looks the instance up at OrionVM: that GET is a child span of the retry.
    let r = post().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-idempotency"], "recovered");
    let tp = sent_traceparent(&h, "GET", CREATE);
    let trace = tp.split('-').nth(1).unwrap().to_string();
    let (server, calls) = wait_named(&got, &trace, 1, &["GET /api/v1/instances"]).await;
    assert_eq!(server.name, "POST /api/v1/instances");
    let lookup = calls
        .iter()
        .find(|c| c.name == "GET /api/v1/instances")
        .unwrap();
    assert_eq!(lookup.parent, server.span_id);
    assert_eq!(tp, format!("00-{trace}-{}-01", lookup.span_id));
}
