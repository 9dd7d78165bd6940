//! Hostile and broken clients over raw sockets (issue 13, the network half): slow bodies that
//! used to hold OrionVM's slots, one tenant's flood, pipelining, framing Pingora refuses, slow
//! and idle connections, connection caps, resets after OrionVM received the request. Every wait
//! is for a condition, with generous deadlines; no test depends on how fast the machine is.

use crate::harness::*;
use orion_sim::{ErrorBurst, FaultPlan};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A generous deadline for anything the proxy must do "soon".
const SOON: Duration = Duration::from_secs(30);

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

async fn connect(h: &Harness) -> TcpStream {
    TcpStream::connect(addr(&h.proxy.url)).await.unwrap()
}

/// One parsed answer: status, head (lower-cased), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    }
}

/// One complete answer at the start of `buf`, and the bytes it took.
fn parse_one(buf: &[u8]) -> Option<(Answer, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let answer = |body: Vec<u8>| Answer {
        status,
        head: head.clone(),
        body,
    };
    if head.contains("transfer-encoding: chunked") {
        let mut at = end;
        let mut body = Vec::new();
        loop {
            let line_end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
            let size_text = String::from_utf8_lossy(&buf[at..line_end]).to_string();
            let size = usize::from_str_radix(size_text.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                if buf.len() < at + 2 {
                    return None;
                }
                return Some((answer(body), at + 2));
            }
            if buf.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    }
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if buf.len() < end + len {
        return None;
    }
    Some((answer(buf[end..end + len].to_vec()), end + len))
}

/// Reads `n` answers (or fewer, when the connection closes or the deadline passes).
async fn read_answers(s: &mut TcpStream, n: usize, deadline: Duration) -> Vec<Answer> {
    let until = Instant::now() + deadline;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while out.len() < n {
        while let Some((a, used)) = parse_one(&buf) {
            out.push(a);
            buf.drain(..used);
            if out.len() == n {
                return out;
            }
        }
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    out
}

/// Waits until the peer closes the connection (true) or the deadline passes (false).
async fn closed_within(s: &mut TcpStream, deadline: Duration) -> bool {
    let until = Instant::now() + deadline;
    let mut chunk = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64) * 0.99).ceil() as usize;
    samples[i.saturating_sub(1).min(samples.len() - 1)]
}

async fn timed_gets(h: &Harness, key: &str, path: &str, n: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let r = h.get(key, path).await;
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 200, "{path}: {text}");
        out.push(started.elapsed());
    }
    out
}

/// Finding 1: about 65 connections sending `GET` with `Content-Length: 60000` and then nothing
/// used to hold every upstream slot of the endpoint (taken before the body existed) until
/// OrionVM's read timeout: every other tenant got 503 `upstream_busy`. Now the body is read
/// (within its deadline) before any slot is claimed: the attack costs OrionVM nothing, the
/// other tenants keep their latency (p99 within 2x of idle, with a generous margin for a
/// loaded machine: the failure this guards against is 503s and waits of the read timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_holds_no_upstream_slot_and_other_tenants_keep_their_latency() {
    let h = Harness::start_with(|c| {
        c.extra_server = "  timeouts: {body_read_ms: 120000}\n".into();
        c.extra_top =
            "limits:\n  upstream: {max_concurrent_per_endpoint: 4, max_wait_ms: 500}\n".into();
    })
    .await;
    let globex = h.key("other_tenant_admin").to_string();
    let acme_operator = h.key("operator").to_string();
    // Warm up (token fetch, pooled connections), then the idle figure.
    timed_gets(&h, &globex, "/api/v1/regions", 3).await;
    timed_gets(&h, &acme_operator, "/api/v1/regions", 3).await;
    let idle = p99(timed_gets(&h, &globex, "/api/v1/regions", 20).await);
    let calls_before = h.sim.calls().count("GET", "/api/v1/regions");

    // Twice as many slow bodies as the endpoint has slots, from acme's read-only key.
    let viewer = h.key("viewer").to_string();
    let mut attackers = Vec::new();
    for _ in 0..8 {
        let mut s = connect(&h).await;
        let req = format!(
            "GET /api/v1/regions HTTP/1.1\r\nHost: orion\r\nAuthorization: Bearer {viewer}\r\nContent-Length: 60000\r\n\r\nx"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        attackers.push(s);
    }
    // Every attacking request is inside the proxy (waiting for its body).
    poll("the slow bodies are being read", SOON, || async {
        let m = h.proxy.scrape().await;
        (m.value("orion_proxy_requests_in_flight", &[]) >= 8.0).then_some(())
    })
    .await;

    let attacked = timed_gets(&h, &globex, "/api/v1/regions", 20).await;
    timed_gets(&h, &acme_operator, "/api/v1/regions", 5).await;
    let under_attack = p99(attacked);
    assert!(
        under_attack <= idle * 2 + Duration::from_secs(2),
        "p99 under attack {under_attack:?}, idle {idle:?}"
    );
    // None of the slow requests reached OrionVM.
    assert_eq!(
        h.sim.calls().count("GET", "/api/v1/regions"),
        calls_before + 25
    );
    drop(attackers);
}

/// Finding 1: a body that does not arrive within `server.timeouts.body_read_ms` is 408 (it used
/// to stream to OrionVM until its read timeout), and a GET body past the limit is 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_read_within_a_deadline_and_a_limit_before_orionvm_is_called() {
    let h = Harness::start_with(|c| {
        c.extra_server = "  timeouts: {body_read_ms: 1000}\n".into();
        c.max_body_bytes = 4096;
    })
    .await;
    let viewer = h.key("viewer").to_string();
    let mut s = connect(&h).await;
    let req = format!(
        "GET /api/v1/regions HTTP/1.1\r\nHost: orion\r\nAuthorization: Bearer {viewer}\r\nContent-Length: 100\r\n\r\nabc"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let answers = read_answers(&mut s, 1, SOON).await;
    assert_eq!(answers.len(), 1, "no answer to a stalled body");
    assert_eq!(answers[0].status, 408, "{:?}", answers[0]);
    assert_eq!(answers[0].json()["error"], "request_timeout");

    let big = "x".repeat(5000);
    let (status, _, body) = raw_request(
        &h.proxy.url,
        format!(
            "GET /api/v1/regions HTTP/1.1\r\nHost: orion\r\nAuthorization: Bearer {viewer}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
            big.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    // A small GET body still passes (some clients send one).
    let (status, _, _) = raw_request(
        &h.proxy.url,
        format!(
            "GET /api/v1/regions HTTP/1.1\r\nHost: orion\r\nAuthorization: Bearer {viewer}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(h.sim.calls().count("GET", "/api/v1/regions"), 1);
}

/// Finding 1: one tenant (one principal) flooding slow calls holds at most its share of the
/// endpoint's slots; another tenant still finds room instead of 503 `upstream_busy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_flooding_slow_calls_leaves_room_for_the_others() {
    let h = Harness::start_with(|c| {
        c.extra_top =
            "limits:\n  upstream: {max_concurrent_per_endpoint: 4, max_wait_ms: 300}\n".into();
    })
    .await;
    let viewer = h.key("viewer").to_string();
    let globex = h.key("other_tenant_admin").to_string();
    // Warm both accounts up before the calls are slowed down.
    assert_eq!(h.get(&viewer, "/api/v1/instances").await.status(), 200);
    assert_eq!(h.get(&globex, "/api/v1/instances").await.status(), 200);
    h.sim.set_faults(FaultPlan {
        path_prefix: Some("/api/v1/regions".into()),
        latency: Some(Duration::from_secs(4)),
        ..Default::default()
    });
    let mut flood = Vec::new();
    for _ in 0..6 {
        let (url, key) = (h.url("/api/v1/regions"), viewer.clone());
        let http = h.http.clone();
        flood.push(tokio::spawn(async move {
            http.get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    // The flood is in: at least one slow call is at OrionVM.
    poll("the flood reached OrionVM", SOON, || async {
        (h.sim.calls().count("GET", "/api/v1/regions") >= 1).then_some(())
    })
    .await;
    let r = h.get(&globex, "/api/v1/instances").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let mut statuses = Vec::new();
    for f in flood {
        statuses.push(f.await.unwrap().as_u16());
    }
    // One caller got at most its share (a quarter of 4 slots) at once; the rest waited, then
    // were refused.
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    h.sim.clear_faults();
}

/// Finding 2: a DELETE followed in the same write by pipelined requests (more than 2 KiB) was
/// carried out by OrionVM yet answered 400 and audited as rejected; 50 pipelined GETs got a
/// 400 on the first. Now pipelined requests are answered in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_a_delete_is_never_a_400() {
    let h = Harness::start().await;
    let admin = h.key("admin").to_string();
    let id = h.first_instance(&admin).await;
    let pad = "p".repeat(1200);
    let mut batch = format!(
        "DELETE /api/v1/instances/{id} HTTP/1.1\r\nHost: orion\r\nAuthorization: Bearer {admin}\r\n\r\n"
    );
    for _ in 0..3 {
        batch += &format!(
            "GET /api/v1/regions HTTP/1.1\r\nHost: orion\r\nAuthorization: Bearer {admin}\r\nX-Pad: {pad}\r\n\r\n"
        );
    }
    assert!(batch.len() > 2048);
    let mut s = connect(&h).await;
    s.write_all(batch.as_bytes()).await.unwrap();
    let answers = read_answers(&mut s, 4, SOON).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, vec![200, 200, 200, 200], "{answers:?}");
    assert_eq!(answers[0].json()["id"], id.as_str());
    assert!(answers[1].json().is_array());
    // The audit says what happened: the DELETE succeeded.
    let record = poll("the DELETE's audit record", SOON, || async {
        h.proxy
            .audit_log()
            .into_iter()
            .find(|r| r["http.request.method"] == "DELETE")
    })
    .await;
    assert_eq!(record["orion.audit.result"], "success", "{record}");

    let viewer = h.key("viewer").to_string();
    let mut batch = String::new();
    for _ in 0..50 {
        batch += &format!(
            "GET /api/v1/regions HTTP/1.1\r\nHost: orion\r\nAuthorization: Bearer {viewer}\r\n\r\n"
        );
    }
    let mut s = connect(&h).await;
    s.write_all(batch.as_bytes()).await.unwrap();
    let answers = read_answers(&mut s, 50, Duration::from_secs(60)).await;
    assert_eq!(answers.len(), 50);
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
}

/// Findings 7 and 8: framing Pingora refuses before any phase (two Content-Lengths,
/// `Transfer-Encoding: xchunked`, obs-fold, two Hosts, an absolute-form target naming another
/// host) used to get a bare 400 with no body, no request id and no access-log line; an
/// HTTP/1.1 request without Host was accepted. Each now gets the JSON error body with its
/// request id (also in `X-Request-Id`) and an access-log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_errors_and_a_missing_host_get_the_error_body_and_a_log_line() {
    let h = Harness::start().await;
    let key = h.key("viewer").to_string();
    let auth = format!("Authorization: Bearer {key}\r\n");
    let cases = [
        (
            "two Content-Lengths",
            format!(
                "POST /api/v1/public_keys HTTP/1.1\r\nHost: orion\r\n{auth}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
            ),
        ),
        (
            "Transfer-Encoding: xchunked",
            format!(
                "POST /api/v1/public_keys HTTP/1.1\r\nHost: orion\r\n{auth}Transfer-Encoding: xchunked\r\n\r\n"
            ),
        ),
        (
            "obs-fold",
            format!(
                "GET /api/v1/regions HTTP/1.1\r\nHost: orion\r\n{auth}X-Folded: a\r\n b\r\n\r\n"
            ),
        ),
        (
            "two Hosts",
            format!("GET /api/v1/regions HTTP/1.1\r\nHost: orion\r\nHost: other\r\n{auth}\r\n"),
        ),
        (
            "absolute-form naming another host",
            format!(
                "GET http://other.example/api/v1/regions HTTP/1.1\r\nHost: orion\r\n{auth}\r\n"
            ),
        ),
        (
            "no Host",
            format!("GET /api/v1/regions HTTP/1.1\r\n{auth}Connection: close\r\n\r\n"),
        ),
    ];
    let mut ids = Vec::new();
    for (what, req) in &cases {
        let (status, head, body) = raw_request(&h.proxy.url, req.as_bytes()).await;
        assert_eq!(status, 400, "{what}: {head}");
        let v: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {head}"));
        assert_eq!(v["error"], "invalid_request", "{what}: {v}");
        let id = v["request_id"].as_str().unwrap().to_string();
        assert_eq!(id.len(), 26, "{what}: {v}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("x-request-id: {}", id.to_ascii_lowercase())),
            "{what}: {head}"
        );
        ids.push((what, id));
    }
    let lines = h.proxy.access_log(cases.len()).await;
    for (what, id) in ids {
        let line = lines
            .iter()
            .find(|l| l["http.request.id"] == id.as_str())
            .unwrap_or_else(|| panic!("{what}: no access-log line for {id}: {lines:?}"));
        assert_eq!(line["http.response.status_code"], 400, "{what}: {line}");
        assert_eq!(line["error.code"], "invalid_request", "{what}: {line}");
    }
    // Nothing of it reached OrionVM, and the proxy keeps serving.
    assert_eq!(h.sim.calls().count("GET", "/api/v1/regions"), 0);
    assert_eq!(h.get(&key, "/api/v1/regions").await.status(), 200);
}

/// Finding 4: a client trickling header lines kept its connection for as long as it liked, an
/// idle keep-alive connection lived until Pingora's 60 s, and each aborted connection logged an
/// ERROR line. Now the header has a deadline (408), idle connections close after
/// `keepalive_idle_ms`, and aborted connections are counted in a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_and_counted_not_logged() {
    let h = Harness::start_with(|c| {
        c.extra_server = "  timeouts: {header_read_ms: 1500, keepalive_idle_ms: 1000}\n".into();
    })
    .await;
    // A slowloris: one header line at a time, never the end of the header.
    let mut s = connect(&h).await;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: orion\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        assert!(
            started.elapsed() < SOON,
            "a slow header kept its connection for {SOON:?}"
        );
        // Read first; trickle only while nothing came back (writing to a connection the proxy
        // closed would draw a reset that could discard its answer).
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
            Err(_) if answer.is_empty() => {
                let _ = s.write_all(b"X-Slow: still-here\r\n").await;
            }
            Err(_) => {}
        }
    };
    assert!(closed);
    let (a, _) = parse_one(&answer).expect("an answer before the close");
    assert_eq!(a.status, 408, "{a:?}");
    assert_eq!(a.json()["error"], "request_timeout");
    assert!(a.header("x-request-id").is_some());

    // An idle keep-alive connection is closed after keepalive_idle_ms.
    let mut s = connect(&h).await;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: orion\r\n\r\n")
        .await
        .unwrap();
    let answers = read_answers(&mut s, 1, SOON).await;
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].status, 200);
    assert!(
        closed_within(&mut s, SOON).await,
        "the idle connection stayed open"
    );

    // A kept-alive connection waits for its next request without a session (pingora-core
    // patch 4); once the next request's first bytes come, the header deadline holds there too.
    let mut s = connect(&h).await;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: orion\r\n\r\n")
        .await
        .unwrap();
    let answers = read_answers(&mut s, 1, SOON).await;
    assert_eq!(answers.len(), 1);
    s.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    loop {
        assert!(
            started.elapsed() < SOON,
            "a slow header on a reused connection kept it for {SOON:?}"
        );
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
            Err(_) if answer.is_empty() => {
                let _ = s.write_all(b"X-Slow: still-here\r\n").await;
            }
            Err(_) => {}
        }
    }
    let (a, _) = parse_one(&answer).expect("an answer before the close");
    assert_eq!(a.status, 408, "reused connection: {a:?}");

    // A client that gives up in the middle of its header: counted, not logged as an error.
    let mut s = connect(&h).await;
    s.write_all(b"GET /health HTTP/1.1\r\nHo").await.unwrap();
    drop(s);
    poll("aborted connections counted", SOON, || async {
        let m = h.proxy.scrape().await;
        let closed = m.value(
            "orion_proxy_connections_aborted_total",
            &[("reason", "closed")],
        );
        let slow = m.value(
            "orion_proxy_connections_aborted_total",
            &[("reason", "header_timeout")],
        );
        (closed >= 1.0 && slow >= 1.0).then_some(())
    })
    .await;
    let stderr = h.proxy.stderr();
    assert!(
        !stderr.contains("Fail to proxy"),
        "an aborted connection was logged: {stderr}"
    );
}

/// Finding 4: nothing capped connections per source or in total. Connections past
/// `server.max_connections_per_ip` are now closed at accept, counted, and the place is free
/// again once a connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_caps_are_closed_at_accept() {
    let h = Harness::start_with(|c| {
        c.extra_server = "  max_connections_per_ip: 4\n".into();
    })
    .await;
    // Connections held open without a request (the harness may hold one or two of its own).
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(connect(&h).await);
    }
    let mut answered = 0;
    let mut refused = 0;
    for s in held.iter_mut() {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: orion\r\n\r\n")
            .await
            .unwrap_or_default();
    }
    for s in held.iter_mut() {
        match read_answers(s, 1, SOON).await.first() {
            Some(a) if a.status == 200 => answered += 1,
            Some(a) => panic!("{a:?}"),
            None => refused += 1,
        }
    }
    assert!(
        answered <= 4 && refused >= 4,
        "{answered} answered, {refused} refused"
    );
    let m = h.proxy.scrape().await;
    assert!(
        m.value(
            "orion_proxy_connections_refused_total",
            &[("cap", "per_ip")]
        ) >= 4.0
    );
    drop(held);
    // Places are given back as connections close.
    poll("a place free again", SOON, || async {
        let mut s = connect(&h).await;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: orion\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let a = read_answers(&mut s, 1, SOON).await;
        (a.first().map(|a| a.status) == Some(200)).then_some(())
    })
    .await;
}

/// Finding 5: a reset in the middle of OrionVM's error body left the caller a status line and
/// no body. The proxy holds error bodies back to replace them, so it still can finish it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_body_cut_by_a_reset_still_reaches_the_caller_whole() {
    let h = Harness::start().await;
    let key = h.key("viewer").to_string();
    assert_eq!(h.get(&key, "/api/v1/regions").await.status(), 200);
    h.sim.set_faults(FaultPlan {
        path_prefix: Some("/api/v1/regions".into()),
        error_burst: Some(ErrorBurst {
            status: 404,
            count: 1,
            html: false,
        }),
        reset_mid_body: 1,
        ..Default::default()
    });
    let r = h.get(&key, "/api/v1/regions").await;
    let status = r.status().as_u16();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = r.json().await.expect("a whole JSON error body");
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["request_id"], id.as_str());
    assert!(body["error"].is_string(), "{body}");
}

/// Finding 6: a reset after OrionVM received a DELETE (or a GET, retried) was reported as
/// `upstream_unreachable` "could not connect". Now: 502 `upstream_reset` with
/// `details.request_sent: true`, and the audit says the outcome is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_orionvm_received_the_request_says_it_was_sent() {
    let h = Harness::start().await;
    let admin = h.key("admin").to_string();
    let id = h.first_instance(&admin).await;
    h.sim.set_faults(FaultPlan {
        path_prefix: Some("/api/v1/instances".into()),
        reset: 20,
        ..Default::default()
    });
    let r = h.delete(&admin, &format!("/api/v1/instances/{id}")).await;
    let body = expect_error(r, 502, "upstream_reset").await;
    assert_eq!(body["details"]["request_sent"], true, "{body}");
    let r = h.get(&admin, "/api/v1/instances").await;
    let body = expect_error(r, 502, "upstream_reset").await;
    assert_eq!(body["details"]["request_sent"], true, "{body}");
    h.sim.clear_faults();
    let record = poll("the DELETE's audit record", SOON, || async {
        h.proxy
            .audit_log()
            .into_iter()
            .find(|r| r["http.request.method"] == "DELETE")
    })
    .await;
    assert_eq!(record["orion.audit.result"], "unknown", "{record}");
    assert_eq!(record["orion.upstream.request_sent"], true, "{record}");
}
