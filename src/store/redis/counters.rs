//! Rate counters on Redis: fixed windows per key, counted by a Lua script that adds and reads
//! every counter of a request atomically in one round trip ([`RedisCounters`]), or counted
//! locally and sent every interval ([`BatchedCounters`], approximate).

use super::Redis;
use crate::store::{CounterOp, Counters, StoreError, WindowCount};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// KEYS: the counters; ARGV: (cost, window ms) per key. Adds the cost (a cost of 0 only reads)
/// and starts the window at the first count; returns (count, ms left) per key.
const COUNT: &str = r#"
local out = {}
for i, k in ipairs(KEYS) do
  local cost = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  local n
  if cost > 0 then
    n = redis.call('INCRBY', k, cost)
  else
    n = tonumber(redis.call('GET', k) or '0')
  end
  local left = redis.call('PTTL', k)
  if left < 0 then
    if cost > 0 then redis.call('PEXPIRE', k, window) end
    left = window
  end
  out[#out + 1] = n
  out[#out + 1] = left
end
return out
"#;

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(COUNT));

/// Exact counters: every request's counters in one atomic script call.
pub struct RedisCounters {
    redis: Arc<Redis>,
}

impl RedisCounters {
    pub fn new(redis: Arc<Redis>) -> RedisCounters {
        RedisCounters { redis }
    }

    fn key(&self, scope: &str, window: Duration, key: &str) -> String {
        self.redis
            .key(&format!("rl:{scope}:{}:{key}", window.as_millis()))
    }

    /// Counts `cost` (0 only reads) on one full key (from [`Self::key`]).
    async fn count_one(
        &self,
        full: String,
        cost: u64,
        window: Duration,
    ) -> Result<WindowCount, StoreError> {
        let mut v = self.count_keys(&[(full, cost, window)]).await?;
        v.pop().ok_or(StoreError::Corrupt("empty answer".into()))
    }

    /// Counts (key, cost, window) triples with full keys in one call.
    async fn count_keys(
        &self,
        items: &[(String, u64, Duration)],
    ) -> Result<Vec<WindowCount>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = SCRIPT.prepare_invoke();
        for (k, cost, window) in items {
            inv.key(k).arg(*cost).arg(window.as_millis() as u64);
        }
        let raw: Vec<i64> = self
            .redis
            .run(
                "counters",
                |mut c| async move { inv.invoke_async(&mut c).await },
            )
            .await?;
        if raw.len() != items.len() * 2 {
            return Err(StoreError::Corrupt("counter script answer".into()));
        }
        Ok(raw
            .chunks(2)
            .map(|p| WindowCount {
                count: p[0].max(0) as u64,
                resets_in: Duration::from_millis(p[1].max(0) as u64),
            })
            .collect())
    }
}

#[async_trait]
impl Counters for RedisCounters {
    async fn hit(
        &self,
        scope: &str,
        window: Duration,
        key: &str,
        cost: u64,
    ) -> Result<WindowCount, StoreError> {
        self.count_one(self.key(scope, window, key), cost.max(1), window)
            .await
    }

    async fn peek(
        &self,
        scope: &str,
        window: Duration,
        key: &str,
    ) -> Result<WindowCount, StoreError> {
        self.count_one(self.key(scope, window, key), 0, window)
            .await
    }

    async fn count_all(&self, ops: &[CounterOp<'_>]) -> Result<Vec<WindowCount>, StoreError> {
        let items: Vec<_> = ops
            .iter()
            .map(|o| (self.key(o.scope, o.window, o.key), o.cost, o.window))
            .collect();
        self.count_keys(&items).await
    }
}

struct Local {
    window: Duration,
    /// The cluster-wide count at the last sync.
    synced: u64,
    /// Counted here since the last sync.
    pending: u64,
    resets_at: Instant,
    used: Instant,
}

/// Approximate counters: a key's first count in a window goes to Redis (so every node starts
/// from the shared count and the shared window); later counts add up locally and are sent
/// every interval, which also brings the other nodes' counts back. A node may overshoot a
/// quota by what the others counted since their last sync.
pub struct BatchedCounters {
    exact: Arc<RedisCounters>,
    local: Mutex<HashMap<String, Local>>,
    every: Duration,
}

/// Keys kept locally at most; past it the ones unused longest are dropped at the next sync.
const MAX_LOCAL: usize = 100_000;

impl BatchedCounters {
    pub fn new(exact: Arc<RedisCounters>, every: Duration) -> BatchedCounters {
        BatchedCounters {
            exact,
            local: Mutex::new(HashMap::new()),
            every,
        }
    }

    pub fn interval(&self) -> Duration {
        self.every
    }

    /// Counts locally when the key is known in a live window; `None`: ask Redis.
    fn count_here(&self, full: &str, cost: u64) -> Option<WindowCount> {
        let mut map = self.local.lock();
        let l = map.get_mut(full)?;
        let now = Instant::now();
        if now >= l.resets_at {
            return None;
        }
        l.pending += cost;
        l.used = now;
        Some(WindowCount {
            count: l.synced + l.pending,
            resets_in: l.resets_at - now,
        })
    }

    /// Sends what was counted here and reads the shared counts back.
    pub async fn sync(&self) {
        let now = Instant::now();
        let batch: Vec<(String, u64, Duration)> = {
            let mut map = self.local.lock();
            map.retain(|_, l| l.pending > 0 || (now < l.resets_at && now - l.used < l.window));
            if map.len() > MAX_LOCAL {
                let mut by_use: Vec<(Instant, String)> =
                    map.iter().map(|(k, l)| (l.used, k.clone())).collect();
                by_use.sort();
                for (_, k) in by_use.iter().take(map.len() - MAX_LOCAL) {
                    map.remove(k);
                }
            }
            map.iter()
                .filter(|(_, l)| now < l.resets_at)
                .map(|(k, l)| (k.clone(), l.pending, l.window))
                .collect()
        };
        for chunk in batch.chunks(256) {
            let Ok(counts) = self.exact.count_keys(chunk).await else {
                // Kept pending; sent at the next sync.
                return;
            };
            let at = Instant::now();
            let mut map = self.local.lock();
            for ((k, sent, _), c) in chunk.iter().zip(counts) {
                if let Some(l) = map.get_mut(k) {
                    l.pending = l.pending.saturating_sub(*sent);
                    l.synced = c.count;
                    l.resets_at = at + c.resets_in;
                }
            }
        }
    }
}

#[async_trait]
impl Counters for BatchedCounters {
    async fn hit(
        &self,
        scope: &str,
        window: Duration,
        key: &str,
        cost: u64,
    ) -> Result<WindowCount, StoreError> {
        let full = self.exact.key(scope, window, key);
        if let Some(c) = self.count_here(&full, cost) {
            return Ok(c);
        }
        let c = self
            .exact
            .count_one(full.clone(), cost.max(1), window)
            .await?;
        let now = Instant::now();
        self.local.lock().insert(
            full,
            Local {
                window,
                synced: c.count,
                pending: 0,
                resets_at: now + c.resets_in,
                used: now,
            },
        );
        Ok(c)
    }

    async fn peek(
        &self,
        scope: &str,
        window: Duration,
        key: &str,
    ) -> Result<WindowCount, StoreError> {
        let full = self.exact.key(scope, window, key);
        if let Some(c) = self.count_here(&full, 0) {
            return Ok(c);
        }
        self.exact.count_one(full, 0, window).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_server::TestRedis;
    use super::*;

    #[tokio::test]
    async fn exact_counts_are_shared_and_atomic() {
        let server = TestRedis::start();
        let a = RedisCounters::new(server.backend("t1:"));
        let b = RedisCounters::new(server.backend("t1:"));
        let w = Duration::from_secs(60);
        let mut handles = Vec::new();
        let a = Arc::new(a);
        let b = Arc::new(b);
        for i in 0..40 {
            let c: Arc<RedisCounters> = if i % 2 == 0 { a.clone() } else { b.clone() };
            handles.push(tokio::spawn(async move {
                c.hit("p", w, "alice", 1).await.unwrap().count
            }));
        }
        let mut seen = Vec::new();
        for h in handles {
            seen.push(h.await.unwrap());
        }
        seen.sort();
        assert_eq!(seen, (1..=40).collect::<Vec<_>>());
        let p = b.peek("p", w, "alice").await.unwrap();
        assert_eq!(p.count, 40);
        assert!(p.resets_in <= w && p.resets_in > Duration::from_secs(50));
        assert_eq!(a.peek("p", w, "bob").await.unwrap().count, 0);
        // Several counters in one call.
        let got = a
            .count_all(&[
                CounterOp {
                    scope: "p",
                    window: w,
                    key: "alice",
                    cost: 1,
                },
                CounterOp {
                    scope: "q",
                    window: w,
                    key: "alice",
                    cost: 2,
                },
            ])
            .await
            .unwrap();
        assert_eq!((got[0].count, got[1].count), (41, 2));
        // Another prefix is another deployment.
        let other = RedisCounters::new(server.backend("t2:"));
        assert_eq!(other.hit("p", w, "alice", 1).await.unwrap().count, 1);
    }

    #[tokio::test]
    async fn batched_counts_converge() {
        let server = TestRedis::start();
        let w = Duration::from_secs(60);
        let a = BatchedCounters::new(
            Arc::new(RedisCounters::new(server.backend("b:"))),
            Duration::from_millis(50),
        );
        let b = BatchedCounters::new(
            Arc::new(RedisCounters::new(server.backend("b:"))),
            Duration::from_millis(50),
        );
        for _ in 0..5 {
            a.hit("p", w, "k", 1).await.unwrap();
        }
        assert_eq!(b.hit("p", w, "k", 1).await.unwrap().count, 2);
        a.sync().await;
        b.sync().await;
        a.sync().await;
        assert_eq!(a.peek("p", w, "k").await.unwrap().count, 6);
        assert_eq!(b.hit("p", w, "k", 1).await.unwrap().count, 7);
    }
}
