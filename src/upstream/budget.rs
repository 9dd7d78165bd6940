//! The budget toward OrionVM: a cap on concurrent calls to each endpoint (a semaphore per
//! endpoint) and an optional global rate (pingora-limits `Rate`, one-second windows). A call
//! past either waits at most `max_wait`, and at most `max_waiting` calls wait at once; the
//! rest are refused with 503 and `Retry-After`. Never an unbounded queue.
//!
//! What outlives a config (the semaphores, the waiting count, the global rate) is in
//! [`BudgetState`], part of [`super::UpstreamState`].

use super::UpstreamError;
use crate::config::limits::BudgetConfig;
use parking_lot::Mutex;
use pingora_limits::rate::Rate;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget's part of the process state, kept across reloads.
pub struct BudgetState {
    /// Calls waiting for room right now, over all endpoints.
    waiting: Arc<AtomicUsize>,
    /// The one global rate counter.
    global_rate: Arc<Rate>,
    /// Per-endpoint semaphores by URL, with the cap they were made for.
    semaphores: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
}

impl Default for BudgetState {
    fn default() -> Self {
        BudgetState {
            waiting: Arc::new(AtomicUsize::new(0)),
            global_rate: Arc::new(Rate::new(Duration::from_secs(1))),
            semaphores: Mutex::new(HashMap::new()),
        }
    }
}

impl BudgetState {
    /// The semaphore kept for the endpoint at `url`, if it was made for the cap `cap`.
    pub(super) fn semaphore(&self, url: &str, cap: usize) -> Option<Arc<Semaphore>> {
        self.semaphores
            .lock()
            .get(url)
            .filter(|(c, _)| *c == cap)
            .map(|(_, s)| s.clone())
    }

    /// Keeps exactly these semaphores (by URL, with their cap): the commit of a new config.
    pub(super) fn keep(&self, semaphores: HashMap<String, (usize, Arc<Semaphore>)>) {
        *self.semaphores.lock() = semaphores;
    }

    /// Calls waiting for room right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub(super) fn semaphores_len(&self) -> usize {
        self.semaphores.lock().len()
    }
}

pub struct Budget {
    pub max_concurrent: usize,
    pub max_wait: Duration,
    max_waiting: usize,
    rate: Option<u64>,
    global_rate: Arc<Rate>,
    waiting: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("max_concurrent", &self.max_concurrent)
            .field("max_wait", &self.max_wait)
            .field("max_waiting", &self.max_waiting)
            .field("rate", &self.rate)
            .finish()
    }
}

struct WaitGuard<'a>(&'a AtomicUsize);
impl<'a> WaitGuard<'a> {
    fn enter(waiting: &'a AtomicUsize, max: usize) -> Option<WaitGuard<'a>> {
        if waiting.fetch_add(1, Ordering::AcqRel) >= max {
            waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(WaitGuard(waiting))
    }
}
impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Checks `limits.upstream` (reported by the limits section, at `at`).
pub fn validate(cfg: &BudgetConfig, at: &str) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    if cfg.max_wait_ms > 60_000 {
        errors.push(format!("{at}.max_wait_ms: must be at most 60000"));
    }
    if cfg.requests_per_second == Some(0) {
        errors.push(format!(
            "{at}.requests_per_second: must be at least 1 (or null for no cap)"
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

impl Budget {
    /// The budget of a config, sharing the state's waiting count and global rate.
    pub fn build(cfg: &BudgetConfig, at: &str, state: &BudgetState) -> Result<Budget, Vec<String>> {
        validate(cfg, at)?;
        Ok(Budget {
            max_concurrent: cfg.max_concurrent_per_endpoint,
            max_wait: Duration::from_millis(cfg.max_wait_ms),
            max_waiting: cfg.max_waiting,
            rate: cfg.requests_per_second,
            global_rate: state.global_rate.clone(),
            waiting: state.waiting.clone(),
        })
    }

    /// The semaphore of the endpoint at `url` (None: no cap): the state's when its cap is the
    /// same, else a new one (registered by [`super::Upstreams::commit`]).
    pub fn semaphore_for(&self, url: &str, state: &BudgetState) -> Option<Arc<Semaphore>> {
        if self.max_concurrent == 0 {
            return None;
        }
        Some(
            state
                .semaphore(url, self.max_concurrent)
                .unwrap_or_else(|| Arc::new(Semaphore::new(self.max_concurrent))),
        )
    }

    /// Waits (bounded) for room toward one endpoint.
    pub async fn acquire(
        &self,
        sem: Option<&Arc<Semaphore>>,
    ) -> Result<Option<OwnedSemaphorePermit>, UpstreamError> {
        let deadline = Instant::now() + self.max_wait;
        if let Some(limit) = self.rate {
            let rate = &*self.global_rate;
            let mut guard = None;
            loop {
                let n = rate.observe(&(), 1);
                if n >= 0 && n as u64 <= limit {
                    break;
                }
                rate.observe(&(), -1);
                if guard.is_none() {
                    guard = Some(WaitGuard::enter(&self.waiting, self.max_waiting).ok_or(
                        UpstreamError::Busy {
                            reason: "too many calls are waiting for OrionVM",
                        },
                    )?);
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(UpstreamError::Busy {
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
        let _guard =
            WaitGuard::enter(&self.waiting, self.max_waiting).ok_or(UpstreamError::Busy {
                reason: "too many calls are waiting for OrionVM",
            })?;
        match tokio::time::timeout_at(deadline.into(), sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => Err(UpstreamError::Busy {
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
        let state = BudgetState::default();
        let b = Budget::build(
            &BudgetConfig {
                max_concurrent_per_endpoint: 1,
                requests_per_second: None,
                max_wait_ms: 50,
                max_waiting: 10,
            },
            "limits.upstream",
            &state,
        )
        .unwrap();
        let sem = b.semaphore_for("test://budget-a", &state);
        let first = b.acquire(sem.as_ref()).await.unwrap();
        assert!(first.is_some());
        let started = Instant::now();
        assert!(b.acquire(sem.as_ref()).await.is_err());
        assert!(started.elapsed() >= Duration::from_millis(45));
        drop(first);
        assert!(b.acquire(sem.as_ref()).await.unwrap().is_some());
    }
}
