//! A key-value store kept in one file: the in-memory backend's durable part (runtime-managed
//! credentials), for a single node with `state.dir`.
//!
//! Every change rewrites the whole file atomically: a temporary file in the same directory,
//! created with mode 0600, written and synced, then renamed over the old one (and the directory
//! synced), so a crash leaves either the old or the new content, never a mix. Reads are served
//! from memory. Meant for small, rarely changed data; the file is read once at start.

use super::{KvStore, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Entries the file store holds at most.
pub const MAX_ENTRIES: usize = 10_000;

#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Entry {
    value: String,
    /// Unix seconds after which the entry is gone.
    expires: u64,
}

pub struct FileKv {
    path: PathBuf,
    map: Mutex<BTreeMap<String, Entry>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl FileKv {
    /// Opens (or starts) the store in `file`, whose directory is created (mode 0700) if missing.
    pub fn open(file: &Path) -> Result<FileKv, String> {
        if let Some(dir) = file.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode_0700()
                .create(dir)
                .map_err(|e| format!("state.dir {}: {e}", dir.display()))?;
        }
        let map = match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not a state file: {e}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        Ok(FileKv {
            path: file.to_path_buf(),
            map: Mutex::new(map),
        })
    }

    fn persist(&self, map: &BTreeMap<String, Entry>) -> Result<(), StoreError> {
        let io = |e: std::io::Error| {
            StoreError::Unavailable(format!("cannot write {}: {e}", self.path.display()))
        };
        let dir = self
            .path
            .parent()
            .ok_or_else(|| StoreError::Unavailable("the state file has no directory".into()))?;
        let text = serde_json::to_vec_pretty(map)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode the state file: {e}")))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".credentials.")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(io)?;
        tmp.write_all(&text).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&self.path).map_err(|e| io(e.error))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn change(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, Entry>) -> Result<bool, StoreError>,
    ) -> Result<bool, StoreError> {
        let mut map = self.map.lock();
        let t = now();
        let mut next = map.clone();
        next.retain(|_, e| e.expires > t);
        let changed = f(&mut next)?;
        if changed || next.len() != map.len() {
            self.persist(&next)?;
            *map = next;
        }
        Ok(changed)
    }
}

trait DirMode {
    fn mode_0700(&mut self) -> &mut Self;
}

impl DirMode for std::fs::DirBuilder {
    fn mode_0700(&mut self) -> &mut Self {
        std::os::unix::fs::DirBuilderExt::mode(self, 0o700)
    }
}

fn entry(value: Bytes, ttl: Duration) -> Result<Entry, StoreError> {
    let value = String::from_utf8(value.to_vec())
        .map_err(|_| StoreError::Corrupt("the file store keeps text values only".into()))?;
    Ok(Entry {
        value,
        expires: now().saturating_add(ttl.as_secs().max(1)),
    })
}

#[async_trait]
impl KvStore for FileKv {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let map = self.map.lock();
        let t = now();
        Ok(map
            .get(key)
            .filter(|e| e.expires > t)
            .map(|e| Bytes::from(e.value.clone())))
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        let e = entry(value, ttl)?;
        self.change(|m| {
            if !m.contains_key(key) && m.len() >= MAX_ENTRIES {
                return Err(StoreError::Full);
            }
            m.insert(key.to_string(), e);
            Ok(true)
        })
        .map(|_| ())
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let e = entry(value, ttl)?;
        self.change(|m| {
            if m.contains_key(key) {
                return Ok(false);
            }
            if m.len() >= MAX_ENTRIES {
                return Err(StoreError::Full);
            }
            m.insert(key.to_string(), e);
            Ok(true)
        })
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.change(|m| Ok(m.remove(key).is_some()))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&Bytes>,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let e = entry(value, ttl)?;
        let t = now();
        self.change(|m| {
            let current = m
                .get(key)
                .filter(|e| e.expires > t)
                .map(|e| e.value.as_bytes());
            if current != expected.map(|b| b.as_ref()) {
                return Ok(false);
            }
            if !m.contains_key(key) && m.len() >= MAX_ENTRIES {
                return Err(StoreError::Full);
            }
            m.insert(key.to_string(), e);
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn survives_reopening_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state/credentials.json");
        let kv = FileKv::open(&file).unwrap();
        let long = Duration::from_secs(3600);
        kv.put("a", Bytes::from("1"), long).await.unwrap();
        assert!(kv.put_if_absent("b", Bytes::from("2"), long).await.unwrap());
        assert!(!kv.put_if_absent("b", Bytes::from("3"), long).await.unwrap());
        assert!(kv.delete("a").await.unwrap());
        let (two, four) = (Bytes::from("2"), Bytes::from("4"));
        assert!(
            !kv.compare_and_swap("b", None, four.clone(), long)
                .await
                .unwrap()
        );
        assert!(
            !kv.compare_and_swap("b", Some(&four), four.clone(), long)
                .await
                .unwrap()
        );
        assert!(
            kv.compare_and_swap("c", None, two.clone(), long)
                .await
                .unwrap()
        );
        assert!(
            kv.compare_and_swap("c", Some(&two), four.clone(), long)
                .await
                .unwrap()
        );
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = FileKv::open(&file).unwrap();
        assert_eq!(again.get("a").await.unwrap(), None);
        assert_eq!(again.get("b").await.unwrap(), Some(Bytes::from("2")));
        assert_eq!(again.get("c").await.unwrap(), Some(Bytes::from("4")));
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
