//! Usage per client: how many requests each principal of each tenant made, and how they ended,
//! over the last minute, hour and day (`GET /admin/usage`).
//!
//! [`UsageStore`] is written for a shared backend as well as for process memory: a Redis
//! backend can keep one hash per (tenant, principal, bucket) with an expiry and a sorted set of
//! clients by last use. [`MemoryUsage`] is the default (one node; lost on restart).

use super::StoreError;
use async_trait::async_trait;
use parking_lot::Mutex;

/// How an answered request ended, as usage counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered without an error.
    Ok,
    /// Answered with an error other than a rate-limit refusal (or not answered at all).
    Error,
    /// Refused by a rate limit (429).
    RateLimited,
}

/// Counts over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageCounts {
    pub requests: u64,
    pub errors: u64,
    pub rate_limited: u64,
}

impl UsageCounts {
    pub fn add(&mut self, o: &UsageCounts) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.rate_limited += o.rate_limited;
    }
}

/// The windows a report covers, in this order in [`ClientUsage::windows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    LastMinute,
    LastHour,
    LastDay,
}

impl Window {
    pub const ALL: [Window; 3] = [Window::LastMinute, Window::LastHour, Window::LastDay];

    pub fn seconds(self) -> u64 {
        match self {
            Window::LastMinute => 60,
            Window::LastHour => 3600,
            Window::LastDay => 86_400,
        }
    }
}

/// One client's counts over each [`Window`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientUsage {
    pub principal: String,
    pub tenant: String,
    /// Indexed like [`Window::ALL`].
    pub windows: [UsageCounts; 3],
}

/// Which clients a report is about (`None`: all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageQuery {
    pub principal: Option<String>,
    pub tenant: Option<String>,
}

/// Usage counters per (principal, tenant). Times are Unix seconds, passed in so that every node
/// of a shared backend buckets by its own clock and tests can move time.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Counts one answered request of `principal` (of `tenant`) that ended with `outcome`.
    async fn record(
        &self,
        principal: &str,
        tenant: &str,
        outcome: Outcome,
        at: u64,
    ) -> Result<(), StoreError>;

    /// The clients seen within the last day that match `query`, sorted by principal then
    /// tenant, with their counts over the windows ending at `now`.
    async fn report(&self, query: &UsageQuery, now: u64) -> Result<Vec<ClientUsage>, StoreError>;

    /// The in-process backend, when this is it: the hot path then counts synchronously
    /// ([`MemoryUsage::record_now`]) instead of through a boxed future per request.
    fn as_memory(&self) -> Option<&MemoryUsage> {
        None
    }
}

/// Clients tracked at most by [`MemoryUsage::default`].
pub const DEFAULT_MAX_CLIENTS: usize = 10_000;

/// (bucket width in seconds, buckets) per window: 60 one-second, 60 one-minute and 96
/// fifteen-minute buckets of 16 bytes, about 3.5 KB per client.
const RINGS: [(u64, usize); 3] = [(1, 60), (60, 60), (900, 96)];

#[derive(Clone, Copy, Default)]
struct Bucket {
    /// `now / width`; fits in 32 bits until 2106.
    epoch: u32,
    requests: u32,
    errors: u32,
    limited: u32,
}

struct Ring {
    width: u64,
    buckets: Box<[Bucket]>,
}

impl Ring {
    fn new(width: u64, len: usize) -> Ring {
        Ring {
            width,
            buckets: vec![Bucket::default(); len].into_boxed_slice(),
        }
    }

    fn add(&mut self, now: u64, errors: u32, limited: u32) {
        let epoch = (now / self.width) as u32;
        let len = self.buckets.len() as u32;
        let b = &mut self.buckets[(epoch % len) as usize];
        if b.epoch != epoch {
            *b = Bucket {
                epoch,
                ..Default::default()
            };
        }
        b.requests = b.requests.saturating_add(1);
        b.errors = b.errors.saturating_add(errors);
        b.limited = b.limited.saturating_add(limited);
    }

    /// Sum of the buckets within the ring's span ending now.
    fn sum(&self, now: u64) -> UsageCounts {
        let epoch = (now / self.width) as u32;
        let oldest = epoch.saturating_sub(self.buckets.len() as u32 - 1);
        let mut c = UsageCounts::default();
        for b in self.buckets.iter() {
            if b.requests > 0 && b.epoch >= oldest && b.epoch <= epoch {
                c.requests += b.requests as u64;
                c.errors += b.errors as u64;
                c.rate_limited += b.limited as u64;
            }
        }
        c
    }
}

struct Usage {
    rings: [Ring; 3],
    last_seen: u64,
}

impl Usage {
    fn new() -> Usage {
        Usage {
            rings: RINGS.map(|(w, n)| Ring::new(w, n)),
            last_seen: 0,
        }
    }

    /// One request seen at `at`.
    fn add(&mut self, at: u64, errors: u32, limited: u32) {
        self.last_seen = at;
        for ring in self.rings.iter_mut() {
            ring.add(at, errors, limited);
        }
    }
}

#[derive(Default)]
struct Clients {
    /// tenant -> principal -> usage: looked up by `&str` without building a key.
    /// foldhash: looked up twice on every request (names from the config, authenticated ids).
    by_tenant: foldhash::HashMap<Box<str>, foldhash::HashMap<Box<str>, Usage>>,
    len: usize,
}

impl Clients {
    /// Removes the client seen longest ago.
    fn evict_oldest(&mut self) {
        let oldest = self
            .by_tenant
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(p, u)| (u.last_seen, t, p)))
            .min_by_key(|(seen, _, _)| *seen)
            .map(|(_, t, p)| (t.clone(), p.clone()));
        if let Some((t, p)) = oldest
            && let Some(ps) = self.by_tenant.get_mut(&t)
        {
            if ps.remove(&p).is_some() {
                self.len -= 1;
            }
            if ps.is_empty() {
                self.by_tenant.remove(&t);
            }
        }
    }
}

/// Usage in process memory: bounded to `max_clients` (the client seen longest ago makes room).
pub struct MemoryUsage {
    clients: Mutex<Clients>,
    max_clients: usize,
}

impl Default for MemoryUsage {
    fn default() -> Self {
        MemoryUsage::new(DEFAULT_MAX_CLIENTS)
    }
}

impl MemoryUsage {
    pub fn new(max_clients: usize) -> MemoryUsage {
        MemoryUsage {
            clients: Mutex::new(Clients::default()),
            max_clients: max_clients.max(1),
        }
    }

    /// Synchronous form of [`UsageStore::record`].
    pub fn record_now(&self, principal: &str, tenant: &str, outcome: Outcome, at: u64) {
        let limited = u32::from(outcome == Outcome::RateLimited);
        let errors = u32::from(outcome == Outcome::Error);
        let mut clients = self.clients.lock();
        // A known client (every request but its first): two lookups by `&str`, no key built.
        if let Some(usage) = clients
            .by_tenant
            .get_mut(tenant)
            .and_then(|ps| ps.get_mut(principal))
        {
            usage.add(at, errors, limited);
            return;
        }
        if clients.len >= self.max_clients {
            clients.evict_oldest();
        }
        clients.len += 1;
        clients
            .by_tenant
            .entry(tenant.into())
            .or_default()
            .entry(principal.into())
            .or_insert_with(Usage::new)
            .add(at, errors, limited);
    }

    /// Synchronous form of [`UsageStore::report`]; forgets clients not seen for a day.
    pub fn report_now(&self, query: &UsageQuery, now: u64) -> Vec<ClientUsage> {
        let mut clients = self.clients.lock();
        let day = Window::LastDay.seconds();
        let mut len = 0;
        clients.by_tenant.retain(|_, ps| {
            ps.retain(|_, u| now.saturating_sub(u.last_seen) < day);
            len += ps.len();
            !ps.is_empty()
        });
        clients.len = len;
        let mut out: Vec<ClientUsage> = clients
            .by_tenant
            .iter()
            .filter(|(t, _)| query.tenant.as_deref().is_none_or(|want| ***t == *want))
            .flat_map(|(t, ps)| {
                ps.iter()
                    .filter(|(p, _)| query.principal.as_deref().is_none_or(|want| ***p == *want))
                    .map(move |(p, u)| ClientUsage {
                        principal: p.to_string(),
                        tenant: t.to_string(),
                        windows: [0, 1, 2].map(|i| u.rings[i].sum(now)),
                    })
            })
            .collect();
        out.sort_by(|a, b| (&a.principal, &a.tenant).cmp(&(&b.principal, &b.tenant)));
        out
    }
}

#[async_trait]
impl UsageStore for MemoryUsage {
    fn as_memory(&self) -> Option<&MemoryUsage> {
        Some(self)
    }

    async fn record(
        &self,
        principal: &str,
        tenant: &str,
        outcome: Outcome,
        at: u64,
    ) -> Result<(), StoreError> {
        self.record_now(principal, tenant, outcome, at);
        Ok(())
    }

    async fn report(&self, query: &UsageQuery, now: u64) -> Result<Vec<ClientUsage>, StoreError> {
        Ok(self.report_now(query, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> UsageQuery {
        UsageQuery::default()
    }

    fn counts(requests: u64, errors: u64, rate_limited: u64) -> UsageCounts {
        UsageCounts {
            requests,
            errors,
            rate_limited,
        }
    }

    #[tokio::test]
    async fn windows_slide() {
        let u = MemoryUsage::new(10);
        let t0 = 1_800_000_000;
        u.record("key:a", "acme", Outcome::Ok, t0).await.unwrap();
        u.record("key:a", "acme", Outcome::Error, t0 + 1)
            .await
            .unwrap();
        u.record("key:a", "acme", Outcome::RateLimited, t0 + 2)
            .await
            .unwrap();
        let r = u.report(&all(), t0 + 2).await.unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].principal.as_str(), r[0].tenant.as_str()),
            ("key:a", "acme")
        );
        assert_eq!(r[0].windows[0], counts(3, 1, 1));
        // 90 s later the minute is empty, the hour and day are not.
        let r = u.report(&all(), t0 + 92).await.unwrap();
        assert_eq!(r[0].windows[0].requests, 0);
        assert_eq!(r[0].windows[1].requests, 3);
        // Two hours later only the day remains.
        let r = u.report(&all(), t0 + 7200).await.unwrap();
        assert_eq!(r[0].windows[1].requests, 0);
        assert_eq!(r[0].windows[2], counts(3, 1, 1));
        // After a day the client is gone.
        assert!(u.report(&all(), t0 + 86_400 + 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn bounded_filtered_and_sorted() {
        let u = MemoryUsage::new(3);
        for i in 0..5u64 {
            let tenant = if i % 2 == 0 { "acme" } else { "globex" };
            u.record(&format!("key:{i}"), tenant, Outcome::Ok, 1000 + i)
                .await
                .unwrap();
        }
        let names =
            |r: Vec<ClientUsage>| -> Vec<String> { r.into_iter().map(|c| c.principal).collect() };
        // The two seen longest ago made room.
        assert_eq!(
            names(u.report(&all(), 1010).await.unwrap()),
            ["key:2", "key:3", "key:4"]
        );
        let acme = UsageQuery {
            tenant: Some("acme".into()),
            ..Default::default()
        };
        assert_eq!(
            names(u.report(&acme, 1010).await.unwrap()),
            ["key:2", "key:4"]
        );
        let one = UsageQuery {
            principal: Some("key:3".into()),
            tenant: None,
        };
        assert_eq!(names(u.report(&one, 1010).await.unwrap()), ["key:3"]);
        // A client seen again is not a new one: nothing is evicted.
        u.record("key:3", "globex", Outcome::Ok, 1011)
            .await
            .unwrap();
        assert_eq!(u.report(&all(), 1011).await.unwrap().len(), 3);
        // The same principal under two tenants is two clients.
        u.record("key:3", "acme", Outcome::Ok, 1012).await.unwrap();
        let r = u.report(&one, 1012).await.unwrap();
        assert_eq!(
            r.iter().map(|c| c.tenant.as_str()).collect::<Vec<_>>(),
            ["acme", "globex"]
        );
    }
}
