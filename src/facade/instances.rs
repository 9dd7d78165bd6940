//! The facade's operations on instances and tasks, mapped onto OrionVM v1.

use super::body::{self, AdapterPatch, CreateInstance, InstancePatch, SnapshotRequest};
use super::lifecycle::{self, Action};
use super::lists::{ListKind, ListQuery};
use super::tasks::{self, Kind, Runner, Timing};
use super::{Call, FacadeError, Orion, Reply, list_reply, orion_of};
use crate::routes::Handler;
use http::Method;
use serde_json::{Map, Value, json};
use std::time::Duration;

pub(crate) async fn handle(h: Handler, c: &Call<'_>) -> Result<Reply, FacadeError> {
    let orion = orion_of(&c.req, c.env)?;
    let tenant = &*orion.tenant.name;
    let store = &**c.env.tasks;
    match h {
        Handler::InstancesList => {
            let q = ListQuery::parse(ListKind::Instances, c.req.query)?;
            let items = orion.list("/api/v1/instances").await?;
            Ok(list_reply(&q, c.req.path, items))
        }
        Handler::InstancesCreate => create(c, &orion).await,
        Handler::InstancesGet => Ok(Reply::new(200, instance(&orion, c).await?.1)),
        Handler::InstancesPatch => patch(c, &orion).await,
        Handler::InstancesDelete => {
            let (id, inst) = instance(&orion, c).await?;
            lifecycle::check(Action::Delete, state_of(&inst))?;
            let out = orion
                .call(Method::DELETE, &format!("/api/v1/instances/{id}"), None)
                .await?;
            Ok(Reply::new(202, out))
        }
        Handler::InstancesPoweron => power(c, &orion, Action::Poweron, "start").await,
        Handler::InstancesPoweroff => power(c, &orion, Action::Poweroff, "stop").await,
        Handler::InstancesReboot => {
            let (id, inst) = instance(&orion, c).await?;
            lifecycle::check(Action::Reboot, state_of(&inst))?;
            let task = tasks::create(store, tenant, Kind::Reboot, &id, max_tasks(c)).await?;
            let reply = task_reply(&task);
            let run = Runner::new(c.env.tasks.clone(), tenant, task, c.env.describe);
            tasks::spawn_reboot(run, orion.clone(), timing(c));
            Ok(reply)
        }
        Handler::InstancesSnapshot => {
            let req: SnapshotRequest = body::from_request(c.body, true)?;
            let (id, inst) = instance(&orion, c).await?;
            lifecycle::check(Action::Snapshot, state_of(&inst))?;
            let disks: Vec<(String, String)> = inst["disks"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|d| {
                            Some((
                                d["id"].as_str()?.to_string(),
                                d["name"].as_str().unwrap_or("disk").to_string(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if disks.is_empty() {
                return Err(FacadeError::invalid(
                    "disks",
                    "the instance has no disk to snapshot",
                ));
            }
            let prefix = req
                .name
                .filter(|n| !n.trim().is_empty())
                .or_else(|| inst["name"].as_str().map(str::to_string))
                .unwrap_or_else(|| id.clone());
            let task = tasks::create(store, tenant, Kind::Snapshot, &id, max_tasks(c)).await?;
            let reply = task_reply(&task);
            let run = Runner::new(c.env.tasks.clone(), tenant, task, c.env.describe);
            tasks::spawn_snapshot(run, orion.clone(), disks, prefix, timing(c));
            Ok(reply)
        }
        Handler::TasksList => {
            let q = ListQuery::parse(ListKind::Tasks, c.req.query)?;
            let items = tasks::list(store, tenant)
                .await?
                .iter()
                .map(tasks::Task::to_value)
                .collect();
            Ok(list_reply(&q, c.req.path, items))
        }
        Handler::TasksGet => {
            let id = param(c, "id", "task")?;
            match tasks::get(store, tenant, &id).await? {
                Some(t) => Ok(Reply::new(200, t.to_value())),
                None => Err(FacadeError::NotFound("task", id)),
            }
        }
    }
}

fn timing(c: &Call<'_>) -> Timing {
    Timing {
        timeout: Duration::from_millis(c.env.config.transition_timeout_ms),
        poll: Duration::from_millis(c.env.config.poll_interval_ms),
    }
}

fn max_tasks(c: &Call<'_>) -> usize {
    c.env.config.max_tasks
}

fn task_reply(task: &tasks::Task) -> Reply {
    Reply::new(202, task.to_value()).header("location", format!("/v1/tasks/{}", task.id))
}

/// A path parameter that must be a UUID (OrionVM's ids); anything else is not found.
fn param(c: &Call<'_>, name: &str, what: &'static str) -> Result<String, FacadeError> {
    let v = c.req.param(name).unwrap_or_default().to_string();
    match uuid::Uuid::parse_str(&v) {
        Ok(u) => Ok(u.hyphenated().to_string()),
        Err(_) => Err(FacadeError::NotFound(what, v.chars().take(64).collect())),
    }
}

/// The instance of the path, as OrionVM has it now.
async fn instance(orion: &Orion, c: &Call<'_>) -> Result<(String, Value), FacadeError> {
    let id = param(c, "id", "instance")?;
    let inst = orion.get(&format!("/api/v1/instances/{id}")).await?;
    Ok((id, inst))
}

fn state_of(inst: &Value) -> &str {
    inst["state"].as_str().unwrap_or("unknown")
}

async fn power(
    c: &Call<'_>,
    orion: &Orion,
    action: Action,
    verb: &str,
) -> Result<Reply, FacadeError> {
    let (id, inst) = instance(orion, c).await?;
    lifecycle::check(action, state_of(&inst))?;
    let out = orion
        .call(
            Method::POST,
            &format!("/api/v1/instances/{id}/{verb}"),
            Some(&json!({})),
        )
        .await?;
    Ok(Reply::new(202, out))
}

fn region_id(v: &Value) -> Option<&str> {
    v["region"]["id"].as_str()
}

/// Finds an object of a list by id, or by a name field (without case) within a region.
fn find<'a>(
    items: &'a [Value],
    key: &str,
    name_field: &str,
    region: Option<&str>,
) -> Option<&'a Value> {
    let in_region = |i: &&Value| region.is_none_or(|r| region_id(i) == Some(r));
    items
        .iter()
        .filter(in_region)
        .find(|i| i["id"].as_str() == Some(key))
        .or_else(|| {
            items.iter().filter(in_region).find(|i| {
                i[name_field]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(key))
            })
        })
}

/// Public keys by id or name to ids; unknown ones are reported with their index.
async fn key_ids(
    orion: &Orion,
    wanted: &[String],
    errs: &mut Vec<(String, String)>,
) -> Result<Vec<String>, FacadeError> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let keys = orion.list("/api/v1/public_keys").await?;
    let mut out = Vec::new();
    for (n, k) in wanted.iter().enumerate() {
        match find(&keys, k, "name", None).and_then(|v| v["id"].as_str()) {
            Some(id) => out.push(id.to_string()),
            None => errs.push((
                format!("public_keys[{n}]"),
                format!("no public key with id or name '{k}'"),
            )),
        }
    }
    Ok(out)
}

async fn create(c: &Call<'_>, orion: &Orion) -> Result<Reply, FacadeError> {
    let req: CreateInstance = body::from_request(c.body, false)?;
    body::check_create(&req)?;
    let mut errs: Vec<(String, String)> = Vec::new();
    let regions = orion.list("/api/v1/regions").await?;
    let region = regions
        .iter()
        .find(|r| {
            r["id"].as_str() == Some(req.region.as_str())
                || r["code"]
                    .as_str()
                    .is_some_and(|c| c.eq_ignore_ascii_case(&req.region))
        })
        .and_then(|r| r["id"].as_str())
        .map(str::to_string);
    let Some(region) = region else {
        return Err(FacadeError::invalid(
            "region",
            &format!("no region with code or id '{}'", req.region),
        ));
    };
    let templates = orion.list("/api/v1/templates").await?;
    let template = find(&templates, &req.template, "slug", Some(&region))
        .and_then(|t| t["id"].as_str())
        .map(str::to_string);
    if template.is_none() {
        errs.push((
            "template".into(),
            format!(
                "no template with slug or id '{}' in region {}",
                req.template, req.region
            ),
        ));
    }
    let mut tier = None;
    if let Some(p) = &req.performance_tier {
        let tiers = orion.list("/api/v1/performance_tiers/instances").await?;
        tier = find(&tiers, p, "name", Some(&region))
            .and_then(|t| t["id"].as_str())
            .map(str::to_string);
        if tier.is_none() {
            errs.push((
                "performance_tier".into(),
                format!(
                    "no performance tier with name or id '{p}' in region {}",
                    req.region
                ),
            ));
        }
    }
    let keys = key_ids(orion, &req.public_keys, &mut errs).await?;
    if !errs.is_empty() {
        return Err(FacadeError::Invalid(errs));
    }
    let mut out = json!({
        "name": req.name,
        "memory": req.memory,
        "size": req.size,
        "region": region,
        "template": template,
        "public_keys": keys,
        "allocate_public_ip": req.allocate_public_ip,
        "start_when_ready": req.start,
    });
    if let Some(t) = tier {
        out["instance_performance_tier"] = json!(t);
    }
    let inst = orion
        .call(Method::POST, "/api/v1/instances", Some(&out))
        .await?;
    let id = inst["id"]
        .as_str()
        .ok_or_else(|| FacadeError::UpstreamShape("the created instance has no id".into()))?;
    let location = format!("{}/{id}", c.req.path.trim_end_matches('/'));
    Ok(Reply::new(201, inst).header("location", location))
}

fn ids_of(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|l| {
            l.iter()
                .filter_map(|v| v["id"].as_str().or(v.as_str()).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn adapters_of(inst: &Value) -> Vec<AdapterPatch> {
    inst["network_adapters"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|a| AdapterPatch {
                    network: a["network"]["id"].as_str().unwrap_or_default().to_string(),
                    dhcp: a["dhcp"].as_bool().unwrap_or(true),
                    ip_addresses: ids_of(&a["ip_addresses"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A scalar member of a merge patch: `null` cannot remove it; a value that differs changes it.
fn scalar<T: serde::Serialize>(
    field: &'static str,
    member: Option<Option<T>>,
    current: &Value,
    put: &mut Map<String, Value>,
    errs: &mut Vec<(String, String)>,
) {
    match member {
        None => {}
        Some(None) => errs.push((field.into(), "cannot be removed".into())),
        Some(Some(v)) => {
            let v = serde_json::to_value(v).unwrap_or(Value::Null);
            if current[field] != v {
                put.insert(field.into(), v);
            }
        }
    }
}

async fn patch(c: &Call<'_>, orion: &Orion) -> Result<Reply, FacadeError> {
    let p: InstancePatch = body::from_request(c.body, false)?;
    let (id, inst) = instance(orion, c).await?;
    let mut errs = Vec::new();
    let mut put = Map::new();
    scalar("name", p.name, &inst, &mut put, &mut errs);
    scalar("hostname", p.hostname, &inst, &mut put, &mut errs);
    scalar("memory", p.memory, &inst, &mut put, &mut errs);
    scalar(
        "virtualization",
        p.virtualization,
        &inst,
        &mut put,
        &mut errs,
    );
    scalar("boot_device", p.boot_device, &inst, &mut put, &mut errs);
    scalar(
        "start_on_shutdown",
        p.start_on_shutdown,
        &inst,
        &mut put,
        &mut errs,
    );
    scalar(
        "start_on_reboot",
        p.start_on_reboot,
        &inst,
        &mut put,
        &mut errs,
    );
    scalar(
        "start_on_crash",
        p.start_on_crash,
        &inst,
        &mut put,
        &mut errs,
    );
    for (field, v) in [
        ("name", &put.get("name")),
        ("hostname", &put.get("hostname")),
    ] {
        if v.and_then(Value::as_str)
            .is_some_and(|s| s.trim().is_empty() || s.len() > 255)
        {
            errs.push((field.into(), "must be 1 to 255 characters".into()));
        }
    }
    if put
        .get("memory")
        .and_then(Value::as_u64)
        .is_some_and(|m| m < 512)
    {
        errs.push(("memory".into(), "is less than the minimum of 512".into()));
    }
    match p.performance_tier {
        None => {}
        Some(None) => errs.push(("performance_tier".into(), "cannot be removed".into())),
        Some(Some(t)) => {
            let tiers = orion.list("/api/v1/performance_tiers/instances").await?;
            match find(&tiers, &t, "name", region_id(&inst)).and_then(|v| v["id"].as_str()) {
                Some(tid) if Some(tid) != inst["performance_tier"]["id"].as_str() => {
                    put.insert("performance_tier".into(), json!(tid));
                }
                Some(_) => {}
                None => errs.push((
                    "performance_tier".into(),
                    format!("no performance tier with name or id '{t}' in the instance's region"),
                )),
            }
        }
    }
    // Attachment lists: null empties them; a new list replaces the old one.
    let mut attach: Vec<(&str, Value)> = Vec::new();
    if let Some(keys) = p.public_keys {
        let ids = key_ids(orion, &keys.unwrap_or_default(), &mut errs).await?;
        if ids != ids_of(&inst["public_keys"]) {
            attach.push(("public_keys", json!(ids)));
        }
    }
    if let Some(disks) = p.disks {
        let disks = disks.unwrap_or_default();
        if disks != ids_of(&inst["disks"]) {
            attach.push(("disks", json!(disks)));
        }
    }
    if let Some(adapters) = p.network_adapters {
        let adapters = adapters.unwrap_or_default();
        if adapters != adapters_of(&inst) {
            attach.push((
                "network_adapters",
                serde_json::to_value(adapters).unwrap_or_default(),
            ));
        }
    }
    if let Some(group) = p.availability_group {
        let group = group.unwrap_or_default();
        if group != ids_of(&inst["availability_group"]) {
            attach.push(("availability_group", json!(group)));
        }
    }
    if !errs.is_empty() {
        return Err(FacadeError::Invalid(errs));
    }
    if put.is_empty() && attach.is_empty() {
        return Ok(Reply::new(200, inst));
    }
    let needs_stopped = ["memory", "performance_tier", "virtualization"]
        .iter()
        .any(|f| put.contains_key(*f))
        || attach.iter().any(|(f, _)| *f == "disks");
    let action = if needs_stopped {
        Action::PatchStopped
    } else {
        Action::Patch
    };
    lifecycle::check(action, state_of(&inst))?;
    let base = format!("/api/v1/instances/{id}");
    if !put.is_empty() {
        orion
            .call(Method::PUT, &base, Some(&Value::Object(put)))
            .await?;
    }
    for (field, value) in attach {
        orion
            .call(
                Method::PUT,
                &format!("{base}/{field}"),
                Some(&json!({ field: value })),
            )
            .await?;
    }
    Ok(Reply::new(200, orion.get(&base).await?))
}
