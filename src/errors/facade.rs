//! The facade's errors as the one error body, and as the error a failed task records.

use super::ApiError;
use crate::facade::FacadeError;
use crate::facade::tasks::TaskError;
use serde_json::{Map, json};

impl From<FacadeError> for ApiError {
    fn from(e: FacadeError) -> ApiError {
        match e {
            FacadeError::Call(c) => c.into(),
            // Including OrionVM's 401 to the proxy's credentials (after the one retry): 502.
            FacadeError::Upstream(status, body) => super::from_upstream(status, &body),
            FacadeError::UpstreamShape(what) => ApiError::bad_gateway(
                "bad_gateway",
                format!("OrionVM answered unexpectedly: {what}"),
            ),
            FacadeError::InvalidState {
                action,
                state,
                allowed,
                retry_after,
            } => {
                let allowed_text = if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                };
                let mut details = Map::new();
                details.insert("state".into(), json!([state]));
                details.insert("allowed_actions".into(), json!(allowed));
                let mut err = ApiError::new(
                    409,
                    "invalid_state",
                    "The instance's state does not allow this action",
                    format!(
                        "{action} is not allowed while the instance is {state}; allowed: {allowed_text}"
                    ),
                )
                .with_details(details);
                if let Some(s) = retry_after {
                    err = err.with_retry_after(s);
                }
                err
            }
            FacadeError::BadParameter { name, message } => ApiError::new(
                400,
                "invalid_parameter",
                "A query parameter is invalid",
                format!("{name}: {message}"),
            )
            .with_detail_entry(name, message),
            FacadeError::Invalid(list) => {
                let detail = list
                    .iter()
                    .map(|(p, m)| format!("{p}: {m}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                list.into_iter().fold(
                    ApiError::new(422, "validation_failed", "Request body is invalid", detail),
                    |e, (p, m)| e.with_detail_entry(p, m),
                )
            }
            FacadeError::NotFound(what, id) => ApiError::new(
                404,
                "not_found",
                "Not found",
                format!("{what} {id} not found"),
            ),
            // The reason (which may name the backend's address) is logged by the facade.
            FacadeError::Store(_) => {
                ApiError::unavailable("store_unavailable", "the task store is not available")
                    .with_retry_after(1)
            }
        }
    }
}

/// A failed task step's error: the same code, text, status and details as the error body the
/// request would have had (`facade::Env::describe`).
pub fn task_error(e: FacadeError) -> TaskError {
    let api = ApiError::from(e);
    TaskError {
        code: api.code.to_string(),
        message: api.detail,
        status: api.status,
        details: api.details,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facade::lifecycle;
    use bytes::Bytes;

    #[test]
    fn refused_transition_is_a_409_naming_state_and_actions() {
        let e: ApiError = lifecycle::check(lifecycle::Action::Poweron, "running")
            .unwrap_err()
            .into();
        assert_eq!((e.status, e.code), (409, "invalid_state"));
        assert_eq!(e.details["state"], json!(["running"]));
        assert_eq!(
            e.details["allowed_actions"],
            json!(["poweroff", "reboot", "snapshot", "patch", "delete"])
        );
        assert!(e.detail.contains("poweron") && e.detail.contains("running"));
        assert_eq!(e.retry_after, None);
        let e: ApiError = FacadeError::Upstream(401, Bytes::new()).into();
        assert_eq!((e.status, e.code), (502, "upstream_auth_failed"));
    }

    #[test]
    fn a_task_records_the_error_body_it_would_have_answered() {
        let e = task_error(FacadeError::Upstream(
            422,
            Bytes::from_static(
                br#"{"error":"validation_failed","error_description":"Instance could not be started","details":{"state":["must be stopped"]}}"#,
            ),
        ));
        assert_eq!((e.code.as_str(), e.status), ("validation_failed", 422));
        assert_eq!(e.message, "Instance could not be started");
        assert_eq!(e.details["state"], json!(["must be stopped"]));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["error"], "validation_failed");
        assert_eq!(v["error_description"], "Instance could not be started");
        let e = task_error(FacadeError::Upstream(
            500,
            Bytes::from_static(b"db at 10.0.0.3"),
        ));
        assert!(!e.message.contains("10.0.0.3"));
    }
}
