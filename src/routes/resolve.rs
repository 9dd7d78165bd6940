//! The routing step of a request: its path normalised, its headers within the size limit, and
//! the route that serves it. The proxy asks once, in `request_filter`, and converts a refusal
//! ([`RouteError`], in `src/errors/routes.rs`) into the error body.

use super::path::{self, PathError};
use super::{Match, Route, RouteTable};
use std::sync::Arc;

/// What serves a request: its normalised path, the route and the route's path parameters.
#[derive(Debug)]
pub struct Resolved {
    pub path: String,
    pub route: Arc<Route>,
    pub params: Vec<(String, String)>,
}

/// Why no route serves a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Traversal, encoded separators, control bytes, an over-long path (400).
    InvalidPath(PathError),
    /// The request's headers take more than `server.max_header_bytes` (431).
    HeadersTooLarge { limit: usize },
    /// No route has this (normalised) path (404).
    NotFound { path: String },
    /// The path exists for other methods (405).
    WrongMethod { method: http::Method, path: String },
}

impl RouteError {
    /// The normalised path, when the refusal came after normalisation (for the logs).
    pub fn path(&self) -> Option<&str> {
        match self {
            RouteError::NotFound { path } | RouteError::WrongMethod { path, .. } => Some(path),
            RouteError::InvalidPath(_) | RouteError::HeadersTooLarge { .. } => None,
        }
    }
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::InvalidPath(e) => write!(f, "invalid path: {e}"),
            RouteError::HeadersTooLarge { limit } => {
                write!(f, "the request headers exceed {limit} bytes")
            }
            RouteError::NotFound { path } => write!(f, "no route for {path}"),
            RouteError::WrongMethod { method, path } => {
                write!(f, "{method} is not allowed on {path}")
            }
        }
    }
}

impl std::error::Error for RouteError {}

/// The size the request's headers count against `server.max_header_bytes`: each name and
/// value with its `: ` and line end.
pub fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

/// Decides the routing step, in the order a caller sees its refusals: the path (400), the
/// header size (431), then the route (404, 405).
pub fn resolve(
    table: &RouteTable,
    method: &http::Method,
    raw_path: &str,
    headers: &http::HeaderMap,
    max_header_bytes: usize,
) -> Result<Resolved, RouteError> {
    let path = path::normalize(raw_path).map_err(RouteError::InvalidPath)?;
    if header_bytes(headers) > max_header_bytes {
        return Err(RouteError::HeadersTooLarge {
            limit: max_header_bytes,
        });
    }
    match table.find(method, &path) {
        Match::Found(route, params) => Ok(Resolved {
            route: route.clone(),
            params,
            path,
        }),
        Match::WrongMethod => Err(RouteError::WrongMethod {
            method: method.clone(),
            path,
        }),
        Match::NotFound => Err(RouteError::NotFound { path }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::permissions::PermissionRegistry;
    use crate::config::model::{RouteConfig, RouteKind};
    use http::{HeaderMap, Method};

    fn table() -> RouteTable {
        let routes: Vec<RouteConfig> = serde_json::from_value(serde_json::json!([
            {"name": "instances.get", "method": "GET", "path": "/api/v1/instances/{id}",
             "kind": "mirror"},
            {"name": "health", "method": "GET", "path": "/health", "kind": "health"},
        ]))
        .unwrap();
        RouteTable::build(&routes, &mut PermissionRegistry::default()).unwrap()
    }

    fn headers(n: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-filler", "a".repeat(n).parse().unwrap());
        h
    }

    #[test]
    fn a_route_with_its_normalised_path_and_params() {
        let r = resolve(
            &table(),
            &Method::GET,
            "//api/v1/instances/abc/",
            &headers(10),
            1024,
        )
        .unwrap();
        assert_eq!(r.path, "/api/v1/instances/abc");
        assert_eq!(&*r.route.name, "instances.get");
        assert_eq!(r.params, vec![("id".to_string(), "abc".to_string())]);
        assert!(r.route.needs_principal());
        let h = resolve(&table(), &Method::GET, "/health", &headers(0), 1024).unwrap();
        assert_eq!(h.route.kind, RouteKind::Health);
        assert!(!h.route.needs_principal());
    }

    #[test]
    fn refusals_in_the_order_a_caller_sees_them() {
        let t = table();
        // A bad path is refused before the headers are measured.
        assert_eq!(
            resolve(&t, &Method::GET, "/api/../x", &headers(5000), 1024).unwrap_err(),
            RouteError::InvalidPath(PathError::DotSegment)
        );
        // Headers too large before any route lookup.
        let e = resolve(&t, &Method::GET, "/nowhere", &headers(5000), 1024).unwrap_err();
        assert_eq!(e, RouteError::HeadersTooLarge { limit: 1024 });
        assert_eq!(e.path(), None);
        let e = resolve(&t, &Method::GET, "//nowhere/", &headers(0), 1024).unwrap_err();
        assert_eq!(
            e,
            RouteError::NotFound {
                path: "/nowhere".into()
            }
        );
        assert_eq!(e.path(), Some("/nowhere"));
        let e = resolve(&t, &Method::DELETE, "/health", &headers(0), 1024).unwrap_err();
        assert_eq!(
            e,
            RouteError::WrongMethod {
                method: Method::DELETE,
                path: "/health".into()
            }
        );
    }

    #[test]
    fn header_bytes_count_names_values_and_separators() {
        let mut h = HeaderMap::new();
        h.insert("ab", "xyz".parse().unwrap());
        assert_eq!(header_bytes(&h), 2 + 3 + 4);
    }
}
