//! Writing answers that the proxy makes itself: the error body and local JSON answers.

use super::ctx::Ctx;
use crate::errors::ApiError;
use crate::request::Decision;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora_proxy::Session;

/// Writes a JSON answer with the request id. Returns the status for logging.
pub async fn json(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    body: Bytes,
    extra: &[(&'static str, String)],
) -> Result<()> {
    typed(session, ctx, status, "application/json", body, extra).await
}

/// Writes an answer of the proxy's own with its media type and the request id.
pub async fn typed(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    content_type: &'static str,
    body: Bytes,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let mut header = ResponseHeader::build(status, Some(4 + extra.len()))?;
    header.insert_header("content-type", content_type)?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("x-request-id", ctx.request_id.as_str())?;
    header.insert_header("cache-control", "no-store")?;
    for (name, value) in extra {
        header.append_header(*name, value.as_str())?;
    }
    ctx.response_bytes = body.len();
    if let Some(mut claim) = ctx.idem.take() {
        // Stored before the caller has the answer: a retry right after it gets the replay.
        claim.capture_head(status, extra.iter().map(|(n, v)| (*n, v.as_str())));
        claim.capture_body(Some(&body), true);
        let outcome = super::idempotency_outcome(ctx, &claim);
        crate::idempotency::finish(*claim, outcome).await;
    }
    if let Some((log, req, obs)) = ctx.observed(session) {
        crate::observe::on_local_answer(log, &req, obs, status, &header.headers, &body).await;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// Answers with the error body and remembers the error for the logs.
pub async fn error(session: &mut Session, ctx: &mut Ctx, err: ApiError) -> Result<()> {
    let body = err.render(&ctx.request_id);
    let mut extra = err.headers.clone();
    if let Some(s) = err.retry_after {
        extra.push(("retry-after", s.to_string()));
    }
    let status = err.status;
    ctx.error = Some(err);
    // A request body left unread (a refused upload) would be taken for the next request.
    if !session.as_downstream_mut().is_body_done() {
        session.as_downstream_mut().set_keepalive(None);
    }
    let media = crate::errors::media_type(session.req_header().headers.get("accept"));
    typed(session, ctx, status, media, body, &extra).await
}

/// Acts on a concern's decision: its reply or its refusal written, or nothing (`Continue`).
/// `Ok(true)`: answered.
pub async fn decision<E>(
    session: &mut Session,
    ctx: &mut Ctx,
    decision: Decision<E>,
) -> Result<bool>
where
    ApiError: From<E>,
{
    match decision {
        Decision::Continue => Ok(false),
        Decision::Reply(r) => {
            json(session, ctx, r.status, r.body, &r.headers).await?;
            Ok(true)
        }
        Decision::Fail(e) => {
            error(session, ctx, e.into()).await?;
            Ok(true)
        }
    }
}
