//! OrionVM accounts: where their endpoints are and how the proxy authenticates to them.
//! Each tenant maps to one account, so two tenants' calls go out under different OrionVM
//! credentials.

pub mod client;
pub mod credentials;
pub mod endpoint;
pub mod signing;

use crate::config::model::{AccountConfig, Config, CredentialsConfig};
use credentials::Credentials;
use endpoint::Endpoint;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub struct Account {
    pub name: Arc<str>,
    pub endpoints: Vec<Endpoint>,
    pub credentials: Arc<Credentials>,
    /// For the proxy's own calls to OrionVM ([`client`]).
    pub http: reqwest::Client,
    config: AccountConfig,
}

impl Account {
    /// The endpoint for the next attempt: the first one that is up (or not yet checked),
    /// skipping the one that just failed when another exists.
    pub fn pick(&self, avoid: Option<usize>) -> Option<(usize, &Endpoint)> {
        let usable = |(i, e): &(usize, &Endpoint)| {
            Some(*i) != avoid && (e.health.is_up() || !e.health.is_checked())
        };
        self.endpoints
            .iter()
            .enumerate()
            .find(usable)
            .or_else(|| {
                self.endpoints
                    .iter()
                    .enumerate()
                    .find(|(i, _)| Some(*i) != avoid)
            })
            .or_else(|| self.endpoints.iter().enumerate().next())
    }
}

pub struct Tenant {
    pub name: Arc<str>,
    pub account: Arc<Account>,
}

pub struct Upstreams {
    pub accounts: HashMap<String, Arc<Account>>,
    pub tenants: HashMap<String, Arc<Tenant>>,
}

impl Upstreams {
    /// Builds accounts and tenants. An account whose config did not change keeps its
    /// credentials object (and so its cached OrionVM token) across reloads.
    pub fn build(config: &Config, previous: Option<&Upstreams>) -> Result<Upstreams, Vec<String>> {
        let mut errors = Vec::new();
        let mut accounts = HashMap::new();
        if config.accounts.is_empty() {
            errors.push("accounts: at least one OrionVM account is needed".to_string());
        }
        for (name, ac) in &config.accounts {
            let at = format!("accounts.{name}");
            let reuse = previous
                .and_then(|p| p.accounts.get(name))
                .filter(|old| old.config == *ac)
                .map(|old| old.credentials.clone());
            match build_account(name, ac, reuse) {
                Ok(a) => {
                    accounts.insert(name.clone(), Arc::new(a));
                }
                Err(errs) => errors.extend(errs.into_iter().map(|e| format!("{at}.{e}"))),
            }
        }
        let mut tenants = HashMap::new();
        if config.tenants.is_empty() {
            errors.push("tenants: at least one tenant is needed".to_string());
        }
        for (name, tc) in &config.tenants {
            match accounts.get(&tc.account) {
                Some(a) => {
                    tenants.insert(
                        name.clone(),
                        Arc::new(Tenant {
                            name: name.as_str().into(),
                            account: a.clone(),
                        }),
                    );
                }
                None if config.accounts.contains_key(&tc.account) => {} // already reported
                None => errors.push(format!(
                    "tenants.{name}.account: unknown account '{}'",
                    tc.account
                )),
            }
        }
        if errors.is_empty() {
            Ok(Upstreams { accounts, tenants })
        } else {
            Err(errors)
        }
    }
}

fn build_account(
    name: &str,
    ac: &AccountConfig,
    reuse: Option<Arc<Credentials>>,
) -> Result<Account, Vec<String>> {
    let mut errors = Vec::new();
    if ac.endpoints.is_empty() {
        errors.push("endpoints: at least one endpoint is needed".to_string());
    }
    if ac.connect_timeout_ms == 0 || ac.connect_timeout_ms > 60_000 {
        errors.push("connect_timeout_ms: must be between 1 and 60000".to_string());
    }
    if ac.read_timeout_ms == 0 || ac.read_timeout_ms > 600_000 {
        errors.push("read_timeout_ms: must be between 1 and 600000".to_string());
    }
    let (ca, ca_pem) = match &ac.ca_file {
        Some(path) => match endpoint::load_ca(path) {
            Ok((list, pem)) => (Some(list), Some(pem)),
            Err(e) => {
                errors.push(format!("ca_file: {e}"));
                (None, None)
            }
        },
        None => (None, None),
    };
    let connect = Duration::from_millis(ac.connect_timeout_ms.max(1));
    let read = Duration::from_millis(ac.read_timeout_ms.max(1));
    let mut endpoints = Vec::new();
    for (i, ec) in ac.endpoints.iter().enumerate() {
        match Endpoint::build(ec, ca.clone(), connect, read) {
            Ok(e) => endpoints.push(e),
            Err(e) => errors.push(format!("endpoints[{i}].url: {e}")),
        }
    }
    let credentials = match reuse {
        Some(c) => Some(c),
        None => {
            match build_credentials(&ac.credentials, endpoints.first(), ca_pem.as_deref(), read) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        }
    };
    match credentials {
        Some(credentials) if errors.is_empty() => Ok(Account {
            name: name.into(),
            endpoints,
            credentials,
            http: http_client(ca_pem.as_deref(), connect, read).map_err(|e| vec![e])?,
            config: ac.clone(),
        }),
        _ => Err(errors),
    }
}

/// The HTTP client for the proxy's own calls to OrionVM: the account's CA and timeouts.
pub fn http_client(
    ca_pem: Option<&[u8]>,
    connect: Duration,
    read: Duration,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect)
        .timeout(read)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("orion-proxy/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = ca_pem {
        for cert in
            reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("ca_file: {e}"))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| format!("HTTP client: {e}"))
}

fn build_credentials(
    cc: &CredentialsConfig,
    first: Option<&Endpoint>,
    ca_pem: Option<&[u8]>,
    timeout: Duration,
) -> Result<Credentials, String> {
    match cc {
        CredentialsConfig::StaticToken { token } => {
            let t = token
                .resolve()
                .map_err(|e| format!("credentials.token: {e}"))?;
            Credentials::static_token(&t).map_err(|e| format!("credentials.token: {e}"))
        }
        CredentialsConfig::Signature {
            keyid,
            key,
            algorithm,
            expires_seconds,
            token,
        } => {
            let k = key.resolve().map_err(|e| format!("credentials.key: {e}"))?;
            let lifetime = Duration::from_secs(*expires_seconds);
            let signer = match algorithm {
                crate::config::model::SignatureAlgorithm::HmacSha256 => {
                    signing::Signer::hmac_sha256(keyid, k.expose(), lifetime)
                }
                crate::config::model::SignatureAlgorithm::Ed25519 => {
                    signing::Signer::ed25519(keyid, k.expose(), lifetime)
                }
            }
            .map_err(|e| format!("credentials: {e}"))?;
            let token = token
                .as_ref()
                .map(|t| t.resolve().map_err(|e| format!("credentials.token: {e}")))
                .transpose()?;
            Credentials::signed(signer, token.as_ref())
                .map_err(|e| format!("credentials.token: {e}"))
        }
        CredentialsConfig::Oauth2 {
            client_id,
            client_secret,
            token_path,
            refresh_before_seconds,
        } => {
            let id = client_id
                .resolve()
                .map_err(|e| format!("credentials.client_id: {e}"))?;
            let secret = client_secret
                .resolve()
                .map_err(|e| format!("credentials.client_secret: {e}"))?;
            if !token_path.starts_with('/') {
                return Err("credentials.token_path: must start with /".into());
            }
            let first =
                first.ok_or_else(|| "credentials: no endpoint to fetch tokens from".to_string())?;
            Credentials::oauth2(
                first.url_for(token_path),
                id,
                secret,
                Duration::from_secs(*refresh_before_seconds),
                ca_pem,
                timeout.min(Duration::from_secs(30)),
            )
            .map_err(|e| format!("credentials: {e}"))
        }
    }
}

/// Readiness probe: a TCP connect to every endpoint of the current config, every `interval`.
pub struct Prober {
    pub state: Arc<crate::config::SharedState>,
    pub interval: Duration,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Prober {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            let rt = self.state.current();
            for account in rt.upstreams.accounts.values() {
                for e in &account.endpoints {
                    let ok = matches!(
                        tokio::time::timeout(
                            e.connect_timeout,
                            tokio::net::TcpStream::connect(e.addr)
                        )
                        .await,
                        Ok(Ok(_))
                    );
                    e.health.set(ok);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
