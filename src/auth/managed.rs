//! Runtime-managed credentials: API keys and clients created through the admin API or the
//! console, next to the read-only ones of the YAML file.
//!
//! They are kept in the durable key-value store (`store::Stores::durable`: a file under
//! `state.dir` with the in-memory backend, the shared store with a shared backend) as one
//! document, and only as hashes (SHA-256 for keys, Argon2 for client secrets): the secret is in
//! the answer that created it and nowhere else. Every node reads the document from the store
//! when a credential it does not know from its config is presented, so a change takes effect at
//! once everywhere; the parsed document is cached by its bytes. A change is written with a
//! compare and swap over the version it read, so two nodes changing credentials at once both
//! get their change in.

use super::api_keys::{self, KeyHash};
use super::permissions::Roles;
use super::principal::Principal;
use crate::store::{KvStore, StoreError};
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The store key of the document.
pub const DOC_KEY: &str = "credentials/v1";
/// The document never expires (the store wants a lifetime).
const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);
/// Managed credentials of each kind at most.
pub const MAX_EACH: usize = 1000;
/// Reads and writes of one change before it gives up when other writers keep winning.
const WRITE_ATTEMPTS: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManagedKey {
    pub id: String,
    pub name: String,
    /// `sha256:<hex>` of the key.
    pub hash: String,
    pub roles: Vec<String>,
    pub tenant: String,
    #[serde(default)]
    pub policy: Option<String>,
    pub enabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManagedClient {
    pub id: String,
    pub client_id: String,
    /// The Argon2 PHC string of the secret.
    pub secret_hash: String,
    pub roles: Vec<String>,
    pub tenant: String,
    #[serde(default)]
    pub policy: Option<String>,
    pub enabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Document {
    #[serde(default)]
    pub api_keys: Vec<ManagedKey>,
    #[serde(default)]
    pub clients: Vec<ManagedClient>,
}

/// Which kind of managed credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ApiKey,
    Client,
}

/// The document with its look-up tables.
struct Parsed {
    doc: Document,
    by_hash: HashMap<KeyHash, usize>,
    by_tag: HashMap<[u8; 8], usize>,
    by_client_id: HashMap<String, usize>,
}

impl Parsed {
    fn new(doc: Document) -> Parsed {
        let mut by_hash = HashMap::new();
        for (i, k) in doc.api_keys.iter().enumerate() {
            if let Ok(h) = api_keys::parse_hash(&k.hash) {
                by_hash.insert(h, i);
            }
        }
        let mut by_tag = HashMap::new();
        let mut by_client_id = HashMap::new();
        for (i, c) in doc.clients.iter().enumerate() {
            by_tag.insert(super::tokens::client_tag(&c.client_id), i);
            by_client_id.insert(c.client_id.clone(), i);
        }
        Parsed {
            doc,
            by_hash,
            by_tag,
            by_client_id,
        }
    }
}

/// What a managed key or client presented to the proxy resolves to.
pub enum Found {
    Enabled(Arc<Principal>),
    Disabled,
}

/// The managed credentials: the store that keeps them and a cache of the parsed document.
pub struct Managed {
    kv: Arc<dyn KvStore>,
    cache: Mutex<Option<(Bytes, Arc<Parsed>)>>,
    /// One change at a time from this process (read, change, write).
    writing: tokio::sync::Mutex<()>,
}

impl Managed {
    pub fn new(kv: Arc<dyn KvStore>) -> Managed {
        Managed {
            kv,
            cache: Mutex::new(None),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    async fn parsed(&self) -> Result<Arc<Parsed>, StoreError> {
        match self.kv.get(DOC_KEY).await? {
            Some(bytes) => self.parse(bytes),
            None => Ok(Arc::new(Parsed::new(Document::default()))),
        }
    }

    /// The document of `bytes`, parsed once per distinct value.
    fn parse(&self, bytes: Bytes) -> Result<Arc<Parsed>, StoreError> {
        if let Some((b, p)) = &*self.cache.lock()
            && *b == bytes
        {
            return Ok(p.clone());
        }
        let doc: Document = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("managed credentials: {e}")))?;
        let parsed = Arc::new(Parsed::new(doc));
        *self.cache.lock() = Some((bytes, parsed.clone()));
        Ok(parsed)
    }

    /// The whole document (for listing).
    pub async fn document(&self) -> Result<Document, StoreError> {
        Ok(self.parsed().await?.doc.clone())
    }

    /// A presented API key, when it is a managed one.
    pub async fn key(&self, key: &str, roles: &Roles) -> Result<Option<Found>, StoreError> {
        if key.len() != api_keys::KEY_LEN {
            return Ok(None);
        }
        self.key_by_hash(&api_keys::hash_key(key), roles).await
    }

    /// A managed API key by its SHA-256.
    pub async fn key_by_hash(
        &self,
        hash: &KeyHash,
        roles: &Roles,
    ) -> Result<Option<Found>, StoreError> {
        let parsed = self.parsed().await?;
        let Some(k) = parsed
            .by_hash
            .get(hash)
            .and_then(|i| parsed.doc.api_keys.get(*i))
        else {
            return Ok(None);
        };
        if !k.enabled {
            return Ok(Some(Found::Disabled));
        }
        let perms = roles.union_of(k.roles.iter().map(String::as_str));
        let mut p = api_keys::principal_for_key(&k.name, &k.roles, &k.tenant, perms);
        p.policy = k.policy.as_deref().map(Arc::from);
        Ok(Some(Found::Enabled(Arc::new(p))))
    }

    /// A managed client by its id, as the token endpoint and the token check see one.
    pub async fn client(
        &self,
        client_id: &str,
        roles: &Roles,
    ) -> Result<Option<Arc<super::tokens::Client>>, StoreError> {
        self.client_where(roles, |p| p.by_client_id.get(client_id).copied())
            .await
    }

    /// A managed client by the tag an issued token carries.
    pub async fn client_by_tag(
        &self,
        tag: &[u8; 8],
        roles: &Roles,
    ) -> Result<Option<Arc<super::tokens::Client>>, StoreError> {
        self.client_where(roles, |p| p.by_tag.get(tag).copied())
            .await
    }

    /// The managed client that `index` finds in the document, as the proxy uses one.
    async fn client_where(
        &self,
        roles: &Roles,
        index: impl FnOnce(&Parsed) -> Option<usize>,
    ) -> Result<Option<Arc<super::tokens::Client>>, StoreError> {
        let parsed = self.parsed().await?;
        Ok(index(&parsed)
            .and_then(|i| parsed.doc.clients.get(i))
            .and_then(|c| runtime_client(c, roles)))
    }

    /// Applies `change` to the document and stores it; the change's result is returned. The
    /// document is written only when `change` succeeds, and only over the version it was read
    /// from (compare and swap): when another node (or process) wrote it in between, `change`
    /// runs again on the new version, so that no node's change is lost.
    pub async fn update<T, E>(
        &self,
        mut change: impl FnMut(&mut Document) -> Result<T, E>,
    ) -> Result<Result<T, E>, StoreError> {
        let _one = self.writing.lock().await;
        for _ in 0..WRITE_ATTEMPTS {
            let read = self.kv.get(DOC_KEY).await?;
            let mut doc = match &read {
                Some(bytes) => self.parse(bytes.clone())?.doc.clone(),
                None => Document::default(),
            };
            let out = match change(&mut doc) {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            let bytes = serde_json::to_vec(&doc)
                .map_err(|e| StoreError::Corrupt(format!("managed credentials: {e}")))?;
            if self
                .kv
                .compare_and_swap(DOC_KEY, read.as_ref(), Bytes::from(bytes), FOREVER)
                .await?
            {
                return Ok(Ok(out));
            }
        }
        Err(StoreError::Unavailable(
            "managed credentials: the document kept changing under this write".into(),
        ))
    }
}

fn runtime_client(c: &ManagedClient, roles: &Roles) -> Option<Arc<super::tokens::Client>> {
    let perms = roles.union_of(c.roles.iter().map(String::as_str));
    super::tokens::Client::new(
        &c.client_id,
        &c.secret_hash,
        c.enabled,
        &c.roles,
        &c.tenant,
        perms,
    )
    .ok()
    .map(|mut client| {
        if let Some(p) = Arc::get_mut(&mut client.principal) {
            p.policy = c.policy.as_deref().map(Arc::from);
        }
        Arc::new(client)
    })
}

/// A new id for a managed credential: `k_` or `c_` and 20 base32 characters of a ULID.
pub fn new_id(kind: Kind) -> String {
    let prefix = match kind {
        Kind::ApiKey => "k_",
        Kind::Client => "c_",
    };
    format!(
        "{prefix}{}",
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    )
}

/// A key's stored hash line.
pub fn hash_line(key: &str) -> String {
    format!("sha256:{}", hex::encode(api_keys::hash_key(key)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryKv;

    fn roles() -> Roles {
        let mut reg = crate::auth::permissions::PermissionRegistry::default();
        reg.intern("instances:read").unwrap();
        let mut r = std::collections::BTreeMap::new();
        r.insert("viewer".to_string(), vec!["*:read".to_string()]);
        Roles::build(&r, &reg).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_from_two_writers_at_once_are_both_kept() {
        // Two `Managed` over one store: two nodes sharing Redis, as far as the document goes.
        let kv: Arc<dyn KvStore> = Arc::new(MemoryKv::new(10));
        let (a, b) = (Managed::new(kv.clone()), Managed::new(kv));
        let key = |name: &str| ManagedKey {
            id: new_id(Kind::ApiKey),
            name: name.into(),
            hash: hash_line(&api_keys::generate()),
            roles: vec!["viewer".into()],
            tenant: "acme".into(),
            policy: None,
            enabled: true,
            created_at: String::new(),
            updated_at: String::new(),
        };
        // B writes between A's read and A's write: A's write is refused and A applies its change
        // again to B's version.
        let mut interleaved = false;
        a.update(|d| {
            if !interleaved {
                interleaved = true;
                let b = &b;
                let from_b = key("from-b");
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(b.update(|d| {
                        d.api_keys.push(from_b.clone());
                        Ok::<_, ()>(())
                    }))
                })
                .unwrap()
                .unwrap();
            }
            d.api_keys.push(key("from-a"));
            Ok::<_, ()>(())
        })
        .await
        .unwrap()
        .unwrap();
        let names: Vec<String> = b
            .document()
            .await
            .unwrap()
            .api_keys
            .into_iter()
            .map(|k| k.name)
            .collect();
        assert_eq!(names, vec!["from-b", "from-a"]);
    }

    #[tokio::test]
    async fn a_stored_key_is_found_by_its_hash_only() {
        let m = Managed::new(Arc::new(MemoryKv::new(10)));
        let key = api_keys::generate();
        let line = hash_line(&key);
        m.update(|d| {
            d.api_keys.push(ManagedKey {
                id: new_id(Kind::ApiKey),
                name: "ci".into(),
                hash: line.clone(),
                roles: vec!["viewer".into()],
                tenant: "acme".into(),
                policy: Some("slow".into()),
                enabled: true,
                created_at: String::new(),
                updated_at: String::new(),
            });
            Ok::<_, ()>(())
        })
        .await
        .unwrap()
        .unwrap();
        let r = roles();
        let Some(Found::Enabled(p)) = m.key(&key, &r).await.unwrap() else {
            panic!("not found")
        };
        assert_eq!((&*p.id, &*p.tenant), ("key:ci", "acme"));
        assert_eq!(p.policy.as_deref(), Some("slow"));
        assert!(m.key(&api_keys::generate(), &r).await.unwrap().is_none());
        // The document holds the hash, never the key.
        let doc = m.document().await.unwrap();
        assert!(!serde_json::to_string(&doc).unwrap().contains(&key));
        m.update(|d| {
            d.api_keys[0].enabled = false;
            Ok::<_, ()>(())
        })
        .await
        .unwrap()
        .unwrap();
        assert!(matches!(
            m.key(&key, &r).await.unwrap(),
            Some(Found::Disabled)
        ));
    }
}
