//! The circuit breaker of one OrionVM endpoint: closed, open, half-open.
//!
//! Closed counts consecutive failures; at `failure_threshold` it opens. Open refuses every call
//! until `reset_timeout` has passed, then lets up to `half_open_probes` trial calls through;
//! that many successes close it, one failure opens it again. The breaker is kept in
//! [`super::UpstreamState`] (keyed by endpoint URL) so that a reload keeps it. The closed path
//! is two atomic loads; the lock is taken only on failures and transitions, never across an
//! await.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;
/// State changes kept per breaker for the admin report and the console.
pub const TRANSITIONS_KEPT: usize = 10;

fn name_of(s: u8) -> &'static str {
    match s {
        CLOSED => "closed",
        OPEN => "open",
        _ => "half_open",
    }
}

/// One state change of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: &'static str,
    pub to: &'static str,
    /// Unix milliseconds.
    pub at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
struct Inner {
    opened_at: Option<Instant>,
    probes_in_flight: u32,
    probe_successes: u32,
}

/// The breaker's settings (`limits.breaker`), passed in on every use so that a rejected
/// config never touches the kept state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub threshold: u32,
    pub reset_timeout: Duration,
    pub probes: u32,
}

impl Settings {
    /// The settings of `limits.breaker` (validated by the limits section; clamped here so that
    /// nothing can divide by zero or overflow).
    pub fn from_config(c: &crate::config::limits::BreakerConfig) -> Settings {
        Settings {
            threshold: c.failure_threshold.max(1),
            reset_timeout: Duration::from_secs_f64(c.reset_timeout_seconds.clamp(0.001, 3600.0)),
            probes: c.half_open_probes.max(1),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            threshold: 5,
            reset_timeout: Duration::from_secs(10),
            probes: 1,
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    /// Unix milliseconds of the last state change.
    changed_at_ms: AtomicU64,
    opened_total: AtomicU64,
    inner: Mutex<Inner>,
    /// The last [`TRANSITIONS_KEPT`] state changes, oldest first (its own lock, taken only at a
    /// change, after `inner`).
    transitions: Mutex<VecDeque<Transition>>,
    /// The endpoint's name, for logs and metrics.
    label: String,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            changed_at_ms: AtomicU64::new(0),
            opened_total: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                opened_at: None,
                probes_in_flight: 0,
                probe_successes: 0,
            }),
            transitions: Mutex::new(VecDeque::with_capacity(TRANSITIONS_KEPT)),
            label: String::new(),
        }
    }
}

/// Permission for one call. A probe that ends without an outcome gives its slot back.
#[derive(Debug)]
pub struct Ticket {
    breaker: Arc<Breaker>,
    settings: Settings,
    probe: bool,
    done: bool,
}

impl Ticket {
    pub fn is_probe(&self) -> bool {
        self.probe
    }
    /// Reports the call's outcome to the breaker.
    pub fn finish(mut self, success: bool) {
        self.done = true;
        self.breaker.record(success, self.probe, &self.settings);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.probe && !self.done {
            let mut inner = self.breaker.inner.lock();
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Breaker {
    /// A closed breaker for the endpoint named `label` in logs and metrics.
    pub fn new(label: &str) -> Breaker {
        Breaker {
            label: label.to_string(),
            ..Default::default()
        }
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            CLOSED => State::Closed,
            OPEN => State::Open,
            _ => State::HalfOpen,
        }
    }

    /// The state as a report shows it: an open breaker past its reset timeout is half-open
    /// (it turns so for real at the next call).
    pub fn reported(&self, s: &Settings) -> State {
        match self.state() {
            State::Open if self.available(s) => State::HalfOpen,
            other => other,
        }
    }

    pub fn changed_at_ms(&self) -> u64 {
        self.changed_at_ms.load(Ordering::Relaxed)
    }

    pub fn opened_total(&self) -> u64 {
        self.opened_total.load(Ordering::Relaxed)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The last state changes, newest first.
    pub fn transitions(&self) -> Vec<Transition> {
        self.transitions.lock().iter().rev().copied().collect()
    }

    fn set_state(&self, s: u8) {
        let from = self.state.swap(s, Ordering::AcqRel);
        let at_ms = now_ms();
        self.changed_at_ms.store(at_ms, Ordering::Relaxed);
        let to = name_of(s);
        {
            let mut kept = self.transitions.lock();
            if kept.len() >= TRANSITIONS_KEPT {
                kept.pop_front();
            }
            kept.push_back(Transition {
                from: name_of(from),
                to,
                at_ms,
            });
        }
        crate::metrics::breaker_transition(&self.label, to);
    }

    /// Whether a call could be let through now (no side effect).
    pub fn available(&self, s: &Settings) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => {
                let inner = self.inner.lock();
                inner
                    .opened_at
                    .is_none_or(|t| t.elapsed() >= s.reset_timeout)
            }
            _ => {
                let inner = self.inner.lock();
                inner.probes_in_flight < s.probes
            }
        }
    }

    /// Seconds until an open breaker lets a probe through (at least 1).
    pub fn retry_after(&self, s: &Settings) -> u64 {
        let inner = self.inner.lock();
        let left = inner
            .opened_at
            .map(|t| s.reset_timeout.saturating_sub(t.elapsed()))
            .unwrap_or_default();
        left.as_secs_f64().ceil().max(1.0) as u64
    }

    /// Lets one call through, or not. Past the reset timeout an open breaker turns half-open.
    pub fn try_acquire(self: &Arc<Self>, s: &Settings) -> Option<Ticket> {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Some(Ticket {
                breaker: self.clone(),
                settings: *s,
                probe: false,
                done: false,
            });
        }
        let mut inner = self.inner.lock();
        match self.state.load(Ordering::Acquire) {
            CLOSED => {}
            OPEN => {
                if inner
                    .opened_at
                    .is_some_and(|t| t.elapsed() < s.reset_timeout)
                {
                    return None;
                }
                inner.probes_in_flight = 0;
                inner.probe_successes = 0;
                self.set_state(HALF_OPEN);
                log::info!("circuit breaker of {} half-open: probing", self.label);
            }
            _ => {}
        }
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Some(Ticket {
                breaker: self.clone(),
                settings: *s,
                probe: false,
                done: false,
            });
        }
        if inner.probes_in_flight >= s.probes {
            return None;
        }
        inner.probes_in_flight += 1;
        Some(Ticket {
            breaker: self.clone(),
            settings: *s,
            probe: true,
            done: false,
        })
    }

    fn record(&self, success: bool, probe: bool, s: &Settings) {
        let state = self.state.load(Ordering::Acquire);
        if state == CLOSED && !probe {
            if success {
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                }
                return;
            }
            let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= s.threshold {
                let mut inner = self.inner.lock();
                if self.state.load(Ordering::Acquire) == CLOSED {
                    self.open(&mut inner);
                }
            }
            return;
        }
        if !probe {
            // A call let through before the breaker opened: its outcome is old news.
            return;
        }
        let mut inner = self.inner.lock();
        inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        if self.state.load(Ordering::Acquire) != HALF_OPEN {
            return;
        }
        if success {
            inner.probe_successes += 1;
            if inner.probe_successes >= s.probes {
                self.failures.store(0, Ordering::Relaxed);
                inner.opened_at = None;
                self.set_state(CLOSED);
                log::info!("circuit breaker of {} closed", self.label);
            }
        } else {
            self.open(&mut inner);
        }
    }

    fn open(&self, inner: &mut Inner) {
        inner.opened_at = Some(Instant::now());
        inner.probes_in_flight = 0;
        inner.probe_successes = 0;
        self.opened_total.fetch_add(1, Ordering::Relaxed);
        self.set_state(OPEN);
        log::warn!("circuit breaker of {} open", self.label);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_probes_and_closes() {
        let b = Arc::new(Breaker::default());
        let s = &Settings {
            threshold: 3,
            // Long enough that a loaded machine's stall can't reopen it before the asserts
            // that it is open.
            reset_timeout: Duration::from_millis(1000),
            probes: 2,
        };
        for _ in 0..2 {
            b.try_acquire(s).unwrap().finish(false);
        }
        assert_eq!(b.state(), State::Closed);
        b.try_acquire(s).unwrap().finish(false);
        assert_eq!(b.state(), State::Open);
        assert!(b.try_acquire(s).is_none());
        assert!(!b.available(s));
        std::thread::sleep(Duration::from_millis(1100));
        assert!(b.available(s));
        let p1 = b.try_acquire(s).unwrap();
        assert!(p1.is_probe());
        assert_eq!(b.state(), State::HalfOpen);
        let p2 = b.try_acquire(s).unwrap();
        assert!(b.try_acquire(s).is_none(), "only two probes");
        p1.finish(true);
        assert_eq!(b.state(), State::HalfOpen);
        p2.finish(true);
        assert_eq!(b.state(), State::Closed);
        let moves: Vec<(&str, &str)> = b.transitions().iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(
            moves,
            vec![
                ("half_open", "closed"),
                ("open", "half_open"),
                ("closed", "open")
            ]
        );
        assert!(b.transitions()[0].at_ms >= b.transitions()[2].at_ms);
    }

    #[test]
    fn a_failed_probe_reopens_and_a_dropped_probe_frees_its_slot() {
        let b = Arc::new(Breaker::default());
        let s = &Settings {
            threshold: 1,
            reset_timeout: Duration::from_millis(10),
            probes: 1,
        };
        b.try_acquire(s).unwrap().finish(false);
        std::thread::sleep(Duration::from_millis(15));
        drop(b.try_acquire(s).unwrap());
        let p = b.try_acquire(s).expect("slot given back");
        p.finish(false);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.opened_total(), 2);
        // Only the last ones are kept.
        for _ in 0..TRANSITIONS_KEPT {
            std::thread::sleep(Duration::from_millis(15));
            b.try_acquire(s).unwrap().finish(false);
        }
        let t = b.transitions();
        assert_eq!(t.len(), TRANSITIONS_KEPT);
        assert_eq!((t[0].from, t[0].to), ("half_open", "open"));
    }

    #[test]
    fn success_resets_the_count() {
        let b = Arc::new(Breaker::default());
        let s = &Settings {
            threshold: 2,
            reset_timeout: Duration::from_secs(1),
            probes: 1,
        };
        b.try_acquire(s).unwrap().finish(false);
        b.try_acquire(s).unwrap().finish(true);
        b.try_acquire(s).unwrap().finish(false);
        assert_eq!(b.state(), State::Closed);
    }
}
