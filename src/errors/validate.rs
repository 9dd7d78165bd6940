//! The body checks' errors as the error body.

use super::ApiError;
use crate::validate::body::BodyError;
use crate::validate::{AdmitError, ValidationError};

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> ApiError {
        match e {
            BodyError::TooLarge { limit } => ApiError::new(
                413,
                "payload_too_large",
                "Request body too large",
                format!("the request body is larger than {limit} bytes"),
            ),
            BodyError::InvalidJson(msg) => {
                ApiError::new(400, "invalid_json", "Request body is not valid JSON", msg)
            }
            BodyError::Read => ApiError::new(
                400,
                "invalid_request",
                "The request body could not be read",
                "the request body was cut short or malformed",
            ),
            BodyError::Timeout => ApiError::new(
                408,
                "request_timeout",
                "The request body did not arrive in time",
                "the request body did not arrive within the proxy's deadline",
            ),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> ApiError {
        let detail = if e.count > 1 {
            format!("{} (and {} more)", e.first, e.count - 1)
        } else {
            e.first
        };
        ApiError::new(422, "validation_failed", "Request body is invalid", detail)
            .with_details(e.details)
    }
}

impl From<AdmitError> for ApiError {
    fn from(e: AdmitError) -> ApiError {
        match e {
            AdmitError::Body(e) => e.into(),
            AdmitError::Invalid(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_body_refusal_has_its_status() {
        let mut details = serde_json::Map::new();
        details.insert("memory".into(), serde_json::json!(["too small"]));
        let invalid = ValidationError {
            details,
            first: "memory: too small".into(),
            count: 2,
        };
        let api: ApiError = AdmitError::Invalid(invalid).into();
        assert_eq!((api.status, api.code), (422, "validation_failed"));
        assert_eq!(api.detail, "memory: too small (and 1 more)");
        let api: ApiError = AdmitError::Body(BodyError::TooLarge { limit: 10 }).into();
        assert_eq!((api.status, api.code), (413, "payload_too_large"));
        let api: ApiError = BodyError::InvalidJson("x".into()).into();
        assert_eq!(api.status, 400);
    }
}
