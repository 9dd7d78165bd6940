//! The authentication concern's errors as the one error body: `AuthError` (401 with a
//! `WWW-Authenticate` challenge, 403 naming the permission) and the token endpoint's
//! `OAuthError` (RFC 6749 section 5.2 codes, kept out of caches).

use super::ApiError;
use crate::auth::AuthError;
use crate::auth::admin_scope::ScopeError;
use crate::auth::token_endpoint::OAuthError;

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        const CHALLENGE: &str = "Bearer realm=\"orion-proxy\"";
        match e {
            AuthError::Missing => ApiError::new(
                401,
                "unauthorized",
                "Authentication required",
                "send an API key or token as 'Authorization: Bearer ...' or 'X-API-Key: ...'",
            )
            .with_header("www-authenticate", CHALLENGE),
            AuthError::Malformed(what) => {
                ApiError::new(401, "invalid_token", "Invalid credentials", what)
                    .with_header("www-authenticate", CHALLENGE)
            }
            AuthError::Conflicting => ApiError::new(
                400,
                "conflicting_credentials",
                "Conflicting credentials",
                "send one credential: 'Authorization: Bearer ...' or 'X-API-Key: ...', not two different ones",
            ),
            AuthError::UnknownKey | AuthError::DisabledKey => ApiError::new(
                401,
                "invalid_token",
                "Invalid credentials",
                "the API key or token is not valid",
            )
            .with_header("www-authenticate", CHALLENGE),
            AuthError::Token { detail, .. } => {
                ApiError::new(401, "invalid_token", "Invalid credentials", detail)
                    .with_header("www-authenticate", CHALLENGE)
            }
            AuthError::Unavailable => ApiError::new(
                503,
                "state_unavailable",
                "Credentials cannot be checked",
                "the store of managed credentials is unavailable; try again",
            )
            .with_retry_after(1),
            AuthError::Forbidden { permission, .. } => ApiError::new(
                403,
                "forbidden",
                "Forbidden",
                format!("this operation needs the permission '{permission}'"),
            )
            .with_detail_entry("permission", permission.to_string()),
        }
    }
}

impl From<ScopeError> for ApiError {
    fn from(e: ScopeError) -> ApiError {
        match e {
            ScopeError::NotAdmin => ApiError::new(
                403,
                "forbidden",
                "Forbidden",
                "the admin API needs the admin (tenant) or process_admin role",
            ),
            ScopeError::ProcessOnly { what } => ApiError::new(
                403,
                "forbidden",
                "Forbidden",
                format!(
                    "{what} needs a process administrator (role process_admin); this credential administers one tenant"
                ),
            ),
            ScopeError::OtherTenant { asked, own } => ApiError::new(
                403,
                "forbidden",
                "Forbidden",
                format!("this credential administers tenant '{own}', not '{asked}'"),
            )
            .with_detail_entry("tenant", own.to_string()),
        }
    }
}

impl From<OAuthError> for ApiError {
    fn from(e: OAuthError) -> ApiError {
        let no_store = |e: ApiError| {
            e.with_header("cache-control", "no-store")
                .with_header("pragma", "no-cache")
        };
        match e {
            OAuthError::InvalidRequest(what) => no_store(ApiError::new(
                400,
                "invalid_request",
                "The token request is invalid",
                what,
            )),
            OAuthError::InvalidClient { basic } => {
                let e = ApiError::new(
                    401,
                    "invalid_client",
                    "Client authentication failed",
                    "unknown client, wrong secret, or the client is disabled",
                );
                let e = if basic {
                    e.with_header("www-authenticate", "Basic realm=\"orion-proxy\"")
                } else {
                    e
                };
                no_store(e)
            }
            OAuthError::UnsupportedGrantType(g) => no_store(ApiError::new(
                400,
                "unsupported_grant_type",
                "Unsupported grant type",
                format!("grant_type '{g}' is not supported; use client_credentials"),
            )),
            OAuthError::TooManyRequests { retry_after } => no_store(
                ApiError::new(
                    429,
                    "rate_limited",
                    "Too many token requests",
                    "too many token requests from this address; try again later",
                )
                .with_retry_after(retry_after),
            ),
            OAuthError::Busy => ApiError::unavailable(
                "temporarily_unavailable",
                "the token endpoint is busy; try again",
            )
            .with_retry_after(1),
            OAuthError::NotConfigured => ApiError::unavailable(
                "temporarily_unavailable",
                "the token endpoint has no signing key configured",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token_endpoint::parse;

    fn no_headers() -> http::HeaderMap {
        http::HeaderMap::new()
    }

    #[test]
    fn token_request_errors_follow_rfc_6749() {
        let e = parse(
            &no_headers(),
            b"grant_type=password&client_id=a&client_secret=b",
        )
        .unwrap_err();
        let api = ApiError::from(e);
        assert_eq!((api.status, api.code), (400, "unsupported_grant_type"));
        let e = parse(&no_headers(), b"grant_type=client_credentials").unwrap_err();
        let api = ApiError::from(e);
        assert_eq!((api.status, api.code), (401, "invalid_client"));
        assert!(api.headers.contains(&("pragma", "no-cache".to_string())));
        let api = ApiError::from(OAuthError::InvalidClient { basic: true });
        assert!(
            api.headers
                .iter()
                .any(|(k, v)| *k == "www-authenticate" && v.starts_with("Basic"))
        );
        let api = ApiError::from(OAuthError::TooManyRequests { retry_after: 17 });
        assert_eq!((api.status, api.retry_after), (429, Some(17)));
        let api = ApiError::from(OAuthError::Busy);
        assert_eq!((api.status, api.retry_after), (503, Some(1)));
    }

    #[test]
    fn auth_errors_challenge_or_name_the_permission() {
        let api = ApiError::from(AuthError::Missing);
        assert_eq!((api.status, api.code), (401, "unauthorized"));
        assert!(api.headers.iter().any(|(k, _)| *k == "www-authenticate"));
        let principal = crate::auth::api_keys::principal_for_key(
            "v",
            &["viewer".to_string()],
            "acme",
            Default::default(),
        );
        let api = ApiError::from(AuthError::Forbidden {
            permission: "instances:delete".into(),
            principal: std::sync::Arc::new(principal),
        });
        assert_eq!((api.status, api.code), (403, "forbidden"));
        assert_eq!(api.details["permission"][0], "instances:delete");
    }
}
