//! The one `ProxyHttp` implementation. Each phase stays short and calls into the module that
//! owns the concern: routes, auth, limits, validate, upstream, facade, errors, observe
//! (`docs/ARCHITECTURE.md`, section 3). `admit` is `request_filter`'s sequence of decisions,
//! `local` the routes the proxy answers itself, `failure` how a failed request is answered,
//! `respond` the only code that writes an answer.

mod admit;
pub mod body;
pub mod connection;
pub mod ctx;
mod failure;
pub mod local;
pub mod respond;

use crate::errors::{self, ApiError};
use crate::metrics;
use crate::observe::{self, request_id};
use crate::request::RequestView;
use crate::runtime::SharedState;
use crate::upstream::UpstreamError;
use crate::upstream::names::{self, SetHeader};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use ctx::Ctx;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;

/// Header names looked up on every request: named once (a lookup by `&str` parses the name
/// first, about 200 instructions).
static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Largest upstream error body buffered for normalisation.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub struct OrionProxy {
    pub state: Arc<SharedState>,
}

impl OrionProxy {
    pub fn new(state: Arc<SharedState>) -> Self {
        OrionProxy { state }
    }
}

/// An upstream refusal or failure before OrionVM answered: kept as the request's error (so
/// that `fail_to_proxy` writes it) and carried out of the phase as its status.
fn upstream_failed(ctx: &mut Ctx, e: UpstreamError) -> Box<Error> {
    let why = e.to_string();
    let err = ApiError::from(e);
    let status = err.status;
    ctx.error = Some(err);
    Error::explain(ErrorType::HTTPStatus(status), why)
}

/// The limits' decision before any upstream work (`crate::limits::before_upstream`): drop
/// cached reads of an object being changed, answer from the cache or a shared call, answer
/// fast when every breaker is open. `Ok(true)`: answered.
async fn before_upstream(
    session: &mut Session,
    ctx: &mut Ctx,
    state: &Arc<crate::runtime::State>,
) -> Result<bool> {
    let local = local::cached_facade_read(session.req_header(), ctx, state);
    let body = ctx.validated.take();
    let trace = ctx.trace.as_ref().map(|t| t.calls());
    let decision = match limits_parts(session.req_header(), ctx) {
        Some((limits, view, rl)) => {
            let extra = crate::limits::Extra {
                body: body.as_ref().map(|v| &v.value),
                local,
                trace,
            };
            crate::limits::before_upstream_with(limits, &view, rl, extra).await
        }
        None => crate::request::Decision::Continue,
    };
    ctx.validated = body;
    if let Some((status, elapsed)) = ctx.limits.upstream_answer.take() {
        ctx.upstream.status = Some(status);
        ctx.upstream.elapsed = Some(elapsed);
    }
    respond::decision(session, ctx, decision).await
}

/// A create with an `Idempotency-Key` (`crate::idempotency::begin`): holds the key and goes
/// on, or answers (the stored answer, the object a lookup found, or a refusal). `Ok(true)`:
/// answered.
async fn idempotency(
    session: &mut Session,
    ctx: &mut Ctx,
    state: &crate::runtime::State,
    key: &str,
) -> Result<bool> {
    let Some(rt) = ctx.runtime.clone() else {
        return Ok(false);
    };
    let begun = {
        let view = ctx.view(session.req_header());
        crate::idempotency::begin_traced(
            &rt.idempotency,
            &state.stores.kv,
            &view,
            key,
            ctx.body.as_deref(),
            ctx.validated.as_ref().map(|v| &v.value),
            ctx.trace.as_deref().map(|t| t.tracer()),
        )
        .await
    };
    match begun {
        Ok(crate::idempotency::Begun::Proceed(claim)) => {
            ctx.obs.idempotency = Some(claim.how);
            ctx.idem = Some(claim);
            Ok(false)
        }
        Ok(crate::idempotency::Begun::Answer(reply, how)) => {
            ctx.obs.idempotency = Some(how);
            respond::json(session, ctx, reply.status, reply.body, &reply.headers).await?;
            Ok(true)
        }
        Err(e) => {
            ctx.obs.idempotency = Some("refused");
            respond::error(session, ctx, e.into()).await?;
            Ok(true)
        }
    }
}

/// What became of a create that held an `Idempotency-Key`, from what the phases saw: may
/// OrionVM have acted (the request went out: a proxied call that got a status or broke after
/// sending; a facade step that may have acted), and was the answer written whole?
pub(crate) fn idempotency_outcome(
    ctx: &Ctx,
    claim: &crate::idempotency::Claim,
) -> crate::idempotency::Outcome {
    use crate::config::model::RouteKind;
    use crate::idempotency::Outcome;
    use crate::upstream::Failure;
    let cut = matches!(
        ctx.upstream.failure,
        Some(Failure::Timeout | Failure::Reset)
    );
    let facade = ctx
        .route
        .as_ref()
        .is_some_and(|r| r.kind == RouteKind::Facade);
    let sent = if facade {
        claim.unsure
    } else {
        cut || ctx.upstream.status.is_some()
    };
    if claim.unsure || cut {
        Outcome::Unknown
    } else if claim.answered() {
        // A 5xx that never reached OrionVM (connect refused, breaker open) frees the key.
        match claim.status() {
            Some(s) if s >= 500 && !sent => Outcome::NotSent,
            _ => Outcome::Answered,
        }
    } else if sent {
        Outcome::Unknown
    } else {
        Outcome::NotSent
    }
}

/// OrionVM answered 401 to the proxy's own token: drop that token and, once per request while
/// the body can be replayed, retry with a fresh one (`None`: answer the 401 as it is, which
/// `errors::from_upstream` turns into 502 `upstream_auth_failed`).
fn token_rejected(ctx: &mut Ctx, replayable: bool) -> Option<Box<Error>> {
    if ctx.upstream.token_retry_used {
        return None;
    }
    let (Some(tenant), Some(used)) = (&ctx.tenant, &ctx.upstream.upstream_auth) else {
        return None;
    };
    if !tenant.account.credentials.refreshes() {
        return None;
    }
    tenant.account.credentials.invalidate(used);
    if !replayable {
        return None;
    }
    ctx.upstream.token_retry_used = true;
    let mut e = Error::explain(failure::TOKEN_REJECTED, "OrionVM refused the proxy's token");
    e.set_retry(true);
    Some(e)
}

fn declares_empty_body(resp: &ResponseHeader) -> bool {
    resp.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "0")
}

#[async_trait]
impl ProxyHttp for OrionProxy {
    /// Boxed: Pingora keeps the context inside each request's future, and moves that future
    /// (a `Box::pin` of several KiB) more than once per request; a pointer moves for free.
    type CTX = Box<Ctx>;

    fn new_ctx(&self) -> Box<Ctx> {
        Box::new(Ctx::new())
    }

    // The request header's deadline and the answer to a header Pingora refuses: hooks of the
    // patched pingora-proxy (`connection`, vendor/pingora-proxy/ORION-PATCH.md).
    fn request_header_timeout(&self, reused: bool) -> Option<std::time::Duration> {
        let rt = self.state.current();
        Some(connection::header_deadline(
            &rt.config.server.timeouts,
            reused,
        ))
    }

    async fn request_header_failed(
        &self,
        session: &mut pingora::protocols::http::ServerSession,
        e: &Error,
    ) -> bool {
        let rt = self.state.current();
        connection::header_failed(session, e, &rt).await
    }

    /// Marks a kept-alive connection, so that the next request's header deadline counts the
    /// idle wait (a zero-sized box: no allocation).
    fn persist_connection_context(
        &self,
        _session: &Session,
        _ctx: &Self::CTX,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        Some(Box::new(()))
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        metrics::in_flight(1);
        if self.state.is_draining() {
            // Handing over or stopping: the client's next request opens a new connection,
            // which the process that keeps the listeners accepts.
            session.set_keepalive(None);
        }
        let rt = self.state.current();
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.client_ip = client_ip;
        let trusted = request_id::is_trusted(client_ip, &rt.trusted_networks);
        ctx.client_trusted = trusted;
        let headers = &session.req_header().headers;
        let inbound_id = headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok());
        ctx.request_id = match inbound_id {
            Some(id) if trusted && request_id::valid_inbound(id) => id.to_string(),
            _ => request_id::new_id(),
        };
        let inbound_trace = headers.get(&TRACEPARENT).and_then(|v| v.to_str().ok());
        // Exported traces (`observe::trace`): the server span, continuing a trusted caller's
        // trace; otherwise the trace id alone, for the logs and OrionVM.
        ctx.trace = rt.traces.start_request(
            &session.req_header().method,
            inbound_trace.filter(|_| trusted),
        );
        ctx.trace_id = match (&ctx.trace, inbound_trace.and_then(request_id::trace_id_of)) {
            (Some(t), _) => t.trace_id().to_string(),
            (None, Some(t)) if trusted => t.to_string(),
            (None, _) => request_id::new_trace_id(),
        };
        if let Some(t) = &ctx.trace {
            ctx.obs.span_id = t.span_id().to_string();
        }
        connection::per_request(session.as_downstream_mut(), &rt.config.server.timeouts);
        ctx.runtime = Some(rt);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        // Path and route, identity and tenant, rate limits, body, audit: `admit`.
        if let Err(err) = admit::admit(session, ctx).await {
            respond::error(session, ctx, err).await?;
            return Ok(true);
        }
        // An `Idempotency-Key` on a create: only a request that carries one goes further.
        let key = match ctx.runtime.as_deref() {
            Some(rt) => rt
                .idempotency
                .key_of(&ctx.view(session.req_header()))
                .map(|k| k.map(str::to_string)),
            None => Ok(None),
        };
        match key {
            Ok(None) => {}
            Ok(Some(key)) => {
                if idempotency(session, ctx, &self.state.state, &key).await? {
                    return Ok(true);
                }
            }
            Err(e) => {
                respond::error(session, ctx, e.into()).await?;
                return Ok(true);
            }
        }
        if before_upstream(session, ctx, &self.state.state).await? {
            return Ok(true);
        }
        // Health, readiness, the token endpoint, the facade, the API document, mirror lists
        // asked to page, filter or sort; everything else goes on to OrionVM.
        local::answer(session, ctx, &self.state.state).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        // Load balancer, health, breaker and budget: `crate::upstream::peer`.
        let tenant = ctx.tenant.clone();
        let principal = ctx.principal.clone();
        let caller = principal.as_deref().map(|p| &*p.id);
        match crate::upstream::peer::peer_for(&mut ctx.upstream, tenant.as_deref(), caller).await {
            Ok(peer) => Ok(peer),
            Err(e) => Err(upstream_failed(ctx, e)),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let Some(tenant) = ctx.tenant.clone() else {
            return Err(upstream_failed(
                ctx,
                UpstreamError::Internal("no tenant for an upstream call".into()),
            ));
        };
        // Credentials, target, Host, ids, Content-Length, signature: `crate::upstream::rewrite`.
        // Traced, each attempt is a span of its own, named by the `traceparent` it sends.
        if let Some(t) = ctx.trace.as_deref_mut() {
            let previous = (
                ctx.upstream.status,
                ctx.upstream.failure.map(|f| f.as_str()),
            );
            t.begin_proxied(session.req_header().method.as_str(), &ctx.path, previous);
        }
        let own;
        let traceparent = match ctx.trace.as_deref().and_then(|t| t.proxied_traceparent()) {
            Some(tp) => tp,
            None => {
                own = request_id::child_traceparent(&ctx.trace_id);
                &own
            }
        };
        let out = crate::upstream::Outbound {
            path: &ctx.path,
            original: &session.req_header().uri,
            request_id: &ctx.request_id,
            traceparent,
            body: ctx.body.as_deref(),
            caller: crate::upstream::forward::Caller {
                ip: ctx.client_ip,
                trusted: ctx.client_trusted,
                tls: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
            },
            forward: ctx
                .runtime
                .as_ref()
                .map(|rt| rt.upstreams.forward_headers)
                .unwrap_or_default(),
            trace: ctx.trace.as_deref().map(|t| t.tracer()),
        };
        match ctx.upstream.rewrite(&tenant.account, upstream, &out).await {
            Ok(()) => Ok(()),
            Err(e) => Err(upstream_failed(ctx, e)),
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(checked) = &ctx.body {
            // The bytes read and checked in request_filter are what goes upstream, on every attempt.
            *body = if end_of_stream {
                Some(checked.clone())
            } else {
                None
            };
        } else if let Some(b) = body {
            ctx.request_bytes += b.len();
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let status = upstream.status.as_u16();
        ctx.upstream.answered(status);
        if status >= 400 && declares_empty_body(upstream) {
            // No body task will follow, so the body filter could not replace it: answer the
            // error body from fail_to_proxy instead.
            ctx.error = Some(errors::from_upstream(status, b""));
            let code = errors::caller_status(status);
            return Err(Error::explain(
                ErrorType::HTTPStatus(code),
                "OrionVM answered an empty error",
            ));
        }
        let replayable = !session.as_ref().retry_buffer_truncated();
        if status == 401
            && let Some(e) = token_rejected(ctx, replayable)
        {
            return Err(e);
        }
        let method = &session.req_header().method;
        if replayable
            && let Some(tenant) = &ctx.tenant
            && let Some(e) = crate::upstream::peer::retry_on_5xx(
                &mut ctx.upstream,
                &tenant.account,
                method,
                status,
            )
        {
            return Err(e);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // OrionVM's hop-by-hop headers end here (RFC 9110 section 7.6.1).
        crate::upstream::forward::strip_response(upstream);
        let request_id = http::HeaderValue::from_str(&ctx.request_id)
            .or_err(ErrorType::InvalidHTTPHeader, "invalid request id")?;
        upstream.set(&names::X_REQUEST_ID, request_id)?;
        if let Some(rt) = ctx.runtime.as_ref() {
            for (name, value) in crate::limits::response_fields(&rt.limits, &ctx.limits) {
                upstream.set(name, value)?;
            }
        }
        // A shared backend: the other nodes drop their cached reads of a changed object
        // before the caller sees the answer.
        if ctx
            .runtime
            .as_ref()
            .is_some_and(|rt| crate::limits::shares_cache(&rt.limits))
            && let Some((limits, view, _)) = limits_parts(session.req_header(), ctx)
        {
            crate::limits::changed(limits, &view).await;
        }
        let status = upstream.status.as_u16();
        if status >= 400 {
            // Every error reaches the caller in the one error body, whatever OrionVM sent.
            upstream.remove_header("content-length");
            upstream.remove_header("content-encoding");
            upstream.insert_header("transfer-encoding", "chunked")?;
            upstream.insert_header(
                "content-type",
                errors::media_type(session.req_header().headers.get("accept")),
            )?;
            if errors::caller_status(status) != status {
                upstream.set_status(errors::caller_status(status))?;
            }
            ctx.rewrite = Some(BytesMut::new());
        }
        if let Some(claim) = ctx.idem.as_mut() {
            let headers = upstream
                .headers
                .iter()
                .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)));
            claim.capture_head(upstream.status.as_u16(), headers);
        }
        if let Some((log, req, obs)) = ctx.observed(session) {
            observe::on_response_header(
                log,
                &req,
                obs,
                upstream.status.as_u16(),
                &upstream.headers,
            );
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        if end_of_stream {
            // The upstream answer is complete: its concurrency slot is free for the next call.
            ctx.upstream.release_budget();
        }
        if let Some(buf) = ctx.rewrite.as_mut() {
            if let Some(chunk) = body.take() {
                let room = MAX_ERROR_BODY.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            if end_of_stream {
                let upstream_status = ctx.upstream.status.unwrap_or(502);
                let err = errors::from_upstream(upstream_status, buf);
                let rendered = err.render(&ctx.request_id);
                ctx.response_bytes += rendered.len();
                ctx.error = Some(err);
                *body = Some(rendered);
            }
        } else if let Some(b) = body {
            ctx.response_bytes += b.len();
        }
        if let Some(mut claim) = ctx.idem.take() {
            claim.capture_body(body.as_deref(), end_of_stream);
            if end_of_stream && claim.answered() {
                // Stored as the last bytes go out (this filter cannot wait); failures are
                // left to `logging`.
                let outcome = idempotency_outcome(ctx, &claim);
                tokio::spawn(crate::idempotency::finish(*claim, outcome));
            } else {
                ctx.idem = Some(claim);
            }
        }
        // Between the first and the last chunk observe only keeps a captured body: bring its
        // record up to date only when it has something to do.
        if (end_of_stream || ctx.obs.response_body.is_some())
            && let Some((log, req, obs)) = ctx.observed(session)
        {
            observe::on_response_body(log, &req, obs, body.as_ref(), end_of_stream);
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached OrionVM: another endpoint may take it.
        let timed_out = *e.etype() == ErrorType::ConnectTimedout;
        let account = ctx.tenant.as_ref().map(|t| &*t.account);
        if crate::upstream::peer::connect_failed(&mut ctx.upstream, account, timed_out) {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        if *e.etype() == failure::TOKEN_REJECTED
            || *e.etype() == crate::upstream::peer::UPSTREAM_5XX
        {
            return e;
        }
        if ctx.error.is_none() {
            // The connection to OrionVM was up: the request (or part of it) went out.
            ctx.upstream.request_sent = true;
        }
        if e.esource() == &ErrorSource::Upstream {
            let timed_out = matches!(
                e.etype(),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout
            );
            crate::upstream::peer::transport_failed(&mut ctx.upstream, timed_out);
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let (err, classified) = match ctx.error.take() {
            Some(err) => (err, false),
            None => {
                let (err, failure) = failure::classify(e.esource(), e.etype());
                if let Some(f) = failure {
                    ctx.upstream.failure.get_or_insert(f);
                }
                (err, true)
            }
        };
        let (sent, upstream_status) = (ctx.upstream.request_sent, ctx.upstream.status);
        let err = failure::after_sent(err, sent, upstream_status, classified);
        let status = err.status;
        let downstream_gone = failure::downstream_gone(e);
        if !downstream_gone
            && session.response_written().is_some()
            && let Some(buf) = ctx.rewrite.take()
        {
            // OrionVM's error answer broke off while the proxy held it back to replace it: the
            // header (chunked) is out, so the error body still can be.
            let upstream_status = ctx.upstream.status.unwrap_or(502);
            let answer = errors::from_upstream(upstream_status, &buf);
            let rendered = answer.render(&ctx.request_id);
            ctx.response_bytes += rendered.len();
            ctx.error = Some(answer);
            if let Err(we) = session.write_response_body(Some(rendered), true).await {
                log::debug!(
                    "request {}: could not finish the error body: {we}",
                    ctx.request_id
                );
            }
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        if session.response_written().is_none() && !downstream_gone {
            // Pingora closes the connection after a failed proxy attempt: say so.
            session.as_downstream_mut().set_keepalive(None);
            if let Err(we) = respond::error(session, ctx, err).await {
                log::debug!(
                    "request {}: could not write the error: {we}",
                    ctx.request_id
                );
            }
        } else {
            ctx.error = Some(err);
        }
        FailToProxy {
            error_code: if downstream_gone { 0 } else { status },
            can_reuse_downstream: false,
        }
    }

    fn request_summary(&self, session: &Session, ctx: &Self::CTX) -> String {
        // Pingora's diagnostic lines ("Fail to proxy: ...") name the request this way: redacted
        // like the access log, by the same redactor.
        let req = session.req_header();
        let host = req.headers.get("host").and_then(|v| v.to_str().ok());
        let fallback;
        let redactor = match ctx.runtime.as_deref() {
            Some(rt) => &rt.log.redactor,
            None => {
                fallback = observe::Redactor::default();
                &fallback
            }
        };
        redactor.request_summary(&req.method, &req.uri, host, &ctx.request_id)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        metrics::in_flight(-1);
        crate::upstream::peer::finish_attempt(&mut ctx.upstream);
        let body = ctx.validated.take();
        if let Some((limits, view, _)) = limits_parts(session.req_header(), ctx) {
            crate::limits::finish(limits, &view, body.as_ref().map(|v| &v.value));
        }
        ctx.validated = body;
        if let Some(claim) = ctx.idem.take() {
            let outcome = idempotency_outcome(ctx, &claim);
            crate::idempotency::finish(*claim, outcome).await;
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let error_type = e.map(|e| format!("{:?}", e.etype()));
        ctx.finish_trace(session, status, error_type.as_deref());
        if let Some((log, req, obs)) = ctx.observed(session) {
            observe::finish(log, &req, obs, status, error_type.as_deref()).await;
        }
    }
}

/// The concerns' view of the request, and the limits' part of the context beside it
/// (borrowed apart, so a concern reads one while it writes the other).
fn limits_view<'a>(
    req: &'a RequestHeader,
    ctx: &'a mut Ctx,
) -> (RequestView<'a>, &'a mut crate::limits::RequestLimits) {
    let (_, view, rl) = split(req, ctx);
    (view, rl)
}

/// The runtime's limits (without cloning the runtime's `Arc` on the hot path), the view and
/// the limits' part of the context; `None` without a runtime.
fn limits_parts<'a>(
    req: &'a RequestHeader,
    ctx: &'a mut Ctx,
) -> Option<(
    &'a crate::limits::Limits,
    RequestView<'a>,
    &'a mut crate::limits::RequestLimits,
)> {
    let (rt, view, rl) = split(req, ctx);
    Some((&rt?.limits, view, rl))
}

fn split<'a>(
    req: &'a RequestHeader,
    ctx: &'a mut Ctx,
) -> (
    Option<&'a crate::runtime::Runtime>,
    RequestView<'a>,
    &'a mut crate::limits::RequestLimits,
) {
    let Ctx {
        client_ip,
        runtime,
        path,
        route,
        params,
        principal,
        tenant,
        request_id,
        limits,
        ..
    } = ctx;
    let view = RequestView {
        method: &req.method,
        path: path.as_str(),
        query: req.uri.query(),
        headers: &req.headers,
        route: route.as_ref(),
        params: params.as_slice(),
        principal: principal.as_ref(),
        tenant: tenant.as_ref(),
        client_ip: *client_ip,
        request_id: request_id.as_str(),
    };
    (runtime.as_deref(), view, limits)
}

#[cfg(test)]
mod tests;
