//! State that outlives a request, behind small async traits (`docs/ARCHITECTURE.md`, "State").
//!
//! Each trait is written for a remote, fallible backend (a Redis call can time out or find the
//! server gone): every operation is async and returns [`StoreError`]. The in-memory backends in
//! [`memory`] are the default (one node); a shared backend plugs in behind the same traits.
//! This module imports no concern: concerns import it, and `src/runtime/` owns the instances.

pub mod file;
pub mod memory;
pub mod redis;
pub mod tasks;
pub mod usage;

pub use usage::UsageStore;

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// Why a state operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The backend cannot be reached (connection refused, closed, not configured).
    Unavailable(String),
    /// The backend did not answer within its command timeout.
    Timeout,
    /// The backend answered something this code cannot read.
    Corrupt(String),
    /// A bound was reached (entries, bytes): the store refuses to grow.
    Full,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(why) => write!(f, "state backend unavailable: {why}"),
            StoreError::Timeout => write!(f, "state backend timed out"),
            StoreError::Corrupt(why) => write!(f, "state backend answered unreadable data: {why}"),
            StoreError::Full => write!(f, "state store is full"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A counter's value in its current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCount {
    /// Events counted in the current window, this one included.
    pub count: u64,
    /// Time left until the window resets.
    pub resets_in: Duration,
}

/// Counters per key in fixed windows: rate limits, the token endpoint's attempt counters.
///
/// `scope` names a family of counters with one window length (a policy name, `token.failures`);
/// `key` is the principal, tenant or address counted. Keys must be stable across processes
/// (no per-process hash), so that a shared backend counts the same key on every node.
#[async_trait]
pub trait Counters: Send + Sync {
    /// Adds `cost` to `key`'s counter and returns the count after adding.
    async fn hit(
        &self,
        scope: &str,
        window: Duration,
        key: &str,
        cost: u64,
    ) -> Result<WindowCount, StoreError>;

    /// The count of `key` in its current window, adding nothing.
    async fn peek(
        &self,
        scope: &str,
        window: Duration,
        key: &str,
    ) -> Result<WindowCount, StoreError>;

    /// Several counters at once (the policies of one request): one round trip on a remote
    /// backend. A cost of 0 reads without adding. Answers in the order asked.
    async fn count_all(&self, ops: &[CounterOp<'_>]) -> Result<Vec<WindowCount>, StoreError> {
        let mut out = Vec::with_capacity(ops.len());
        for o in ops {
            out.push(match o.cost {
                0 => self.peek(o.scope, o.window, o.key).await?,
                cost => self.hit(o.scope, o.window, o.key, cost).await?,
            });
        }
        Ok(out)
    }

    /// The in-process backend, when this is it: a hot-path caller may then count synchronously
    /// (`MemoryCounters::window_of`) instead of through the async calls.
    fn as_memory(&self) -> Option<&memory::MemoryCounters> {
        None
    }
}

/// One counter of [`Counters::count_all`].
#[derive(Debug, Clone, Copy)]
pub struct CounterOp<'a> {
    pub scope: &'a str,
    pub window: Duration,
    pub key: &'a str,
    /// 0: read only.
    pub cost: u64,
}

/// A key-value store with expiry: idempotency keys, runtime-managed credentials.
#[async_trait]
pub trait KvStore: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
    /// Sets `key` to `value` for `ttl` (replacing any value).
    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError>;
    /// Sets `key` only when it has no live value; says whether it did.
    async fn put_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError>;
    /// Removes `key`; says whether it had a live value.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;
    /// Sets `key` to `value` for `ttl` only when its live value is `expected` (`None`: it has
    /// none), atomically; says whether it did. A read-modify-write that several nodes share
    /// (the runtime-managed credentials) retries on `false` instead of losing a change.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&Bytes>,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError>;
}

/// The backends of the state traits, as the runtime hands them to the concerns.
#[derive(Clone)]
pub struct Stores {
    pub counters: Arc<dyn Counters>,
    pub kv: Arc<dyn KvStore>,
    /// The facade's tasks (`tasks::TaskStore`).
    pub tasks: Arc<dyn tasks::TaskStore>,
    pub usage: Arc<dyn UsageStore>,
    /// Key-value data that must outlive the process (runtime-managed credentials): the
    /// memory backend keeps it in a file under `state.dir` ([`file::FileKv`]), or in memory
    /// without one; a shared backend keeps it where it keeps `kv`.
    pub durable: Arc<dyn KvStore>,
    /// The shared backend when there is one (`None`: in-memory, one node): its readiness, its
    /// background sync, and the micro-cache's cross-node versions in `kv`.
    pub shared: Option<Arc<redis::Backends>>,
}

impl Stores {
    /// The in-memory backends (one node; lost on restart).
    pub fn memory() -> Stores {
        Stores {
            counters: Arc::new(memory::MemoryCounters::default()),
            kv: Arc::new(memory::MemoryKv::new(memory::DEFAULT_KV_ENTRIES)),
            tasks: Arc::new(tasks::MemoryTasks::default()),
            usage: Arc::new(usage::MemoryUsage::default()),
            durable: Arc::new(memory::MemoryKv::new(file::MAX_ENTRIES)),
            shared: None,
        }
    }

    /// The in-memory backends with durable data in a file under `dir`.
    pub fn memory_with_dir(dir: &std::path::Path) -> Result<Stores, String> {
        let durable = file::FileKv::open(&dir.join("credentials.json"))?;
        Ok(Stores {
            durable: Arc::new(durable),
            ..Stores::memory()
        })
    }

    /// The Redis backends (several nodes with the same prefix share them); durable data (the
    /// runtime-managed credentials) is kept in the same Redis.
    pub fn redis(
        settings: &redis::Settings,
        sync: redis::Sync,
        task_lease: Duration,
    ) -> Result<Stores, String> {
        let b = Arc::new(redis::Backends::new(settings, sync, task_lease)?);
        Ok(Stores {
            counters: b.counters.clone(),
            kv: b.kv.clone(),
            tasks: b.tasks.clone(),
            usage: b.usage.clone(),
            durable: b.kv.clone(),
            shared: Some(b),
        })
    }
}
