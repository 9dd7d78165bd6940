//! Retried creates that never duplicate: `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-
//! header) on the creates of `idempotency.routes` (README, "Idempotent creates").
//!
//! The first request with a key claims it in the state's key-value store (`store::KvStore`,
//! scoped to the tenant, kept `ttl_seconds`) and its answer is stored when it ends; a retry with
//! the same key and the same request gets that answer again (`Idempotent-Replayed: true`), with
//! another request 422, while the first is in flight 409. When the first ended without
//! OrionVM's answer (a reset, a timeout: the object may exist), a retry first looks the object
//! up at OrionVM by name and creation time: found, it answers as the create would have; not
//! found, it creates.
//!
//! The concern decides and the proxy writes: [`Idempotency::key_of`] (sync, nothing allocated
//! for a request without the header), [`begin`] (a [`Begun`]: go on with a [`Claim`], or
//! answer), and [`finish`] with the [`Outcome`] the proxy saw.

use crate::config::idempotency::IdempotencyConfig;
use crate::config::model::{Config, RouteKind};
use crate::request::{Reply, RequestView};
use crate::routes::RouteTable;
use crate::store::{KvStore, StoreError};
use crate::upstream::client::{self, CallError};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The header that marks a replayed answer.
pub const REPLAYED: &str = "idempotent-replayed";

/// How far apart OrionVM's clock and ours may be when a lookup compares creation times.
const CLOCK_SKEW_MS: u64 = 5_000;

/// How a retry whose first attempt has an unknown outcome finds out what became of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// An OrionVM object: looked up by name (and creation time) in `list`; found, the answer is
    /// `status` with the object, and `location` + id when set (the facade's create).
    Lookup {
        list: &'static str,
        status: u16,
        location: Option<&'static str>,
    },
    /// Made by the proxy itself (a facade task): nothing at OrionVM to find; a retry creates.
    Again,
    /// Unknown to the proxy (a custom route): a retry gets 409 until the key expires.
    Refuse,
}

fn recovery_of(route: &str) -> Recovery {
    let lookup = |list, status, location| Recovery::Lookup {
        list,
        status,
        location,
    };
    match route {
        "instances.create" | "instances.assemble" => lookup("/api/v1/instances", 200, None),
        "disks.create" => lookup("/api/v1/disks", 200, None),
        "ip_addresses.create" => lookup("/api/v1/ip_addresses", 200, None),
        "networks.create" => lookup("/api/v1/networks", 200, None),
        "public_keys.create" => lookup("/api/v1/public_keys", 200, None),
        "facade.instances.create" => lookup("/api/v1/instances", 201, Some("/v1/instances/")),
        "facade.instances.reboot" | "facade.instances.snapshot" => Recovery::Again,
        _ => Recovery::Refuse,
    }
}

/// The idempotency settings of one config.
pub struct Idempotency {
    enabled: bool,
    ttl: Duration,
    in_flight: Duration,
    max_answer: usize,
    routes: HashMap<String, Recovery>,
}

impl Idempotency {
    /// Validates the `idempotency:` section against the route table in force.
    pub fn build(config: &Config, routes: Option<&RouteTable>) -> Result<Idempotency, Vec<String>> {
        let c: &IdempotencyConfig = &config.idempotency;
        let mut errors = Vec::new();
        if !(60..=30 * 86_400).contains(&c.ttl_seconds) {
            errors.push("idempotency.ttl_seconds: must be between 60 and 2592000".into());
        }
        if !(1..=86_400).contains(&c.in_flight_seconds) {
            errors.push("idempotency.in_flight_seconds: must be between 1 and 86400".into());
        }
        if !(1024..=64 * 1024 * 1024).contains(&c.max_answer_bytes) {
            errors.push("idempotency.max_answer_bytes: must be between 1024 and 67108864".into());
        }
        let explicit = c.routes != IdempotencyConfig::default().routes;
        let mut plans = HashMap::new();
        for (i, name) in c.routes.iter().enumerate() {
            let found = routes.and_then(|t| t.routes().iter().find(|r| &*r.name == name));
            match found {
                Some(r)
                    if r.method != http::Method::GET
                        && matches!(r.kind, RouteKind::Mirror | RouteKind::Facade) =>
                {
                    plans.insert(name.clone(), recovery_of(name));
                }
                Some(_) => errors.push(format!(
                    "idempotency.routes[{i}]: '{name}' is not a mirror or facade route that changes something"
                )),
                // The shipped list may name routes that a custom route table left out.
                None if explicit && routes.is_some() => {
                    errors.push(format!("idempotency.routes[{i}]: unknown route '{name}'"))
                }
                None => {}
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Idempotency {
            enabled: c.enabled,
            ttl: Duration::from_secs(c.ttl_seconds),
            in_flight: Duration::from_secs(c.in_flight_seconds),
            max_answer: c.max_answer_bytes,
            routes: plans,
        })
    }

    /// The request's `Idempotency-Key`, when its route honours one. Cheap for every request
    /// without it (a method check; no allocation). `Err`: the header is malformed (400).
    pub fn key_of<'a>(&self, req: &RequestView<'a>) -> Result<Option<&'a str>, IdemError> {
        if !self.enabled || !req.is_mutation() {
            return Ok(None);
        }
        let Some(value) = req.headers.get("idempotency-key") else {
            return Ok(None);
        };
        let Some(route) = req.route else {
            return Ok(None);
        };
        if !self.routes.contains_key(&*route.name) {
            return Ok(None);
        }
        if req.headers.get_all("idempotency-key").iter().count() > 1 {
            return Err(IdemError::Invalid("only one Idempotency-Key is allowed"));
        }
        let raw = value
            .to_str()
            .map_err(|_| IdemError::Invalid("must be visible ASCII"))?
            .trim();
        // A structured-field string (`"..."`, the draft's form); a bare value is taken as is.
        let key = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            Some(inner) => inner,
            None => raw,
        };
        if key.is_empty() || key.len() > 255 {
            return Err(IdemError::Invalid("must be 1 to 255 characters"));
        }
        if !key
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            return Err(IdemError::Invalid(
                "must be printable ASCII without quotes or backslashes",
            ));
        }
        Ok(Some(key))
    }
}

/// Why a request with a key is refused, or why its key could not be handled.
#[derive(Debug)]
pub enum IdemError {
    /// The header is malformed (400).
    Invalid(&'static str),
    /// The key was used with another request (422).
    Mismatch,
    /// The first request with the key has not ended (409).
    InFlight { retry_after: u64 },
    /// The first request's outcome is unknown and cannot be found out (409).
    Unresolved(&'static str),
    /// The state backend failed (503).
    Store(StoreError),
    /// Looking the object up at OrionVM failed.
    Lookup(CallError),
    /// OrionVM answered the lookup with an error status.
    LookupAnswered(u16, Bytes),
}

impl From<StoreError> for IdemError {
    fn from(e: StoreError) -> Self {
        IdemError::Store(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    InFlight,
    Done,
    Unknown,
    /// Nothing reached OrionVM: the next request with the key creates (no lookup).
    Free,
}

/// What the store keeps under a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    phase: Phase,
    /// The request's fingerprint: method, path and body.
    fp: String,
    /// Attempts that claimed the key (a retry after an unknown outcome claims it again).
    generation: u32,
    /// When the current attempt began, in ms since the epoch.
    started_ms: u64,
    /// When it ended (unknown outcome), in ms since the epoch.
    #[serde(default)]
    ended_ms: Option<u64>,
    #[serde(default)]
    status: u16,
    #[serde(default)]
    headers: Vec<(String, String)>,
    /// The answer's body, base64.
    #[serde(default)]
    body: String,
}

impl Record {
    fn to_bytes(&self) -> Bytes {
        // Serialising strings and numbers cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    fn from_bytes(b: &[u8]) -> Result<Record, StoreError> {
        serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(format!("idempotency: {e}")))
    }

    fn reply(&self, how: &'static str) -> Reply {
        let body = base64::engine::general_purpose::STANDARD
            .decode(&self.body)
            .unwrap_or_default();
        let mut r = Reply::json(self.status, body).with_header(REPLAYED, "true");
        for (name, value) in &self.headers {
            if let Some(n) = kept_header(name) {
                r = r.with_header(n, value.clone());
            }
        }
        r.with_header("x-idempotency", how)
    }
}

/// The answer headers kept with an answer (the body's type and where the object is).
fn kept_header(name: &str) -> Option<&'static str> {
    match name.to_ascii_lowercase().as_str() {
        "location" => Some("location"),
        _ => None,
    }
}

/// A request that holds its key: what [`finish`] needs to store its answer.
pub struct Claim {
    kv: std::sync::Arc<dyn KvStore>,
    store_key: String,
    fp: String,
    generation: u32,
    started_ms: u64,
    ttl: Duration,
    max_answer: usize,
    route: String,
    /// What the request answered, as the proxy wrote it.
    captured: Option<Captured>,
    /// A step failed in a way that may have created the object (the facade's calls).
    pub unsure: bool,
    /// How the key was taken: `first` or `retried` (after an unknown outcome).
    pub how: &'static str,
}

#[derive(Debug)]
struct Captured {
    status: u16,
    headers: Vec<(String, String)>,
    body: BytesMut,
    complete: bool,
    overflow: bool,
}

impl Claim {
    /// The answer's status and headers, as written to the caller.
    pub fn capture_head<'h>(
        &mut self,
        status: u16,
        headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    ) {
        let headers = headers
            .into_iter()
            .filter(|(n, _)| kept_header(n).is_some())
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        self.captured = Some(Captured {
            status,
            headers,
            body: BytesMut::new(),
            complete: false,
            overflow: false,
        });
    }

    /// A chunk of the answer's body, as written to the caller.
    pub fn capture_body(&mut self, chunk: Option<&[u8]>, end: bool) {
        let max = self.max_answer;
        if let Some(c) = self.captured.as_mut() {
            if let Some(chunk) = chunk {
                if c.body.len() + chunk.len() > max {
                    c.overflow = true;
                } else {
                    c.body.extend_from_slice(chunk);
                }
            }
            if end {
                c.complete = true;
            }
        }
    }

    /// Whether a whole answer was captured.
    pub fn answered(&self) -> bool {
        self.captured.as_ref().is_some_and(|c| c.complete)
    }

    /// The status of the answer captured, if any.
    pub fn status(&self) -> Option<u16> {
        self.captured.as_ref().map(|c| c.status)
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("route", &self.route)
            .field("generation", &self.generation)
            .field("how", &self.how)
            .finish()
    }
}

/// What the proxy saw of the request that held the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The answer was written whole: stored (a 5xx counts as unknown).
    Answered,
    /// The create may have happened without an answer (reset, timeout, cut body).
    Unknown,
    /// Nothing reached OrionVM: the key is free again.
    NotSent,
}

/// What [`begin`] decided.
#[derive(Debug)]
pub enum Begun {
    /// Go on; the request holds the key.
    Proceed(Box<Claim>),
    /// Answer with this (a stored answer, or the object found by a lookup); the name says how
    /// (`replayed`, `recovered`), for the metrics and the audit record.
    Answer(Reply, &'static str),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The store key: the tenant's keys never meet another tenant's.
fn store_key(tenant: &str, key: &str) -> String {
    format!("idempotency:{}:{tenant}:{key}", tenant.len())
}

fn fingerprint(req: &RequestView<'_>, body: Option<&[u8]>) -> String {
    let mut h = Sha256::new();
    h.update(req.method.as_str());
    h.update(b"\n");
    h.update(req.path);
    h.update(b"\n");
    h.update(body.unwrap_or_default());
    hex::encode(h.finalize())
}

/// Takes the key for this request, or decides its answer: the stored one, a refusal (another
/// request, or the first still in flight), or, after an unknown outcome, the object found at
/// OrionVM. Counted in the metrics here.
pub async fn begin(
    idem: &Idempotency,
    kv: &std::sync::Arc<dyn KvStore>,
    req: &RequestView<'_>,
    key: &str,
    body: Option<&[u8]>,
    json: Option<&Value>,
) -> Result<Begun, IdemError> {
    begin_traced(idem, kv, req, key, body, json, None).await
}

/// [`begin`]; the lookup at OrionVM, when there is one, is a span of `trace`.
pub async fn begin_traced(
    idem: &Idempotency,
    kv: &std::sync::Arc<dyn KvStore>,
    req: &RequestView<'_>,
    key: &str,
    body: Option<&[u8]>,
    json: Option<&Value>,
    trace: Option<&dyn crate::upstream::trace::CallTracer>,
) -> Result<Begun, IdemError> {
    let route = req.route_name();
    let outcome = begin_inner(idem, kv, req, key, body, json, trace).await;
    let label = match &outcome {
        Ok(Begun::Proceed(c)) => c.how,
        Ok(Begun::Answer(_, how)) => how,
        Err(IdemError::Mismatch) => "mismatch",
        Err(IdemError::InFlight { .. }) => "in_flight",
        Err(IdemError::Unresolved(_)) => "unresolved",
        Err(_) => "error",
    };
    crate::metrics::idempotency(route, label);
    outcome
}

async fn begin_inner(
    idem: &Idempotency,
    kv: &std::sync::Arc<dyn KvStore>,
    req: &RequestView<'_>,
    key: &str,
    body: Option<&[u8]>,
    json: Option<&Value>,
    trace: Option<&dyn crate::upstream::trace::CallTracer>,
) -> Result<Begun, IdemError> {
    let tenant = req.tenant.map(|t| &*t.name).unwrap_or("");
    let route = req.route_name();
    let store_key = store_key(tenant, key);
    let fp = fingerprint(req, body);
    let claim = |generation: u32, started_ms: u64, how: &'static str| {
        Box::new(Claim {
            kv: kv.clone(),
            store_key: store_key.clone(),
            fp: fp.clone(),
            generation,
            started_ms,
            ttl: idem.ttl,
            max_answer: idem.max_answer,
            route: route.to_string(),
            captured: None,
            unsure: false,
            how,
        })
    };
    let now = now_ms();
    let fresh = Record {
        phase: Phase::InFlight,
        fp: fp.clone(),
        generation: 0,
        started_ms: now,
        ended_ms: None,
        status: 0,
        headers: Vec::new(),
        body: String::new(),
    };
    // Again when a record expires between the two calls (the key is free again), and for a
    // short while when the first request is just storing its answer (a retry sent the moment
    // the answer arrived).
    for attempt in 0..6 {
        if kv
            .put_if_absent(&store_key, fresh.to_bytes(), idem.ttl)
            .await?
        {
            return Ok(Begun::Proceed(claim(0, now, "first")));
        }
        let Some(bytes) = kv.get(&store_key).await? else {
            continue;
        };
        let rec = Record::from_bytes(&bytes)?;
        if rec.fp != fp {
            return Err(IdemError::Mismatch);
        }
        let stale = now.saturating_sub(rec.started_ms) >= idem.in_flight.as_millis() as u64;
        match rec.phase {
            Phase::Done => return Ok(Begun::Answer(rec.reply("replayed"), "replayed")),
            Phase::InFlight if !stale && attempt < 5 => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Phase::InFlight if !stale => {
                let left = (rec.started_ms + idem.in_flight.as_millis() as u64).saturating_sub(now);
                return Err(IdemError::InFlight {
                    retry_after: (left / 1000).clamp(1, 5),
                });
            }
            Phase::InFlight | Phase::Unknown | Phase::Free => {}
        }
        // The first attempt's outcome is unknown: find out, or create again.
        let recovery = match rec.phase {
            Phase::Free => Recovery::Again,
            _ => idem.routes.get(route).copied().unwrap_or(Recovery::Refuse),
        };
        match recovery {
            Recovery::Refuse => {
                return Err(IdemError::Unresolved(
                    "the first request's outcome is unknown and this route cannot look it up",
                ));
            }
            Recovery::Lookup {
                list,
                status,
                location,
            } => {
                if let Some(obj) = lookup(req, list, json, &rec, trace).await? {
                    let done = answer_record(&rec, status, location, &obj);
                    kv.put(&store_key, done.to_bytes(), idem.ttl).await?;
                    return Ok(Begun::Answer(done.reply("recovered"), "recovered"));
                }
            }
            Recovery::Again => {}
        }
        // Not found: one retry (the first to claim the next generation) creates again.
        let next = rec.generation + 1;
        let turn = format!("{store_key}#{next}");
        if !kv
            .put_if_absent(&turn, Bytes::from_static(b"1"), idem.ttl)
            .await?
        {
            return Err(IdemError::InFlight { retry_after: 1 });
        }
        let again = Record {
            generation: next,
            started_ms: now,
            ..fresh.clone()
        };
        kv.put(&store_key, again.to_bytes(), idem.ttl).await?;
        return Ok(Begun::Proceed(claim(next, now, "retried")));
    }
    Err(IdemError::InFlight { retry_after: 1 })
}

/// The stored answer for an object that a lookup found.
fn answer_record(rec: &Record, status: u16, location: Option<&str>, obj: &Value) -> Record {
    let mut headers = Vec::new();
    if let (Some(prefix), Some(id)) = (location, obj["id"].as_str()) {
        headers.push(("location".to_string(), format!("{prefix}{id}")));
    }
    let body = serde_json::to_vec(obj).unwrap_or_default();
    Record {
        phase: Phase::Done,
        status,
        headers,
        body: base64::engine::general_purpose::STANDARD.encode(body),
        ended_ms: Some(now_ms()),
        ..rec.clone()
    }
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn time_ms(v: &Value) -> Option<u64> {
    let t =
        time::OffsetDateTime::parse(v.as_str()?, &time::format_description::well_known::Rfc3339)
            .ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The object the first attempt may have created: in OrionVM's list, the one with the
/// request's name made since the attempt began (without a name in the request: the only one
/// made while it ran). `Err(Unresolved)` when several fit.
async fn lookup(
    req: &RequestView<'_>,
    list: &str,
    json: Option<&Value>,
    rec: &Record,
    trace: Option<&dyn crate::upstream::trace::CallTracer>,
) -> Result<Option<Value>, IdemError> {
    let Some(tenant) = req.tenant else {
        return Ok(None);
    };
    let answer = client::call_traced(
        &tenant.account,
        http::Method::GET,
        list,
        None,
        req.request_id,
        trace,
    )
    .await
    .map_err(IdemError::Lookup)?;
    if !answer.is_success() {
        return Err(IdemError::LookupAnswered(answer.status, answer.body));
    }
    let Some(Value::Array(items)) = answer.json() else {
        return Err(IdemError::Unresolved(
            "OrionVM's list did not answer an array",
        ));
    };
    let name = json.and_then(|b| b["name"].as_str());
    let since = rec.started_ms.saturating_sub(CLOCK_SKEW_MS);
    let until = rec.ended_ms.unwrap_or_else(now_ms) + CLOCK_SKEW_MS;
    let fits = |item: &&Value| {
        let made = time_ms(&item["created_at"]);
        match name {
            Some(n) => item["name"].as_str() == Some(n) && made.is_none_or(|t| t >= since),
            None => made.is_some_and(|t| t >= since && t <= until),
        }
    };
    let mut found = items.iter().filter(fits);
    let first = found.next().cloned();
    if first.is_some() && found.next().is_some() {
        return Err(IdemError::Unresolved(
            "several objects fit the first request; its outcome cannot be told",
        ));
    }
    Ok(first)
}

/// Stores what became of the request that held the key: its answer (2xx and 4xx but 408,
/// 409, 425 and 429), an unknown outcome (a 5xx, a reset, a timeout, an answer too large to
/// keep), or frees the key (nothing reached OrionVM). A store that fails is logged: a retry
/// then finds the key in flight until `in_flight_seconds` pass, and looks the object up.
pub async fn finish(claim: Claim, outcome: Outcome) {
    let now = now_ms();
    let base = Record {
        phase: Phase::Unknown,
        fp: claim.fp.clone(),
        generation: claim.generation,
        started_ms: claim.started_ms,
        ended_ms: Some(now),
        status: 0,
        headers: Vec::new(),
        body: String::new(),
    };
    let captured = claim
        .captured
        .as_ref()
        .filter(|c| c.complete && !c.overflow);
    let record = match (outcome, captured) {
        (Outcome::Answered, Some(c)) => match c.status {
            200..=299 => Record {
                phase: Phase::Done,
                status: c.status,
                headers: c.headers.clone(),
                body: base64::engine::general_purpose::STANDARD.encode(&c.body),
                ..base
            },
            408 | 409 | 425 | 429 => Record {
                phase: Phase::Free,
                ..base
            },
            400..=499 => Record {
                phase: Phase::Done,
                status: c.status,
                headers: c.headers.clone(),
                body: base64::engine::general_purpose::STANDARD.encode(&c.body),
                ..base
            },
            _ => base,
        },
        (Outcome::NotSent, _) => Record {
            phase: Phase::Free,
            ..base
        },
        _ => base,
    };
    let label = match record.phase {
        Phase::Done => "stored",
        Phase::Free => "released",
        _ => "unknown",
    };
    crate::metrics::idempotency(&claim.route, label);
    let result = claim
        .kv
        .put(&claim.store_key, record.to_bytes(), claim.ttl)
        .await;
    if let Err(e) = result {
        log::warn!("idempotency key of route {}: not stored: {e}", claim.route);
    }
}

#[cfg(test)]
mod tests;
