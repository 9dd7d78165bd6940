//! The proxy's own credentials toward OrionVM: a static token, or OAuth2 client credentials
//! fetched from OrionVM's `/oauth/token`, cached, refreshed ahead of expiry, and dropped when
//! OrionVM answers `invalid_token` so that the one retry fetches a fresh one.

use super::trace::{CallKind, CallTracer};
use crate::config::secret::Secret;
use arc_swap::ArcSwapOption;
use http::HeaderValue;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub enum CredentialError {
    /// OrionVM's token endpoint could not be reached or refused the proxy's client.
    TokenFetch(String),
    /// The account signs its requests and has no bearer token (`authorization()` only).
    NoBearer,
}

impl std::fmt::Display for CredentialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialError::TokenFetch(m) => write!(f, "fetching the OrionVM token failed: {m}"),
            CredentialError::NoBearer => write!(f, "the account signs requests and has no token"),
        }
    }
}

struct CachedToken {
    header: HeaderValue,
    refresh_at: Instant,
    expires_at: Instant,
}

pub struct OAuth2Source {
    http: reqwest::Client,
    token_url: String,
    client_id: Secret,
    client_secret: Secret,
    refresh_before: Duration,
    current: ArcSwapOption<CachedToken>,
    refresh: tokio::sync::Mutex<()>,
    fetched: AtomicU64,
}

pub enum Credentials {
    Static(HeaderValue),
    OAuth2(OAuth2Source),
    /// RFC 9421 signatures ([`super::signing`]), optionally with a static bearer token.
    Signed {
        signer: super::signing::Signer,
        bearer: Option<HeaderValue>,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::Static(_) => "Credentials::Static([redacted])",
            Credentials::OAuth2(_) => "Credentials::OAuth2([redacted])",
            Credentials::Signed { .. } => "Credentials::Signed([redacted])",
        })
    }
}

fn bearer(token: &str) -> Result<HeaderValue, String> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the token has characters a header cannot carry".to_string())?;
    v.set_sensitive(true);
    Ok(v)
}

impl Credentials {
    pub fn static_token(token: &Secret) -> Result<Credentials, String> {
        Ok(Credentials::Static(bearer(token.expose())?))
    }

    pub fn oauth2(
        token_url: String,
        client_id: Secret,
        client_secret: Secret,
        refresh_before: Duration,
        ca_pem: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Credentials, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("orion-proxy/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_pem {
            for cert in
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("CA bundle: {e}"))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Credentials::OAuth2(OAuth2Source {
            http,
            token_url,
            client_id,
            client_secret,
            refresh_before,
            current: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(()),
            fetched: AtomicU64::new(0),
        }))
    }

    /// The `Authorization` value for the next upstream request.
    pub async fn authorization(&self) -> Result<HeaderValue, CredentialError> {
        self.authorization_traced(None).await
    }

    /// [`Self::authorization`]; a token fetched on the way is a span of `trace`.
    pub async fn authorization_traced(
        &self,
        trace: Option<&dyn CallTracer>,
    ) -> Result<HeaderValue, CredentialError> {
        match self {
            Credentials::Static(v) => Ok(v.clone()),
            Credentials::OAuth2(src) => src.authorization(trace).await,
            Credentials::Signed { bearer, .. } => bearer.clone().ok_or(CredentialError::NoBearer),
        }
    }

    /// The `Authorization` value to send, if this account sends one (a signing account
    /// without a token sends none); a token fetched on the way is a span of `trace`.
    pub async fn authorization_header(
        &self,
        trace: Option<&dyn CallTracer>,
    ) -> Result<Option<HeaderValue>, CredentialError> {
        match self {
            Credentials::Signed { bearer, .. } => Ok(bearer.clone()),
            _ => self.authorization_traced(trace).await.map(Some),
        }
    }

    /// The signer, when the account signs its requests.
    pub fn signer(&self) -> Option<&super::signing::Signer> {
        match self {
            Credentials::Signed { signer, .. } => Some(signer),
            _ => None,
        }
    }

    pub fn signed(
        signer: super::signing::Signer,
        token: Option<&Secret>,
    ) -> Result<Credentials, String> {
        let bearer = token.map(|t| bearer(t.expose())).transpose()?;
        Ok(Credentials::Signed { signer, bearer })
    }

    /// OrionVM said the token is no good: forget it (only if it is still the current one).
    pub fn invalidate(&self, used: &HeaderValue) {
        if let Credentials::OAuth2(src) = self {
            let cur = src.current.load();
            if cur.as_ref().is_some_and(|c| c.header == used) {
                src.current.store(None);
            }
        }
    }

    /// How many tokens were fetched from OrionVM (0 for a static token).
    pub fn tokens_fetched(&self) -> u64 {
        match self {
            Credentials::Static(_) | Credentials::Signed { .. } => 0,
            Credentials::OAuth2(src) => src.fetched.load(Ordering::Relaxed),
        }
    }

    pub fn mode(&self) -> CredentialMode {
        match self {
            Credentials::Static(_) => CredentialMode::StaticToken,
            Credentials::OAuth2(_) => CredentialMode::OAuth2,
            Credentials::Signed { .. } => CredentialMode::Signature,
        }
    }

    /// Whether OrionVM refusing the token is worth one retry with a fresh one (only a fetched
    /// token can be replaced).
    pub fn refreshes(&self) -> bool {
        self.mode() == CredentialMode::OAuth2
    }
}

/// How an account authenticates to OrionVM (reported by the admin API as `static_token`,
/// `oauth2` or `signature`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum CredentialMode {
    #[serde(rename = "static_token")]
    StaticToken,
    #[serde(rename = "oauth2")]
    OAuth2,
    #[serde(rename = "signature")]
    Signature,
}

impl CredentialMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            CredentialMode::StaticToken => "static_token",
            CredentialMode::OAuth2 => "oauth2",
            CredentialMode::Signature => "signature",
        }
    }
}

impl std::fmt::Display for CredentialMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl OAuth2Source {
    async fn authorization(
        &self,
        trace: Option<&dyn CallTracer>,
    ) -> Result<HeaderValue, CredentialError> {
        let now = Instant::now();
        if let Some(tok) = self.current.load_full()
            && now < tok.refresh_at
        {
            return Ok(tok.header.clone());
        }
        // One fetch at a time; whoever waited re-checks what the winner stored.
        let _guard = self.refresh.lock().await;
        let stale = self.current.load_full();
        if let Some(tok) = &stale
            && Instant::now() < tok.refresh_at
        {
            return Ok(tok.header.clone());
        }
        let fetched = self.fetch(trace).await;
        if fetched.is_err() {
            crate::metrics::token_refresh_failed();
        }
        match fetched {
            Ok(tok) => {
                let header = tok.header.clone();
                self.current.store(Some(Arc::new(tok)));
                Ok(header)
            }
            Err(e) => match stale {
                // Refreshing ahead of expiry failed; the old token is still good for now.
                Some(tok) if Instant::now() < tok.expires_at => {
                    log::warn!("refreshing the OrionVM token failed, using the current one: {e}");
                    Ok(tok.header.clone())
                }
                _ => Err(e),
            },
        }
    }

    async fn fetch(&self, trace: Option<&dyn CallTracer>) -> Result<CachedToken, CredentialError> {
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let body = serde_json::json!({
            "grant_type": "client_credentials",
            "client_id": self.client_id.expose(),
            "client_secret": self.client_secret.expose(),
        });
        let started = Instant::now();
        let span = trace.map(|t| t.begin(CallKind::Token, "POST", path_of(&self.token_url)));
        let mut req = self.http.post(&self.token_url).json(&body);
        if let Some(span) = &span {
            req = req.header("traceparent", span.traceparent());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let why = describe_reqwest(&e);
                if let Some(span) = span {
                    span.end(None, Some(&why));
                }
                return Err(CredentialError::TokenFetch(why));
            }
        };
        let status = resp.status();
        if let Some(span) = span {
            span.end(Some(status.as_u16()), None);
        }
        if !status.is_success() {
            return Err(CredentialError::TokenFetch(format!(
                "OrionVM answered {status}"
            )));
        }
        let answer: TokenAnswer = resp.json().await.map_err(|_| {
            CredentialError::TokenFetch("the token answer is not the expected JSON".into())
        })?;
        let header = bearer(&answer.access_token).map_err(CredentialError::TokenFetch)?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600).max(1));
        let expires_at = started + lifetime;
        let lead = self.refresh_before.min(lifetime / 2);
        self.fetched.fetch_add(1, Ordering::Relaxed);
        crate::metrics::token_refreshed();
        Ok(CachedToken {
            header,
            refresh_at: expires_at - lead,
            expires_at,
        })
    }
}

/// The path of a URL (its span's name), without scheme, authority or query.
fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    path.split('?').next().unwrap_or(path)
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        "request failed".into()
    }
}
