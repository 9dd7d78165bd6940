//! Facade tasks on Redis, with leases.
//!
//! Keys (after the prefix): `task:{id}` a hash (tenant, finished, data); `tasks:order` the ids
//! by creation time, `tasks:finished` the finished ones by finishing time, `tasks:t:{tenant}`
//! a tenant's ids by creation time, `tasks:running` the unfinished ids, and `lease:{id}` the
//! lease of an unfinished task, held by the node that runs it and renewed every third of the
//! lease. A task whose lease expired (its node died) is claimed by another node, which marks it
//! failed ([`TaskStore::orphans`]). A finished task is final: a late update from a node that
//! lost its lease is refused. The scripts name keys they compute, so this needs one Redis
//! server (or a Valkey/Redis replica set), not a cluster.

use super::Redis;
use crate::store::StoreError;
use crate::store::tasks::{TaskRecord, TaskStore};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// ARGV: prefix, id, tenant, data, finished, max, now ms, node, lease ms.
const CREATE: &str = r#"
local p, id, tenant = ARGV[1], ARGV[2], ARGV[3]
local max = tonumber(ARGV[6])
local order, fin, running = p .. 'tasks:order', p .. 'tasks:finished', p .. 'tasks:running'
while redis.call('ZCARD', order) >= max do
  local v = redis.call('ZRANGE', fin, 0, 0)[1] or redis.call('ZRANGE', order, 0, 0)[1]
  if not v then break end
  local t = redis.call('HGET', p .. 'task:' .. v, 'tenant')
  redis.call('DEL', p .. 'task:' .. v, p .. 'lease:' .. v)
  redis.call('ZREM', order, v)
  redis.call('ZREM', fin, v)
  redis.call('SREM', running, v)
  if t then redis.call('ZREM', p .. 'tasks:t:' .. t, v) end
end
redis.call('HSET', p .. 'task:' .. id, 'tenant', tenant, 'data', ARGV[4], 'finished', ARGV[5])
redis.call('ZADD', order, ARGV[7], id)
redis.call('ZADD', p .. 'tasks:t:' .. tenant, ARGV[7], id)
if ARGV[5] == '1' then
  redis.call('ZADD', fin, ARGV[7], id)
else
  redis.call('SADD', running, id)
  redis.call('SET', p .. 'lease:' .. id, ARGV[8], 'PX', ARGV[9])
end
return 1
"#;

/// ARGV: prefix, id, tenant, data, finished, now ms. 1 when saved.
const UPDATE: &str = r#"
local p, id = ARGV[1], ARGV[2]
local k = p .. 'task:' .. id
local stored = redis.call('HMGET', k, 'tenant', 'finished')
if not stored[1] or stored[1] ~= ARGV[3] or stored[2] == '1' then return 0 end
redis.call('HSET', k, 'data', ARGV[4], 'finished', ARGV[5])
if ARGV[5] == '1' then
  redis.call('ZADD', p .. 'tasks:finished', ARGV[6], id)
  redis.call('SREM', p .. 'tasks:running', id)
  redis.call('DEL', p .. 'lease:' .. id)
end
return 1
"#;

/// ARGV: prefix, node, lease ms. Claims the unfinished tasks whose lease expired; returns
/// (id, tenant, data) triples of the claimed ones.
const CLAIM: &str = r#"
local p = ARGV[1]
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', p .. 'tasks:running')) do
  local k = p .. 'task:' .. id
  local rec = redis.call('HMGET', k, 'tenant', 'data', 'finished')
  if not rec[1] then
    redis.call('SREM', p .. 'tasks:running', id)
  elseif rec[3] ~= '1' and redis.call('SET', p .. 'lease:' .. id, ARGV[2], 'NX', 'PX', ARGV[3]) then
    out[#out + 1] = id
    out[#out + 1] = rec[1]
    out[#out + 1] = rec[2]
  end
end
return out
"#;

static CREATE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CREATE));
static UPDATE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(UPDATE));
static CLAIM_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CLAIM));

pub struct RedisTasks {
    redis: Arc<Redis>,
    lease: Duration,
    /// The unfinished tasks this node runs (their leases are renewed here).
    owned: Mutex<HashSet<String>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RedisTasks {
    pub fn new(redis: Arc<Redis>, lease: Duration) -> RedisTasks {
        RedisTasks {
            redis,
            lease,
            owned: Mutex::new(HashSet::new()),
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Renews the leases of the tasks this node runs.
    pub async fn renew(&self) {
        let ids: Vec<String> = self.owned.lock().iter().cloned().collect();
        if ids.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("SET")
                .arg(self.redis.key(&format!("lease:{id}")))
                .arg(self.redis.node())
                .arg("PX")
                .arg(self.lease.as_millis() as u64)
                .ignore();
        }
        let r = self
            .redis
            .run("tasks", |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await;
        if let Err(e) = r {
            log::warn!("task leases not renewed: {e}");
        }
    }

    fn record(id: String, tenant: String, finished: bool, data: Vec<u8>) -> TaskRecord {
        TaskRecord {
            id,
            tenant,
            finished,
            data: Bytes::from(data),
        }
    }
}

#[async_trait]
impl TaskStore for RedisTasks {
    async fn create(&self, task: TaskRecord, max: usize) -> Result<(), StoreError> {
        let mut inv = CREATE_SCRIPT.prepare_invoke();
        inv.arg(self.redis.prefix())
            .arg(&task.id)
            .arg(&task.tenant)
            .arg(task.data.as_ref())
            .arg(if task.finished { "1" } else { "0" })
            .arg(max.max(1))
            .arg(now_ms())
            .arg(self.redis.node())
            .arg(self.lease.as_millis() as u64);
        self.redis
            .run("tasks", |mut c| async move {
                inv.invoke_async::<i64>(&mut c).await
            })
            .await?;
        if !task.finished {
            self.owned.lock().insert(task.id);
        }
        Ok(())
    }

    async fn update(&self, task: TaskRecord) -> Result<bool, StoreError> {
        let mut inv = UPDATE_SCRIPT.prepare_invoke();
        inv.arg(self.redis.prefix())
            .arg(&task.id)
            .arg(&task.tenant)
            .arg(task.data.as_ref())
            .arg(if task.finished { "1" } else { "0" })
            .arg(now_ms());
        let saved: i64 = self
            .redis
            .run(
                "tasks",
                |mut c| async move { inv.invoke_async(&mut c).await },
            )
            .await?;
        if task.finished || saved == 0 {
            self.owned.lock().remove(&task.id);
        }
        Ok(saved == 1)
    }

    async fn get(&self, tenant: &str, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let k = self.redis.key(&format!("task:{id}"));
        let (t, data, fin): (Option<String>, Option<Vec<u8>>, Option<String>) = self
            .redis
            .run("tasks", |mut c| async move {
                redis::cmd("HMGET")
                    .arg(&k)
                    .arg("tenant")
                    .arg("data")
                    .arg("finished")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        match (t, data) {
            (Some(t), Some(data)) if t == tenant => Ok(Some(Self::record(
                id.to_string(),
                t,
                fin.as_deref() == Some("1"),
                data,
            ))),
            _ => Ok(None),
        }
    }

    async fn list(&self, tenant: &str) -> Result<Vec<TaskRecord>, StoreError> {
        let idx = self.redis.key(&format!("tasks:t:{tenant}"));
        let ids: Vec<String> = self
            .redis
            .run("tasks", |mut c| async move {
                redis::cmd("ZRANGE")
                    .arg(&idx)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(self.redis.key(&format!("task:{id}")))
                .arg("tenant")
                .arg("data")
                .arg("finished");
        }
        type Row = (Option<String>, Option<Vec<u8>>, Option<String>);
        let rows: Vec<Row> = self
            .redis
            .run(
                "tasks",
                |mut c| async move { pipe.query_async(&mut c).await },
            )
            .await?;
        Ok(ids
            .into_iter()
            .zip(rows)
            .filter_map(|(id, (t, data, fin))| match (t, data) {
                (Some(t), Some(data)) if t == tenant => {
                    Some(Self::record(id, t, fin.as_deref() == Some("1"), data))
                }
                _ => None,
            })
            .collect())
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.lease)
    }

    async fn orphans(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let mut inv = CLAIM_SCRIPT.prepare_invoke();
        inv.arg(self.redis.prefix())
            .arg(self.redis.node())
            .arg(self.lease.as_millis() as u64);
        let raw: Vec<Vec<u8>> = self
            .redis
            .run(
                "tasks",
                |mut c| async move { inv.invoke_async(&mut c).await },
            )
            .await?;
        let mut out = Vec::new();
        for t in raw.chunks(3) {
            if let [id, tenant, data] = t {
                let id = String::from_utf8_lossy(id).into_owned();
                self.owned.lock().insert(id.clone());
                out.push(Self::record(
                    id,
                    String::from_utf8_lossy(tenant).into_owned(),
                    false,
                    data.clone(),
                ));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_server::TestRedis;
    use super::*;

    fn task(id: &str, tenant: &str, finished: bool) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            tenant: tenant.into(),
            finished,
            data: Bytes::from(format!("{{\"id\":\"{id}\"}}")),
        }
    }

    #[tokio::test]
    async fn shared_scoped_bounded_and_leased() {
        let server = TestRedis::start();
        let lease = Duration::from_millis(300);
        let a = RedisTasks::new(server.backend("tk:"), lease);
        let b = RedisTasks::new(server.backend("tk:"), lease);
        a.create(task("1", "acme", false), 3).await.unwrap();
        a.create(task("2", "globex", true), 3).await.unwrap();
        assert_eq!(
            b.get("acme", "1").await.unwrap(),
            Some(task("1", "acme", false))
        );
        assert_eq!(b.get("globex", "1").await.unwrap(), None);
        assert!(!b.update(task("1", "globex", true)).await.unwrap());
        // Full: the finished one goes first.
        a.create(task("3", "acme", false), 3).await.unwrap();
        a.create(task("4", "acme", false), 3).await.unwrap();
        let ids = |v: Vec<TaskRecord>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(ids(b.list("acme").await.unwrap()), ["1", "3", "4"]);
        assert_eq!(ids(b.list("globex").await.unwrap()), Vec::<String>::new());
        // A keeps its leases; nothing is orphaned.
        tokio::time::sleep(Duration::from_millis(150)).await;
        a.renew().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(b.orphans().await.unwrap().is_empty());
        // A finishes one and stops renewing (it died): B claims the others once.
        assert!(a.update(task("3", "acme", true)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut claimed = ids(b.orphans().await.unwrap());
        claimed.sort();
        assert_eq!(claimed, ["1", "4"]);
        assert!(a.orphans().await.unwrap().is_empty());
        assert!(b.update(task("1", "acme", true)).await.unwrap());
        // Finished is final: the dead node's late update is refused.
        assert!(!a.update(task("1", "acme", false)).await.unwrap());
        assert!(b.get("acme", "1").await.unwrap().unwrap().finished);
    }
}
