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
