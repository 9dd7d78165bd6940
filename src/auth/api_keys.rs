//! API keys: 64 characters (so that length-checking OrionVM clients accept them), stored in the
//! config only as `sha256:<hex>`; looking one up is one hash and one map probe.
//!
//! The SHA-256 of a 64-byte key costs about 7,000 instructions, a twentieth of a proxied GET.
//! A key that matched once is remembered for the life of the config: a map from a keyed,
//! per-process SipHash of the presented key to a copy of that key, confirmed with a
//! constant-time comparison before it is trusted. Only keys whose SHA-256 matched a configured
//! hash are remembered, so the map never holds more entries than the config has keys and an
//! unknown key still pays the full hash (nothing a stranger sends grows it).

use super::principal::{CredentialKind, Principal};
use parking_lot::RwLock;
use rand::Rng;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Arc;
use subtle::ConstantTimeEq;

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
    states: Vec<KeyState>,
    by_hash: HashMap<KeyHash, usize>,
    /// Keys whose SHA-256 already matched (see the module's documentation), by `seed`'s hash.
    confirmed: RwLock<HashMap<u64, Confirmed, BuildHasherDefault<PassThrough>>>,
    seed: RandomState,
}

/// A presented key that matched a configured hash, and the index of that key's state.
struct Confirmed {
    key: [u8; KEY_LEN],
    index: usize,
}

/// The confirmed map's keys are already SipHash values: used as they are.
#[derive(Default)]
pub(super) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl ApiKeys {
    pub fn insert(&mut self, hash: KeyHash, state: KeyState) -> bool {
        if self.by_hash.contains_key(&hash) {
            return false;
        }
        self.by_hash.insert(hash, self.states.len());
        self.states.push(state);
        true
    }

    pub fn lookup(&self, key: &str) -> Option<&KeyState> {
        let presented: &[u8; KEY_LEN] = key.as_bytes().try_into().ok()?;
        let tag = self.seed.hash_one(presented);
        if let Some(c) = self.confirmed.read().get(&tag)
            && bool::from(c.key.ct_eq(presented))
        {
            return self.states.get(c.index);
        }
        let index = *self.by_hash.get(&hash_key(key))?;
        let mut confirmed = self.confirmed.write();
        if confirmed.len() < self.states.len() {
            confirmed.insert(
                tag,
                Confirmed {
                    key: *presented,
                    index,
                },
            );
        }
        self.states.get(index)
    }

    /// A configured key by its SHA-256 (a console session finds its key again this way).
    pub fn lookup_hash(&self, hash: &KeyHash) -> Option<&KeyState> {
        self.states.get(*self.by_hash.get(hash)?)
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    #[cfg(test)]
    fn confirmed_len(&self) -> usize {
        self.confirmed.read().len()
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

    fn principal(name: &str) -> KeyState {
        KeyState::Enabled(Arc::new(principal_for_key(
            name,
            &[],
            "t",
            Default::default(),
        )))
    }

    fn name_of(s: Option<&KeyState>) -> Option<String> {
        match s? {
            KeyState::Enabled(p) => Some(p.id.to_string()),
            KeyState::Disabled(n) => Some(format!("disabled:{n}")),
        }
    }

    #[test]
    fn a_confirmed_key_is_found_again_and_only_that_key() {
        let (a, b) = (generate(), generate());
        let mut keys = ApiKeys::default();
        assert!(keys.insert(hash_key(&a), principal("a")));
        assert!(keys.insert(hash_key(&b), KeyState::Disabled("b".into())));
        assert!(!keys.insert(hash_key(&a), principal("again")));
        for _ in 0..3 {
            assert_eq!(name_of(keys.lookup(&a)).as_deref(), Some("key:a"));
            assert_eq!(name_of(keys.lookup(&b)).as_deref(), Some("disabled:b"));
        }
        assert_eq!(keys.confirmed_len(), 2);
        // A key one character off a confirmed one, unknown keys and wrong lengths: refused,
        // and never remembered.
        let mut near = a.clone().into_bytes();
        near[63] = if near[63] == b'A' { b'B' } else { b'A' };
        let near = String::from_utf8(near).unwrap();
        for k in [near.as_str(), &generate(), &a[..63], ""] {
            assert!(keys.lookup(k).is_none());
        }
        assert_eq!(keys.confirmed_len(), 2);
    }

    #[test]
    fn a_confirmed_entry_is_trusted_only_for_the_same_key() {
        let (a, other) = (generate(), generate());
        let mut keys = ApiKeys::default();
        keys.insert(hash_key(&a), principal("a"));
        assert!(keys.lookup(&a).is_some());
        // Even if another key's tag pointed at the entry, the constant-time comparison of the
        // whole key refuses it.
        let tag = keys
            .seed
            .hash_one(<&[u8; KEY_LEN]>::try_from(other.as_bytes()).unwrap());
        let entry = Confirmed {
            key: a.as_bytes().try_into().unwrap(),
            index: 0,
        };
        keys.confirmed.write().insert(tag, entry);
        assert!(keys.lookup(&other).is_none());
    }
}
