//! The lifecycle table, every row: each facade action against an instance in each state.
//! Allowed ones reach OrionVM (the simulator's call counts go up), refused ones are 409 naming the
//! state and the allowed actions (with `Retry-After` on a moving state) and never reach OrionVM.

use crate::harness::facade::*;
use crate::harness::*;
use orion_sim::{FaultPlan, SimTimings};
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
enum Act {
    Poweron,
    Poweroff,
    Reboot,
    Snapshot,
    PatchName,
    PatchMemory,
    Delete,
}

const ALL: [Act; 7] = [
    Act::Poweron,
    Act::Poweroff,
    Act::Reboot,
    Act::Snapshot,
    Act::PatchName,
    Act::PatchMemory,
    Act::Delete,
];

impl Act {
    /// The OrionVM call the action makes first.
    fn upstream(self) -> (&'static str, &'static str) {
        match self {
            Act::Poweron => ("POST", "/api/v1/instances/{id}/start"),
            Act::Poweroff | Act::Reboot => ("POST", "/api/v1/instances/{id}/stop"),
            Act::Snapshot => ("POST", "/api/v1/disks/{id}/clone"),
            Act::PatchName | Act::PatchMemory => ("PUT", "/api/v1/instances/{id}"),
            Act::Delete => ("DELETE", "/api/v1/instances/{id}"),
        }
    }

    async fn send(self, h: &Harness, key: &str, id: &str) -> reqwest::Response {
        let base = format!("/v1/instances/{id}");
        match self {
            Act::Poweron => h.post(key, &format!("{base}/poweron"), json!({})).await,
            Act::Poweroff => h.post(key, &format!("{base}/poweroff"), json!({})).await,
            Act::Reboot => h.post(key, &format!("{base}/reboot"), json!({})).await,
            Act::Snapshot => h.post(key, &format!("{base}/snapshot"), json!({})).await,
            Act::PatchName => patch(h, key, &base, json!({"name": format!("renamed-{id}")})).await,
            Act::PatchMemory => patch(h, key, &base, json!({"memory": 3072})).await,
            Act::Delete => h.delete(key, &base).await,
        }
    }
}

/// The table the issue sets, written out independently of the proxy's code.
fn allowed(state: &str, act: Act) -> bool {
    use Act::*;
    match state {
        "running" => matches!(act, Poweroff | Reboot | Snapshot | PatchName | Delete),
        "stopped" => matches!(act, Poweron | Snapshot | PatchName | PatchMemory | Delete),
        _ => false,
    }
}

fn allowed_names(state: &str) -> Value {
    match state {
        "running" => json!(["poweroff", "reboot", "snapshot", "patch", "delete"]),
        "stopped" => json!(["poweron", "snapshot", "patch", "delete"]),
        _ => json!([]),
    }
}

fn mutating_calls(h: &Harness) -> u64 {
    let c = h.sim.calls();
    ALL.iter()
        .map(|a| a.upstream())
        .collect::<std::collections::BTreeSet<_>>()
        .iter()
        .map(|(m, r)| c.count(m, r))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_lifecycle_table() {
    // Stops take a minute (so `stopping` holds still); terminated instances stay visible.
    let mut opts = sim_options();
    opts.timings = SimTimings {
        provision: Duration::from_millis(50),
        start: Duration::from_millis(50),
        stop: Duration::from_secs(60),
        terminate: Duration::from_millis(50),
        terminated_visible: Duration::from_secs(120),
    };
    let h = Harness::start_on(start_sim(opts).await, |c| {
        c.extra_top = facade_config(60_000)
    })
    .await;
    let key = h.key("admin").to_string();

    // One instance per allowed row (an allowed action changes it), one per state for the refused.
    let mut rows: Vec<(&str, Act, String)> = Vec::new();
    let mut n = 0;
    for state in [
        "running",
        "stopped",
        "stopping",
        "terminating",
        "terminated",
    ] {
        let mut shared: Option<String> = None;
        for act in ALL {
            let fresh = allowed(state, act) || shared.is_none();
            if fresh {
                n += 1;
                let start = state != "stopped" && state != "terminated" && state != "terminating";
                let id = create_basic(&h, &key, &format!("lc-{n}"), 1024, "SY3", start).await;
                if !allowed(state, act) {
                    shared = Some(id.clone());
                }
                rows.push((state, act, id));
            } else {
                rows.push((state, act, shared.clone().unwrap()));
            }
        }
    }
    // Bring each instance to its state through the mirror.
    let mut prepared = std::collections::BTreeSet::new();
    for (state, _, id) in &rows {
        if !prepared.insert(id.clone()) {
            continue;
        }
        match *state {
            "running" => wait_state(&h, &key, id, "running").await,
            "stopped" => wait_state(&h, &key, id, "stopped").await,
            "stopping" => {
                wait_state(&h, &key, id, "running").await;
                ok_json(
                    h.post(&key, &format!("/api/v1/instances/{id}/stop"), json!({}))
                        .await,
                )
                .await;
                wait_state(&h, &key, id, "stopping").await;
            }
            "terminated" => {
                wait_state(&h, &key, id, "stopped").await;
                ok_json(h.delete(&key, &format!("/api/v1/instances/{id}")).await).await;
                wait_state(&h, &key, id, "terminated").await;
            }
            _ => {}
        }
    }
    // `terminating` holds still while deletes hang.
    h.sim.set_faults(FaultPlan {
        hang_transitions: true,
        method: Some("DELETE".into()),
        ..Default::default()
    });
    for (state, _, id) in &rows {
        if *state == "terminating" && prepared.remove(id) {
            wait_state(&h, &key, id, "stopped").await;
            ok_json(h.delete(&key, &format!("/api/v1/instances/{id}")).await).await;
            wait_state(&h, &key, id, "terminating").await;
        }
    }

    let mut checked = 0;
    for (state, act, id) in &rows {
        assert_eq!(&state_of(&h, &key, id).await, state, "{act:?} on {state}");
        let (method, route) = act.upstream();
        let before = h.sim.calls().count(method, route);
        let all_before = mutating_calls(&h);
        let resp = act.send(&h, &key, id).await;
        if allowed(state, *act) {
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            let want = if matches!(act, Act::PatchName | Act::PatchMemory) {
                200
            } else {
                202
            };
            assert_eq!(status, want, "{act:?} on {state}: {text}");
            // Reboot and snapshot reach OrionVM from their task.
            wait_count(&h, method, route, before + 1).await;
        } else {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let err = expect_error(resp, 409, "invalid_state").await;
            assert_eq!(
                err["details"]["state"],
                json!([state]),
                "{act:?} on {state}: {err}"
            );
            assert_eq!(
                err["details"]["allowed_actions"],
                allowed_names(state),
                "{err}"
            );
            assert!(err["detail"].as_str().unwrap().contains(state), "{err}");
            let moving = *state == "stopping";
            assert_eq!(
                retry_after.is_some(),
                moving,
                "Retry-After on {state}: {retry_after:?}"
            );
            assert_eq!(
                mutating_calls(&h),
                all_before,
                "{act:?} on {state} reached OrionVM"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 35);
}
