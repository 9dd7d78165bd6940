//! The one owner of everything that outlives a request (`docs/ARCHITECTURE.md`, "State").
//!
//! Each concern defines the type of its own part (`limits::LimitsState`...) and builds its
//! runtime objects with `from_config(&model, &its_state)`. The state traits' backends are in
//! `stores`. Nothing here is a process static: two `State`s in one process (two proxies in one
//! test) share nothing.

use crate::config::state::{Backend, StateConfig, SyncMode};
use crate::store::Stores;
use std::time::Duration;

pub struct State {
    /// The backends of the state traits (counters, key-value store, ...).
    pub stores: Stores,
    pub auth: crate::auth::AuthState,
    pub upstream: crate::upstream::UpstreamState,
    pub limits: crate::limits::LimitsState,
    pub observe: crate::observe::ObserveState,
    pub facade: crate::facade::FacadeState,
    /// The proxy listener's certificate in force (swapped at commit, read at each handshake).
    pub tls: std::sync::Arc<super::tls::TlsState>,
    /// The admin listener's (`server.admin_tls`), the same way.
    pub admin_tls: std::sync::Arc<super::tls::TlsState>,
}

impl State {
    /// A state with the in-memory backends (one node).
    pub fn memory() -> State {
        State::with_stores(Stores::memory())
    }

    pub fn with_stores(stores: Stores) -> State {
        State {
            auth: crate::auth::AuthState::new(stores.durable.clone()),
            upstream: Default::default(),
            limits: crate::limits::LimitsState::new(&stores),
            observe: crate::observe::ObserveState::new(stores.usage.clone()),
            facade: Default::default(),
            tls: std::sync::Arc::new(super::tls::TlsState::new("proxy")),
            admin_tls: std::sync::Arc::new(super::tls::TlsState::new("admin")),
            stores,
        }
    }
}

/// The state backends the config asks for: memory, or Redis (prepared, not connected yet: a
/// server that is down at start is reached when it comes up). Checked like the rest of the
/// file (`config::state::check`); the password is read here from its secret reference.
pub fn stores_for(c: &StateConfig) -> Result<Stores, Vec<String>> {
    let errors = crate::config::state::check(c);
    if !errors.is_empty() {
        return Err(errors);
    }
    let (Backend::Redis, Some(r)) = (c.backend, &c.redis) else {
        return match &c.dir {
            Some(dir) => Stores::memory_with_dir(std::path::Path::new(dir))
                .map_err(|e| vec![format!("state.dir: {e}")]),
            None => Ok(Stores::memory()),
        };
    };
    let password = match &r.password {
        Some(p) => Some(
            p.resolve()
                .map_err(|e| vec![format!("state.redis.password: {e}")])?
                .expose()
                .to_string(),
        ),
        None => None,
    };
    let root_cert = match &r.ca_file {
        Some(f) => {
            Some(std::fs::read(f).map_err(|e| vec![format!("state.redis.ca_file: {f}: {e}")])?)
        }
        None => None,
    };
    let settings = crate::store::redis::Settings {
        url: r.url.clone(),
        tls: r.tls,
        root_cert,
        username: r.username.clone(),
        password,
        prefix: r.prefix.clone(),
        connect_timeout: Duration::from_millis(r.connect_timeout_ms),
        command_timeout: Duration::from_millis(r.command_timeout_ms),
        pool_size: r.pool_size,
        on_error: crate::metrics::state_error,
        on_change: crate::metrics::state_up,
    };
    let sync = match c.sync {
        SyncMode::Exact => crate::store::redis::Sync::Exact,
        SyncMode::Batched => {
            crate::store::redis::Sync::Batched(Duration::from_millis(c.sync_interval_ms))
        }
    };
    Stores::redis(&settings, sync, Duration::from_millis(c.task_lease_ms)).map_err(|e| vec![e])
}
