//! The budget toward OrionVM: a cap on concurrent calls to each endpoint (a semaphore per
//! endpoint) and an optional global rate (pingora-limits `Rate`, one-second windows). A call
//! past either waits at most `max_wait`, and at most `max_waiting` calls wait at once; the
//! rest are refused with 503 and `Retry-After`. Never an unbounded queue.
//!
//! Fair sharing: one tenant may hold at most `tenant_share` of an endpoint's slots at once, and
//! one principal `principal_share` (each a semaphore of its own, per endpoint, taken before the
//! endpoint's). A caller past its share waits like any other (bounded), then is refused, while
//! other tenants and principals still find room. The slot is claimed in `upstream_peer`, after
//! the request body was read whole within `server.timeouts.body_read_ms`: no slot waits on a
//! caller.
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
    /// The tenants' and the principals' shares of each endpoint.
    shares: Arc<BudgetShares>,
}

/// Semaphores of one kind of share: endpoint URL -> name -> (cap, semaphore). Entries nobody
/// holds are dropped once there are many (principals come and go).
#[derive(Default)]
struct Shares(Mutex<HashMap<String, ByName>>);

/// One endpoint's shares: name -> (cap, semaphore).
type ByName = HashMap<String, (usize, Arc<Semaphore>)>;

/// Kept shares past which the unused ones are dropped.
const SHARES_KEPT: usize = 4096;

impl Shares {
    fn semaphore(&self, url: &str, name: &str, cap: usize) -> Arc<Semaphore> {
        let mut map = self.0.lock();
        if let Some((c, s)) = map.get(url).and_then(|m| m.get(name))
            && *c == cap
        {
            return s.clone();
        }
        let total: usize = map.values().map(HashMap::len).sum();
        if total >= SHARES_KEPT {
            for m in map.values_mut() {
                m.retain(|_, (_, s)| Arc::strong_count(s) > 1);
            }
            map.retain(|_, m| !m.is_empty());
        }
        let s = Arc::new(Semaphore::new(cap));
        map.entry(url.to_string())
            .or_default()
            .insert(name.to_string(), (cap, s.clone()));
        s
    }
}

/// Who a call is for: the keys of its shares of the endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub tenant: &'a str,
    pub principal: &'a str,
}

/// What a call holds while it runs: its endpoint slot and its shares.
pub struct Permits {
    _endpoint: Option<OwnedSemaphorePermit>,
    _tenant: Option<OwnedSemaphorePermit>,
    _principal: Option<OwnedSemaphorePermit>,
}

impl Default for BudgetState {
    fn default() -> Self {
        BudgetState {
            waiting: Arc::new(AtomicUsize::new(0)),
            global_rate: Arc::new(Rate::new(Duration::from_secs(1))),
            semaphores: Mutex::new(HashMap::new()),
            shares: Arc::new(BudgetShares {
                tenants: Shares::default(),
                principals: Shares::default(),
            }),
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
    /// The tenants' and principals' caps per endpoint (`None`: no share).
    tenant_cap: Option<usize>,
    principal_cap: Option<usize>,
    shares: Arc<BudgetShares>,
}

/// The budget state's shares, shared by every build of the config.
pub struct BudgetShares {
    tenants: Shares,
    principals: Shares,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("max_concurrent", &self.max_concurrent)
            .field("max_wait", &self.max_wait)
            .field("max_waiting", &self.max_waiting)
            .field("rate", &self.rate)
            .field("tenant_cap", &self.tenant_cap)
            .field("principal_cap", &self.principal_cap)
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
    for (key, share) in [
        ("tenant_share", cfg.tenant_share),
        ("principal_share", cfg.principal_share),
    ] {
        if !(share > 0.0 && share <= 1.0) {
            errors.push(format!("{at}.{key}: must be above 0 and at most 1"));
        }
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
        let max = cfg.max_concurrent_per_endpoint;
        let cap = |share: f64| {
            // A share of 1 (or no endpoint cap) is no share at all.
            (max > 0 && share < 1.0).then(|| ((max as f64 * share).ceil() as usize).clamp(1, max))
        };
        Ok(Budget {
            max_concurrent: max,
            max_wait: Duration::from_millis(cfg.max_wait_ms),
            max_waiting: cfg.max_waiting,
            rate: cfg.requests_per_second,
            global_rate: state.global_rate.clone(),
            waiting: state.waiting.clone(),
            tenant_cap: cap(cfg.tenant_share),
            principal_cap: cap(cfg.principal_share),
            shares: state.shares.clone(),
        })
    }

    /// Claims the caller's shares of the endpoint at `url`, then room toward it; all within
    /// `max_wait`. Without a caller (the proxy's own calls) only the endpoint's room.
    pub async fn acquire_for(
        &self,
        url: &str,
        sem: Option<&Arc<Semaphore>>,
        caller: Option<Caller<'_>>,
    ) -> Result<Permits, UpstreamError> {
        let deadline = Instant::now() + self.max_wait;
        let mut principal = None;
        let mut tenant = None;
        if let Some(c) = caller {
            if let Some(cap) = self.principal_cap {
                let s = self.shares.principals.semaphore(url, c.principal, cap);
                let why = "this caller's share of OrionVM's connections stayed in use";
                principal = Some(self.wait_share(s, deadline, why).await?);
            }
            if let Some(cap) = self.tenant_cap {
                let s = self.shares.tenants.semaphore(url, c.tenant, cap);
                let why = "this tenant's share of OrionVM's connections stayed in use";
                tenant = Some(self.wait_share(s, deadline, why).await?);
            }
        }
        let endpoint = self.acquire_until(sem, deadline).await?;
        Ok(Permits {
            _endpoint: endpoint,
            _tenant: tenant,
            _principal: principal,
        })
    }

    async fn wait_share(
        &self,
        sem: Arc<Semaphore>,
        deadline: Instant,
        why: &'static str,
    ) -> Result<OwnedSemaphorePermit, UpstreamError> {
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Ok(p);
        }
        let _guard =
            WaitGuard::enter(&self.waiting, self.max_waiting).ok_or(UpstreamError::Busy {
                reason: "too many calls are waiting for OrionVM",
            })?;
        match tokio::time::timeout_at(deadline.into(), sem.acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(UpstreamError::Busy { reason: why }),
        }
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
        self.acquire_until(sem, Instant::now() + self.max_wait)
            .await
    }

    async fn acquire_until(
        &self,
        sem: Option<&Arc<Semaphore>>,
        deadline: Instant,
    ) -> Result<Option<OwnedSemaphorePermit>, UpstreamError> {
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
                ..Default::default()
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

#[cfg(test)]
mod share_tests {
    use super::*;

    fn budget(state: &BudgetState, max: usize) -> Budget {
        Budget::build(
            &BudgetConfig {
                max_concurrent_per_endpoint: max,
                max_wait_ms: 50,
                max_waiting: 100,
                tenant_share: 0.5,
                principal_share: 0.25,
                ..Default::default()
            },
            "limits.upstream",
            state,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn one_principal_or_tenant_cannot_hold_more_than_its_share() {
        let state = BudgetState::default();
        let b = budget(&state, 8);
        let url = "test://shares";
        let sem = b.semaphore_for(url, &state);
        let who = |tenant, principal| Some(Caller { tenant, principal });
        // A principal gets 2 of 8 (a quarter), then waits and is refused.
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(
                b.acquire_for(url, sem.as_ref(), who("a", "a1"))
                    .await
                    .unwrap(),
            );
        }
        assert!(
            b.acquire_for(url, sem.as_ref(), who("a", "a1"))
                .await
                .is_err()
        );
        // Its tenant gets 4 of 8 (a half) over all its principals.
        for p in ["a2", "a2"] {
            held.push(b.acquire_for(url, sem.as_ref(), who("a", p)).await.unwrap());
        }
        assert!(
            b.acquire_for(url, sem.as_ref(), who("a", "a3"))
                .await
                .is_err()
        );
        // Another tenant still finds room; the proxy's own calls only need the endpoint's.
        held.push(
            b.acquire_for(url, sem.as_ref(), who("b", "b1"))
                .await
                .unwrap(),
        );
        held.push(b.acquire_for(url, sem.as_ref(), None).await.unwrap());
        assert_eq!(sem.as_ref().unwrap().available_permits(), 2);
        drop(held);
        assert_eq!(sem.as_ref().unwrap().available_permits(), 8);
        assert!(
            b.acquire_for(url, sem.as_ref(), who("a", "a1"))
                .await
                .is_ok()
        );
    }

    #[test]
    fn shares_round_up_and_one_means_none() {
        let state = BudgetState::default();
        let b = budget(&state, 2);
        assert_eq!((b.tenant_cap, b.principal_cap), (Some(1), Some(1)));
        let whole = Budget::build(
            &BudgetConfig {
                tenant_share: 1.0,
                principal_share: 1.0,
                ..Default::default()
            },
            "limits.upstream",
            &state,
        )
        .unwrap();
        assert_eq!((whole.tenant_cap, whole.principal_cap), (None, None));
        let bad = BudgetConfig {
            tenant_share: 0.0,
            ..Default::default()
        };
        assert!(validate(&bad, "limits.upstream").is_err());
    }
}
