//! The one owner of everything that outlives a request (`docs/ARCHITECTURE.md`, "State").
//!
//! Each concern defines the type of its own part (`limits::LimitsState`...) and builds its
//! runtime objects with `from_config(&model, &its_state)`. The state traits' backends are in
//! `stores`. Nothing here is a process static: two `State`s in one process (two proxies in one
//! test) share nothing.

use crate::store::Stores;

pub struct State {
    /// The backends of the state traits (counters, key-value store, ...).
    pub stores: Stores,
    pub auth: crate::auth::AuthState,
    pub upstream: crate::upstream::UpstreamState,
    pub limits: crate::limits::LimitsState,
    pub observe: crate::observe::ObserveState,
    pub facade: crate::facade::FacadeState,
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
            stores,
        }
    }
}
