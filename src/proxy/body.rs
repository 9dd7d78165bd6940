//! Reading a request body whole in `request_filter`. The limit is checked as bytes arrive, so a
//! body past it is refused without being read into memory; the limit never exceeds Pingora's
//! 64 KiB replay buffer, which is what lets the proxy hand the bytes upstream (and again on a
//! retry) from `request_body_filter`. What to read and what to check is decided by
//! `validate::plan`; the bytes are judged by `validate::finish`.

use crate::validate::body::BodyError;
use bytes::{Bytes, BytesMut};
use pingora_proxy::Session;

/// Reads the body whole, refusing it once it passes `limit` bytes.
pub async fn read_whole(session: &mut Session, limit: usize) -> Result<Bytes, BodyError> {
    if let Some(len) = declared_length(session)
        && len > limit
    {
        return Err(BodyError::TooLarge { limit });
    }
    session.enable_retry_buffering();
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

fn declared_length(session: &Session) -> Option<usize> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
}
