//! The per-request context that the phases share.

use crate::auth::principal::Principal;
use crate::errors::ApiError;
use crate::observe::{self, ErrorNote, LogPolicy, RequestObs};
use crate::request::RequestView;
use crate::routes::Route;
use crate::runtime::Runtime;
use crate::upstream::Tenant;
use bytes::{Bytes, BytesMut};
use pingora_proxy::Session;
use std::sync::Arc;

pub struct Ctx {
    pub request_id: String,
    pub trace_id: String,
    /// The TCP peer's address, computed once in `early_request_filter`.
    pub client_ip: Option<std::net::IpAddr>,
    /// Whether the TCP peer is in `server.trusted_networks` (its request id, trace and
    /// forwarding headers are taken).
    pub client_trusted: bool,
    pub runtime: Option<Arc<Runtime>>,
    /// The normalised path.
    pub path: String,
    pub route: Option<Arc<Route>>,
    pub params: Vec<(String, String)>,
    pub principal: Option<Arc<Principal>>,
    pub tenant: Option<Arc<Tenant>>,
    /// The body read and checked in `request_filter`, handed upstream as is.
    pub body: Option<Bytes>,
    pub request_bytes: usize,
    /// The body as validated and rewritten (routes with a JSON body), for handlers that need
    /// the value: no second parse.
    pub validated: Option<crate::validate::Validated>,
    /// The endpoint, attempts, status and failure of the call to OrionVM (`crate::upstream`).
    pub upstream: crate::upstream::AttemptState,
    /// The error this request was answered with, if any.
    pub error: Option<ApiError>,
    /// Upstream error bodies are buffered here and replaced by the error body.
    pub rewrite: Option<BytesMut>,
    pub response_bytes: usize,
    /// Why authentication failed, for the logs (`auth::Auth::admit` counts it in the metrics).
    pub auth_failure: Option<&'static str>,
    /// What the access log and the audit trail keep about the answer.
    pub obs: crate::observe::RequestObs,
    /// Rate-limit verdicts (`crate::limits`).
    pub limits: crate::limits::RequestLimits,
    /// The `Idempotency-Key` this request holds, and its answer as written
    /// (`crate::idempotency`); `None` for every request without one.
    pub idem: Option<Box<crate::idempotency::Claim>>,
    /// The request's spans when traces are exported (`crate::observe::trace`); `None` when
    /// they are off.
    pub trace: Option<Box<observe::trace::RequestTrace>>,
}

impl Ctx {
    pub fn new() -> Self {
        Ctx {
            request_id: String::new(),
            trace_id: String::new(),
            client_ip: None,
            client_trusted: false,
            runtime: None,
            path: String::new(),
            route: None,
            params: Vec::new(),
            principal: None,
            tenant: None,
            body: None,
            request_bytes: 0,
            validated: None,
            upstream: Default::default(),
            error: None,
            rewrite: None,
            response_bytes: 0,
            auth_failure: None,
            obs: Default::default(),
            limits: Default::default(),
            idem: None,
            trace: None,
        }
    }

    /// The read-only view of the request that concerns decide on.
    pub fn view<'a>(&'a self, req: &'a pingora::http::RequestHeader) -> RequestView<'a> {
        RequestView {
            method: &req.method,
            path: &self.path,
            query: req.uri.query(),
            headers: &req.headers,
            route: self.route.as_ref(),
            params: &self.params,
            principal: self.principal.as_ref(),
            tenant: self.tenant.as_ref(),
            client_ip: self.client_ip,
            request_id: &self.request_id,
        }
    }

    /// For the observe hooks: the log policy in force, the request as observe sees it (the raw
    /// path when it could not be normalised), and observe's record of the request brought up
    /// to date from this context. `None` before a config was taken.
    pub fn observed<'a>(
        &'a mut self,
        session: &'a Session,
    ) -> Option<(&'a LogPolicy, RequestView<'a>, &'a mut RequestObs)> {
        let log = &self.runtime.as_deref()?.log;
        let req = session.req_header();
        let obs = &mut self.obs;
        obs.trace_id.clone_from(&self.trace_id);
        obs.request_bytes = self.request_bytes;
        obs.response_bytes = self.response_bytes;
        obs.upstream_status = self.upstream.status;
        obs.upstream_elapsed = self.upstream.elapsed;
        obs.attempts = self.upstream.attempts;
        obs.auth_failure = self.auth_failure;
        obs.upstream_failure = self.upstream.failure.map(|f| f.as_str());
        obs.request_sent = self.upstream.request_sent;
        obs.upstream_endpoint = match (&self.tenant, self.upstream.endpoint) {
            (Some(t), Some(i)) => t.account.endpoints.get(i).map(|e| e.name.clone()),
            _ => None,
        };
        obs.error = self.error.as_ref().map(|e| ErrorNote {
            code: e.code,
            detail: e.detail.clone(),
        });
        if obs.request_body.is_none() && observe::wants_request_body(log, &req.method) {
            obs.request_body = self.body.clone().or_else(|| received_body(session));
        }
        let view = RequestView {
            method: &req.method,
            path: if self.path.is_empty() {
                req.uri.path()
            } else {
                &self.path
            },
            query: req.uri.query(),
            headers: &req.headers,
            route: self.route.as_ref(),
            params: &self.params,
            principal: self.principal.as_ref(),
            tenant: self.tenant.as_ref(),
            client_ip: self.client_ip,
            request_id: &self.request_id,
        };
        Some((log, view, obs))
    }

    /// Ends the request's spans (when traced): the proxied call's as the upstream state says,
    /// the server span with the route, status, tenant and principal.
    pub fn finish_trace(&mut self, session: &Session, status: u16, failure: Option<&str>) {
        let Some(trace) = self.trace.take() else {
            return;
        };
        let req = session.req_header();
        let done = observe::trace::Finished {
            method: req.method.as_str(),
            route: self.route.as_deref().map(|r| &*r.template),
            path: if self.path.is_empty() {
                req.uri.path()
            } else {
                &self.path
            },
            status,
            tenant: self.principal.as_deref().map(|p| &*p.tenant),
            principal: self.principal.as_deref().map(|p| &*p.id),
            request_id: &self.request_id,
            error: self.error.as_ref().map(|e| e.code).or(failure),
        };
        let upstream = (
            self.upstream.status,
            self.upstream.failure.map(|f| f.as_str()),
        );
        (*trace).finish(&done, upstream);
    }

    pub fn route_name(&self) -> &str {
        self.route.as_ref().map(|r| &*r.name).unwrap_or("unmatched")
    }

    pub fn tenant_name(&self) -> &str {
        self.principal
            .as_ref()
            .map(|p| &*p.tenant)
            .unwrap_or("none")
    }
}

/// For a body the proxy read and refused, the JSON bytes it received (Pingora keeps them in
/// its retry buffer). `None` when there is no complete JSON body.
fn received_body(session: &Session) -> Option<Bytes> {
    let downstream = session.as_ref();
    if downstream.retry_buffer_truncated()
        || !observe::is_json_request(&session.req_header().headers)
    {
        return None;
    }
    downstream.get_retry_buffer().filter(|b| !b.is_empty())
}

impl Default for Ctx {
    fn default() -> Self {
        Self::new()
    }
}
