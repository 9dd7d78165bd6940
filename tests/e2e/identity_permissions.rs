//! Roles against operations: every demo role (viewer, operator, admin) against every mirror
//! and facade operation, expected 2xx or 403 (naming the permission, with OrionVM never called); the
//! admin listener for admins only. Tenant isolation: one tenant cannot read, change or delete
//! another's instance, through the mirror or the facade, whatever the credential (API key,
//! issued token), because its calls go out under its own OrionVM account.

use crate::harness::identity::*;
use crate::harness::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

/// One operation and who may run it, written out by hand (not read from the config), so that
/// a change to the shipped roles or routes shows up here.
struct Op {
    route: &'static str,
    method: Method,
    permission: &'static str,
    viewer: bool,
    operator: bool,
    admin: bool,
}

const Y: bool = true;
const N: bool = false;

fn ops() -> Vec<Op> {
    let op = |route, method, permission, viewer, operator, admin| Op {
        route,
        method,
        permission,
        viewer,
        operator,
        admin,
    };
    use Method as M;
    vec![
        op("instances.list", M::GET, "instances:read", Y, Y, Y),
        op("instances.create", M::POST, "instances:write", N, N, Y),
        op("instances.assemble", M::POST, "instances:write", N, N, Y),
        op("instances.get", M::GET, "instances:read", Y, Y, Y),
        op("instances.update", M::PUT, "instances:write", N, N, Y),
        op("instances.delete", M::DELETE, "instances:delete", N, N, Y),
        op("instances.state", M::GET, "instances:read", Y, Y, Y),
        op("instances.start", M::POST, "instances:power", N, Y, Y),
        op("instances.stop", M::POST, "instances:power", N, Y, Y),
        op("instances.set_disks", M::PUT, "instances:write", N, N, Y),
        op(
            "instances.set_public_keys",
            M::PUT,
            "instances:write",
            N,
            N,
            Y,
        ),
        op(
            "instances.set_network_adapters",
            M::PUT,
            "instances:write",
            N,
            N,
            Y,
        ),
        op(
            "instances.set_availability_group",
            M::PUT,
            "instances:write",
            N,
            N,
            Y,
        ),
        op("instances.context.get", M::GET, "instances:read", Y, Y, Y),
        op(
            "instances.context.create",
            M::POST,
            "instances:write",
            N,
            N,
            Y,
        ),
        op(
            "instances.context.update",
            M::PUT,
            "instances:write",
            N,
            N,
            Y,
        ),
        op(
            "instances.context.delete",
            M::DELETE,
            "instances:write",
            N,
            N,
            Y,
        ),
        op("instances.note", M::GET, "instances:read", Y, Y, Y),
        op("instances.remote_access", M::POST, "console:write", N, Y, Y),
        op("console_sessions.get", M::GET, "console:read", Y, Y, Y),
        op("disks.list", M::GET, "disks:read", Y, Y, Y),
        op("disks.create", M::POST, "disks:write", N, N, Y),
        op("disks.get", M::GET, "disks:read", Y, Y, Y),
        op("disks.update", M::PUT, "disks:write", N, N, Y),
        op("disks.delete", M::DELETE, "disks:delete", N, N, Y),
        op("disks.state", M::GET, "disks:read", Y, Y, Y),
        op("disks.resize", M::POST, "disks:write", N, N, Y),
        op("disks.clone", M::POST, "disks:write", N, N, Y),
        op("ip_addresses.list", M::GET, "network:read", Y, Y, Y),
        op("ip_addresses.public", M::GET, "network:read", Y, Y, Y),
        op("ip_addresses.private", M::GET, "network:read", Y, Y, Y),
        op("ip_addresses.create", M::POST, "network:write", N, N, Y),
        op("ip_addresses.get", M::GET, "network:read", Y, Y, Y),
        op("ip_addresses.delete", M::DELETE, "network:delete", N, N, Y),
        op("networks.list", M::GET, "network:read", Y, Y, Y),
        op("networks.public", M::GET, "network:read", Y, Y, Y),
        op("networks.private", M::GET, "network:read", Y, Y, Y),
        op("networks.create", M::POST, "network:write", N, N, Y),
        op("networks.get", M::GET, "network:read", Y, Y, Y),
        op("networks.delete", M::DELETE, "network:delete", N, N, Y),
        op(
            "performance_tiers.instances",
            M::GET,
            "catalog:read",
            Y,
            Y,
            Y,
        ),
        op("performance_tiers.disks", M::GET, "catalog:read", Y, Y, Y),
        op("regions.list", M::GET, "catalog:read", Y, Y, Y),
        op("regions.get", M::GET, "catalog:read", Y, Y, Y),
        op("templates.list", M::GET, "catalog:read", Y, Y, Y),
        op("templates.get", M::GET, "catalog:read", Y, Y, Y),
        op("public_keys.list", M::GET, "keys:read", Y, Y, Y),
        op("public_keys.create", M::POST, "keys:write", N, N, Y),
        op("public_keys.get", M::GET, "keys:read", Y, Y, Y),
        op("public_keys.delete", M::DELETE, "keys:delete", N, N, Y),
        // The REST facade.
        op("facade.instances.list", M::GET, "instances:read", Y, Y, Y),
        op(
            "facade.instances.create",
            M::POST,
            "instances:write",
            N,
            N,
            Y,
        ),
        op("facade.instances.get", M::GET, "instances:read", Y, Y, Y),
        op(
            "facade.instances.patch",
            M::PATCH,
            "instances:write",
            N,
            N,
            Y,
        ),
        op(
            "facade.instances.delete",
            M::DELETE,
            "instances:delete",
            N,
            N,
            Y,
        ),
        op(
            "facade.instances.poweron",
            M::POST,
            "instances:power",
            N,
            Y,
            Y,
        ),
        op(
            "facade.instances.poweroff",
            M::POST,
            "instances:power",
            N,
            Y,
            Y,
        ),
        op(
            "facade.instances.reboot",
            M::POST,
            "instances:power",
            N,
            Y,
            Y,
        ),
        op("facade.instances.snapshot", M::POST, "disks:write", N, N, Y),
        op("facade.tasks.list", M::GET, "tasks:read", Y, Y, Y),
        op("facade.tasks.get", M::GET, "tasks:read", Y, Y, Y),
    ]
}

/// Path and body for an operation. With `real`, fixtures are made first (with the admin key)
/// so that OrionVM accepts the call; without, the call must be refused before OrionVM.
/// The requests OrionVM received since its call total was `total`, oldest first. The total and
/// the recent requests are read until they agree (calls may arrive in between: background tasks).
async fn calls_since(h: &Harness, total: u64) -> Vec<orion_sim::RecordedRequest> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let t1 = h.sim.calls().total;
        let recent = h.sim.recent_requests();
        if h.sim.calls().total == t1 {
            let new = usize::try_from(t1 - total).unwrap();
            assert!(
                new <= recent.len(),
                "{new} calls since the mark, more than the simulator keeps"
            );
            return recent[recent.len() - new..].to_vec();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "OrionVM's calls never settled long enough to be read"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether request id `a` was issued no later than `b` (request ids are ULIDs: their first part
/// is the millisecond they were made).
fn earlier_id(a: &str, b: &str) -> bool {
    let ms = |id: &str| ulid::Ulid::from_string(id).map(|u| u.timestamp_ms());
    matches!((ms(a), ms(b)), (Ok(a), Ok(b)) if a <= b)
}

async fn prepare(h: &Harness, route: &str, real: bool, n: usize) -> (String, Option<Value>) {
    let ex = examples();
    let admin = h.key("admin");
    let disk_id = ex["disk"]["id"].as_str().unwrap().to_string();
    let net = ex["network"]["id"].as_str().unwrap().to_string();
    let ip = ex["ip_address"]["id"].as_str().unwrap().to_string();
    let key = ex["public_key"]["id"].as_str().unwrap().to_string();
    let fake = "00000000-0000-4000-8000-000000000000".to_string();
    let i = |suffix: &str| format!("/api/v1/instances/{WEB1}{suffix}");
    let fresh_instance = || async {
        if real {
            assemble(h, admin, &format!("perm-{n}")).await["id"]
                .as_str()
                .unwrap()
                .to_string()
        } else {
            fake.clone()
        }
    };
    let fresh_disk_id = || async {
        if real {
            fresh_disk(h, admin, &format!("perm-disk-{n}")).await
        } else {
            fake.clone()
        }
    };
    let created = |path: &'static str, body: Value| async move {
        if real {
            ok_json(h.post(admin, path, body).await).await["id"]
                .as_str()
                .unwrap()
                .to_string()
        } else {
            "00000000-0000-4000-8000-000000000000".to_string()
        }
    };
    match route {
        "instances.list" => ("/api/v1/instances".into(), None),
        "instances.create" => {
            let mut b = ex["create_basic_request"].clone();
            b["name"] = json!(format!("perm-basic-{n}"));
            b["start_when_ready"] = json!(false);
            ("/api/v1/instances".into(), Some(b))
        }
        "instances.assemble" => {
            let mut b = ex["assemble_request"].clone();
            b["name"] = json!(format!("perm-asm-{n}"));
            b["disks"] = json!([fresh_disk_id().await]);
            b["ip_addresses"] = json!([]);
            ("/api/v1/instances/assemble".into(), Some(b))
        }
        "instances.get" => (i(""), None),
        "instances.update" => (i(""), Some(json!({"name": "web-1"}))),
        "instances.delete" => (
            format!("/api/v1/instances/{}", fresh_instance().await),
            None,
        ),
        "instances.state" => (i("/state"), None),
        "instances.start" => (
            format!("/api/v1/instances/{}/start", fresh_instance().await),
            Some(json!({})),
        ),
        "instances.stop" => {
            let id = fresh_instance().await;
            if real {
                ok_json(
                    h.post(admin, &format!("/api/v1/instances/{id}/start"), json!({}))
                        .await,
                )
                .await;
                wait_state(h, admin, &id, "running").await;
            }
            (format!("/api/v1/instances/{id}/stop"), Some(json!({})))
        }
        "instances.set_disks" => {
            let id = fresh_instance().await;
            let boot = if real {
                ok_json(h.get(admin, &format!("/api/v1/instances/{id}")).await).await["disks"][0]
                    ["id"]
                    .clone()
            } else {
                json!(fake)
            };
            (
                format!("/api/v1/instances/{id}/disks"),
                Some(json!({"disks": [boot]})),
            )
        }
        "instances.set_public_keys" => (
            format!("/api/v1/instances/{}/public_keys", fresh_instance().await),
            Some(json!({"public_keys": [key]})),
        ),
        "instances.set_network_adapters" => {
            let id = fresh_instance().await;
            let new_ip = created(
                "/api/v1/ip_addresses",
                json!({"network": net, "name": format!("perm-ip-{n}")}),
            )
            .await;
            (
                format!("/api/v1/instances/{id}/network_adapters"),
                Some(json!({"network_adapters": [{"network": net, "ip_addresses": [new_ip]}]})),
            )
        }
        "instances.set_availability_group" => (
            format!(
                "/api/v1/instances/{}/availability_group",
                fresh_instance().await
            ),
            Some(json!({"availability_group": [WEB1]})),
        ),
        "instances.context.get" => (i("/context"), None),
        "instances.context.create" => (
            i("/context"),
            Some(json!({"key": format!("k{n}"), "value": "v"})),
        ),
        "instances.context.update" => (i("/context"), Some(json!({"a": "1", "b": "2"}))),
        "instances.context.delete" => {
            if real {
                ok_json(
                    h.post(admin, &i("/context"), json!({"key": "gone", "value": "x"}))
                        .await,
                )
                .await;
            }
            (i("/context/gone"), None)
        }
        "instances.note" => (i("/note"), None),
        "instances.remote_access" => (i("/remote_access"), Some(json!({"type": "vnc"}))),
        "console_sessions.get" => {
            let sid = if real {
                ok_json(
                    h.post(admin, &i("/remote_access"), json!({"type": "vnc"}))
                        .await,
                )
                .await["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            } else {
                fake.clone()
            };
            (format!("/api/v1/console_sessions/{sid}"), None)
        }
        "disks.list" => ("/api/v1/disks".into(), None),
        "disks.create" => {
            let mut b = ex["disk_create_request"].clone();
            b["name"] = json!(format!("perm-data-{n}"));
            ("/api/v1/disks".into(), Some(b))
        }
        "disks.get" => (format!("/api/v1/disks/{disk_id}"), None),
        "disks.update" => (
            format!("/api/v1/disks/{disk_id}"),
            Some(json!({"name": "web-1-boot"})),
        ),
        "disks.delete" => (format!("/api/v1/disks/{}", fresh_disk_id().await), None),
        "disks.state" => (format!("/api/v1/disks/{disk_id}/state"), None),
        "disks.resize" => (
            format!("/api/v1/disks/{}/resize", fresh_disk_id().await),
            Some(json!({"size": 80})),
        ),
        "disks.clone" => (
            format!("/api/v1/disks/{}/clone", fresh_disk_id().await),
            Some(json!({"name": format!("perm-clone-{n}")})),
        ),
        "ip_addresses.list" => ("/api/v1/ip_addresses".into(), None),
        "ip_addresses.public" => ("/api/v1/ip_addresses/public".into(), None),
        "ip_addresses.private" => ("/api/v1/ip_addresses/private".into(), None),
        "ip_addresses.create" => (
            "/api/v1/ip_addresses".into(),
            Some(json!({"network": net, "name": format!("perm-spare-{n}")})),
        ),
        "ip_addresses.get" => (format!("/api/v1/ip_addresses/{ip}"), None),
        "ip_addresses.delete" => {
            let id = created(
                "/api/v1/ip_addresses",
                json!({"network": net, "name": format!("perm-del-{n}")}),
            )
            .await;
            (format!("/api/v1/ip_addresses/{id}"), None)
        }
        "networks.list" => ("/api/v1/networks".into(), None),
        "networks.public" => ("/api/v1/networks/public".into(), None),
        "networks.private" => ("/api/v1/networks/private".into(), None),
        "networks.create" => (
            "/api/v1/networks".into(),
            Some(
                json!({"name": format!("perm-net-{n}"), "region": ex["region"]["id"],
                        "specification": "10.97.0.0/24"}),
            ),
        ),
        "networks.get" => (format!("/api/v1/networks/{net}"), None),
        "networks.delete" => {
            let id = created(
                "/api/v1/networks",
                json!({"name": format!("perm-gone-{n}"), "region": ex["region"]["id"],
                       "specification": "10.96.0.0/24"}),
            )
            .await;
            (format!("/api/v1/networks/{id}"), None)
        }
        "performance_tiers.instances" => ("/api/v1/performance_tiers/instances".into(), None),
        "performance_tiers.disks" => ("/api/v1/performance_tiers/disks".into(), None),
        "regions.list" => ("/api/v1/regions".into(), None),
        "regions.get" => (
            format!("/api/v1/regions/{}", ex["region"]["id"].as_str().unwrap()),
            None,
        ),
        "templates.list" => ("/api/v1/templates".into(), None),
        "templates.get" => (
            format!(
                "/api/v1/templates/{}",
                ex["template"]["id"].as_str().unwrap()
            ),
            None,
        ),
        "public_keys.list" => ("/api/v1/public_keys".into(), None),
        "public_keys.create" => (
            "/api/v1/public_keys".into(),
            Some(json!({"name": format!("perm-key-{n}"),
                        "key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIpermtest perm@x"})),
        ),
        "public_keys.get" => (format!("/api/v1/public_keys/{key}"), None),
        "public_keys.delete" => {
            let id = created(
                "/api/v1/public_keys",
                json!({"name": format!("perm-gone-{n}"),
                       "key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIgonetest gone@x"}),
            )
            .await;
            (format!("/api/v1/public_keys/{id}"), None)
        }
        "facade.instances.list" => ("/v1/instances".into(), None),
        "facade.instances.create" => (
            "/v1/instances".into(),
            Some(
                json!({"name": format!("perm-fac-{n}"), "memory": 1024, "region": "sy3",
                        "template": "ubuntu-22-04"}),
            ),
        ),
        "facade.instances.get" => (format!("/v1/instances/{WEB1}"), None),
        "facade.instances.patch" => (
            format!("/v1/instances/{WEB1}"),
            Some(json!({"name": "web-1"})),
        ),
        "facade.instances.delete" => (format!("/v1/instances/{}", fresh_instance().await), None),
        "facade.instances.poweron" => (
            format!("/v1/instances/{}/poweron", fresh_instance().await),
            None,
        ),
        "facade.instances.poweroff" | "facade.instances.reboot" => {
            let id = fresh_instance().await;
            if real {
                ok_json(
                    h.post(admin, &format!("/api/v1/instances/{id}/start"), json!({}))
                        .await,
                )
                .await;
                wait_state(h, admin, &id, "running").await;
            }
            let action = route.rsplit('.').next().unwrap();
            (format!("/v1/instances/{id}/{action}"), None)
        }
        "facade.instances.snapshot" => (
            format!("/v1/instances/{}/snapshot", fresh_instance().await),
            Some(json!({})),
        ),
        "facade.tasks.list" => ("/v1/tasks".into(), None),
        "facade.tasks.get" => {
            let task = if real {
                let id = assemble(h, admin, &format!("perm-task-{n}")).await["id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                ok_json(
                    h.post(admin, &format!("/v1/instances/{id}/snapshot"), json!({}))
                        .await,
                )
                .await["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            } else {
                fake.clone()
            };
            (format!("/v1/tasks/{task}"), None)
        }
        other => panic!("no fixture for {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_role_against_every_operation() {
    let h = Harness::start().await;
    let ops = ops();
    // The table covers every mirror and facade route the proxy ships.
    let shipped: Vec<String> = serde_yaml::from_str::<Value>(orion_proxy::config::DEFAULTS_YAML)
        .unwrap()["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"].is_null() || r["kind"] == "mirror" || r["kind"] == "facade")
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    for name in &shipped {
        assert!(
            ops.iter().any(|o| o.route == name),
            "route {name} is missing from the permission table"
        );
    }
    let mut n = 0;
    let mut report = Vec::new();
    for role in ["viewer", "operator", "admin"] {
        let key = h.key(role).to_string();
        for op in &ops {
            n += 1;
            let allowed = match role {
                "viewer" => op.viewer,
                "operator" => op.operator,
                _ => op.admin,
            };
            let (path, body) = prepare(&h, op.route, allowed, n).await;
            let before = h.sim.calls().total;
            let content_type = if op.method == Method::PATCH {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            let mut req = h
                .http
                .request(op.method.clone(), h.url(&path))
                .bearer_auth(&key)
                .header("content-type", content_type);
            if let Some(b) = &body {
                req = req.body(b.to_string());
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            if allowed {
                let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
                let text = resp.text().await.unwrap();
                // The request id check of refusals means something: allowed changes carry it
                // to OrionVM (reads may be answered locally: tasks, a cache).
                if op.method != Method::GET {
                    assert!(
                        h.sim.recent_requests().iter().any(|r| r
                            .headers
                            .iter()
                            .any(|(k, v)| k == "x-request-id" && *v == rid)),
                        "{role} {}: OrionVM saw request {rid}",
                        op.route
                    );
                }
                assert!(
                    (200..300).contains(&status),
                    "{role} {} {path}: expected 2xx, got {status}: {text}",
                    op.method
                );
            } else {
                let body = expect_error(resp, 403, "forbidden").await;
                assert_eq!(
                    body["details"]["permission"],
                    json!([op.permission]),
                    "{role} {}",
                    op.route
                );
                assert!(
                    body["detail"].as_str().unwrap().contains(op.permission),
                    "{body}"
                );
                // Refused before OrionVM. Background work of earlier facade operations (reboot
                // and snapshot tasks polling OrionVM) may still call OrionVM meanwhile, so the
                // calls made while this request was served are each checked: every one carries
                // the id of a request older than this one, none carries this request's id, and
                // none lacks an id (every call the proxy makes carries its request's id).
                let rid = body["request_id"].as_str().unwrap();
                for call in calls_since(&h, before).await {
                    if !call.path.starts_with("/api/") {
                        continue;
                    }
                    let ids = call.header_values("x-request-id");
                    assert!(
                        ids.len() == 1 && ids[0] != rid && earlier_id(ids[0], rid),
                        "{role} {}: refused before OrionVM, yet OrionVM saw {} {} with request id {ids:?} \
                         during request {rid}",
                        op.route,
                        call.method,
                        call.path
                    );
                }
            }
            report.push(format!("{role:<9} {:<36} {status}", op.route));
        }
    }
    eprintln!("{}", report.join("\n"));

    // The admin listener: admin role only.
    for (role, want) in [("viewer", 403), ("operator", 403), ("admin", 200)] {
        let r = h.proxy.admin_get(h.key(role), "/admin/config").await;
        assert_eq!(r.status().as_u16(), want, "{role} on the admin listener");
    }
    let r = h.proxy.admin_post(h.key("operator"), "/admin/reload").await;
    expect_error(r, 403, "forbidden").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_read_change_or_delete_another_tenants_instance() {
    let id = Identity::new(default_clients());
    let yaml = id.yaml();
    let h = Harness::start_with(move |c| c.extra_top = yaml).await;
    let acme = h.key("admin").to_string();
    let globex = h.key("other_tenant_admin").to_string();
    let globex_token = token_for(&h.http, &h.proxy.url, id.client("globex-terraform")).await;

    let inst = assemble(&h, &acme, "acme-private").await;
    let x = inst["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/instances/{x}");

    for cred in [&globex, &globex_token] {
        expect_error(h.get(cred, &path).await, 404, "not_found").await;
        expect_error(
            h.get(cred, &format!("{path}/state")).await,
            404,
            "not_found",
        )
        .await;
        expect_error(
            h.get(cred, &format!("{path}/context")).await,
            404,
            "not_found",
        )
        .await;
        let r = h
            .http
            .put(h.url(&path))
            .bearer_auth(cred)
            .json(&json!({"name": "pwned"}))
            .send()
            .await
            .unwrap();
        expect_error(r, 404, "not_found").await;
        let r = h.post(cred, &format!("{path}/start"), json!({})).await;
        expect_error(r, 404, "not_found").await;
        let r = h
            .post(
                cred,
                &format!("{path}/context"),
                json!({"key": "k", "value": "v"}),
            )
            .await;
        expect_error(r, 404, "not_found").await;
        expect_error(h.delete(cred, &path).await, 404, "not_found").await;
        // acme's seeded instance is as invisible.
        expect_error(
            h.get(cred, &format!("/api/v1/instances/{WEB1}")).await,
            404,
            "not_found",
        )
        .await;
        let list = ok_json(h.get(cred, "/api/v1/instances").await).await;
        let ids: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["id"].as_str())
            .collect();
        assert!(!ids.is_empty(), "globex sees its own instances");
        assert!(!ids.contains(&x.as_str()) && !ids.contains(&WEB1));
    }

    // The same through the REST facade.
    let fpath = format!("/v1/instances/{x}");
    for cred in [&globex, &globex_token] {
        expect_error(h.get(cred, &fpath).await, 404, "not_found").await;
        let r = h
            .http
            .patch(h.url(&fpath))
            .bearer_auth(cred)
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"name": "pwned"}"#)
            .send()
            .await
            .unwrap();
        expect_error(r, 404, "not_found").await;
        for action in ["poweron", "poweroff", "reboot", "snapshot"] {
            let r = h.post(cred, &format!("{fpath}/{action}"), json!({})).await;
            expect_error(r, 404, "not_found").await;
        }
        expect_error(h.delete(cred, &fpath).await, 404, "not_found").await;
        let list = ok_json(h.get(cred, "/v1/instances").await).await;
        let items = list["items"].as_array().expect("items");
        assert!(!items.is_empty());
        assert!(
            !items
                .iter()
                .any(|i| i["id"] == x.as_str() || i["id"] == WEB1),
            "{list}"
        );
    }
    // acme's tasks are acme's.
    let task = ok_json(h.post(&acme, &format!("{fpath}/snapshot"), json!({})).await).await;
    let task_id = task["id"].as_str().unwrap().to_string();
    for cred in [&globex, &globex_token] {
        expect_error(
            h.get(cred, &format!("/v1/tasks/{task_id}")).await,
            404,
            "not_found",
        )
        .await;
        let tasks = ok_json(h.get(cred, "/v1/tasks").await).await;
        assert!(!tasks.to_string().contains(&task_id), "{tasks}");
    }
    assert_eq!(
        ok_json(h.get(&acme, &format!("/v1/tasks/{task_id}")).await).await["id"],
        task_id.as_str()
    );

    // Untouched for acme: still there, same name, still stopped.
    let got = ok_json(h.get(&acme, &path).await).await;
    assert_eq!(got["name"], "acme-private");
    assert_eq!(got["state"], "stopped");
    let ctx = ok_json(h.get(&acme, &format!("{path}/context")).await).await;
    assert!(ctx.get("k").is_none(), "{ctx}");

    // The other way round: a globex instance is invisible to acme.
    let gid = h.first_instance(&globex).await;
    expect_error(
        h.get(&acme, &format!("/api/v1/instances/{gid}")).await,
        404,
        "not_found",
    )
    .await;

    // Each tenant's calls went out under its own OrionVM account.
    let calls = h.sim.calls();
    assert!(
        calls.account_count("globex", "DELETE", "/api/v1/instances/{id}") >= 2,
        "{calls:?}"
    );
    assert_eq!(
        calls.account_count("acme", "DELETE", "/api/v1/instances/{id}"),
        0,
        "{calls:?}"
    );
    poll("still there", Duration::from_secs(1), || async {
        (h.get(&acme, &path).await.status() == 200).then_some(())
    })
    .await;
}
