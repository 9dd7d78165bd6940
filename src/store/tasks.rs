//! The task store: the facade's background operations (reboot, snapshot), polled by their
//! owner with `GET /v1/tasks/{id}` and kept across config reloads.
//!
//! A task is a serialised record (the facade owns its shape) with what the store needs to know
//! besides: its id, its tenant, and whether it finished. Every read is scoped to a tenant: a
//! task of another tenant does not exist. One writer (the task's runner) updates a task, by id,
//! replacing the whole record, so a shared backend needs no read-modify-write: a Redis backend
//! keeps each record under `tasks:{tenant}:{id}` and the creation order in a sorted set.

use super::StoreError;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// One task as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    pub id: String,
    pub tenant: String,
    /// Finished tasks (completed or failed) are forgotten first when the store is full.
    pub finished: bool,
    /// The task itself, serialised by its owner (JSON).
    pub data: Bytes,
}

/// Where tasks live. Async and fallible: a remote backend can time out.
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Adds a new task. At most `max` tasks are kept: past it the oldest finished tasks are
    /// forgotten first, then the oldest ones. `max` comes from the config in force
    /// (`facade.max_tasks`), which a reload may change.
    async fn create(&self, task: TaskRecord, max: usize) -> Result<(), StoreError>;

    /// Replaces the task with `task.id` of `task.tenant`. `false` when the store no longer has
    /// it (it was forgotten to make room).
    async fn update(&self, task: TaskRecord) -> Result<bool, StoreError>;

    /// The task `id` as `tenant` sees it; another tenant's task is `None`.
    async fn get(&self, tenant: &str, id: &str) -> Result<Option<TaskRecord>, StoreError>;

    /// The tasks of `tenant`, oldest first.
    async fn list(&self, tenant: &str) -> Result<Vec<TaskRecord>, StoreError>;

    /// How long a task's runner may go without renewing it before another node takes it
    /// (`None`: tasks live and die with this process, as in memory).
    fn lease(&self) -> Option<Duration> {
        None
    }

    /// Unfinished tasks whose runner stopped renewing its lease (its node died), now claimed by
    /// this node, which must finish them (the facade marks them failed). Each is returned once.
    async fn orphans(&self) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(Vec::new())
    }
}

#[derive(Default)]
struct Inner {
    tasks: HashMap<String, TaskRecord>,
    /// Ids, oldest first.
    order: VecDeque<String>,
}

/// Tasks in process memory (one node; lost on restart).
#[derive(Default)]
pub struct MemoryTasks {
    inner: Mutex<Inner>,
}

#[async_trait]
impl TaskStore for MemoryTasks {
    async fn create(&self, task: TaskRecord, max: usize) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        while inner.order.len() >= max.max(1) {
            let victim = inner
                .order
                .iter()
                .position(|id| inner.tasks.get(id).is_none_or(|t| t.finished))
                .unwrap_or(0);
            if let Some(id) = inner.order.remove(victim) {
                inner.tasks.remove(&id);
            }
        }
        inner.order.push_back(task.id.clone());
        inner.tasks.insert(task.id.clone(), task);
        Ok(())
    }

    async fn update(&self, task: TaskRecord) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock();
        match inner.tasks.get_mut(&task.id) {
            Some(t) if t.tenant == task.tenant => {
                *t = task;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn get(&self, tenant: &str, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self
            .inner
            .lock()
            .tasks
            .get(id)
            .filter(|t| t.tenant == tenant)
            .cloned())
    }

    async fn list(&self, tenant: &str) -> Result<Vec<TaskRecord>, StoreError> {
        let inner = self.inner.lock();
        Ok(inner
            .order
            .iter()
            .filter_map(|id| inner.tasks.get(id))
            .filter(|t| t.tenant == tenant)
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
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
    async fn scoped_to_the_tenant() {
        let s = MemoryTasks::default();
        s.create(task("1", "acme", false), 10).await.unwrap();
        s.create(task("2", "globex", false), 10).await.unwrap();
        s.create(task("3", "acme", false), 10).await.unwrap();
        assert_eq!(
            s.get("acme", "1").await.unwrap(),
            Some(task("1", "acme", false))
        );
        assert_eq!(s.get("globex", "1").await.unwrap(), None);
        let ids: Vec<String> = s
            .list("acme")
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, ["1", "3"]);
        // Another tenant cannot overwrite it by id either.
        assert!(!s.update(task("1", "globex", true)).await.unwrap());
        assert!(!s.get("acme", "1").await.unwrap().unwrap().finished);
        assert!(s.update(task("1", "acme", true)).await.unwrap());
        assert!(s.get("acme", "1").await.unwrap().unwrap().finished);
    }

    #[tokio::test]
    async fn full_store_forgets_the_oldest_finished_first() {
        let s = MemoryTasks::default();
        s.create(task("a", "t", false), 3).await.unwrap();
        s.create(task("b", "t", true), 3).await.unwrap();
        s.create(task("c", "t", false), 3).await.unwrap();
        s.create(task("d", "t", false), 3).await.unwrap();
        let ids = |v: Vec<TaskRecord>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(ids(s.list("t").await.unwrap()), ["a", "c", "d"]);
        // Nothing finished: the oldest goes; its runner's updates are then refused.
        s.create(task("e", "t", false), 3).await.unwrap();
        assert_eq!(ids(s.list("t").await.unwrap()), ["c", "d", "e"]);
        assert!(!s.update(task("a", "t", true)).await.unwrap());
        // A smaller cap after a reload applies at the next create.
        s.create(task("f", "t", false), 2).await.unwrap();
        assert_eq!(ids(s.list("t").await.unwrap()), ["e", "f"]);
    }
}
