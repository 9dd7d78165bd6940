//! Tasks: the composite operations (reboot, snapshot) run in the background and are polled with
//! `GET /v1/tasks/{id}`. They live in the state's task store (`store::tasks::TaskStore`), not in
//! the runtime, so they survive config reloads; each belongs to a tenant, and another tenant
//! never sees it. At most `facade.max_tasks` are kept: the oldest finished ones are forgotten
//! first.
//!
//! A task is written by one runner only, which holds the task and saves the whole of it after
//! every change (a step begins or ends, the task finishes).

use super::{FacadeError, Orion};
use crate::clock::now_text;
use crate::store::StoreError;
use crate::store::tasks::{TaskRecord, TaskStore};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::macros::format_description;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Running,
    Completed,
    Failed,
}

/// The composite operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Reboot,
    Snapshot,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub status: Status,
    pub started_at: String,
    pub finished_at: Option<String>,
}

/// Why a task failed, as its owner reads it: the keys of the error body (`error`,
/// `error_description`, `details`) and the status the failed call would have had.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    #[serde(rename = "error")]
    pub code: String,
    #[serde(rename = "error_description")]
    pub message: String,
    pub status: u16,
    pub details: Map<String, Value>,
}

/// How a failed step's [`FacadeError`] becomes a [`TaskError`]: the conversion into the error
/// body, which lives in `src/errors/facade.rs` (the facade does not import `errors`), handed in
/// by the caller.
pub type DescribeError = fn(FacadeError) -> TaskError;

/// A task as its owner sees it (`GET /v1/tasks/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub status: Status,
    pub instance_id: String,
    /// The names of the steps that completed, in order.
    pub steps_done: Vec<String>,
    pub steps: Vec<Step>,
    pub result: Option<Value>,
    pub error: Option<TaskError>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

impl Task {
    pub fn is_finished(&self) -> bool {
        matches!(self.status, Status::Completed | Status::Failed)
    }

    fn record(&self, tenant: &str) -> Result<TaskRecord, StoreError> {
        let data = serde_json::to_vec(self).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(TaskRecord {
            id: self.id.clone(),
            tenant: tenant.to_string(),
            finished: self.is_finished(),
            data: Bytes::from(data),
        })
    }

    fn from_record(r: &TaskRecord) -> Result<Task, StoreError> {
        serde_json::from_slice(&r.data)
            .map_err(|e| StoreError::Corrupt(format!("task {}: {e}", r.id)))
    }

    /// The task as JSON (the body of `GET /v1/tasks/{id}`).
    pub fn to_value(&self) -> Value {
        // Serialising strings, numbers and `Value`s cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Adds a new pending task of `tenant` to the store (at most `max` kept).
pub async fn create(
    store: &dyn TaskStore,
    tenant: &str,
    kind: Kind,
    instance_id: &str,
    max: usize,
) -> Result<Task, FacadeError> {
    let now = now_text();
    let task = Task {
        id: uuid::Uuid::new_v4().to_string(),
        kind,
        status: Status::Pending,
        instance_id: instance_id.to_string(),
        steps_done: Vec::new(),
        steps: Vec::new(),
        result: None,
        error: None,
        created_at: now.clone(),
        updated_at: now,
        finished_at: None,
    };
    store.create(task.record(tenant)?, max).await?;
    Ok(task)
}

/// A task as its tenant sees it; another tenant's task does not exist.
pub async fn get(
    store: &dyn TaskStore,
    tenant: &str,
    id: &str,
) -> Result<Option<Task>, FacadeError> {
    match store.get(tenant, id).await? {
        Some(r) => Ok(Some(Task::from_record(&r)?)),
        None => Ok(None),
    }
}

/// A tenant's tasks, oldest first.
pub async fn list(store: &dyn TaskStore, tenant: &str) -> Result<Vec<Task>, FacadeError> {
    store
        .list(tenant)
        .await?
        .iter()
        .map(|r| Task::from_record(r).map_err(FacadeError::from))
        .collect()
}

/// The one writer of a task: holds it and saves the whole task after each change.
pub struct Runner {
    store: Arc<dyn TaskStore>,
    tenant: String,
    task: Task,
    describe: DescribeError,
}

impl Runner {
    pub fn new(
        store: Arc<dyn TaskStore>,
        tenant: &str,
        task: Task,
        describe: DescribeError,
    ) -> Runner {
        Runner {
            store,
            tenant: tenant.to_string(),
            task,
            describe,
        }
    }

    /// Saves the task; a store that fails is logged, and the task goes on (its owner sees the
    /// last state that was saved).
    async fn save(&mut self) {
        self.task.updated_at = now_text();
        let outcome = match self.task.record(&self.tenant) {
            Ok(r) => self.store.update(r).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(true) => {}
            Ok(false) => log::debug!("task {} was forgotten to make room", self.task.id),
            Err(e) => log::warn!("task {}: progress not saved: {e}", self.task.id),
        }
    }

    async fn step_begin(&mut self, name: &str) {
        self.task.status = Status::Running;
        self.task.steps.push(Step {
            name: name.to_string(),
            status: Status::Running,
            started_at: now_text(),
            finished_at: None,
        });
        self.save().await;
    }

    async fn step_end(&mut self, ok: bool) {
        if let Some(s) = self.task.steps.last_mut() {
            s.status = if ok {
                Status::Completed
            } else {
                Status::Failed
            };
            s.finished_at = Some(now_text());
            if ok {
                self.task.steps_done.push(s.name.clone());
            }
        }
        self.save().await;
    }

    async fn finish(&mut self, outcome: Result<Option<Value>, TaskError>) {
        self.task.finished_at = Some(now_text());
        match outcome {
            Ok(result) => {
                self.task.status = Status::Completed;
                self.task.result = result;
            }
            Err(error) => {
                self.task.status = Status::Failed;
                self.task.error = Some(error);
            }
        }
        self.save().await;
    }

    /// One step of a task: its name and its work. A failing step fails the task.
    async fn step<T>(
        &mut self,
        name: &str,
        work: impl std::future::Future<Output = Result<T, TaskError>>,
    ) -> Result<T, TaskError> {
        self.step_begin(name).await;
        let r = work.await;
        self.step_end(r.is_ok()).await;
        r
    }

    /// One call to OrionVM as a step.
    async fn call_step(
        &mut self,
        name: &str,
        orion: &Orion,
        method: http::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, TaskError> {
        let describe = self.describe;
        self.step(name, async {
            orion
                .call(method, path, Some(&body))
                .await
                .map_err(describe)
        })
        .await
    }
}

/// How a task waits for OrionVM.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub timeout: Duration,
    pub poll: Duration,
}

/// Polls `path` until `field` has one of `wanted`; fails after the timeout naming the last state.
async fn wait_for(
    orion: &Orion,
    describe: DescribeError,
    path: &str,
    field: &str,
    wanted: &[&str],
    timing: Timing,
) -> Result<(), TaskError> {
    let deadline = Instant::now() + timing.timeout;
    let mut last = String::from("unknown");
    loop {
        match orion.get(path).await {
            Ok(v) => {
                if let Some(s) = v[field].as_str() {
                    if wanted.contains(&s) {
                        return Ok(());
                    }
                    last = s.to_string();
                }
            }
            Err(FacadeError::Upstream(404, b)) => {
                return Err(describe(FacadeError::Upstream(404, b)));
            }
            // A failed poll is retried until the deadline.
            Err(_) => {}
        }
        if Instant::now() + timing.poll > deadline {
            let mut details = Map::new();
            details.insert(field.to_string(), json!([last]));
            return Err(TaskError {
                code: "transition_timeout".into(),
                message: format!(
                    "{path} did not reach {} within {} ms (last {field}: {last})",
                    wanted.join(" or "),
                    timing.timeout.as_millis()
                ),
                status: 504,
                details,
            });
        }
        tokio::time::sleep(timing.poll).await;
    }
}

/// Reboot: stop, wait until `stopped`, start, wait until `running`.
pub fn spawn_reboot(mut run: Runner, orion: Orion, timing: Timing) {
    tokio::spawn(async move {
        let base = format!("/api/v1/instances/{}", run.task.instance_id);
        let state = format!("{base}/state");
        let describe = run.describe;
        let outcome = async {
            run.call_step(
                "stop",
                &orion,
                http::Method::POST,
                &format!("{base}/stop"),
                json!({}),
            )
            .await?;
            run.step(
                "wait_stopped",
                wait_for(&orion, describe, &state, "state", &["stopped"], timing),
            )
            .await?;
            run.call_step(
                "start",
                &orion,
                http::Method::POST,
                &format!("{base}/start"),
                json!({}),
            )
            .await?;
            run.step(
                "wait_running",
                wait_for(&orion, describe, &state, "state", &["running"], timing),
            )
            .await?;
            Ok(None)
        }
        .await;
        run.finish(outcome).await;
    });
}

/// The states of a disk that is ready: `unattached` is OrionVM's word for a settled disk that
/// no instance holds (the Go client and Packer wait for exactly it); `detached` is kept for
/// answers that use it.
const DISK_SETTLED: &[&str] = &["unattached", "detached", "attached"];

/// Snapshot: clone every disk (named after the instance and the time), wait until the clones
/// are ready.
pub fn spawn_snapshot(
    mut run: Runner,
    orion: Orion,
    disks: Vec<(String, String)>,
    prefix: String,
    timing: Timing,
) {
    tokio::spawn(async move {
        let stamp = OffsetDateTime::now_utc()
            .format(format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap_or_default();
        let describe = run.describe;
        let outcome = async {
            let mut made = Vec::new();
            for (n, (disk_id, disk_name)) in disks.iter().enumerate() {
                let name = format!("{prefix}-{stamp}-{n}");
                let clone = run
                    .call_step(
                        &format!("clone {disk_name}"),
                        &orion,
                        http::Method::POST,
                        &format!("/api/v1/disks/{disk_id}/clone"),
                        json!({"name": name}),
                    )
                    .await?;
                let new_id = clone["id"].as_str().unwrap_or_default().to_string();
                made.push(json!({"source_disk": disk_id, "disk": new_id, "name": name}));
            }
            run.step("wait_clones", async {
                for m in &made {
                    let path = format!("/api/v1/disks/{}", m["disk"].as_str().unwrap_or_default());
                    wait_for(&orion, describe, &path, "state", DISK_SETTLED, timing).await?;
                }
                Ok(())
            })
            .await?;
            Ok(Some(json!({"snapshots": made})))
        }
        .await;
        run.finish(outcome).await;
    });
}

/// Marks failed, with the reason, the tasks whose node died while running them (their lease
/// expired; only a shared task store has leases). Each such task is claimed by one node only.
/// `_describe` is the facade's error conversion, kept for a takeover that would resume steps.
pub async fn sweep_orphans(store: &dyn TaskStore, _describe: DescribeError) {
    let orphans = match store.orphans().await {
        Ok(o) => o,
        Err(e) => {
            log::debug!("tasks of stopped nodes not looked for: {e}");
            return;
        }
    };
    for r in orphans {
        let Ok(mut task) = Task::from_record(&r) else {
            log::warn!("task {}: unreadable record left by a stopped node", r.id);
            continue;
        };
        if task.is_finished() {
            continue;
        }
        let now = now_text();
        for s in task
            .steps
            .iter_mut()
            .filter(|s| s.status == Status::Running)
        {
            s.status = Status::Failed;
            s.finished_at = Some(now.clone());
        }
        let mut details = Map::new();
        details.insert("steps_done".into(), json!(task.steps_done));
        task.status = Status::Failed;
        task.error = Some(TaskError {
            code: "task_abandoned".into(),
            message: "the proxy node that ran this task stopped before it finished (its lease \
                      expired); the instance may be anywhere in the operation: read it before \
                      trying again"
                .into(),
            status: 503,
            details,
        });
        task.finished_at = Some(now.clone());
        task.updated_at = now;
        match task.record(&r.tenant) {
            Ok(rec) => match store.update(rec).await {
                Ok(_) => log::warn!(
                    "task {} of a stopped node marked failed after its lease expired",
                    task.id
                ),
                Err(e) => log::warn!("task {}: not marked failed: {e}", task.id),
            },
            Err(e) => log::warn!("task {}: {e}", task.id),
        }
    }
}
