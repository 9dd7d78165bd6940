//! The OrionVM v1 routes and what they do to an account.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::SimTimings;
use super::model::{
    Account, Adapter, Catalog, ConsoleSession, Disk, GONE, Instance, IpAddress, MAX_DISK_GB,
    MAX_MEMORY, MIN_MEMORY, Network, Origin, PublicKey, Timeline, UNATTACHED, ipv4, is_moving,
    parse_cidr,
};
use super::util::{
    Details, Reply, bad_request, new_id, not_found, one_detail, random_hex, validation,
};

// ---------------------------------------------------------------------------
// Routing.

/// Every route of the simulated service, literal segments before `{params}`.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/oauth/token"),
    ("GET", "/api/v1/instances"),
    ("POST", "/api/v1/instances"),
    ("POST", "/api/v1/instances/assemble"),
    ("GET", "/api/v1/instances/{id}"),
    ("PUT", "/api/v1/instances/{id}"),
    ("DELETE", "/api/v1/instances/{id}"),
    ("GET", "/api/v1/instances/{id}/state"),
    ("POST", "/api/v1/instances/{id}/start"),
    ("POST", "/api/v1/instances/{id}/stop"),
    ("PUT", "/api/v1/instances/{id}/disks"),
    ("PUT", "/api/v1/instances/{id}/public_keys"),
    ("PUT", "/api/v1/instances/{id}/network_adapters"),
    ("PUT", "/api/v1/instances/{id}/availability_group"),
    ("GET", "/api/v1/instances/{id}/context"),
    ("POST", "/api/v1/instances/{id}/context"),
    ("PUT", "/api/v1/instances/{id}/context"),
    ("DELETE", "/api/v1/instances/{id}/context/{key}"),
    ("GET", "/api/v1/instances/{id}/note"),
    ("POST", "/api/v1/instances/{id}/remote_access"),
    ("GET", "/api/v1/console_sessions/{id}"),
    ("GET", "/api/v1/disks"),
    ("POST", "/api/v1/disks"),
    ("GET", "/api/v1/disks/{id}"),
    ("PUT", "/api/v1/disks/{id}"),
    ("DELETE", "/api/v1/disks/{id}"),
    ("GET", "/api/v1/disks/{id}/state"),
    ("POST", "/api/v1/disks/{id}/resize"),
    ("POST", "/api/v1/disks/{id}/clone"),
    ("GET", "/api/v1/ip_addresses"),
    ("POST", "/api/v1/ip_addresses"),
    ("GET", "/api/v1/ip_addresses/public"),
    ("GET", "/api/v1/ip_addresses/private"),
    ("GET", "/api/v1/ip_addresses/{id}"),
    ("DELETE", "/api/v1/ip_addresses/{id}"),
    ("GET", "/api/v1/networks"),
    ("POST", "/api/v1/networks"),
    ("GET", "/api/v1/networks/public"),
    ("GET", "/api/v1/networks/private"),
    ("GET", "/api/v1/networks/{id}"),
    ("DELETE", "/api/v1/networks/{id}"),
    ("GET", "/api/v1/performance_tiers/instances"),
    ("GET", "/api/v1/performance_tiers/disks"),
    ("GET", "/api/v1/regions"),
    ("GET", "/api/v1/regions/{id}"),
    ("GET", "/api/v1/templates"),
    ("GET", "/api/v1/templates/{id}"),
    ("GET", "/api/v1/public_keys"),
    ("POST", "/api/v1/public_keys"),
    ("GET", "/api/v1/public_keys/{id}"),
    ("DELETE", "/api/v1/public_keys/{id}"),
];

/// A request matched to a route template, with its path parameters.
#[derive(Debug, Clone)]
pub(crate) struct Matched {
    pub method: &'static str,
    pub route: &'static str,
    pub params: Vec<String>,
}

impl Matched {
    fn param(&self, i: usize) -> &str {
        self.params.get(i).map_or("", String::as_str)
    }
}

/// Matches a request. A single trailing slash is allowed; empty segments
/// (`//api/v1/...`) match nothing, as on the real service.
pub(crate) fn match_route(method: &str, path: &str) -> Option<Matched> {
    let path = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
    };
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    if segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    'routes: for (m, route) in ROUTES {
        if *m != method {
            continue;
        }
        let tsegs = route.split('/').skip(1);
        if tsegs.clone().count() != segs.len() {
            continue;
        }
        let mut params = Vec::new();
        for (t, s) in tsegs.zip(segs.iter()) {
            if t.starts_with('{') {
                params.push(
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8_lossy()
                        .into_owned(),
                );
            } else if t != *s {
                continue 'routes;
            }
        }
        return Some(Matched {
            method: m,
            route,
            params,
        });
    }
    None
}

// ---------------------------------------------------------------------------
// Bodies and field validation.

/// The JSON object of a request body; an empty body is `{}`.
fn object(body: &[u8]) -> Result<Map<String, Value>, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad_request("The request body must be a JSON object")),
        Err(_) => Err(bad_request("The request body is not valid JSON")),
    }
}

struct Fields<'a> {
    body: &'a Map<String, Value>,
    details: Details,
}

impl<'a> Fields<'a> {
    fn new(body: &'a Map<String, Value>) -> Self {
        Fields {
            body,
            details: Details::new(),
        }
    }

    fn err(&mut self, field: &str, msg: impl Into<String>) {
        self.details
            .entry(field.to_owned())
            .or_default()
            .push(msg.into());
    }

    fn ok(&self) -> bool {
        self.details.is_empty()
    }

    fn has(&self, key: &str) -> bool {
        self.body.get(key).is_some_and(|v| !v.is_null())
    }

    fn string(&mut self, key: &str, required: bool) -> Option<String> {
        self.string_max(key, required, 255)
    }

    fn string_max(&mut self, key: &str, required: bool, max: usize) -> Option<String> {
        match self.body.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.err(key, "can't be blank");
                }
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.err(key, "can't be blank");
                None
            }
            Some(Value::String(s)) if s.len() > max => {
                self.err(key, format!("is too long (maximum is {max} characters)"));
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.err(key, "must be a string");
                None
            }
        }
    }

    fn int(&mut self, key: &str, required: bool, min: u64, max: u64) -> Option<u64> {
        let v = match self.body.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.err(key, "can't be blank");
                }
                return None;
            }
            Some(Value::Number(n)) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e15)
                    .map(|f| f as u64)
            }),
            Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
            Some(_) => None,
        };
        let is_negative = self
            .body
            .get(key)
            .and_then(Value::as_i64)
            .is_some_and(|n| n < 0);
        match v {
            Some(v) if v < min => {
                self.err(key, format!("{v} is less than the minimum of {min}"));
                None
            }
            Some(v) if v > max => {
                self.err(key, format!("{v} is greater than the maximum of {max}"));
                None
            }
            Some(v) => Some(v),
            None if is_negative => {
                self.err(key, format!("is less than the minimum of {min}"));
                None
            }
            None => {
                self.err(key, "must be an integer");
                None
            }
        }
    }

    fn boolean(&mut self, key: &str) -> Option<bool> {
        match self.body.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::String(s)) if s == "true" || s == "1" => Some(true),
            Some(Value::String(s)) if s == "false" || s == "0" => Some(false),
            Some(_) => {
                self.err(key, "must be true or false");
                None
            }
        }
    }

    fn one_of(&mut self, key: &str, allowed: &[&str]) -> Option<String> {
        let v = self.string(key, false)?;
        if allowed.contains(&v.as_str()) {
            Some(v)
        } else {
            self.err(
                key,
                format!("is not included in the list ({})", allowed.join(", ")),
            );
            None
        }
    }

    /// An array of id strings (duplicates refused).
    fn ids(&mut self, key: &str, required: bool) -> Option<Vec<String>> {
        match self.body.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.err(key, "can't be blank");
                }
                None
            }
            Some(Value::Array(items)) => {
                let mut out: Vec<String> = Vec::new();
                for it in items {
                    // Some clients send objects ({"id": ...}) instead of bare ids.
                    let id = match it {
                        Value::String(s) => Some(s.clone()),
                        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_owned),
                        _ => None,
                    };
                    match id {
                        Some(id) if !out.contains(&id) => out.push(id),
                        Some(id) => {
                            self.err(key, format!("contains {id} more than once"));
                            return None;
                        }
                        None => {
                            self.err(key, "must be an array of ids");
                            return None;
                        }
                    }
                }
                Some(out)
            }
            Some(_) => {
                self.err(key, "must be an array of ids");
                None
            }
        }
    }

    fn fail(self, description: &str) -> Reply {
        validation(description, self.details)
    }
}

fn hostname_from(name: &str) -> String {
    let mut h: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    h = h.trim_matches('-').chars().take(63).collect();
    if h.is_empty() {
        "instance".to_owned()
    } else {
        h
    }
}

// ---------------------------------------------------------------------------
// Dispatch.

/// What a handler needs besides the account.
pub(crate) struct Ctx<'a> {
    pub cat: &'a Catalog,
    pub timings: &'a SimTimings,
    pub now: Instant,
    pub wall: OffsetDateTime,
    pub origin: Origin,
}

impl Ctx<'_> {
    fn chain(&self, steps: &[(&'static str, Duration)]) -> Timeline {
        Timeline::chain(self.now, self.wall, &self.origin, steps)
    }
}

macro_rules! body {
    ($body:expr) => {
        match object($body) {
            Ok(b) => b,
            Err(r) => return r,
        }
    };
}

/// Runs one `/api/v1` route against an account (already settled to `cx.now`).
pub(crate) fn dispatch(cx: &Ctx<'_>, acc: &mut Account, m: &Matched, body: &[u8]) -> Reply {
    let id = m.param(0);
    match (m.method, m.route) {
        ("GET", "/api/v1/instances") => Reply::ok(Value::Array(
            acc.instances
                .iter()
                .map(|i| acc.instance_json(cx.cat, i))
                .collect(),
        )),
        ("POST", "/api/v1/instances") => create_basic(cx, acc, &body!(body)),
        ("POST", "/api/v1/instances/assemble") => assemble(cx, acc, &body!(body)),
        ("GET", "/api/v1/instances/{id}") => with_instance(acc, id, |acc, i| {
            Reply::ok(acc.instance_json(cx.cat, &acc.instances[i]))
        }),
        ("PUT", "/api/v1/instances/{id}") => {
            let b = body!(body);
            with_instance(acc, id, |acc, i| update_instance(cx, acc, i, &b))
        }
        ("DELETE", "/api/v1/instances/{id}") => {
            with_instance(acc, id, |acc, i| delete_instance(cx, acc, i))
        }
        ("GET", "/api/v1/instances/{id}/state") => with_instance(acc, id, |acc, i| {
            Reply::ok(json!({"state": acc.instances[i].state}))
        }),
        ("POST", "/api/v1/instances/{id}/start") => {
            with_instance(acc, id, |acc, i| start_instance(cx, acc, i))
        }
        ("POST", "/api/v1/instances/{id}/stop") => {
            with_instance(acc, id, |acc, i| stop_instance(cx, acc, i))
        }
        ("PUT", "/api/v1/instances/{id}/disks") => {
            let b = body!(body);
            with_instance(acc, id, |acc, i| put_disks(cx, acc, i, &b))
        }
        ("PUT", "/api/v1/instances/{id}/public_keys") => {
            let b = body!(body);
            with_instance(acc, id, |acc, i| put_keys(cx, acc, i, &b))
        }
        ("PUT", "/api/v1/instances/{id}/network_adapters") => {
            let b = body!(body);
            with_instance(acc, id, |acc, i| put_adapters(cx, acc, i, &b))
        }
        ("PUT", "/api/v1/instances/{id}/availability_group") => {
            let b = body!(body);
            with_instance(acc, id, |acc, i| put_group(cx, acc, i, &b))
        }
        ("GET", "/api/v1/instances/{id}/context") => {
            with_instance(acc, id, |acc, i| Reply::ok(context_json(&acc.instances[i])))
        }
        ("POST", "/api/v1/instances/{id}/context") => {
            let b = body!(body);
            with_instance(acc, id, |acc, i| set_context(cx, acc, i, &b, false))
        }
        ("PUT", "/api/v1/instances/{id}/context") => {
            let b = body!(body);
            with_instance(acc, id, |acc, i| set_context(cx, acc, i, &b, true))
        }
        ("DELETE", "/api/v1/instances/{id}/context/{key}") => {
            let key = m.param(1).to_owned();
            with_instance(acc, id, |acc, i| {
                let inst = &mut acc.instances[i];
                if inst.context.remove(&key).is_none() {
                    return not_found("Context key");
                }
                inst.updated_at = cx.wall;
                Reply::ok(context_json(inst))
            })
        }
        ("GET", "/api/v1/instances/{id}/note") => with_instance(acc, id, |acc, i| {
            Reply::ok(json!({"note": acc.instances[i].note}))
        }),
        ("POST", "/api/v1/instances/{id}/remote_access") => {
            let b = body!(body);
            with_instance(acc, id, |acc, i| remote_access(acc, i, &b))
        }
        ("GET", "/api/v1/console_sessions/{id}") => {
            match acc.consoles.iter().find(|c| c.id == id) {
                Some(c) => Reply::ok(Account::console_json(c)),
                None => not_found("Console session"),
            }
        }
        ("GET", "/api/v1/disks") => Reply::ok(Value::Array(
            acc.disks.iter().map(|d| acc.disk_json(cx.cat, d)).collect(),
        )),
        ("POST", "/api/v1/disks") => create_disk(cx, acc, &body!(body)),
        ("GET", "/api/v1/disks/{id}") => with_disk(acc, id, |acc, d| {
            Reply::ok(acc.disk_json(cx.cat, &acc.disks[d]))
        }),
        ("PUT", "/api/v1/disks/{id}") => {
            let b = body!(body);
            with_disk(acc, id, |acc, d| update_disk(cx, acc, d, &b))
        }
        ("DELETE", "/api/v1/disks/{id}") => with_disk(acc, id, |acc, d| delete_disk(cx, acc, d)),
        ("GET", "/api/v1/disks/{id}/state") => with_disk(acc, id, |acc, d| {
            Reply::ok(json!({"state": acc.disks[d].state}))
        }),
        ("POST", "/api/v1/disks/{id}/resize") => {
            let b = body!(body);
            with_disk(acc, id, |acc, d| resize_disk(cx, acc, d, &b))
        }
        ("POST", "/api/v1/disks/{id}/clone") => {
            let b = body!(body);
            with_disk(acc, id, |acc, d| clone_disk(cx, acc, d, &b))
        }
        ("GET", "/api/v1/ip_addresses") => list_ips(acc, None),
        ("GET", "/api/v1/ip_addresses/public") => list_ips(acc, Some(true)),
        ("GET", "/api/v1/ip_addresses/private") => list_ips(acc, Some(false)),
        ("POST", "/api/v1/ip_addresses") => create_ip(cx, acc, &body!(body)),
        ("GET", "/api/v1/ip_addresses/{id}") => match acc.ip_idx(id) {
            Some(i) => Reply::ok(Account::ip_json(&acc.ips[i])),
            None => not_found("IP address"),
        },
        ("DELETE", "/api/v1/ip_addresses/{id}") => match acc.ip_idx(id) {
            Some(i) if !acc.ips[i].instance_ids.is_empty() => validation(
                "IP address could not be deleted",
                one_detail("instance_ids", "must be empty (the address is in use)"),
            ),
            Some(i) => Reply::ok(Account::ip_json(&acc.ips.remove(i))),
            None => not_found("IP address"),
        },
        ("GET", "/api/v1/networks") => list_networks(cx, acc, None),
        ("GET", "/api/v1/networks/public") => list_networks(cx, acc, Some(true)),
        ("GET", "/api/v1/networks/private") => list_networks(cx, acc, Some(false)),
        ("POST", "/api/v1/networks") => create_network(cx, acc, &body!(body)),
        ("GET", "/api/v1/networks/{id}") => match acc.network_idx(id) {
            Some(n) => Reply::ok(acc.network_json(cx.cat, &acc.networks[n])),
            None => not_found("Network"),
        },
        ("DELETE", "/api/v1/networks/{id}") => match acc.network_idx(id) {
            Some(n) => delete_network(cx, acc, n),
            None => not_found("Network"),
        },
        ("GET", "/api/v1/performance_tiers/instances") => Reply::ok(Value::Array(
            cx.cat
                .instance_tiers
                .iter()
                .map(|t| cx.cat.tier_json(t))
                .collect(),
        )),
        ("GET", "/api/v1/performance_tiers/disks") => Reply::ok(Value::Array(
            cx.cat
                .disk_tiers
                .iter()
                .map(|t| cx.cat.tier_json(t))
                .collect(),
        )),
        ("GET", "/api/v1/regions") => Reply::ok(Value::Array(
            (0..cx.cat.regions.len())
                .map(|r| cx.cat.region_json(r))
                .collect(),
        )),
        ("GET", "/api/v1/regions/{id}") => match cx.cat.find_region(id) {
            Some(r) => Reply::ok(cx.cat.region_json(r)),
            None => not_found("Region"),
        },
        ("GET", "/api/v1/templates") => Reply::ok(Value::Array(
            cx.cat
                .templates
                .iter()
                .map(|t| cx.cat.template_json(t))
                .collect(),
        )),
        ("GET", "/api/v1/templates/{id}") => match cx.cat.templates.iter().find(|t| t.id == id) {
            Some(t) => Reply::ok(cx.cat.template_json(t)),
            None => not_found("Template"),
        },
        ("GET", "/api/v1/public_keys") => Reply::ok(Value::Array(
            acc.keys.iter().map(Account::key_json).collect(),
        )),
        ("POST", "/api/v1/public_keys") => create_key(cx, acc, &body!(body)),
        ("GET", "/api/v1/public_keys/{id}") => match acc.key_idx(id) {
            Some(k) => Reply::ok(Account::key_json(&acc.keys[k])),
            None => not_found("Public key"),
        },
        ("DELETE", "/api/v1/public_keys/{id}") => match acc.key_idx(id) {
            Some(k) => {
                let key = acc.keys.remove(k);
                for i in &mut acc.instances {
                    i.public_keys.retain(|x| *x != key.id);
                }
                Reply::ok(Account::key_json(&key))
            }
            None => not_found("Public key"),
        },
        (method, route) => super::util::route_not_found(method, route),
    }
}

fn with_instance(
    acc: &mut Account,
    id: &str,
    f: impl FnOnce(&mut Account, usize) -> Reply,
) -> Reply {
    match acc.instance_idx(id) {
        Some(i) => f(acc, i),
        None => not_found("Instance"),
    }
}

fn with_disk(acc: &mut Account, id: &str, f: impl FnOnce(&mut Account, usize) -> Reply) -> Reply {
    match acc.disk_idx(id) {
        Some(d) => f(acc, d),
        None => not_found("Disk"),
    }
}

// ---------------------------------------------------------------------------
// Instances.

fn resolve_region(cx: &Ctx<'_>, f: &mut Fields<'_>, key: Option<String>) -> Option<usize> {
    let key = key?;
    let r = cx.cat.find_region(&key);
    if r.is_none() {
        f.err("region", "is not a valid region");
    }
    r
}

fn resolve_instance_tier(
    cx: &Ctx<'_>,
    f: &mut Fields<'_>,
    field: &str,
    key: Option<String>,
    region: Option<usize>,
) -> Option<usize> {
    let region = region?;
    match key {
        Some(k) => match cx.cat.find_instance_tier(&k) {
            Some(t) if cx.cat.instance_tiers[t].region == region => Some(t),
            Some(_) => {
                f.err(field, "is not available in this region");
                None
            }
            None => {
                f.err(field, "is not a valid performance tier");
                None
            }
        },
        None => cx
            .cat
            .instance_tiers
            .iter()
            .position(|t| t.region == region),
    }
}

fn resolve_disk_tier(
    cx: &Ctx<'_>,
    f: &mut Fields<'_>,
    field: &str,
    key: Option<String>,
    region: Option<usize>,
) -> Option<usize> {
    let region = region?;
    match key {
        Some(k) => match cx.cat.find_disk_tier(&k) {
            Some(t) if cx.cat.disk_tiers[t].region == region => Some(t),
            Some(_) => {
                f.err(field, "is not available in this region");
                None
            }
            None => {
                f.err(field, "is not a valid performance tier");
                None
            }
        },
        None => cx.cat.disk_tiers.iter().position(|t| t.region == region),
    }
}

fn check_keys(acc: &Account, f: &mut Fields<'_>, keys: &[String]) {
    for k in keys {
        if acc.key_idx(k).is_none() {
            f.err("public_keys", format!("{k} is not a known public key"));
        }
    }
}

fn create_basic(cx: &Ctx<'_>, acc: &mut Account, b: &Map<String, Value>) -> Reply {
    let mut f = Fields::new(b);
    let name = f.string("name", true);
    let hostname = f.string("hostname", false);
    let memory = f.int("memory", true, MIN_MEMORY, MAX_MEMORY);
    let size = f.int("size", true, 1, MAX_DISK_GB);
    let region_key = f.string("region", true);
    let template_key = f.string("template", true);
    let itier = f.string("instance_performance_tier", false);
    let dtier = f.string("disk_performance_tier", false);
    let public_ip = f.boolean("allocate_public_ip").unwrap_or(true);
    let start = f.boolean("start_when_ready").unwrap_or(false);
    let keys = f.ids("public_keys", false).unwrap_or_default();
    let region = resolve_region(cx, &mut f, region_key);
    let itier = resolve_instance_tier(cx, &mut f, "instance_performance_tier", itier, region);
    let dtier = resolve_disk_tier(cx, &mut f, "disk_performance_tier", dtier, region);
    let template = match (template_key, region) {
        (Some(k), Some(r)) => match cx.cat.find_template(&k, r) {
            Some(t) if cx.cat.templates[t].region == r => Some(t),
            Some(_) => {
                f.err("template", "is not available in this region");
                None
            }
            None => {
                f.err("template", "is not a valid template");
                None
            }
        },
        _ => None,
    };
    if let (Some(t), Some(s)) = (template, size) {
        let min = cx.cat.templates[t].min_size;
        if s < min {
            f.err(
                "size",
                format!("{s} is less than the template's minimum of {min}"),
            );
        }
    }
    check_keys(acc, &mut f, &keys);
    let network = region.and_then(|r| acc.default_network(r, public_ip));
    let address = network.and_then(|n| acc.allocate_address(n));
    if region.is_some() && address.is_none() {
        f.err("ip_addresses", "no free address is left in the region");
    }
    let (
        true,
        Some(name),
        Some(memory),
        Some(size),
        Some(region),
        Some(itier),
        Some(dtier),
        Some(template),
        Some(network),
        Some(address),
    ) = (
        f.ok(),
        name,
        memory,
        size,
        region,
        itier,
        dtier,
        template,
        network,
        address,
    )
    else {
        return f.fail("Instance could not be created");
    };
    let id = new_id();
    let disk_id = new_id();
    let ip_id = new_id();
    let net_id = acc.networks[network].id.clone();
    acc.disks.push(Disk {
        id: disk_id.clone(),
        name: format!("{name}-boot"),
        position: 0,
        size,
        state: "attached",
        cdrom: false,
        is_template: false,
        instance_id: Some(id.clone()),
        template: Some(template),
        tier: dtier,
        region,
        owned: true,
        created_at: cx.wall,
        updated_at: cx.wall,
        timeline: Timeline::default(),
    });
    acc.ips.push(IpAddress {
        id: ip_id.clone(),
        name: format!("{name}-ip"),
        address,
        network_id: net_id.clone(),
        instance_ids: vec![id.clone()],
        shareable: false,
        owned: true,
        created_at: cx.wall,
        updated_at: cx.wall,
    });
    let t = cx.timings;
    let timeline = if start {
        cx.chain(&[("starting", t.provision), ("running", t.start)])
    } else {
        cx.chain(&[("stopped", t.provision)])
    };
    let hostname = hostname.unwrap_or_else(|| hostname_from(&name));
    let note = format!(
        "Provisioned from template {}.",
        cx.cat.templates[template].name
    );
    let inst = Instance {
        id,
        hostname,
        memory,
        virtualization: "hvm".into(),
        boot_device: "disk".into(),
        start_on_shutdown: false,
        start_on_reboot: true,
        start_on_crash: true,
        state: "provisioning",
        tier: itier,
        region,
        availability_group: Vec::new(),
        disks: vec![disk_id],
        public_keys: keys,
        adapters: vec![Adapter {
            id: new_id(),
            network: net_id,
            dhcp: true,
            ips: vec![ip_id],
        }],
        context: BTreeMap::new(),
        note,
        created_at: cx.wall,
        updated_at: cx.wall,
        timeline,
        name,
    };
    let out = acc.instance_json(cx.cat, &inst);
    acc.instances.push(inst);
    Reply::ok(out)
}

/// Checks disks for an instance in `region`; `owner` may already hold them. No disk at all is
/// fine: an instance boots from the network or a cdrom, and Packer detaches every disk.
fn check_disks(
    acc: &Account,
    f: &mut Fields<'_>,
    disks: &[String],
    region: Option<usize>,
    owner: Option<&str>,
) {
    for d in disks {
        match acc.disk_idx(d) {
            None => f.err("disks", format!("{d} is not a known disk")),
            Some(x) => {
                let disk = &acc.disks[x];
                if region.is_some_and(|r| r != disk.region) {
                    f.err("disks", format!("{d} is in another region"));
                }
                let mine = owner.is_some() && disk.instance_id.as_deref() == owner;
                if !(disk.state == UNATTACHED || (mine && disk.state == "attached")) {
                    f.err(
                        "disks",
                        format!("{d} is not available (state {})", disk.state),
                    );
                }
            }
        }
    }
}

/// Checks addresses for an instance; returns their networks in order.
fn check_ips(
    acc: &Account,
    f: &mut Fields<'_>,
    ips: &[String],
    region: Option<usize>,
    owner: Option<&str>,
) -> Vec<(String, Vec<String>)> {
    let mut adapters: Vec<(String, Vec<String>)> = Vec::new();
    for ip in ips {
        let Some(x) = acc.ip_idx(ip) else {
            f.err("ip_addresses", format!("{ip} is not a known IP address"));
            continue;
        };
        let a = &acc.ips[x];
        let net_region = acc
            .network_idx(&a.network_id)
            .map(|n| acc.networks[n].region);
        if region.is_some() && net_region != region {
            f.err("ip_addresses", format!("{ip} is in another region"));
        }
        let free = a.instance_ids.is_empty()
            || a.shareable
            || owner.is_some_and(|o| a.instance_ids.iter().any(|i| i == o));
        if !free {
            f.err("ip_addresses", format!("{ip} is already in use"));
        }
        match adapters.iter_mut().find(|(n, _)| *n == a.network_id) {
            Some((_, list)) => list.push(ip.clone()),
            None => adapters.push((a.network_id.clone(), vec![ip.clone()])),
        }
    }
    adapters
}

fn check_group(acc: &Account, f: &mut Fields<'_>, group: &[String], me: Option<&str>) {
    for g in group {
        if Some(g.as_str()) == me {
            f.err("availability_group", "cannot contain the instance itself");
        } else if acc.instance_idx(g).is_none() {
            f.err("availability_group", format!("{g} is not a known instance"));
        }
    }
}

fn attach_disks(acc: &mut Account, instance: &str, disks: &[String], wall: OffsetDateTime) {
    for (pos, id) in disks.iter().enumerate() {
        if let Some(d) = acc.disks.iter_mut().find(|d| &d.id == id) {
            d.instance_id = Some(instance.to_owned());
            d.state = "attached";
            d.position = pos;
            d.updated_at = wall;
        }
    }
}

fn attach_ips(acc: &mut Account, instance: &str, ips: &[String], wall: OffsetDateTime) {
    for ip in acc.ips.iter_mut().filter(|ip| ips.contains(&ip.id)) {
        if !ip.instance_ids.iter().any(|i| i == instance) {
            ip.instance_ids.push(instance.to_owned());
            ip.updated_at = wall;
        }
    }
}

fn assemble(cx: &Ctx<'_>, acc: &mut Account, b: &Map<String, Value>) -> Reply {
    let mut f = Fields::new(b);
    let name = f.string("name", true);
    let hostname = f.string("hostname", false);
    let memory = f.int("memory", true, MIN_MEMORY, MAX_MEMORY);
    let tier_key = f.string("performance_tier", true);
    let region_key = f.string("region", true);
    // No disks: an instance that boots from the network or a cdrom (the Terraform provider's
    // create and the Go client's test assemble without `disks`).
    let disks = f.ids("disks", false).unwrap_or_default();
    let ips = f.ids("ip_addresses", false).unwrap_or_default();
    let keys = f.ids("public_keys", false).unwrap_or_default();
    let group = f.ids("availability_group", false).unwrap_or_default();
    let virtualization = f
        .one_of("virtualization", &["hvm", "pv"])
        .unwrap_or_else(|| "hvm".into());
    let boot_device = f
        .one_of("boot_device", &["disk", "cdrom", "network"])
        .unwrap_or_else(|| "disk".into());
    let start_on_shutdown = f.boolean("start_on_shutdown").unwrap_or(false);
    let start_on_reboot = f.boolean("start_on_reboot").unwrap_or(true);
    let start_on_crash = f.boolean("start_on_crash").unwrap_or(true);
    let region = resolve_region(cx, &mut f, region_key);
    let tier = if tier_key.is_some() {
        resolve_instance_tier(cx, &mut f, "performance_tier", tier_key, region)
    } else {
        None
    };
    check_disks(acc, &mut f, &disks, region, None);
    let adapters = check_ips(acc, &mut f, &ips, region, None);
    check_keys(acc, &mut f, &keys);
    check_group(acc, &mut f, &group, None);
    let (true, Some(name), Some(memory), Some(region), Some(tier)) =
        (f.ok(), name, memory, region, tier)
    else {
        return f.fail("Instance could not be assembled");
    };
    let id = new_id();
    attach_disks(acc, &id, &disks, cx.wall);
    attach_ips(acc, &id, &ips, cx.wall);
    let inst = Instance {
        id,
        hostname: hostname.unwrap_or_else(|| hostname_from(&name)),
        memory,
        virtualization,
        boot_device,
        start_on_shutdown,
        start_on_reboot,
        start_on_crash,
        // The Terraform provider expects its first GET to say `stopped`.
        state: "stopped",
        tier,
        region,
        availability_group: group,
        disks,
        public_keys: keys,
        adapters: adapters
            .into_iter()
            .map(|(network, ips)| Adapter {
                id: new_id(),
                network,
                dhcp: true,
                ips,
            })
            .collect(),
        context: BTreeMap::new(),
        note: String::new(),
        created_at: cx.wall,
        updated_at: cx.wall,
        timeline: Timeline::default(),
        name,
    };
    let out = acc.instance_json(cx.cat, &inst);
    acc.instances.push(inst);
    Reply::ok(out)
}

fn state_error(description: &str, must: &str) -> Reply {
    validation(description, one_detail("state", must))
}

fn start_instance(cx: &Ctx<'_>, acc: &mut Account, i: usize) -> Reply {
    let inst = &mut acc.instances[i];
    if inst.state != "stopped" {
        return state_error("Instance could not be started", "must be stopped");
    }
    inst.state = "starting";
    inst.updated_at = cx.wall;
    inst.timeline = cx.chain(&[("running", cx.timings.start)]);
    Reply::ok(acc.instance_json(cx.cat, &acc.instances[i]))
}

fn stop_instance(cx: &Ctx<'_>, acc: &mut Account, i: usize) -> Reply {
    let inst = &mut acc.instances[i];
    if inst.state != "running" {
        return state_error("Instance could not be stopped", "must be running");
    }
    inst.state = "stopping";
    inst.updated_at = cx.wall;
    inst.timeline = cx.chain(&[("stopped", cx.timings.stop)]);
    Reply::ok(acc.instance_json(cx.cat, &acc.instances[i]))
}

/// Termination is refused only once it has begun. A moving instance (`updating_network`,
/// `starting`...) is terminated too: the pending change is dropped. OrionVM's clients delete
/// without waiting for a settled state: Packer's cleanup right after emptying the network
/// adapters, Terraform's destroy right after an update whose wait only skips `updating`.
fn delete_instance(cx: &Ctx<'_>, acc: &mut Account, i: usize) -> Reply {
    let inst = &mut acc.instances[i];
    if matches!(inst.state, "terminated" | "terminating") {
        return state_error("Instance could not be terminated", "is already terminated");
    }
    inst.state = "terminating";
    inst.updated_at = cx.wall;
    let t = cx.timings;
    inst.timeline = cx.chain(&[("terminated", t.terminate), (GONE, t.terminated_visible)]);
    Reply::ok(acc.instance_json(cx.cat, &acc.instances[i]))
}

/// Not ended: the states in which an instance's settings and attachments can change. A moving
/// instance can be changed too: the HyperCloud Go client's `InstanceUpdate` sends its PUTs
/// (disks, network adapters, public keys, then the rest) back to back without waiting, so
/// the later ones arrive while the network update is under way. (Memory, virtualization and
/// performance tier still need `stopped`, see `update_instance`.)
fn changeable(inst: &Instance, description: &str) -> Result<(), Reply> {
    if matches!(inst.state, "terminating" | "terminated" | "transferred") {
        return Err(state_error(description, "must not be terminated"));
    }
    Ok(())
}

fn update_instance(cx: &Ctx<'_>, acc: &mut Account, i: usize, b: &Map<String, Value>) -> Reply {
    let mut f = Fields::new(b);
    let name = f.string("name", false);
    let hostname = f.string("hostname", false);
    let memory = f.int("memory", false, MIN_MEMORY, MAX_MEMORY);
    let virtualization = f.one_of("virtualization", &["hvm", "pv"]);
    let boot_device = f.one_of("boot_device", &["disk", "cdrom", "network"]);
    let sos = f.boolean("start_on_shutdown");
    let sor = f.boolean("start_on_reboot");
    let soc = f.boolean("start_on_crash");
    let tier_key = f.string("performance_tier", false);
    let note = match b.get("note") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            f.err("note", "must be a string");
            None
        }
    };
    let region = acc.instances[i].region;
    let tier = if tier_key.is_some() {
        resolve_instance_tier(cx, &mut f, "performance_tier", tier_key, Some(region))
    } else {
        None
    };
    if !f.ok() {
        return f.fail("Instance could not be updated");
    }
    let inst = &mut acc.instances[i];
    if let Err(r) = changeable(inst, "Instance could not be updated") {
        return r;
    }
    if inst.state != "stopped" {
        // Memory, virtualization and tier change only while stopped.
        let mut d = Details::new();
        let mut need = |field: &str, changed: bool| {
            if changed {
                d.insert(
                    field.to_owned(),
                    vec!["can only be changed while the instance is stopped".into()],
                );
            }
        };
        need("memory", memory.is_some_and(|m| m != inst.memory));
        need(
            "virtualization",
            virtualization
                .as_ref()
                .is_some_and(|v| *v != inst.virtualization),
        );
        need("performance_tier", tier.is_some_and(|t| t != inst.tier));
        if !d.is_empty() {
            d.insert("state".into(), vec!["must be stopped".into()]);
            return validation("Instance could not be updated", d);
        }
    }
    if let Some(v) = name {
        inst.name = v;
    }
    if let Some(v) = hostname {
        inst.hostname = v;
    }
    if let Some(v) = memory {
        inst.memory = v;
    }
    if let Some(v) = virtualization {
        inst.virtualization = v;
    }
    if let Some(v) = boot_device {
        inst.boot_device = v;
    }
    if let Some(v) = sos {
        inst.start_on_shutdown = v;
    }
    if let Some(v) = sor {
        inst.start_on_reboot = v;
    }
    if let Some(v) = soc {
        inst.start_on_crash = v;
    }
    if let Some(v) = tier {
        inst.tier = v;
    }
    if let Some(v) = note {
        inst.note = v;
    }
    inst.updated_at = cx.wall;
    Reply::ok(acc.instance_json(cx.cat, &acc.instances[i]))
}

/// `PUT /instances/{id}/disks`: the whole list, in device order; empty detaches every disk
/// (Packer's cleanup keeps its built disk that way). A running instance attaches and detaches
/// live (Packer's downloader VM). Answers the attached disks, a JSON array (apiclient-go
/// parses an array here).
fn put_disks(cx: &Ctx<'_>, acc: &mut Account, i: usize, b: &Map<String, Value>) -> Reply {
    let mut f = Fields::new(b);
    let disks = f.ids("disks", true);
    let inst_id = acc.instances[i].id.clone();
    if let Some(d) = &disks {
        check_disks(
            acc,
            &mut f,
            d,
            Some(acc.instances[i].region),
            Some(&inst_id),
        );
    }
    let (true, Some(disks)) = (f.ok(), disks) else {
        return f.fail("Disks could not be updated");
    };
    if let Err(r) = changeable(&acc.instances[i], "Disks could not be updated") {
        return r;
    }
    let old = std::mem::take(&mut acc.instances[i].disks);
    for d in acc.disks.iter_mut() {
        if old.contains(&d.id) && !disks.contains(&d.id) {
            d.instance_id = None;
            d.state = UNATTACHED;
            d.position = 0;
            d.updated_at = cx.wall;
        }
    }
    attach_disks(acc, &inst_id, &disks, cx.wall);
    let inst = &mut acc.instances[i];
    inst.disks = disks;
    inst.updated_at = cx.wall;
    let inst = &acc.instances[i];
    Reply::ok(Value::Array(
        inst.disks
            .iter()
            .filter_map(|id| acc.disks.iter().find(|d| &d.id == id))
            .map(|d| acc.disk_json(cx.cat, d))
            .collect(),
    ))
}

/// `PUT /instances/{id}/public_keys`: answers the instance's keys, a JSON array.
fn put_keys(cx: &Ctx<'_>, acc: &mut Account, i: usize, b: &Map<String, Value>) -> Reply {
    let mut f = Fields::new(b);
    let keys = f.ids("public_keys", true);
    if let Some(k) = &keys {
        check_keys(acc, &mut f, k);
    }
    let (true, Some(keys)) = (f.ok(), keys) else {
        return f.fail("Public keys could not be updated");
    };
    if let Err(r) = changeable(&acc.instances[i], "Public keys could not be updated") {
        return r;
    }
    let inst = &mut acc.instances[i];
    inst.public_keys = keys;
    inst.updated_at = cx.wall;
    let inst = &acc.instances[i];
    Reply::ok(Value::Array(
        inst.public_keys
            .iter()
            .filter_map(|id| acc.keys.iter().find(|k| &k.id == id))
            .map(Account::key_json)
            .collect(),
    ))
}

/// `PUT /instances/{id}/availability_group`: the group (`availability_groups`, as the HyperCloud
/// Go client's `InstanceUpdate` spells it, is taken too). Answers the other instances of the
/// group, a JSON array.
fn put_group(cx: &Ctx<'_>, acc: &mut Account, i: usize, b: &Map<String, Value>) -> Reply {
    let renamed: Map<String, Value>;
    let b = match b.get("availability_groups") {
        Some(v) if !b.contains_key("availability_group") => {
            renamed = std::iter::once(("availability_group".to_owned(), v.clone())).collect();
            &renamed
        }
        _ => b,
    };
    let mut f = Fields::new(b);
    let group = f.ids("availability_group", true);
    let me = acc.instances[i].id.clone();
    if let Some(g) = &group {
        check_group(acc, &mut f, g, Some(&me));
    }
    let (true, Some(group)) = (f.ok(), group) else {
        return f.fail("Availability group could not be updated");
    };
    if let Err(r) = changeable(&acc.instances[i], "Availability group could not be updated") {
        return r;
    }
    let inst = &mut acc.instances[i];
    inst.availability_group = group;
    inst.updated_at = cx.wall;
    let inst = &acc.instances[i];
    Reply::ok(Value::Array(
        inst.availability_group
            .iter()
            .filter_map(|id| acc.instances.iter().find(|x| &x.id == id))
            .map(|x| acc.instance_json(cx.cat, x))
            .collect(),
    ))
}

/// `PUT /instances/{id}/network_adapters`: the whole list; empty removes every adapter
/// (Packer's cleanup). Answers the adapters, a JSON array.
fn put_adapters(cx: &Ctx<'_>, acc: &mut Account, i: usize, b: &Map<String, Value>) -> Reply {
    let mut f = Fields::new(b);
    let me = acc.instances[i].id.clone();
    let region = acc.instances[i].region;
    let mut wanted: Vec<(String, bool, Vec<String>)> = Vec::new();
    match b.get("network_adapters") {
        Some(Value::Array(items)) => {
            for (n, item) in items.iter().enumerate() {
                let Value::Object(o) = item else {
                    f.err("network_adapters", format!("[{n}] must be an object"));
                    continue;
                };
                let mut af = Fields::new(o);
                let network = af
                    .string("network", false)
                    .or_else(|| af.string("network_id", false));
                let dhcp = af.boolean("dhcp").unwrap_or(true);
                let ips = af.ids("ip_addresses", false).unwrap_or_default();
                for (k, msgs) in af.details {
                    for m in msgs {
                        f.err("network_adapters", format!("[{n}].{k} {m}"));
                    }
                }
                let Some(network) = network else {
                    f.err("network_adapters", format!("[{n}].network can't be blank"));
                    continue;
                };
                match acc.network_idx(&network) {
                    None => f.err(
                        "network_adapters",
                        format!("[{n}].network {network} is not a known network"),
                    ),
                    Some(x) if acc.networks[x].region != region => f.err(
                        "network_adapters",
                        format!("[{n}].network {network} is in another region"),
                    ),
                    Some(_) => {}
                }
                for (net, _) in check_ips(acc, &mut f, &ips, Some(region), Some(&me)) {
                    if net != network {
                        f.err(
                            "network_adapters",
                            format!("[{n}].ip_addresses must belong to network {network}"),
                        );
                    }
                }
                wanted.push((network, dhcp, ips));
            }
        }
        None | Some(Value::Null) => f.err("network_adapters", "can't be blank"),
        Some(_) => f.err("network_adapters", "must be an array"),
    }
    if !f.ok() {
        return f.fail("Network adapters could not be updated");
    }
    // The instance goes through `updating_network` and back to the state it was settled in
    // (a second change during the first keeps that state as the goal).
    let inst = &acc.instances[i];
    let prev = match inst.state {
        "stopped" | "running" => inst.state,
        "updating_network" => inst
            .timeline
            .steps
            .back()
            .map_or("stopped", |step| step.state),
        _ => {
            return state_error(
                "Network adapters could not be updated",
                "must be running or stopped",
            );
        }
    };
    let old = std::mem::take(&mut acc.instances[i].adapters);
    let all_new: Vec<String> = wanted.iter().flat_map(|w| w.2.iter().cloned()).collect();
    for ip in acc.ips.iter_mut() {
        let was = old.iter().any(|a| a.ips.contains(&ip.id));
        if was && !all_new.contains(&ip.id) {
            ip.instance_ids.retain(|x| *x != me);
            ip.updated_at = cx.wall;
        }
    }
    attach_ips(acc, &me, &all_new, cx.wall);
    let adapters = wanted
        .into_iter()
        .enumerate()
        .map(|(n, (network, dhcp, ips))| Adapter {
            id: old
                .get(n)
                .filter(|a| a.network == network)
                .map_or_else(new_id, |a| a.id.clone()),
            network,
            dhcp,
            ips,
        })
        .collect();
    let inst = &mut acc.instances[i];
    inst.adapters = adapters;
    inst.state = "updating_network";
    inst.updated_at = cx.wall;
    inst.timeline = cx.chain(&[(prev, cx.timings.stop)]);
    Reply::ok(Value::Array(acc.adapters_json(&acc.instances[i])))
}

/// An instance's context as the context calls answer it: one object per entry, a JSON array
/// (apiclient-go parses an array on every context call).
fn context_json(inst: &Instance) -> Value {
    Value::Array(
        inst.context
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect(),
    )
}

/// POST adds keys (`{"key": k, "value": v}` or a map); PUT replaces the context
/// with the map (bare, or under `"context"`).
fn set_context(
    cx: &Ctx<'_>,
    acc: &mut Account,
    i: usize,
    b: &Map<String, Value>,
    replace: bool,
) -> Reply {
    let single =
        b.len() == 2 && b.get("key").is_some_and(Value::is_string) && b.contains_key("value");
    let entries: Vec<(String, Value)> = if single {
        vec![(
            b.get("key")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            b.get("value").cloned().unwrap_or(Value::Null),
        )]
    } else if let (1, Some(Value::Object(m))) = (b.len(), b.get("context")) {
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    } else {
        b.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let mut d = Details::new();
    let mut clean = BTreeMap::new();
    for (k, v) in entries {
        if k.is_empty() || k.len() > 255 || k.contains('/') {
            d.entry("key".into())
                .or_default()
                .push(format!("{k:?} is not a valid context key"));
            continue;
        }
        let v = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                d.entry(k.clone())
                    .or_default()
                    .push("must be a string".into());
                continue;
            }
        };
        if v.len() > 65_536 {
            d.entry(k.clone())
                .or_default()
                .push("is too long (maximum is 65536 characters)".into());
            continue;
        }
        clean.insert(k, v);
    }
    if !d.is_empty() {
        return validation("Context could not be updated", d);
    }
    if !replace && clean.is_empty() {
        return validation(
            "Context could not be updated",
            one_detail("key", "can't be blank"),
        );
    }
    let inst = &mut acc.instances[i];
    if replace {
        inst.context = clean;
    } else {
        inst.context.extend(clean);
    }
    inst.updated_at = cx.wall;
    Reply::ok(context_json(inst))
}

fn remote_access(acc: &mut Account, i: usize, b: &Map<String, Value>) -> Reply {
    let mut f = Fields::new(b);
    let kind = f
        .one_of("type", &["vnc", "serial"])
        .unwrap_or_else(|| "vnc".into());
    if !f.ok() {
        return f.fail("Remote access could not be enabled");
    }
    if acc.instances[i].state != "running" {
        return state_error("Remote access could not be enabled", "must be running");
    }
    let id = new_id();
    let session = ConsoleSession {
        url: format!("wss://console.sim.orionvm.invalid/{kind}/{id}"),
        id,
        kind,
        state: "ready",
        token: random_hex(24),
        instance_id: acc.instances[i].id.clone(),
    };
    let out = Account::console_json(&session);
    acc.consoles.push(session);
    Reply::ok(out)
}

// ---------------------------------------------------------------------------
// Disks.

fn create_disk(cx: &Ctx<'_>, acc: &mut Account, b: &Map<String, Value>) -> Reply {
    let mut f = Fields::new(b);
    let name = f.string("name", true);
    let size = f.int("size", true, 1, MAX_DISK_GB);
    let region_key = f.string("region", true);
    let tier_key = f.string("performance_tier", false);
    let template_key = f.string("template", false);
    let region = resolve_region(cx, &mut f, region_key);
    let tier = resolve_disk_tier(cx, &mut f, "performance_tier", tier_key, region);
    let template = match (template_key, region) {
        (Some(k), Some(r)) => match cx.cat.find_template(&k, r) {
            Some(t) if cx.cat.templates[t].region == r => {
                let min = cx.cat.templates[t].min_size;
                if size.is_some_and(|s| s < min) {
                    f.err(
                        "size",
                        format!("is less than the template's minimum of {min}"),
                    );
                }
                Some(t)
            }
            _ => {
                f.err("template", "is not a valid template");
                None
            }
        },
        _ => None,
    };
    let (true, Some(name), Some(size), Some(region), Some(tier)) =
        (f.ok(), name, size, region, tier)
    else {
        return f.fail("Disk could not be created");
    };
    let disk = Disk {
        id: new_id(),
        name,
        position: 0,
        size,
        state: "creating",
        cdrom: false,
        is_template: false,
        instance_id: None,
        template,
        tier,
        region,
        owned: false,
        created_at: cx.wall,
        updated_at: cx.wall,
        timeline: cx.chain(&[(UNATTACHED, cx.timings.provision)]),
    };
    let out = acc.disk_json(cx.cat, &disk);
    acc.disks.push(disk);
    Reply::ok(out)
}

fn disk_busy(d: &Disk, description: &str) -> Option<Reply> {
    is_moving(d.state).then(|| state_error(description, "must not be in transition"))
}

/// `PUT /disks/{id}`: name and `cdrom` (Packer's VNC builder marks its ISO disk `cdrom: true`).
/// A `size` equal to the disk's is taken (the HyperCloud Go client's `DiskUpdate` resizes, then
/// sends the same body, size included, here); another size needs the resize call. Refused
/// only while the disk is being deleted.
fn update_disk(cx: &Ctx<'_>, acc: &mut Account, d: usize, b: &Map<String, Value>) -> Reply {
    let mut f = Fields::new(b);
    let name = f.string("name", false);
    let cdrom = f.boolean("cdrom");
    let size = f.int("size", false, 1, MAX_DISK_GB);
    if size.is_some_and(|s| s != acc.disks[d].size) {
        f.err("size", "can only be changed with resize");
    }
    if !f.ok() {
        return f.fail("Disk could not be updated");
    }
    let disk = &mut acc.disks[d];
    if disk.state == "deleting" {
        return state_error("Disk could not be updated", "must not be deleted");
    }
    if let Some(n) = name {
        disk.name = n;
    }
    if let Some(c) = cdrom {
        disk.cdrom = c;
    }
    disk.updated_at = cx.wall;
    Reply::ok(acc.disk_json(cx.cat, &acc.disks[d]))
}

fn delete_disk(cx: &Ctx<'_>, acc: &mut Account, d: usize) -> Reply {
    let disk = &mut acc.disks[d];
    if let Some(r) = disk_busy(disk, "Disk could not be deleted") {
        return r;
    }
    if disk.instance_id.is_some() || disk.state == "attached" {
        return state_error("Disk could not be deleted", "must be detached");
    }
    disk.state = "deleting";
    disk.updated_at = cx.wall;
    disk.timeline = cx.chain(&[(GONE, cx.timings.terminate)]);
    Reply::ok(acc.disk_json(cx.cat, &acc.disks[d]))
}

fn resize_disk(cx: &Ctx<'_>, acc: &mut Account, d: usize, b: &Map<String, Value>) -> Reply {
    let mut f = Fields::new(b);
    let size = f.int("size", true, 1, MAX_DISK_GB);
    let current = acc.disks[d].size;
    if size.is_some_and(|s| s <= current) {
        f.err(
            "size",
            format!("must be greater than the current size of {current}"),
        );
    }
    let (true, Some(size)) = (f.ok(), size) else {
        return f.fail("Disk could not be resized");
    };
    let disk = &mut acc.disks[d];
    if let Some(r) = disk_busy(disk, "Disk could not be resized") {
        return r;
    }
    let back = disk.state;
    disk.size = size;
    disk.state = "resizing";
    disk.updated_at = cx.wall;
    disk.timeline = cx.chain(&[(back, cx.timings.provision)]);
    Reply::ok(acc.disk_json(cx.cat, &acc.disks[d]))
}

fn clone_disk(cx: &Ctx<'_>, acc: &mut Account, d: usize, b: &Map<String, Value>) -> Reply {
    let mut f = Fields::new(b);
    let name = f.string("name", false);
    if !f.ok() {
        return f.fail("Disk could not be cloned");
    }
    let src = &acc.disks[d];
    if let Some(r) = disk_busy(src, "Disk could not be cloned") {
        return r;
    }
    let disk = Disk {
        id: new_id(),
        name: name.unwrap_or_else(|| format!("{}-clone", src.name)),
        position: 0,
        size: src.size,
        state: "cloning",
        cdrom: src.cdrom,
        is_template: false,
        instance_id: None,
        template: src.template,
        tier: src.tier,
        region: src.region,
        owned: false,
        created_at: cx.wall,
        updated_at: cx.wall,
        timeline: cx.chain(&[(UNATTACHED, cx.timings.provision)]),
    };
    let out = acc.disk_json(cx.cat, &disk);
    acc.disks.push(disk);
    Reply::ok(out)
}

// ---------------------------------------------------------------------------
// Addresses, networks, keys.

fn list_ips(acc: &Account, public: Option<bool>) -> Reply {
    Reply::ok(Value::Array(
        acc.ips
            .iter()
            .filter(|ip| {
                public.is_none_or(|p| {
                    acc.network_idx(&ip.network_id)
                        .is_some_and(|n| acc.networks[n].is_public == p)
                })
            })
            .map(Account::ip_json)
            .collect(),
    ))
}

/// `POST /ip_addresses`: an address on `network` (or `network_id`), or, with only `region`, a
/// public address in that region (the HyperCloud Go client's test allocates its public IP with
/// `{"region": ...}` and reads the network from the answer).
fn create_ip(cx: &Ctx<'_>, acc: &mut Account, b: &Map<String, Value>) -> Reply {
    let mut f = Fields::new(b);
    let name = f.string("name", false);
    let shareable = f.boolean("shareable").unwrap_or(false);
    let net = if f.has("network") || f.has("network_id") || !f.has("region") {
        let network = if f.has("network_id") {
            f.string("network_id", true)
        } else {
            f.string("network", true)
        };
        network.and_then(|n| {
            let x = acc.network_idx(&n);
            if x.is_none() {
                f.err("network", "is not a known network");
            }
            x
        })
    } else {
        let key = f.string("region", true);
        let region = resolve_region(cx, &mut f, key);
        region.and_then(|r| {
            let x = acc.default_network(r, true);
            if x.is_none() {
                f.err("region", "has no public network");
            }
            x
        })
    };
    let address = net.and_then(|n| acc.allocate_address(n));
    if net.is_some() && address.is_none() {
        f.err("network", "has no free addresses");
    }
    let (true, Some(net), Some(address)) = (f.ok(), net, address) else {
        return f.fail("IP address could not be created");
    };
    let ip = IpAddress {
        id: new_id(),
        name: name.unwrap_or_else(|| format!("ip-{}", address.replace('.', "-"))),
        address,
        network_id: acc.networks[net].id.clone(),
        instance_ids: Vec::new(),
        shareable,
        owned: false,
        created_at: cx.wall,
        updated_at: cx.wall,
    };
    let out = Account::ip_json(&ip);
    acc.ips.push(ip);
    Reply::ok(out)
}

fn list_networks(cx: &Ctx<'_>, acc: &Account, public: Option<bool>) -> Reply {
    Reply::ok(Value::Array(
        acc.networks
            .iter()
            .filter(|n| public.is_none_or(|p| n.is_public == p))
            .map(|n| acc.network_json(cx.cat, n))
            .collect(),
    ))
}

fn create_network(cx: &Ctx<'_>, acc: &mut Account, b: &Map<String, Value>) -> Reply {
    let mut f = Fields::new(b);
    let name = f.string("name", true);
    let region_key = f.string("region", true);
    let spec = f.string("specification", false);
    if f.boolean("is_public") == Some(true) {
        f.err("is_public", "only private networks can be created");
    }
    let region = resolve_region(cx, &mut f, region_key);
    let cidr = match spec {
        Some(s) => match parse_cidr(&s) {
            Some((net, len)) if (16..=29).contains(&len) => Some((net, len)),
            _ => {
                f.err(
                    "specification",
                    "must be an IPv4 network in CIDR notation, /16 to /29",
                );
                None
            }
        },
        // The first free 10.N.0.0/24 (N from 30).
        None => (30u32..=255)
            .map(|n| (0x0A00_0000 | (n << 16), 24))
            .find(|(net, _)| {
                let spec = format!("{}/24", ipv4(*net));
                !acc.networks.iter().any(|x| x.specification == spec)
            }),
    };
    if let Some((net, len)) = cidr {
        let spec = format!("{}/{len}", ipv4(net));
        if acc.networks.iter().any(|x| x.specification == spec) {
            f.err("specification", "is already used by another network");
        }
    }
    let (true, Some(name), Some(region), Some((net, len))) = (f.ok(), name, region, cidr) else {
        return f.fail("Network could not be created");
    };
    let n = Network::from_cidr(
        new_id(),
        name,
        false,
        net,
        len,
        region,
        ("198.51.100.53", "198.51.100.54"),
    );
    let out = acc.network_json(cx.cat, &n);
    acc.networks.push(n);
    Reply::ok(out)
}

fn delete_network(cx: &Ctx<'_>, acc: &mut Account, n: usize) -> Reply {
    let id = acc.networks[n].id.clone();
    if acc.networks[n].is_public {
        return validation(
            "Network could not be deleted",
            one_detail("is_public", "public networks cannot be deleted"),
        );
    }
    let in_use = acc.ips.iter().any(|ip| ip.network_id == id)
        || acc
            .instances
            .iter()
            .any(|i| i.adapters.iter().any(|a| a.network == id));
    if in_use {
        return validation(
            "Network could not be deleted",
            one_detail("network", "is in use by addresses or instances"),
        );
    }
    let net = acc.networks.remove(n);
    let mut out = acc.network_json(cx.cat, &net);
    out["state"] = Value::String("deleted".into());
    Reply::ok(out)
}

fn create_key(cx: &Ctx<'_>, acc: &mut Account, b: &Map<String, Value>) -> Reply {
    let mut f = Fields::new(b);
    let name = f.string("name", true);
    let key = f
        .string_max("key", true, 16_384)
        .map(|k| k.trim().to_owned());
    if let Some(k) = &key {
        let mut parts = k.split_whitespace();
        let kind = parts.next().unwrap_or("");
        let data = parts.next().unwrap_or("");
        let known =
            kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-");
        if !known || data.len() < 16 {
            f.err("key", "is not a valid public key");
        }
    }
    let (true, Some(name), Some(key)) = (f.ok(), name, key) else {
        return f.fail("Public key could not be created");
    };
    let k = PublicKey {
        id: new_id(),
        name,
        key,
        created_at: cx.wall,
        updated_at: cx.wall,
    };
    let out = Account::key_json(&k);
    acc.keys.push(k);
    Reply::ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let m = match_route("POST", "/api/v1/instances/abc/start").unwrap();
        assert_eq!(m.route, "/api/v1/instances/{id}/start");
        assert_eq!(m.params, vec!["abc"]);
        assert_eq!(
            match_route("GET", "/api/v1/ip_addresses/public")
                .unwrap()
                .route,
            "/api/v1/ip_addresses/public"
        );
        assert_eq!(
            match_route("GET", "/api/v1/instances/").unwrap().route,
            "/api/v1/instances"
        );
        assert!(match_route("GET", "//api/v1/instances").is_none());
        assert!(match_route("PATCH", "/api/v1/instances/x").is_none());
        assert!(match_route("GET", "/").is_none());
        assert!(match_route("GET", "").is_none());
        let m = match_route("DELETE", "/api/v1/instances/i/context/a%20b").unwrap();
        assert_eq!(m.params, vec!["i", "a b"]);
    }
}
