//! Polling without punishment: identical in-flight GETs of one tenant are coalesced into one
//! OrionVM call (a single-flight map), and the answer is kept for a short TTL (the
//! micro-cache). Keys are tenant + path + query, so nothing is ever shared across tenants;
//! entries are grouped per tenant and object id so that a mutation of an object through the
//! proxy drops every cached read of it at once.
//!
//! The flight runs in its own task through [`crate::upstream::client::call`] (same account,
//! endpoints, credentials, breaker and budget as the proxied path), so a caller that goes away
//! never strands the others waiting on it. The last good answer of each key is also kept for
//! `stale_seconds`, for `breaker.fallback: stale`.

use crate::errors::ApiError;
use crate::upstream::Account;
use crate::upstream::client::{self, Answer};
use bytes::Bytes;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Settings {
    pub ttl: Duration,
    pub stale: Duration,
    pub max_entries: usize,
    pub max_body: usize,
}

/// What a flight brought back.
#[derive(Debug)]
pub struct Filled {
    pub at: Instant,
    pub outcome: Result<Answer, ApiError>,
}

impl Filled {
    fn good(&self) -> bool {
        matches!(&self.outcome, Ok(a) if (200..300).contains(&a.status))
    }
}

type Slot = watch::Sender<Option<Arc<Filled>>>;

struct Entry {
    current: Arc<Slot>,
    last_good: Option<Arc<Filled>>,
}

#[derive(Default)]
struct Store {
    /// `tenant \0 object id` -> path with query -> entry.
    groups: HashMap<String, HashMap<String, Entry>>,
    entries: usize,
}

static STORE: Lazy<Mutex<Store>> = Lazy::new(Default::default);

/// How a cacheable read was answered.
pub enum Served {
    /// From the cache, no OrionVM call.
    Hit(Arc<Filled>),
    /// By another caller's in-flight call.
    Coalesced(Arc<Filled>),
    /// By this caller's own call (charged to its quota).
    Miss(Arc<Filled>),
}

pub fn group_key(tenant: &str, object: &str) -> String {
    let mut k = String::with_capacity(tenant.len() + object.len() + 1);
    k.push_str(tenant);
    k.push('\0');
    k.push_str(object);
    k
}

/// Drops every cached read of one object of one tenant.
pub fn invalidate(tenant: &str, object: &str) {
    let key = group_key(tenant, object);
    let mut store = STORE.lock();
    if let Some(g) = store.groups.remove(&key) {
        store.entries = store.entries.saturating_sub(g.len());
    }
}

/// The last good answer of `path`, if younger than the stale window.
pub fn stale(settings: &Settings, group: &str, path: &str) -> Option<Arc<Filled>> {
    let store = STORE.lock();
    let e = store.groups.get(group)?.get(path)?;
    e.last_good
        .as_ref()
        .filter(|f| f.at.elapsed() <= settings.stale)
        .cloned()
}

enum Step {
    Ready(Served),
    Wait(watch::Receiver<Option<Arc<Filled>>>, bool),
}

/// Answers a cacheable GET: from the cache, by joining an identical call in flight, or by
/// starting one. `charge` runs (under the map lock, without awaiting) only when this caller
/// starts a call; when it refuses, nothing starts and its error is returned.
pub async fn serve(
    settings: &Settings,
    account: &Arc<Account>,
    group: String,
    path: String,
    request_id: &str,
    wait_limit: Duration,
    charge: impl FnOnce() -> Result<(), Box<ApiError>>,
) -> Result<Served, ApiError> {
    let step = {
        let mut store = STORE.lock();
        let now = Instant::now();
        let found = store
            .groups
            .get(&group)
            .and_then(|g| g.get(&path))
            .map(|e| e.current.clone());
        let mut step = None;
        if let Some(slot) = found {
            let current = slot.borrow().clone();
            match current {
                None => step = Some(Step::Wait(slot.subscribe(), false)),
                Some(f) if f.good() && now.duration_since(f.at) < settings.ttl => {
                    step = Some(Step::Ready(Served::Hit(f)))
                }
                Some(_) => {}
            }
        }
        match step {
            Some(s) => s,
            None => {
                charge().map_err(|e| *e)?;
                if store.entries >= settings.max_entries {
                    sweep(&mut store, settings);
                }
                let (tx, rx) = watch::channel(None);
                let slot = Arc::new(tx);
                let group_map = store.groups.entry(group.clone()).or_default();
                let mut added = false;
                match group_map.get_mut(&path) {
                    Some(e) => e.current = slot.clone(),
                    None => {
                        group_map.insert(
                            path.clone(),
                            Entry {
                                current: slot.clone(),
                                last_good: None,
                            },
                        );
                        added = true;
                    }
                }
                if added {
                    store.entries += 1;
                }
                spawn_flight(
                    settings.clone(),
                    account.clone(),
                    group,
                    path,
                    request_id.to_string(),
                    slot,
                );
                Step::Wait(rx, true)
            }
        }
    };
    match step {
        Step::Ready(s) => Ok(s),
        Step::Wait(mut rx, leader) => {
            let got = tokio::time::timeout(wait_limit, rx.wait_for(Option::is_some)).await;
            match got {
                Ok(Ok(v)) => match v.as_ref() {
                    Some(f) if leader => Ok(Served::Miss(f.clone())),
                    Some(f) => Ok(Served::Coalesced(f.clone())),
                    None => Err(ApiError::internal(
                        "the shared call ended without an answer",
                    )),
                },
                Ok(Err(_)) => Err(ApiError::bad_gateway(
                    "bad_gateway",
                    "the call to OrionVM was abandoned",
                )),
                Err(_) => Err(ApiError::gateway_timeout("OrionVM did not answer in time")),
            }
        }
    }
}

/// Frees room: drops entries with nothing in flight and nothing worth keeping; if that is not
/// enough, drops everything (callers in flight keep their own handles).
fn sweep(store: &mut Store, settings: &Settings) {
    let now = Instant::now();
    let mut entries = 0;
    store.groups.retain(|_, g| {
        g.retain(|_, e| {
            let in_flight = e.current.borrow().is_none();
            let keep = e
                .last_good
                .as_ref()
                .is_some_and(|f| now.duration_since(f.at) <= settings.stale);
            in_flight || keep
        });
        entries += g.len();
        !g.is_empty()
    });
    store.entries = entries;
    if store.entries >= settings.max_entries {
        store.groups.clear();
        store.entries = 0;
    }
}

fn spawn_flight(
    settings: Settings,
    account: Arc<Account>,
    group: String,
    path: String,
    request_id: String,
    slot: Arc<Slot>,
) {
    tokio::spawn(async move {
        let outcome = client::call(&account, http::Method::GET, &path, None, &request_id)
            .await
            .map_err(ApiError::from);
        let filled = Arc::new(Filled {
            at: Instant::now(),
            outcome,
        });
        let good = filled.good();
        let keep = good && matches!(&filled.outcome, Ok(a) if a.body.len() <= settings.max_body);
        {
            let mut guard = STORE.lock();
            let Store { groups, entries } = &mut *guard;
            if let Some(g) = groups.get_mut(&group)
                && g.get(&path).is_some_and(|e| Arc::ptr_eq(&e.current, &slot))
            {
                if keep {
                    if let Some(e) = g.get_mut(&path) {
                        e.last_good = Some(filled.clone());
                    }
                } else if good {
                    // Too big to keep: the callers waiting get it, later ones call again.
                    g.remove(&path);
                    *entries = entries.saturating_sub(1);
                }
            }
        }
        slot.send_replace(Some(filled));
    });
}

/// The body bytes of a good answer (shared, not copied).
pub fn body(f: &Filled) -> Option<(u16, Bytes)> {
    f.outcome.as_ref().ok().map(|a| (a.status, a.body.clone()))
}
