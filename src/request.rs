//! What a concern sees of a request, and what it hands back.
//!
//! Concerns never touch Pingora's `Session`: the proxy (`src/proxy/`) builds a [`RequestView`]
//! once per request, calls the concern, and acts on the [`Decision`] it returns. Only the proxy
//! writes to the client. See `docs/ARCHITECTURE.md` ("Concerns decide, the proxy writes").

use crate::auth::principal::Principal;
use crate::routes::Route;
use crate::upstream::Tenant;
use bytes::Bytes;
use std::net::IpAddr;
use std::sync::Arc;

/// A small read-only view of the request, built once by the proxy.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a http::Method,
    /// The normalised path (`//api/v1/x` is `/api/v1/x`).
    pub path: &'a str,
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    pub route: Option<&'a Arc<Route>>,
    /// The route's path parameters (`id`, `key`...).
    pub params: &'a [(String, String)],
    pub principal: Option<&'a Arc<Principal>>,
    pub tenant: Option<&'a Arc<Tenant>>,
    /// The TCP peer's address, computed once per request.
    pub client_ip: Option<IpAddr>,
    pub request_id: &'a str,
}

impl<'a> RequestView<'a> {
    /// The value of a path parameter.
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn route_name(&self) -> &'a str {
        self.route.map(|r| &*r.name).unwrap_or("unmatched")
    }

    /// Whether the method changes something (anything but GET, HEAD, OPTIONS).
    pub fn is_mutation(&self) -> bool {
        is_mutation(self.method)
    }
}

/// Anything but GET, HEAD and OPTIONS.
pub fn is_mutation(m: &http::Method) -> bool {
    !matches!(
        *m,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// A JSON answer that a concern wants sent (the proxy adds `X-Request-Id`, `Cache-Control`
/// and the observability hooks).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// What a concern decided about a request: go on, answer with this, or fail with this error
/// (each concern has its own error type `E`; `src/errors/` turns it into the error body).
#[derive(Debug)]
pub enum Decision<E> {
    Continue,
    Reply(Reply),
    Fail(E),
}

impl<E> Decision<E> {
    /// Converts the error type (at the one boundary in `src/errors/`).
    pub fn map_err<F>(self, f: impl FnOnce(E) -> F) -> Decision<F> {
        match self {
            Decision::Continue => Decision::Continue,
            Decision::Reply(r) => Decision::Reply(r),
            Decision::Fail(e) => Decision::Fail(f(e)),
        }
    }

    pub fn is_continue(&self) -> bool {
        matches!(self, Decision::Continue)
    }
}
