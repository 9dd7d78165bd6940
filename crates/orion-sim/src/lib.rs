//! An in-memory OrionVM v1 simulator: the contract the mirror keeps (`docs/ARCHITECTURE.md`,
//! section 6) with asynchronous state changes, OAuth2 client credentials and fault injection.
//!
//! It keeps the OrionVM contract (OAuth2 client credentials with 64-character
//! tokens, bare JSON arrays, JSON bodies on every answer, OrionVM error bodies,
//! asynchronous state changes polled through `GET /instances/{id}` or `/state`),
//! isolates accounts from one another, counts calls, and injects faults:
//! latency, error bursts (JSON or HTML), TCP resets (before or in the middle of
//! a body), slow bodies, hanging transitions and empty error bodies.
//!
//! States move lazily: every object holds the deadlines of the states it will
//! pass through, and each request settles its account up to "now" first.
//!
//! Paths that are not OrionVM routes (including `//api/v1/...`: the proxy normalises
//! paths, not the simulator) answer 404 in OrionVM's JSON error body; an HTML page is
//! only ever an injected fault. Successful creates answer 200 with the new object.
//!
//! The contract it keeps, rule by rule with the public client that needs each one, is
//! `docs/orionvm-contract.md`. In short: a settled disk that no instance holds is
//! `"unattached"`; the PUTs on an instance's `disks`, `public_keys`, `network_adapters`
//! and `availability_group` and every context call answer JSON arrays; an assemble
//! needs no disks and a disks PUT may empty the list; state rules are no stricter than
//! the clients' own flows (DELETE is taken in every state but `terminating` and
//! `terminated`; attachments and settings change in every state that has not ended;
//! memory, virtualization and tier only while `stopped`; start needs `stopped`, stop
//! `running`).
//!
//! Control API (no auth, not counted, no faults): `GET /_sim/health`,
//! `GET /_sim/calls`, `POST /_sim/calls/reset`, `GET /_sim/requests`,
//! `GET|PUT|DELETE /_sim/faults`, `POST /_sim/expire_tokens`.

mod api;
mod faults;
mod model;
mod server;
mod signature;
mod stats;
mod util;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use faults::{ErrorBurst, FaultPlan};
pub use signature::content_digest;
pub use stats::{AccountCalls, CallStats, RecordedRequest};

/// Demo account `acme`: OAuth client id.
pub const DEMO_ACME_CLIENT_ID: &str = "acme-client";
/// Demo account `acme`: OAuth client secret.
pub const DEMO_ACME_CLIENT_SECRET: &str = "acme-client-secret-demo";
/// Demo account `acme`: static bearer token.
pub const DEMO_ACME_STATIC_TOKEN: &str =
    "acme-static-token-0000000000000000000000000000000000000000000001";
/// Demo account `globex`: OAuth client id.
pub const DEMO_GLOBEX_CLIENT_ID: &str = "globex-client";
/// Demo account `globex`: OAuth client secret.
pub const DEMO_GLOBEX_CLIENT_SECRET: &str = "globex-client-secret-demo";
/// Demo account `globex`: static bearer token.
pub const DEMO_GLOBEX_STATIC_TOKEN: &str =
    "globex-static-token-00000000000000000000000000000000000000000001";

/// How the simulator is set up.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub accounts: Vec<SimAccount>,
    pub timings: SimTimings,
    /// Lifetime of issued OAuth tokens (`expires_in`).
    pub token_ttl: Duration,
    /// When set, every API call (not `/oauth/token`, not `/_sim/`) must carry a valid RFC 9421
    /// signature made with this key, or it is answered 401 `invalid_signature`.
    pub signature: Option<SimSignatureKey>,
}

/// An isolated OrionVM account. The first account is seeded with the ids of
/// the example objects (`orionvm-v1-examples.json`); the others get fresh ids.
#[derive(Clone, Debug)]
pub struct SimAccount {
    pub name: String,
    pub clients: Vec<SimClient>,
    pub static_tokens: Vec<String>,
}

/// OAuth2 client credentials of an account.
#[derive(Clone)]
pub struct SimClient {
    pub client_id: String,
    pub client_secret: String,
}

impl fmt::Debug for SimClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// Key for RFC 9421 signature verification (see `signature.rs`).
#[derive(Clone)]
pub struct SimSignatureKey {
    pub keyid: String,
    /// `hmac-sha256`: the shared secret; `ed25519`: the 32-byte public key.
    pub secret: Vec<u8>,
    pub algorithm: SimSignatureAlgorithm,
    /// The account of signed requests that carry no bearer token; with `None` they also
    /// need a valid `Authorization: Bearer`.
    pub account: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimSignatureAlgorithm {
    HmacSha256,
    Ed25519,
}

impl fmt::Debug for SimSignatureKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimSignatureKey")
            .field("keyid", &self.keyid)
            .field("algorithm", &self.algorithm)
            .field("account", &self.account)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// How long the moving states last.
///
/// * `provision`: create-basic `provisioning`; disk `creating`, `cloning`, `resizing`
/// * `start`: `starting`; `stop`: `stopping` and `updating_network`
/// * `terminate`: instance `terminating`, disk `deleting`
/// * `terminated_visible`: how long a terminated instance still answers before 404
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimTimings {
    pub provision: Duration,
    pub start: Duration,
    pub stop: Duration,
    pub terminate: Duration,
    pub terminated_visible: Duration,
}

impl Default for SimTimings {
    /// Fast, for tests: 150/100/100/100/200 ms.
    fn default() -> Self {
        SimTimings {
            provision: Duration::from_millis(150),
            start: Duration::from_millis(100),
            stop: Duration::from_millis(100),
            terminate: Duration::from_millis(100),
            terminated_visible: Duration::from_millis(200),
        }
    }
}

impl SimTimings {
    /// Human-scale timings for demos: 3/2/2/2/10 s.
    pub fn human() -> Self {
        SimTimings {
            provision: Duration::from_secs(3),
            start: Duration::from_secs(2),
            stop: Duration::from_secs(2),
            terminate: Duration::from_secs(2),
            terminated_visible: Duration::from_secs(10),
        }
    }
}

impl SimAccount {
    /// An account with one OAuth client and optionally one static token.
    pub fn new(
        name: &str,
        client_id: &str,
        client_secret: &str,
        static_token: Option<&str>,
    ) -> Self {
        SimAccount {
            name: name.to_owned(),
            clients: vec![SimClient {
                client_id: client_id.to_owned(),
                client_secret: client_secret.to_owned(),
            }],
            static_tokens: static_token.map(str::to_owned).into_iter().collect(),
        }
    }
}

impl Default for SimOptions {
    /// One account `default` (client `sim-client` / `sim-secret`, static token
    /// `sim-static-token`), test timings, one-hour tokens.
    fn default() -> Self {
        SimOptions {
            accounts: vec![SimAccount::new(
                "default",
                "sim-client",
                "sim-secret",
                Some("sim-static-token"),
            )],
            timings: SimTimings::default(),
            token_ttl: Duration::from_secs(3600),
            signature: None,
        }
    }
}

impl SimOptions {
    /// Two accounts for the demo, human-scale timings, two-hour tokens:
    ///
    /// | account | client_id | client_secret | static token |
    /// |---|---|---|---|
    /// | `acme` | `acme-client` | `acme-client-secret-demo` | [`DEMO_ACME_STATIC_TOKEN`] |
    /// | `globex` | `globex-client` | `globex-client-secret-demo` | [`DEMO_GLOBEX_STATIC_TOKEN`] |
    pub fn demo() -> Self {
        SimOptions {
            accounts: vec![
                SimAccount::new(
                    "acme",
                    DEMO_ACME_CLIENT_ID,
                    DEMO_ACME_CLIENT_SECRET,
                    Some(DEMO_ACME_STATIC_TOKEN),
                ),
                SimAccount::new(
                    "globex",
                    DEMO_GLOBEX_CLIENT_ID,
                    DEMO_GLOBEX_CLIENT_SECRET,
                    Some(DEMO_GLOBEX_STATIC_TOKEN),
                ),
            ],
            timings: SimTimings::human(),
            token_ttl: Duration::from_secs(7200),
            signature: None,
        }
    }
}

/// A running simulator. Dropping it (or [`SimHandle::shutdown`]) stops it.
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Calls received so far.
    pub fn calls(&self) -> CallStats {
        self.shared.calls()
    }

    /// Forgets the calls (and the recent requests) received so far.
    pub fn reset_calls(&self) {
        self.shared.reset_calls();
    }

    /// The last requests received (up to 256), oldest first.
    pub fn recent_requests(&self) -> Vec<RecordedRequest> {
        self.shared.recent()
    }

    /// Replaces the run-wide fault plan (and its counters).
    pub fn set_faults(&self, plan: FaultPlan) {
        self.shared.set_faults(plan);
    }

    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// Every issued OAuth token now answers 401 `invalid_token`.
    pub fn expire_tokens(&self) {
        self.shared.expire_tokens();
    }

    /// How many times `/oauth/token` succeeded.
    pub fn tokens_issued(&self) -> u64 {
        self.shared.tokens_issued()
    }

    /// Stops accepting and ends the server task and its connections.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the simulator on `listener` (in the current Tokio runtime).
pub async fn start(listener: TcpListener, opts: SimOptions) -> std::io::Result<SimHandle> {
    let addr = listener.local_addr()?;
    let shared = Arc::new(server::Shared::new(opts)?);
    let task = tokio::spawn(server::accept_loop(listener, shared.clone()));
    Ok(SimHandle {
        addr,
        shared,
        task: Some(task),
    })
}

/// Runs the simulator on `addr` until ctrl-c (`orion-proxy simulate --listen ADDR`).
pub async fn run(addr: SocketAddr, opts: SimOptions) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let accounts: Vec<String> = opts.accounts.iter().map(|a| a.name.clone()).collect();
    let handle = start(listener, opts).await?;
    log::info!(
        "OrionVM simulator listening on {} (accounts: {})",
        handle.url(),
        accounts.join(", ")
    );
    tokio::signal::ctrl_c().await?;
    log::info!("OrionVM simulator stopping");
    handle.shutdown();
    Ok(())
}
