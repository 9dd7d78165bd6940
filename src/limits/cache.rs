//! Polling without punishment: identical in-flight GETs of one tenant are coalesced into one
//! OrionVM call (a single-flight map), and the answer is kept for a short TTL (the
//! micro-cache). Keys are tenant + path + query, so nothing is ever shared across tenants;
//! entries are grouped per tenant and object id so that a mutation of an object through the
//! proxy drops every cached read of it at once.
//!
//! The map is owned by [`MicroCache`], which the process state holds (`LimitsState`), so it
//! outlives reloads and two states in one process share nothing.
//!
//! The flight runs in its own task, so a caller that goes away never strands the others waiting
//! on it: for a mirror read, one [`crate::upstream::client::call`] (same account, endpoints,
//! credentials, breaker and budget as the proxied path); for a facade read, the facade's own
//! answer, which the proxy hands in as a [`Fetch`]. The last good answer of each key is also
//! kept for `stale_seconds`, for `breaker.fallback: stale`.
//!
//! Objects are linked: a good answer names other objects (a disk its instance, an instance its
//! disks, addresses and keys), and a mutation of one object drops the cached reads of every
//! object linked to it as well (a disk PUT drops the disk and the instance it is attached to).

use super::rate::Verdicts;
use crate::upstream::client::{Answer, CallError};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
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

/// What a flight brought back: OrionVM's answer (any status), or why the call failed.
#[derive(Debug)]
pub struct Filled {
    pub at: Instant,
    pub outcome: Result<Answer, CallError>,
}

impl Filled {
    fn good(&self) -> bool {
        matches!(&self.outcome, Ok(a) if (200..300).contains(&a.status))
    }

    /// The status and body bytes of an answer (shared, not copied).
    pub fn body(&self) -> Option<(u16, Bytes)> {
        self.outcome
            .as_ref()
            .ok()
            .map(|a| (a.status, a.body.clone()))
    }
}

type Slot = watch::Sender<Option<Arc<Filled>>>;

struct Entry {
    current: Arc<Slot>,
    last_good: Option<Arc<Filled>>,
}

/// The call a flight makes: OrionVM's answer (or the facade's, as an answer), or why it failed.
pub type Fetch = Pin<Box<dyn Future<Output = Result<Answer, CallError>> + Send>>;

#[derive(Default)]
struct Store {
    /// `tenant \0 object id` -> path with query -> entry.
    groups: HashMap<String, HashMap<String, Entry>>,
    /// `tenant \0 object id` -> the groups of the objects its cached answers name (and that
    /// name it): dropped with it.
    links: HashMap<String, HashSet<String>>,
    entries: usize,
}

impl Store {
    fn holds_nothing(&self) -> bool {
        self.groups.is_empty() && self.links.is_empty()
    }
}

/// The micro-cache and its coalescing groups (one per process state).
#[derive(Default)]
pub struct MicroCache {
    store: Mutex<Store>,
}

/// How a cacheable read was answered.
#[derive(Debug)]
pub enum Served {
    /// From the cache, no OrionVM call.
    Hit(Arc<Filled>),
    /// By another caller's in-flight call.
    Coalesced(Arc<Filled>),
    /// By this caller's own call (charged to its quota).
    Miss(Arc<Filled>),
}

/// Why a cacheable read got no answer from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeError {
    /// The caller's quota refused the call it would have started (see the charged verdicts).
    Refused,
    /// The call waited on did not end within the wait limit.
    Timeout,
    /// The call waited on was dropped before it answered.
    Abandoned,
    /// The call waited on ended without an answer.
    Lost,
}

pub fn group_key(tenant: &str, object: &str) -> String {
    let mut k = String::with_capacity(tenant.len() + object.len() + 1);
    write_group_key(&mut k, tenant, object);
    k
}

/// [`group_key`] into `k`, replacing what it held.
fn write_group_key(k: &mut String, tenant: &str, object: &str) {
    k.clear();
    k.push_str(tenant);
    k.push('\0');
    k.push_str(object);
}

enum Step {
    Ready(Served),
    Wait(watch::Receiver<Option<Arc<Filled>>>, bool),
    /// Nothing to join: the caller must be charged before it starts a call.
    Charge,
}

impl MicroCache {
    /// Whether a fresh answer for `path` is here: a hit, unless the group is dropped first.
    pub fn has_fresh(&self, settings: &Settings, group: &str, path: &str) -> bool {
        matches!(
            lookup(&self.store.lock(), settings, group, path),
            Some(Step::Ready(_))
        )
    }

    /// Drops every cached read of one object of one tenant, and of the objects linked to it.
    pub fn invalidate(&self, tenant: &str, object: &str) {
        self.invalidate_all(tenant, object, &[]);
    }

    /// [`invalidate`](Self::invalidate) for `object` and for each of `others` (the objects a
    /// mutation's body names: the disks of a disks PUT).
    pub fn invalidate_all(&self, tenant: &str, object: &str, others: &[&str]) {
        let mut store = self.store.lock();
        if store.holds_nothing() {
            return;
        }
        // One key buffer for every id the mutation names (a 1 KiB body names about 20).
        let mut key = String::with_capacity(tenant.len() + 64);
        for o in std::iter::once(object).chain(others.iter().copied()) {
            write_group_key(&mut key, tenant, o);
            let linked = store.links.remove(key.as_str());
            drop_group(&mut store, &key);
            for l in linked.into_iter().flatten() {
                drop_group(&mut store, &l);
                if let Some(back) = store.links.get_mut(&l) {
                    back.remove(&key);
                }
            }
        }
    }

    /// The last good answer of `path`, if younger than the stale window.
    pub fn stale(&self, settings: &Settings, group: &str, path: &str) -> Option<Arc<Filled>> {
        let store = self.store.lock();
        let e = store.groups.get(group)?.get(path)?;
        e.last_good
            .as_ref()
            .filter(|f| f.at.elapsed() <= settings.stale)
            .cloned()
    }

    /// Whether an invalidation could drop anything: no group and no link held. A mutation
    /// looks for the ids its body names only when this is false (a walk over the body).
    pub fn holds_nothing(&self) -> bool {
        self.store.lock().holds_nothing()
    }

    /// Entries held (over all tenants).
    pub fn len(&self) -> usize {
        self.store.lock().entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Answers a cacheable GET: from the cache, by joining an identical call in flight, or by
    /// starting one. The caller is charged only when it starts a call: `charge_now` runs under
    /// the map lock, without awaiting (exact: two callers never both start the same call);
    /// when it cannot count synchronously (it returns `None`, a remote counter backend),
    /// `charge_later` is awaited outside the lock and the map is looked at again (a caller
    /// charged there may then join a call another one started meanwhile). The verdicts
    /// charged are left in `charged`; when they refuse, nothing starts.
    #[allow(clippy::too_many_arguments)]
    pub async fn serve(
        self: &Arc<Self>,
        settings: &Settings,
        fetch: impl FnOnce() -> Fetch,
        tenant: &str,
        group: String,
        path: String,
        wait_limit: Duration,
        charged: &mut Option<Verdicts>,
        charge_now: impl FnOnce() -> Option<Verdicts>,
        charge_later: impl Future<Output = Verdicts>,
    ) -> Result<Served, ServeError> {
        let mut fetch = Some(fetch);
        let step = {
            let mut store = self.store.lock();
            match lookup(&store, settings, &group, &path) {
                Some(step) => step,
                None => match charge_now() {
                    Some(v) => {
                        let refused = v.refusal().is_some();
                        *charged = Some(v);
                        if refused {
                            return Err(ServeError::Refused);
                        }
                        let Some(f) = fetch.take() else {
                            return Err(ServeError::Lost);
                        };
                        let rx = self.start(&mut store, settings, f(), tenant, &group, &path);
                        Step::Wait(rx, true)
                    }
                    None => Step::Charge,
                },
            }
        };
        let step = match step {
            Step::Charge => {
                let v = charge_later.await;
                let refused = v.refusal().is_some();
                *charged = Some(v);
                if refused {
                    return Err(ServeError::Refused);
                }
                let mut store = self.store.lock();
                match lookup(&store, settings, &group, &path) {
                    Some(step) => step,
                    None => {
                        let Some(f) = fetch.take() else {
                            return Err(ServeError::Lost);
                        };
                        let rx = self.start(&mut store, settings, f(), tenant, &group, &path);
                        Step::Wait(rx, true)
                    }
                }
            }
            other => other,
        };
        match step {
            Step::Ready(s) => Ok(s),
            Step::Charge => Err(ServeError::Lost),
            Step::Wait(mut rx, leader) => {
                let got = tokio::time::timeout(wait_limit, rx.wait_for(Option::is_some)).await;
                match got {
                    Ok(Ok(v)) => match v.as_ref() {
                        Some(f) if leader => Ok(Served::Miss(f.clone())),
                        Some(f) => Ok(Served::Coalesced(f.clone())),
                        None => Err(ServeError::Lost),
                    },
                    Ok(Err(_)) => Err(ServeError::Abandoned),
                    Err(_) => Err(ServeError::Timeout),
                }
            }
        }
    }

    /// Registers a new flight for `path` and starts it; returns where its answer will come.
    fn start(
        self: &Arc<Self>,
        store: &mut Store,
        settings: &Settings,
        fetch: Fetch,
        tenant: &str,
        group: &str,
        path: &str,
    ) -> watch::Receiver<Option<Arc<Filled>>> {
        if store.entries >= settings.max_entries {
            sweep(store, settings);
        }
        let (tx, rx) = watch::channel(None);
        let slot = Arc::new(tx);
        let group_map = store.groups.entry(group.to_string()).or_default();
        let mut added = false;
        match group_map.get_mut(path) {
            Some(e) => e.current = slot.clone(),
            None => {
                group_map.insert(
                    path.to_string(),
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
        let flight = Flight {
            cache: self.clone(),
            settings: settings.clone(),
            fetch,
            tenant: tenant.to_string(),
            group: group.to_string(),
            path: path.to_string(),
            slot,
        };
        tokio::spawn(flight.run());
        rx
    }
}

/// The current entry of `path`: a fresh good answer, or a call in flight to join.
fn lookup(store: &Store, settings: &Settings, group: &str, path: &str) -> Option<Step> {
    let slot = store.groups.get(group)?.get(path)?.current.clone();
    let current = slot.borrow().clone();
    match current {
        None => Some(Step::Wait(slot.subscribe(), false)),
        Some(f) if f.good() && f.at.elapsed() < settings.ttl => Some(Step::Ready(Served::Hit(f))),
        Some(_) => None,
    }
}

/// Drops one group of entries.
fn drop_group(store: &mut Store, key: &str) {
    if let Some(g) = store.groups.remove(key) {
        store.entries = store.entries.saturating_sub(g.len());
    }
}

/// The objects an answer names, by id: every UUID in it but its own id and the catalogue's
/// (regions, templates, performance tiers are never changed through the API). At most 64.
pub fn linked_ids(body: &[u8]) -> Vec<String> {
    fn walk(v: &serde_json::Value, top: bool, out: &mut Vec<String>) {
        if out.len() >= 64 {
            return;
        }
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let catalogue = k == "region"
                        || k == "template"
                        || k.ends_with("performance_tier")
                        || k == "task_id";
                    if catalogue || (top && k == "id") {
                        continue;
                    }
                    walk(v, false, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, false, out)),
            serde_json::Value::String(s)
                if s.len() == 36
                    && uuid::Uuid::parse_str(s).is_ok()
                    && !out.iter().any(|o| o == s) =>
            {
                out.push(s.clone());
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        walk(&v, true, &mut out);
    }
    out
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
    let Store { groups, links, .. } = store;
    links.retain(|k, _| groups.contains_key(k));
}

/// One call to OrionVM that the callers of one key share.
struct Flight {
    cache: Arc<MicroCache>,
    settings: Settings,
    fetch: Fetch,
    tenant: String,
    group: String,
    path: String,
    slot: Arc<Slot>,
}

impl Flight {
    async fn run(self) {
        let outcome = self.fetch.await;
        let filled = Arc::new(Filled {
            at: Instant::now(),
            outcome,
        });
        let good = filled.good();
        let keep =
            good && matches!(&filled.outcome, Ok(a) if a.body.len() <= self.settings.max_body);
        let links = match &filled.outcome {
            Ok(a) if keep => linked_ids(&a.body),
            _ => Vec::new(),
        };
        {
            let mut guard = self.cache.store.lock();
            let Store {
                groups,
                links: link_map,
                entries,
            } = &mut *guard;
            if let Some(g) = groups.get_mut(&self.group)
                && g.get(&self.path)
                    .is_some_and(|e| Arc::ptr_eq(&e.current, &self.slot))
            {
                if keep {
                    if let Some(e) = g.get_mut(&self.path) {
                        e.last_good = Some(filled.clone());
                    }
                    for id in &links {
                        let other = group_key(&self.tenant, id);
                        link_map
                            .entry(self.group.clone())
                            .or_default()
                            .insert(other.clone());
                        link_map
                            .entry(other)
                            .or_default()
                            .insert(self.group.clone());
                    }
                } else if good {
                    // Too big to keep: the callers waiting get it, later ones call again.
                    g.remove(&self.path);
                    *entries = entries.saturating_sub(1);
                }
            }
        }
        self.slot.send_replace(Some(filled));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_links_the_objects_it_names_but_not_the_catalogue() {
        let disk = br#"{"id": "7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d9e0f", "name": "d",
            "instance_id": "3b0c2f6e-1111-4222-8333-944455556666",
            "template": {"id": "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"},
            "performance_tier": {"id": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"},
            "region": {"id": "9e98d1f2-3c4b-4a5d-8e6f-7a8b9c0d1e2f"}}"#;
        assert_eq!(
            linked_ids(disk),
            vec!["3b0c2f6e-1111-4222-8333-944455556666".to_string()]
        );
        let inst = br#"{"id": "3b0c2f6e-1111-4222-8333-944455556666",
            "disks": [{"id": "7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d9e0f"}],
            "network_adapters": [{"network": {"id": "2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a"},
                                  "ip_addresses": [{"id": "4f5a6b7c-8d9e-4f0a-8b1c-2d3e4f5a6b7c"}]}]}"#;
        assert_eq!(linked_ids(inst).len(), 3);
        assert!(linked_ids(b"not json").is_empty());
    }

    #[test]
    fn invalidating_an_object_drops_its_linked_groups() {
        let cache = MicroCache::default();
        {
            let mut store = cache.store.lock();
            for g in ["t\0disk", "t\0inst", "t\0other"] {
                let (tx, _) = watch::channel(None);
                let mut entries = HashMap::new();
                entries.insert(
                    format!("/{g}"),
                    Entry {
                        current: Arc::new(tx),
                        last_good: None,
                    },
                );
                store.groups.insert(g.to_string(), entries);
                store.entries += 1;
            }
            store
                .links
                .entry("t\0disk".into())
                .or_default()
                .insert("t\0inst".into());
            store
                .links
                .entry("t\0inst".into())
                .or_default()
                .insert("t\0disk".into());
        }
        cache.invalidate("t", "disk");
        let store = cache.store.lock();
        assert!(!store.groups.contains_key("t\0disk"));
        assert!(!store.groups.contains_key("t\0inst"), "the linked instance");
        assert!(store.groups.contains_key("t\0other"));
        assert_eq!(store.entries, 1);
    }
}
