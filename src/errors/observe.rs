//! Observability's errors as the one error body.

use super::ApiError;
use crate::observe::ObserveError;

impl From<ObserveError> for ApiError {
    fn from(e: ObserveError) -> Self {
        match e {
            ObserveError::BadQuery { field, message } => ApiError::new(
                400,
                "invalid_request",
                "The request is invalid",
                format!("{field}: {message}"),
            )
            .with_detail_entry(field, message),
            ObserveError::AuditOff => ApiError::new(
                404,
                "not_found",
                "No audit trail",
                "the audit trail is off (logging.audit.path)",
            ),
            ObserveError::AuditUnreadable => ApiError::internal("the audit trail cannot be read"),
            ObserveError::AuditUnavailable => ApiError::unavailable(
                "audit_unavailable",
                "the audit trail cannot record this call, so it was not made (logging.audit.on_failure: closed)",
            )
            .with_retry_after(5),
            ObserveError::UsageUnavailable => {
                ApiError::unavailable("usage_unavailable", "the usage counters cannot be read")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_refusal_is_a_503_that_names_the_trail() {
        let e = ApiError::from(ObserveError::AuditUnavailable);
        assert_eq!((e.status, e.code), (503, "audit_unavailable"));
        assert_eq!(e.retry_after, Some(5));
        let body = e.body("r1");
        assert_eq!(body["error"], "audit_unavailable");
        let e = ApiError::from(ObserveError::BadQuery {
            field: "limit".into(),
            message: "bad".into(),
        });
        assert_eq!(e.status, 400);
        assert_eq!(e.details["limit"][0], "bad");
    }
}
