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
            LimitsError::Upstream(e) => ApiError::from(e),
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
            // Which backend and why is logged by the state backend, once per change.
            LimitsError::Unavailable => ApiError::unavailable(
                "state_unavailable",
                "rate limits cannot be checked: the shared state is not reachable",
            )
            .with_retry_after(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_cached_answers_as_the_error_body() {
        let e = ApiError::from(LimitsError::RateLimited {
            policy: "default".into(),
            retry_after: 17,
            headers: vec![("ratelimit", "\"default\";r=0;t=17".into())],
        });
        assert_eq!(
            (e.status, e.code, e.retry_after),
            (429, "rate_limited", Some(17))
        );
        assert_eq!(e.details["policy"], serde_json::json!(["default"]));
        assert_eq!(
            e.headers,
            vec![("ratelimit", "\"default\";r=0;t=17".to_string())]
        );

        let cached = |status: u16, body: &str| {
            ApiError::from(LimitsError::Answered {
                status,
                body: bytes::Bytes::from(body.to_string()),
                headers: vec![("x-cache", "miss".into())],
            })
        };
        let e = cached(
            404,
            r#"{"error":"not_found","error_description":"no such instance"}"#,
        );
        assert_eq!(
            (e.status, e.code, e.detail.as_str()),
            (404, "not_found", "no such instance")
        );
        assert_eq!(e.headers, vec![("x-cache", "miss".to_string())]);
        // OrionVM refusing the proxy's own credentials is the proxy's failure.
        let e = cached(401, "");
        assert_eq!((e.status, e.code), (502, "upstream_auth_failed"));

        let e = ApiError::from(LimitsError::Call {
            error: Box::new(crate::upstream::client::CallError::Timeout),
            headers: vec![("x-cache", "coalesced".into())],
        });
        assert_eq!(e.status, 504);
        assert_eq!(e.headers, vec![("x-cache", "coalesced".to_string())]);
        assert_eq!(
            ApiError::from(LimitsError::Wait(WaitFailure::Abandoned)).status,
            502
        );
        assert_eq!(
            ApiError::from(LimitsError::Upstream(
                crate::upstream::UpstreamError::Open { retry_after: 3 }
            ))
            .retry_after,
            Some(3)
        );
    }
}
