//! Choosing an OrionVM endpoint: pingora-load-balancing (round robin over the account's
//! endpoints) with active HTTP health checks, and the circuit breaker of each endpoint as the
//! passive check (connect failures, timeouts, resets and 5xx open it).
//!
//! The health checks are driven by [`super::Prober`]: every account's pool is checked on its
//! own interval. A pool is kept across reloads while its account's endpoints and health-check
//! settings stay the same, so health survives a reload.

use super::endpoint::Endpoint;
use async_trait::async_trait;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, LoadBalancer};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One HTTP check per endpoint address (each with its own Host, SNI and CA).
struct EndpointChecks {
    checks: Vec<(SocketAddr, HttpHealthCheck)>,
    healthy: usize,
    unhealthy: usize,
}

#[async_trait]
impl HealthCheck for EndpointChecks {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let Some((_, check)) = self
            .checks
            .iter()
            .find(|(a, _)| target.addr.as_inet() == Some(a))
        else {
            return pingora::Error::e_explain(
                pingora::ErrorType::InternalError,
                "no check for this backend",
            );
        };
        check.check(target).await
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.healthy
        } else {
            self.unhealthy
        }
    }
}

/// The endpoints of one account as a pingora load balancer.
pub use crate::config::health::HealthCheckConfig;

pub struct Pool {
    lb: LoadBalancer<RoundRobin>,
    addrs: Vec<SocketAddr>,
    backends: Vec<Backend>,
    interval: Duration,
    active: bool,
    next_due: parking_lot::Mutex<Instant>,
}

impl Pool {
    pub fn build(endpoints: &[Endpoint], hc: &HealthCheckConfig) -> Result<Pool, String> {
        let addrs: Vec<SocketAddr> = endpoints.iter().map(|e| e.addr).collect();
        for (i, a) in addrs.iter().enumerate() {
            if let Some(j) = addrs[..i].iter().position(|b| b == a) {
                return Err(format!(
                    "endpoints[{i}].url: same address ({a}) as endpoints[{j}]"
                ));
            }
        }
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(addrs.iter().copied())
            .map_err(|e| format!("endpoints: {e}"))?;
        let timeout = Duration::from_millis(hc.timeout_ms);
        let mut checks = Vec::new();
        for e in endpoints {
            let mut check = HttpHealthCheck::new(&e.authority, e.tls);
            let path = format!("{}{}", e.base_path, hc.path);
            let mut req = pingora::http::RequestHeader::build("GET", path.as_bytes(), None)
                .map_err(|err| format!("health_check.path: {err}"))?;
            req.insert_header("host", e.authority.as_str())
                .map_err(|err| format!("health_check: {err}"))?;
            req.insert_header("user-agent", "orion-proxy-health-check")
                .map_err(|err| format!("health_check: {err}"))?;
            check.req = req;
            check.peer_template.sni = if e.tls { e.sni.clone() } else { String::new() };
            check.peer_template.options.connection_timeout = Some(timeout);
            check.peer_template.options.read_timeout = Some(timeout);
            check.peer_template.options.write_timeout = Some(timeout);
            if let Some(ca) = &e.ca {
                check.peer_template.options.ca = Some(ca.clone());
            }
            check.consecutive_success = hc.healthy_threshold;
            check.consecutive_failure = hc.unhealthy_threshold;
            check.validator = Some(Box::new(|resp| {
                if resp.status.as_u16() < 500 {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::CustomCode("unhealthy", resp.status.as_u16()),
                        "health check answered 5xx",
                    )
                }
            }));
            checks.push((e.addr, check));
        }
        lb.set_health_check(Box::new(EndpointChecks {
            checks,
            healthy: hc.healthy_threshold,
            unhealthy: hc.unhealthy_threshold,
        }));
        let backends = addrs
            .iter()
            .map(|a| Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(*a),
                weight: 1,
                ext: Default::default(),
            })
            .collect();
        Ok(Pool {
            lb,
            addrs,
            backends,
            interval: Duration::from_millis(hc.interval_ms),
            active: hc.enabled,
            next_due: parking_lot::Mutex::new(Instant::now()),
        })
    }

    /// Whether this pool was built for these endpoint addresses.
    pub fn serves(&self, endpoints: &[Endpoint]) -> bool {
        self.addrs.len() == endpoints.len()
            && self.addrs.iter().zip(endpoints).all(|(a, e)| *a == e.addr)
    }

    fn index_of(&self, b: &Backend) -> Option<usize> {
        let a = b.addr.as_inet()?;
        self.addrs.iter().position(|x| x == a)
    }

    /// Whether the active check last saw endpoint `i` healthy.
    pub fn healthy(&self, i: usize) -> bool {
        self.backends
            .get(i)
            .is_some_and(|b| self.lb.backends().ready(b))
    }

    /// Round robin over the endpoints that `accept` takes (given their index and health).
    pub fn select(&self, accept: impl Fn(usize, bool) -> bool) -> Option<usize> {
        let n = self.addrs.len();
        let b = self.lb.select_with(b"", n * 2 + 1, |b, healthy| {
            self.index_of(b).is_some_and(|i| accept(i, healthy))
        })?;
        self.index_of(&b)
    }

    /// Runs one pass of active checks when due; returns whether it ran.
    pub async fn check_if_due(&self, endpoints: &[Endpoint]) -> bool {
        if !self.active {
            // Without active checks an endpoint counts as up (the breaker still watches it).
            for e in endpoints {
                if !e.health.is_checked() {
                    e.health.set(true);
                }
            }
            return false;
        }
        {
            let mut due = self.next_due.lock();
            if Instant::now() < *due {
                return false;
            }
            *due = Instant::now() + self.interval;
        }
        self.lb.backends().run_health_check(true).await;
        for (i, e) in endpoints.iter().enumerate() {
            e.health.set(self.healthy(i));
        }
        true
    }
}
