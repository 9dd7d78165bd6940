//! The listeners' certificates (the proxy listener's `server.tls`, the admin listener's
//! `server.admin_tls`): loaded by every stage (reading the files is no side effect), swapped in
//! at commit. Each listener's rustls config asks its [`TlsState`] for the certificate at each
//! handshake, so a reload that changed the files serves the new one to new handshakes while
//! established connections keep theirs.

use crate::config::model::TlsConfig;
use arc_swap::ArcSwapOption;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use std::sync::Arc;

/// One listener's certificate in force (none before the first commit, or without TLS).
pub struct TlsState {
    current: ArcSwapOption<CertifiedKey>,
    /// The listener, as the expiry metric's `listener` label names it.
    listener: &'static str,
}

impl TlsState {
    /// The state of the named listener's certificate (`proxy`, `admin`).
    pub fn new(listener: &'static str) -> TlsState {
        TlsState {
            current: ArcSwapOption::empty(),
            listener,
        }
    }

    /// What the listener's rustls config resolves certificates with.
    pub fn resolver(self: &Arc<Self>) -> Arc<dyn ResolvesServerCert> {
        Arc::new(Resolver(self.clone()))
    }

    /// Puts a loaded certificate in force (and reports its expiry,
    /// `orion_proxy_tls_certificate_expiration_timestamp_seconds{listener}`).
    pub(super) fn commit(&self, key: Option<Arc<CertifiedKey>>) {
        let Some(key) = key else {
            return;
        };
        if let Some(der) = key.end_entity_cert().ok()
            && let Ok((_, cert)) = x509_parser::parse_x509_certificate(der)
        {
            crate::metrics::register_certificate_expiry(
                self.listener,
                cert.validity().not_after.timestamp(),
            );
        }
        self.current.store(Some(key));
    }

    /// The certificate in force, for tests and the admin summary.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

struct Resolver(Arc<TlsState>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "orion-proxy {} listener certificate", self.0.listener)
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current.load_full()
    }
}

/// Reads and checks the certificate chain and key of a listener's TLS settings, found at
/// `path` in the config (`server.tls`): the key must match the certificate.
pub fn load(tls: &TlsConfig, path: &str) -> Result<Arc<CertifiedKey>, String> {
    let loaded = pingora::tls::load_certs_and_key_files(&tls.cert_file, &tls.key_file)
        .map_err(|e| format!("{path}: {e}"))?;
    let Some((certs, key)) = loaded else {
        return Err(format!(
            "{path}: no certificate in {} or no private key in {}",
            tls.cert_file, tls.key_file
        ));
    };
    pingora::tls::install_default_crypto_provider();
    let provider =
        CryptoProvider::get_default().ok_or_else(|| format!("{path}: no TLS crypto provider"))?;
    let key = CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| format!("{path}: the key does not fit the certificate: {e}"))?;
    Ok(Arc::new(key))
}

/// What a stage loads for one listener: its certificate when its TLS settings are there and
/// their files exist (a missing file is reported by `config::check_server`), errors in `errors`.
pub fn stage(
    tls: Option<&TlsConfig>,
    path: &str,
    errors: &mut Vec<String>,
) -> Option<Arc<CertifiedKey>> {
    let tls = tls?;
    if !std::path::Path::new(&tls.cert_file).is_file()
        || !std::path::Path::new(&tls.key_file).is_file()
    {
        return None;
    }
    load(tls, path).map_err(|e| errors.push(e)).ok()
}
