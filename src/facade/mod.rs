//! The REST facade (`/v1`, DESIGN.md section 3): instances with lifecycle rules checked before
//! OrionVM is called, composite operations run as tasks, lists that page, filter and sort (also
//! for the mirror's lists when asked), and the OpenAPI document.
//!
//! Everything here talks to OrionVM through [`crate::upstream::client::call`], as the caller's
//! tenant. `request_filter` makes one call into [`answer`].

/// The facade's part of the process state (`runtime::State`).
#[derive(Default)]
pub struct FacadeState {}

pub mod body;
pub mod instances;
pub mod lifecycle;
pub mod lists;
pub mod openapi;
pub mod tasks;

use crate::config::model::{FacadeConfig, RouteConfig, RouteKind};
use crate::errors::ApiError;
use crate::proxy::ctx::Ctx;
use crate::proxy::respond;
use crate::upstream::Tenant;
use crate::upstream::client::{self, CallError};
use bytes::Bytes;
use lists::{ListKind, ListQuery};
use pingora_proxy::Session;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// The facade's operations; a `kind: facade` route names one as its `handler`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    InstancesList,
    InstancesCreate,
    InstancesGet,
    InstancesPatch,
    InstancesDelete,
    InstancesPoweron,
    InstancesPoweroff,
    InstancesReboot,
    InstancesSnapshot,
    TasksList,
    TasksGet,
}

impl Handler {
    pub const ALL: &'static [(&'static str, Handler)] = &[
        ("instances.list", Handler::InstancesList),
        ("instances.create", Handler::InstancesCreate),
        ("instances.get", Handler::InstancesGet),
        ("instances.patch", Handler::InstancesPatch),
        ("instances.delete", Handler::InstancesDelete),
        ("instances.poweron", Handler::InstancesPoweron),
        ("instances.poweroff", Handler::InstancesPoweroff),
        ("instances.reboot", Handler::InstancesReboot),
        ("instances.snapshot", Handler::InstancesSnapshot),
        ("tasks.list", Handler::TasksList),
        ("tasks.get", Handler::TasksGet),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, h)| *h == self)
            .map(|(n, _)| *n)
            .unwrap_or("unknown")
    }

    /// The handler of a configured route, checked: facade routes need a known one, other
    /// routes have none; only a mirror `GET` can be a `list`.
    pub fn for_route(rc: &RouteConfig) -> Result<Option<Handler>, String> {
        if rc.list && (rc.kind != RouteKind::Mirror || rc.method != "GET") {
            return Err("list: only a mirror GET route can be a list".into());
        }
        match (rc.kind, &rc.handler) {
            (RouteKind::Facade, Some(name)) => Self::ALL
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, h)| Some(*h))
                .ok_or_else(|| {
                    let known: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                    format!(
                        "handler: '{name}' is not a facade operation (known: {})",
                        known.join(", ")
                    )
                }),
            (RouteKind::Facade, None) => Err("handler: a facade route needs one".into()),
            (_, Some(_)) => Err("handler: only facade routes have a handler".into()),
            (_, None) => Ok(None),
        }
    }
}

/// Checks the `facade` section of the config.
pub fn check_config(c: &FacadeConfig) -> Vec<String> {
    let mut errors = Vec::new();
    if c.transition_timeout_ms == 0 || c.transition_timeout_ms > 3_600_000 {
        errors.push("facade.transition_timeout_ms: must be between 1 and 3600000".into());
    }
    if c.poll_interval_ms < 10 || c.poll_interval_ms > 60_000 {
        errors.push("facade.poll_interval_ms: must be between 10 and 60000".into());
    }
    if c.max_tasks == 0 || c.max_tasks > 1_000_000 {
        errors.push("facade.max_tasks: must be between 1 and 1000000".into());
    }
    errors
}

/// The facade's errors; each becomes the one error body.
#[derive(Debug)]
pub enum FacadeError {
    /// The call to OrionVM failed (connect, timeout, credentials).
    Call(CallError),
    /// OrionVM answered an error status; its body is normalised like the mirror's.
    Upstream(u16, Bytes),
    /// OrionVM answered something that is not what its contract says.
    UpstreamShape(String),
    /// The instance's state does not allow the action.
    InvalidState {
        action: &'static str,
        state: String,
        allowed: Vec<&'static str>,
        retry_after: Option<u64>,
    },
    /// A query parameter is wrong.
    BadParameter {
        name: String,
        message: String,
    },
    /// The request body is wrong: (path, message) pairs.
    Invalid(Vec<(String, String)>),
    NotFound(&'static str, String),
}

impl FacadeError {
    pub fn invalid(path: &str, msg: &str) -> Self {
        FacadeError::Invalid(vec![(path.to_string(), msg.to_string())])
    }

    pub fn invalid_all(errs: Vec<(&str, String)>) -> Result<(), Self> {
        if errs.is_empty() {
            Ok(())
        } else {
            Err(FacadeError::Invalid(
                errs.into_iter().map(|(p, m)| (p.to_string(), m)).collect(),
            ))
        }
    }
}

impl From<CallError> for FacadeError {
    fn from(e: CallError) -> Self {
        FacadeError::Call(e)
    }
}

impl From<FacadeError> for ApiError {
    fn from(e: FacadeError) -> ApiError {
        match e {
            FacadeError::Call(c) => c.into(),
            // The caller authenticated to the proxy; OrionVM refusing the proxy's own
            // credentials (after the one retry) is the proxy's failure, as on the mirror.
            FacadeError::Upstream(401, _) => ApiError::bad_gateway(
                "upstream_auth_failed",
                "OrionVM refused the proxy's credentials",
            ),
            FacadeError::Upstream(status, body) => crate::errors::from_upstream(status, &body),
            FacadeError::UpstreamShape(what) => ApiError::bad_gateway(
                "bad_gateway",
                format!("OrionVM answered unexpectedly: {what}"),
            ),
            FacadeError::InvalidState {
                action,
                state,
                allowed,
                retry_after,
            } => {
                let allowed_text = if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                };
                let mut details = Map::new();
                details.insert("state".into(), json!([state]));
                details.insert("allowed_actions".into(), json!(allowed));
                let mut err = ApiError::new(
                    409,
                    "invalid_state",
                    "The instance's state does not allow this action",
                    format!(
                        "{action} is not allowed while the instance is {state}; allowed: {allowed_text}"
                    ),
                )
                .with_details(details);
                if let Some(s) = retry_after {
                    err = err.with_retry_after(s);
                }
                err
            }
            FacadeError::BadParameter { name, message } => ApiError::new(
                400,
                "invalid_parameter",
                "A query parameter is invalid",
                format!("{name}: {message}"),
            )
            .with_detail_entry(name, message),
            FacadeError::Invalid(list) => {
                let detail = list
                    .iter()
                    .map(|(p, m)| format!("{p}: {m}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                list.into_iter().fold(
                    ApiError::new(422, "validation_failed", "Request body is invalid", detail),
                    |e, (p, m)| e.with_detail_entry(p, m),
                )
            }
            FacadeError::NotFound(what, id) => ApiError::new(
                404,
                "not_found",
                "Not found",
                format!("{what} {id} not found"),
            ),
        }
    }
}

/// OrionVM as one tenant, for one request or task.
#[derive(Clone)]
pub struct Orion {
    pub tenant: Arc<Tenant>,
    pub request_id: String,
}

impl Orion {
    /// One call; a success status with a JSON body is the value, anything else an error.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, FacadeError> {
        let answer =
            client::call(&self.tenant.account, method, path, body, &self.request_id).await?;
        if !answer.is_success() {
            return Err(FacadeError::Upstream(answer.status, answer.body));
        }
        answer
            .json()
            .ok_or_else(|| FacadeError::UpstreamShape(format!("{path} did not answer JSON")))
    }

    pub async fn get(&self, path: &str) -> Result<Value, FacadeError> {
        self.call(http::Method::GET, path, None).await
    }

    /// A bare-array list.
    pub async fn list(&self, path: &str) -> Result<Vec<Value>, FacadeError> {
        match self.get(path).await? {
            Value::Array(items) => Ok(items),
            _ => Err(FacadeError::UpstreamShape(format!(
                "{path} did not answer an array"
            ))),
        }
    }
}

/// What a facade operation answers.
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn new(status: u16, body: Value) -> Self {
        Reply {
            status,
            body,
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// Answers facade routes, the API document, and mirror lists asked to page, filter or sort.
/// `Ok(false)`: not ours, the request goes on to OrionVM untouched.
pub async fn answer(session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
    let Some(route) = ctx.route.clone() else {
        return Ok(false);
    };
    let query = session.req_header().uri.query().map(str::to_string);
    let result = match route.kind {
        RouteKind::Openapi => {
            let doc = match &ctx.runtime {
                Some(rt) => openapi::document(rt.routes.routes()),
                None => openapi::document(&[]),
            };
            Ok(Reply::new(200, doc))
        }
        RouteKind::Facade => match route.handler {
            Some(h) => instances::handle(h, ctx, query.as_deref()).await,
            None => Err(FacadeError::NotFound("operation", route.name.to_string())),
        },
        RouteKind::Mirror
            if route.list
                && session.req_header().method == http::Method::GET
                && ListKind::Instances.asked(query.as_deref()) =>
        {
            mirror_list(ctx, query.as_deref()).await
        }
        _ => return Ok(false),
    };
    match result {
        Ok(reply) => {
            let body = Bytes::from(serde_json::to_vec(&reply.body).unwrap_or_default());
            respond::json(session, ctx, reply.status, body, &reply.headers).await?;
        }
        Err(e) => respond::error(session, ctx, e.into()).await?,
    }
    Ok(true)
}

fn orion_of(ctx: &Ctx) -> Result<Orion, FacadeError> {
    match &ctx.tenant {
        Some(t) => Ok(Orion {
            tenant: t.clone(),
            request_id: ctx.request_id.clone(),
        }),
        None => Err(FacadeError::Call(CallError::Other("no tenant".into()))),
    }
}

/// A mirror list with list parameters: the whole bare array from OrionVM, shaped here, still a
/// bare array, with `X-Total-Count` and `Link`.
async fn mirror_list(ctx: &Ctx, query: Option<&str>) -> Result<Reply, FacadeError> {
    let q = ListQuery::parse(ListKind::Instances, query)?;
    let items = orion_of(ctx)?.list(&ctx.path).await?;
    let page = q.apply(items);
    Ok(Reply::new(200, Value::Array(page.items))
        .header("x-total-count", page.total.to_string())
        .header("link", q.link_header(&ctx.path, page.total)))
}

/// The facade's list body with its headers.
pub fn list_reply(q: &ListQuery, path: &str, items: Vec<Value>) -> Reply {
    let page = q.apply(items);
    Reply::new(
        200,
        json!({"items": page.items, "total": page.total, "limit": q.limit, "offset": q.offset}),
    )
    .header("x-total-count", page.total.to_string())
    .header("link", q.link_header(path, page.total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(kind: RouteKind, handler: Option<&str>, list: bool) -> RouteConfig {
        RouteConfig {
            name: "r".into(),
            method: "GET".into(),
            path: "/v1/x".into(),
            kind,
            permission: None,
            json_body: false,
            handler: handler.map(str::to_string),
            list,
            schema: None,
            strict: None,
            rewrite: None,
        }
    }

    #[test]
    fn routes_name_known_handlers() {
        let ok = route(RouteKind::Facade, Some("tasks.get"), false);
        assert_eq!(Handler::for_route(&ok), Ok(Some(Handler::TasksGet)));
        for (r, needle) in [
            (
                route(RouteKind::Facade, Some("instances.explode"), false),
                "instances.explode",
            ),
            (route(RouteKind::Facade, None, false), "needs one"),
            (
                route(RouteKind::Mirror, Some("tasks.get"), false),
                "only facade",
            ),
            (route(RouteKind::Facade, Some("tasks.get"), true), "list:"),
        ] {
            let e = Handler::for_route(&r).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        for (name, h) in Handler::ALL {
            assert_eq!(h.name(), *name);
        }
    }

    #[test]
    fn config_errors_name_their_key() {
        let bad = FacadeConfig {
            transition_timeout_ms: 0,
            poll_interval_ms: 1,
            max_tasks: 0,
        };
        let errs = check_config(&bad).join("\n");
        for key in [
            "facade.transition_timeout_ms",
            "facade.poll_interval_ms",
            "facade.max_tasks",
        ] {
            assert!(errs.contains(key), "{errs}");
        }
        assert!(check_config(&FacadeConfig::default()).is_empty());
    }

    #[test]
    fn refused_transition_is_a_409_naming_state_and_actions() {
        let e: ApiError = lifecycle::check(lifecycle::Action::Poweron, "running")
            .unwrap_err()
            .into();
        assert_eq!((e.status, e.code), (409, "invalid_state"));
        assert_eq!(e.details["state"], json!(["running"]));
        assert_eq!(
            e.details["allowed_actions"],
            json!(["poweroff", "reboot", "snapshot", "patch", "delete"])
        );
        assert!(e.detail.contains("poweron") && e.detail.contains("running"));
        assert_eq!(e.retry_after, None);
        let e: ApiError = FacadeError::Upstream(401, Bytes::new()).into();
        assert_eq!((e.status, e.code), (502, "upstream_auth_failed"));
    }
}
