//! Authentication (who is calling) and authorization (may they do this).
//!
//! Credentials, all sent as `Authorization: Bearer ...` (API keys also as `X-API-Key`): API
//! keys, tokens the proxy issued from `/oauth/token` (`tokens`, `token_endpoint`), and JWTs
//! from external identity providers (`jwt`). The credential's shape picks the check; each
//! gives the same [`principal::Principal`] with roles and a tenant.

/// The authentication concern's part of the process state (`runtime::State`): what outlives
/// one config. The token endpoint's per-address counters are in the state's `Counters` store
/// (`token_endpoint`).
pub struct AuthState {
    /// Remote JWKS of the config in force, by issuer: handed over to an unchanged issuer on
    /// reload, refreshed by [`jwt::Refresher`].
    pub jwks: Arc<jwt::JwksRegistry>,
    /// Secret checks (Argon2, deliberately slow) running at once, whatever the source.
    checking: tokio::sync::Semaphore,
    /// The runtime-managed API keys and clients (in the durable store).
    pub managed: Arc<managed::Managed>,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState::new(Arc::new(crate::store::memory::MemoryKv::new(
            crate::store::file::MAX_ENTRIES,
        )))
    }
}

impl AuthState {
    /// The state with the runtime-managed credentials kept in `durable`.
    pub fn new(durable: Arc<dyn crate::store::KvStore>) -> AuthState {
        AuthState {
            jwks: Arc::default(),
            checking: tokio::sync::Semaphore::new(token_endpoint::MAX_CONCURRENT_CHECKS),
            managed: Arc::new(managed::Managed::new(durable)),
        }
    }

    /// Runs a slow secret check (Argon2) off the async workers, at most a few at once;
    /// `None` when too many are waiting.
    pub async fn check_secret<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let Ok(Ok(_permit)) =
            tokio::time::timeout(token_endpoint::CHECK_WAIT, self.checking.acquire()).await
        else {
            return None;
        };
        tokio::task::spawn_blocking(f).await.ok()
    }

    /// The background service that refreshes the registered JWKS.
    pub fn refresher(&self) -> jwt::Refresher {
        jwt::Refresher {
            registry: self.jwks.clone(),
        }
    }
}

pub mod admin_scope;
pub mod api_keys;
pub mod jwt;
pub mod managed;
pub mod permissions;
pub mod principal;
pub mod token_endpoint;
pub mod tokens;

use crate::config::auth::OAuthConfig;
use crate::config::model::Config;
use api_keys::{ApiKeys, KeyState};
use permissions::{PermissionId, Roles};
use principal::Principal;
use std::sync::Arc;

/// Why authentication or authorization failed. `reason()` feeds logs and metrics.
#[derive(Debug, Clone)]
pub enum AuthError {
    Missing,
    Malformed(&'static str),
    /// Two different credentials in one request (`X-API-Key` and an `Authorization` that
    /// carries something else): which one speaks for the caller is ambiguous, so neither does.
    Conflicting,
    UnknownKey,
    DisabledKey,
    /// An issued token or a JWT was refused; `detail` is safe to show the caller.
    Token {
        reason: &'static str,
        detail: &'static str,
    },
    /// The caller authenticated but lacks the route's permission; `principal` is who they are
    /// (the access log, the audit trail and usage name them).
    Forbidden {
        permission: Arc<str>,
        principal: Arc<Principal>,
    },
    /// The store of runtime-managed credentials could not be read.
    Unavailable,
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::Conflicting => "conflicting",
            AuthError::UnknownKey => "unknown_key",
            AuthError::DisabledKey => "disabled_key",
            AuthError::Token { reason, .. } => reason,
            AuthError::Forbidden { .. } => "forbidden",
            AuthError::Unavailable => "state_unavailable",
        }
    }

    /// Who was refused, when they authenticated (a refusal for a missing permission).
    pub fn principal(&self) -> Option<&Arc<Principal>> {
        match self {
            AuthError::Forbidden { principal, .. } => Some(principal),
            _ => None,
        }
    }
}

/// A credential as it can be found again later without keeping its secret: an API key by its
/// SHA-256 (what the config and the credential store keep anyway), a client by its id and the
/// digest of its stored secret hash ([`tokens::Client::binding`], changed by a rotation). A
/// console session keeps one to re-check its credential on every request ([`Auth::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CredentialRef {
    ApiKey { sha256: String },
    Client { client_id: String, binding: String },
}

impl CredentialRef {
    /// The reference of a presented API key.
    pub fn of_key(key: &str) -> CredentialRef {
        CredentialRef::ApiKey {
            sha256: hex::encode(api_keys::hash_key(key)),
        }
    }

    /// The reference of a client as it is now.
    pub fn of_client(client: &tokens::Client) -> CredentialRef {
        CredentialRef::Client {
            client_id: client.client_id.to_string(),
            binding: client.binding(),
        }
    }
}

/// The authentication runtime built from one config load.
pub struct Auth {
    pub roles: Roles,
    keys: ApiKeys,
    issued: tokens::Issued,
    pub jwt: jwt::Jwt,
    /// The token endpoint's settings (lifetime, per-address limits).
    pub oauth: OAuthConfig,
    /// The runtime-managed credentials (shared with the state; not part of the config).
    pub managed: Arc<managed::Managed>,
}

impl Auth {
    /// Validates keys, clients and issuers. Reads `state` (an unchanged issuer keeps its remote
    /// JWKS), never changes it: [`Auth::commit`] does, once the whole config was built.
    pub fn build(config: &Config, roles: Roles, state: &AuthState) -> Result<Auth, Vec<String>> {
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
                if !roles.contains(r) && !is_console_role(r) {
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
        let issued = build_clients(config, &roles, &mut errors);
        let tenants = config.tenants.keys().map(String::as_str).collect();
        let jwt = jwt::Jwt::build(&config.jwt, &roles, &tenants, &state.jwks, &mut errors);
        if errors.is_empty() {
            Ok(Auth {
                roles,
                keys,
                issued,
                jwt,
                oauth: config.oauth.clone(),
                managed: state.managed.clone(),
            })
        } else {
            Err(errors)
        }
    }

    /// Registers what this config keeps in the state (its remote JWKS). Called by the runtime
    /// after the whole config was built, before it is swapped in.
    pub fn commit(&self, state: &AuthState) {
        self.jwt.commit(&state.jwks);
    }

    /// The registered clients and the token keys.
    pub fn issued(&self) -> &tokens::Issued {
        &self.issued
    }

    /// Authenticates a request from its headers: an issued token (`opt_` and 60 characters),
    /// an API key (64 characters, one hash and one map probe), or a JWT (three dot-separated
    /// parts) when issuers are configured.
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Arc<Principal>, AuthError> {
        let credential = credential_from(headers)?;
        if credential.len() == tokens::TOKEN_LEN && credential.starts_with(tokens::TOKEN_PREFIX) {
            let managed = match tokens::Issued::tag_of(credential) {
                Some(tag) if !self.issued.knows_tag(&tag) => self
                    .managed
                    .client_by_tag(&tag, &self.roles)
                    .await
                    .map_err(|e| {
                        log::warn!("managed credentials unavailable: {e}");
                        AuthError::Unavailable
                    })?,
                _ => None,
            };
            return self
                .issued
                .verify_with(credential, tokens::now_unix(), managed.as_deref())
                .map_err(|e| match e {
                    tokens::TokenError::Expired => AuthError::Token {
                        reason: "expired",
                        detail: "the token has expired",
                    },
                    _ => AuthError::Token {
                        reason: "invalid_issued_token",
                        detail: "the API key or token is not valid",
                    },
                });
        }
        match self.keys.lookup(credential) {
            Some(KeyState::Enabled(p)) => Ok(p.clone()),
            Some(KeyState::Disabled(_)) => Err(AuthError::DisabledKey),
            None if !self.jwt.is_empty()
                && credential.bytes().filter(|b| *b == b'.').count() == 2 =>
            {
                self.jwt
                    .verify(credential, &self.roles)
                    .await
                    .map_err(|e| AuthError::Token {
                        reason: e.reason,
                        detail: e.detail,
                    })
            }
            None => match self.managed.key(credential, &self.roles).await {
                Ok(Some(managed::Found::Enabled(p))) => Ok(p),
                Ok(Some(managed::Found::Disabled)) => Err(AuthError::DisabledKey),
                Ok(None) => Err(AuthError::UnknownKey),
                Err(e) => {
                    log::warn!("managed credentials unavailable: {e}");
                    Err(AuthError::Unavailable)
                }
            },
        }
    }

    /// The principal of a credential found again by its [`CredentialRef`]: `None` when it is
    /// gone, disabled, or (a client) its secret was rotated since the reference was taken.
    pub async fn resolve(
        &self,
        credential: &CredentialRef,
    ) -> Result<Option<Arc<Principal>>, AuthError> {
        match credential {
            CredentialRef::ApiKey { sha256 } => {
                let Ok(Ok(hash)) = hex::decode(sha256).map(api_keys::KeyHash::try_from) else {
                    return Ok(None);
                };
                match self.keys.lookup_hash(&hash) {
                    Some(KeyState::Enabled(p)) => return Ok(Some(p.clone())),
                    Some(KeyState::Disabled(_)) => return Ok(None),
                    None => {}
                }
                match self.managed.key_by_hash(&hash, &self.roles).await {
                    Ok(Some(managed::Found::Enabled(p))) => Ok(Some(p)),
                    Ok(_) => Ok(None),
                    Err(e) => {
                        log::warn!("managed credentials unavailable: {e}");
                        Err(AuthError::Unavailable)
                    }
                }
            }
            CredentialRef::Client { client_id, binding } => Ok(self
                .client(client_id)
                .await?
                .filter(|c| c.enabled && c.binding() == *binding)
                .map(|c| c.principal.clone())),
        }
    }

    /// A client (configured or runtime-managed) by its id, for a secret check.
    pub async fn client(&self, client_id: &str) -> Result<Option<Arc<tokens::Client>>, AuthError> {
        if let Some(c) = self.issued.client(client_id) {
            return Ok(Some(c.clone()));
        }
        self.managed
            .client(client_id, &self.roles)
            .await
            .map_err(|_| AuthError::Unavailable)
    }

    /// The caller of a route that needs a principal: authenticated from its headers and
    /// authorized for the route's permission (`needed`). A refusal is counted in
    /// `orion_proxy_auth_failures_total` here, by its [`AuthError::reason`].
    pub async fn admit(
        &self,
        headers: &http::HeaderMap,
        needed: Option<&(PermissionId, Arc<str>)>,
    ) -> Result<Arc<Principal>, AuthError> {
        let admitted = match self.authenticate(headers).await {
            Ok(principal) => authorize(principal, needed),
            Err(e) => Err(e),
        };
        if let Err(e) = &admitted {
            crate::metrics::auth_failure(e.reason());
        }
        admitted
    }
}

/// The roles of the web console: `console:read` sees every page, `console:write` may also act
/// (the `admin` role may too). They grant no API permission; a key or client may hold them
/// without the config's `roles` naming them.
pub const CONSOLE_ROLES: [&str; 2] = ["console:read", "console:write"];

pub fn is_console_role(role: &str) -> bool {
    CONSOLE_ROLES.contains(&role)
}

/// Checks a principal against the permission a route needs.
fn authorize(
    principal: Arc<Principal>,
    needed: Option<&(PermissionId, Arc<str>)>,
) -> Result<Arc<Principal>, AuthError> {
    match needed {
        Some((id, name)) if !principal.permissions.contains(*id) => Err(AuthError::Forbidden {
            permission: name.clone(),
            principal,
        }),
        _ => Ok(principal),
    }
}

/// Registered clients of `/oauth/token` and the keys that sign their tokens.
fn build_clients(config: &Config, roles: &Roles, errors: &mut Vec<String>) -> tokens::Issued {
    let oauth = &config.oauth;
    let mut keys = Vec::new();
    let refs = oauth
        .signing_key
        .iter()
        .map(|r| ("oauth.signing_key".to_string(), r));
    let previous = oauth
        .previous_signing_keys
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("oauth.previous_signing_keys[{i}]"), r));
    for (at, r) in refs.chain(previous) {
        match r.resolve() {
            Ok(s) if s.expose().len() >= tokens::MIN_KEY_BYTES => keys.push(s),
            Ok(_) => errors.push(format!(
                "{at}: must be at least {} bytes (e.g. `openssl rand -base64 48`)",
                tokens::MIN_KEY_BYTES
            )),
            Err(e) => errors.push(format!("{at}: {e}")),
        }
    }
    if oauth.signing_key.is_none() && !config.clients.is_empty() {
        errors.push("oauth.signing_key: required when clients are configured".into());
    }
    if oauth.signing_key.is_none() && !oauth.previous_signing_keys.is_empty() {
        errors.push("oauth.previous_signing_keys: needs oauth.signing_key".into());
    }
    if !(120..=86_400 * 30).contains(&oauth.expires_in) {
        errors.push(
            "oauth.expires_in: must be between 120 and 2592000 seconds (clients refresh about a minute ahead)"
                .into(),
        );
    }
    if oauth.max_requests_per_minute == 0 || oauth.max_failures_per_minute == 0 {
        errors.push(
            "oauth: max_requests_per_minute and max_failures_per_minute must be at least 1".into(),
        );
    }
    let mut issued = tokens::Issued::new(keys);
    let mut seen = std::collections::HashSet::new();
    for (i, c) in config.clients.iter().enumerate() {
        let at = format!("clients[{i}] ({})", c.client_id);
        if !seen.insert(c.client_id.as_str()) {
            errors.push(format!("{at}.client_id: duplicate client id"));
            continue;
        }
        if c.client_id.is_empty() || c.client_id.len() > 128 {
            errors.push(format!("{at}.client_id: must be 1 to 128 characters"));
        }
        for (j, r) in c.roles.iter().enumerate() {
            if !roles.contains(r) && !is_console_role(r) {
                errors.push(format!("{at}.roles[{j}]: unknown role '{r}'"));
            }
        }
        if !config.tenants.contains_key(&c.tenant) {
            errors.push(format!("{at}.tenant: unknown tenant '{}'", c.tenant));
        }
        let perms = roles.union_of(c.roles.iter().map(String::as_str));
        match tokens::Client::new(
            &c.client_id,
            &c.secret_hash,
            c.enabled,
            &c.roles,
            &c.tenant,
            perms,
        ) {
            Ok(client) => {
                if !issued.insert(client) {
                    errors.push(format!(
                        "{at}.client_id: its tag collides with another client's; rename it"
                    ));
                }
            }
            Err(e) => errors.push(format!("{at}.secret_hash: {e}")),
        }
    }
    issued
}

static X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");

/// The caller's credential: `X-API-Key`, or the token of `Authorization: Bearer`.
pub fn credential_from(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    let api_key = api_key_header(headers)?;
    let bearer = bearer_header(headers)?;
    match (api_key, bearer) {
        // The same key sent both ways is one credential.
        (Some(k), Some(b)) if k == b => Ok(k),
        (Some(_), Some(_)) => Err(AuthError::Conflicting),
        (Some(k), None) | (None, Some(k)) => Ok(k),
        (None, None) => Err(AuthError::Missing),
    }
}

fn api_key_header(headers: &http::HeaderMap) -> Result<Option<&str>, AuthError> {
    let mut api_keys = headers.get_all(&X_API_KEY).iter();
    let Some(v) = api_keys.next() else {
        return Ok(None);
    };
    if api_keys.next().is_some() {
        return Err(AuthError::Malformed("more than one X-API-Key header"));
    }
    v.to_str()
        .map(|k| Some(k.trim()))
        .map_err(|_| AuthError::Malformed("X-API-Key is not visible ASCII"))
}

fn bearer_header(headers: &http::HeaderMap) -> Result<Option<&str>, AuthError> {
    let mut auths = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(v) = auths.next() else {
        return Ok(None);
    };
    if auths.next().is_some() {
        return Err(AuthError::Malformed("more than one Authorization header"));
    }
    if headers.contains_key(&X_API_KEY) {
        // Any Authorization beside an X-API-Key is a second credential unless it is the same
        // key as a bearer token; an unreadable one cannot be that.
        let same = v
            .to_str()
            .ok()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        return same.map(Some).ok_or(AuthError::Conflicting);
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
    Ok(Some(token))
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
    fn two_different_credentials_are_refused_and_one_sent_twice_is_not() {
        let both = |auth: &str, key: &str| {
            credential_from(&headers(&[("authorization", auth), ("x-api-key", key)]))
                .map(str::to_string)
        };
        assert!(matches!(
            both("Bearer tenant-b-key", "tenant-a-key"),
            Err(AuthError::Conflicting)
        ));
        assert!(matches!(
            both("Basic dXNlcjpwdw==", "tenant-a-key"),
            Err(AuthError::Conflicting)
        ));
        assert_eq!(both("Bearer same-key", "same-key").unwrap(), "same-key");
        let one = headers(&[("x-api-key", "k1")]);
        assert_eq!(credential_from(&one).unwrap(), "k1");
        let one = headers(&[("authorization", "Bearer k2")]);
        assert_eq!(credential_from(&one).unwrap(), "k2");
        assert!(matches!(
            credential_from(&HeaderMap::new()),
            Err(AuthError::Missing)
        ));
    }

    /// A route's permission, as `Auth::admit` takes it.
    type Needed = (PermissionId, Arc<str>);

    /// An `Auth` with one enabled API key (role `viewer`: every `*:read` permission) and one
    /// disabled key, both of tenant `acme`; the permissions `instances:read` and
    /// `instances:delete`.
    fn auth_with_keys(viewer: &str, disabled: &str) -> (Auth, Needed, Needed) {
        let hash = |k: &str| hex::encode(api_keys::hash_key(k));
        let yaml = format!(
            "accounts:\n  a:\n    endpoints: [{{url: \"http://127.0.0.1:9\"}}]\n    \
             credentials: {{type: static_token, token: {{env: UNUSED}}}}\n\
             tenants:\n  acme: {{account: a}}\n\
             api_keys:\n  - {{name: v, hash: \"sha256:{}\", roles: [viewer], tenant: acme}}\n  \
             - {{name: d, hash: \"sha256:{}\", roles: [viewer], tenant: acme, enabled: false}}\n",
            hash(viewer),
            hash(disabled),
        );
        let config = crate::config::parse(&yaml).unwrap();
        let mut reg = permissions::PermissionRegistry::default();
        let read = reg.intern("instances:read").unwrap();
        let delete = reg.intern("instances:delete").unwrap();
        let mut r = std::collections::BTreeMap::new();
        r.insert("viewer".to_string(), vec!["*:read".to_string()]);
        let roles = Roles::build(&r, &reg).unwrap();
        let auth = Auth::build(&config, roles, &AuthState::default()).unwrap();
        (
            auth,
            (read, "instances:read".into()),
            (delete, "instances:delete".into()),
        )
    }

    #[tokio::test]
    async fn admit_authenticates_then_authorizes_in_one_call() {
        let (viewer, disabled) = (api_keys::generate(), api_keys::generate());
        let (auth, read, delete) = auth_with_keys(&viewer, &disabled);
        let bearer = |k: &str| headers(&[("authorization", &format!("Bearer {k}"))]);
        let p = auth.admit(&bearer(&viewer), Some(&read)).await.unwrap();
        assert_eq!((&*p.id, &*p.tenant), ("key:v", "acme"));
        // A route without a permission takes any authenticated caller.
        assert!(auth.admit(&bearer(&viewer), None).await.is_ok());
        // A refused permission names it, and who was refused.
        let e = auth
            .admit(&bearer(&viewer), Some(&delete))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "forbidden");
        assert!(
            matches!(&e, AuthError::Forbidden { permission, .. } if &**permission == "instances:delete")
        );
        assert_eq!(e.principal().map(|p| &*p.id), Some("key:v"));
        // Refused before authorization: no principal.
        let e = auth.admit(&headers(&[]), Some(&read)).await.unwrap_err();
        assert_eq!((e.reason(), e.principal().is_none()), ("missing", true));
        let e = auth.admit(&bearer(&disabled), None).await.unwrap_err();
        assert_eq!(e.reason(), "disabled_key");
        let e = auth
            .admit(&bearer(&api_keys::generate()), None)
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "unknown_key");
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
        assert!(matches!(
            credential_from(&headers(&[])).unwrap_err(),
            AuthError::Missing
        ));
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
