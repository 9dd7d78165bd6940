//! Tokens the proxy issues from `/oauth/token`, and the clients that may ask for them.
//!
//! A token is exactly 64 characters: `opt_` and the unpadded base64url of 45 bytes,
//!
//! ```text
//! version (1) | client tag (8) | expiry, unix seconds (4) | nonce (8) | MAC (24)
//! ```
//!
//! where the MAC is HMAC-SHA256 (truncated to 192 bits) under the signing key over a domain
//! string, the first 21 bytes, the client id and the client's stored secret hash. No store is
//! needed: any proxy holding the key verifies it. The client tag finds the client in the
//! current config; a client that was removed or disabled (or whose secret was changed) no
//! longer verifies, so its tokens stop working at the next reload.
//!
//! The MAC costs six SHA-256 blocks (about 20,000 instructions, more than the rest of a proxied
//! GET's own work). A token of a configured client whose MAC matched once is remembered for
//! the life of the config, as API keys are (`super::api_keys`): a map from a keyed,
//! per-process SipHash of the token to a copy of it, confirmed with a constant-time comparison
//! of the whole token before it is trusted; the client's state and the expiry are checked on
//! every use. Only tokens with a valid MAC are remembered (nothing a stranger sends grows the
//! map), and the map starts again past `CONFIRMED_MAX` entries.

use super::principal::{CredentialKind, Principal};
use argon2::password_hash::PasswordVerifier;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use parking_lot::RwLock;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, RandomState};
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub const TOKEN_PREFIX: &str = "opt_";
pub const TOKEN_LEN: usize = 64;
const VERSION: u8 = 1;
const RAW_LEN: usize = 45;
const SIGNED_LEN: usize = 21;
const MAC_LEN: usize = 24;
const DOMAIN: &[u8] = b"orion-proxy issued token v1\0";
/// Remembered tokens (see the module's documentation) before the map starts again.
const CONFIRMED_MAX: usize = 4096;
/// Shortest signing key accepted.
pub const MIN_KEY_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why an issued token was refused. The caller sees one generic message for all but expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    BadSignature,
    UnknownClient,
    DisabledClient,
    Expired,
}

/// A registered client as the runtime sees it.
pub struct Client {
    pub client_id: Arc<str>,
    /// The Argon2 PHC string, also the token binding: changing the secret revokes tokens.
    secret_hash: String,
    pub enabled: bool,
    pub principal: Arc<Principal>,
}

impl Client {
    pub fn new(
        client_id: &str,
        secret_hash: &str,
        enabled: bool,
        roles: &[String],
        tenant: &str,
        perms: super::permissions::PermissionSet,
    ) -> Result<Client, String> {
        check_hash(secret_hash)?;
        Ok(Client {
            client_id: client_id.into(),
            secret_hash: secret_hash.to_string(),
            enabled,
            principal: Arc::new(Principal {
                id: format!("client:{client_id}").into(),
                kind: CredentialKind::IssuedToken,
                roles: roles.iter().map(|r| Arc::<str>::from(r.as_str())).collect(),
                tenant: tenant.into(),
                permissions: perms,
                policy: None,
            }),
        })
    }

    /// A digest of the stored secret hash: it changes when the secret is rotated, and says
    /// nothing about the secret (a console session keeps it to notice a rotation).
    pub fn binding(&self) -> String {
        hex::encode(Sha256::digest(self.secret_hash.as_bytes()))
    }

    /// Checks a presented secret against the stored hash (slow on purpose: run it off the
    /// async workers).
    pub fn secret_matches(&self, secret: &str) -> bool {
        verify_secret(secret, &self.secret_hash)
    }
}

/// Argon2 parameters a config may use: enough to resist guessing, bounded so that a typo
/// in the config cannot make every token request allocate gigabytes.
fn check_hash(phc: &str) -> Result<(), String> {
    let parsed = argon2::password_hash::phc::PasswordHash::new(phc).map_err(|_| {
        "is not an Argon2 PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash); make one with `orion-proxy client-secret`".to_string()
    })?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err("must be an Argon2 hash ($argon2id$...)".into());
    }
    let params = argon2::Params::try_from(&parsed)
        .map_err(|e| format!("has invalid Argon2 parameters: {e}"))?;
    if params.m_cost() > 262_144 || params.t_cost() > 16 || params.p_cost() > 8 {
        return Err("Argon2 parameters too large (at most m=262144, t=16, p=8)".into());
    }
    Ok(())
}

fn verify_secret(secret: &str, phc: &str) -> bool {
    argon2::Argon2::default()
        .verify_password(secret.as_bytes(), phc)
        .is_ok()
}

/// Hashes a secret for the config (`orion-proxy client-secret`, the demo).
pub fn hash_secret(secret: &str) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(secret.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the secret: {e}"))
}

/// A new random client secret: 48 base62 characters.
pub fn generate_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    (0..48)
        .map(|_| {
            let mut b = [0u8; 1];
            loop {
                rng.fill_bytes(&mut b);
                // Rejection sampling keeps the alphabet uniform.
                if (b[0] as usize) < 62 * 4 {
                    return ALPHABET[(b[0] as usize) % 62] as char;
                }
            }
        })
        .collect()
}

/// Costs what a real check costs, so that an unknown client id is not faster to refuse.
pub fn burn_a_verification(secret: &str) {
    static DUMMY: once_cell::sync::Lazy<String> = once_cell::sync::Lazy::new(|| {
        hash_secret("orion-proxy dummy secret for unknown clients").unwrap_or_default()
    });
    let _ = verify_secret(secret, &DUMMY);
}

pub fn client_tag(client_id: &str) -> [u8; 8] {
    let d = Sha256::digest(client_id.as_bytes());
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&d[..8]);
    tag
}

/// The clients of one config load and the keys that sign and verify their tokens.
#[derive(Default)]
pub struct Issued {
    clients: HashMap<String, Arc<Client>>,
    by_tag: HashMap<[u8; 8], Arc<Client>>,
    /// The first key signs; all verify.
    keys: Vec<crate::config::secret::Secret>,
    /// Tokens of configured clients whose MAC matched, by `seed`'s hash of the token.
    confirmed: RwLock<HashMap<u64, Confirmed, BuildHasherDefault<super::api_keys::PassThrough>>>,
    seed: RandomState,
}

/// A token whose MAC matched, its client and its expiry (unix seconds).
struct Confirmed {
    token: [u8; TOKEN_LEN],
    client: Arc<Client>,
    exp: u64,
}

impl Issued {
    pub fn new(keys: Vec<crate::config::secret::Secret>) -> Issued {
        Issued {
            keys,
            ..Default::default()
        }
    }

    /// Adds a client; false when its id (or, astronomically unlikely, its tag) is taken.
    pub fn insert(&mut self, client: Client) -> bool {
        let tag = client_tag(&client.client_id);
        if self.clients.contains_key(&*client.client_id) || self.by_tag.contains_key(&tag) {
            return false;
        }
        let client = Arc::new(client);
        self.clients
            .insert(client.client_id.to_string(), client.clone());
        self.by_tag.insert(tag, client);
        true
    }

    pub fn client(&self, client_id: &str) -> Option<&Arc<Client>> {
        self.clients.get(client_id)
    }

    pub fn can_sign(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// A new token for `client`, valid until `expires_at` (unix seconds).
    pub fn mint(&self, client: &Client, expires_at: u64) -> Option<String> {
        let key = self.keys.first()?;
        let mut raw = [0u8; RAW_LEN];
        raw[0] = VERSION;
        raw[1..9].copy_from_slice(&client_tag(&client.client_id));
        let exp = u32::try_from(expires_at).ok()?;
        raw[9..13].copy_from_slice(&exp.to_be_bytes());
        rand::rngs::OsRng.fill_bytes(&mut raw[13..SIGNED_LEN]);
        let mac = mac(key.expose().as_bytes(), &raw[..SIGNED_LEN], client);
        raw[SIGNED_LEN..].copy_from_slice(&mac[..MAC_LEN]);
        let mut token = String::with_capacity(TOKEN_LEN);
        token.push_str(TOKEN_PREFIX);
        URL_SAFE_NO_PAD.encode_string(raw, &mut token);
        debug_assert_eq!(token.len(), TOKEN_LEN);
        Some(token)
    }

    /// Verifies a token against the current clients and keys.
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<Principal>, TokenError> {
        self.verify_with(token, now, None)
    }

    /// The client tag a token carries, when it is shaped like one of ours.
    pub fn tag_of(token: &str) -> Option<[u8; 8]> {
        let body = token.strip_prefix(TOKEN_PREFIX)?;
        let mut raw = [0u8; RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(body, &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return None,
        }
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&raw[1..9]);
        Some(tag)
    }

    /// Whether a configured client carries this tag.
    pub fn knows_tag(&self, tag: &[u8; 8]) -> bool {
        self.by_tag.contains_key(tag)
    }

    /// [`Issued::verify`], with a runtime-managed client to use when no configured client
    /// carries the token's tag.
    pub fn verify_with(
        &self,
        token: &str,
        now: u64,
        managed: Option<&Client>,
    ) -> Result<Arc<Principal>, TokenError> {
        let whole: &[u8; TOKEN_LEN] = token
            .as_bytes()
            .try_into()
            .map_err(|_| TokenError::Malformed)?;
        let seen = self.seed.hash_one(whole);
        let hit = self
            .confirmed
            .read()
            .get(&seen)
            .and_then(|c| bool::from(c.token.ct_eq(whole)).then(|| (c.client.clone(), c.exp)));
        if let Some((client, exp)) = hit {
            return usable(&client, exp, now);
        }
        let body = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Malformed)?;
        let mut raw = [0u8; RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(body, &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return Err(TokenError::Malformed),
        }
        if raw[0] != VERSION {
            return Err(TokenError::Malformed);
        }
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&raw[1..9]);
        let configured = self.by_tag.get(&tag);
        let client = match configured {
            Some(c) => &**c,
            None => managed
                .filter(|c| client_tag(&c.client_id) == tag)
                .ok_or(TokenError::UnknownClient)?,
        };
        let presented = &raw[SIGNED_LEN..];
        let signed = self.keys.iter().any(|k| {
            let m = mac(k.expose().as_bytes(), &raw[..SIGNED_LEN], client);
            m[..MAC_LEN].ct_eq(presented).into()
        });
        if !signed {
            return Err(TokenError::BadSignature);
        }
        let exp = u32::from_be_bytes([raw[9], raw[10], raw[11], raw[12]]) as u64;
        if let Some(client) = configured {
            // A runtime-managed client can change without a new config: not remembered.
            let mut confirmed = self.confirmed.write();
            if confirmed.len() >= CONFIRMED_MAX {
                confirmed.clear();
            }
            confirmed.insert(
                seen,
                Confirmed {
                    token: *whole,
                    client: client.clone(),
                    exp,
                },
            );
        }
        usable(client, exp, now)
    }

    #[cfg(test)]
    fn confirmed_len(&self) -> usize {
        self.confirmed.read().len()
    }
}

/// The principal of a token whose MAC matched: its client must be enabled, the token unexpired.
fn usable(client: &Client, exp: u64, now: u64) -> Result<Arc<Principal>, TokenError> {
    if !client.enabled {
        return Err(TokenError::DisabledClient);
    }
    if now >= exp {
        return Err(TokenError::Expired);
    }
    Ok(client.principal.clone())
}

fn mac(key: &[u8], signed: &[u8], client: &Client) -> [u8; 32] {
    // HMAC takes keys of any length.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    m.update(DOMAIN);
    m.update(signed);
    m.update(client.client_id.as_bytes());
    m.update(b"\0");
    m.update(client.secret_hash.as_bytes());
    m.finalize().into_bytes().into()
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::permissions::PermissionSet;
    use crate::config::secret::Secret;

    fn issued(key: &str, enabled: bool, hash: &str) -> Issued {
        let mut i = Issued::new(vec![Secret::new(key)]);
        assert!(
            i.insert(
                Client::new(
                    "ci",
                    hash,
                    enabled,
                    &["operator".into()],
                    "acme",
                    PermissionSet::default()
                )
                .unwrap()
            )
        );
        i
    }

    #[test]
    fn tokens_are_64_chars_verify_and_expire() {
        let hash = hash_secret("s3cret").unwrap();
        let i = issued("k".repeat(32).as_str(), true, &hash);
        let c = i.client("ci").unwrap().clone();
        assert!(c.secret_matches("s3cret"));
        assert!(!c.secret_matches("s3cret2"));
        let now = now_unix();
        let t = i.mint(&c, now + 60).unwrap();
        assert_eq!(t.len(), 64);
        assert!(t.starts_with(TOKEN_PREFIX));
        assert_ne!(
            t,
            i.mint(&c, now + 60).unwrap(),
            "a nonce makes tokens unique"
        );
        assert_eq!(&*i.verify(&t, now).unwrap().id, "client:ci");
        assert_eq!(i.verify(&t, now + 60).unwrap_err(), TokenError::Expired);

        // Another instance with the same key accepts it; one with another key does not.
        let same = issued("k".repeat(32).as_str(), true, &hash);
        assert!(same.verify(&t, now).is_ok());
        let other = issued("x".repeat(32).as_str(), true, &hash);
        assert_eq!(other.verify(&t, now).unwrap_err(), TokenError::BadSignature);
        // Disabled, or the secret changed: refused.
        let disabled = issued("k".repeat(32).as_str(), false, &hash);
        assert_eq!(
            disabled.verify(&t, now).unwrap_err(),
            TokenError::DisabledClient
        );
        let rotated = issued(
            "k".repeat(32).as_str(),
            true,
            &hash_secret("s3cret").unwrap(),
        );
        assert_eq!(
            rotated.verify(&t, now).unwrap_err(),
            TokenError::BadSignature
        );
        // Tampering with any byte breaks it.
        let mut bytes = t.clone().into_bytes();
        bytes[40] = if bytes[40] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(i.verify(&tampered, now).is_err());
        assert_eq!(
            Issued::default().verify(&t, now).unwrap_err(),
            TokenError::UnknownClient
        );
    }

    #[test]
    fn a_verified_token_is_remembered_and_still_checked_on_every_use() {
        let hash = hash_secret("s3cret").unwrap();
        let i = issued("k".repeat(32).as_str(), true, &hash);
        let c = i.client("ci").unwrap().clone();
        let now = now_unix();
        let t = i.mint(&c, now + 60).unwrap();
        assert_eq!(i.confirmed_len(), 0);
        for _ in 0..2 {
            assert_eq!(&*i.verify(&t, now).unwrap().id, "client:ci");
            assert_eq!(i.confirmed_len(), 1);
        }
        // Remembered, it still expires.
        assert_eq!(i.verify(&t, now + 60).unwrap_err(), TokenError::Expired);
        // A tampered token is not the remembered one, and is not remembered.
        let mut bytes = t.clone().into_bytes();
        bytes[40] = if bytes[40] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(i.verify(&tampered, now).is_err());
        assert!(i.verify(&tampered, now).is_err());
        assert_eq!(i.confirmed_len(), 1);
        // A disabled client's token is refused every time.
        let disabled = issued("k".repeat(32).as_str(), false, &hash);
        for _ in 0..2 {
            assert_eq!(
                disabled.verify(&t, now).unwrap_err(),
                TokenError::DisabledClient
            );
        }
        // A runtime-managed client's token is verified every time, never remembered.
        let none = Issued::new(vec![Secret::new("k".repeat(32))]);
        assert_eq!(
            &*none.verify_with(&t, now, Some(&c)).unwrap().id,
            "client:ci"
        );
        assert_eq!(none.confirmed_len(), 0);
    }

    #[test]
    fn bad_hashes_are_refused() {
        assert!(check_hash("sha256:abcd").is_err());
        assert!(
            check_hash("$argon2id$v=19$m=9999999,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA")
                .is_err()
        );
        assert!(check_hash(&hash_secret("x").unwrap()).is_ok());
        assert_eq!(generate_secret().len(), 48);
    }
}
