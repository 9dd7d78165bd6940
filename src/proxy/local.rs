//! Routes the proxy answers itself: liveness, readiness, the OAuth2 token endpoint, and what
//! the facade decides (its routes, the API document, mirror lists that page, filter or sort).

use super::ctx::Ctx;
use super::respond;
use crate::config::model::RouteKind;
use crate::errors::ApiError;
use crate::limits::cache::Fetch;
use crate::request::Decision;
use crate::runtime::State;
use crate::upstream::client::Answer;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora_proxy::Session;
use serde_json::json;
use std::sync::Arc;

/// The routes the proxy answers itself, by the kind of the request's route. `Ok(false)`: not
/// answered here, the request goes on to OrionVM.
pub async fn answer(session: &mut Session, ctx: &mut Ctx, state: &State) -> Result<bool> {
    match ctx.route.as_ref().map(|r| r.kind) {
        Some(RouteKind::Health) => health(session, ctx).await.map(|()| true),
        Some(RouteKind::Ready) => ready(session, ctx, state).await.map(|()| true),
        Some(RouteKind::OauthToken) => oauth_token(session, ctx, state).await.map(|()| true),
        Some(RouteKind::Docs) => docs(session, ctx).await.map(|()| true),
        // The facade, the API document, and mirror lists asked to page, filter or sort.
        Some(RouteKind::Facade | RouteKind::Openapi | RouteKind::Mirror) => {
            facade(session, ctx, state).await
        }
        None => Ok(false),
    }
}

pub async fn health(session: &mut Session, ctx: &mut Ctx) -> Result<()> {
    respond::json(
        session,
        ctx,
        200,
        Bytes::from_static(br#"{"status":"ok"}"#),
        &[],
    )
    .await
}

/// `/docs` (the Redoc page over `/openapi.json`) and its script, both embedded in the binary.
pub async fn docs(session: &mut Session, ctx: &mut Ctx) -> Result<()> {
    let (content_type, body) = crate::facade::docs::asset(&ctx.path);
    respond::typed(
        session,
        ctx,
        200,
        content_type,
        Bytes::from_static(body),
        &[],
    )
    .await
}

/// Ready when the config is loaded and every account has an endpoint that answered the
/// last probe. With a shared state backend, the answer says whether it answers a PING within
/// its command timeout (`state`); an unreachable one makes the node not ready only when the
/// limits fail closed (`state.on_unavailable: closed`), since a node that fails open still
/// serves.
pub async fn ready(session: &mut Session, ctx: &mut Ctx, state: &State) -> Result<()> {
    let Some(rt) = ctx.runtime.clone() else {
        return respond::error(session, ctx, ApiError::internal("no configuration loaded")).await;
    };
    let mut accounts = serde_json::Map::new();
    let mut all_ready = true;
    for (name, account) in &rt.upstreams.accounts {
        let endpoints: Vec<_> = account
            .endpoints
            .iter()
            .map(|e| json!({"name": &*e.name, "up": e.health.is_up(), "checked": e.health.is_checked()}))
            .collect();
        let up = account.endpoints.iter().any(|e| e.health.is_up());
        all_ready &= up;
        accounts.insert(name.clone(), json!({"ready": up, "endpoints": endpoints}));
    }
    let backend = match &state.stores.shared {
        None => json!({"backend": "memory", "reachable": true}),
        Some(shared) => match shared.redis.ping().await {
            Ok(rtt) => {
                json!({"backend": "redis", "reachable": true, "ping_ms": rtt.as_secs_f64() * 1000.0})
            }
            Err(e) => {
                if rt.config.state.on_unavailable == crate::config::state::OnUnavailable::Closed {
                    all_ready = false;
                }
                json!({"backend": "redis", "reachable": false, "error": e.to_string()})
            }
        },
    };
    if all_ready {
        let body = json!({"status": "ready", "config_version": rt.version, "accounts": accounts, "state": backend});
        respond::json(session, ctx, 200, Bytes::from(body.to_string()), &[]).await
    } else {
        let mut details = serde_json::Map::new();
        details.insert("accounts".into(), serde_json::Value::Object(accounts));
        details.insert("state".into(), backend);
        let err =
            ApiError::unavailable("not_ready", "OrionVM or the shared state is not reachable")
                .with_details(details)
                .with_retry_after(2);
        respond::error(session, ctx, err).await
    }
}

/// `POST /oauth/token`: reads the body (small), lets `auth::token_endpoint` decide, writes
/// its answer.
pub async fn oauth_token(session: &mut Session, ctx: &mut Ctx, state: &State) -> Result<()> {
    let Some(rt) = ctx.runtime.clone() else {
        return respond::error(session, ctx, ApiError::internal("no configuration loaded")).await;
    };
    let deadline = std::time::Duration::from_millis(rt.config.server.timeouts.body_read_ms);
    let limit = crate::auth::token_endpoint::MAX_BODY;
    let body = match super::body::read_whole(session, limit, deadline).await {
        Ok(b) => b,
        Err(e) => return respond::error(session, ctx, e.into()).await,
    };
    ctx.request_bytes = body.len();
    let client_ip = ctx.client_ip;
    let outcome = crate::auth::token_endpoint::answer(
        &rt.auth,
        &state.auth,
        &*state.stores.counters,
        client_ip,
        &session.req_header().headers,
        &body,
    )
    .await;
    match outcome {
        Ok(reply) => respond::json(session, ctx, 200, reply.body, &reply.headers).await,
        Err(e) => {
            ctx.auth_failure = Some(e.reason());
            respond::error(session, ctx, e.into()).await
        }
    }
}

/// The facade, the API document, and mirror lists asked to page, filter or sort: lets
/// `facade::answer` decide and writes its answer. `Ok(false)`: not the facade's, the request
/// goes on to OrionVM.
pub async fn facade(session: &mut Session, ctx: &mut Ctx, state: &State) -> Result<bool> {
    let Some(rt) = ctx.runtime.clone() else {
        respond::error(session, ctx, ApiError::internal("no configuration loaded")).await?;
        return Ok(true);
    };
    let env = crate::facade::Env {
        config: &rt.config.facade,
        routes: rt.routes.routes(),
        tasks: &state.stores.tasks,
        describe: crate::errors::facade::task_error,
        changed: changed_hook(&rt, state),
        trace: ctx.trace.as_ref().map(|t| t.calls()),
    };
    let decision = {
        let view = ctx.view(session.req_header());
        let body = crate::facade::Body {
            bytes: ctx.body.as_deref(),
            validated: ctx.validated.as_ref(),
        };
        crate::facade::answer(view, body, &env).await
    };
    if let (Some(claim), Decision::Fail(e)) = (ctx.idem.as_mut(), &decision) {
        claim.unsure = e.may_have_acted();
    }
    respond::decision(session, ctx, decision).await
}

/// For a facade GET that the limits coalesce and cache (`limits.cache.routes`): how one shared
/// call makes the facade's answer, on its own (owned copies of the request, the runtime and the
/// task store), as the answer the waiting callers get. `None` for every other request (no
/// allocation on the mirror's path).
pub fn cached_facade_read(
    req: &RequestHeader,
    ctx: &Ctx,
    state: &Arc<State>,
) -> Option<Box<dyn FnOnce() -> Fetch + Send + 'static>> {
    if !ctx.limits.cached || ctx.route.as_ref()?.kind != RouteKind::Facade {
        return None;
    }
    let rt = ctx.runtime.clone()?;
    let route = ctx.route.clone()?;
    let (principal, tenant) = (ctx.principal.clone(), ctx.tenant.clone());
    let (path, params, request_id) = (ctx.path.clone(), ctx.params.clone(), ctx.request_id.clone());
    let trace = ctx.trace.as_ref().map(|t| t.calls());
    let method = req.method.clone();
    let query = req.uri.query().map(str::to_string);
    let tasks = state.stores.tasks.clone();
    Some(Box::new(move || -> Fetch {
        Box::pin(async move {
            let headers = http::HeaderMap::new();
            let view = crate::request::RequestView {
                method: &method,
                path: &path,
                query: query.as_deref(),
                headers: &headers,
                route: Some(&route),
                params: &params,
                principal: principal.as_ref(),
                tenant: tenant.as_ref(),
                client_ip: None,
                request_id: &request_id,
            };
            let env = crate::facade::Env {
                config: &rt.config.facade,
                routes: rt.routes.routes(),
                tasks: &tasks,
                describe: crate::errors::facade::task_error,
                changed: None,
                trace,
            };
            let started = std::time::Instant::now();
            let decision = crate::facade::answer(view, Default::default(), &env).await;
            let (status, body, headers) = match decision {
                Decision::Reply(r) => (r.status, r.body, r.headers),
                Decision::Fail(e) => {
                    let err = ApiError::from(e);
                    (err.status, err.render(&request_id), err.headers)
                }
                Decision::Continue => (
                    500,
                    ApiError::internal("the facade did not answer").render(&request_id),
                    Vec::new(),
                ),
            };
            Ok(Answer {
                status,
                body,
                elapsed: started.elapsed(),
                headers,
            })
        })
    }))
}

/// What the facade tells of the objects it changes: the limits' micro-cache drops their reads
/// (`None` when the limits are off: nothing is cached).
fn changed_hook(rt: &crate::runtime::Runtime, state: &State) -> Option<crate::facade::Changed> {
    if !rt.limits.enabled || rt.limits.cache.is_none() {
        return None;
    }
    Some(Arc::new(state.limits.invalidator()))
}
