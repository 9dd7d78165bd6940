//! OrionVM endpoints: parsed once per load into what `upstream_peer` needs, with a health
//! record, a breaker and counters that survive reloads (kept in [`super::UpstreamState`] by URL)
//! and that the readiness probe keeps current.

use super::breaker::Breaker;
use super::stats::EndpointStats;
use crate::config::model::EndpointConfig;
use pingora::utils::tls::WrappedX509;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct EndpointHealth {
    up: AtomicBool,
    checked: AtomicBool,
    /// Unix milliseconds of the last change of `up`.
    changed_at_ms: AtomicU64,
}

impl EndpointHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
    pub fn is_checked(&self) -> bool {
        self.checked.load(Ordering::Relaxed)
    }
    pub fn set(&self, up: bool) {
        let was = self.up.swap(up, Ordering::Relaxed);
        let first = !self.checked.swap(true, Ordering::Relaxed);
        if first || was != up {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            self.changed_at_ms.store(now, Ordering::Relaxed);
        }
    }
    pub fn changed_at_ms(&self) -> u64 {
        self.changed_at_ms.load(Ordering::Relaxed)
    }
}

/// What an endpoint keeps across reloads: its health, its breaker and its counters.
#[derive(Debug, Clone)]
pub struct Kept {
    pub health: Arc<EndpointHealth>,
    pub breaker: Arc<Breaker>,
    pub stats: Arc<EndpointStats>,
}

impl Kept {
    /// A fresh record for the endpoint named `name` (breaker closed, no counts).
    pub fn new(name: &str) -> Kept {
        Kept {
            health: Default::default(),
            breaker: Arc::new(Breaker::new(name)),
            stats: Default::default(),
        }
    }
}

pub type CaList = Arc<[WrappedX509]>;

pub struct Endpoint {
    pub name: Arc<str>,
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Resolved at load time, so that the hot path never waits on DNS.
    pub addr: SocketAddr,
    pub sni: String,
    /// `Host` header value sent upstream.
    pub authority: String,
    /// The same as a header value, built once (a clone shares its bytes).
    pub host_value: http::HeaderValue,
    /// Base path prefix of the URL (empty or `/prefix`), prepended to forwarded paths.
    pub base_path: String,
    pub ca: Option<CaList>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub health: Arc<EndpointHealth>,
    /// The circuit breaker (the passive health check), kept across reloads.
    pub breaker: Arc<Breaker>,
    pub stats: Arc<EndpointStats>,
    /// The concurrency cap toward this endpoint (None: no cap).
    pub budget: Option<Arc<tokio::sync::Semaphore>>,
    /// A disabled endpoint is never chosen.
    pub enabled: bool,
    /// Pingora's `HttpPeer::group_key`: part of the connection pool's key, so that a pooled
    /// connection is only reused by the account that opened it and with the verification it
    /// was opened with ([`pool_key`]).
    pub pool_key: u64,
    /// This account's series of this endpoint (`orion_proxy_upstream_requests_total`...).
    pub series: Arc<crate::metrics::UpstreamSeries>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish()
    }
}

impl Endpoint {
    /// Parses and resolves one endpoint: `cfg` of the account named `account`. `kept(url,
    /// name)` hands over what the endpoint keeps across reloads (or a fresh record). Without
    /// `resolve` a host name is not looked up (the address is left unspecified: `orion-proxy
    /// check` without `--resolve`).
    pub fn build(
        account: &str,
        cfg: &EndpointConfig,
        ca: Option<CaList>,
        connect_timeout: Duration,
        read_timeout: Duration,
        resolve: bool,
        kept: impl FnOnce(&str, &str) -> Kept,
    ) -> Result<Endpoint, String> {
        let url =
            url::Url::parse(&cfg.url).map_err(|e| format!("'{}' is not a URL: {e}", cfg.url))?;
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("scheme '{other}' is not http or https")),
        };
        if url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err("an endpoint URL has no query, fragment or user info".into());
        }
        let host = url
            .host_str()
            .ok_or_else(|| "the URL has no host".to_string())?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let addr = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, port),
            Err(_) if !resolve => {
                std::net::SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port)
            }
            Err(_) => (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .next()
                .ok_or_else(|| format!("{host} resolves to no address"))?,
        };
        let default_port = if tls { 443 } else { 80 };
        let authority = if port == default_port {
            url.host_str().unwrap_or(&host).to_string()
        } else {
            format!("{}:{port}", url.host_str().unwrap_or(&host))
        };
        let host_value = http::HeaderValue::from_str(&authority)
            .map_err(|_| format!("'{authority}' is not a valid Host value"))?;
        let base_path = url.path().trim_end_matches('/').to_string();
        let sni = cfg.sni.clone().unwrap_or_else(|| host.clone());
        let name: Arc<str> = cfg.name.clone().unwrap_or_else(|| authority.clone()).into();
        let Kept {
            health,
            breaker,
            stats,
        } = kept(&cfg.url, &name);
        let series = Arc::new(crate::metrics::UpstreamSeries::new(account, &name));
        Ok(Endpoint {
            name,
            url: cfg.url.clone(),
            tls,
            host,
            port,
            addr,
            sni,
            authority,
            host_value,
            base_path,
            ca,
            connect_timeout,
            read_timeout,
            health,
            breaker,
            stats,
            budget: None,
            enabled: cfg.enabled,
            pool_key: 0,
            series,
        })
    }

    /// The pingora peer for one attempt.
    pub fn peer(&self) -> pingora::upstreams::peer::HttpPeer {
        let mut peer =
            pingora::upstreams::peer::HttpPeer::new(self.addr, self.tls, self.sni.clone());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout + Duration::from_secs(2));
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        if let Some(ca) = &self.ca {
            peer.options.ca = Some(ca.clone());
        }
        // Pingora's reuse hash covers address, scheme, SNI, client certificate and the verify
        // flags, but not the CA: without this, an account without the private CA would reuse
        // a connection another account verified with it.
        peer.group_key = self.pool_key;
        peer
    }

    /// What this endpoint keeps across reloads.
    pub fn kept(&self) -> Kept {
        Kept {
            health: self.health.clone(),
            breaker: self.breaker.clone(),
            stats: self.stats.clone(),
        }
    }

    /// Absolute URL for a path on this endpoint (for the token fetch).
    pub fn url_for(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}{}", self.authority, self.base_path, path)
    }
}

/// The key that separates the connection pools of `account`'s `endpoint`: the account's name
/// (no account ever reuses another's connection) and everything that decides how a
/// connection is verified: the CA bundle's bytes, SNI, TLS, the verify flags and the client
/// certificate (none today). A changed CA file gives a new key, so connections verified with
/// the old one are not reused after a reload.
pub fn pool_key(account: &str, ca_pem: Option<&[u8]>, endpoint: &Endpoint) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [
        account.as_bytes(),
        ca_pem.unwrap_or(b"system roots"),
        endpoint.sni.as_bytes(),
        if endpoint.tls { b"tls" } else { b"plain" },
        // verify_cert, verify_hostname (Pingora's defaults, never turned off here).
        b"verify:cert,hostname",
        b"client-cert:none",
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Loads a PEM CA bundle for per-peer verification.
pub fn load_ca(path: &str) -> Result<(CaList, Vec<u8>), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut list = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{path}: not a PEM certificate bundle: {e:?}"))?;
        let der = cert.as_ref().to_vec();
        x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("{path}: invalid certificate: {e}"))?;
        list.push(WrappedX509::new(der, pingora::utils::tls::parse_x509));
    }
    if list.is_empty() {
        return Err(format!("{path} holds no certificate"));
    }
    Ok((Arc::from(list.into_boxed_slice()), pem))
}
