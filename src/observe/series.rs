//! The proxy's own short history: one hour of traffic in ten-second slots, kept in process
//! memory so that the console draws its charts without Prometheus.
//!
//! One ring of [`SLOTS`] slots, each the counts of one ten-second period (requests by status
//! class, 429s, upstream errors) and two latency histograms (the whole request, and OrionVM's
//! part). A slot is reused when its period comes round again an hour later. Percentiles are
//! read from the histograms, so they are the upper bound of a bucket (good enough for a chart;
//! Prometheus has the exact series). Beside it, a smaller ring per principal (requests, errors,
//! 429s) for the console's chart per client, for at most [`MAX_PRINCIPALS`] principals (the
//! least recently seen is forgotten first). This module owns the rings; `finish` records into
//! them, under one short lock. They are this process's: with several nodes each draws its own
//! traffic (the usage counts, summed over nodes, are in `usage`).

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Principals whose last hour is kept (about 6 KiB each).
pub const MAX_PRINCIPALS: usize = 1000;

/// Seconds per slot.
pub const SLOT_SECONDS: u64 = 10;
/// Slots in the ring: one hour.
pub const SLOTS: usize = 360;
/// Upper bounds of the latency buckets, in milliseconds (the last one catches the rest).
const BOUNDS_MS: [u64; 14] = [
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1000,
    2000,
    5000,
    10_000,
    u64::MAX,
];

#[derive(Clone, Default)]
struct Slot {
    period: u64,
    requests: u64,
    by_class: [u64; 5],
    limited: u64,
    upstream_errors: u64,
    latency: [u64; BOUNDS_MS.len()],
    upstream: [u64; BOUNDS_MS.len()],
}

/// One slot as the console reads it.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub struct Point {
    /// Start of the period, unix seconds.
    pub t: u64,
    pub requests: u64,
    /// Requests per second over the period.
    pub rps: f64,
    pub errors_4xx: u64,
    pub errors_5xx: u64,
    pub limited_429: u64,
    pub upstream_errors: u64,
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub upstream_p50_ms: Option<u64>,
    pub upstream_p95_ms: Option<u64>,
}

/// One principal's counts in one period.
#[derive(Clone, Copy, Default)]
struct ClientSlot {
    period: u32,
    requests: u32,
    errors: u32,
    limited: u32,
}

/// One principal's ring.
struct ClientRing {
    tenant: Arc<str>,
    /// The period of its last request (the least recent is forgotten first).
    last: u64,
    slots: Box<[ClientSlot]>,
}

/// One period of one principal, as the console reads it.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub struct ClientPoint {
    /// Start of the period, unix seconds.
    pub t: u64,
    pub requests: u64,
    /// Answers of 400 and more but 429, and requests with no answer (as `usage` counts them).
    pub errors: u64,
    pub limited_429: u64,
}

struct Rings {
    slots: Vec<Slot>,
    /// foldhash: looked up on every request (authenticated principal ids).
    clients: foldhash::HashMap<Arc<str>, ClientRing>,
}

/// The rings. Cheap to record into: one short lock, no allocation but a principal's first
/// request in the hour.
pub struct Series {
    rings: Mutex<Rings>,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            rings: Mutex::new(Rings {
                slots: vec![Slot::default(); SLOTS],
                clients: foldhash::HashMap::default(),
            }),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bucket(d: Duration) -> usize {
    let ms = d.as_millis() as u64;
    BOUNDS_MS
        .iter()
        .position(|b| ms <= *b)
        .unwrap_or(BOUNDS_MS.len() - 1)
}

fn percentile(h: &[u64; BOUNDS_MS.len()], q: f64) -> Option<u64> {
    let total: u64 = h.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in h.iter().enumerate() {
        seen += n;
        if seen >= rank {
            // The open last bucket is shown as the largest finite bound.
            return Some(BOUNDS_MS[i].min(BOUNDS_MS[BOUNDS_MS.len() - 2] * 2));
        }
    }
    None
}

impl Series {
    /// Records one finished request: the status the caller got (0: none), its duration,
    /// OrionVM's status and duration when it was called, and the caller's principal id and
    /// tenant when it authenticated.
    pub fn record(
        &self,
        status: u16,
        elapsed: Duration,
        upstream: Option<Duration>,
        upstream_status: Option<u16>,
        principal: Option<(&Arc<str>, &Arc<str>)>,
    ) {
        self.record_at(
            now_secs(),
            status,
            elapsed,
            upstream,
            upstream_status,
            principal,
        );
    }

    fn record_at(
        &self,
        now: u64,
        status: u16,
        elapsed: Duration,
        upstream: Option<Duration>,
        upstream_status: Option<u16>,
        principal: Option<(&Arc<str>, &Arc<str>)>,
    ) {
        let period = now / SLOT_SECONDS;
        let mut rings = self.rings.lock();
        if let Some((id, tenant)) = principal {
            record_client(&mut rings.clients, id, tenant, period, status);
        }
        let i = (period % SLOTS as u64) as usize;
        let Some(s) = rings.slots.get_mut(i) else {
            return;
        };
        if s.period != period {
            *s = Slot {
                period,
                ..Slot::default()
            };
        }
        s.requests += 1;
        let class = (status / 100) as usize;
        if let Some(c) = class.checked_sub(1).and_then(|c| s.by_class.get_mut(c)) {
            *c += 1;
        }
        if status == 429 {
            s.limited += 1;
        }
        s.latency[bucket(elapsed)] += 1;
        if let Some(u) = upstream {
            s.upstream[bucket(u)] += 1;
        }
        if upstream_status.is_some_and(|u| u >= 500) || (upstream.is_none() && status >= 502) {
            s.upstream_errors += 1;
        }
    }

    /// The slots of the last `window` (at most an hour), oldest first, one per period (empty
    /// periods included, with zero counts).
    pub fn points(&self, window: Duration) -> Vec<Point> {
        self.points_at(now_secs(), window)
    }

    fn points_at(&self, now: u64, window: Duration) -> Vec<Point> {
        let current = now / SLOT_SECONDS;
        let n = (window.as_secs() / SLOT_SECONDS).clamp(1, SLOTS as u64);
        let rings = self.rings.lock();
        let slots = &rings.slots;
        (0..n)
            .rev()
            .filter_map(|back| current.checked_sub(back))
            .map(|period| {
                let t = period * SLOT_SECONDS;
                match slots.get((period % SLOTS as u64) as usize) {
                    Some(s) if s.period == period => Point {
                        t,
                        requests: s.requests,
                        rps: s.requests as f64 / SLOT_SECONDS as f64,
                        errors_4xx: s.by_class[3],
                        errors_5xx: s.by_class[4],
                        limited_429: s.limited,
                        upstream_errors: s.upstream_errors,
                        p50_ms: percentile(&s.latency, 0.50),
                        p95_ms: percentile(&s.latency, 0.95),
                        p99_ms: percentile(&s.latency, 0.99),
                        upstream_p50_ms: percentile(&s.upstream, 0.50),
                        upstream_p95_ms: percentile(&s.upstream, 0.95),
                    },
                    _ => Point {
                        t,
                        ..Point::default()
                    },
                }
            })
            .collect()
    }

    /// Totals over the last `window`: requests, 4xx, 5xx, 429s, upstream errors, and the
    /// request latency percentiles (p50, p95, p99) over the whole window.
    pub fn totals(&self, window: Duration) -> Totals {
        let now = now_secs();
        let current = now / SLOT_SECONDS;
        let n = (window.as_secs() / SLOT_SECONDS).clamp(1, SLOTS as u64);
        let rings = self.rings.lock();
        let slots = &rings.slots;
        let mut t = Totals::default();
        let mut h = [0u64; BOUNDS_MS.len()];
        for period in (0..n).filter_map(|b| current.checked_sub(b)) {
            if let Some(s) = slots.get((period % SLOTS as u64) as usize)
                && s.period == period
            {
                t.requests += s.requests;
                t.errors_4xx += s.by_class[3];
                t.errors_5xx += s.by_class[4];
                t.limited_429 += s.limited;
                t.upstream_errors += s.upstream_errors;
                for (a, b) in h.iter_mut().zip(s.latency.iter()) {
                    *a += b;
                }
            }
        }
        t.p50_ms = percentile(&h, 0.50);
        t.p95_ms = percentile(&h, 0.95);
        t.p99_ms = percentile(&h, 0.99);
        t
    }

    /// One principal's tenant and its periods of the last `window` (at most an hour), oldest
    /// first, empty periods included; `None` when this process has no history of it (no request
    /// in the last hour, or forgotten past [`MAX_PRINCIPALS`]).
    pub fn client_points(
        &self,
        principal: &str,
        window: Duration,
    ) -> Option<(Arc<str>, Vec<ClientPoint>)> {
        self.client_points_at(now_secs(), principal, window)
    }

    fn client_points_at(
        &self,
        now: u64,
        principal: &str,
        window: Duration,
    ) -> Option<(Arc<str>, Vec<ClientPoint>)> {
        let current = now / SLOT_SECONDS;
        let n = (window.as_secs() / SLOT_SECONDS).clamp(1, SLOTS as u64);
        let rings = self.rings.lock();
        let ring = rings.clients.get(principal)?;
        if current.saturating_sub(ring.last) >= SLOTS as u64 {
            return None;
        }
        let points = (0..n)
            .rev()
            .filter_map(|back| current.checked_sub(back))
            .map(|period| {
                let t = period * SLOT_SECONDS;
                match ring.slots.get((period % SLOTS as u64) as usize) {
                    Some(s) if u64::from(s.period) == period => ClientPoint {
                        t,
                        requests: s.requests.into(),
                        errors: s.errors.into(),
                        limited_429: s.limited.into(),
                    },
                    _ => ClientPoint {
                        t,
                        ..ClientPoint::default()
                    },
                }
            })
            .collect();
        Some((ring.tenant.clone(), points))
    }
}

/// Counts one request of a principal in its ring (made on its first request in the hour; when
/// [`MAX_PRINCIPALS`] rings exist, the least recently used one is reused).
fn record_client(
    clients: &mut foldhash::HashMap<Arc<str>, ClientRing>,
    id: &Arc<str>,
    tenant: &Arc<str>,
    period: u64,
    status: u16,
) {
    // A known principal (every request but its first): one lookup.
    if let Some(ring) = clients.get_mut(&**id) {
        count_client(ring, tenant, period, status);
        return;
    }
    let reused = if clients.len() >= MAX_PRINCIPALS {
        let oldest = clients
            .iter()
            .min_by_key(|(_, r)| r.last)
            .map(|(k, _)| k.clone());
        oldest.and_then(|k| clients.remove(&k))
    } else {
        None
    };
    let slots = match reused {
        Some(mut r) => {
            r.slots.fill(ClientSlot::default());
            r.slots
        }
        None => vec![ClientSlot::default(); SLOTS].into_boxed_slice(),
    };
    clients.insert(
        id.clone(),
        ClientRing {
            tenant: tenant.clone(),
            last: period,
            slots,
        },
    );
    if let Some(ring) = clients.get_mut(&**id) {
        count_client(ring, tenant, period, status);
    }
}

fn count_client(ring: &mut ClientRing, tenant: &Arc<str>, period: u64, status: u16) {
    ring.last = period;
    if *ring.tenant != **tenant {
        ring.tenant = tenant.clone();
    }
    let Some(s) = ring.slots.get_mut((period % SLOTS as u64) as usize) else {
        return;
    };
    // Periods are ten-second counts since 1970: they fit in 32 bits for another 1,300 years.
    let p = period as u32;
    if s.period != p {
        *s = ClientSlot {
            period: p,
            ..ClientSlot::default()
        };
    }
    s.requests = s.requests.saturating_add(1);
    match crate::observe::usage::outcome_of(status) {
        crate::store::usage::Outcome::RateLimited => s.limited = s.limited.saturating_add(1),
        crate::store::usage::Outcome::Error => s.errors = s.errors.saturating_add(1),
        crate::store::usage::Outcome::Ok => {}
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub struct Totals {
    pub requests: u64,
    pub errors_4xx: u64,
    pub errors_5xx: u64,
    pub limited_429: u64,
    pub upstream_errors: u64,
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    pub p99_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_period_and_old_periods_are_reused() {
        let s = Series::default();
        let ms = Duration::from_millis;
        let t0 = 1_000_000 * SLOT_SECONDS;
        s.record_at(t0, 200, ms(3), Some(ms(2)), Some(200), None);
        s.record_at(t0 + 1, 429, ms(1), None, None, None);
        s.record_at(t0 + 2, 503, ms(40), Some(ms(30)), Some(503), None);
        s.record_at(t0 + SLOT_SECONDS, 404, ms(1), None, None, None);
        let p = s.points_at(t0 + SLOT_SECONDS, Duration::from_secs(20));
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].t, p[0].requests, p[0].limited_429), (t0, 3, 1));
        assert_eq!(
            (p[0].errors_4xx, p[0].errors_5xx, p[0].upstream_errors),
            (1, 1, 1)
        );
        assert_eq!(p[0].p50_ms, Some(5));
        assert_eq!(p[0].p99_ms, Some(50));
        assert_eq!(p[0].upstream_p95_ms, Some(50));
        assert_eq!((p[1].requests, p[1].errors_4xx), (1, 1));
        // An hour later the slot of t0 is reused: the old counts are gone.
        let later = t0 + SLOTS as u64 * SLOT_SECONDS;
        s.record_at(later, 200, ms(1), None, None, None);
        let p = s.points_at(later, Duration::from_secs(10));
        assert_eq!((p[0].t, p[0].requests, p[0].limited_429), (later, 1, 0));
        // Periods without traffic are zeros, oldest first.
        let p = s.points_at(later + 3 * SLOT_SECONDS, Duration::from_secs(40));
        assert_eq!(
            p.iter().map(|p| p.requests).collect::<Vec<_>>(),
            vec![1, 0, 0, 0]
        );
    }

    #[test]
    fn each_principal_has_its_own_hour_and_the_least_recent_is_forgotten() {
        let s = Series::default();
        let ms = Duration::from_millis;
        let t0 = 2_000_000 * SLOT_SECONDS;
        let (ci, robot, acme): (Arc<str>, Arc<str>, Arc<str>) =
            ("key:ci".into(), "client:robot".into(), "acme".into());
        for status in [200, 200, 404, 429, 0] {
            s.record_at(t0, status, ms(1), None, None, Some((&ci, &acme)));
        }
        s.record_at(
            t0 + SLOT_SECONDS,
            503,
            ms(1),
            None,
            None,
            Some((&ci, &acme)),
        );
        s.record_at(t0, 200, ms(1), None, None, Some((&robot, &acme)));
        let (tenant, p) = s
            .client_points_at(t0 + SLOT_SECONDS, "key:ci", Duration::from_secs(30))
            .unwrap();
        assert_eq!(&*tenant, "acme");
        let counts: Vec<(u64, u64, u64)> = p
            .iter()
            .map(|p| (p.requests, p.errors, p.limited_429))
            .collect();
        assert_eq!(counts, vec![(0, 0, 0), (5, 2, 1), (1, 1, 0)]);
        assert_eq!(p[1].t, t0);
        // The whole proxy counted everyone.
        assert_eq!(s.points_at(t0, Duration::from_secs(10))[0].requests, 6);
        // Unknown, or silent for an hour: no history.
        assert!(
            s.client_points_at(t0, "key:nobody", Duration::from_secs(60))
                .is_none()
        );
        let later = t0 + SLOTS as u64 * SLOT_SECONDS + SLOT_SECONDS;
        assert!(
            s.client_points_at(later, "key:ci", Duration::from_secs(60))
                .is_none()
        );
        // Past MAX_PRINCIPALS the least recently seen ring is reused, cleared.
        for i in 0..MAX_PRINCIPALS {
            let id: Arc<str> = format!("key:k{i}").into();
            s.record_at(
                t0 + 2 * SLOT_SECONDS,
                200,
                ms(1),
                None,
                None,
                Some((&id, &acme)),
            );
        }
        assert!(
            s.client_points_at(
                t0 + 2 * SLOT_SECONDS,
                "client:robot",
                Duration::from_secs(60)
            )
            .is_none()
        );
        assert!(
            s.client_points_at(t0 + 2 * SLOT_SECONDS, "key:ci", Duration::from_secs(60))
                .is_none()
        );
        let (_, p) = s
            .client_points_at(t0 + 2 * SLOT_SECONDS, "key:k999", Duration::from_secs(30))
            .unwrap();
        assert_eq!(p.iter().map(|p| p.requests).sum::<u64>(), 1);
        assert_eq!(s.rings.lock().clients.len(), MAX_PRINCIPALS);
    }
}
