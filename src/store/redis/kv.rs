//! The key-value store on Redis: one string key per entry, with Redis' own expiry.

use super::Redis;
use crate::store::{KvStore, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

pub struct RedisKv {
    redis: Arc<Redis>,
}

impl RedisKv {
    pub fn new(redis: Arc<Redis>) -> RedisKv {
        RedisKv { redis }
    }

    fn key(&self, key: &str) -> String {
        self.redis.key(&format!("kv:{key}"))
    }
}

/// KEYS[1]: the key. ARGV: whether a value is expected (`1`/`0`), the expected value, the new
/// value, its lifetime in ms. Sets the key when its value is the expected one (or it has none
/// and none is expected); 1 when it did.
const CAS: &str = r#"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur ~= ARGV[2] then return 0 end
elseif cur then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
"#;

static CAS_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(CAS));

fn ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

#[async_trait]
impl KvStore for RedisKv {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let k = self.key(key);
        let v: Option<Vec<u8>> = self
            .redis
            .run("kv", |mut c| async move {
                redis::cmd("GET").arg(&k).query_async(&mut c).await
            })
            .await?;
        Ok(v.map(Bytes::from))
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        let k = self.key(key);
        self.redis
            .run("kv", |mut c| async move {
                redis::cmd("SET")
                    .arg(&k)
                    .arg(value.as_ref())
                    .arg("PX")
                    .arg(ms(ttl))
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let k = self.key(key);
        let set: Option<String> = self
            .redis
            .run("kv", |mut c| async move {
                redis::cmd("SET")
                    .arg(&k)
                    .arg(value.as_ref())
                    .arg("NX")
                    .arg("PX")
                    .arg(ms(ttl))
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let k = self.key(key);
        let n: u64 = self
            .redis
            .run("kv", |mut c| async move {
                redis::cmd("DEL").arg(&k).query_async(&mut c).await
            })
            .await?;
        Ok(n > 0)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&Bytes>,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut inv = CAS_SCRIPT.prepare_invoke();
        inv.key(self.key(key))
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.map(|b| b.as_ref()).unwrap_or_default())
            .arg(value.as_ref())
            .arg(ms(ttl));
        let set: i64 = self
            .redis
            .run("kv", |mut c| async move {
                inv.invoke_async::<i64>(&mut c).await
            })
            .await?;
        Ok(set == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_server::TestRedis;
    use super::*;

    #[tokio::test]
    async fn shared_entries_expire() {
        let server = TestRedis::start();
        let a = RedisKv::new(server.backend("kv1:"));
        let b = RedisKv::new(server.backend("kv1:"));
        let long = Duration::from_secs(60);
        assert!(a.put_if_absent("x", Bytes::from("1"), long).await.unwrap());
        assert!(!b.put_if_absent("x", Bytes::from("2"), long).await.unwrap());
        assert_eq!(b.get("x").await.unwrap(), Some(Bytes::from("1")));
        b.put("y", Bytes::from("v"), Duration::from_millis(30))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(a.get("y").await.unwrap(), None);
        assert!(a.delete("x").await.unwrap());
        assert!(!b.delete("x").await.unwrap());
    }

    #[tokio::test]
    async fn compare_and_swap_changes_only_what_was_read() {
        let server = TestRedis::start();
        let a = RedisKv::new(server.backend("kv2:"));
        let b = RedisKv::new(server.backend("kv2:"));
        let long = Duration::from_secs(60);
        let (one, two, three) = (Bytes::from("1"), Bytes::from("2"), Bytes::from("3"));
        // Absent expected: only the first of two writers gets in.
        assert!(
            a.compare_and_swap("d", None, one.clone(), long)
                .await
                .unwrap()
        );
        assert!(
            !b.compare_and_swap("d", None, two.clone(), long)
                .await
                .unwrap()
        );
        // Both read 1; the second to write finds 2 and must read again.
        assert!(
            b.compare_and_swap("d", Some(&one), two.clone(), long)
                .await
                .unwrap()
        );
        assert!(
            !a.compare_and_swap("d", Some(&one), three.clone(), long)
                .await
                .unwrap()
        );
        assert_eq!(a.get("d").await.unwrap(), Some(two.clone()));
        assert!(
            a.compare_and_swap("d", Some(&two), three.clone(), long)
                .await
                .unwrap()
        );
        assert_eq!(b.get("d").await.unwrap(), Some(three));
    }

    #[tokio::test]
    async fn unreachable_server_is_an_error_within_the_timeout() {
        let port = super::super::test_server::free_port();
        let r = super::super::test_server::backend_at(port, "x:");
        let kv = RedisKv::new(r.clone());
        let start = std::time::Instant::now();
        assert!(kv.get("a").await.is_err());
        assert!(start.elapsed() < Duration::from_secs(3));
        assert!(!r.is_up());
    }
}
