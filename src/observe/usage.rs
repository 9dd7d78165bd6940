//! Usage per client: requests, errors (4xx and 5xx answers other than 429) and rate-limit
//! refusals (429) per principal and tenant, over the last minute, hour and day.
//!
//! Memory is bounded: each client has three rings of counters (60 one-second buckets, 60
//! one-minute buckets, 96 fifteen-minute buckets, 16 bytes each: about 3.5 KB), and at most
//! [`MAX_CLIENTS`] clients are tracked (the one seen longest ago makes room), so at most about
//! 35 MB. The table lives outside the
//! config runtime, so a reload keeps it.

use super::ObserveError;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub const MAX_CLIENTS: usize = 10_000;

/// (bucket width in seconds, buckets): minute, hour, day.
const RINGS: [(u64, usize); 3] = [(1, 60), (60, 60), (900, 96)];
const WINDOWS: [&str; 3] = ["last_minute", "last_hour", "last_day"];

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub rate_limited: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.rate_limited += o.rate_limited;
    }
    fn json(&self) -> Value {
        json!({"requests": self.requests, "errors": self.errors, "rate_limited": self.rate_limited})
    }
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    /// `now / width`; fits in 32 bits until 2106.
    epoch: u32,
    requests: u32,
    errors: u32,
    limited: u32,
}

struct Ring {
    width: u64,
    buckets: Box<[Bucket]>,
}

impl Ring {
    fn new(width: u64, len: usize) -> Ring {
        Ring {
            width,
            buckets: vec![Bucket::default(); len].into_boxed_slice(),
        }
    }

    fn add(&mut self, now: u64, errors: u32, limited: u32) {
        let epoch = (now / self.width) as u32;
        let len = self.buckets.len() as u32;
        let b = &mut self.buckets[(epoch % len) as usize];
        if b.epoch != epoch {
            *b = Bucket {
                epoch,
                ..Default::default()
            };
        }
        b.requests = b.requests.saturating_add(1);
        b.errors = b.errors.saturating_add(errors);
        b.limited = b.limited.saturating_add(limited);
    }

    /// Sum of the buckets within the ring's span ending now.
    fn sum(&self, now: u64) -> Counts {
        let epoch = (now / self.width) as u32;
        let oldest = epoch.saturating_sub(self.buckets.len() as u32 - 1);
        let mut c = Counts::default();
        for b in self.buckets.iter() {
            if b.requests > 0 && b.epoch >= oldest && b.epoch <= epoch {
                c.requests += b.requests as u64;
                c.errors += b.errors as u64;
                c.rate_limited += b.limited as u64;
            }
        }
        c
    }
}

struct Usage {
    rings: [Ring; 3],
    last_seen: u64,
}

impl Usage {
    fn new() -> Usage {
        Usage {
            rings: RINGS.map(|(w, n)| Ring::new(w, n)),
            last_seen: 0,
        }
    }
}

type Key = (Arc<str>, Arc<str>);

/// The usage table; [`record`] and [`report`] use the process-wide one.
pub struct Table {
    clients: Mutex<HashMap<Key, Usage>>,
    max_clients: usize,
}

impl Table {
    pub fn new(max_clients: usize) -> Table {
        Table {
            clients: Mutex::new(HashMap::new()),
            max_clients,
        }
    }

    pub fn record_at(&self, principal: &Arc<str>, tenant: &Arc<str>, status: u16, now: u64) {
        let limited = u32::from(status == 429);
        let errors = u32::from((status >= 400 || status == 0) && status != 429);
        let mut clients = self.clients.lock();
        let key = (principal.clone(), tenant.clone());
        if !clients.contains_key(&key) && clients.len() >= self.max_clients {
            // Make room: the client seen longest ago goes.
            if let Some(oldest) = clients
                .iter()
                .min_by_key(|(_, u)| u.last_seen)
                .map(|(k, _)| k.clone())
            {
                clients.remove(&oldest);
            }
        }
        let usage = clients.entry(key).or_insert_with(Usage::new);
        usage.last_seen = now;
        for ring in usage.rings.iter_mut() {
            ring.add(now, errors, limited);
        }
    }

    /// Per client: counts over each window, for clients seen within the last day.
    pub fn snapshot_at(&self, now: u64) -> Vec<(Key, [Counts; 3])> {
        let mut clients = self.clients.lock();
        let day = RINGS[2].0 * RINGS[2].1 as u64;
        clients.retain(|_, u| now.saturating_sub(u.last_seen) < day);
        let mut out: Vec<(Key, [Counts; 3])> = clients
            .iter()
            .map(|(k, u)| {
                let sums = [0, 1, 2].map(|i| u.rings[i].sum(now));
                (k.clone(), sums)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

static TABLE: Lazy<Table> = Lazy::new(|| Table::new(MAX_CLIENTS));

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Counts one answered request of an authenticated caller.
pub fn record(principal: &Arc<str>, tenant: &Arc<str>, status: u16) {
    TABLE.record_at(principal, tenant, status, now_secs());
}

/// `GET /admin/usage[?principal=...&tenant=...]`.
pub fn report(query: Option<&str>) -> Result<Value, ObserveError> {
    let mut principal = None;
    let mut tenant = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "principal" | "user" => principal = Some(v.into_owned()),
            "tenant" => tenant = Some(v.into_owned()),
            other => {
                return Err(ObserveError::BadQuery {
                    field: other.to_string(),
                    message: "unknown parameter (principal, tenant)".into(),
                });
            }
        }
    }
    Ok(render(
        &TABLE,
        now_secs(),
        principal.as_deref(),
        tenant.as_deref(),
    ))
}

pub fn render(table: &Table, now: u64, principal: Option<&str>, tenant: Option<&str>) -> Value {
    let snapshot = table.snapshot_at(now);
    let mut clients = Vec::new();
    let mut tenants: BTreeMap<Arc<str>, [Counts; 3]> = BTreeMap::new();
    for ((p, t), sums) in snapshot {
        if principal.is_some_and(|want| *p != *want) || tenant.is_some_and(|want| *t != *want) {
            continue;
        }
        let per_tenant = tenants.entry(t.clone()).or_default();
        let mut c = Map::new();
        c.insert("principal".into(), json!(&*p));
        c.insert("tenant".into(), json!(&*t));
        for (i, w) in WINDOWS.iter().enumerate() {
            per_tenant[i].add(&sums[i]);
            c.insert(w.to_string(), sums[i].json());
        }
        clients.push(Value::Object(c));
    }
    let tenants: Vec<Value> = tenants
        .into_iter()
        .map(|(t, sums)| {
            let mut m = Map::new();
            m.insert("tenant".into(), json!(&*t));
            for (i, w) in WINDOWS.iter().enumerate() {
                m.insert(w.to_string(), sums[i].json());
            }
            Value::Object(m)
        })
        .collect();
    json!({
        "windows_seconds": {"last_minute": 60, "last_hour": 3600, "last_day": 86400},
        "clients": clients,
        "tenants": tenants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_slide() {
        let t = Table::new(10);
        let (a, acme): (Arc<str>, Arc<str>) = ("key:a".into(), "acme".into());
        let t0 = 1_800_000_000;
        t.record_at(&a, &acme, 200, t0);
        t.record_at(&a, &acme, 500, t0 + 1);
        t.record_at(&a, &acme, 429, t0 + 2);
        let v = render(&t, t0 + 2, None, None);
        assert_eq!(
            v["clients"][0]["last_minute"],
            json!({"requests": 3, "errors": 1, "rate_limited": 1})
        );
        // 90 s later the minute is empty, the hour and day are not.
        let v = render(&t, t0 + 92, None, None);
        assert_eq!(v["clients"][0]["last_minute"]["requests"], 0);
        assert_eq!(v["clients"][0]["last_hour"]["requests"], 3);
        // Two hours later only the day remains.
        let v = render(&t, t0 + 7200, None, None);
        assert_eq!(v["clients"][0]["last_hour"]["requests"], 0);
        assert_eq!(v["clients"][0]["last_day"]["requests"], 3);
        assert_eq!(v["tenants"][0]["last_day"]["errors"], 1);
        // After a day the client is gone.
        let v = render(&t, t0 + 86_400 + 10, None, None);
        assert_eq!(v["clients"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn bounded_and_filtered() {
        let t = Table::new(3);
        let acme: Arc<str> = "acme".into();
        let globex: Arc<str> = "globex".into();
        for i in 0..5u64 {
            let p: Arc<str> = format!("key:{i}").into();
            t.record_at(&p, if i % 2 == 0 { &acme } else { &globex }, 200, 1000 + i);
        }
        let v = render(&t, 1010, None, None);
        let names: Vec<&str> = v["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["principal"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["key:2", "key:3", "key:4"]);
        let v = render(&t, 1010, None, Some("acme"));
        assert_eq!(v["clients"].as_array().unwrap().len(), 2);
        assert_eq!(v["tenants"][0]["last_minute"]["requests"], 2);
    }
}
