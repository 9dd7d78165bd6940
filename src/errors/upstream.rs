//! The upstream concern's errors as the one error body: refusals before any call
//! ([`UpstreamError`]) and failures of the proxy's own calls ([`CallError`]). Nothing is
//! counted here: the refusals are counted where they happen, in `crate::upstream`.

use super::ApiError;
use crate::upstream::UpstreamError;
use crate::upstream::client::CallError;

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> ApiError {
        match e {
            UpstreamError::Busy { reason } => {
                ApiError::new(503, "upstream_busy", "OrionVM is busy", reason).with_retry_after(1)
            }
            UpstreamError::Open { retry_after } => ApiError::new(
                503,
                "circuit_open",
                "OrionVM is unavailable",
                "OrionVM is failing; the proxy is not calling it for now",
            )
            .with_retry_after(retry_after),
            UpstreamError::NoOtherEndpoint => ApiError::bad_gateway(
                "upstream_unreachable",
                "the proxy could not connect to OrionVM",
            ),
            UpstreamError::Credentials(_) => ApiError::bad_gateway(
                "upstream_auth_failed",
                "the proxy could not obtain OrionVM credentials",
            ),
            UpstreamError::BadTarget => ApiError::new(
                400,
                "invalid_request",
                "The request is invalid",
                "the request URI cannot be rebuilt",
            ),
            UpstreamError::Internal(m) => ApiError::internal(m),
        }
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Credentials(_) => ApiError::bad_gateway(
                "upstream_auth_failed",
                "the proxy could not obtain OrionVM credentials",
            ),
            CallError::Connect => ApiError::bad_gateway(
                "upstream_unreachable",
                "the proxy could not connect to OrionVM",
            ),
            CallError::Timeout => ApiError::gateway_timeout("OrionVM did not answer in time"),
            CallError::Other(_) => {
                ApiError::bad_gateway("bad_gateway", "the call to OrionVM failed")
            }
            CallError::Refused(e) => e.into(),
            CallError::TooLarge { limit } => ApiError::new(
                502,
                "upstream_response_too_large",
                "OrionVM's answer is too large",
                format!("OrionVM's answer exceeds the {limit} bytes the proxy reads"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_status_code_and_retry_after() {
        let busy: ApiError = UpstreamError::Busy { reason: "full" }.into();
        assert_eq!(
            (busy.status, busy.code, busy.retry_after),
            (503, "upstream_busy", Some(1))
        );
        let open: ApiError = UpstreamError::Open { retry_after: 7 }.into();
        assert_eq!(
            (open.status, open.code, open.retry_after),
            (503, "circuit_open", Some(7))
        );
        let none: ApiError = UpstreamError::NoOtherEndpoint.into();
        assert_eq!((none.status, none.code), (502, "upstream_unreachable"));
        let creds: ApiError = CallError::Credentials("x".into()).into();
        assert_eq!((creds.status, creds.code), (502, "upstream_auth_failed"));
        let refused: ApiError = CallError::Refused(UpstreamError::Open { retry_after: 3 }).into();
        assert_eq!((refused.status, refused.retry_after), (503, Some(3)));
        let big: ApiError = CallError::TooLarge { limit: 4096 }.into();
        assert_eq!((big.status, big.code), (502, "upstream_response_too_large"));
        assert!(big.detail.contains("4096"));
    }
}
