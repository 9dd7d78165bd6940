//! The limits' refusals as the error body. Nothing is counted here: the limits count their
//! refusals where they happen.

use super::{ApiError, from_upstream};
use crate::limits::{LimitsError, WaitFailure};

impl From<LimitsError> for ApiError {
    fn from(e: LimitsError) -> ApiError {
        match e {
            LimitsError::RateLimited {
                policy,
                retry_after,
                headers,
            } => {
                let mut err = ApiError::new(
                    429,
                    "rate_limited",
                    "Too many requests",
                    format!("the quota of policy '{policy}' is used up; retry in {retry_after} s"),
                )
                .with_detail_entry("policy", policy.to_string())
                .with_retry_after(retry_after);
                err.headers = headers;
                err
            }
            LimitsError::Busy { reason } => {
                ApiError::new(503, "upstream_busy", "OrionVM is busy", reason).with_retry_after(1)
            }
            LimitsError::Open { retry_after } => ApiError::new(
                503,
                "circuit_open",
                "OrionVM is unavailable",
                "OrionVM is failing; the proxy is not calling it for now",
            )
            .with_retry_after(retry_after),
            LimitsError::Answered {
                status,
                body,
                headers,
            } => {
                let mut err = from_upstream(status, &body);
                err.headers.extend(headers);
                err
            }
            LimitsError::Call { error, headers } => {
                let mut err = ApiError::from(*error);
                err.headers.extend(headers);
                err
            }
            LimitsError::Wait(WaitFailure::Timeout) => {
                ApiError::gateway_timeout("OrionVM did not answer in time")
            }
            LimitsError::Wait(WaitFailure::Abandoned) => {
                ApiError::bad_gateway("bad_gateway", "the call to OrionVM was abandoned")
            }
            LimitsError::Wait(WaitFailure::Lost) => {
                ApiError::internal("the shared call ended without an answer")
            }
        }
    }
}
