//! The one `ProxyHttp` implementation. Each phase stays short and calls into the module that
//! owns the concern: routes, auth, validate, upstream, errors, observe.

pub mod body;
pub mod ctx;
pub mod local;
pub mod respond;

use crate::config::model::RouteKind;
use crate::errors::{self, ApiError};
use crate::metrics;
use crate::observe::{self, request_id};
use crate::request::{Decision, RequestView};
use crate::routes::{Match, path};
use crate::runtime::SharedState;
use crate::upstream::{Failure, UpstreamError};
use crate::validate;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use ctx::Ctx;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;

/// Raised from `upstream_response_filter` when OrionVM refuses the proxy's own token, so that
/// Pingora retries the request once with a fresh one.
const TOKEN_REJECTED: ErrorType = ErrorType::Custom("upstream_token_rejected");
/// Largest upstream error body buffered for normalisation.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub struct OrionProxy {
    pub state: Arc<SharedState>,
}

impl OrionProxy {
    pub fn new(state: Arc<SharedState>) -> Self {
        OrionProxy { state }
    }

    /// Everything before the upstream: path, route, identity, permission, body.
    /// `Ok(None)` means go upstream; `Ok(Some(err))` answer with that error.
    async fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Option<ApiError>> {
        let Some(rt) = ctx.runtime.clone() else {
            return Ok(Some(ApiError::internal("no configuration loaded")));
        };
        let req = session.req_header();
        let normalised = match path::normalize(req.uri.path()) {
            Ok(p) => p,
            Err(e) => {
                return Ok(Some(ApiError::new(
                    400,
                    "invalid_path",
                    "The request path is invalid",
                    e.to_string(),
                )));
            }
        };
        let header_bytes: usize = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if header_bytes > rt.config.server.max_header_bytes {
            return Ok(Some(ApiError::new(
                431,
                "headers_too_large",
                "Request headers too large",
                format!(
                    "the request headers exceed {} bytes",
                    rt.config.server.max_header_bytes
                ),
            )));
        }
        ctx.path = normalised;
        let (route, params) = match rt.routes.find(&req.method, &ctx.path) {
            Match::Found(route, params) => (route.clone(), params),
            Match::WrongMethod => {
                return Ok(Some(ApiError::method_not_allowed(
                    req.method.as_str(),
                    &ctx.path,
                )));
            }
            Match::NotFound => return Ok(Some(ApiError::not_found_route(&ctx.path))),
        };
        ctx.route = Some(route.clone());
        ctx.params = params;
        match route.kind {
            RouteKind::Health | RouteKind::Ready | RouteKind::Openapi | RouteKind::OauthToken => {
                // Routes without a principal: `limits.anonymous_policy`, per source address
                // (the token endpoint also has its own brute-force limit in auth).
                let (view, rl) = limits_view(session.req_header(), ctx);
                return Ok(crate::limits::admit(&rt.limits, &view, rl)
                    .await
                    .err()
                    .map(ApiError::from));
            }
            RouteKind::Mirror | RouteKind::Facade => {}
        }
        let principal = match rt.auth.authenticate(&session.req_header().headers).await {
            Ok(p) => p,
            Err(e) => {
                ctx.auth_failure = Some(e.reason());
                metrics::auth_failure(e.reason());
                return Ok(Some(e.into()));
            }
        };
        ctx.principal = Some(principal.clone());
        if let Err(e) = rt.auth.authorize(&principal, route.permission.as_ref()) {
            ctx.auth_failure = Some(e.reason());
            metrics::auth_failure(e.reason());
            return Ok(Some(e.into()));
        }
        let Some(tenant) = rt.upstreams.tenants.get(&*principal.tenant) else {
            return Ok(Some(ApiError::internal(
                "the caller's tenant is not configured",
            )));
        };
        ctx.tenant = Some(tenant.clone());
        let (view, rl) = limits_view(session.req_header(), ctx);
        if let Err(e) = crate::limits::admit(&rt.limits, &view, rl).await {
            return Ok(Some(e.into()));
        }
        let signs = tenant.account.credentials.signer().is_some();
        let method = &session.req_header().method;
        if let validate::BodyPlan::Read { limit, json, rules } =
            validate::plan(method, &route, &rt.body_rules, rt.max_body_bytes, signs)
        {
            let read = body::read_whole(session, limit)
                .await
                .map_err(validate::AdmitError::Body)
                .and_then(|bytes| validate::finish(json, rules, bytes));
            match read {
                Ok(r) => {
                    ctx.request_bytes = r.received;
                    ctx.body = r.body;
                    ctx.validated = r.validated;
                }
                Err(e) => return Ok(Some(e.into())),
            }
        }
        Ok(None)
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

fn declares_empty_body(resp: &ResponseHeader) -> bool {
    resp.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "0")
}

#[async_trait]
impl ProxyHttp for OrionProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        metrics::in_flight(1);
        let rt = self.state.current();
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.client_ip = client_ip;
        let trusted = request_id::is_trusted(client_ip, &rt.trusted_networks);
        let headers = &session.req_header().headers;
        let inbound_id = headers.get("x-request-id").and_then(|v| v.to_str().ok());
        ctx.request_id = match inbound_id {
            Some(id) if trusted && request_id::valid_inbound(id) => id.to_string(),
            _ => request_id::new_id(),
        };
        let inbound_trace = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(request_id::trace_id_of);
        ctx.trace_id = match inbound_trace {
            Some(t) if trusted => t.to_string(),
            _ => request_id::new_trace_id(),
        };
        ctx.runtime = Some(rt);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Some(err) = self.admit(session, ctx).await? {
            respond::error(session, ctx, err).await?;
            return Ok(true);
        }
        // With `logging.audit.on_failure: closed`, no mutating call goes on unaudited.
        let refused = ctx
            .runtime
            .as_ref()
            .and_then(|rt| observe::audit_ready(&rt.log, &session.req_header().method).err());
        if let Some(e) = refused {
            respond::error(session, ctx, e.into()).await?;
            return Ok(true);
        }
        if let Some((limits, view, rl)) = limits_parts(session.req_header(), ctx) {
            let decision = crate::limits::before_upstream(limits, &view, rl).await;
            if let Some((status, elapsed)) = ctx.limits.upstream_answer.take() {
                ctx.upstream.status = Some(status);
                ctx.upstream.elapsed = Some(elapsed);
            }
            match decision {
                Decision::Continue => {}
                Decision::Reply(r) => {
                    respond::json(session, ctx, r.status, r.body, &r.headers).await?;
                    return Ok(true);
                }
                Decision::Fail(e) => {
                    respond::error(session, ctx, e.into()).await?;
                    return Ok(true);
                }
            }
        }
        match ctx.route.as_ref().map(|r| r.kind) {
            Some(RouteKind::Health) => {
                local::health(session, ctx).await?;
                Ok(true)
            }
            Some(RouteKind::Ready) => {
                let rt = ctx.runtime.clone();
                match rt {
                    Some(rt) => local::ready(session, ctx, &rt).await?,
                    None => {
                        respond::error(session, ctx, ApiError::internal("no configuration loaded"))
                            .await?
                    }
                }
                Ok(true)
            }
            Some(RouteKind::OauthToken) => {
                local::oauth_token(session, ctx, &self.state.state).await?;
                Ok(true)
            }
            // The facade, the API document, and mirror lists asked to page, filter or sort.
            Some(RouteKind::Facade | RouteKind::Openapi | RouteKind::Mirror) => {
                local::facade(session, ctx, &self.state.state).await
            }
            None => Ok(false),
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // Load balancer, health, breaker and budget: `crate::upstream::peer`.
        let tenant = ctx.tenant.clone();
        match crate::upstream::peer::peer_for(&mut ctx.upstream, tenant.as_deref()).await {
            Ok(peer) => Ok(peer),
            Err(e) => Err(upstream_failed(ctx, e)),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(tenant) = ctx.tenant.clone() else {
            return Err(upstream_failed(
                ctx,
                UpstreamError::Internal("no tenant for an upstream call".into()),
            ));
        };
        // Credentials, target, Host, ids, Content-Length, signature: `crate::upstream::rewrite`.
        let traceparent = request_id::child_traceparent(&ctx.trace_id);
        let out = crate::upstream::Outbound {
            path: &ctx.path,
            original: &session.req_header().uri,
            request_id: &ctx.request_id,
            traceparent: &traceparent,
            body: ctx.body.as_deref(),
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
        ctx: &mut Ctx,
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
        ctx: &mut Ctx,
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
        if status == 401
            && !ctx.upstream.token_retry_used
            && let (Some(tenant), Some(used)) = (&ctx.tenant, &ctx.upstream.upstream_auth)
            && tenant.account.credentials.refreshes()
        {
            tenant.account.credentials.invalidate(used);
            if !session.as_ref().retry_buffer_truncated() {
                ctx.upstream.token_retry_used = true;
                let mut e = Error::explain(TOKEN_REJECTED, "OrionVM refused the proxy's token");
                e.set_retry(true);
                return Err(e);
            }
        }
        let method = &session.req_header().method;
        if !session.as_ref().retry_buffer_truncated()
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
        ctx: &mut Ctx,
    ) -> Result<()> {
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(rt) = ctx.runtime.as_ref() {
            for (name, value) in crate::limits::response_fields(&rt.limits, &ctx.limits) {
                upstream.insert_header(name, value)?;
            }
        }
        let status = upstream.status.as_u16();
        if status >= 400 {
            // Every error reaches the caller in the one error body, whatever OrionVM sent.
            upstream.remove_header("content-length");
            upstream.remove_header("content-encoding");
            upstream.insert_header("transfer-encoding", "chunked")?;
            upstream.insert_header("content-type", "application/json")?;
            if errors::caller_status(status) != status {
                upstream.set_status(errors::caller_status(status))?;
            }
            ctx.rewrite = Some(BytesMut::new());
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
        ctx: &mut Ctx,
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
        if let Some((log, req, obs)) = ctx.observed(session) {
            observe::on_response_body(log, &req, obs, body.as_ref(), end_of_stream);
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
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
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        if *e.etype() == TOKEN_REJECTED || *e.etype() == crate::upstream::peer::UPSTREAM_5XX {
            return e;
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

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let err = match (ctx.error.take(), e.etype()) {
            (Some(err), _) => err,
            (None, ErrorType::HTTPStatus(code)) => {
                let (c, t) = errors::code_for_status(*code);
                ApiError::new(*code, c, t, t)
            }
            (None, _) => classify(e, ctx),
        };
        let status = err.status;
        let writable = session.response_written().is_none();
        let downstream_dead = e.esource() == &ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
            );
        if writable && !downstream_dead {
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
            error_code: if downstream_dead { 0 } else { status },
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        metrics::in_flight(-1);
        crate::upstream::peer::finish_attempt(&mut ctx.upstream);
        if let Some((limits, view, _)) = limits_parts(session.req_header(), ctx) {
            crate::limits::finish(limits, &view);
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let error_type = e.map(|e| format!("{:?}", e.etype()));
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

/// A transport failure as the error body: timeouts are 504, everything else toward OrionVM 502.
fn classify(e: &Error, ctx: &mut Ctx) -> ApiError {
    match (e.esource(), e.etype()) {
        (
            _,
            ErrorType::ConnectTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::TLSHandshakeTimedout,
        ) => {
            ctx.upstream.failure.get_or_insert(Failure::Timeout);
            ApiError::gateway_timeout("OrionVM did not answer in time")
        }
        (_, t) if *t == TOKEN_REJECTED => errors::upstream_auth_failed(),
        (
            ErrorSource::Upstream,
            ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::TLSHandshakeFailure
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError,
        ) => {
            ctx.upstream.failure.get_or_insert(Failure::Connect);
            ApiError::bad_gateway(
                "upstream_unreachable",
                "the proxy could not connect to OrionVM",
            )
        }
        (ErrorSource::Upstream, _) => {
            ctx.upstream.failure.get_or_insert(Failure::Reset);
            ApiError::bad_gateway(
                "upstream_reset",
                "OrionVM closed the connection before answering",
            )
        }
        (ErrorSource::Downstream, _) => ApiError::new(
            400,
            "invalid_request",
            "The request is invalid",
            "the request could not be read",
        ),
        _ => ApiError::internal("the proxy failed to handle the request"),
    }
}

#[cfg(test)]
mod tests;
