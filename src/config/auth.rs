//! The identity part of the config file: the token endpoint (`oauth`), its registered
//! `clients`, and external JWT issuers (`jwt`). Plain serde data; `auth::Auth::build`
//! validates it into runtime types once per load.

use super::model::SecretRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `POST /oauth/token`: how the proxy signs the tokens it issues and how hard it guards the
/// endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthConfig {
    /// HMAC key that signs and verifies issued tokens (at least 32 bytes). Every proxy instance
    /// sharing it accepts the others' tokens. Required when `clients` is not empty.
    pub signing_key: Option<SecretRef>,
    /// Keys still accepted for verification after a rotation (tokens signed with them stay
    /// valid until they expire); new tokens are always signed with `signing_key`.
    pub previous_signing_keys: Vec<SecretRef>,
    /// Lifetime of an issued token in seconds (`expires_in` of the answer).
    pub expires_in: u64,
    /// Token requests per source address per one-minute window; 429 past it.
    pub max_requests_per_minute: u32,
    /// Failed token requests (unknown client, wrong secret, malformed) per source address per
    /// minute; past it every token request from that address is 429 until the window ends.
    pub max_failures_per_minute: u32,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            signing_key: None,
            previous_signing_keys: Vec::new(),
            expires_in: 3600,
            max_requests_per_minute: 60,
            max_failures_per_minute: 10,
        }
    }
}

/// A client registered for the client-credentials grant.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub client_id: String,
    /// Argon2 PHC string of the secret (`$argon2id$v=19$...`), as printed by
    /// `orion-proxy client-secret`.
    pub secret_hash: String,
    pub roles: Vec<String>,
    pub tenant: String,
    /// A disabled (or removed) client gets no tokens, and the tokens it holds stop working at
    /// the next reload.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_true() -> bool {
    true
}

/// External identity providers whose JWTs are accepted as credentials.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// Verified tokens remembered, so that a repeated token costs a lookup.
    pub cache_entries: usize,
    pub issuers: Vec<IssuerConfig>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            leeway_seconds: 60,
            cache_entries: 10_000,
            issuers: Vec::new(),
        }
    }
}

/// One identity provider. Exactly one key source: `jwks_url`, `jwks_file` or `hmac_secret`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Short name for logs and principal ids (`jwt:NAME#sub`).
    pub name: String,
    /// The `iss` claim the tokens carry, exactly.
    pub issuer: String,
    /// Accepted `aud` values; the token must name one of them.
    pub audiences: Vec<String>,
    /// Algorithms accepted from this issuer (RS256, RS384, RS512, PS256, PS384, PS512, ES256,
    /// ES384, EdDSA; HS256/HS384/HS512 only with `hmac_secret`). `none` never is.
    pub algorithms: Vec<String>,
    /// JWKS over HTTPS (plain `http://` is accepted only for loopback hosts, for tests).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A JWKS document on disk: static keys.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// Shared secret for HS* tokens.
    #[serde(default)]
    pub hmac_secret: Option<SecretRef>,
    /// PEM CA for the JWKS host (system roots otherwise).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Seconds between scheduled JWKS refreshes.
    #[serde(default = "default_refresh")]
    pub jwks_refresh_seconds: u64,
    /// Least seconds between two fetches caused by tokens naming an unknown `kid`.
    #[serde(default = "default_min_refetch")]
    pub jwks_min_refetch_seconds: u64,
    /// Claim that identifies the caller (dotted path allowed).
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Claim holding roles: an array of strings or a space-separated string (`scope`);
    /// dotted path allowed (`realm_access.roles`).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Claim value -> proxy roles. Without a map, values that name a proxy role are used as is.
    #[serde(default)]
    pub role_map: BTreeMap<String, Vec<String>>,
    /// Claim naming the tenant (dotted path allowed).
    #[serde(default)]
    pub tenant_claim: Option<String>,
    /// Tenant for tokens without the tenant claim (or for every token when no claim is set).
    #[serde(default)]
    pub default_tenant: Option<String>,
}

fn default_refresh() -> u64 {
    300
}
fn default_min_refetch() -> u64 {
    30
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_roles_claim() -> String {
    "roles".into()
}
