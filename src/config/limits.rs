//! The `limits:` section of the config file: rate-limit policies and where they apply, the
//! polling micro-cache, the budget toward OrionVM and the circuit breaker. Data only; validated
//! into `limits::Limits` once per load.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Master switch for rate limits, the polling cache, the upstream budget and the breaker.
    pub enabled: bool,
    /// Also send `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`.
    pub legacy_headers: bool,
    /// Named policies: a quota of requests per window.
    pub policies: BTreeMap<String, PolicyConfig>,
    /// Policy for every authenticated caller whose roles name none (null: none).
    pub default_policy: Option<String>,
    /// Policy for routes answered without a principal (`/health`, `/ready`, the token
    /// endpoint), counted per source address (null: none).
    pub anonymous_policy: Option<String>,
    /// Role name -> policy (or list of policies) that replaces the default policy for callers
    /// with that role.
    pub roles: BTreeMap<String, PolicyRef>,
    /// Route name or pattern (`instances.start`, `disks.*`, `*`) -> policy (or list) charged in
    /// addition to the caller's policy. An exact name wins over patterns, the longest pattern
    /// over shorter ones.
    pub routes: BTreeMap<String, PolicyRef>,
    /// Coalescing of identical in-flight reads and the per-tenant micro-cache.
    pub cache: CacheConfig,
    /// The budget toward OrionVM.
    pub upstream: BudgetConfig,
    /// The circuit breaker of every OrionVM endpoint.
    pub breaker: BreakerConfig,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let mut policies = BTreeMap::new();
        policies.insert(
            "default".to_string(),
            PolicyConfig {
                quota: 600,
                window_seconds: 60,
            },
        );
        LimitsConfig {
            enabled: true,
            legacy_headers: false,
            policies,
            default_policy: Some("default".into()),
            anonymous_policy: None,
            roles: BTreeMap::new(),
            routes: BTreeMap::new(),
            cache: CacheConfig::default(),
            upstream: BudgetConfig::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Requests allowed per window.
    pub quota: u64,
    /// Window length in seconds (fixed windows).
    pub window_seconds: u64,
}

/// One policy name or several.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PolicyRef {
    One(String),
    Many(Vec<String>),
}

impl PolicyRef {
    pub fn names(&self) -> Vec<&str> {
        match self {
            PolicyRef::One(s) => vec![s.as_str()],
            PolicyRef::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Coalesce identical in-flight GETs of the listed routes and cache their answers.
    pub enabled: bool,
    /// How long an answer is served from the cache, in milliseconds (0: coalescing only).
    pub ttl_ms: u64,
    /// GET routes (by name, mirror or facade) that are coalesced and cached, per tenant. The
    /// default is every single-object read (`DEFAULT_CACHED_READS`).
    pub routes: Vec<String>,
    /// Most answers kept (over all tenants).
    pub max_entries: usize,
    /// How long a good answer is kept for `breaker.fallback: stale`, in seconds.
    pub stale_seconds: u64,
    /// Largest answer body cached, in bytes.
    pub max_body_bytes: usize,
}

/// Every single-object read of the shipped route table (mirror and facade): what pollers ask
/// for in a loop.
pub const DEFAULT_CACHED_READS: &[&str] = &[
    "instances.get",
    "instances.state",
    "instances.context.get",
    "instances.note",
    "console_sessions.get",
    "disks.get",
    "disks.state",
    "ip_addresses.get",
    "networks.get",
    "regions.get",
    "templates.get",
    "public_keys.get",
    "facade.instances.get",
    "facade.tasks.get",
];

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            ttl_ms: 1000,
            routes: DEFAULT_CACHED_READS.iter().map(|r| r.to_string()).collect(),
            max_entries: 10_000,
            stale_seconds: 300,
            max_body_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Most concurrent calls to each OrionVM endpoint (0: no cap).
    pub max_concurrent_per_endpoint: usize,
    /// Most calls per second toward OrionVM over all endpoints (null: no cap).
    pub requests_per_second: Option<u64>,
    /// How long a call waits for room before it is refused with 503, in milliseconds.
    pub max_wait_ms: u64,
    /// Most calls waiting for room at once; past it, 503 at once.
    pub max_waiting: usize,
    /// The share of each endpoint's `max_concurrent_per_endpoint` one tenant may hold at once
    /// (rounded up, at least one call); past it the tenant's next call waits like any other,
    /// then gets 503 `upstream_busy`, while other tenants still find room. 1.0: no share.
    pub tenant_share: f64,
    /// The same for one principal (an API key, a token's subject).
    pub principal_share: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            max_concurrent_per_endpoint: 64,
            requests_per_second: None,
            max_wait_ms: 1000,
            max_waiting: 256,
            tenant_share: 0.5,
            principal_share: 0.25,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// 503 with the error body, at once, without calling OrionVM.
    Error,
    /// The last good answer of a cached read, marked stale; 503 when there is none.
    Stale,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures (connect errors, timeouts, resets, 5xx) that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls before it lets probes through, in seconds.
    pub reset_timeout_seconds: f64,
    /// Trial calls let through half-open; that many successes close the breaker.
    pub half_open_probes: u32,
    /// What callers get while every endpoint of their account is open.
    pub fallback: Fallback,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 10,
            reset_timeout_seconds: 10.0,
            half_open_probes: 1,
            fallback: Fallback::Error,
        }
    }
}
