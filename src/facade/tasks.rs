//! Tasks: the composite operations (reboot, snapshot) run in the background and are polled with
//! `GET /v1/tasks/{id}`. The store is process-wide, outside the runtime, so tasks survive config
//! reloads; each task belongs to a tenant, and another tenant never sees it. At most
//! `facade.max_tasks` are kept: the oldest finished ones are forgotten first.

use super::{FacadeError, Orion};
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::macros::format_description;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Running,
    Completed,
    Failed,
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub name: String,
    pub status: Status,
    pub started_at: String,
    pub finished_at: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Task {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: Status,
    pub instance_id: String,
    /// The names of the steps that completed, in order.
    pub steps_done: Vec<String>,
    pub steps: Vec<Step>,
    pub result: Option<Value>,
    /// `{"error": code, "error_description": text}` when the task failed.
    pub error: Option<Value>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    #[serde(skip)]
    pub tenant: Arc<str>,
}

/// OrionVM's timestamp form: `2016-05-10T03:36:34.615Z`.
pub fn now_text() -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::now_utc()
        .format(&fmt)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

#[derive(Default)]
struct Inner {
    tasks: HashMap<String, Task>,
    order: VecDeque<String>,
}

/// The process-wide task store.
pub struct Store {
    inner: Mutex<Inner>,
}

static STORE: Lazy<Store> = Lazy::new(|| Store {
    inner: Mutex::new(Inner::default()),
});

pub fn store() -> &'static Store {
    &STORE
}

impl Store {
    /// A new pending task of `tenant`; forgets the oldest finished tasks past `max`.
    pub fn create(
        &self,
        tenant: &Arc<str>,
        kind: &'static str,
        instance_id: &str,
        max: usize,
    ) -> Task {
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
            tenant: tenant.clone(),
        };
        let mut inner = self.inner.lock();
        while inner.order.len() >= max.max(1) {
            let victim = inner
                .order
                .iter()
                .position(|id| {
                    inner
                        .tasks
                        .get(id)
                        .is_none_or(|t| matches!(t.status, Status::Completed | Status::Failed))
                })
                .unwrap_or(0);
            if let Some(id) = inner.order.remove(victim) {
                inner.tasks.remove(&id);
            }
        }
        inner.order.push_back(task.id.clone());
        inner.tasks.insert(task.id.clone(), task.clone());
        task
    }

    /// A task as its tenant sees it; another tenant's task does not exist.
    pub fn get(&self, tenant: &str, id: &str) -> Option<Task> {
        self.inner
            .lock()
            .tasks
            .get(id)
            .filter(|t| &*t.tenant == tenant)
            .cloned()
    }

    /// A tenant's tasks, oldest first.
    pub fn list(&self, tenant: &str) -> Vec<Task> {
        let inner = self.inner.lock();
        inner
            .order
            .iter()
            .filter_map(|id| inner.tasks.get(id))
            .filter(|t| &*t.tenant == tenant)
            .cloned()
            .collect()
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Task)) {
        if let Some(t) = self.inner.lock().tasks.get_mut(id) {
            f(t);
            t.updated_at = now_text();
        }
    }

    fn step_begin(&self, id: &str, name: &str) {
        self.update(id, |t| {
            t.status = Status::Running;
            t.steps.push(Step {
                name: name.to_string(),
                status: Status::Running,
                started_at: now_text(),
                finished_at: None,
            });
        });
    }

    fn step_end(&self, id: &str, ok: bool) {
        self.update(id, |t| {
            if let Some(s) = t.steps.last_mut() {
                s.status = if ok {
                    Status::Completed
                } else {
                    Status::Failed
                };
                s.finished_at = Some(now_text());
                if ok {
                    t.steps_done.push(s.name.clone());
                }
            }
        });
    }

    fn finish(&self, id: &str, outcome: Result<Option<Value>, Value>) {
        self.update(id, |t| {
            t.finished_at = Some(now_text());
            match outcome {
                Ok(result) => {
                    t.status = Status::Completed;
                    t.result = result;
                }
                Err(error) => {
                    t.status = Status::Failed;
                    t.error = Some(error);
                }
            }
        });
    }
}

/// How a task waits for OrionVM.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub timeout: Duration,
    pub poll: Duration,
}

/// One step of a task: its name and its work. A failing step fails the task.
async fn step<T>(
    id: &str,
    name: &str,
    work: impl std::future::Future<Output = Result<T, Value>>,
) -> Result<T, Value> {
    store().step_begin(id, name);
    let r = work.await;
    store().step_end(id, r.is_ok());
    r
}

/// The error object of a failed step, from a facade error.
fn error_value(e: FacadeError) -> Value {
    let api: crate::errors::ApiError = e.into();
    json!({"error": api.code, "error_description": api.detail, "status": api.status,
           "details": Value::Object(api.details)})
}

/// Polls `path` until `field` has one of `wanted`; fails after the timeout naming the last state.
async fn wait_for(
    orion: &Orion,
    path: &str,
    field: &str,
    wanted: &[&str],
    timing: Timing,
) -> Result<(), Value> {
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
                return Err(error_value(FacadeError::Upstream(404, b)));
            }
            // A failed poll is retried until the deadline.
            Err(_) => {}
        }
        if Instant::now() + timing.poll > deadline {
            return Err(json!({
                "error": "transition_timeout",
                "error_description": format!(
                    "{path} did not reach {} within {} ms (last {field}: {last})",
                    wanted.join(" or "),
                    timing.timeout.as_millis()
                ),
                "status": 504,
                "details": {field: [last]},
            }));
        }
        tokio::time::sleep(timing.poll).await;
    }
}

/// Reboot: stop, wait until `stopped`, start, wait until `running`.
pub fn spawn_reboot(task: &Task, orion: Orion, timing: Timing) {
    let id = task.id.clone();
    let inst = task.instance_id.clone();
    tokio::spawn(async move {
        let base = format!("/api/v1/instances/{inst}");
        let state = format!("{base}/state");
        let run = async {
            step(&id, "stop", async {
                orion
                    .call(
                        http::Method::POST,
                        &format!("{base}/stop"),
                        Some(&json!({})),
                    )
                    .await
                    .map_err(error_value)
            })
            .await?;
            step(
                &id,
                "wait_stopped",
                wait_for(&orion, &state, "state", &["stopped"], timing),
            )
            .await?;
            step(&id, "start", async {
                orion
                    .call(
                        http::Method::POST,
                        &format!("{base}/start"),
                        Some(&json!({})),
                    )
                    .await
                    .map_err(error_value)
            })
            .await?;
            step(
                &id,
                "wait_running",
                wait_for(&orion, &state, "state", &["running"], timing),
            )
            .await?;
            Ok(None)
        };
        let outcome = run.await;
        store().finish(&id, outcome);
    });
}

/// Snapshot: clone every disk (named after the instance and the time), wait until the clones
/// are ready.
pub fn spawn_snapshot(
    task: &Task,
    orion: Orion,
    disks: Vec<(String, String)>,
    prefix: String,
    timing: Timing,
) {
    let id = task.id.clone();
    tokio::spawn(async move {
        let stamp = OffsetDateTime::now_utc()
            .format(format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap_or_default();
        let run = async {
            let mut made = Vec::new();
            for (n, (disk_id, disk_name)) in disks.iter().enumerate() {
                let name = format!("{prefix}-{stamp}-{n}");
                let clone = step(&id, &format!("clone {disk_name}"), async {
                    orion
                        .call(
                            http::Method::POST,
                            &format!("/api/v1/disks/{disk_id}/clone"),
                            Some(&json!({"name": name})),
                        )
                        .await
                        .map_err(error_value)
                })
                .await?;
                let new_id = clone["id"].as_str().unwrap_or_default().to_string();
                made.push(json!({"source_disk": disk_id, "disk": new_id, "name": name}));
            }
            step(&id, "wait_clones", async {
                for m in &made {
                    let path = format!("/api/v1/disks/{}", m["disk"].as_str().unwrap_or_default());
                    wait_for(&orion, &path, "state", &["unattached", "attached"], timing).await?;
                }
                Ok(())
            })
            .await?;
            Ok(Some(json!({"snapshots": made})))
        };
        let outcome = run.await;
        store().finish(&id, outcome);
    });
}
