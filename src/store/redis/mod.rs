//! The Redis backends of the state traits: several proxy nodes with the same key prefix share
//! one truth (rate counters, token-endpoint counters, tasks, usage, key-value entries and the
//! micro-cache's object versions).
//!
//! The client is the `redis` crate's [`ConnectionManager`]: one multiplexed connection per
//! pool slot that reconnects by itself when the server comes back. Every command is bounded by
//! the command timeout, so an unreachable server adds at most that to a request. A failed
//! command is a [`StoreError`]; the caller decides (fail open or closed). The backend counts
//! failures per operation through the `on_error` hook (the metric lives above this layer) and
//! logs one line when it becomes unreachable and one when it is back, never one per request.

mod counters;
mod kv;
mod tasks;
mod usage;

pub use counters::{BatchedCounters, RedisCounters};
pub use kv::RedisKv;
pub use tasks::RedisTasks;
pub use usage::RedisUsage;

use super::StoreError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How to reach the server, as the runtime resolved it from the config.
#[derive(Clone)]
pub struct Settings {
    /// `redis://` or `rediss://` URL without credentials.
    pub url: String,
    pub tls: bool,
    /// PEM roots for TLS (the system roots otherwise).
    pub root_cert: Option<Vec<u8>>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub prefix: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub pool_size: usize,
    /// Counted once per failed command, with the operation's name (`counters`, `kv`...).
    pub on_error: fn(&'static str),
    /// Called when the server becomes unreachable (`false`) or reachable again (`true`).
    pub on_change: fn(bool),
}

/// The connections to one Redis server and what they report.
pub struct Redis {
    client: redis::Client,
    config: ConnectionManagerConfig,
    pool_size: usize,
    /// Made at the first command, inside the runtime that drives them (a manager spawns its
    /// connection task when made).
    conns: std::sync::OnceLock<Vec<ConnectionManager>>,
    next: AtomicUsize,
    prefix: String,
    timeout: Duration,
    up: AtomicBool,
    on_error: fn(&'static str),
    on_change: fn(bool),
    /// Who this process is in task leases (random per start).
    node: String,
}

fn map_err(e: redis::RedisError) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout
    } else {
        // The error text names the failure (refused, reset, NOAUTH...), never the password.
        StoreError::Unavailable(format!("redis: {}", e.kind_text()))
    }
}

trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for redis::RedisError {
    fn kind_text(&self) -> String {
        if self.is_connection_refusal() {
            "connection refused".into()
        } else if self.is_connection_dropped() {
            "connection lost".into()
        } else if self.is_io_error() {
            // A TLS handshake that fails says why (say, the server's certificate is not signed
            // by `ca_file`): network-level text, which never holds the password.
            format!("connection failed: {self}")
        } else if let Some(code) = self.code() {
            code.to_string()
        } else {
            format!("{:?}", self.kind())
        }
    }
}

impl Redis {
    /// Prepares the connections without connecting: the first command connects, and a server
    /// that is down at start is reached when it comes up (the proxy serves meanwhile).
    pub fn connect(s: &Settings) -> Result<Arc<Redis>, String> {
        let mut url = s.url.clone();
        if s.tls && url.starts_with("redis://") {
            url = url.replacen("redis://", "rediss://", 1);
        }
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .map_err(|e| format!("state.redis.url: {e}"))?;
        let mut redis_settings = info.redis_settings().clone();
        if let Some(u) = &s.username {
            redis_settings = redis_settings.set_username(u);
        }
        if let Some(p) = &s.password {
            redis_settings = redis_settings.set_password(p);
        }
        let info = info.set_redis_settings(redis_settings);
        let client = match &s.root_cert {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(|e| format!("state.redis: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(s.connect_timeout))
            .set_response_timeout(Some(s.command_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        Ok(Arc::new(Redis {
            client,
            config,
            pool_size: s.pool_size.max(1),
            conns: std::sync::OnceLock::new(),
            next: AtomicUsize::new(0),
            prefix: s.prefix.clone(),
            timeout: s.command_timeout,
            up: AtomicBool::new(true),
            on_error: s.on_error,
            on_change: s.on_change,
            node: uuid::Uuid::new_v4().to_string(),
        }))
    }

    /// A connection of the pool; `None` only if the client refuses its own settings.
    fn conn(&self) -> Option<ConnectionManager> {
        let conns = self.conns.get_or_init(|| {
            (0..self.pool_size)
                .filter_map(|_| {
                    ConnectionManager::new_lazy_with_config(
                        self.client.clone(),
                        self.config.clone(),
                    )
                    .map_err(|e| log::error!("state backend: {e}"))
                    .ok()
                })
                .collect()
        });
        if conns.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % conns.len();
        conns.get(i).cloned()
    }

    /// `prefix` + `rest`.
    pub fn key(&self, rest: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + rest.len());
        k.push_str(&self.prefix);
        k.push_str(rest);
        k
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the last command reached the server.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Runs one operation on a connection within the command timeout, recording the outcome.
    pub async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let Some(conn) = self.conn() else {
            return Err(StoreError::Unavailable("redis: no connection".into()));
        };
        let r = match tokio::time::timeout(self.timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_err(e)),
            Err(_) => Err(StoreError::Timeout),
        };
        match &r {
            Ok(_) => self.mark(true, op, None),
            Err(e) => self.mark(false, op, Some(e)),
        }
        r
    }

    fn mark(&self, ok: bool, op: &'static str, e: Option<&StoreError>) {
        if !ok {
            (self.on_error)(op);
        }
        if self.up.swap(ok, Ordering::Relaxed) != ok {
            (self.on_change)(ok);
            match e {
                Some(e) => log::error!(
                    "state backend: Redis is unavailable ({op}: {e}); serving on, as state.on_unavailable says"
                ),
                None => log::warn!("state backend: Redis is reachable again"),
            }
        }
    }

    /// A PING, for readiness: its round trip.
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let start = Instant::now();
        self.run("ping", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await?;
        Ok(start.elapsed())
    }
}

/// The backends over one server, built together.
pub struct Backends {
    pub redis: Arc<Redis>,
    pub counters: Arc<dyn super::Counters>,
    /// The batched counters when `sync: batched` (their sync loop).
    pub batched: Option<Arc<BatchedCounters>>,
    pub kv: Arc<RedisKv>,
    pub tasks: Arc<RedisTasks>,
    pub usage: Arc<RedisUsage>,
}

/// How rate counters are kept on Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    /// One atomic script call per request.
    Exact,
    /// Counted locally, sent every interval.
    Batched(Duration),
}

impl Backends {
    pub fn new(s: &Settings, sync: Sync, task_lease: Duration) -> Result<Backends, String> {
        let redis = Redis::connect(s)?;
        let exact = Arc::new(RedisCounters::new(redis.clone()));
        let (counters, batched): (Arc<dyn super::Counters>, _) = match sync {
            Sync::Exact => (exact, None),
            Sync::Batched(every) => {
                let b = Arc::new(BatchedCounters::new(exact, every));
                (b.clone(), Some(b))
            }
        };
        Ok(Backends {
            counters,
            batched,
            kv: Arc::new(RedisKv::new(redis.clone())),
            tasks: Arc::new(RedisTasks::new(redis.clone(), task_lease)),
            usage: Arc::new(RedisUsage::new(redis.clone())),
            redis,
        })
    }

    /// The background work of the shared backend, until the process ends: batched counters
    /// and usage are sent every `every`, task leases renewed.
    pub async fn run_sync(&self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lease_every = self.tasks.lease() / 3;
        let mut last_lease = Instant::now();
        loop {
            tick.tick().await;
            if let Some(b) = &self.batched {
                b.sync().await;
            }
            self.usage.flush().await;
            if last_lease.elapsed() >= lease_every {
                last_lease = Instant::now();
                self.tasks.renew().await;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod test_server;
