//! How a request that ended in a Pingora error is answered: the pure classification of the
//! error (its type and source) into the error body and the kind of upstream failure, used by
//! `fail_to_proxy`. Unit tests in `super::tests`.

use crate::errors::{self, ApiError};
use crate::upstream::Failure;
use pingora::{Error, ErrorSource, ErrorType};

/// Raised from `upstream_response_filter` when OrionVM refuses the proxy's own token, so that
/// Pingora retries the request once with a fresh one.
pub const TOKEN_REJECTED: ErrorType = ErrorType::Custom("upstream_token_rejected");

/// What a failed request is answered with, and how its attempt toward OrionVM failed (`None`
/// when the failure was not the upstream's).
pub fn classify(source: &ErrorSource, etype: &ErrorType) -> (ApiError, Option<Failure>) {
    match (source, etype) {
        // A status a phase raised without keeping its own error body.
        (_, ErrorType::HTTPStatus(code)) => {
            let (c, t) = errors::code_for_status(*code);
            (ApiError::new(*code, c, t, t), None)
        }
        (
            _,
            ErrorType::ConnectTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::TLSHandshakeTimedout,
        ) => (
            ApiError::gateway_timeout("OrionVM did not answer in time"),
            Some(Failure::Timeout),
        ),
        (_, t) if *t == TOKEN_REJECTED => (errors::upstream_auth_failed(), None),
        (
            ErrorSource::Upstream,
            ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::TLSHandshakeFailure
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError,
        ) => (
            ApiError::bad_gateway(
                "upstream_unreachable",
                "the proxy could not connect to OrionVM",
            ),
            Some(Failure::Connect),
        ),
        (ErrorSource::Upstream, _) => (
            ApiError::bad_gateway(
                "upstream_reset",
                "OrionVM closed the connection before answering",
            ),
            Some(Failure::Reset),
        ),
        (ErrorSource::Downstream, _) => (
            ApiError::new(
                400,
                "invalid_request",
                "The request is invalid",
                "the request could not be read",
            ),
            None,
        ),
        _ => (
            ApiError::internal("the proxy failed to handle the request"),
            None,
        ),
    }
}

/// The caller's connection is gone (read or write failed, closed): nothing can be written.
pub fn downstream_gone(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
        )
}

/// A failure after the request reached OrionVM (`request_sent`) is reported with what is known:
/// never as the caller's fault (400) nor as a connection that never happened
/// (`upstream_unreachable`, e.g. when a retry could not connect), but as 502 `upstream_reset`
/// (504 for a timeout) with `details.request_sent: true` (and OrionVM's status when it had
/// answered), so that a caller knows a mutation may have been carried out.
/// `classified`: `err` is [`classify`]'s reading of a Pingora error (a 400 there is a
/// downstream error, never an answer of OrionVM's, which a phase keeps as the request's error).
pub fn after_sent(
    err: ApiError,
    request_sent: bool,
    upstream_status: Option<u16>,
    classified: bool,
) -> ApiError {
    if !request_sent {
        return err;
    }
    let downstream = classified && err.status == 400;
    let mut err = match (err.status, err.code) {
        (504, "upstream_timeout") => err,
        (502, "upstream_unreachable" | "upstream_reset") => ApiError::bad_gateway(
            "upstream_reset",
            "the connection failed after OrionVM received the request: it may have been \
             carried out",
        ),
        _ if downstream => ApiError::bad_gateway(
            "upstream_reset",
            "the connection failed after OrionVM received the request: it may have been \
             carried out",
        ),
        _ => return err,
    };
    err.details
        .insert("request_sent".into(), serde_json::Value::Bool(true));
    if let Some(s) = upstream_status {
        err.details
            .insert("upstream_status".into(), serde_json::Value::from(s));
    }
    err
}
