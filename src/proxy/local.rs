//! Routes the proxy answers itself: liveness, readiness and the OAuth2 token endpoint.

use super::ctx::Ctx;
use super::respond;
use crate::errors::ApiError;
use crate::runtime::Runtime;
use bytes::Bytes;
use pingora::prelude::*;
use pingora_proxy::Session;
use serde_json::json;

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

/// Ready when the config is loaded and every account has an endpoint that answered the
/// last probe.
pub async fn ready(session: &mut Session, ctx: &mut Ctx, rt: &Runtime) -> Result<()> {
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
    if all_ready {
        let body = json!({"status": "ready", "config_version": rt.version, "accounts": accounts});
        respond::json(session, ctx, 200, Bytes::from(body.to_string()), &[]).await
    } else {
        let mut details = serde_json::Map::new();
        details.insert("accounts".into(), serde_json::Value::Object(accounts));
        let err = ApiError::unavailable("not_ready", "OrionVM is not reachable for every account")
            .with_details(details)
            .with_retry_after(2);
        respond::error(session, ctx, err).await
    }
}

/// `POST /oauth/token`: reads the body (small), lets `auth::token_endpoint` decide.
pub async fn oauth_token(session: &mut Session, ctx: &mut Ctx) -> Result<()> {
    let Some(rt) = ctx.runtime.clone() else {
        return respond::error(session, ctx, ApiError::internal("no configuration loaded")).await;
    };
    let body = match super::body::read_whole(session, crate::auth::token_endpoint::MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return respond::error(session, ctx, e.into()).await,
    };
    ctx.request_bytes = body.len();
    let client_ip = ctx.client_ip;
    let outcome = crate::auth::token_endpoint::issue(
        &rt.auth,
        &rt.config.oauth,
        client_ip,
        &session.req_header().headers,
        &body,
    )
    .await;
    match outcome {
        Ok(json) => {
            let extra = [("pragma", "no-cache".to_string())];
            respond::json(session, ctx, 200, json, &extra).await
        }
        Err(e) => {
            ctx.auth_failure = Some(e.reason());
            crate::metrics::auth_failure(e.reason());
            respond::error(session, ctx, e.into()).await
        }
    }
}
