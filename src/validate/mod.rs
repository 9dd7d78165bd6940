//! Request bodies: read whole within a limit, parsed once, validated against the route's JSON
//! Schema and rewritten by the route's rules, all before anything goes upstream.
//!
//! [`BodyRules`] is built once per config build from the route list; the hot path looks the
//! route's rules up, validates the already parsed `serde_json::Value` (a quick `is_valid` first,
//! the full error walk only for an invalid body), and re-serialises only when a rewrite changed
//! something. The outcome is left in the request context as [`Validated`], so that a handler
//! (the facade) reads the checked value instead of parsing the body again.

pub mod body;
mod quick;
pub mod rewrite;
pub mod schema;

use crate::config::model::{RouteConfig, ValidationConfig};
use bytes::Bytes;
use rewrite::Rewrite;
use schema::{Compiler, Schema};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// At most this many violations are listed in `details`.
const MAX_VIOLATIONS: usize = 50;
/// Violation messages are cut to this many characters (they may quote the value).
const MAX_MESSAGE: usize = 200;

/// What a route does with its body beyond size and JSON checks.
#[derive(Debug)]
pub struct RouteBody {
    /// The compiled schema; `None` when the route has none or `validation.skip` names it.
    pub schema: Option<Arc<Schema>>,
    pub rewrite: Option<Rewrite>,
}

/// Per route name, for the routes that have a schema or rewrite rules.
#[derive(Debug, Default)]
pub struct BodyRules {
    by_route: HashMap<String, Arc<RouteBody>>,
}

impl BodyRules {
    /// Compiles every route's schema and rules. Errors carry the route's path in the config.
    pub fn build(routes: &[RouteConfig], v: &ValidationConfig) -> Result<BodyRules, Vec<String>> {
        let mut errors = Vec::new();
        let dir = v.schema_dir.as_deref().map(std::path::Path::new);
        if let Some(d) = dir
            && !d.is_dir()
        {
            errors.push(format!(
                "validation.schema_dir: {} is not a directory",
                d.display()
            ));
        }
        for (i, name) in v.skip.iter().enumerate() {
            if !routes.iter().any(|r| &r.name == name) {
                errors.push(format!("validation.skip[{i}]: no route named '{name}'"));
            }
        }
        let mut compiler = Compiler::new(dir);
        let mut by_route = HashMap::new();
        for (i, rc) in routes.iter().enumerate() {
            let at = format!("routes[{i}] ({})", rc.name);
            let skipped = v.skip.iter().any(|s| s == &rc.name);
            let strict = rc.strict.unwrap_or(v.strict_mirror);
            let schema = match &rc.schema {
                Some(name) if !skipped => match compiler.get(name, strict) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        errors.push(format!("{at}.schema: {e}"));
                        None
                    }
                },
                _ => None,
            };
            let rewrite = match rc.rewrite.as_ref().map(Rewrite::build) {
                Some(Ok(r)) => r,
                Some(Err(es)) => {
                    errors.extend(es.into_iter().map(|e| format!("{at}.{e}")));
                    None
                }
                None => None,
            };
            if rc.strict.is_some() && rc.schema.is_none() {
                errors.push(format!("{at}.strict: the route has no schema"));
            }
            if (rc.schema.is_some() || rc.rewrite.is_some())
                && !matches!(rc.method.as_str(), "POST" | "PUT" | "PATCH")
            {
                errors.push(format!(
                    "{at}.method: bodies are read only for POST, PUT and PATCH, so {} cannot have a schema or rewrite",
                    rc.method
                ));
            }
            if schema.is_some() || rewrite.is_some() {
                by_route.insert(rc.name.clone(), Arc::new(RouteBody { schema, rewrite }));
            }
        }
        if errors.is_empty() {
            Ok(BodyRules { by_route })
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, route: &str) -> Option<&Arc<RouteBody>> {
        self.by_route.get(route)
    }
}

/// The checked body of a request, kept in the request context.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The body after validation and rewriting (`{}` for an empty body).
    pub value: Value,
    /// The schema it matched, if the route has one.
    pub schema: Option<Arc<str>>,
    /// Whether a rewrite changed it (then the bytes sent upstream are its serialisation).
    pub rewritten: bool,
}

/// The body as it goes upstream.
pub struct Admitted {
    /// Bytes to send instead of what was read (`None`: the bytes read, unchanged).
    pub body: Option<Bytes>,
    pub validated: Validated,
}

/// Every violation, by JSON path.
#[derive(Debug)]
pub struct ValidationError {
    pub details: Map<String, Value>,
    pub first: String,
    pub count: usize,
}

/// Why a body was refused: too large, unreadable or not JSON (413/400), or not valid (422).
#[derive(Debug)]
pub enum AdmitError {
    Body(body::BodyError),
    Invalid(ValidationError),
}

/// A request body as `request_filter` leaves it.
#[derive(Debug, Default)]
pub struct ReadBody {
    /// Bytes received from the caller.
    pub received: usize,
    /// The bytes to send upstream (`None`: no body was read, or it was empty).
    pub body: Option<Bytes>,
    /// The checked value, for routes whose body is JSON.
    pub validated: Option<Validated>,
}

/// What the body step of `request_filter` must do for a request: nothing (the body streams
/// through untouched), or read it whole within `limit` bytes and then call [`finish`].
#[derive(Debug, Clone, Copy)]
pub enum BodyPlan<'a> {
    Stream,
    Read {
        limit: usize,
        /// The body is JSON: parse, validate and rewrite it.
        json: bool,
        rules: Option<&'a RouteBody>,
    },
}

/// Methods with a body (POST, PUT, PATCH) on routes with JSON bodies (`json_body`, a schema or
/// rewrite rules) are read whole within `server.max_body_bytes`, parsed, validated and
/// rewritten; when the account signs its requests (`signs`), every body is read whole so that
/// its digest can be signed. Any other body the request declares (`has_body`: a
/// `Content-Length` above 0 or a `Transfer-Encoding`; GET and DELETE included) is read whole
/// within the same limit and sent on unchanged: no call to OrionVM waits on a caller's body
/// (the upstream slot is taken once the request is complete). Without a body: nothing to read.
pub fn plan<'a>(
    method: &http::Method,
    route: &crate::routes::Route,
    rules: &'a BodyRules,
    max_body_bytes: usize,
    signs: bool,
    has_body: bool,
) -> BodyPlan<'a> {
    let body_method = matches!(
        *method,
        http::Method::POST | http::Method::PUT | http::Method::PATCH
    );
    let rules = body_method.then(|| rules.get(&route.name)).flatten();
    let json = body_method && (route.json_body || rules.is_some());
    if !json && !signs && !has_body {
        return BodyPlan::Stream;
    }
    BodyPlan::Read {
        limit: max_body_bytes,
        json,
        rules: rules.map(|r| &**r),
    }
}

/// The body step after the proxy read the bytes of a [`BodyPlan::Read`].
pub fn finish(json: bool, rules: Option<&RouteBody>, bytes: Bytes) -> Result<ReadBody, AdmitError> {
    let mut out = ReadBody {
        received: bytes.len(),
        ..Default::default()
    };
    if json {
        let a = admit(rules, &bytes)?;
        out.body = a.body;
        out.validated = Some(a.validated);
    }
    if out.body.is_none() && !bytes.is_empty() {
        out.body = Some(bytes);
    }
    Ok(out)
}

/// Parses (unless empty), validates and rewrites a body read whole.
pub fn admit(rules: Option<&RouteBody>, bytes: &Bytes) -> Result<Admitted, AdmitError> {
    let blank = bytes.iter().all(u8::is_ascii_whitespace);
    let mut value = if blank {
        Value::Object(Map::new())
    } else {
        body::parse_json(bytes).map_err(AdmitError::Body)?
    };
    let schema = rules.and_then(|r| r.schema.as_ref());
    if let Some(s) = schema {
        check(s, &value).map_err(AdmitError::Invalid)?;
    }
    let rewritten = rules
        .and_then(|r| r.rewrite.as_ref())
        .is_some_and(|rw| rw.apply(&mut value));
    let body = if rewritten {
        // Serialising a parsed `Value` cannot fail.
        Some(Bytes::from(serde_json::to_vec(&value).unwrap_or_default()))
    } else {
        None
    };
    Ok(Admitted {
        body,
        validated: Validated {
            value,
            schema: schema.map(|s| s.name.clone()),
            rewritten,
        },
    })
}

/// Validates `value` against `schema`, listing every violation by JSON path.
///
/// A failed `anyOf`/`oneOf` is reported where the caller can act on it, never as the bare
/// keyword: alternatives that each only miss a member name the first one (`network: is
/// required (or one of: network_id, region)`); otherwise the closest alternative's own
/// violations are listed at their fields (alternatives of another type are set aside), and
/// when several fail at the value itself the message names the accepted forms.
pub fn check(schema: &Schema, value: &Value) -> Result<(), ValidationError> {
    if schema
        .quick
        .as_ref()
        .unwrap_or(&schema.validator)
        .is_valid(value)
    {
        return Ok(());
    }
    let mut leaves = Vec::new();
    for e in schema.validator.iter_errors(value) {
        collect(&schema.doc, &e, &mut leaves);
    }
    let mut details = Map::new();
    let mut first = None;
    let mut count = 0;
    for Leaf { path, msg, .. } in leaves {
        count += 1;
        if details.len() >= MAX_VIOLATIONS && !details.contains_key(&path) {
            continue;
        }
        let msg = cut(msg);
        if first.is_none() {
            first = Some(format!("{path}: {msg}"));
        }
        if let Value::Array(list) = details
            .entry(path)
            .or_insert_with(|| Value::Array(Vec::new()))
            && !list.iter().any(|m| m.as_str() == Some(msg.as_str()))
        {
            list.push(Value::String(msg));
        }
    }
    Err(ValidationError {
        details,
        first: first.unwrap_or_else(|| "the body does not match the schema".into()),
        count,
    })
}

/// One violation where it happened.
struct Leaf {
    /// The JSON pointer of the value the keyword judged (for `required`: the object).
    at: String,
    /// Where the caller finds it (`memory`, `disks[0]`, `network_adapters[0].network`).
    path: String,
    kind: LeafKind,
    msg: String,
}

enum LeafKind {
    /// A member is missing (its name).
    Required(String),
    /// The value has another type than the ones named.
    Type(Vec<String>),
    Other,
}

/// The leaf violations of one error (an `anyOf`/`oneOf` is resolved into its alternatives').
fn collect(doc: &Value, e: &jsonschema::ValidationError<'_>, out: &mut Vec<Leaf>) {
    use jsonschema::error::{TypeKind, ValidationErrorKind as K};
    let at = e.instance_path().to_string();
    match e.kind() {
        K::Required { property } => {
            let name = property.as_str().unwrap_or_default().to_string();
            out.push(Leaf {
                path: join(&at, &name),
                at,
                kind: LeafKind::Required(name),
                msg: "is required".into(),
            });
        }
        K::AdditionalProperties { unexpected } => {
            for name in unexpected {
                out.push(Leaf {
                    path: join(&at, name),
                    at: at.clone(),
                    kind: LeafKind::Other,
                    msg: "is not allowed".into(),
                });
            }
        }
        K::AnyOf { context } | K::OneOfNotValid { context } => {
            out.extend(alternatives(doc, e, &at, context));
        }
        kind => {
            let path = json_path(&at);
            let leaf_kind = match kind {
                K::Type {
                    kind: TypeKind::Single(t),
                } => LeafKind::Type(vec![t.to_string()]),
                K::Type {
                    kind: TypeKind::Multiple(set),
                } => LeafKind::Type(set.iter().map(|t| t.to_string()).collect()),
                _ => LeafKind::Other,
            };
            // Messages quote the value; not for fields that look like they hold secrets
            // (the first message is also the logged `detail`).
            let msg = if secret_like(&path) {
                format!("does not satisfy '{}' (value not shown)", kind.keyword())
            } else {
                e.to_string()
            };
            out.push(Leaf {
                at,
                path,
                kind: leaf_kind,
                msg,
            });
        }
    }
}

/// The violations to report for an `anyOf`/`oneOf` at `at` whose alternatives all failed.
fn alternatives(
    doc: &Value,
    e: &jsonschema::ValidationError<'_>,
    at: &str,
    context: &[Vec<jsonschema::ValidationError<'static>>],
) -> Vec<Leaf> {
    let branches: Vec<Vec<Leaf>> = context
        .iter()
        .map(|errors| {
            let mut leaves = Vec::new();
            for e in errors {
                collect(doc, e, &mut leaves);
            }
            leaves
        })
        .filter(|leaves| !leaves.is_empty())
        .collect();
    let path = json_path(at);
    if branches.is_empty() {
        return vec![Leaf {
            at: at.to_string(),
            msg: e.to_string(),
            path,
            kind: LeafKind::Other,
        }];
    }
    let missing_here = |l: &Leaf| match &l.kind {
        LeafKind::Required(name) if l.at == at => Some(name.clone()),
        _ => None,
    };
    // Each alternative only misses members here: name the first, offer the others.
    if branches
        .iter()
        .all(|b| b.iter().all(|l| missing_here(l).is_some()))
    {
        let mut names: Vec<String> = Vec::new();
        for name in branches
            .iter()
            .filter_map(|b| b.first().and_then(missing_here))
        {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let first = names.first().cloned().unwrap_or_default();
        let msg = match names.get(1..) {
            Some(others) if !others.is_empty() => {
                format!("is required (or one of: {})", others.join(", "))
            }
            _ => "is required".to_string(),
        };
        return vec![Leaf {
            path: join(at, &first),
            at: at.to_string(),
            kind: LeafKind::Required(first),
            msg,
        }];
    }
    // Alternatives for another type of value are other shapes, not near misses.
    let other_type = |b: &Vec<Leaf>| {
        b.iter()
            .all(|l| l.at == at && matches!(l.kind, LeafKind::Type(_)))
    };
    let (near, other): (Vec<Vec<Leaf>>, Vec<Vec<Leaf>>) =
        branches.into_iter().partition(|b| !other_type(b));
    let masked = secret_like(&path);
    if near.is_empty() {
        let mut types: Vec<String> = Vec::new();
        for l in other.iter().flatten() {
            if let LeafKind::Type(ts) = &l.kind {
                for t in ts {
                    if !types.contains(t) {
                        types.push(t.clone());
                    }
                }
            }
        }
        let wanted = types
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(" or ");
        let msg = if masked {
            format!("is not of type {wanted} (value not shown)")
        } else {
            format!("{} is not of type {wanted}", e.instance())
        };
        return vec![Leaf {
            at: at.to_string(),
            path,
            kind: LeafKind::Type(types),
            msg,
        }];
    }
    // The closest alternatives: the fewest violations (the first one on a tie), unless several
    // fail only at the value itself: then say which forms are accepted.
    let fewest = near.iter().map(Vec::len).min().unwrap_or(0);
    let mut best: Vec<Vec<Leaf>> = near.into_iter().filter(|b| b.len() == fewest).collect();
    if best.len() > 1 && best.iter().flatten().all(|l| l.at == at) {
        let forms = description(doc, e).unwrap_or_else(|| {
            let mut msgs: Vec<String> = Vec::new();
            for l in best.iter().flatten() {
                if !msgs.contains(&l.msg) {
                    msgs.push(l.msg.clone());
                }
            }
            msgs.join("; ")
        });
        let msg = if masked {
            "matches none of the accepted forms (value not shown)".to_string()
        } else {
            format!(
                "{} matches none of the accepted forms: {forms}",
                e.instance()
            )
        };
        return vec![Leaf {
            at: at.to_string(),
            path,
            kind: LeafKind::Other,
            msg,
        }];
    }
    if best.is_empty() {
        return Vec::new();
    }
    best.swap_remove(0)
}

/// The `description` of the schema that holds the failed `anyOf`/`oneOf`, if it has one.
fn description(doc: &Value, e: &jsonschema::ValidationError<'_>) -> Option<String> {
    let keyword = e.schema_path().to_string();
    let parent = keyword.rsplit_once('/').map(|(p, _)| p)?;
    doc.pointer(parent)?
        .get("description")?
        .as_str()
        .map(str::to_string)
}

/// Field names whose values are never quoted back (`db_password`, `api_token`...).
fn secret_like(path: &str) -> bool {
    let last = path
        .rsplit(['.', '['])
        .next()
        .unwrap_or(path)
        .to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "credential",
        "private",
        "passphrase",
    ]
    .iter()
    .any(|w| last.contains(w))
}

fn cut(mut s: String) -> String {
    if s.chars().count() > MAX_MESSAGE {
        s = s.chars().take(MAX_MESSAGE).collect::<String>() + "...";
    }
    s
}

/// A JSON pointer as a dotted path: `/disks/0` -> `disks[0]`, `/a/b` -> `a.b`, `` -> `$`.
pub fn json_path(pointer: &str) -> String {
    let mut out = String::new();
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    if out.is_empty() { "$".into() } else { out }
}

fn join(pointer: &str, name: &str) -> String {
    let base = json_path(pointer);
    if base == "$" {
        name.to_string()
    } else {
        format!("{base}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        assert_eq!(json_path(""), "$");
        assert_eq!(json_path("/memory"), "memory");
        assert_eq!(json_path("/disks/0"), "disks[0]");
        assert_eq!(
            json_path("/network_adapters/1/network"),
            "network_adapters[1].network"
        );
        assert_eq!(
            join("/network_adapters/0", "network"),
            "network_adapters[0].network"
        );
    }

    #[test]
    fn every_violation_is_listed() {
        let mut c = Compiler::new(None);
        let s = c.get("instances.assemble", false).unwrap();
        let err = check(
            &s,
            &json!({"name": "ok", "memory": 100, "disks": ["nope"], "boot_device": "floppy"}),
        )
        .unwrap_err();
        let d = &err.details;
        for k in [
            "memory",
            "disks[0]",
            "boot_device",
            "performance_tier",
            "region",
        ] {
            assert!(d.contains_key(k), "{k} missing in {d:?}");
        }
        assert_eq!(d["memory"][0], "100 is less than the minimum of 512");
    }

    /// What an `anyOf`/`oneOf` failure says, and where: never `$`, never the raw keyword text.
    #[test]
    fn alternatives_are_reported_at_the_leaf() {
        let mut c = Compiler::new(None);
        let keys = |e: &ValidationError| e.details.keys().cloned().collect::<Vec<_>>();
        let no_keyword = |e: &ValidationError| {
            let text = serde_json::to_string(&e.details).unwrap();
            assert!(!text.contains("anyOf") && !text.contains("oneOf"), "{text}");
        };
        let uuid = "9e98d1f2-3c4b-4a5d-8e6f-7a8b9c0d1e2f";

        // Alternatives that each miss a member: the first is named, the others offered.
        let ip = c.get("ip_addresses.create", false).unwrap();
        let e = check(&ip, &json!({"name": "spare"})).unwrap_err();
        assert_eq!(keys(&e), ["network"]);
        assert_eq!(
            e.details["network"][0],
            "is required (or one of: network_id, region)"
        );
        assert_eq!(
            e.first,
            "network: is required (or one of: network_id, region)"
        );
        no_keyword(&e);
        // A region alone is what the Go client sends for a public address.
        assert!(check(&ip, &json!({"region": "SY3"})).is_ok());
        let e = check(&ip, &json!({"network": "x"})).unwrap_err();
        assert_eq!(keys(&e), ["network"]);

        // Inside an array item.
        let na = c.get("instances.set_network_adapters", false).unwrap();
        let e = check(&na, &json!({"network_adapters": [{"dhcp": true}]})).unwrap_err();
        assert_eq!(keys(&e), ["network_adapters[0].network"]);
        assert_eq!(
            e.details["network_adapters[0].network"][0],
            "is required (or one of: network_id)"
        );

        // An id or an object with an id: the near miss is reported at its own field.
        let pk = c.get("instances.set_public_keys", false).unwrap();
        let e = check(&pk, &json!({"public_keys": [{"id": "x"}]})).unwrap_err();
        assert_eq!(keys(&e), ["public_keys[0].id"]);
        let e = check(&pk, &json!({"public_keys": ["nope"]})).unwrap_err();
        assert_eq!(keys(&e), ["public_keys[0]"]);
        assert!(
            e.details["public_keys[0]"][0]
                .as_str()
                .unwrap()
                .contains("does not match"),
            "{:?}",
            e.details
        );
        no_keyword(&e);
        // Neither form's type: both named.
        let e = check(&pk, &json!({"public_keys": [uuid, 123]})).unwrap_err();
        assert_eq!(keys(&e), ["public_keys[1]"]);
        assert_eq!(
            e.details["public_keys[1]"][0],
            "123 is not of type \"string\" or \"object\""
        );

        // Two patterns that both miss: the accepted forms, from the schema's description.
        let disk = c.get("disks.create", false).unwrap();
        let e = check(
            &disk,
            &json!({"name": "d", "size": 10, "region": "Sydney!"}),
        )
        .unwrap_err();
        assert_eq!(keys(&e), ["region"]);
        assert_eq!(
            e.details["region"][0],
            "\"Sydney!\" matches none of the accepted forms: region id or code (SY3)"
        );

        // Either name of the availability group.
        let ag = c.get("instances.set_availability_group", false).unwrap();
        assert!(check(&ag, &json!({"availability_groups": []})).is_ok());
        let e = check(&ag, &json!({})).unwrap_err();
        assert_eq!(keys(&e), ["availability_group"]);
    }

    /// What OrionVM's clients send and OrionVM takes passes the mirror's schemas.
    #[test]
    fn mirror_schemas_take_what_the_clients_send() {
        let mut c = Compiler::new(None);
        let tier = "55f8a2b3-c4d5-4e6f-8a7b-9c0d1e2f3a4b";
        let region = "9e98d1f2-3c4b-4a5d-8e6f-7a8b9c0d1e2f";
        let valid = |c: &mut Compiler, name: &str, body: Value| {
            for strict in [false, true] {
                let s = c.get(name, strict).unwrap();
                if let Err(e) = check(&s, &body) {
                    panic!("{name} (strict {strict}) refused {body}: {:?}", e.details);
                }
            }
        };
        // The Terraform provider's and the Go client's assemble: no disks.
        valid(
            &mut c,
            "instances.assemble",
            json!({"name": "tf-1", "memory": 2048, "performance_tier": tier, "region": region,
                   "boot_device": "network", "start_on_crash": true}),
        );
        // Packer's cleanup and its names.
        valid(&mut c, "instances.set_disks", json!({"disks": []}));
        valid(
            &mut c,
            "instances.set_network_adapters",
            json!({"network_adapters": []}),
        );
        valid(
            &mut c,
            "disks.update",
            json!({"name": "my_build md5=0123abcd"}),
        );
        valid(&mut c, "disks.update", json!({"cdrom": true}));
        valid(&mut c, "disks.update", json!({"name": "grown", "size": 30}));
        valid(
            &mut c,
            "disks.create",
            json!({"name": "Packer in-progress: my_build", "size": 10, "region": region}),
        );
        // The Go client's public address and availability group.
        valid(&mut c, "ip_addresses.create", json!({"region": region}));
        valid(
            &mut c,
            "instances.set_availability_group",
            json!({"availability_groups": []}),
        );
    }

    #[test]
    fn values_of_secret_looking_fields_are_not_quoted() {
        let mut c = Compiler::new(None);
        let s = c.get("instances.context", false).unwrap();
        let err = check(
            &s,
            &json!({"db_password": {"v": "hunter2"}, "colour": {"v": "blue"}}),
        )
        .unwrap_err();
        let text = serde_json::to_string(&err.details).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("blue"), "{text}");
        assert!(
            err.details["db_password"][0]
                .as_str()
                .unwrap()
                .contains("'type'")
        );
    }

    #[test]
    fn admit_rewrites_only_when_needed() {
        let rules = BodyRules::build(
            &serde_yaml::from_str::<Vec<RouteConfig>>(
                "[{name: r, method: POST, path: /x, schema: disks.resize, rewrite: {defaults: {note: hi}}}]",
            )
            .unwrap(),
            &ValidationConfig::default(),
        )
        .unwrap();
        let r = rules.get("r").unwrap();
        let a = admit(Some(r), &Bytes::from_static(br#"{"size": 20}"#)).unwrap();
        assert_eq!(a.body.as_deref(), Some(&br#"{"note":"hi","size":20}"#[..]));
        assert!(a.validated.rewritten);
        let plain = admit(None, &Bytes::from_static(br#"{"size": 20}"#)).unwrap();
        assert!(plain.body.is_none());
        assert!(admit(Some(r), &Bytes::from_static(br#"{"size": 0}"#)).is_err());
    }

    #[test]
    fn config_errors_name_the_route() {
        let routes: Vec<RouteConfig> = serde_yaml::from_str(
            "[{name: a, method: POST, path: /a, schema: no.such}, {name: b, method: POST, path: /b, strict: true}, {name: c, method: GET, path: /c, schema: disks.resize}]",
        )
        .unwrap();
        let v = ValidationConfig {
            skip: vec!["zzz".into()],
            ..Default::default()
        };
        let errs = BodyRules::build(&routes, &v).unwrap_err().join("\n");
        assert!(
            errs.contains("routes[0] (a).schema: unknown schema 'no.such'"),
            "{errs}"
        );
        assert!(errs.contains("routes[1] (b).strict"), "{errs}");
        assert!(errs.contains("validation.skip[0]"), "{errs}");
        assert!(errs.contains("routes[2] (c).method"), "{errs}");
    }
}
