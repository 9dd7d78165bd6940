//! `state:`: where the state shared by several proxy nodes lives (rate counters, token-endpoint
//! attempt counters, facade tasks, usage, the micro-cache's invalidations, the key-value store):
//! process memory (one node, the default) or Redis (several nodes, one truth).

use super::model::SecretRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// `memory` (one node; lost on restart) or `redis` (shared by every node with the same
    /// `redis.prefix`).
    pub backend: Backend,
    /// The Redis server (required with `backend: redis`).
    pub redis: Option<RedisConfig>,
    /// What rate limits do while the backend cannot be reached: `open` lets requests through
    /// uncounted, `closed` refuses them with 503. Tasks and idempotency answer 503 either way.
    pub on_unavailable: OnUnavailable,
    /// Rate counters on Redis: `exact` (one atomic round trip per request, exact cluster-wide
    /// quotas) or `batched` (counted locally, synced every `sync_interval_ms`: cheaper, and
    /// approximate by up to what the other nodes counted since their last sync).
    pub sync: SyncMode,
    /// How often `sync: batched` sends its counts (and usage is flushed), milliseconds.
    pub sync_interval_ms: u64,
    /// A facade task's lease on Redis: a task whose node stopped renewing it for this long is
    /// marked failed by another node (milliseconds).
    pub task_lease_ms: u64,
    /// With `backend: memory`, a directory for durable state: the runtime-managed API keys
    /// and clients (`credentials.json`, mode 0600, replaced atomically). Without it they live in
    /// memory and are lost on restart; with Redis they are kept in Redis. Read at start only.
    pub dir: Option<String>,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: Backend::Memory,
            redis: None,
            on_unavailable: OnUnavailable::Open,
            sync: SyncMode::Exact,
            sync_interval_ms: 100,
            task_lease_ms: 15_000,
            dir: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    #[default]
    Open,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    #[default]
    Exact,
    Batched,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db` (or `rediss://` for TLS). No password in the URL: use `password`.
    pub url: String,
    /// Connect with TLS (same as a `rediss://` URL).
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the CA that signed the server's certificate (TLS); the system roots
    /// otherwise.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// The ACL user (Redis 6+).
    #[serde(default)]
    pub username: Option<String>,
    /// The password, as a secret reference (`{env: NAME}`, `{file: PATH}`, `{credential: NAME}`).
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// Put before every key, so that several deployments can share one server; every node of
    /// one deployment must use the same.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// The longest a request waits for one Redis command: bounds the latency Redis can add.
    #[serde(default = "default_command_timeout")]
    pub command_timeout_ms: u64,
    /// Multiplexed connections per node (requests are spread over them).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

fn default_prefix() -> String {
    "orion-proxy:".into()
}
fn default_connect_timeout() -> u64 {
    1000
}
fn default_command_timeout() -> u64 {
    250
}
fn default_pool_size() -> usize {
    2
}

/// Checks the `state` section (everything but reaching the server).
pub fn check(c: &StateConfig) -> Vec<String> {
    let mut errors = Vec::new();
    if !(10..=60_000).contains(&c.sync_interval_ms) {
        errors.push("state.sync_interval_ms: must be between 10 and 60000".into());
    }
    if !(1000..=3_600_000).contains(&c.task_lease_ms) {
        errors.push("state.task_lease_ms: must be between 1000 and 3600000".into());
    }
    match (c.backend, &c.redis) {
        (Backend::Redis, None) => {
            errors.push("state.redis: required with backend: redis".into());
        }
        (Backend::Memory, Some(_)) => {
            errors.push("state.redis: only used with backend: redis (set state.backend)".into());
        }
        (Backend::Memory, None) => {
            if c.sync == SyncMode::Batched {
                errors.push("state.sync: batched applies to backend: redis only".into());
            }
        }
        (Backend::Redis, Some(r)) => check_redis(r, &mut errors),
    }
    errors
}

fn check_redis(r: &RedisConfig, errors: &mut Vec<String>) {
    match url::Url::parse(&r.url) {
        Ok(u) => {
            if !matches!(u.scheme(), "redis" | "rediss") {
                errors.push("state.redis.url: must start with redis:// or rediss://".into());
            }
            if u.host_str().is_none_or(str::is_empty) {
                errors.push("state.redis.url: names no host".into());
            }
            if u.password().is_some() {
                errors.push(
                    "state.redis.url: holds a password; put it in state.redis.password (a secret reference)"
                        .into(),
                );
            }
            let db = u.path().trim_start_matches('/');
            if !db.is_empty() && db.parse::<u32>().is_err() {
                errors.push("state.redis.url: the path is a database number".into());
            }
        }
        Err(e) => errors.push(format!("state.redis.url: {e}")),
    }
    if r.ca_file.is_some() && !r.tls && !r.url.starts_with("rediss://") {
        errors.push("state.redis.ca_file: only used with tls: true or a rediss:// URL".into());
    }
    if let Some(ca) = &r.ca_file
        && std::fs::metadata(ca).is_err()
        && !super::host::missing(|| format!("state.redis.ca_file: {ca} is not here"))
    {
        errors.push(format!("state.redis.ca_file: cannot read {ca}"));
    }
    if let Some(p) = &r.password
        && let Err(e) = p.resolve()
    {
        errors.push(format!("state.redis.password: {e}"));
    }
    if r.prefix.is_empty() || r.prefix.len() > 64 || r.prefix.contains(char::is_whitespace) {
        errors.push("state.redis.prefix: 1 to 64 characters, no spaces".into());
    }
    if !(10..=60_000).contains(&r.connect_timeout_ms) {
        errors.push("state.redis.connect_timeout_ms: must be between 10 and 60000".into());
    }
    if !(1..=10_000).contains(&r.command_timeout_ms) {
        errors.push("state.redis.command_timeout_ms: must be between 1 and 10000".into());
    }
    if !(1..=64).contains(&r.pool_size) {
        errors.push("state.redis.pool_size: must be between 1 and 64".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(url: &str) -> StateConfig {
        StateConfig {
            backend: Backend::Redis,
            redis: Some(RedisConfig {
                url: url.into(),
                tls: false,
                ca_file: None,
                username: None,
                password: None,
                prefix: default_prefix(),
                connect_timeout_ms: 1000,
                command_timeout_ms: 250,
                pool_size: 2,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn checks() {
        assert!(check(&StateConfig::default()).is_empty());
        assert!(check(&redis("redis://127.0.0.1:6379/0")).is_empty());
        let e = check(&redis("redis://:hunter2@127.0.0.1:6379")).join("\n");
        assert!(
            e.contains("holds a password") && !e.contains("hunter2"),
            "{e}"
        );
        assert!(!check(&redis("http://x")).is_empty());
        let mut c = StateConfig {
            backend: Backend::Redis,
            ..Default::default()
        };
        assert!(check(&c).join("").contains("state.redis: required"));
        c.backend = Backend::Memory;
        c.sync = SyncMode::Batched;
        assert!(!check(&c).is_empty());
    }
}
