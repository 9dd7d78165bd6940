//! The `idempotency:` section: `Idempotency-Key` on creates (draft-ietf-httpapi-idempotency-key-
//! header). Data only; validated into `idempotency::Idempotency` once per load.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The creates that take an `Idempotency-Key` by default: the mirror's creates of instances,
/// disks, addresses, networks and keys, and the facade's create, reboot and snapshot.
pub const DEFAULT_ROUTES: &[&str] = &[
    "instances.create",
    "instances.assemble",
    "disks.create",
    "ip_addresses.create",
    "networks.create",
    "public_keys.create",
    "facade.instances.create",
    "facade.instances.reboot",
    "facade.instances.snapshot",
];

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// Honour `Idempotency-Key` on the listed routes (off: the header is ignored).
    pub enabled: bool,
    /// How long the first answer to a key is kept and replayed, in seconds.
    pub ttl_seconds: u64,
    /// How long a first request may be in flight before a retry with its key may take over
    /// (as if its outcome were unknown: the object is looked up first), in seconds.
    pub in_flight_seconds: u64,
    /// Largest answer kept for replay, in bytes; past it the outcome counts as unknown and a
    /// retry looks the object up.
    pub max_answer_bytes: usize,
    /// Routes (by name, not GET) that honour the header.
    pub routes: Vec<String>,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            enabled: true,
            ttl_seconds: 86_400,
            in_flight_seconds: 300,
            max_answer_bytes: 1024 * 1024,
            routes: DEFAULT_ROUTES.iter().map(|r| r.to_string()).collect(),
        }
    }
}
