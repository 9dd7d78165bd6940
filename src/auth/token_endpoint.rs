//! `POST /oauth/token`: the client-credentials grant (RFC 6749 section 4.4) as OrionVM serves
//! it, so that OrionVM clients fetch their token from the proxy unchanged. Credentials come in
//! a JSON or form body, or as HTTP Basic. Errors carry the RFC 6749 codes in the one error
//! body. A per-source-address limit guards against guessing secrets.

use super::Auth;
use super::tokens;
use crate::config::auth::OAuthConfig;
use crate::config::secret::Secret;
use crate::errors::ApiError;
use base64::Engine;
use bytes::Bytes;
use once_cell::sync::Lazy;
use pingora_limits::rate::Rate;
use std::net::IpAddr;
use std::time::Duration;

/// Largest token request body read.
pub const MAX_BODY: usize = 8 * 1024;

static REQUESTS: Lazy<Rate> = Lazy::new(|| Rate::new(Duration::from_secs(60)));
static FAILURES: Lazy<Rate> = Lazy::new(|| Rate::new(Duration::from_secs(60)));
/// Secret checks (Argon2, deliberately slow) running at once, whatever the source: the
/// proxy's CPU stays with the API under a distributed guessing attempt.
const MAX_CONCURRENT_CHECKS: usize = 4;
static CHECKING: Lazy<tokio::sync::Semaphore> =
    Lazy::new(|| tokio::sync::Semaphore::new(MAX_CONCURRENT_CHECKS));

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

/// Sliding estimate of events in the last minute.
fn per_minute(rate: &Rate, ip: &IpAddr) -> f64 {
    rate.rate_with(ip, |c| {
        c.prev_samples as f64 * (1.0 - c.current_interval_fraction) + c.curr_samples as f64
    })
}

/// Answers a token request: the JSON body of a 200, or the error.
pub async fn issue(
    auth: &Auth,
    oauth: &OAuthConfig,
    client_ip: Option<IpAddr>,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<Bytes, OAuthError> {
    let ip = client_ip.unwrap_or(IpAddr::from([0u8, 0, 0, 0]));
    if per_minute(&FAILURES, &ip) >= oauth.max_failures_per_minute as f64 {
        return Err(OAuthError::TooManyRequests { retry_after: 60 });
    }
    REQUESTS.observe(&ip, 1);
    if per_minute(&REQUESTS, &ip) > oauth.max_requests_per_minute as f64 {
        return Err(OAuthError::TooManyRequests { retry_after: 60 });
    }
    let result = check(auth, oauth, headers, body).await;
    if let Err(e) = &result
        && !matches!(e, OAuthError::NotConfigured | OAuthError::Busy)
    {
        FAILURES.observe(&ip, 1);
    }
    result
}

async fn check(
    auth: &Auth,
    oauth: &OAuthConfig,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<Bytes, OAuthError> {
    let req = parse(headers, body)?;
    let issued = auth.issued();
    let client = issued.client(&req.client_id).cloned();
    let secret = req.client_secret;
    let Ok(Ok(_permit)) = tokio::time::timeout(Duration::from_secs(2), CHECKING.acquire()).await
    else {
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
    Ok(Bytes::from(body.to_string()))
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
        assert_eq!(ApiError::from(e).status, 400);
        let e = parse(&h(&[]), b"client_id=a&client_secret=b").unwrap_err();
        assert_eq!(e.reason(), "invalid_request");
        let e = parse(&h(&[]), b"grant_type=client_credentials").unwrap_err();
        assert_eq!(e.reason(), "invalid_client");
        assert_eq!(ApiError::from(e).status, 401);
        let e = parse(
            &h(&[]),
            b"grant_type=client_credentials&client_id=a&client_id=b&client_secret=c",
        )
        .unwrap_err();
        assert_eq!(e.reason(), "invalid_request");
        let e = parse(&h(&[("content-type", "application/json")]), b"[1]").unwrap_err();
        assert_eq!(e.reason(), "invalid_request");
    }
}
