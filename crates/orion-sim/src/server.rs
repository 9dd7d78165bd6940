//! The accept loop, per-connection serving (with real TCP resets), auth,
//! `/oauth/token`, the `/_sim/` control API and response bodies.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::api::{self, Ctx, Matched};
use super::faults::{FaultPlan, FaultState, parse_header};
use super::model::{Account, Catalog, Origin, build_catalog, freezer, seed_account};
use super::stats::{CallStats, RecordedRequest, StatsBook};
use super::util::{
    Reply, bad_request, error_plain, html_error_page, json_error_for_status, now_wall, random_hex,
    route_not_found,
};
use super::{SimOptions, SimTimings};

const MAX_BODY: usize = 1 << 20;
/// Bytes of each request body kept in the recent requests.
const RECORDED_BODY_MAX: usize = 64 * 1024;

#[derive(Debug)]
struct IssuedToken {
    account: usize,
    expires: Instant,
    revoked: bool,
}

/// Everything the server tasks share with the handle.
pub(crate) struct Shared {
    catalog: Catalog,
    accounts: Vec<Mutex<Account>>,
    account_names: Vec<String>,
    /// client_id -> (secret, account)
    clients: HashMap<String, (String, usize)>,
    static_tokens: HashMap<String, usize>,
    tokens: Mutex<HashMap<String, IssuedToken>>,
    tokens_issued: AtomicU64,
    stats: Mutex<StatsBook>,
    faults: Mutex<FaultState>,
    timings: SimTimings,
    token_ttl: Duration,
    signature: Option<super::signature::Verifier>,
}

impl Shared {
    pub(crate) fn new(opts: SimOptions) -> std::io::Result<Shared> {
        let catalog = build_catalog()?;
        let mut accounts = Vec::new();
        let mut account_names = Vec::new();
        let mut clients = HashMap::new();
        let mut static_tokens = HashMap::new();
        for (i, a) in opts.accounts.iter().enumerate() {
            accounts.push(Mutex::new(seed_account(&a.name, i)?));
            account_names.push(a.name.clone());
            for c in &a.clients {
                clients
                    .entry(c.client_id.clone())
                    .or_insert_with(|| (c.client_secret.clone(), i));
            }
            for t in &a.static_tokens {
                static_tokens.entry(t.clone()).or_insert(i);
            }
        }
        Ok(Shared {
            catalog,
            accounts,
            account_names,
            clients,
            static_tokens,
            tokens: Mutex::new(HashMap::new()),
            tokens_issued: AtomicU64::new(0),
            stats: Mutex::new(StatsBook::default()),
            faults: Mutex::new(FaultState::default()),
            timings: opts.timings,
            token_ttl: opts.token_ttl,
            signature: opts.signature.map(super::signature::Verifier::new),
        })
    }

    pub(crate) fn calls(&self) -> CallStats {
        let mut s = self.stats.lock().stats.clone();
        s.faulted = self.faults.lock().injected;
        s
    }

    pub(crate) fn reset_calls(&self) {
        let mut b = self.stats.lock();
        b.stats = CallStats::default();
        b.recent.clear();
        self.faults.lock().injected = 0;
    }

    pub(crate) fn recent(&self) -> Vec<RecordedRequest> {
        self.stats.lock().recent.iter().cloned().collect()
    }

    pub(crate) fn set_faults(&self, plan: FaultPlan) {
        self.faults.lock().set(plan);
    }

    pub(crate) fn clear_faults(&self) {
        self.faults.lock().set(FaultPlan::default());
    }

    /// Marks every issued token expired; returns how many were live.
    pub(crate) fn expire_tokens(&self) -> usize {
        let mut n = 0;
        for t in self.tokens.lock().values_mut() {
            if !t.revoked {
                n += 1;
            }
            t.revoked = true;
        }
        n
    }

    pub(crate) fn tokens_issued(&self) -> u64 {
        self.tokens_issued.load(Ordering::Relaxed)
    }

    /// The account of a bearer token, or the 401 to answer.
    fn authenticate(&self, headers: &HeaderMap) -> Result<usize, Reply> {
        let unauthorized = |code: &str, desc: &str| {
            error_plain(StatusCode::UNAUTHORIZED, code, desc)
                .with_header("www-authenticate", "Bearer realm=\"OrionVM\"")
        };
        let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return Err(unauthorized(
                "invalid_token",
                "No access token was provided",
            ));
        };
        let token = match value.trim().split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => {
                return Err(unauthorized("invalid_token", "The access token is invalid"));
            }
        };
        if let Some(a) = self.static_tokens.get(token) {
            return Ok(*a);
        }
        match self.tokens.lock().get(token) {
            Some(t) if t.revoked || t.expires <= Instant::now() => {
                Err(unauthorized("invalid_token", "The access token expired"))
            }
            Some(t) => Ok(t.account),
            None => Err(unauthorized("invalid_token", "The access token is invalid")),
        }
    }

    /// With signature verification on: the signature first (401 `invalid_signature`), then
    /// the bearer token, unless the request has none and the key names an account.
    fn authenticate_signed(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> Result<usize, Reply> {
        let Some(v) = &self.signature else {
            return self.authenticate(&parts.headers);
        };
        let received = super::signature::Received {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            body,
        };
        if let Err(why) = v.verify(&received) {
            return Err(
                error_plain(StatusCode::UNAUTHORIZED, "invalid_signature", &why)
                    .with_header("www-authenticate", "Signature realm=\"OrionVM\""),
            );
        }
        match v.account() {
            Some(name) if !parts.headers.contains_key(AUTHORIZATION) => self
                .account_names
                .iter()
                .position(|a| a == name)
                .ok_or_else(|| {
                    error_plain(
                        StatusCode::UNAUTHORIZED,
                        "invalid_signature",
                        "unknown account",
                    )
                }),
            _ => self.authenticate(&parts.headers),
        }
    }

    /// `POST /oauth/token` (client credentials, JSON, form or HTTP Basic).
    fn oauth_token(&self, headers: &HeaderMap, body: &[u8]) -> Reply {
        let params = match token_params(headers, body) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let get = |k: &str| params.get(k).map(String::as_str).filter(|s| !s.is_empty());
        let Some(grant) = get("grant_type") else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The request is missing a required parameter: grant_type.",
            );
        };
        if grant != "client_credentials" {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "The authorization grant type is not supported by the authorization server.",
            );
        }
        let client = basic_credentials(headers).or_else(|| {
            Some((
                get("client_id")?.to_owned(),
                get("client_secret")?.to_owned(),
            ))
        });
        let account = match client {
            Some((id, secret)) => match self.clients.get(&id) {
                Some((s, a)) if *s == secret => Some(*a),
                _ => None,
            },
            None => None,
        };
        let Some(account) = account else {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method.",
            );
        };
        let token = random_hex(32);
        let mut tokens = self.tokens.lock();
        if tokens.len() >= 10_000 {
            let now = Instant::now();
            tokens.retain(|_, t| !t.revoked && t.expires > now);
        }
        tokens.insert(
            token.clone(),
            IssuedToken {
                account,
                expires: Instant::now() + self.token_ttl,
                revoked: false,
            },
        );
        drop(tokens);
        self.tokens_issued.fetch_add(1, Ordering::Relaxed);
        Reply::ok(json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.token_ttl.as_secs(),
            "refresh_token": null,
            "scope": "",
        }))
        .with_header("cache-control", "no-store")
        .with_header("pragma", "no-cache")
    }

    /// The account an `/oauth/token` body names by client id (for call stats).
    fn oauth_account(&self, headers: &HeaderMap, body: &[u8]) -> Option<usize> {
        let id = match basic_credentials(headers) {
            Some((id, _)) => id,
            None => token_params(headers, body).ok()?.remove("client_id")?,
        };
        self.clients.get(&id).map(|(_, a)| *a)
    }

    fn run_api(&self, m: &Matched, account: usize, body: &[u8], origin: Origin) -> Reply {
        let hang = self.faults.lock().hang_scope();
        let frozen = freezer(hang);
        let Some(acc) = self.accounts.get(account) else {
            return json_error_for_status(StatusCode::INTERNAL_SERVER_ERROR);
        };
        let mut acc = acc.lock();
        let now = Instant::now();
        acc.settle(now, &frozen);
        let cx = Ctx {
            cat: &self.catalog,
            timings: &self.timings,
            now,
            wall: now_wall(),
            origin,
        };
        api::dispatch(&cx, &mut acc, m, body)
    }
}

fn oauth_error(status: StatusCode, code: &str, desc: &str) -> Reply {
    error_plain(status, code, desc)
        .with_header("cache-control", "no-store")
        .with_header("pragma", "no-cache")
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, data) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (id, secret) = s.split_once(':')?;
    let dec = |x: &str| form_decode(x);
    Some((dec(id), dec(secret)))
}

fn form_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// Token request parameters from a JSON or a form-urlencoded body.
fn token_params(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, Reply> {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let trimmed = body.trim_ascii_start();
    let is_json = ct.contains("json")
        || (!ct.contains("x-www-form-urlencoded") && trimmed.first() == Some(&b'{'));
    let malformed = || {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request is missing a required parameter, includes an unsupported parameter value, or is otherwise malformed.",
        )
    };
    if is_json {
        if trimmed.is_empty() {
            return Ok(HashMap::new());
        }
        let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
            return Err(malformed());
        };
        return Ok(json_params(m));
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(malformed());
    };
    Ok(text
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (form_decode(k), form_decode(v)),
            None => (form_decode(p), String::new()),
        })
        .collect())
}

fn json_params(m: Map<String, Value>) -> HashMap<String, String> {
    m.into_iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k, s)),
            Value::Number(n) => Some((k, n.to_string())),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Connections.

/// Lets a request ask for its connection to be reset.
#[derive(Default)]
struct ConnCtl {
    abort: Notify,
}

impl ConnCtl {
    fn abort(&self) {
        self.abort.notify_one();
    }
}

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, _)) => {
                    conns.spawn(serve_conn(stream, shared.clone()));
                }
                Err(e) => {
                    log::warn!("orionvm simulator: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_conn(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    // A second descriptor of the same socket: setting SO_LINGER 0 on it and
    // closing both makes the kernel send RST instead of FIN.
    let (stream, dup) = match stream.into_std().and_then(|s| {
        let dup = s.try_clone()?;
        Ok((TcpStream::from_std(s)?, dup))
    }) {
        Ok(x) => x,
        Err(e) => {
            log::warn!("orionvm simulator: connection setup failed: {e}");
            return;
        }
    };
    let ctl = Arc::new(ConnCtl::default());
    let svc_ctl = ctl.clone();
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        let ctl = svc_ctl.clone();
        async move { Ok::<_, Infallible>(handle(shared, ctl, req).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        _ = ctl.abort.notified() => {
            let _ = socket2::SockRef::from(&dup).set_linger(Some(Duration::ZERO));
        }
    }
    drop(dup);
}

async fn read_body(mut body: Incoming) -> Result<Bytes, Reply> {
    let mut buf = BytesMut::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let Ok(frame) = frame else {
            return Err(bad_request("The request body could not be read"));
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                return Err(error_plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    "The request body is too large",
                ));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

fn record(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            let v = if *k == AUTHORIZATION {
                match v.split_once(' ') {
                    Some((scheme, _)) => format!("{scheme} <redacted>"),
                    None => "<redacted>".to_owned(),
                }
            } else {
                v
            };
            (k.as_str().to_owned(), v)
        })
        .collect()
}

async fn handle(
    shared: Arc<Shared>,
    ctl: Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Response<SimBody> {
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return respond(r, None, None),
    };
    if path == "/_sim" || path.starts_with("/_sim/") {
        return respond(control(&shared, &method, &path, &body), None, None);
    }

    let matched = api::match_route(&method, &path);
    let route: String = match &matched {
        Some(m) => m.route.to_owned(),
        None => path.chars().take(200).collect(),
    };
    let is_oauth = matched.as_ref().is_some_and(|m| m.route == "/oauth/token");
    let auth = (!is_oauth).then(|| shared.authenticate_signed(&parts, &body));
    let account = if is_oauth {
        shared.oauth_account(&parts.headers, &body)
    } else {
        auth.as_ref().and_then(|a| a.as_ref().ok().copied())
    };
    let account_name = account.and_then(|a| shared.account_names.get(a)).cloned();
    {
        let mut book = shared.stats.lock();
        book.stats.record(&method, &route, account_name.as_deref());
        book.push_recent(RecordedRequest {
            method: method.clone(),
            path: path.clone(),
            query: parts.uri.query().map(str::to_owned),
            route: route.clone(),
            account: account_name,
            headers: record(&parts.headers),
            body: String::from_utf8_lossy(&body[..body.len().min(RECORDED_BODY_MAX)]).into_owned(),
        });
    }

    let header_fault = match parts.headers.get("x-sim-fault") {
        Some(v) => match v.to_str().map_err(|e| e.to_string()).and_then(parse_header) {
            Ok(f) => Some(f),
            Err(e) => return respond(bad_request(&e), None, None),
        },
        None => None,
    };
    let decision = shared
        .faults
        .lock()
        .decide(&method, &path, &route, header_fault.as_ref());
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
    if decision.reset {
        ctl.abort();
        return std::future::pending().await;
    }
    let reply = if let Some((status, html)) = decision.error {
        if html {
            html_error_page(status)
        } else {
            json_error_for_status(status)
        }
    } else if let Some(status) = decision.empty {
        Reply::empty(status)
    } else {
        match (&matched, auth) {
            (None, _) => route_not_found(&method, &path),
            (Some(_), None) => shared.oauth_token(&parts.headers, &body),
            (Some(_), Some(Err(r))) => r,
            (Some(m), Some(Ok(account))) => {
                let origin = Origin {
                    method: method.clone(),
                    path: path.clone(),
                    route: route.clone(),
                };
                shared.run_api(m, account, &body, origin)
            }
        }
    };
    if decision.reset_after {
        // Carried out; the caller never hears of it.
        ctl.abort();
        return std::future::pending().await;
    }
    let mid = decision.reset_mid_body.then_some(ctl);
    respond(reply, decision.slow_body, mid)
}

/// The `/_sim/` control API (no auth, not counted, no faults).
fn control(shared: &Shared, method: &str, path: &str, body: &[u8]) -> Reply {
    let path = path.trim_end_matches('/');
    let ok = |v: Value| Reply::ok(v);
    match (method, path) {
        ("GET", "/_sim/health") => ok(json!({"status": "ok"})),
        ("GET", "/_sim/calls") => ok(serde_json::to_value(shared.calls()).unwrap_or(Value::Null)),
        ("POST", "/_sim/calls/reset") => {
            shared.reset_calls();
            ok(json!({"reset": true}))
        }
        ("GET", "/_sim/requests") => {
            ok(serde_json::to_value(shared.recent()).unwrap_or(Value::Null))
        }
        ("GET", "/_sim/faults") => {
            let f = shared.faults.lock();
            ok(json!({
                "plan": serde_json::to_value(&f.plan).unwrap_or(Value::Null),
                "error_burst_left": f.burst_left,
                "reset_left": f.reset_left,
                "reset_mid_body_left": f.reset_mid_body_left,
                "reset_after_left": f.reset_after_left,
            }))
        }
        ("PUT", "/_sim/faults") => {
            let plan: FaultPlan = match serde_json::from_slice(body) {
                Ok(p) => p,
                Err(e) => return bad_request(&format!("invalid fault plan: {e}")),
            };
            if let Err(e) = plan.validate() {
                return bad_request(&format!("invalid fault plan: {e}"));
            }
            let out = serde_json::to_value(&plan).unwrap_or(Value::Null);
            shared.set_faults(plan);
            ok(out)
        }
        ("DELETE", "/_sim/faults") => {
            shared.clear_faults();
            ok(json!({"cleared": true}))
        }
        ("POST", "/_sim/expire_tokens") => {
            let n = shared.expire_tokens();
            ok(json!({"expired": n}))
        }
        _ => error_plain(
            StatusCode::NOT_FOUND,
            "not_found",
            "Unknown simulator control endpoint",
        ),
    }
}

// ---------------------------------------------------------------------------
// Response bodies.

/// A response body: whole, in slow chunks, or cut short by a reset.
pub(crate) struct SimBody {
    chunks: VecDeque<Bytes>,
    len: u64,
    delay: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    sent_any: bool,
    /// Reset the connection once the chunks are out.
    reset: Option<Arc<ConnCtl>>,
    resetting: bool,
}

impl SimBody {
    fn new(body: Bytes, delay: Option<Duration>, reset: Option<Arc<ConnCtl>>) -> SimBody {
        let len = body.len() as u64;
        let mut chunks = VecDeque::new();
        if reset.is_some() {
            // Only part of the body goes out before the reset.
            let half = (body.len() / 2).max(1).min(body.len());
            if half > 0 {
                chunks.push_back(body.slice(..half));
            }
        } else if let Some(_d) = delay {
            let size = body.len().div_ceil(10).max(32);
            let mut rest = body;
            while !rest.is_empty() {
                let n = size.min(rest.len());
                chunks.push_back(rest.split_to(n));
            }
        } else if !body.is_empty() {
            chunks.push_back(body);
        }
        SimBody {
            chunks,
            len,
            delay,
            sleep: None,
            sent_any: false,
            reset,
            resetting: false,
        }
    }

    fn emit(&mut self) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.chunks.pop_front() {
            Some(c) => {
                self.sent_any = true;
                Poll::Ready(Some(Ok(Frame::data(c))))
            }
            None => Poll::Ready(None),
        }
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
                if this.resetting {
                    if let Some(ctl) = this.reset.take() {
                        ctl.abort();
                    }
                    // The connection task drops the connection (and this body).
                    return Poll::Pending;
                }
                return this.emit();
            }
            if this.resetting {
                return Poll::Pending;
            }
            if this.chunks.is_empty() {
                if this.reset.is_some() {
                    // Give the first part time to reach the peer, then reset.
                    this.resetting = true;
                    this.sleep = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                    continue;
                }
                return Poll::Ready(None);
            }
            match this.delay {
                Some(d) if this.sent_any => {
                    this.sleep = Some(Box::pin(tokio::time::sleep(d)));
                }
                _ => return this.emit(),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.reset.is_none() && self.sleep.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

fn respond(reply: Reply, slow: Option<Duration>, reset: Option<Arc<ConnCtl>>) -> Response<SimBody> {
    let mut resp = Response::new(SimBody::new(reply.body, slow, reset));
    *resp.status_mut() = reply.status;
    let h = resp.headers_mut();
    if let Some(ct) = reply.content_type {
        h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        h.insert("x-request-id", v);
    }
    for (k, v) in reply.headers {
        h.append(k, v);
    }
    resp
}
