//! Who is calling: the result of authentication, whatever the credential.

use super::permissions::PermissionSet;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    ApiKey,
    IssuedToken,
    Jwt,
}

impl CredentialKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            CredentialKind::ApiKey => "api_key",
            CredentialKind::IssuedToken => "issued_token",
            CredentialKind::Jwt => "jwt",
        }
    }
}

#[derive(Debug)]
pub struct Principal {
    /// Stable identifier for logs and audit (`key:alice`, `client:ci`, `jwt:issuer#sub`).
    pub id: Arc<str>,
    pub kind: CredentialKind,
    pub roles: Vec<Arc<str>>,
    pub tenant: Arc<str>,
    pub permissions: PermissionSet,
    /// The rate-limit policy set for this principal (runtime-managed credentials), replacing
    /// the one its roles would pick.
    pub policy: Option<Arc<str>>,
}

impl Principal {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| &**r == role)
    }
}
