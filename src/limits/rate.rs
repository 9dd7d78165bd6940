//! Rate-limit policies: a quota per fixed window, counted per principal (or per source
//! address) with pingora-limits' `Rate`, and the IETF RateLimit fields
//! (draft-ietf-httpapi-ratelimit-headers-11) that report them.

use once_cell::sync::Lazy;
use parking_lot::Mutex;
use pingora_limits::rate::Rate;
use std::collections::HashMap;
use std::fmt::Write;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

/// Counters by policy name and window, kept across reloads (a reload does not hand out a
/// fresh quota).
type Counters = Mutex<HashMap<(String, u64), Arc<Rate>>>;
static COUNTERS: Lazy<Counters> = Lazy::new(Default::default);

pub struct Policy {
    pub name: Arc<str>,
    pub quota: u64,
    pub window: Duration,
    rate: Arc<Rate>,
}

/// One policy's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub policy: u16,
    /// Requests left in the window after this one.
    pub remaining: u64,
    /// Seconds until the window resets (at least 1).
    pub reset: u64,
    pub refused: bool,
}

impl Policy {
    pub fn new(name: &str, quota: u64, window_seconds: u64) -> Policy {
        let rate = COUNTERS
            .lock()
            .entry((name.to_string(), window_seconds))
            .or_insert_with(|| Arc::new(Rate::new(Duration::from_secs(window_seconds))))
            .clone();
        Policy {
            name: name.into(),
            quota,
            window: Duration::from_secs(window_seconds),
            rate,
        }
    }

    fn reset_seconds(&self, fraction: f64) -> u64 {
        let left = self.window.as_secs_f64() * (1.0 - fraction.clamp(0.0, 1.0));
        (left.ceil() as u64).clamp(1, self.window.as_secs().max(1))
    }

    /// Counts one request of `key` and says whether it fits.
    pub fn charge<K: Hash>(&self, index: u16, key: &K) -> Verdict {
        let count = self.rate.observe(key, 1).max(0) as u64;
        let fraction = self.rate.rate_with(key, |c| c.current_interval_fraction);
        Verdict {
            policy: index,
            remaining: self.quota.saturating_sub(count),
            reset: self.reset_seconds(fraction),
            refused: count > self.quota,
        }
    }

    /// Where `key` stands, without counting anything.
    pub fn peek<K: Hash>(&self, index: u16, key: &K) -> Verdict {
        let (count, fraction) = self.rate.rate_with(key, |c| {
            (c.curr_samples.max(0) as u64, c.current_interval_fraction)
        });
        Verdict {
            policy: index,
            remaining: self.quota.saturating_sub(count),
            reset: self.reset_seconds(fraction),
            refused: false,
        }
    }

    /// `"name";q=600;w=60`
    pub fn policy_item(&self, out: &mut String) {
        let _ = write!(
            out,
            "\"{}\";q={};w={}",
            self.name,
            self.quota,
            self.window.as_secs()
        );
    }
}

/// The verdicts of one request (at most a few policies apply: the caller's and the route's).
#[derive(Debug, Default, Clone)]
pub struct Verdicts {
    items: [Option<Verdict>; 8],
}

impl Verdicts {
    pub fn push(&mut self, v: Verdict) {
        if let Some(slot) = self.items.iter_mut().find(|s| s.is_none()) {
            *slot = Some(v);
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = &Verdict> {
        self.items.iter().flatten()
    }
    pub fn is_empty(&self) -> bool {
        self.items[0].is_none()
    }
    /// The verdict that refused the request (the one with the longest wait).
    pub fn refusal(&self) -> Option<&Verdict> {
        self.iter().filter(|v| v.refused).max_by_key(|v| v.reset)
    }

    /// The response fields: `RateLimit-Policy`, `RateLimit` and, when asked, the legacy
    /// `X-RateLimit-*` of the tightest policy.
    pub fn headers(&self, policies: &[Policy], legacy: bool) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(if legacy { 5 } else { 2 });
        if self.is_empty() {
            return out;
        }
        let mut policy = String::with_capacity(48);
        let mut limit = String::with_capacity(48);
        for v in self.iter() {
            let Some(p) = policies.get(v.policy as usize) else {
                continue;
            };
            if !policy.is_empty() {
                policy.push_str(", ");
                limit.push_str(", ");
            }
            p.policy_item(&mut policy);
            let _ = write!(limit, "\"{}\";r={};t={}", p.name, v.remaining, v.reset);
        }
        out.push(("ratelimit-policy", policy));
        out.push(("ratelimit", limit));
        if legacy
            && let Some(tight) = self
                .iter()
                .filter(|v| (v.policy as usize) < policies.len())
                .min_by_key(|v| (v.remaining, std::cmp::Reverse(v.reset)))
        {
            let p = &policies[tight.policy as usize];
            out.push(("x-ratelimit-limit", p.quota.to_string()));
            out.push(("x-ratelimit-remaining", tight.remaining.to_string()));
            out.push(("x-ratelimit-reset", tight.reset.to_string()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_and_refuses_past_the_quota() {
        let p = Policy::new("unit-test-a", 3, 60);
        let a: Vec<Verdict> = (0..4).map(|_| p.charge(0, &"alice")).collect();
        assert_eq!(
            a.iter().map(|v| v.remaining).collect::<Vec<_>>(),
            vec![2, 1, 0, 0]
        );
        assert!(!a[2].refused && a[3].refused);
        assert!(a[3].reset >= 1 && a[3].reset <= 60);
        let b = p.charge(0, &"bob");
        assert_eq!((b.remaining, b.refused), (2, false));
        assert_eq!(p.peek(0, &"bob").remaining, 2);
    }

    #[test]
    fn header_values() {
        let policies = vec![
            Policy::new("default", 600, 60),
            Policy::new("power", 30, 60),
        ];
        let mut v = Verdicts::default();
        v.push(Verdict {
            policy: 0,
            remaining: 412,
            reset: 17,
            refused: false,
        });
        v.push(Verdict {
            policy: 1,
            remaining: 3,
            reset: 17,
            refused: false,
        });
        let h = v.headers(&policies, true);
        assert_eq!(
            h[0],
            (
                "ratelimit-policy",
                "\"default\";q=600;w=60, \"power\";q=30;w=60".to_string()
            )
        );
        assert_eq!(
            h[1],
            (
                "ratelimit",
                "\"default\";r=412;t=17, \"power\";r=3;t=17".to_string()
            )
        );
        assert_eq!(h[2], ("x-ratelimit-limit", "30".to_string()));
        assert_eq!(h[3], ("x-ratelimit-remaining", "3".to_string()));
    }
}
