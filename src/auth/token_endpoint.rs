//! `POST /oauth/token`: the client-credentials grant (RFC 6749 section 4.4) as OrionVM serves
//! it, so that OrionVM clients fetch their token from the proxy unchanged. Credentials come in
//! a JSON or form body, or as HTTP Basic. Errors carry the RFC 6749 codes in the one error
//! body. A per-source-address limit guards against guessing secrets.
//!
//! [`answer`] decides: it takes the caller's address, headers and body and returns the 200
//! answer or the error; the proxy reads the body and writes the answer. The per-address
//! counters are in the state's [`Counters`] store, the secret-check slots in [`AuthState`].

use super::tokens;
use super::{Auth, AuthState};
use crate::config::secret::Secret;
use crate::store::{Counters, StoreError, WindowCount};
use base64::Engine;
use bytes::Bytes;
use std::net::IpAddr;
use std::time::Duration;

/// Largest token request body read.
pub const MAX_BODY: usize = 8 * 1024;

/// Secret checks (Argon2, deliberately slow) running at once, whatever the source: the
/// proxy's CPU stays with the API under a distributed guessing attempt.
pub const MAX_CONCURRENT_CHECKS: usize = 4;
/// How long a request waits for a secret-check slot before it is 503.
pub const CHECK_WAIT: Duration = Duration::from_secs(2);

/// Counter scopes in the [`Counters`] store, counted per source address (its text).
const REQUESTS: &str = "token.requests";
const FAILURES: &str = "token.failures";
const WINDOW: Duration = Duration::from_secs(60);

/// RFC 6749 section 5.2 errors, plus the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthError {
    InvalidRequest(String),
    /// Unknown client, wrong secret, disabled, or no client authentication.
    InvalidClient {
        basic: bool,
    },
    UnsupportedGrantType(String),
    TooManyRequests {
        retry_after: u64,
    },
    /// No signing key configured: the endpoint cannot issue.
    NotConfigured,
    /// Too many secret checks in progress.
    Busy,
}

impl OAuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) => "invalid_request",
            OAuthError::InvalidClient { .. } => "invalid_client",
            OAuthError::UnsupportedGrantType(_) => "unsupported_grant_type",
            OAuthError::TooManyRequests { .. } => "rate_limited",
            OAuthError::NotConfigured => "not_configured",
            OAuthError::Busy => "busy",
        }
    }
}

/// A parsed token request. The client secret is a [`Secret`]: `Debug` never shows it.
#[derive(Debug, PartialEq, Eq)]
pub struct TokenRequest {
    pub grant_type: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub basic: bool,
}

/// Reads the grant from the body (JSON or form) and the client from the body or Basic auth.
pub fn parse(headers: &http::HeaderMap, body: &[u8]) -> Result<TokenRequest, OAuthError> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let trimmed = body.trim_ascii_start();
    let is_json = ct.contains("json") || (!ct.contains("form") && trimmed.starts_with(b"{"));
    let params: Vec<(String, String)> = if trimmed.is_empty() {
        Vec::new()
    } else if is_json {
        let v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| OAuthError::InvalidRequest("the body is not a JSON object".to_string()))?;
        let obj = v.as_object().ok_or_else(|| {
            OAuthError::InvalidRequest("the body is not a JSON object".to_string())
        })?;
        let mut out = Vec::new();
        for (k, v) in obj {
            match v {
                serde_json::Value::String(s) => out.push((k.clone(), s.clone())),
                serde_json::Value::Null => {}
                _ => {
                    return Err(OAuthError::InvalidRequest(format!(
                        "'{k}' must be a string"
                    )));
                }
            }
        }
        out
    } else {
        serde_urlencoded::from_bytes(body).map_err(|_| {
            OAuthError::InvalidRequest("the body is not form-urlencoded".to_string())
        })?
    };
    let get = |name: &str| -> Result<Option<String>, OAuthError> {
        let mut found = params.iter().filter(|(k, _)| k == name);
        let first = found.next().map(|(_, v)| v.clone());
        if found.next().is_some() {
            return Err(OAuthError::InvalidRequest(format!(
                "'{name}' is given more than once"
            )));
        }
        Ok(first.filter(|v| !v.is_empty()))
    };
    let grant_type = get("grant_type")?
        .ok_or_else(|| OAuthError::InvalidRequest("grant_type is missing".to_string()))?;
    let body_id = get("client_id")?;
    let body_secret = get("client_secret")?;
    let basic = basic_credentials(headers)?;
    if grant_type != "client_credentials" {
        return Err(OAuthError::UnsupportedGrantType(
            grant_type.chars().take(64).collect(),
        ));
    }
    match (basic, body_id, body_secret) {
        (Some((id, secret)), None, None) => Ok(TokenRequest {
            grant_type,
            client_id: id,
            client_secret: Secret::new(secret),
            basic: true,
        }),
        (Some(_), _, _) => Err(OAuthError::InvalidRequest(
            "send the client credentials either as Basic auth or in the body, not both".to_string(),
        )),
        (None, Some(id), Some(secret)) => Ok(TokenRequest {
            grant_type,
            client_id: id,
            client_secret: Secret::new(secret),
            basic: false,
        }),
        (None, _, _) => Err(OAuthError::InvalidClient { basic: false }),
    }
}

/// `Authorization: Basic base64(urlencoded id ":" urlencoded secret)`, if sent.
fn basic_credentials(headers: &http::HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(v) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || OAuthError::InvalidClient { basic: true };
    let v = v.to_str().map_err(|_| bad())?.trim();
    let Some((scheme, rest)) = v.split_once(' ') else {
        return Err(bad());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::InvalidRequest(
            "the token endpoint takes client credentials in the body or as Basic auth".to_string(),
        ));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| bad())
    };
    Ok(Some((dec(id)?, dec(secret)?)))
}

/// The 200 answer to a token request (RFC 6749 section 5.1): the JSON body and its extra
/// headers (`Pragma: no-cache`; the proxy sends `Cache-Control: no-store` on every answer it
/// makes itself). The body holds the token, so `Debug` shows only its length.
pub struct TokenReply {
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl std::fmt::Debug for TokenReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReply")
            .field("headers", &self.headers)
            .field(
                "body",
                &format_args!("[{} bytes, redacted]", self.body.len()),
            )
            .finish()
    }
}

/// Seconds until a counter's window ends, at least 1: the `Retry-After` of a 429.
fn seconds_left(c: &WindowCount) -> u64 {
    let d = c.resets_in;
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// A counter the store could not read or count does not refuse the request (like a rate
/// limiter whose store is down in Kong or Envoy); the failure is logged.
fn counted(what: &str, r: Result<WindowCount, StoreError>) -> Option<WindowCount> {
    match r {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("token endpoint: {what} not counted: {e}");
            None
        }
    }
}

/// Answers a token request from `client_ip`: the 200 answer, or the error (counted in the
/// `auth_failures` metric). Per source address and one-minute window: past
/// `oauth.max_failures_per_minute` failed attempts every request is 429 until the window ends;
/// past `oauth.max_requests_per_minute` requests, too.
pub async fn answer(
    auth: &Auth,
    state: &AuthState,
    counters: &dyn Counters,
    client_ip: Option<IpAddr>,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<TokenReply, OAuthError> {
    let result = limited(auth, state, counters, client_ip, headers, body).await;
    if let Err(e) = &result {
        crate::metrics::auth_failure(e.reason());
    }
    result
}

async fn limited(
    auth: &Auth,
    state: &AuthState,
    counters: &dyn Counters,
    client_ip: Option<IpAddr>,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<TokenReply, OAuthError> {
    let oauth = &auth.oauth;
    let key = client_ip
        .unwrap_or(IpAddr::from([0u8, 0, 0, 0]))
        .to_string();
    if let Some(c) = counted("failures", counters.peek(FAILURES, WINDOW, &key).await)
        && c.count >= u64::from(oauth.max_failures_per_minute)
    {
        return Err(OAuthError::TooManyRequests {
            retry_after: seconds_left(&c),
        });
    }
    if let Some(c) = counted("requests", counters.hit(REQUESTS, WINDOW, &key, 1).await)
        && c.count > u64::from(oauth.max_requests_per_minute)
    {
        return Err(OAuthError::TooManyRequests {
            retry_after: seconds_left(&c),
        });
    }
    let result = check(auth, state, headers, body).await;
    if let Err(e) = &result
        && !matches!(e, OAuthError::NotConfigured | OAuthError::Busy)
    {
        counted("a failure", counters.hit(FAILURES, WINDOW, &key, 1).await);
    }
    result
}

async fn check(
    auth: &Auth,
    state: &AuthState,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<TokenReply, OAuthError> {
    let oauth = &auth.oauth;
    let req = parse(headers, body)?;
    let issued = auth.issued();
    let client = auth
        .client(&req.client_id)
        .await
        .map_err(|_| OAuthError::Busy)?;
    let secret = req.client_secret;
    let Ok(Ok(_permit)) = tokio::time::timeout(CHECK_WAIT, state.checking.acquire()).await else {
        return Err(OAuthError::Busy);
    };
    let matched = tokio::task::spawn_blocking(move || match client {
        Some(c) => c.secret_matches(secret.expose()).then_some(c),
        None => {
            tokens::burn_a_verification(secret.expose());
            None
        }
    })
    .await
    .ok()
    .flatten();
    let Some(client) = matched.filter(|c| c.enabled) else {
        return Err(OAuthError::InvalidClient { basic: req.basic });
    };
    if !issued.can_sign() {
        return Err(OAuthError::NotConfigured);
    }
    let expires_at = tokens::now_unix() + oauth.expires_in;
    let token = issued
        .mint(&client, expires_at)
        .ok_or(OAuthError::NotConfigured)?;
    let body = serde_json::json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": oauth.expires_in,
        "refresh_token": null,
        "scope": "",
    });
    Ok(TokenReply {
        headers: vec![("pragma", "no-cache".to_string())],
        body: Bytes::from(body.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut m = http::HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn json_form_and_basic() {
        let want = TokenRequest {
            grant_type: "client_credentials".into(),
            client_id: "ci".into(),
            client_secret: Secret::new("s e"),
            basic: false,
        };
        let json = br#"{"grant_type":"client_credentials","client_id":"ci","client_secret":"s e"}"#;
        assert_eq!(
            parse(&h(&[("content-type", "application/json")]), json).unwrap(),
            want
        );
        assert_eq!(parse(&h(&[]), json).unwrap(), want, "JSON sniffed");
        let form = b"grant_type=client_credentials&client_id=ci&client_secret=s+e";
        assert_eq!(
            parse(
                &h(&[("content-type", "application/x-www-form-urlencoded")]),
                form
            )
            .unwrap(),
            want
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("ci:s%20e");
        let r = parse(
            &h(&[("authorization", &format!("Basic {basic}"))]),
            b"grant_type=client_credentials",
        )
        .unwrap();
        assert_eq!(
            (r.client_id.as_str(), r.client_secret.expose(), r.basic),
            ("ci", "s e", true)
        );
    }

    #[test]
    fn debug_output_never_shows_the_client_secret() {
        let secret = "correct-horse-battery-staple";
        let form = format!("grant_type=client_credentials&client_id=ci&client_secret={secret}");
        let r = parse(&h(&[]), form.as_bytes()).unwrap();
        let shown = format!("{r:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("ci"), "the client id may show: {shown}");
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("ci:{secret}"));
        let r = parse(
            &h(&[("authorization", &format!("Basic {basic}"))]),
            b"grant_type=client_credentials",
        )
        .unwrap();
        let shown = format!("{r:?} {r:#?}");
        assert!(!shown.contains(secret), "{shown}");
    }

    #[test]
    fn errors_follow_rfc_6749() {
        let e = parse(&h(&[]), b"grant_type=password&client_id=a&client_secret=b").unwrap_err();
        assert_eq!(e.reason(), "unsupported_grant_type");
        // The statuses (400 here, 401 for invalid_client): `errors::auth` tests.
        let e = parse(&h(&[]), b"client_id=a&client_secret=b").unwrap_err();
        assert_eq!(e.reason(), "invalid_request");
        let e = parse(&h(&[]), b"grant_type=client_credentials").unwrap_err();
        assert_eq!(e, OAuthError::InvalidClient { basic: false });
        let e = parse(
            &h(&[]),
            b"grant_type=client_credentials&client_id=a&client_id=b&client_secret=c",
        )
        .unwrap_err();
        assert_eq!(e.reason(), "invalid_request");
        let e = parse(&h(&[("content-type", "application/json")]), b"[1]").unwrap_err();
        assert_eq!(e.reason(), "invalid_request");
    }

    mod decide {
        use super::super::*;
        use crate::auth::permissions::{PermissionRegistry, Roles};
        use crate::store::memory::MemoryCounters;
        use std::collections::BTreeMap;

        const SECRET: &str = "the-right-secret";

        /// An `Auth` with one client `ci` (secret [`SECRET`]) and the given limits.
        fn auth(dir: &std::path::Path, requests: u32, failures: u32) -> Auth {
            let key = dir.join("signing-key");
            std::fs::write(&key, "k".repeat(48)).unwrap();
            let hash = tokens::hash_secret(SECRET).unwrap();
            let yaml = format!(
                "accounts:\n  a:\n    endpoints: [{{url: \"http://127.0.0.1:9\"}}]\n    \
                 credentials: {{type: static_token, token: {{env: UNUSED}}}}\n\
                 tenants:\n  acme: {{account: a}}\n\
                 oauth:\n  signing_key: {{file: \"{}\"}}\n  max_requests_per_minute: {requests}\n  \
                 max_failures_per_minute: {failures}\n\
                 clients:\n  - {{client_id: ci, secret_hash: '{hash}', roles: [viewer], tenant: acme}}\n",
                key.display()
            );
            let config = crate::config::parse(&yaml).unwrap();
            let mut reg = PermissionRegistry::default();
            reg.intern("instances:read").unwrap();
            let mut r = BTreeMap::new();
            r.insert("viewer".to_string(), vec!["*:read".to_string()]);
            let roles = Roles::build(&r, &reg).unwrap();
            Auth::build(&config, roles, &AuthState::default()).unwrap()
        }

        fn form(secret: &str) -> Vec<u8> {
            format!("grant_type=client_credentials&client_id=ci&client_secret={secret}")
                .into_bytes()
        }

        fn ip(last: u8) -> Option<IpAddr> {
            Some(IpAddr::from([192, 0, 2, last]))
        }

        #[tokio::test]
        async fn issues_a_64_character_token_kept_out_of_caches_and_logs() {
            let dir = tempfile::tempdir().unwrap();
            let auth = auth(dir.path(), 10, 10);
            let (state, counters) = (AuthState::default(), MemoryCounters::default());
            let headers = http::HeaderMap::new();
            let reply = answer(&auth, &state, &counters, ip(1), &headers, &form(SECRET))
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            let token = v["access_token"].as_str().unwrap();
            assert_eq!(token.len(), 64);
            assert_eq!(
                (v["token_type"].as_str(), v["expires_in"].as_u64()),
                (Some("bearer"), Some(3600))
            );
            assert!(v["refresh_token"].is_null() && v["scope"] == "");
            assert_eq!(reply.headers, vec![("pragma", "no-cache".to_string())]);
            let shown = format!("{reply:?}");
            assert!(!shown.contains(token), "{shown}");
        }

        #[tokio::test]
        async fn requests_per_address_are_counted_under_the_address_text() {
            let dir = tempfile::tempdir().unwrap();
            let auth = auth(dir.path(), 2, 10);
            let (state, counters) = (AuthState::default(), MemoryCounters::default());
            let headers = http::HeaderMap::new();
            for _ in 0..2 {
                answer(&auth, &state, &counters, ip(1), &headers, &form(SECRET))
                    .await
                    .unwrap();
            }
            match answer(&auth, &state, &counters, ip(1), &headers, &form(SECRET)).await {
                Err(OAuthError::TooManyRequests { retry_after }) => {
                    assert!((1..=60).contains(&retry_after), "{retry_after}")
                }
                other => panic!("{other:?}"),
            }
            // The key is the address as text, stable across processes.
            let c = counters.peek(REQUESTS, WINDOW, "192.0.2.1").await.unwrap();
            assert_eq!(c.count, 3);
            // Another address is not limited.
            assert!(
                answer(&auth, &state, &counters, ip(2), &headers, &form(SECRET))
                    .await
                    .is_ok()
            );
        }

        #[tokio::test]
        async fn failed_attempts_lock_the_address_out_even_with_the_right_secret() {
            let dir = tempfile::tempdir().unwrap();
            let auth = auth(dir.path(), 100, 2);
            let (state, counters) = (AuthState::default(), MemoryCounters::default());
            let headers = http::HeaderMap::new();
            for guess in ["guess-1", "guess-2"] {
                assert_eq!(
                    answer(&auth, &state, &counters, ip(3), &headers, &form(guess))
                        .await
                        .unwrap_err(),
                    OAuthError::InvalidClient { basic: false }
                );
            }
            let c = counters.peek(FAILURES, WINDOW, "192.0.2.3").await.unwrap();
            assert_eq!(c.count, 2);
            assert!(matches!(
                answer(&auth, &state, &counters, ip(3), &headers, &form(SECRET)).await,
                Err(OAuthError::TooManyRequests { .. })
            ));
            // Counters belong to the state that was handed in: another store knows nothing.
            let fresh = MemoryCounters::default();
            assert!(
                answer(&auth, &state, &fresh, ip(3), &headers, &form(SECRET))
                    .await
                    .is_ok()
            );
        }

        #[tokio::test]
        async fn secret_checks_are_bounded_per_state() {
            let dir = tempfile::tempdir().unwrap();
            let auth = auth(dir.path(), 100, 100);
            let (state, counters) = (AuthState::default(), MemoryCounters::default());
            let headers = http::HeaderMap::new();
            let all = state
                .checking
                .acquire_many(MAX_CONCURRENT_CHECKS as u32)
                .await
                .unwrap();
            assert_eq!(
                answer(&auth, &state, &counters, ip(4), &headers, &form(SECRET))
                    .await
                    .unwrap_err(),
                OAuthError::Busy
            );
            drop(all);
            // A busy endpoint is not the caller's failure.
            let c = counters.peek(FAILURES, WINDOW, "192.0.2.4").await.unwrap();
            assert_eq!(c.count, 0);
            // Another state has its own slots.
            let other = AuthState::default();
            let _held = state
                .checking
                .acquire_many(MAX_CONCURRENT_CHECKS as u32)
                .await;
            assert!(
                answer(&auth, &other, &counters, ip(4), &headers, &form(SECRET))
                    .await
                    .is_ok()
            );
        }
    }
}
