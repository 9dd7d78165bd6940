//! Every facade operation end to end against the simulator: create, get, patch, power, reboot
//! and snapshot through their tasks, delete; tasks scoped per tenant and kept across a reload;
//! a reboot whose stop hangs fails after the configured timeout.

use crate::harness::facade::*;
use crate::harness::*;
use orion_sim::FaultPlan;
use serde_json::{Value, json};

const START: &str = "/api/v1/instances/{id}/start";
const STOP: &str = "/api/v1/instances/{id}/stop";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_end_to_end() {
    let h = Harness::start_with(|c| c.extra_top = facade_config(10_000)).await;
    let admin = h.key("admin").to_string();

    // Create with names: region code, template slug, tier name, key name.
    let keys = ok_json(h.get(&admin, "/api/v1/public_keys").await).await;
    let key_name = keys[0]["name"].as_str().unwrap().to_string();
    let key_id = keys[0]["id"].as_str().unwrap().to_string();
    let resp = h
        .post(
            &admin,
            "/v1/instances",
            json!({"name": "fac-1", "memory": 1024, "region": "sy3", "template": "ubuntu-22-04",
                   "performance_tier": "high performance", "public_keys": [key_id], "start": true}),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let created = ok_json(resp).await;
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/instances/{id}"));
    assert_eq!(created["region"]["code"], "SY3");
    assert_eq!(created["performance_tier"]["name"], "High Performance");
    assert_eq!(created["public_keys"][0]["name"], key_name.as_str());
    assert_eq!(created["name"], "fac-1");

    // Names that resolve to nothing, and bodies that do not fit, never reach OrionVM's create.
    let creates = h.sim.calls().count("POST", "/api/v1/instances");
    let err = expect_error(
        h.post(
            &admin,
            "/v1/instances",
            json!({"name": "x", "memory": 1024, "region": "XX9", "template": "ubuntu-22-04"}),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    assert!(err["details"]["region"].is_array(), "{err}");
    let err = expect_error(
        h.post(
            &admin,
            "/v1/instances",
            json!({"name": "x", "memory": 1024, "region": "SY3", "template": "nope", "performance_tier": "Gold"}),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    assert!(
        err["details"]["template"].is_array() && err["details"]["performance_tier"].is_array(),
        "{err}"
    );
    let err = expect_error(
        h.post(
            &admin,
            "/v1/instances",
            json!({"name": "x", "memory": 1024, "region": "SY3", "template": "t", "colour": "red"}),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    assert!(err["detail"].as_str().unwrap().contains("colour"), "{err}");
    assert_eq!(h.sim.calls().count("POST", "/api/v1/instances"), creates);

    // Get.
    let got = ok_json(h.get(&admin, &format!("/v1/instances/{id}")).await).await;
    assert_eq!(got["id"], id.as_str());
    expect_error(
        h.get(&admin, "/v1/instances/not-a-uuid").await,
        404,
        "not_found",
    )
    .await;
    wait_state(&h, &admin, &id, "running").await;

    // Patch: scalars through OrionVM's PUT, lists through the attachment PUTs.
    let puts = h.sim.calls().count("PUT", "/api/v1/instances/{id}");
    let patched = ok_json(
        patch(
            &h,
            &admin,
            &format!("/v1/instances/{id}"),
            json!({"name": "fac-1b", "start_on_crash": false}),
        )
        .await,
    )
    .await;
    assert_eq!(patched["name"], "fac-1b");
    assert_eq!(patched["start_on_crash"], false);
    assert_eq!(
        h.sim.calls().count("PUT", "/api/v1/instances/{id}"),
        puts + 1
    );
    let patched = ok_json(
        patch(
            &h,
            &admin,
            &format!("/v1/instances/{id}"),
            json!({"public_keys": null}),
        )
        .await,
    )
    .await;
    assert_eq!(patched["public_keys"], json!([]));
    assert_eq!(
        h.sim
            .calls()
            .count("PUT", "/api/v1/instances/{id}/public_keys"),
        1
    );
    // Nothing changes: no call at all.
    let before = h.sim.calls().total;
    let same = ok_json(
        patch(
            &h,
            &admin,
            &format!("/v1/instances/{id}"),
            json!({"name": "fac-1b"}),
        )
        .await,
    )
    .await;
    assert_eq!(same["name"], "fac-1b");
    assert_eq!(
        h.sim.calls().total,
        before + 1,
        "only the GET of the instance"
    );
    let err = expect_error(
        patch(
            &h,
            &admin,
            &format!("/v1/instances/{id}"),
            json!({"name": null}),
        )
        .await,
        422,
        "validation_failed",
    )
    .await;
    assert!(err["details"]["name"].is_array(), "{err}");

    // Reboot through its task.
    let resp = h
        .post(&admin, &format!("/v1/instances/{id}/reboot"), json!({}))
        .await;
    assert_eq!(resp.status(), 202);
    let task_location = resp.headers()["location"].to_str().unwrap().to_string();
    let task = ok_json(resp).await;
    let reboot_id = task["id"].as_str().unwrap().to_string();
    assert_eq!(task_location, format!("/v1/tasks/{reboot_id}"));
    assert_eq!(task["type"], "reboot");
    assert_eq!(task["instance_id"], id.as_str());
    let done = wait_task(&h, &admin, &reboot_id, "completed").await;
    assert_eq!(
        done["steps_done"],
        json!(["stop", "wait_stopped", "start", "wait_running"])
    );
    assert!(
        done["error"].is_null() && done["finished_at"].is_string(),
        "{done}"
    );
    assert_eq!(h.sim.calls().count("POST", STOP), 1);
    assert_eq!(h.sim.calls().count("POST", START), 1);
    assert_eq!(state_of(&h, &admin, &id).await, "running");

    // Snapshot through its task: every disk cloned, named after the instance.
    let resp = h
        .post(&admin, &format!("/v1/instances/{id}/snapshot"), json!({}))
        .await;
    assert_eq!(resp.status(), 202);
    let snap_id = ok_json(resp).await["id"].as_str().unwrap().to_string();
    let done = wait_task(&h, &admin, &snap_id, "completed").await;
    let snaps = done["result"]["snapshots"].as_array().unwrap().clone();
    assert_eq!(snaps.len(), created["disks"].as_array().unwrap().len());
    for s in &snaps {
        let disk = ok_json(
            h.get(
                &admin,
                &format!("/api/v1/disks/{}", s["disk"].as_str().unwrap()),
            )
            .await,
        )
        .await;
        assert!(
            disk["name"].as_str().unwrap().starts_with("fac-1b-"),
            "{disk}"
        );
        assert_eq!(disk["state"], "unattached");
    }
    assert_eq!(
        h.sim.calls().count("POST", "/api/v1/disks/{id}/clone"),
        snaps.len() as u64
    );

    // Power off, change memory while stopped, power on.
    let resp = h
        .post(&admin, &format!("/v1/instances/{id}/poweroff"), json!({}))
        .await;
    assert_eq!(resp.status(), 202);
    assert_eq!(ok_json(resp).await["state"], "stopping");
    wait_state(&h, &admin, &id, "stopped").await;
    let patched = ok_json(
        patch(
            &h,
            &admin,
            &format!("/v1/instances/{id}"),
            json!({"memory": 2048}),
        )
        .await,
    )
    .await;
    assert_eq!(patched["memory"], 2048);
    let resp = h
        .post(&admin, &format!("/v1/instances/{id}/poweron"), json!({}))
        .await;
    assert_eq!(resp.status(), 202);
    assert_eq!(ok_json(resp).await["state"], "starting");
    wait_state(&h, &admin, &id, "running").await;

    // Tasks: the list has both, newest last unless sorted.
    let list = ok_json(h.get(&admin, "/v1/tasks?sort=-created_at").await).await;
    assert_eq!(list["total"], 2);
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&reboot_id.as_str()) && ids.contains(&snap_id.as_str()));
    let only = ok_json(h.get(&admin, "/v1/tasks?type=snapshot").await).await;
    assert_eq!(only["total"], 1);
    assert_eq!(only["items"][0]["id"], snap_id.as_str());

    // Delete: 202 with the instance terminating.
    let resp = h.delete(&admin, &format!("/v1/instances/{id}")).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(ok_json(resp).await["state"], "terminating");

    // Permissions: viewers read, operators power, snapshots need disks:write.
    let viewer = h.key("viewer").to_string();
    let operator = h.key("operator").to_string();
    let other = ok_json(h.get(&viewer, "/v1/instances?state=running").await).await;
    let running = other["items"][0]["id"].as_str().unwrap().to_string();
    expect_error(
        h.post(
            &viewer,
            &format!("/v1/instances/{running}/poweroff"),
            json!({}),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    expect_error(
        h.post(
            &operator,
            &format!("/v1/instances/{running}/snapshot"),
            json!({}),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_others_instances_or_tasks() {
    let h = Harness::start_with(|c| c.extra_top = facade_config(10_000)).await;
    let acme = h.key("admin").to_string();
    let globex = h.key("other_tenant_admin").to_string();
    let theirs: Value = ok_json(h.get(&globex, "/v1/instances?state=running").await).await;
    let globex_id = theirs["items"][0]["id"].as_str().unwrap().to_string();
    let ours: Value = ok_json(h.get(&acme, "/v1/instances").await).await;
    assert!(
        ours["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["id"] != globex_id.as_str())
    );

    // acme's keys against globex's instance: not found, and nothing changes at OrionVM.
    expect_error(
        h.get(&acme, &format!("/v1/instances/{globex_id}")).await,
        404,
        "not_found",
    )
    .await;
    for action in ["poweroff", "reboot", "snapshot"] {
        expect_error(
            h.post(
                &acme,
                &format!("/v1/instances/{globex_id}/{action}"),
                json!({}),
            )
            .await,
            404,
            "not_found",
        )
        .await;
    }
    expect_error(
        h.delete(&acme, &format!("/v1/instances/{globex_id}")).await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        patch(
            &h,
            &acme,
            &format!("/v1/instances/{globex_id}"),
            json!({"name": "mine"}),
        )
        .await,
        404,
        "not_found",
    )
    .await;
    let calls = h.sim.calls();
    assert_eq!(calls.count("POST", STOP), 0);
    assert_eq!(calls.count("DELETE", "/api/v1/instances/{id}"), 0);
    assert_eq!(calls.count("PUT", "/api/v1/instances/{id}"), 0);
    assert_eq!(calls.count("POST", "/api/v1/disks/{id}/clone"), 0);
    assert_eq!(state_of(&h, &globex, &globex_id).await, "running");

    // globex's task is invisible to acme.
    let resp = h
        .post(
            &globex,
            &format!("/v1/instances/{globex_id}/reboot"),
            json!({}),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let task = ok_json(resp).await["id"].as_str().unwrap().to_string();
    expect_error(
        h.get(&acme, &format!("/v1/tasks/{task}")).await,
        404,
        "not_found",
    )
    .await;
    assert_eq!(ok_json(h.get(&acme, "/v1/tasks").await).await["total"], 0);
    assert_eq!(ok_json(h.get(&globex, "/v1/tasks").await).await["total"], 1);
    wait_task(&h, &globex, &task, "completed").await;
    assert_eq!(h.sim.calls().account_count("globex", "POST", STOP), 1);
    assert_eq!(h.sim.calls().account_count("acme", "POST", STOP), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_whose_stop_hangs_fails_after_the_timeout_and_tasks_survive_a_reload() {
    let h = Harness::start_with(|c| c.extra_top = facade_config(600)).await;
    let admin = h.key("admin").to_string();
    let id = create_basic(&h, &admin, "hang-1", 1024, "SY3", true).await;
    wait_state(&h, &admin, &id, "running").await;
    h.sim.set_faults(FaultPlan {
        hang_transitions: true,
        path_prefix: Some(STOP.into()),
        ..Default::default()
    });
    let resp = h
        .post(&admin, &format!("/v1/instances/{id}/reboot"), json!({}))
        .await;
    assert_eq!(resp.status(), 202);
    let task = ok_json(resp).await["id"].as_str().unwrap().to_string();
    let failed = wait_task(&h, &admin, &task, "failed").await;
    assert_eq!(failed["error"]["error"], "transition_timeout", "{failed}");
    let text = failed["error"]["error_description"].as_str().unwrap();
    assert!(
        text.contains("stopped") && text.contains("600 ms") && text.contains("stopping"),
        "{text}"
    );
    assert_eq!(failed["steps_done"], json!(["stop"]));
    let last = failed["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["name"].as_str(), last["status"].as_str()),
        (Some("wait_stopped"), Some("failed"))
    );
    assert_eq!(h.sim.calls().count("POST", STOP), 1);
    assert_eq!(h.sim.calls().count("POST", START), 0, "start is never sent");
    assert_eq!(state_of(&h, &admin, &id).await, "stopping");

    // The task outlives a config reload.
    h.reload_ok().await;
    let after = ok_json(h.get(&admin, &format!("/v1/tasks/{task}")).await).await;
    assert_eq!(after["status"], "failed");
    assert_eq!(after["id"], task.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_sends_the_attachment_puts_that_changed() {
    let h = Harness::start_with(|c| c.extra_top = facade_config(10_000)).await;
    let admin = h.key("admin").to_string();
    let id = create_basic(&h, &admin, "att-1", 1024, "SY3", false).await;
    let other = create_basic(&h, &admin, "att-2", 1024, "SY3", false).await;
    wait_state(&h, &admin, &id, "stopped").await;
    let inst = ok_json(h.get(&admin, &format!("/v1/instances/{id}")).await).await;
    let boot = inst["disks"][0]["id"].as_str().unwrap().to_string();
    let disk = ok_json(
        h.post(
            &admin,
            "/api/v1/disks",
            json!({"name": "att-extra", "size": 10, "region": "SY3"}),
        )
        .await,
    )
    .await;
    let extra = disk["id"].as_str().unwrap().to_string();
    poll(
        "disk unattached",
        std::time::Duration::from_secs(10),
        || async {
            let d = ok_json(h.get(&admin, &format!("/api/v1/disks/{extra}")).await).await;
            (d["state"] == "unattached").then_some(())
        },
    )
    .await;
    let path = format!("/v1/instances/{id}");

    let after = ok_json(
        patch(
            &h,
            &admin,
            &path,
            json!({"disks": [boot, extra], "availability_group": [other]}),
        )
        .await,
    )
    .await;
    let disks: Vec<&str> = after["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(disks, vec![boot.as_str(), extra.as_str()]);
    assert_eq!(after["availability_group"], json!([other]));
    let calls = h.sim.calls();
    assert_eq!(calls.count("PUT", "/api/v1/instances/{id}/disks"), 1);
    assert_eq!(
        calls.count("PUT", "/api/v1/instances/{id}/availability_group"),
        1
    );
    assert_eq!(
        calls.count("PUT", "/api/v1/instances/{id}"),
        0,
        "no scalar changed"
    );

    // The adapters as they are: no call; with dhcp off: OrionVM's adapters PUT.
    let adapters: Vec<Value> = inst["network_adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| json!({"network": a["network"]["id"], "dhcp": a["dhcp"],
                        "ip_addresses": a["ip_addresses"].as_array().unwrap().iter().map(|i| i["id"].clone()).collect::<Vec<_>>()}))
        .collect();
    ok_json(patch(&h, &admin, &path, json!({"network_adapters": adapters})).await).await;
    assert_eq!(
        h.sim
            .calls()
            .count("PUT", "/api/v1/instances/{id}/network_adapters"),
        0
    );
    let mut changed = adapters.clone();
    changed[0]["dhcp"] = json!(false);
    // OrionVM's network update holds still until the fault is cleared.
    h.sim.set_faults(FaultPlan {
        hang_transitions: true,
        path_prefix: Some("/api/v1/instances/{id}/network_adapters".into()),
        ..Default::default()
    });
    let after = ok_json(patch(&h, &admin, &path, json!({"network_adapters": changed})).await).await;
    assert_eq!(after["network_adapters"][0]["dhcp"], false);
    assert_eq!(
        h.sim
            .calls()
            .count("PUT", "/api/v1/instances/{id}/network_adapters"),
        1
    );

    // While OrionVM applies the adapters the instance is moving: 409 with Retry-After.
    assert_eq!(state_of(&h, &admin, &id).await, "updating_network");
    let resp = patch(&h, &admin, &path, json!({"name": "att-1b"})).await;
    assert_eq!(resp.headers()["retry-after"], "2");
    let err = expect_error(resp, 409, "invalid_state").await;
    assert_eq!(err["details"]["state"], json!(["updating_network"]));
    assert_eq!(err["details"]["allowed_actions"], json!([]));
    assert_eq!(h.sim.calls().count("PUT", "/api/v1/instances/{id}"), 0);
    h.sim.clear_faults();
    wait_state(&h, &admin, &id, "stopped").await;

    // Disks change only while stopped.
    ok_json(h.post(&admin, &format!("{path}/poweron"), json!({})).await).await;
    wait_state(&h, &admin, &id, "running").await;
    let err = expect_error(
        patch(&h, &admin, &path, json!({"disks": [boot]})).await,
        409,
        "invalid_state",
    )
    .await;
    assert_eq!(err["details"]["state"], json!(["running"]));
    assert_eq!(
        h.sim.calls().count("PUT", "/api/v1/instances/{id}/disks"),
        1
    );
}
