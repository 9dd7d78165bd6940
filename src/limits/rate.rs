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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A `Rate` and a clock that follows its windows. `Rate` starts a new window lazily, at the
/// first event past the end of the current one; the clock applies the same rule at the same
/// calls, so that the time left in the window (`t`) costs no second look-up in the sketch.
struct Counter {
    start: Instant,
    rate: Rate,
    window_ms: u64,
    window_start_ms: AtomicU64,
}

impl Counter {
    fn new(window: Duration) -> Counter {
        let start = Instant::now();
        Counter {
            start,
            rate: Rate::new(window),
            window_ms: window.as_millis() as u64,
            window_start_ms: AtomicU64::new(0),
        }
    }

    /// Milliseconds left in the current window.
    fn left_ms(&self) -> u64 {
        let now = self.start.elapsed().as_millis() as u64;
        let mut begun = self.window_start_ms.load(Ordering::Acquire);
        if now.saturating_sub(begun) >= self.window_ms {
            begun = match self.window_start_ms.compare_exchange(
                begun,
                now,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => now,
                Err(other) => other,
            };
        }
        (begun + self.window_ms).saturating_sub(now)
    }
}

/// Counters by policy name and window, kept across reloads (a reload does not hand out a
/// fresh quota).
type Counters = Mutex<HashMap<(String, u64), Arc<Counter>>>;
static COUNTERS: Lazy<Counters> = Lazy::new(Default::default);

pub struct Policy {
    pub name: Arc<str>,
    pub quota: u64,
    pub window: Duration,
    counter: Arc<Counter>,
    /// `"name";q=600;w=60`, built once.
    item: String,
    /// The same as a header value (cloning it shares the bytes).
    item_value: http::HeaderValue,
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
        let counter = COUNTERS
            .lock()
            .entry((name.to_string(), window_seconds))
            .or_insert_with(|| Arc::new(Counter::new(Duration::from_secs(window_seconds))))
            .clone();
        Policy {
            name: name.into(),
            quota,
            window: Duration::from_secs(window_seconds),
            counter,
            item: format!("\"{name}\";q={quota};w={window_seconds}"),
            item_value: http::HeaderValue::from_str(&format!(
                "\"{name}\";q={quota};w={window_seconds}"
            ))
            .unwrap_or_else(|_| http::HeaderValue::from_static("\"policy\"")),
        }
    }

    fn reset_seconds(&self, left_ms: u64) -> u64 {
        left_ms
            .div_ceil(1000)
            .clamp(1, self.window.as_secs().max(1))
    }

    /// Counts one request of `key` and says whether it fits.
    pub fn charge<K: Hash>(&self, index: u16, key: &K) -> Verdict {
        let count = self.counter.rate.observe(key, 1).max(0) as u64;
        Verdict {
            policy: index,
            remaining: self.quota.saturating_sub(count),
            reset: self.reset_seconds(self.counter.left_ms()),
            refused: count > self.quota,
        }
    }

    /// Where `key` stands, without counting anything.
    pub fn peek<K: Hash>(&self, index: u16, key: &K) -> Verdict {
        let count = self
            .counter
            .rate
            .rate_with(key, |c| c.curr_samples.max(0) as u64);
        Verdict {
            policy: index,
            remaining: self.quota.saturating_sub(count),
            reset: self.reset_seconds(self.counter.left_ms()),
            refused: false,
        }
    }

    /// `"name";q=600;w=60`
    pub fn policy_item(&self, out: &mut String) {
        out.push_str(&self.item);
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

    /// Adds the fields to a response header; the usual single-policy case without formatting
    /// machinery.
    pub fn apply(
        &self,
        policies: &[Policy],
        legacy: bool,
        resp: &mut pingora::http::ResponseHeader,
    ) -> pingora::Result<()> {
        if let (Some(v), None, false) = (self.items[0], self.items[1], legacy)
            && let Some(p) = policies.get(v.policy as usize)
        {
            let mut limit = String::with_capacity(p.name.len() + 24);
            limit.push('"');
            limit.push_str(&p.name);
            limit.push_str("\";r=");
            push_u64(&mut limit, v.remaining);
            limit.push_str(";t=");
            push_u64(&mut limit, v.reset);
            resp.insert_header("ratelimit-policy", p.item_value.clone())?;
            resp.insert_header("ratelimit", limit)?;
            return Ok(());
        }
        for (name, value) in self.headers(policies, legacy) {
            resp.insert_header(name, value)?;
        }
        Ok(())
    }

    /// The response fields: `RateLimit-Policy`, `RateLimit` and, when asked, the legacy
    /// `X-RateLimit-*` of the tightest policy.
    pub fn headers(&self, policies: &[Policy], legacy: bool) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(if legacy { 5 } else { 2 });
        if self.is_empty() {
            return out;
        }
        let mut policy = String::with_capacity(64);
        let mut limit = String::with_capacity(64);
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

fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(buf[i..].iter().map(|b| *b as char));
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
        let mut one = Verdicts::default();
        one.push(Verdict {
            policy: 0,
            remaining: 1200,
            reset: 7,
            refused: false,
        });
        let mut resp = pingora::http::ResponseHeader::build(200, None).unwrap();
        one.apply(&policies, false, &mut resp).unwrap();
        assert_eq!(resp.headers["ratelimit"], "\"default\";r=1200;t=7");
        assert_eq!(resp.headers["ratelimit-policy"], "\"default\";q=600;w=60");
        let mut s = String::new();
        push_u64(&mut s, 0);
        push_u64(&mut s, 18446744073709551615);
        assert_eq!(s, "018446744073709551615");
        assert_eq!(h[3], ("x-ratelimit-remaining", "3".to_string()));
    }
}
