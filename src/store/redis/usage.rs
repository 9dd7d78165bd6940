//! Usage on Redis, summed over every node: the same buckets as the in-memory store (60
//! one-second, 60 one-minute and 96 fifteen-minute buckets), one hash per bucket
//! (`usage:{width}:{epoch}`, field `{r|e|l}\0tenant\0principal`) that expires when its window
//! has passed. A request is counted here first and sent with the others of its second at the
//! next flush (every sync interval), so the hot path never waits for Redis.

use super::Redis;
use crate::store::StoreError;
use crate::store::usage::{ClientUsage, Outcome, UsageCounts, UsageQuery, UsageStore};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// (bucket width in seconds, buckets), like the in-memory store.
const RINGS: [(u64, u64); 3] = [(1, 60), (60, 60), (900, 96)];

/// Entries waiting for the next flush at most (a flush that keeps failing drops the rest).
const MAX_PENDING: usize = 100_000;

type Pending = HashMap<(u64, String, String), [u64; 3]>;

pub struct RedisUsage {
    redis: Arc<Redis>,
    pending: Mutex<Pending>,
    /// One flush at a time (a report flushes too).
    flushing: tokio::sync::Mutex<()>,
}

impl RedisUsage {
    pub fn new(redis: Arc<Redis>) -> RedisUsage {
        RedisUsage {
            redis,
            pending: Mutex::new(HashMap::new()),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    /// Counts one request here; sent at the next flush.
    pub fn record_now(&self, principal: &str, tenant: &str, outcome: Outcome, at: u64) {
        let mut p = self.pending.lock();
        if p.len() >= MAX_PENDING {
            return;
        }
        let c = p
            .entry((at, tenant.to_string(), principal.to_string()))
            .or_default();
        c[0] += 1;
        match outcome {
            Outcome::Ok => {}
            Outcome::Error => c[1] += 1,
            Outcome::RateLimited => c[2] += 1,
        }
    }

    /// Sends the counts taken here since the last flush; on failure they are kept for the next.
    pub async fn flush(&self) {
        let _one = self.flushing.lock().await;
        let batch: Pending = std::mem::take(&mut *self.pending.lock());
        if batch.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for ((at, tenant, principal), counts) in &batch {
            for (width, n) in RINGS {
                let epoch = at / width;
                let key = self.redis.key(&format!("usage:{width}:{epoch}"));
                for (kind, count) in ["r", "e", "l"].iter().zip(counts) {
                    if *count > 0 {
                        pipe.cmd("HINCRBY")
                            .arg(&key)
                            .arg(field(kind, tenant, principal))
                            .arg(*count)
                            .ignore();
                    }
                }
                // The bucket is read until `n` widths after it began.
                pipe.cmd("EXPIREAT")
                    .arg(&key)
                    .arg((epoch + n + 1) * width)
                    .ignore();
            }
        }
        let r = self
            .redis
            .run("usage", |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await;
        if r.is_err() {
            let mut p = self.pending.lock();
            for (k, v) in batch {
                if p.len() >= MAX_PENDING {
                    break;
                }
                let c = p.entry(k).or_default();
                for i in 0..3 {
                    c[i] += v[i];
                }
            }
        }
    }
}

fn field(kind: &str, tenant: &str, principal: &str) -> Vec<u8> {
    let mut f = Vec::with_capacity(3 + tenant.len() + principal.len());
    f.extend_from_slice(kind.as_bytes());
    f.push(0);
    f.extend_from_slice(tenant.as_bytes());
    f.push(0);
    f.extend_from_slice(principal.as_bytes());
    f
}

#[async_trait]
impl UsageStore for RedisUsage {
    async fn record(
        &self,
        principal: &str,
        tenant: &str,
        outcome: Outcome,
        at: u64,
    ) -> Result<(), StoreError> {
        self.record_now(principal, tenant, outcome, at);
        Ok(())
    }

    async fn report(&self, query: &UsageQuery, now: u64) -> Result<Vec<ClientUsage>, StoreError> {
        self.flush().await;
        let mut pipe = redis::pipe();
        let mut slots = Vec::new();
        for (i, (width, n)) in RINGS.iter().enumerate() {
            let epoch = now / width;
            for e in epoch.saturating_sub(n - 1)..=epoch {
                pipe.cmd("HGETALL")
                    .arg(self.redis.key(&format!("usage:{width}:{e}")));
                slots.push(i);
            }
        }
        let hashes: Vec<Vec<(Vec<u8>, u64)>> = self
            .redis
            .run(
                "usage",
                |mut c| async move { pipe.query_async(&mut c).await },
            )
            .await?;
        let mut clients: BTreeMap<(String, String), [UsageCounts; 3]> = BTreeMap::new();
        for (ring, fields) in slots.into_iter().zip(hashes) {
            for (f, count) in fields {
                let mut parts = f.splitn(3, |b| *b == 0);
                let (Some(kind), Some(tenant), Some(principal)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let tenant = String::from_utf8_lossy(tenant);
                let principal = String::from_utf8_lossy(principal);
                if query.tenant.as_deref().is_some_and(|t| t != tenant)
                    || query.principal.as_deref().is_some_and(|p| p != principal)
                {
                    continue;
                }
                let w = clients
                    .entry((principal.into_owned(), tenant.into_owned()))
                    .or_default();
                let c = UsageCounts {
                    requests: if kind == b"r" { count } else { 0 },
                    errors: if kind == b"e" { count } else { 0 },
                    rate_limited: if kind == b"l" { count } else { 0 },
                };
                w[ring].add(&c);
            }
        }
        Ok(clients
            .into_iter()
            .filter(|(_, w)| w[2].requests > 0)
            .map(|((principal, tenant), windows)| ClientUsage {
                principal,
                tenant,
                windows,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_server::TestRedis;
    use super::*;

    #[tokio::test]
    async fn summed_over_nodes_and_windows_slide() {
        let server = TestRedis::start();
        let a = RedisUsage::new(server.backend("u:"));
        let b = RedisUsage::new(server.backend("u:"));
        let t0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        a.record("key:a", "acme", Outcome::Ok, t0).await.unwrap();
        b.record("key:a", "acme", Outcome::Error, t0).await.unwrap();
        b.record("key:a", "acme", Outcome::RateLimited, t0)
            .await
            .unwrap();
        b.record("key:b", "globex", Outcome::Ok, t0).await.unwrap();
        a.flush().await;
        let r = b.report(&UsageQuery::default(), t0).await.unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].principal.as_str(), r[0].tenant.as_str()),
            ("key:a", "acme")
        );
        let three = UsageCounts {
            requests: 3,
            errors: 1,
            rate_limited: 1,
        };
        assert_eq!(r[0].windows, [three; 3]);
        let acme = UsageQuery {
            tenant: Some("acme".into()),
            principal: None,
        };
        assert_eq!(a.report(&acme, t0).await.unwrap().len(), 1);
        // 90 s later the minute is empty, the hour is not.
        let r = a.report(&acme, t0 + 90).await.unwrap();
        assert_eq!(r[0].windows[0].requests, 0);
        assert_eq!(r[0].windows[1].requests, 3);
    }
}
