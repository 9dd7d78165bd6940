//! The routing step's refusals as the one error body: an invalid path (400), headers over the
//! limit (431), no route (404), a method the path does not take (405).

use super::ApiError;
use crate::routes::RouteError;

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> ApiError {
        match e {
            RouteError::InvalidPath(why) => ApiError::new(
                400,
                "invalid_path",
                "The request path is invalid",
                why.to_string(),
            ),
            RouteError::HeadersTooLarge { limit } => ApiError::new(
                431,
                "headers_too_large",
                "Request headers too large",
                format!("the request headers exceed {limit} bytes"),
            ),
            RouteError::NotFound { path } => ApiError::new(
                404,
                "not_found",
                "No route matches",
                format!("no route for {path}"),
            ),
            RouteError::WrongMethod { method, path } => ApiError::new(
                405,
                "method_not_allowed",
                "Method not allowed",
                format!("{method} is not allowed on {path}"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::path::PathError;

    #[test]
    fn each_refusal_keeps_its_status_code_and_detail() {
        let e = ApiError::from(RouteError::InvalidPath(PathError::DotSegment));
        assert_eq!((e.status, e.code), (400, "invalid_path"));
        assert_eq!(e.title, "The request path is invalid");
        assert_eq!(e.detail, "path must not contain . or .. segments");
        let e = ApiError::from(RouteError::HeadersTooLarge { limit: 16384 });
        assert_eq!((e.status, e.code), (431, "headers_too_large"));
        assert_eq!(e.detail, "the request headers exceed 16384 bytes");
        let e = ApiError::from(RouteError::NotFound {
            path: "/nowhere".into(),
        });
        assert_eq!(
            (e.status, e.code, e.title),
            (404, "not_found", "No route matches")
        );
        assert_eq!(e.detail, "no route for /nowhere");
        let e = ApiError::from(RouteError::WrongMethod {
            method: http::Method::DELETE,
            path: "/api/v1/regions".into(),
        });
        assert_eq!((e.status, e.code), (405, "method_not_allowed"));
        assert_eq!(e.detail, "DELETE is not allowed on /api/v1/regions");
    }
}
