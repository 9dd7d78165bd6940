//! The proxy listener's certificate: loaded from `server.tls` by every stage (reading the files
//! is no side effect), swapped in at commit. The listener's rustls config asks [`TlsState`] for
//! the certificate at each handshake, so a reload that changed the files serves the new one to
//! new handshakes while established connections keep theirs.

use crate::config::model::TlsConfig;
use arc_swap::ArcSwapOption;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use std::sync::Arc;

/// The certificate in force (none before the first commit, or without `server.tls`).
#[derive(Default)]
pub struct TlsState {
    current: ArcSwapOption<CertifiedKey>,
}

impl TlsState {
    /// What the listener's rustls config resolves certificates with.
    pub fn resolver(self: &Arc<Self>) -> Arc<dyn ResolvesServerCert> {
        Arc::new(Resolver(self.clone()))
    }

    /// Puts a loaded certificate in force (and reports its expiry,
    /// `orion_proxy_tls_certificate_expiration_timestamp_seconds`).
    pub(super) fn commit(&self, key: Option<Arc<CertifiedKey>>) {
        let Some(key) = key else {
            return;
        };
        if let Some(der) = key.end_entity_cert().ok()
            && let Ok((_, cert)) = x509_parser::parse_x509_certificate(der)
        {
            crate::metrics::register_certificate_expiry(cert.validity().not_after.timestamp());
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
        f.write_str("orion-proxy listener certificate")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current.load_full()
    }
}

/// Reads and checks the certificate chain and key of `server.tls` (the key must match the
/// certificate).
pub fn load(tls: &TlsConfig) -> Result<Arc<CertifiedKey>, String> {
    let loaded = pingora::tls::load_certs_and_key_files(&tls.cert_file, &tls.key_file)
        .map_err(|e| format!("server.tls: {e}"))?;
    let Some((certs, key)) = loaded else {
        return Err(format!(
            "server.tls: no certificate in {} or no private key in {}",
            tls.cert_file, tls.key_file
        ));
    };
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| "server.tls: no TLS crypto provider".to_string())?;
    let key = CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| format!("server.tls: the key does not fit the certificate: {e}"))?;
    Ok(Arc::new(key))
}
