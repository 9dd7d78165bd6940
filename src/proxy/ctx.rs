//! The per-request context that the phases share.

use crate::auth::principal::Principal;
use crate::errors::ApiError;
use crate::request::RequestView;
use crate::routes::Route;
use crate::runtime::Runtime;
use crate::upstream::Tenant;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub struct Ctx {
    pub started: Instant,
    pub started_at: SystemTime,
    pub request_id: String,
    pub trace_id: String,
    /// The TCP peer's address, computed once in `early_request_filter`.
    pub client_ip: Option<std::net::IpAddr>,
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
    /// Index of the endpoint of the current attempt, and how many attempts were made.
    pub endpoint: Option<usize>,
    pub attempts: u8,
    /// The OrionVM `Authorization` value sent on the current attempt.
    pub upstream_auth: Option<http::HeaderValue>,
    /// The one retry after OrionVM refused the proxy's token has been used.
    pub token_retry_used: bool,
    pub upstream_started: Option<Instant>,
    pub upstream_elapsed: Option<std::time::Duration>,
    pub upstream_status: Option<u16>,
    /// The error this request was answered with, if any.
    pub error: Option<ApiError>,
    /// Upstream error bodies are buffered here and replaced by the error body.
    pub rewrite: Option<BytesMut>,
    pub response_bytes: usize,
    /// Why authentication failed, for logs and metrics.
    pub auth_failure: Option<&'static str>,
    /// Kind of upstream failure (connect, timeout, reset), for logs and metrics.
    pub upstream_failure: Option<&'static str>,
    /// What the access log and the audit trail keep about the answer.
    pub obs: crate::observe::RequestObs,
    /// Rate-limit verdicts, the endpoint claim of the current attempt (`crate::limits`).
    pub limits: crate::limits::RequestLimits,
}

impl Ctx {
    pub fn new() -> Self {
        Ctx {
            started: Instant::now(),
            started_at: SystemTime::now(),
            request_id: String::new(),
            trace_id: String::new(),
            client_ip: None,
            runtime: None,
            path: String::new(),
            route: None,
            params: Vec::new(),
            principal: None,
            tenant: None,
            body: None,
            request_bytes: 0,
            validated: None,
            endpoint: None,
            attempts: 0,
            upstream_auth: None,
            token_retry_used: false,
            upstream_started: None,
            upstream_elapsed: None,
            upstream_status: None,
            error: None,
            rewrite: None,
            response_bytes: 0,
            auth_failure: None,
            upstream_failure: None,
            obs: Default::default(),
            limits: Default::default(),
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

impl Default for Ctx {
    fn default() -> Self {
        Self::new()
    }
}
