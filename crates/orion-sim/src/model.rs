//! The simulated OrionVM objects, their seed data, their JSON form and their
//! asynchronous state changes (computed lazily from deadlines).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::faults::Scope;
use super::util::{fmt_ts, new_id, now_wall, parse_ts};

/// The example objects, also the seed of the first account.
const FIXTURE: &str = include_str!("orionvm-v1-examples.json");

pub(crate) const MIN_MEMORY: u64 = 512;
pub(crate) const MAX_MEMORY: u64 = 262_144;
pub(crate) const MAX_DISK_GB: u64 = 16_384;

/// States that move on their own.
pub(crate) fn is_moving(state: &str) -> bool {
    matches!(
        state,
        "initial"
            | "pending_verification"
            | "provisioning"
            | "starting"
            | "stopping"
            | "terminating"
            | "updating"
            | "updating_network"
            | "creating"
            | "cloning"
            | "resizing"
            | "deleting"
    )
}

/// Marker state: the object disappears (404) once it is reached.
pub(crate) const GONE: &str = "__gone";

/// The settled state of a disk that no instance holds: the HyperCloud Go client's test and
/// Packer's `CreateDisk` poll `GET /disks/{id}` for exactly this string.
pub(crate) const UNATTACHED: &str = "unattached";

// ---------------------------------------------------------------------------
// Catalog: regions, tiers, templates (the same in every account).

#[derive(Debug, Clone)]
pub(crate) struct Region {
    pub id: String,
    pub name: String,
    pub code: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Tier {
    pub id: String,
    pub name: String,
    pub region: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Template {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub version: u64,
    pub region: usize,
    pub min_size: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    pub regions: Vec<Region>,
    pub instance_tiers: Vec<Tier>,
    pub disk_tiers: Vec<Tier>,
    pub templates: Vec<Template>,
}

impl Catalog {
    pub(crate) fn region_json(&self, r: usize) -> Value {
        match self.regions.get(r) {
            Some(r) => json!({"id": r.id, "name": r.name, "code": r.code}),
            None => Value::Null,
        }
    }

    /// A region by id or by code.
    pub(crate) fn find_region(&self, key: &str) -> Option<usize> {
        self.regions
            .iter()
            .position(|r| r.id == key || r.code.eq_ignore_ascii_case(key))
    }

    pub(crate) fn find_instance_tier(&self, id: &str) -> Option<usize> {
        self.instance_tiers.iter().position(|t| t.id == id)
    }

    pub(crate) fn find_disk_tier(&self, id: &str) -> Option<usize> {
        self.disk_tiers.iter().position(|t| t.id == id)
    }

    /// A template by id, or by slug within a region.
    pub(crate) fn find_template(&self, key: &str, region: usize) -> Option<usize> {
        self.templates.iter().position(|t| t.id == key).or_else(|| {
            self.templates
                .iter()
                .position(|t| t.region == region && t.slug == key)
        })
    }

    pub(crate) fn tier_json(&self, t: &Tier) -> Value {
        json!({"id": t.id, "name": t.name, "region": self.region_json(t.region)})
    }

    pub(crate) fn template_json(&self, t: &Template) -> Value {
        json!({"id": t.id, "name": t.name, "slug": t.slug, "version": t.version,
               "region": self.region_json(t.region)})
    }
}

// ---------------------------------------------------------------------------
// Fixture data (only the parts the seed needs).

#[derive(Deserialize)]
struct FxRef {
    id: String,
    name: String,
}

#[derive(Deserialize)]
struct FxRegion {
    id: String,
    name: String,
    code: String,
}

#[derive(Deserialize)]
struct FxTemplate {
    id: String,
    name: String,
    slug: String,
    version: u64,
}

#[derive(Deserialize)]
struct FxDisk {
    id: String,
    name: String,
    size: u64,
    performance_tier: FxRef,
    created_at: String,
    updated_at: String,
}

#[derive(Deserialize)]
struct FxNetwork {
    id: String,
    name: String,
    specification: String,
    netmask: String,
    gateway: String,
    primary_nameserver: String,
    secondary_nameserver: String,
    network_address: String,
}

#[derive(Deserialize)]
struct FxIp {
    id: String,
    name: String,
    address: String,
    created_at: String,
    updated_at: String,
}

#[derive(Deserialize)]
struct FxKey {
    id: String,
    name: String,
    key: String,
    created_at: String,
    updated_at: String,
}

#[derive(Deserialize)]
struct FxAdapter {
    id: String,
}

#[derive(Deserialize)]
struct FxInstance {
    id: String,
    name: String,
    hostname: String,
    memory: u64,
    network_adapters: Vec<FxAdapter>,
    created_at: String,
    updated_at: String,
}

#[derive(Deserialize)]
struct Fixture {
    region: FxRegion,
    performance_tier_instance: FxRef,
    template: FxTemplate,
    disk: FxDisk,
    network: FxNetwork,
    ip_address: FxIp,
    public_key: FxKey,
    instance: FxInstance,
}

fn fixture() -> io::Result<Fixture> {
    serde_json::from_str(FIXTURE).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn ts(s: &str) -> OffsetDateTime {
    parse_ts(s).unwrap_or_else(now_wall)
}

pub(crate) fn build_catalog() -> io::Result<Catalog> {
    let fx = fixture()?;
    let regions = vec![
        Region {
            id: fx.region.id,
            name: fx.region.name,
            code: fx.region.code,
        },
        Region {
            id: "57bf4554-6277-4c0b-9a9e-22cd3a40bd31".into(),
            name: "Melbourne 2".into(),
            code: "ME2".into(),
        },
    ];
    let tier = |id: &str, name: &str, region| Tier {
        id: id.into(),
        name: name.into(),
        region,
    };
    let instance_tiers = vec![
        tier(
            &fx.performance_tier_instance.id,
            &fx.performance_tier_instance.name,
            0,
        ),
        tier(
            "e254d08b-d423-44d1-9872-b68b8a991f27",
            "High Performance",
            0,
        ),
        tier("03147b9a-65e8-404e-a8a4-ff276403d76e", "Standard", 1),
        tier(
            "3c636a75-d026-4218-9a3f-44992c63ca71",
            "High Performance",
            1,
        ),
    ];
    let disk_tiers = vec![
        tier(
            &fx.disk.performance_tier.id,
            &fx.disk.performance_tier.name,
            0,
        ),
        tier("94d3ae58-f651-437d-bc3c-2f1629547466", "Performance SSD", 0),
        tier("f9cbcd87-6931-4baf-9b3b-ae19cc2b268e", "Standard", 1),
        tier("4fc28b8e-014e-4eed-a0d6-7ffebd793559", "Performance SSD", 1),
    ];
    let template = |id: &str, name: &str, slug: &str, version, region| Template {
        id: id.into(),
        name: name.into(),
        slug: slug.into(),
        version,
        region,
        min_size: 10,
    };
    let templates = vec![
        template(
            &fx.template.id,
            &fx.template.name,
            &fx.template.slug,
            fx.template.version,
            0,
        ),
        template(
            "fb73633d-25c4-4403-8144-ea46714f04ce",
            "Debian 12",
            "debian-12",
            1,
            0,
        ),
        template(
            "d5ff0f8c-e057-48aa-b21d-fc81d8199889",
            &fx.template.name,
            &fx.template.slug,
            fx.template.version,
            1,
        ),
        template(
            "9c1d48e0-29fe-4ca4-a62d-146f0abed0d2",
            "Debian 12",
            "debian-12",
            1,
            1,
        ),
    ];
    Ok(Catalog {
        regions,
        instance_tiers,
        disk_tiers,
        templates,
    })
}

// ---------------------------------------------------------------------------
// Timelines: the states an object will pass through, with their deadlines.

/// The request that began a transition (`hang_transitions` scopes match it).
#[derive(Debug, Clone, Default)]
pub(crate) struct Origin {
    pub method: String,
    pub path: String,
    pub route: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub at: Instant,
    pub wall: OffsetDateTime,
    pub state: &'static str,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Timeline {
    pub steps: VecDeque<Step>,
    pub origin: Origin,
}

impl Timeline {
    /// A chain of `(state, how long until it is entered after the previous step)`.
    pub(crate) fn chain(
        now: Instant,
        wall: OffsetDateTime,
        origin: &Origin,
        steps: &[(&'static str, Duration)],
    ) -> Timeline {
        let mut at = now;
        let mut w = wall;
        let mut out = VecDeque::new();
        for (state, d) in steps {
            at += *d;
            w += *d;
            out.push_back(Step { at, wall: w, state });
        }
        Timeline {
            steps: out,
            origin: origin.clone(),
        }
    }

    /// Pops the next due step, unless `state` is moving and the origin is frozen.
    fn next_due(
        &mut self,
        now: Instant,
        state: &str,
        frozen: &dyn Fn(&Origin) -> bool,
    ) -> Option<Step> {
        let due = self.steps.front().is_some_and(|s| s.at <= now);
        if !due || (is_moving(state) && frozen(&self.origin)) {
            return None;
        }
        self.steps.pop_front()
    }
}

/// A closure telling whether transitions begun by `origin` are hung.
pub(crate) fn freezer(hang: Option<Scope>) -> impl Fn(&Origin) -> bool {
    move |o: &Origin| {
        hang.as_ref()
            .is_some_and(|s| s.matches(&o.method, &o.path, &o.route))
    }
}

// ---------------------------------------------------------------------------
// Account objects.

#[derive(Debug, Clone)]
pub(crate) struct Adapter {
    pub id: String,
    pub network: String,
    pub dhcp: bool,
    pub ips: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub id: String,
    pub name: String,
    pub hostname: String,
    pub memory: u64,
    pub virtualization: String,
    pub boot_device: String,
    pub start_on_shutdown: bool,
    pub start_on_reboot: bool,
    pub start_on_crash: bool,
    pub state: &'static str,
    pub tier: usize,
    pub region: usize,
    pub availability_group: Vec<String>,
    pub disks: Vec<String>,
    pub public_keys: Vec<String>,
    pub adapters: Vec<Adapter>,
    pub context: BTreeMap<String, String>,
    pub note: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub timeline: Timeline,
}

#[derive(Debug, Clone)]
pub(crate) struct Disk {
    pub id: String,
    pub name: String,
    pub position: usize,
    pub size: u64,
    pub state: &'static str,
    pub cdrom: bool,
    pub is_template: bool,
    pub instance_id: Option<String>,
    pub template: Option<usize>,
    pub tier: usize,
    pub region: usize,
    /// Created with its instance by create-basic: deleted with it.
    pub owned: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub timeline: Timeline,
}

#[derive(Debug, Clone)]
pub(crate) struct Network {
    pub id: String,
    pub name: String,
    pub is_public: bool,
    pub specification: String,
    pub netmask: String,
    pub gateway: String,
    pub primary_nameserver: String,
    pub secondary_nameserver: String,
    pub state: &'static str,
    pub network_address: String,
    pub region: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct IpAddress {
    pub id: String,
    pub name: String,
    pub address: String,
    pub network_id: String,
    pub instance_ids: Vec<String>,
    pub shareable: bool,
    /// Allocated by create-basic: released when its instance is gone.
    pub owned: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub(crate) struct PublicKey {
    pub id: String,
    pub name: String,
    pub key: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub(crate) struct ConsoleSession {
    pub id: String,
    pub kind: String,
    pub state: &'static str,
    pub token: String,
    pub url: String,
    pub instance_id: String,
}

#[derive(Debug, Default)]
pub(crate) struct Account {
    pub instances: Vec<Instance>,
    pub disks: Vec<Disk>,
    pub networks: Vec<Network>,
    pub ips: Vec<IpAddress>,
    pub keys: Vec<PublicKey>,
    pub consoles: Vec<ConsoleSession>,
}

/// Parses `a.b.c.d/nn` into (network address, prefix length).
pub(crate) fn parse_cidr(spec: &str) -> Option<(u32, u32)> {
    let (addr, len) = spec.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.trim().parse().ok()?;
    let len: u32 = len.trim().parse().ok()?;
    if !(8..=30).contains(&len) {
        return None;
    }
    let mask = u32::MAX << (32 - len);
    Some((u32::from(addr) & mask, len))
}

pub(crate) fn ipv4(v: u32) -> String {
    std::net::Ipv4Addr::from(v).to_string()
}

impl Network {
    /// A network from its CIDR: gateway `.1`, nameservers as given.
    pub(crate) fn from_cidr(
        id: String,
        name: String,
        is_public: bool,
        net: u32,
        len: u32,
        region: usize,
        ns: (&str, &str),
    ) -> Network {
        let mask = u32::MAX << (32 - len);
        Network {
            id,
            name,
            is_public,
            specification: format!("{}/{}", ipv4(net), len),
            netmask: ipv4(mask),
            gateway: ipv4(net + 1),
            primary_nameserver: ns.0.to_owned(),
            secondary_nameserver: ns.1.to_owned(),
            state: "ready",
            network_address: ipv4(net),
            region,
        }
    }
}

const NAMESERVERS: (&str, &str) = ("198.51.100.53", "198.51.100.54");

impl Account {
    pub(crate) fn instance_idx(&self, id: &str) -> Option<usize> {
        self.instances.iter().position(|i| i.id == id)
    }
    pub(crate) fn disk_idx(&self, id: &str) -> Option<usize> {
        self.disks.iter().position(|d| d.id == id)
    }
    pub(crate) fn network_idx(&self, id: &str) -> Option<usize> {
        self.networks.iter().position(|n| n.id == id)
    }
    pub(crate) fn ip_idx(&self, id: &str) -> Option<usize> {
        self.ips.iter().position(|n| n.id == id)
    }
    pub(crate) fn key_idx(&self, id: &str) -> Option<usize> {
        self.keys.iter().position(|n| n.id == id)
    }

    /// The region's public or private network.
    pub(crate) fn default_network(&self, region: usize, public: bool) -> Option<usize> {
        self.networks
            .iter()
            .position(|n| n.region == region && n.is_public == public)
    }

    /// The next free address of a network (from `.10`, skipping the gateway).
    pub(crate) fn allocate_address(&self, net: usize) -> Option<String> {
        let n = self.networks.get(net)?;
        let (base, len) = parse_cidr(&n.specification)?;
        let size = 1u32 << (32 - len);
        let first = if size > 16 { 10 } else { 2 };
        let gateway = n.gateway.clone();
        (first..size.saturating_sub(1))
            .map(|o| ipv4(base + o))
            .find(|a| {
                *a != gateway
                    && !self
                        .ips
                        .iter()
                        .any(|ip| ip.network_id == n.id && ip.address == *a)
            })
    }

    /// Advances every object to its state at `now`.
    pub(crate) fn settle(&mut self, now: Instant, frozen: &dyn Fn(&Origin) -> bool) {
        let mut terminated = Vec::new();
        let mut gone_instances = Vec::new();
        for inst in &mut self.instances {
            while let Some(step) = inst.timeline.next_due(now, inst.state, frozen) {
                if step.state == GONE {
                    gone_instances.push(inst.id.clone());
                    break;
                }
                inst.state = step.state;
                inst.updated_at = step.wall;
                if step.state == "terminated" {
                    terminated.push(inst.id.clone());
                }
            }
        }
        for id in &terminated {
            self.release_instance(id);
        }
        if !gone_instances.is_empty() {
            self.instances.retain(|i| !gone_instances.contains(&i.id));
            for i in &mut self.instances {
                i.availability_group.retain(|g| !gone_instances.contains(g));
            }
        }
        let mut gone_disks = Vec::new();
        for d in &mut self.disks {
            while let Some(step) = d.timeline.next_due(now, d.state, frozen) {
                if step.state == GONE {
                    gone_disks.push(d.id.clone());
                    break;
                }
                d.state = step.state;
                d.updated_at = step.wall;
            }
        }
        if !gone_disks.is_empty() {
            self.disks.retain(|d| !gone_disks.contains(&d.id));
        }
    }

    /// A terminated instance gives back its disks, addresses and consoles.
    fn release_instance(&mut self, id: &str) {
        let wall = now_wall();
        let (disk_ids, ip_ids) = match self.instances.iter_mut().find(|i| i.id == id) {
            Some(inst) => {
                let ips = inst
                    .adapters
                    .iter()
                    .flat_map(|a| a.ips.iter().cloned())
                    .collect::<Vec<_>>();
                inst.adapters.clear();
                (std::mem::take(&mut inst.disks), ips)
            }
            None => return,
        };
        self.disks
            .retain(|d| !(d.owned && disk_ids.contains(&d.id)));
        for d in &mut self.disks {
            if disk_ids.contains(&d.id) {
                d.instance_id = None;
                d.state = UNATTACHED;
                d.position = 0;
                d.updated_at = wall;
            }
        }
        self.ips.retain(|ip| !(ip.owned && ip_ids.contains(&ip.id)));
        for ip in &mut self.ips {
            if ip.instance_ids.iter().any(|i| i == id) {
                ip.instance_ids.retain(|i| i != id);
                ip.updated_at = wall;
            }
        }
        self.consoles.retain(|c| c.instance_id != id);
    }

    // ----- JSON forms

    pub(crate) fn instance_json(&self, cat: &Catalog, i: &Instance) -> Value {
        let tier = cat.instance_tiers.get(i.tier).map_or(
            Value::Null,
            |t| json!({"id": t.id, "name": t.name, "region": cat.region_json(t.region)}),
        );
        let disks: Vec<Value> =
            i.disks
                .iter()
                .enumerate()
                .filter_map(|(pos, id)| {
                    self.disks.iter().find(|d| &d.id == id).map(
                        |d| json!({"id": d.id, "name": d.name, "position": pos, "size": d.size}),
                    )
                })
                .collect();
        let keys: Vec<Value> = i
            .public_keys
            .iter()
            .filter_map(|id| self.keys.iter().find(|k| &k.id == id))
            .map(|k| json!({"id": k.id, "name": k.name, "key": k.key}))
            .collect();
        let adapters = self.adapters_json(i);
        json!({
            "id": i.id,
            "name": i.name,
            "hostname": i.hostname,
            "memory": i.memory,
            "virtualization": i.virtualization,
            "boot_device": i.boot_device,
            "start_on_shutdown": i.start_on_shutdown,
            "start_on_reboot": i.start_on_reboot,
            "start_on_crash": i.start_on_crash,
            "state": i.state,
            "performance_tier": tier,
            "region": cat.region_json(i.region),
            "availability_group": i.availability_group,
            "disks": disks,
            "public_keys": keys,
            "network_adapters": adapters,
            "created_at": fmt_ts(i.created_at),
            "updated_at": fmt_ts(i.updated_at),
        })
    }

    /// An instance's network adapters as its JSON shows them.
    pub(crate) fn adapters_json(&self, i: &Instance) -> Vec<Value> {
        i.adapters
            .iter()
            .enumerate()
            .map(|(index, a)| {
                let network = self.networks.iter().find(|n| n.id == a.network).map_or(
                    json!({"id": a.network}),
                    |n| json!({"id": n.id, "name": n.name, "is_public": n.is_public}),
                );
                let ips: Vec<Value> = a
                    .ips
                    .iter()
                    .filter_map(|id| self.ips.iter().find(|ip| &ip.id == id))
                    .map(|ip| json!({"id": ip.id, "address": ip.address}))
                    .collect();
                json!({"id": a.id, "index": index, "dhcp": a.dhcp, "network": network,
                       "ip_addresses": ips})
            })
            .collect()
    }

    pub(crate) fn disk_json(&self, cat: &Catalog, d: &Disk) -> Value {
        let template = d
            .template
            .and_then(|t| cat.templates.get(t))
            .map_or(Value::Null, |t| json!({"id": t.id, "name": t.name}));
        let tier = cat
            .disk_tiers
            .get(d.tier)
            .map_or(Value::Null, |t| json!({"id": t.id, "name": t.name}));
        json!({
            "id": d.id,
            "name": d.name,
            "position": d.position,
            "size": d.size,
            "state": d.state,
            "cdrom": d.cdrom,
            "is_template": d.is_template,
            "instance_id": d.instance_id,
            "template": template,
            "performance_tier": tier,
            "region": cat.region_json(d.region),
            "created_at": fmt_ts(d.created_at),
            "updated_at": fmt_ts(d.updated_at),
        })
    }

    pub(crate) fn network_json(&self, cat: &Catalog, n: &Network) -> Value {
        json!({
            "id": n.id,
            "name": n.name,
            "is_public": n.is_public,
            "specification": n.specification,
            "netmask": n.netmask,
            "gateway": n.gateway,
            "primary_nameserver": n.primary_nameserver,
            "secondary_nameserver": n.secondary_nameserver,
            "state": n.state,
            "network_address": n.network_address,
            "region": cat.region_json(n.region),
        })
    }

    pub(crate) fn ip_json(ip: &IpAddress) -> Value {
        json!({
            "id": ip.id,
            "name": ip.name,
            "address": ip.address,
            "network_id": ip.network_id,
            "instance_ids": ip.instance_ids,
            "shareable": ip.shareable,
            "created_at": fmt_ts(ip.created_at),
            "updated_at": fmt_ts(ip.updated_at),
        })
    }

    pub(crate) fn key_json(k: &PublicKey) -> Value {
        json!({"id": k.id, "name": k.name, "key": k.key,
               "created_at": fmt_ts(k.created_at), "updated_at": fmt_ts(k.updated_at)})
    }

    pub(crate) fn console_json(c: &ConsoleSession) -> Value {
        json!({"id": c.id, "type": c.kind, "state": c.state, "token": c.token, "url": c.url})
    }
}

// ---------------------------------------------------------------------------
// Seeding.

/// Networks of a fresh account: public and private in each region.
fn seed_networks(acc: &mut Account, fx: &Fixture, use_fixture_ids: bool) {
    let public_sy3 = parse_cidr(&fx.network.specification).unwrap_or((0xCB00_7100, 24));
    let mut sy3 = Network::from_cidr(
        if use_fixture_ids {
            fx.network.id.clone()
        } else {
            new_id()
        },
        fx.network.name.clone(),
        true,
        public_sy3.0,
        public_sy3.1,
        0,
        (
            &fx.network.primary_nameserver,
            &fx.network.secondary_nameserver,
        ),
    );
    sy3.netmask = fx.network.netmask.clone();
    sy3.gateway = fx.network.gateway.clone();
    sy3.network_address = fx.network.network_address.clone();
    acc.networks.push(sy3);
    // 198.51.100.0/25 public in ME2, 10.10/10.20 private.
    acc.networks.push(Network::from_cidr(
        new_id(),
        "public-ME2".into(),
        true,
        0xC633_6400,
        25,
        1,
        NAMESERVERS,
    ));
    acc.networks.push(Network::from_cidr(
        new_id(),
        "private-SY3".into(),
        false,
        0x0A0A_0000,
        24,
        0,
        NAMESERVERS,
    ));
    acc.networks.push(Network::from_cidr(
        new_id(),
        "private-ME2".into(),
        false,
        0x0A14_0000,
        24,
        1,
        NAMESERVERS,
    ));
}

struct SeedInstance<'a> {
    id: String,
    name: &'a str,
    memory: u64,
    state: &'static str,
    region: usize,
    tier: usize,
    template: usize,
    disk_id: String,
    disk_tier: usize,
    size: u64,
    ip: Option<(String, String)>,
    adapter_id: String,
    keys: Vec<String>,
    created: OffsetDateTime,
    updated: OffsetDateTime,
    disk_times: (OffsetDateTime, OffsetDateTime),
    ip_times: (OffsetDateTime, OffsetDateTime),
}

fn seed_instance(acc: &mut Account, s: SeedInstance<'_>) {
    let public = acc.default_network(s.region, true).unwrap_or(0);
    let (ip_id, address) = match s.ip {
        Some(x) => x,
        None => (new_id(), acc.allocate_address(public).unwrap_or_default()),
    };
    let net_id = acc
        .networks
        .get(public)
        .map(|n| n.id.clone())
        .unwrap_or_default();
    acc.disks.push(Disk {
        id: s.disk_id.clone(),
        name: format!("{}-boot", s.name),
        position: 0,
        size: s.size,
        state: "attached",
        cdrom: false,
        is_template: false,
        instance_id: Some(s.id.clone()),
        template: Some(s.template),
        tier: s.disk_tier,
        region: s.region,
        owned: true,
        created_at: s.disk_times.0,
        updated_at: s.disk_times.1,
        timeline: Timeline::default(),
    });
    acc.ips.push(IpAddress {
        id: ip_id.clone(),
        name: format!("{}-ip", s.name),
        address,
        network_id: net_id.clone(),
        instance_ids: vec![s.id.clone()],
        shareable: false,
        owned: true,
        created_at: s.ip_times.0,
        updated_at: s.ip_times.1,
    });
    acc.instances.push(Instance {
        id: s.id,
        name: s.name.to_owned(),
        hostname: s.name.to_owned(),
        memory: s.memory,
        virtualization: "hvm".into(),
        boot_device: "disk".into(),
        start_on_shutdown: false,
        start_on_reboot: true,
        start_on_crash: true,
        state: s.state,
        tier: s.tier,
        region: s.region,
        availability_group: Vec::new(),
        disks: vec![s.disk_id],
        public_keys: s.keys,
        adapters: vec![Adapter {
            id: s.adapter_id,
            network: net_id,
            dhcp: true,
            ips: vec![ip_id],
        }],
        context: BTreeMap::new(),
        note: String::new(),
        created_at: s.created,
        updated_at: s.updated,
        timeline: Timeline::default(),
    });
}

/// A seeded account. The first account (`index == 0`) reuses the example
/// objects' ids, so the example request bodies refer to real objects.
pub(crate) fn seed_account(name: &str, index: usize) -> io::Result<Account> {
    let fx = fixture()?;
    let first = index == 0;
    let now = now_wall();
    let mut acc = Account::default();
    seed_networks(&mut acc, &fx, first);
    let key_id = if first {
        fx.public_key.id.clone()
    } else {
        new_id()
    };
    acc.keys.push(PublicKey {
        id: key_id.clone(),
        name: fx.public_key.name.clone(),
        key: fx.public_key.key.clone(),
        created_at: ts(&fx.public_key.created_at),
        updated_at: ts(&fx.public_key.updated_at),
    });
    let pick = |fixture_id: &str| {
        if first {
            fixture_id.to_owned()
        } else {
            new_id()
        }
    };
    let (web_name, worker_name) = if first {
        (fx.instance.name.clone(), "worker-1".to_owned())
    } else {
        (format!("{name}-web-1"), format!("{name}-worker-1"))
    };
    seed_instance(
        &mut acc,
        SeedInstance {
            id: pick(&fx.instance.id),
            name: &web_name,
            memory: fx.instance.memory,
            state: "running",
            region: 0,
            tier: 0,
            template: 0,
            disk_id: pick(&fx.disk.id),
            disk_tier: 0,
            size: fx.disk.size,
            ip: Some((pick(&fx.ip_address.id), fx.ip_address.address.clone())),
            adapter_id: first
                .then(|| fx.instance.network_adapters.first().map(|a| a.id.clone()))
                .flatten()
                .unwrap_or_else(new_id),
            keys: vec![key_id],
            created: ts(&fx.instance.created_at),
            updated: ts(&fx.instance.updated_at),
            disk_times: (ts(&fx.disk.created_at), ts(&fx.disk.updated_at)),
            ip_times: (ts(&fx.ip_address.created_at), ts(&fx.ip_address.updated_at)),
        },
    );
    if first {
        // The example names these objects; keep them.
        if let Some(d) = acc.disks.last_mut() {
            d.name = fx.disk.name.clone();
        }
        if let Some(ip) = acc.ips.last_mut() {
            ip.name = fx.ip_address.name.clone();
        }
        if let Some(i) = acc.instances.last_mut() {
            i.hostname = fx.instance.hostname.clone();
        }
    }
    seed_instance(
        &mut acc,
        SeedInstance {
            id: new_id(),
            name: &worker_name,
            memory: 4096,
            state: "stopped",
            region: 1,
            tier: 2,
            template: 3,
            disk_id: new_id(),
            disk_tier: 2,
            size: 40,
            ip: None,
            adapter_id: new_id(),
            keys: Vec::new(),
            created: now,
            updated: now,
            disk_times: (now, now),
            ip_times: (now, now),
        },
    );
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_and_seed() {
        let cat = build_catalog().unwrap();
        assert_eq!(cat.regions.len(), 2);
        let a = seed_account("acme", 0).unwrap();
        assert_eq!(a.instances[0].id, "3b0c2f6e-1111-4222-8333-944455556666");
        let v = a.instance_json(&cat, &a.instances[0]);
        let fx: Value = serde_json::from_str(FIXTURE).unwrap();
        // Same fields, same values as the example instance.
        assert_eq!(v, fx["instance"]);
        let d = a.disk_json(&cat, &a.disks[0]);
        assert_eq!(d, fx["disk"]);
        let n = a.network_json(&cat, &a.networks[0]);
        assert_eq!(n, fx["network"]);
        assert_eq!(Account::ip_json(&a.ips[0]), fx["ip_address"]);
        assert_eq!(Account::key_json(&a.keys[0]), fx["public_key"]);
        let b = seed_account("globex", 1).unwrap();
        assert_ne!(b.instances[0].id, a.instances[0].id);
        assert_eq!(b.instances[1].adapters[0].ips.len(), 1);
        assert!(b.ips.iter().all(|ip| !ip.address.is_empty()));
    }

    #[test]
    fn cidr() {
        assert_eq!(parse_cidr("203.0.113.0/24"), Some((0xCB00_7100, 24)));
        assert_eq!(parse_cidr("10.0.0.0/4"), None);
        assert_eq!(parse_cidr("x/24"), None);
    }
}
