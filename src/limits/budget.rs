//! The budget toward OrionVM: a cap on concurrent calls to each endpoint (a semaphore per
//! endpoint) and an optional global rate (pingora-limits `Rate`, one-second windows). A call
//! past either waits at most `max_wait`, and at most `max_waiting` calls wait at once; the
//! rest are refused with 503 and `Retry-After`. Never an unbounded queue.

use super::LimitsError;
use crate::config::limits::BudgetConfig;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use pingora_limits::rate::Rate;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Calls waiting for room right now, over all endpoints.
static WAITING: AtomicUsize = AtomicUsize::new(0);
/// One global rate counter, kept across reloads.
static GLOBAL_RATE: Lazy<Arc<Rate>> = Lazy::new(|| Arc::new(Rate::new(Duration::from_secs(1))));
/// Per-endpoint semaphores by URL, kept across reloads while the cap stays the same.
type Semaphores = Mutex<HashMap<String, (usize, Arc<Semaphore>)>>;
static SEMAPHORES: Lazy<Semaphores> = Lazy::new(Default::default);

#[derive(Debug)]
pub struct Budget {
    pub max_concurrent: usize,
    pub max_wait: Duration,
    max_waiting: usize,
    rate: Option<u64>,
}

struct WaitGuard;
impl WaitGuard {
    fn enter(max: usize) -> Option<WaitGuard> {
        if WAITING.fetch_add(1, Ordering::AcqRel) >= max {
            WAITING.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(WaitGuard)
    }
}
impl Drop for WaitGuard {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Budget {
    pub fn build(cfg: &BudgetConfig, at: &str) -> Result<Budget, Vec<String>> {
        let mut errors = Vec::new();
        if cfg.max_wait_ms > 60_000 {
            errors.push(format!("{at}.max_wait_ms: must be at most 60000"));
        }
        if cfg.requests_per_second == Some(0) {
            errors.push(format!(
                "{at}.requests_per_second: must be at least 1 (or null for no cap)"
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Budget {
            max_concurrent: cfg.max_concurrent_per_endpoint,
            max_wait: Duration::from_millis(cfg.max_wait_ms),
            max_waiting: cfg.max_waiting,
            rate: cfg.requests_per_second,
        })
    }

    /// The semaphore of the endpoint at `url` (None: no cap).
    pub fn semaphore_for(&self, url: &str) -> Option<Arc<Semaphore>> {
        if self.max_concurrent == 0 {
            return None;
        }
        let mut map = SEMAPHORES.lock();
        let entry = map.entry(url.to_string()).or_insert_with(|| {
            (
                self.max_concurrent,
                Arc::new(Semaphore::new(self.max_concurrent)),
            )
        });
        if entry.0 != self.max_concurrent {
            *entry = (
                self.max_concurrent,
                Arc::new(Semaphore::new(self.max_concurrent)),
            );
        }
        Some(entry.1.clone())
    }

    /// Waits (bounded) for room toward one endpoint.
    pub async fn acquire(
        &self,
        sem: Option<&Arc<Semaphore>>,
    ) -> Result<Option<OwnedSemaphorePermit>, LimitsError> {
        let deadline = Instant::now() + self.max_wait;
        if let Some(limit) = self.rate {
            let rate = &*GLOBAL_RATE;
            let mut guard = None;
            loop {
                let n = rate.observe(&(), 1);
                if n >= 0 && n as u64 <= limit {
                    break;
                }
                rate.observe(&(), -1);
                if guard.is_none() {
                    guard = Some(WaitGuard::enter(self.max_waiting).ok_or(LimitsError::Busy {
                        reason: "too many calls are waiting for OrionVM",
                    })?);
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(LimitsError::Busy {
                        reason: "the request rate toward OrionVM is at its cap",
                    });
                }
                let frac = rate.rate_with(&(), |c| c.current_interval_fraction);
                let left = Duration::from_secs_f64((1.0 - frac).clamp(0.005, 1.0));
                tokio::time::sleep(left.min(deadline - now)).await;
            }
        }
        let Some(sem) = sem else {
            return Ok(None);
        };
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        let _guard = WaitGuard::enter(self.max_waiting).ok_or(LimitsError::Busy {
            reason: "too many calls are waiting for OrionVM",
        })?;
        match tokio::time::timeout_at(deadline.into(), sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => Err(LimitsError::Busy {
                reason: "every connection to OrionVM stayed busy",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_excess_waits_then_is_refused() {
        let b = Budget::build(
            &BudgetConfig {
                max_concurrent_per_endpoint: 1,
                requests_per_second: None,
                max_wait_ms: 50,
                max_waiting: 10,
            },
            "limits.upstream",
        )
        .unwrap();
        let sem = b.semaphore_for("test://budget-a");
        let first = b.acquire(sem.as_ref()).await.unwrap();
        assert!(first.is_some());
        let started = Instant::now();
        assert!(b.acquire(sem.as_ref()).await.is_err());
        assert!(started.elapsed() >= Duration::from_millis(45));
        drop(first);
        assert!(b.acquire(sem.as_ref()).await.unwrap().is_some());
    }
}
