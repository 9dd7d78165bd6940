//! The route table: method and path template to what serves the request and what it needs.
//! Built once per config load from [`crate::config::model::RouteConfig`]; matching is a radix
//! tree lookup per method.

pub mod handler;
pub mod path;
mod resolve;

pub use handler::Handler;
pub use resolve::{Resolved, RouteError, header_bytes, resolve};

use crate::auth::permissions::{PermissionId, PermissionRegistry};
use crate::config::model::{RouteConfig, RouteKind};
use std::collections::HashMap;
use std::sync::Arc;

/// A route as the hot path sees it.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub method: http::Method,
    pub template: Arc<str>,
    pub kind: RouteKind,
    pub permission: Option<(PermissionId, Arc<str>)>,
    pub json_body: bool,
    /// For facade routes: the operation that answers.
    pub handler: Option<Handler>,
    /// A mirror list that the list query parameters may shape.
    pub list: bool,
    /// The JSON Schema its body must match (`validate`), by the name the config gives.
    pub schema: Option<Arc<str>>,
    /// Its latency series (`metrics`), resolved at its first request.
    pub series: crate::metrics::RouteSeries,
}

impl Route {
    /// Whether the caller must authenticate: every route but liveness, readiness, the API
    /// document and the token endpoint (those are limited per source address instead).
    pub fn needs_principal(&self) -> bool {
        match self.kind {
            RouteKind::Health
            | RouteKind::Ready
            | RouteKind::Openapi
            | RouteKind::Docs
            | RouteKind::OauthToken => false,
            RouteKind::Mirror | RouteKind::Facade => true,
        }
    }
}

pub enum Match<'a> {
    Found(&'a Arc<Route>, Vec<(String, String)>),
    /// The path exists for other methods.
    WrongMethod,
    NotFound,
}

#[derive(Default)]
pub struct RouteTable {
    by_method: HashMap<http::Method, matchit::Router<Arc<Route>>>,
    all: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn build(
        routes: &[RouteConfig],
        perms: &mut PermissionRegistry,
    ) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut table = RouteTable::default();
        let mut names = std::collections::HashSet::new();
        for (i, rc) in routes.iter().enumerate() {
            let at = format!("routes[{i}] ({})", rc.name);
            if !names.insert(rc.name.clone()) {
                errors.push(format!("{at}.name: duplicate route name"));
            }
            let method = match http::Method::from_bytes(rc.method.as_bytes()) {
                Ok(m) if rc.method.chars().all(|c| c.is_ascii_uppercase()) => m,
                _ => {
                    errors.push(format!(
                        "{at}.method: '{}' is not an upper-case HTTP method",
                        rc.method
                    ));
                    continue;
                }
            };
            match path::normalize(&rc.path) {
                Ok(p) if p == rc.path => {}
                _ => {
                    errors.push(format!(
                        "{at}.path: '{}' must be a normalised absolute path template",
                        rc.path
                    ));
                    continue;
                }
            }
            let permission = match &rc.permission {
                Some(p) => match perms.intern(p) {
                    Ok(id) => Some((id, Arc::<str>::from(p.as_str()))),
                    Err(e) => {
                        errors.push(format!("{at}.permission: {e}"));
                        continue;
                    }
                },
                None => None,
            };
            let handler = match Handler::for_route(rc) {
                Ok(h) => h,
                Err(e) => {
                    errors.push(format!("{at}.{e}"));
                    continue;
                }
            };
            let route = Arc::new(Route {
                name: rc.name.as_str().into(),
                method: method.clone(),
                template: rc.path.as_str().into(),
                kind: rc.kind,
                permission,
                json_body: rc.json_body,
                handler,
                list: rc.list,
                schema: rc.schema.as_deref().map(Arc::from),
                series: Default::default(),
            });
            let router = table.by_method.entry(method).or_default();
            if let Err(e) = router.insert(rc.path.clone(), route.clone()) {
                errors.push(format!("{at}.path: {e}"));
                continue;
            }
            table.all.push(route);
        }
        if errors.is_empty() {
            Ok(table)
        } else {
            Err(errors)
        }
    }

    /// Looks a normalised path up.
    pub fn find(&self, method: &http::Method, path: &str) -> Match<'_> {
        if let Some(router) = self.by_method.get(method)
            && let Ok(m) = router.at(path)
        {
            let params = m
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            return Match::Found(m.value, params);
        }
        if self.by_method.values().any(|r| r.at(path).is_ok()) {
            Match::WrongMethod
        } else {
            Match::NotFound
        }
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.all
    }
}
