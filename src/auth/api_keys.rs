//! API keys: 64 characters (so that length-checking OrionVM clients accept them), stored in the
//! config only as `sha256:<hex>`; looking one up is one hash and one map probe.

use super::principal::{CredentialKind, Principal};
use rand::Rng;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

pub const KEY_PREFIX: &str = "ork_";
pub const KEY_LEN: usize = 64;

pub type KeyHash = [u8; 32];

pub fn hash_key(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// Parses the config's `sha256:<64 hex>` form.
pub fn parse_hash(s: &str) -> Result<KeyHash, String> {
    let hex_part = s.strip_prefix("sha256:").ok_or_else(|| {
        "must start with 'sha256:' (paste the line that `orion-proxy keygen` prints)".to_string()
    })?;
    let bytes =
        hex::decode(hex_part).map_err(|_| "is not 64 hex digits after 'sha256:'".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "is not 64 hex digits after 'sha256:'".to_string())
}

/// A new random key: `ork_` and 60 base62 characters.
pub fn generate() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    let mut key = String::with_capacity(KEY_LEN);
    key.push_str(KEY_PREFIX);
    while key.len() < KEY_LEN {
        key.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    key
}

pub enum KeyState {
    Enabled(Arc<Principal>),
    Disabled(Arc<str>),
}

#[derive(Default)]
pub struct ApiKeys {
    by_hash: HashMap<KeyHash, KeyState>,
}

impl ApiKeys {
    pub fn insert(&mut self, hash: KeyHash, state: KeyState) -> bool {
        self.by_hash.insert(hash, state).is_none()
    }

    pub fn lookup(&self, key: &str) -> Option<&KeyState> {
        if key.len() != KEY_LEN {
            return None;
        }
        self.by_hash.get(&hash_key(key))
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

pub fn principal_for_key(
    name: &str,
    roles: &[String],
    tenant: &str,
    perms: super::permissions::PermissionSet,
) -> Principal {
    Principal {
        id: format!("key:{name}").into(),
        kind: CredentialKind::ApiKey,
        roles: roles.iter().map(|r| Arc::<str>::from(r.as_str())).collect(),
        tenant: tenant.into(),
        permissions: perms,
        policy: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_64_chars_and_hash_round_trips() {
        let k = generate();
        assert_eq!(k.len(), 64);
        assert!(k.starts_with(KEY_PREFIX));
        assert_ne!(k, generate());
        let line = format!("sha256:{}", hex::encode(hash_key(&k)));
        assert_eq!(parse_hash(&line).unwrap(), hash_key(&k));
        assert!(parse_hash("md5:abcd").is_err());
        assert!(parse_hash("sha256:abcd").is_err());
    }
}
