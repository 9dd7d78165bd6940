//! The REST facade (`/v1`; README, "The REST facade"): instances with lifecycle rules checked before
//! OrionVM is called, composite operations run as tasks, lists that page, filter and sort (also
//! for the mirror's lists when asked), and the OpenAPI document.
//!
//! Everything here talks to OrionVM through [`crate::upstream::client::call`], as the caller's
//! tenant. The facade decides and the proxy writes: `request_filter` makes one call into
//! [`answer`] with the request's view, its body and what the facade needs of the runtime
//! ([`Env`]), and writes the [`Decision`] it gets back.

/// The facade's part of the process state (`runtime::State`). Its tasks are in the state's
/// task store (`state.stores.tasks`), so that another backend can hold them.
#[derive(Default)]
pub struct FacadeState {}

pub mod body;
pub mod docs;
pub mod instances;
pub mod lifecycle;
pub mod lists;
pub mod openapi;
pub mod tasks;

#[cfg(test)]
mod handler_tests;

use crate::config::model::{FacadeConfig, RouteKind};
use crate::request::{Decision, RequestView};
use crate::routes::Route;
use crate::store::StoreError;
use crate::store::tasks::TaskStore;
use crate::upstream::Tenant;
use crate::upstream::client::{self, CallError};
use crate::validate::Validated;
use bytes::Bytes;
use lists::{ListKind, ListQuery};
use serde_json::{Value, json};
use std::sync::Arc;
use tasks::DescribeError;

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
    /// The task store failed (a remote backend timed out or is gone).
    Store(StoreError),
}

impl FacadeError {
    /// Whether OrionVM may have acted although the facade got no good answer (a timeout, a
    /// reset, a 5xx): an idempotent create then counts its outcome as unknown.
    pub fn may_have_acted(&self) -> bool {
        match self {
            FacadeError::Call(e) => !matches!(
                e,
                CallError::Connect | CallError::Credentials(_) | CallError::Refused(_)
            ),
            FacadeError::Upstream(status, _) => *status >= 500,
            _ => false,
        }
    }

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

impl From<StoreError> for FacadeError {
    fn from(e: StoreError) -> Self {
        FacadeError::Store(e)
    }
}

/// Told of every object the facade changes at OrionVM (tenant, object id), so that cached
/// reads of it are dropped (the limits' micro-cache; handed in by the proxy).
pub type Changed = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// OrionVM as one tenant, for one request or task.
#[derive(Clone)]
pub struct Orion {
    pub tenant: Arc<Tenant>,
    pub request_id: String,
    /// Told of each object a call other than GET changed.
    pub changed: Option<Changed>,
    /// The request's trace: each call is a span of it (`None` when not traced).
    pub trace: crate::upstream::trace::Trace,
}

impl Orion {
    /// One call; a success status with a JSON body is the value, anything else an error.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, FacadeError> {
        let mutation = crate::request::is_mutation(&method);
        let answer = client::call_traced(
            &self.tenant.account,
            method,
            path,
            body,
            &self.request_id,
            self.trace.as_deref(),
        )
        .await;
        if mutation
            && let Some(changed) = &self.changed
            && let Some(id) = path
                .strip_prefix("/api/v1/")
                .and_then(|p| p.split('/').nth(1))
        {
            changed(&self.tenant.name, id.split('?').next().unwrap_or(id));
        }
        let answer = answer?;
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

/// What a facade operation answers: a JSON value, serialised once at the end.
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

    /// The reply the proxy writes.
    pub fn into_reply(self) -> crate::request::Reply {
        // Serialising a `Value` cannot fail.
        let body = Bytes::from(serde_json::to_vec(&self.body).unwrap_or_default());
        crate::request::Reply {
            status: self.status,
            headers: self.headers,
            body,
        }
    }
}

/// What the facade needs from the runtime in force, for one request.
pub struct Env<'a> {
    /// Task timing and the cap on kept tasks.
    pub config: &'a FacadeConfig,
    /// The route table in force: the API document describes it.
    pub routes: &'a [Arc<Route>],
    /// Where tasks live (`state.stores.tasks`).
    pub tasks: &'a Arc<dyn TaskStore>,
    /// How a task records a failed step: `errors::facade::task_error`.
    pub describe: DescribeError,
    /// Told of the objects the facade (and its tasks) change at OrionVM.
    pub changed: Option<Changed>,
    /// The request's trace (`None` when not traced): the facade's calls are its spans.
    pub trace: crate::upstream::trace::Trace,
}

/// The request body as the proxy read it: the bytes, and the value that the route's schema
/// checked (`validate`), when the route has a JSON body.
#[derive(Clone, Copy, Default)]
pub struct Body<'a> {
    pub bytes: Option<&'a [u8]>,
    pub validated: Option<&'a Validated>,
}

/// One request as the facade's handlers see it.
pub(crate) struct Call<'a> {
    pub req: RequestView<'a>,
    pub body: Body<'a>,
    pub env: &'a Env<'a>,
}

/// Answers facade routes, the API document, and mirror lists asked to page, filter or sort.
/// `Continue`: not ours, the request goes on to OrionVM untouched.
pub async fn answer<'a>(
    req: RequestView<'a>,
    body: Body<'a>,
    env: &'a Env<'a>,
) -> Decision<FacadeError> {
    let Some(route) = req.route else {
        return Decision::Continue;
    };
    let call = Call { req, body, env };
    let result = match route.kind {
        RouteKind::Openapi => Ok(Reply::new(200, openapi::document(env.routes))),
        RouteKind::Facade => match route.handler {
            Some(h) => instances::handle(h, &call).await,
            None => Err(FacadeError::NotFound("operation", route.name.to_string())),
        },
        RouteKind::Mirror
            if route.list
                && *req.method == http::Method::GET
                && ListKind::Instances.asked(req.query) =>
        {
            mirror_list(&call).await
        }
        _ => return Decision::Continue,
    };
    match result {
        Ok(reply) => Decision::Reply(reply.into_reply()),
        Err(e) => {
            if let FacadeError::Store(why) = &e {
                log::warn!("request {}: task store: {why}", req.request_id);
            }
            Decision::Fail(e)
        }
    }
}

/// OrionVM as the caller's tenant, told of changes and traced as `env` says.
pub(crate) fn orion_of(req: &RequestView<'_>, env: &Env<'_>) -> Result<Orion, FacadeError> {
    match req.tenant {
        Some(t) => Ok(Orion {
            tenant: t.clone(),
            request_id: req.request_id.to_string(),
            changed: env.changed.clone(),
            trace: env.trace.clone(),
        }),
        None => Err(FacadeError::Call(CallError::Other("no tenant".into()))),
    }
}

/// A mirror list with list parameters: the whole bare array from OrionVM, shaped here, still a
/// bare array, with `X-Total-Count` and `Link`.
async fn mirror_list(call: &Call<'_>) -> Result<Reply, FacadeError> {
    let q = ListQuery::parse(ListKind::Instances, call.req.query)?;
    let items = orion_of(&call.req, call.env)?.list(call.req.path).await?;
    let page = q.apply(items);
    Ok(Reply::new(200, Value::Array(page.items))
        .header("x-total-count", page.total.to_string())
        .header("link", q.link_header(call.req.path, page.total)))
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
}
