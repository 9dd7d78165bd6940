//! Reading a request body whole in `request_filter`. The limit is checked as bytes arrive, so a
//! body past it is refused without being read into memory; the limit never exceeds Pingora's
//! 64 KiB replay buffer, which is what lets the proxy hand the bytes upstream (and again on a
//! retry) from `request_body_filter`. What to read and what to check is decided by
//! `validate::plan`; the bytes are judged by `validate::finish`.

use crate::validate::body::BodyError;
use bytes::{Bytes, BytesMut};
use pingora_proxy::Session;
use std::time::Duration;

/// Reads the body whole within `deadline`, refusing it once it passes `limit` bytes. The
/// deadline covers the whole body, so a caller trickling bytes cannot hold the request (and
/// nothing upstream is claimed while it reads: `upstream_peer` comes after).
pub async fn read_whole(
    session: &mut Session,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, BodyError> {
    if let Some(len) = declared_length(session)
        && len > limit
    {
        return Err(BodyError::TooLarge { limit });
    }
    session.enable_retry_buffering();
    match tokio::time::timeout(deadline, read_all(session, limit)).await {
        Ok(read) => read,
        Err(_) => Err(BodyError::Timeout),
    }
}

async fn read_all(session: &mut Session, limit: usize) -> Result<Bytes, BodyError> {
    let mut buf = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return Err(BodyError::TooLarge { limit });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(_) => return Err(BodyError::Read),
        }
    }
    Ok(buf.freeze())
}

/// The request declares a body: a `Content-Length` above 0, or a `Transfer-Encoding`.
pub fn declares_body(session: &Session) -> bool {
    let headers = &session.req_header().headers;
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || declared_length(session).is_some_and(|n| n > 0)
}

fn declared_length(session: &Session) -> Option<usize> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
}
