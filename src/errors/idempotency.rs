//! The idempotency concern's refusals as the error body. Counted where they happen.

use super::{ApiError, from_upstream};
use crate::idempotency::IdemError;

impl From<IdemError> for ApiError {
    fn from(e: IdemError) -> ApiError {
        match e {
            IdemError::Invalid(why) => ApiError::new(
                400,
                "invalid_idempotency_key",
                "The Idempotency-Key header is invalid",
                format!("Idempotency-Key: {why}"),
            )
            .with_detail_entry("Idempotency-Key", why),
            IdemError::Mismatch => ApiError::new(
                422,
                "idempotency_key_reused",
                "The Idempotency-Key was used for another request",
                "this Idempotency-Key was first used with another request body or path; use a new key for a new request",
            )
            .with_detail_entry(
                "Idempotency-Key",
                "was used with another request body or path",
            ),
            IdemError::InFlight { retry_after } => ApiError::new(
                409,
                "idempotency_key_in_flight",
                "A request with this Idempotency-Key is in progress",
                "the first request with this Idempotency-Key has not finished; retry later",
            )
            .with_detail_entry("Idempotency-Key", "the first request is still in progress")
            .with_retry_after(retry_after),
            IdemError::Unresolved(why) => ApiError::new(
                409,
                "idempotency_outcome_unknown",
                "The outcome of the first request with this Idempotency-Key is unknown",
                why,
            )
            .with_detail_entry("Idempotency-Key", why),
            IdemError::Store(e) => {
                log::warn!("idempotency: state backend: {e}");
                ApiError::unavailable(
                    "state_unavailable",
                    "the idempotency keys cannot be read or written now",
                )
                .with_retry_after(1)
            }
            IdemError::Lookup(e) => ApiError::from(e),
            IdemError::LookupAnswered(status, body) => from_upstream(status, &body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_as_the_error_body() {
        let e = ApiError::from(IdemError::Mismatch);
        assert_eq!((e.status, e.code), (422, "idempotency_key_reused"));
        assert!(e.details.contains_key("Idempotency-Key"));
        let e = ApiError::from(IdemError::InFlight { retry_after: 2 });
        assert_eq!(
            (e.status, e.code, e.retry_after),
            (409, "idempotency_key_in_flight", Some(2))
        );
        let e = ApiError::from(IdemError::Invalid("must be 1 to 255 characters"));
        assert_eq!((e.status, e.code), (400, "invalid_idempotency_key"));
        let e = ApiError::from(IdemError::Unresolved("x"));
        assert_eq!((e.status, e.code), (409, "idempotency_outcome_unknown"));
    }
}
