//! Per-endpoint counters for `GET /admin/endpoints/stats`: requests, errors, timeouts and the
//! latencies of the last calls (lock-free: atomics and a ring of recent latencies); and the last
//! hour in ten-second slots (calls, failures, mean latency) for the console's chart of each
//! endpoint (one short lock per call). Kept in [`super::UpstreamState`] so that a reload does
//! not reset them.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

const RING: usize = 512;
/// Seconds per slot of an endpoint's hour.
pub const SLOT_SECONDS: u64 = 10;
/// Slots of an endpoint's hour.
pub const SLOTS: usize = 360;

/// One ten-second period of calls to an endpoint.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    period: u32,
    calls: u32,
    failures: u32,
    /// Latencies of the calls that were answered, summed, and how many.
    latency_us: u64,
    timed: u32,
}

/// One period of an endpoint's hour, as the console reads it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Point {
    /// Start of the period, unix seconds.
    pub t: u64,
    pub calls: u64,
    /// Calls that failed as the breaker counts failures: no answer, or a 5xx.
    pub failures: u64,
    /// Mean latency of the answered calls, in milliseconds.
    pub mean_ms: Option<f64>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug)]
pub struct EndpointStats {
    requests: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    server_errors: AtomicU64,
    next: AtomicUsize,
    /// Latencies of the last calls in microseconds (0: empty slot).
    ring: Box<[AtomicU32]>,
    /// The last hour, slot by slot.
    hour: Mutex<Box<[Slot]>>,
}

impl Default for EndpointStats {
    fn default() -> Self {
        EndpointStats {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            ring: (0..RING).map(|_| AtomicU32::new(0)).collect(),
            hour: Mutex::new(vec![Slot::default(); SLOTS].into_boxed_slice()),
        }
    }
}

/// How one call to an endpoint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// OrionVM answered with this status.
    Status(u16),
    Connect,
    Timeout,
    Reset,
}

impl Outcome {
    /// What the breaker counts as a failure: no answer, or a 5xx.
    pub fn is_failure(&self) -> bool {
        !matches!(self, Outcome::Status(s) if *s < 500)
    }
}

impl EndpointStats {
    pub fn record(&self, outcome: Outcome, elapsed: Option<Duration>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Status(s) if s >= 500 => {
                self.server_errors.fetch_add(1, Ordering::Relaxed);
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Status(_) => {}
            Outcome::Timeout => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Connect | Outcome::Reset => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(d) = elapsed {
            let us = d.as_micros().clamp(1, u32::MAX as u128) as u32;
            let i = self.next.fetch_add(1, Ordering::Relaxed) % RING;
            self.ring[i].store(us, Ordering::Relaxed);
        }
        self.record_hour(now_secs(), outcome.is_failure(), elapsed);
    }

    fn record_hour(&self, now: u64, failed: bool, elapsed: Option<Duration>) {
        let period = now / SLOT_SECONDS;
        let mut hour = self.hour.lock();
        let Some(s) = hour.get_mut((period % SLOTS as u64) as usize) else {
            return;
        };
        // Ten-second periods since 1970 fit in 32 bits for another 1,300 years.
        if u64::from(s.period) != period {
            *s = Slot {
                period: period as u32,
                ..Slot::default()
            };
        }
        s.calls = s.calls.saturating_add(1);
        if failed {
            s.failures = s.failures.saturating_add(1);
        }
        if let Some(d) = elapsed {
            s.latency_us = s.latency_us.saturating_add(d.as_micros() as u64);
            s.timed = s.timed.saturating_add(1);
        }
    }

    /// The periods of the last `window` (at most an hour), oldest first, empty ones included.
    pub fn hour(&self, window: Duration) -> Vec<Point> {
        self.hour_at(now_secs(), window)
    }

    fn hour_at(&self, now: u64, window: Duration) -> Vec<Point> {
        let current = now / SLOT_SECONDS;
        let n = (window.as_secs() / SLOT_SECONDS).clamp(1, SLOTS as u64);
        let hour = self.hour.lock();
        (0..n)
            .rev()
            .filter_map(|back| current.checked_sub(back))
            .map(|period| {
                let t = period * SLOT_SECONDS;
                match hour.get((period % SLOTS as u64) as usize) {
                    Some(s) if u64::from(s.period) == period => Point {
                        t,
                        calls: s.calls.into(),
                        failures: s.failures.into(),
                        mean_ms: (s.timed > 0)
                            .then(|| s.latency_us as f64 / f64::from(s.timed) / 1000.0),
                    },
                    _ => Point {
                        t,
                        ..Point::default()
                    },
                }
            })
            .collect()
    }

    pub fn snapshot(&self) -> serde_json::Value {
        let mut lat: Vec<u32> = self
            .ring
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|v| *v > 0)
            .collect();
        lat.sort_unstable();
        let pct = |p: f64| -> serde_json::Value {
            if lat.is_empty() {
                return serde_json::Value::Null;
            }
            let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
            serde_json::json!((lat[i.min(lat.len() - 1)] as f64) / 1000.0)
        };
        serde_json::json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
            "server_errors": self.server_errors.load(Ordering::Relaxed),
            "timeouts": self.timeouts.load(Ordering::Relaxed),
            "latency_ms": {"samples": lat.len(), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)},
        })
    }
}

/// Unix milliseconds as the access log writes times (`2025-01-02T03:04:05.678Z`), null for 0.
fn at(ms: u64) -> serde_json::Value {
    if ms == 0 {
        return serde_json::Value::Null;
    }
    serde_json::Value::String(crate::clock::timestamp(
        std::time::UNIX_EPOCH + Duration::from_millis(ms),
    ))
}

/// `GET /admin/endpoints/stats`: every OrionVM endpoint of every account, with its health,
/// breaker state and counters. No credentials, only the kind of authentication. `methods` are
/// the methods of the mirror routes; `config_version` the version of the config in force.
pub fn report(
    upstreams: &super::Upstreams,
    routes: &crate::routes::RouteTable,
    config_version: &str,
) -> serde_json::Value {
    let mut methods: Vec<&str> = routes
        .routes()
        .iter()
        .filter(|r| r.kind == crate::config::model::RouteKind::Mirror)
        .map(|r| r.method.as_str())
        .collect();
    methods.sort_unstable();
    methods.dedup();
    let mut names: Vec<&String> = upstreams.accounts.keys().collect();
    names.sort();
    let mut endpoints = Vec::new();
    for name in names {
        let Some(account) = upstreams.accounts.get(name) else {
            continue;
        };
        for (i, e) in account.endpoints.iter().enumerate() {
            let health = if !e.health.is_checked() {
                "unknown"
            } else if e.health.is_up() {
                "up"
            } else {
                "down"
            };
            let breaker = match &account.breaker {
                Some(s) => e.breaker.reported(s).as_str(),
                None => "disabled",
            };
            let changed = e.health.changed_at_ms().max(e.breaker.changed_at_ms());
            let in_use = e
                .budget
                .as_ref()
                .zip(account.budget.as_ref())
                .map(|(s, b)| b.max_concurrent.saturating_sub(s.available_permits()));
            endpoints.push(serde_json::json!({
                "account": name,
                "index": i,
                "name": &*e.name,
                "url": e.url,
                "version": "v1",
                "methods": methods,
                "auth": account.credentials.mode(),
                "enabled": e.enabled,
                "health": health,
                "health_changed_at": at(e.health.changed_at_ms()),
                "breaker": breaker,
                "breaker_changed_at": at(e.breaker.changed_at_ms()),
                "breaker_opened_total": e.breaker.opened_total(),
                "consecutive_failures": e.breaker.consecutive_failures(),
                "in_flight": in_use,
                "max_concurrent": account.budget.as_ref().map(|b| b.max_concurrent).filter(|c| *c > 0),
                "counters": e.stats.snapshot(),
                "last_change": at(changed),
            }));
        }
    }
    serde_json::json!({"config_version": config_version, "endpoints": endpoints})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentiles() {
        let s = EndpointStats::default();
        for ms in 1..=100u64 {
            s.record(Outcome::Status(200), Some(Duration::from_millis(ms)));
        }
        s.record(Outcome::Status(503), None);
        s.record(Outcome::Timeout, None);
        let v = s.snapshot();
        assert_eq!(v["requests"], 102);
        assert_eq!(v["errors"], 2);
        assert_eq!(v["timeouts"], 1);
        assert_eq!(v["latency_ms"]["samples"], 100);
        assert_eq!(v["latency_ms"]["p50"], 51.0);
        assert_eq!(v["latency_ms"]["p99"], 99.0);
        assert!(Outcome::Status(502).is_failure());
        assert!(!Outcome::Status(404).is_failure());
    }

    #[test]
    fn the_hour_is_kept_in_ten_second_slots() {
        let s = EndpointStats::default();
        let t0 = 3_000_000 * SLOT_SECONDS;
        let ms = Duration::from_millis;
        s.record_hour(t0, false, Some(ms(10)));
        s.record_hour(t0 + 1, false, Some(ms(30)));
        s.record_hour(t0 + 2, true, None);
        s.record_hour(t0 + SLOT_SECONDS, true, Some(ms(5)));
        let p = s.hour_at(t0 + SLOT_SECONDS, Duration::from_secs(30));
        let got: Vec<(u64, u64, Option<f64>)> =
            p.iter().map(|p| (p.calls, p.failures, p.mean_ms)).collect();
        assert_eq!(
            got,
            vec![(0, 0, None), (3, 1, Some(20.0)), (1, 1, Some(5.0))]
        );
        assert_eq!(p[1].t, t0);
        // An hour later the slot is reused.
        let later = t0 + SLOTS as u64 * SLOT_SECONDS;
        s.record_hour(later, false, None);
        assert_eq!(s.hour_at(later, Duration::from_secs(10))[0].calls, 1);
        assert_eq!(s.hour(Duration::from_secs(3600)).len(), SLOTS);
    }

    #[test]
    fn times_are_written_like_the_access_log() {
        assert_eq!(at(0), serde_json::Value::Null);
        assert_eq!(at(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
