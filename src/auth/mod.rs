//! Authentication (who is calling) and authorization (may they do this).
//!
//! Credentials: API keys (`Authorization: Bearer KEY` or `X-API-Key: KEY`). The principal type
//! carries roles and a tenant, whatever the credential kind.

pub mod api_keys;
pub mod permissions;
pub mod principal;

use crate::config::model::Config;
use crate::errors::ApiError;
use api_keys::{ApiKeys, KeyState};
use permissions::{PermissionId, Roles};
use principal::Principal;
use std::sync::Arc;

/// Why authentication or authorization failed. `reason()` feeds logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed(&'static str),
    UnknownKey,
    DisabledKey,
    Forbidden { permission: Arc<str> },
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::UnknownKey => "unknown_key",
            AuthError::DisabledKey => "disabled_key",
            AuthError::Forbidden { .. } => "forbidden",
        }
    }
}

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
            AuthError::UnknownKey | AuthError::DisabledKey => ApiError::new(
                401,
                "invalid_token",
                "Invalid credentials",
                "the API key or token is not valid",
            )
            .with_header("www-authenticate", CHALLENGE),
            AuthError::Forbidden { permission } => ApiError::new(
                403,
                "forbidden",
                "Forbidden",
                format!("this operation needs the permission '{permission}'"),
            )
            .with_detail_entry("permission", permission.to_string()),
        }
    }
}

/// The authentication runtime built from one config load.
pub struct Auth {
    pub roles: Roles,
    keys: ApiKeys,
}

impl Auth {
    pub fn build(config: &Config, roles: Roles) -> Result<Auth, Vec<String>> {
        let mut errors = Vec::new();
        let mut keys = ApiKeys::default();
        for (i, k) in config.api_keys.iter().enumerate() {
            let at = format!("api_keys[{i}] ({})", k.name);
            let hash = match api_keys::parse_hash(&k.hash) {
                Ok(h) => h,
                Err(e) => {
                    errors.push(format!("{at}.hash: {e}"));
                    continue;
                }
            };
            for (j, r) in k.roles.iter().enumerate() {
                if !roles.contains(r) {
                    errors.push(format!("{at}.roles[{j}]: unknown role '{r}'"));
                }
            }
            if !config.tenants.contains_key(&k.tenant) {
                errors.push(format!("{at}.tenant: unknown tenant '{}'", k.tenant));
            }
            let state = if k.enabled {
                let perms = roles.union_of(k.roles.iter().map(String::as_str));
                KeyState::Enabled(Arc::new(api_keys::principal_for_key(
                    &k.name, &k.roles, &k.tenant, perms,
                )))
            } else {
                KeyState::Disabled(k.name.as_str().into())
            };
            if !keys.insert(hash, state) {
                errors.push(format!("{at}.hash: the same key is configured twice"));
            }
        }
        if errors.is_empty() {
            Ok(Auth { roles, keys })
        } else {
            Err(errors)
        }
    }

    /// Authenticates a request from its headers.
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Arc<Principal>, AuthError> {
        let credential = credential_from(headers)?;
        match self.keys.lookup(credential) {
            Some(KeyState::Enabled(p)) => Ok(p.clone()),
            Some(KeyState::Disabled(_)) => Err(AuthError::DisabledKey),
            None => Err(AuthError::UnknownKey),
        }
    }

    /// Checks a principal against the permission a route needs.
    pub fn authorize(
        &self,
        principal: &Principal,
        needed: Option<&(PermissionId, Arc<str>)>,
    ) -> Result<(), AuthError> {
        match needed {
            None => Ok(()),
            Some((id, _)) if principal.permissions.contains(*id) => Ok(()),
            Some((_, name)) => Err(AuthError::Forbidden {
                permission: name.clone(),
            }),
        }
    }
}

/// The caller's credential: `X-API-Key`, or the token of `Authorization: Bearer`.
pub fn credential_from(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    let mut api_keys = headers.get_all("x-api-key").iter();
    if let Some(v) = api_keys.next() {
        if api_keys.next().is_some() {
            return Err(AuthError::Malformed("more than one X-API-Key header"));
        }
        return v
            .to_str()
            .map(str::trim)
            .map_err(|_| AuthError::Malformed("X-API-Key is not visible ASCII"));
    }
    let mut auths = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(v) = auths.next() else {
        return Err(AuthError::Missing);
    };
    if auths.next().is_some() {
        return Err(AuthError::Malformed("more than one Authorization header"));
    }
    let v = v
        .to_str()
        .map_err(|_| AuthError::Malformed("Authorization is not visible ASCII"))?;
    let (scheme, token) = v.trim().split_once(' ').ok_or(AuthError::Malformed(
        "Authorization must be 'Bearer <token>'",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed(
            "Authorization must be 'Bearer <token>'",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed("the bearer token is empty"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn credential_sources() {
        assert_eq!(
            credential_from(&headers(&[("authorization", "Bearer abc")])).unwrap(),
            "abc"
        );
        assert_eq!(
            credential_from(&headers(&[("authorization", "bearer  abc ")])).unwrap(),
            "abc"
        );
        assert_eq!(
            credential_from(&headers(&[("x-api-key", "k1")])).unwrap(),
            "k1"
        );
        assert_eq!(
            credential_from(&headers(&[])).unwrap_err(),
            AuthError::Missing
        );
        assert!(credential_from(&headers(&[("authorization", "Basic abc")])).is_err());
        assert!(credential_from(&headers(&[("authorization", "Bearer")])).is_err());
        assert!(
            credential_from(&headers(&[
                ("authorization", "Bearer a"),
                ("authorization", "Bearer b")
            ]))
            .is_err()
        );
    }
}
