//! Rate-limit policies: a quota per fixed window, counted per principal (or per source
//! address) through the `store::Counters` backend of the process state, and the IETF RateLimit
//! fields (draft-ietf-httpapi-ratelimit-headers-11) that report them.
//!
//! A policy's counters are the backend's scope named after the policy, with the policy's
//! window: a reload that keeps a policy's name and window keeps its counts (no fresh quota).

use crate::store::WindowCount;
use crate::store::memory::{MemoryCounters, MemoryWindow};
use crate::upstream::names::Name;
use http::HeaderValue;
use std::fmt::Write;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub struct Policy {
    pub name: Arc<str>,
    pub quota: u64,
    pub window: Duration,
    /// The memory backend's counters of this policy, taken at the first request (building a
    /// policy changes nothing in the state).
    memory: OnceLock<MemoryWindow>,
    /// `"name";q=600;w=60`, built once.
    item: String,
    /// The same as a header value (cloning it shares the bytes).
    item_value: HeaderValue,
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
        let item = format!("\"{name}\";q={quota};w={window_seconds}");
        Policy {
            name: name.into(),
            quota,
            window: Duration::from_secs(window_seconds),
            memory: OnceLock::new(),
            item_value: HeaderValue::from_str(&item)
                .unwrap_or_else(|_| HeaderValue::from_static("\"policy\"")),
            item,
        }
    }

    /// The counters of this policy in the memory backend (looked up once).
    pub fn memory_window(&self, counters: &MemoryCounters) -> &MemoryWindow {
        self.memory
            .get_or_init(|| counters.window_of(&self.name, self.window))
    }

    /// The verdict on a count: `charged` says whether this request was counted in it.
    pub fn verdict(&self, index: u16, c: WindowCount, charged: bool) -> Verdict {
        Verdict {
            policy: index,
            remaining: self.quota.saturating_sub(c.count),
            reset: (c.resets_in.as_millis() as u64)
                .div_ceil(1000)
                .clamp(1, self.window.as_secs().max(1)),
            refused: charged && c.count > self.quota,
        }
    }

    /// `"name";q=600;w=60`
    pub fn policy_item(&self, out: &mut String) {
        out.push_str(&self.item);
    }
}

/// The refusal that stands for "the counters cannot be reached" (`Verdicts::unavailable`).
static UNAVAILABLE: Verdict = Verdict {
    policy: u16::MAX,
    remaining: 0,
    reset: 1,
    refused: true,
};

/// The verdicts of one request (at most a few policies apply: the caller's and the route's).
#[derive(Debug, Default, Clone)]
pub struct Verdicts {
    items: [Option<Verdict>; 8],
    /// The counters could not be reached and the limits fail closed: refuse (503).
    pub unavailable: bool,
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
        if self.unavailable {
            return Some(&UNAVAILABLE);
        }
        self.iter().filter(|v| v.refused).max_by_key(|v| v.reset)
    }

    /// The response fields as header values, for an answer from OrionVM: the usual
    /// single-policy case without formatting machinery.
    pub fn fields(&self, policies: &[Policy], legacy: bool) -> Fields {
        let mut out = Fields::default();
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
            out.push(&RATELIMIT_POLICY, p.item_value.clone());
            if let Ok(value) = HeaderValue::try_from(limit) {
                out.push(&RATELIMIT, value);
            }
            return out;
        }
        for (name, value) in self.headers(policies, legacy) {
            if let (Some(name), Ok(value)) = (field_name(name), HeaderValue::try_from(value)) {
                out.push(name, value);
            }
        }
        out
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

/// The response fields' names, prebuilt for the answer's header maps (written as given).
pub static RATELIMIT_POLICY: Name = Name::new("ratelimit-policy");
pub static RATELIMIT: Name = Name::new("ratelimit");
pub static X_RATELIMIT_LIMIT: Name = Name::new("x-ratelimit-limit");
pub static X_RATELIMIT_REMAINING: Name = Name::new("x-ratelimit-remaining");
pub static X_RATELIMIT_RESET: Name = Name::new("x-ratelimit-reset");

/// The prebuilt name of a field [`Verdicts::headers`] writes.
fn field_name(name: &str) -> Option<&'static Name> {
    [
        &RATELIMIT_POLICY,
        &RATELIMIT,
        &X_RATELIMIT_LIMIT,
        &X_RATELIMIT_REMAINING,
        &X_RATELIMIT_RESET,
    ]
    .into_iter()
    .find(|n| n.name.as_str() == name)
}

/// The rate-limit fields of one answer (at most five), as header values.
#[derive(Default)]
pub struct Fields {
    items: [Option<(&'static Name, HeaderValue)>; 5],
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.items
                    .iter()
                    .flatten()
                    .map(|(n, v)| (n.name.as_str(), v)),
            )
            .finish()
    }
}

impl Fields {
    fn push(&mut self, name: &'static Name, value: HeaderValue) {
        if let Some(slot) = self.items.iter_mut().find(|s| s.is_none()) {
            *slot = Some((name, value));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items[0].is_none()
    }
}

impl IntoIterator for Fields {
    type Item = (&'static Name, HeaderValue);
    type IntoIter =
        std::iter::Flatten<std::array::IntoIter<Option<(&'static Name, HeaderValue)>, 5>>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter().flatten()
    }
}

fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_and_refuses_past_the_quota() {
        let counters = MemoryCounters::default();
        let p = Policy::new("unit-test-a", 3, 60);
        let w = p.memory_window(&counters);
        let charge = |key: &str| p.verdict(0, w.hit(key, 1), true);
        let a: Vec<Verdict> = (0..4).map(|_| charge("alice")).collect();
        assert_eq!(
            a.iter().map(|v| v.remaining).collect::<Vec<_>>(),
            vec![2, 1, 0, 0]
        );
        assert!(!a[2].refused && a[3].refused);
        assert!(a[3].reset >= 1 && a[3].reset <= 60);
        let b = charge("bob");
        assert_eq!((b.remaining, b.refused), (2, false));
        assert_eq!(p.verdict(0, w.peek("bob"), false).remaining, 2);
        // A peek past the quota reports, never refuses.
        assert!(!p.verdict(0, w.peek("alice"), false).refused);
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
        let fields: std::collections::HashMap<_, _> = one
            .fields(&policies, false)
            .into_iter()
            .map(|(name, value)| (name.name.as_str(), value))
            .collect();
        assert_eq!(fields["ratelimit"], "\"default\";r=1200;t=7");
        assert_eq!(fields["ratelimit-policy"], "\"default\";q=600;w=60");
        // Several policies (or the legacy fields) take the general path, with the same values.
        let many: Vec<_> = v.fields(&policies, true).into_iter().collect();
        assert_eq!(many.len(), 5);
        assert_eq!(many[1].1, h[1].1.as_str());
        // Each field goes under its prebuilt name.
        for ((name, _), (expected, _)) in many.iter().zip(&h) {
            assert_eq!(name.name.as_str(), *expected);
        }
        let mut s = String::new();
        push_u64(&mut s, 0);
        push_u64(&mut s, 18446744073709551615);
        assert_eq!(s, "018446744073709551615");
        assert_eq!(h[3], ("x-ratelimit-remaining", "3".to_string()));
    }
}
