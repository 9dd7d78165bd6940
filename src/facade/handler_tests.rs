//! The facade's decisions without a proxy process: each handler runs against an in-process
//! OrionVM simulator on 127.0.0.1:0, with the shipped route table, a memory task store, and
//! the request as the proxy would describe it ([`RequestView`]).

use super::tasks::{self, Status, TaskError};
use super::{Body, Env, FacadeError, answer};
use crate::config::model::FacadeConfig;
use crate::request::{Decision, Reply, RequestView};
use crate::routes::{Match, RouteTable};
use crate::store::StoreError;
use crate::store::tasks::{MemoryTasks, TaskRecord, TaskStore};
use crate::upstream::{Tenant, UpstreamState, Upstreams};
use async_trait::async_trait;
use orion_sim::{self as sim, SimHandle, SimOptions};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The seeded instances of the simulator's first account (`orionvm-v1-examples.json`).
const WEB_1: &str = "3b0c2f6e-1111-4222-8333-944455556666";

/// A test's world: OrionVM, the tenants that reach it, the routes and the task store.
struct World {
    sim: SimHandle,
    upstreams: Upstreams,
    routes: RouteTable,
    tasks: Arc<dyn TaskStore>,
    config: FacadeConfig,
    _dir: tempfile::TempDir,
}

/// Without `errors` (the facade does not import it): the code and status are enough here.
fn describe(e: FacadeError) -> TaskError {
    let (code, status) = match &e {
        FacadeError::Upstream(s, _) => ("upstream", *s),
        FacadeError::Call(_) => ("call", 502),
        _ => ("other", 500),
    };
    TaskError {
        code: code.into(),
        message: format!("{e:?}"),
        status,
        details: Default::default(),
    }
}

impl World {
    /// Two tenants, `acme` and `globex`, on the simulator's one account.
    async fn start() -> World {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = sim::start(listener, SimOptions::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "sim-static-token").unwrap();
        let yaml = format!(
            "accounts:\n  orion:\n    endpoints: [{{url: \"{}\"}}]\n    \
             credentials: {{type: static_token, token: {{file: \"{}\"}}}}\n\
             tenants:\n  acme: {{account: orion}}\n  globex: {{account: orion}}\n",
            sim.url(),
            token.display()
        );
        let config = crate::config::parse(&yaml).unwrap();
        let upstreams = Upstreams::build(&config, &UpstreamState::default()).unwrap();
        let defaults = crate::config::defaults().unwrap();
        let mut registry = crate::auth::permissions::PermissionRegistry::default();
        let routes = RouteTable::build(&defaults.routes, &mut registry).unwrap();
        World {
            sim,
            upstreams,
            routes,
            tasks: Arc::new(MemoryTasks::default()),
            config: FacadeConfig {
                transition_timeout_ms: 10_000,
                poll_interval_ms: 20,
                max_tasks: 100,
            },
            _dir: dir,
        }
    }

    fn tenant(&self, name: &str) -> &Arc<Tenant> {
        &self.upstreams.tenants[name]
    }

    fn env(&self) -> Env<'_> {
        Env {
            config: &self.config,
            routes: self.routes.routes(),
            tasks: &self.tasks,
            describe,
            changed: None,
            trace: None,
        }
    }

    /// What the facade decides about `method target` (path and query) with `body`, as `tenant`.
    async fn ask(
        &self,
        tenant: &str,
        method: &str,
        target: &str,
        body: Option<Value>,
    ) -> Decision<FacadeError> {
        let method: http::Method = method.parse().unwrap();
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let (route, params) = match self.routes.find(&method, path) {
            Match::Found(r, p) => (r.clone(), p),
            _ => panic!("no route for {method} {path}"),
        };
        let headers = http::HeaderMap::new();
        let bytes = body.map(|b| b.to_string().into_bytes());
        let view = RequestView {
            method: &method,
            path,
            query,
            headers: &headers,
            route: Some(&route),
            params: &params,
            principal: None,
            tenant: Some(self.tenant(tenant)),
            client_ip: None,
            request_id: "test-request",
        };
        let body = Body {
            bytes: bytes.as_deref(),
            validated: None,
        };
        let env = self.env();
        answer(view, body, &env).await
    }

    /// The reply of a decision that must be one.
    async fn reply(&self, method: &str, target: &str, body: Option<Value>) -> (Reply, Value) {
        match self.ask("acme", method, target, body).await {
            Decision::Reply(r) => {
                let v = serde_json::from_slice(&r.body).unwrap();
                (r, v)
            }
            Decision::Fail(e) => panic!("{method} {target}: {e:?}"),
            Decision::Continue => panic!("{method} {target}: not answered"),
        }
    }

    async fn fail(&self, method: &str, target: &str, body: Option<Value>) -> FacadeError {
        match self.ask("acme", method, target, body).await {
            Decision::Fail(e) => e,
            Decision::Reply(r) => panic!("{method} {target}: answered {}", r.status),
            Decision::Continue => panic!("{method} {target}: not answered"),
        }
    }

    /// Makes an instance with the facade's create (region code, template slug).
    async fn create(&self, name: &str, memory: u64, region: &str, template: &str) -> String {
        let (r, v) = self
            .reply(
                "POST",
                "/v1/instances",
                Some(json!({"name": name, "memory": memory, "region": region,
                            "template": template})),
            )
            .await;
        assert_eq!(r.status, 201, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        assert_eq!(header(&r, "location"), Some(format!("/v1/instances/{id}")));
        id
    }

    /// Waits until OrionVM says `id` is in `state`.
    async fn wait_state(&self, id: &str, state: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, v) = self
                .reply("GET", &format!("/v1/instances/{id}"), None)
                .await;
            if v["state"] == state {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id} never reached {state} (last {})",
                v["state"]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn calls(&self, method: &str, route: &str) -> u64 {
        self.sim.calls().count(method, route)
    }

    /// The JSON bodies of the PUTs OrionVM received since the last reset, with their paths.
    fn puts(&self) -> Vec<(String, Value)> {
        self.sim
            .recent_requests()
            .into_iter()
            .filter(|r| r.method == "PUT")
            .map(|r| (r.path, serde_json::from_str(&r.body).unwrap()))
            .collect()
    }
}

fn header(r: &Reply, name: &str) -> Option<String> {
    r.headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.clone())
}

fn names(items: &Value) -> Vec<&str> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_filter_and_sort_orionvms_list() {
    let w = World::start().await;
    // Seeded: web-1 (2048 MB, SY3, running) and worker-1 (4096 MB, ME2, stopped).
    w.create("a-small", 1024, "SY3", "ubuntu-22-04").await;
    w.create("z-big", 8192, "sy3", "ubuntu-22-04").await;

    let (r, v) = w
        .reply("GET", "/v1/instances?region=SY3&sort=-memory", None)
        .await;
    assert_eq!(names(&v["items"]), ["z-big", "web-1", "a-small"]);
    assert_eq!(
        (v["total"].as_u64(), v["limit"].as_u64()),
        (Some(3), Some(50))
    );
    assert_eq!(header(&r, "x-total-count").as_deref(), Some("3"));

    let (r, v) = w
        .reply("GET", "/v1/instances?sort=name&limit=2&offset=1", None)
        .await;
    assert_eq!(names(&v["items"]), ["web-1", "worker-1"]);
    assert_eq!(
        (v["total"].as_u64(), v["offset"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(
        header(&r, "link").unwrap(),
        "</v1/instances?sort=name&limit=2&offset=0>; rel=\"first\", \
         </v1/instances?sort=name&limit=2&offset=0>; rel=\"prev\", \
         </v1/instances?sort=name&limit=2&offset=3>; rel=\"next\", \
         </v1/instances?sort=name&limit=2&offset=2>; rel=\"last\""
    );

    let (_, v) = w
        .reply("GET", "/v1/instances?page=2&per_page=3&sort=memory", None)
        .await;
    assert_eq!(names(&v["items"]), ["z-big"]);
    let (_, v) = w
        .reply("GET", "/v1/instances?memory_min=2048&state=running", None)
        .await;
    assert_eq!(names(&v["items"]), ["web-1"]);

    // A wrong parameter is refused before OrionVM is asked.
    let before = w.calls("GET", "/api/v1/instances");
    match w.fail("GET", "/v1/instances?colour=red", None).await {
        FacadeError::BadParameter { name, .. } => assert_eq!(name, "colour"),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.calls("GET", "/api/v1/instances"), before);

    // The mirror's list, asked to shape: still a bare array, with the headers.
    let (r, v) = w
        .reply("GET", "/api/v1/instances?sort=-name&limit=1", None)
        .await;
    assert_eq!(names(&v), ["z-big"]);
    assert_eq!(header(&r, "x-total-count").as_deref(), Some("4"));
    // Without list parameters the mirror is not the facade's: OrionVM answers untouched.
    let before = w.calls("GET", "/api/v1/instances");
    assert!(
        w.ask("acme", "GET", "/api/v1/instances", None)
            .await
            .is_continue()
    );
    assert!(
        w.ask("acme", "GET", &format!("/api/v1/instances/{WEB_1}"), None)
            .await
            .is_continue()
    );
    assert_eq!(w.calls("GET", "/api/v1/instances"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_transitions_are_409_before_any_change_reaches_orionvm() {
    let w = World::start().await;
    let web = format!("/v1/instances/{WEB_1}");
    match w.fail("POST", &format!("{web}/poweron"), None).await {
        FacadeError::InvalidState {
            action,
            state,
            allowed,
            retry_after,
        } => {
            assert_eq!(
                (action, state.as_str(), retry_after),
                ("poweron", "running", None)
            );
            assert_eq!(
                allowed,
                ["poweroff", "reboot", "snapshot", "patch", "delete"]
            );
        }
        other => panic!("{other:?}"),
    }
    // Memory changes only while stopped.
    match w.fail("PATCH", &web, Some(json!({"memory": 4096}))).await {
        FacadeError::InvalidState { state, .. } => assert_eq!(state, "running"),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.calls("POST", "/api/v1/instances/{id}/start"), 0);
    assert_eq!(w.calls("PUT", "/api/v1/instances/{id}"), 0);

    // Stop it: allowed; once stopped, a second poweroff is refused and nothing more is sent.
    let (r, v) = w.reply("POST", &format!("{web}/poweroff"), None).await;
    assert_eq!(r.status, 202, "{v}");
    assert_eq!(w.calls("POST", "/api/v1/instances/{id}/stop"), 1);
    w.wait_state(WEB_1, "stopped").await;
    match w.fail("POST", &format!("{web}/poweroff"), None).await {
        FacadeError::InvalidState { state, .. } => assert_eq!(state, "stopped"),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.calls("POST", "/api/v1/instances/{id}/stop"), 1);
    // A reboot needs a running instance: refused before a task exists.
    match w.fail("POST", &format!("{web}/reboot"), None).await {
        FacadeError::InvalidState { action, state, .. } => {
            assert_eq!((action, state.as_str()), ("reboot", "stopped"))
        }
        other => panic!("{other:?}"),
    }
    assert!(w.tasks.list("acme").await.unwrap().is_empty());
    assert_eq!(w.calls("POST", "/api/v1/instances/{id}/stop"), 1);
    // An id that is not a UUID is not found, without a call.
    let before = w.sim.calls().api_calls();
    assert!(matches!(
        w.fail("POST", "/v1/instances/not-a-uuid/poweron", None)
            .await,
        FacadeError::NotFound("instance", _)
    ));
    assert_eq!(w.sim.calls().api_calls(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_merges_onto_the_puts_that_changed() {
    let w = World::start().await;
    let id = w.create("db-1", 1024, "SY3", "ubuntu-22-04").await;
    w.wait_state(&id, "stopped").await;
    let path = format!("/v1/instances/{id}");
    let (_, before) = w.reply("GET", &path, None).await;

    // A member that keeps its value is not sent; changed scalars go in one PUT on the instance,
    // each changed list in the PUT of its own resource (keys by name become ids).
    w.sim.reset_calls();
    let (r, v) = w
        .reply(
            "PATCH",
            &path,
            Some(json!({"name": "db-2", "memory": 2048,
                        "start_on_crash": before["start_on_crash"], "public_keys": ["ops"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{v}");
    let key_id = "6b7c8d9e-0f1a-4b2c-8d3e-4f5a6b7c8d9e";
    assert_eq!(
        w.puts(),
        [
            (
                format!("/api/v1/instances/{id}"),
                json!({"name": "db-2", "memory": 2048})
            ),
            (
                format!("/api/v1/instances/{id}/public_keys"),
                json!({"public_keys": [key_id]})
            ),
        ]
    );
    assert_eq!(
        (v["name"].as_str(), v["memory"].as_u64()),
        (Some("db-2"), Some(2048))
    );

    // Nothing changes: no PUT at all, the instance as it is.
    w.sim.reset_calls();
    let (r, v) = w
        .reply(
            "PATCH",
            &path,
            Some(json!({"name": "db-2", "public_keys": [key_id]})),
        )
        .await;
    assert_eq!((r.status, v["name"].as_str()), (200, Some("db-2")));
    assert!(w.puts().is_empty());

    // null empties a list, cannot remove a scalar; an unknown key is named. No PUT is sent
    // while any member is wrong.
    match w
        .fail(
            "PATCH",
            &path,
            Some(json!({"name": null, "public_keys": ["nope"]})),
        )
        .await
    {
        FacadeError::Invalid(list) => {
            let paths: Vec<&str> = list.iter().map(|(p, _)| p.as_str()).collect();
            assert_eq!(paths, ["name", "public_keys[0]"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(w.puts().is_empty());
    w.sim.reset_calls();
    w.reply("PATCH", &path, Some(json!({"public_keys": null})))
        .await;
    assert_eq!(
        w.puts(),
        [(
            format!("/api/v1/instances/{id}/public_keys"),
            json!({"public_keys": []})
        )]
    );
}

/// Polls the store until the task is finished.
async fn finished(w: &World, tenant: &str, id: &str) -> tasks::Task {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let t = tasks::get(&*w.tasks, tenant, id).await.unwrap().unwrap();
        if t.is_finished() {
            return t;
        }
        assert!(std::time::Instant::now() < deadline, "{t:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_is_a_task_of_its_tenant_that_records_its_progress() {
    let w = World::start().await;
    let (r, v) = w
        .reply("POST", &format!("/v1/instances/{WEB_1}/reboot"), None)
        .await;
    assert_eq!(r.status, 202);
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(header(&r, "location"), Some(format!("/v1/tasks/{id}")));
    assert_eq!(
        (v["type"].as_str(), v["instance_id"].as_str()),
        (Some("reboot"), Some(WEB_1))
    );
    assert_eq!(v["status"], "pending");

    // The runner saves each step in the store, then the outcome.
    let done = finished(&w, "acme", &id).await;
    assert_eq!(done.status, Status::Completed, "{done:?}");
    assert_eq!(
        done.steps_done,
        ["stop", "wait_stopped", "start", "wait_running"]
    );
    assert!(
        done.steps
            .iter()
            .all(|s| s.status == Status::Completed && s.finished_at.is_some())
    );
    assert!(done.error.is_none() && done.finished_at.is_some());
    assert_eq!(w.calls("POST", "/api/v1/instances/{id}/stop"), 1);
    assert_eq!(w.calls("POST", "/api/v1/instances/{id}/start"), 1);

    // Its tenant reads it through the handlers; the other tenant does not see it.
    let (_, got) = w.reply("GET", &format!("/v1/tasks/{id}"), None).await;
    assert_eq!(
        (got["status"].as_str(), got["id"].as_str()),
        (Some("completed"), Some(id.as_str()))
    );
    let (r, list) = w.reply("GET", "/v1/tasks?type=reboot", None).await;
    assert_eq!(list["total"], 1);
    assert_eq!(header(&r, "x-total-count").as_deref(), Some("1"));
    match w
        .ask("globex", "GET", &format!("/v1/tasks/{id}"), None)
        .await
    {
        Decision::Fail(FacadeError::NotFound("task", _)) => {}
        other => panic!("{other:?}"),
    }
    match w.ask("globex", "GET", "/v1/tasks", None).await {
        Decision::Reply(r) => {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["total"], 0);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_clones_every_disk_and_waits_for_the_clones() {
    let w = World::start().await;
    let (r, v) = w
        .reply(
            "POST",
            &format!("/v1/instances/{WEB_1}/snapshot"),
            Some(json!({"name": "nightly"})),
        )
        .await;
    assert_eq!((r.status, v["type"].as_str()), (202, Some("snapshot")));
    let done = finished(&w, "acme", v["id"].as_str().unwrap()).await;
    assert_eq!(done.status, Status::Completed, "{done:?}");
    let snaps = done.result.unwrap()["snapshots"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(snaps.len(), 1);
    assert!(snaps[0]["name"].as_str().unwrap().starts_with("nightly-"));
    assert_eq!(w.calls("POST", "/api/v1/disks/{id}/clone"), 1);
}

/// A task store whose backend is gone.
struct Gone;

#[async_trait]
impl TaskStore for Gone {
    async fn create(&self, _: TaskRecord, _: usize) -> Result<(), StoreError> {
        Err(StoreError::Timeout)
    }
    async fn update(&self, _: TaskRecord) -> Result<bool, StoreError> {
        Err(StoreError::Timeout)
    }
    async fn get(&self, _: &str, _: &str) -> Result<Option<TaskRecord>, StoreError> {
        Err(StoreError::Timeout)
    }
    async fn list(&self, _: &str) -> Result<Vec<TaskRecord>, StoreError> {
        Err(StoreError::Timeout)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_store_refuses_before_orionvm_is_changed() {
    let mut w = World::start().await;
    w.tasks = Arc::new(Gone);
    assert!(matches!(
        w.fail("POST", &format!("/v1/instances/{WEB_1}/reboot"), None)
            .await,
        FacadeError::Store(StoreError::Timeout)
    ));
    assert_eq!(w.calls("POST", "/api/v1/instances/{id}/stop"), 0);
    assert!(matches!(
        w.fail("GET", "/v1/tasks", None).await,
        FacadeError::Store(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_document_describes_the_routes_in_force() {
    let w = World::start().await;
    let (r, doc) = w.reply("GET", "/openapi.json", None).await;
    assert_eq!(r.status, 200);
    assert!(doc["paths"]["/v1/instances/{id}/reboot"]["post"].is_object());
    assert_eq!(w.sim.calls().api_calls(), 0);
}
