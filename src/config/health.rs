//! Active health checks of OrionVM endpoints (`accounts.*.health_check`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `accounts.NAME.health_check`: the active check of every endpoint of the account.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// Run active checks at all (the breaker still watches real traffic).
    pub enabled: bool,
    /// Path requested with GET on each endpoint (after its base path). Any answer below 500
    /// counts as healthy: the check proves that OrionVM's HTTP service answers, without
    /// credentials.
    pub path: String,
    /// Time between checks, in milliseconds.
    pub interval_ms: u64,
    /// Connect and read timeout of one check, in milliseconds.
    pub timeout_ms: u64,
    /// Consecutive good checks that bring a down endpoint back.
    pub healthy_threshold: usize,
    /// Consecutive failed checks that take an endpoint down.
    pub unhealthy_threshold: usize,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            enabled: true,
            path: "/".into(),
            interval_ms: 2000,
            timeout_ms: 1000,
            healthy_threshold: 1,
            unhealthy_threshold: 2,
        }
    }
}

impl HealthCheckConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if !self.path.starts_with('/') {
            errors.push("health_check.path: must start with /".into());
        }
        if !(100..=3_600_000).contains(&self.interval_ms) {
            errors.push("health_check.interval_ms: must be between 100 and 3600000".into());
        }
        if !(10..=60_000).contains(&self.timeout_ms) {
            errors.push("health_check.timeout_ms: must be between 10 and 60000".into());
        }
        if self.healthy_threshold == 0 || self.unhealthy_threshold == 0 {
            errors.push("health_check: thresholds must be at least 1".into());
        }
        errors
    }
}
