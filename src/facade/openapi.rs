//! The OpenAPI 3.1 document: built from the route table (so every route the proxy serves is in
//! it), with the facade's operations described in full, the token endpoint, the error body as a
//! component, and the request schemas of `schemas/` that the routes name (the facade's structs'
//! own schemas where a route names none).
//! Served at `/openapi.json`; `openapi.json` at the top of the repository is this document for
//! the shipped routes (`orion-proxy openapi` prints it).

use super::body::{CreateInstance, InstancePatch, SnapshotRequest};
use crate::config::model::RouteKind;
use crate::routes::Handler;
use crate::routes::Route;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use std::sync::Arc;

pub(crate) fn err_responses(codes: &[u16]) -> Map<String, Value> {
    let mut m = Map::new();
    // Every authenticated operation may be answered 400: two different credentials
    // (`conflicting_credentials`), or a path the proxy refuses before routing (`invalid_path`).
    let mut codes = codes.to_vec();
    if codes.contains(&401) && !codes.contains(&400) {
        codes.insert(0, 400);
    }
    for c in &codes {
        m.insert(
            c.to_string(),
            json!({"$ref": format!("#/components/responses/E{c}")}),
        );
    }
    m
}

pub(crate) fn json_response(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

pub(crate) fn sref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn path_params(template: &str) -> Vec<Value> {
    template
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"},
                   "description": if name == "id" { "The object's id (a UUID)" } else { "Path parameter" }})
        })
        .collect()
}

fn list_params(kind: &str) -> Vec<Value> {
    let mut names = vec!["limit", "offset", "page", "per_page", "sort"];
    match kind {
        "tasks" => names.extend(["status", "type", "instance_id"]),
        _ => names.extend([
            "state",
            "region",
            "name",
            "name_contains",
            "memory_min",
            "memory_max",
        ]),
    }
    names
        .into_iter()
        .map(|n| json!({"$ref": format!("#/components/parameters/{n}")}))
        .collect()
}

pub(crate) fn op(
    id: &str,
    tag: &str,
    summary: &str,
    description: &str,
    ok: (u16, Value),
    errors: &[u16],
) -> Map<String, Value> {
    let mut responses = err_responses(errors);
    responses.insert(ok.0.to_string(), ok.1);
    let mut m = Map::new();
    m.insert("operationId".into(), json!(id.replace('.', "_")));
    m.insert("tags".into(), json!([tag]));
    m.insert("summary".into(), json!(summary));
    m.insert(
        "description".into(),
        json!(if description.is_empty() {
            summary
        } else {
            description
        }),
    );
    m.insert("responses".into(), Value::Object(responses));
    m
}

pub(crate) fn with_body(
    mut m: Map<String, Value>,
    schema: Value,
    required: bool,
) -> Map<String, Value> {
    m.insert(
        "requestBody".into(),
        json!({"required": required, "content": {"application/json": {"schema": schema}}}),
    );
    m
}

fn task_ok() -> (u16, Value) {
    (
        202,
        json!({"description": "The task was created; poll it at the Location.",
               "headers": {"Location": {"description": "The task's URL", "schema": {"type": "string"}}},
               "content": {"application/json": {"schema": sref("Task")}}}),
    )
}

fn list_ok(schema: Value) -> (u16, Value) {
    (
        200,
        json!({"description": "One page of the list.",
               "headers": {"X-Total-Count": {"$ref": "#/components/headers/X-Total-Count"},
                           "Link": {"$ref": "#/components/headers/Link"}},
               "content": {"application/json": {"schema": schema}}}),
    )
}

/// The operation of a facade handler.
fn facade_op(name: &str, h: Handler) -> Map<String, Value> {
    let state_rules = "Refused with 409 `invalid_state` (naming the state and the allowed actions) \
        before OrionVM is called when the instance's state does not allow it; a moving state also \
        gets `Retry-After`.";
    match h {
        Handler::InstancesList => op(
            name,
            "facade",
            "List instances",
            "Pages (`limit`/`offset` or `page`/`per_page`, default 50, max 1000), filters and sorts.",
            list_ok(sref("InstanceList")),
            &[400, 401, 403, 502, 504],
        ),
        Handler::InstancesCreate => with_body(
            op(
                name,
                "facade",
                "Create an instance",
                "Region by code or id, template by slug or id, performance tier by name or id, \
                 public keys by id or name; names are resolved through OrionVM's lists.",
                (
                    201,
                    json!({"description": "Created.",
                           "headers": {"Location": {"description": "The instance's URL", "schema": {"type": "string"}}},
                           "content": {"application/json": {"schema": sref("Instance")}}}),
                ),
                &[400, 401, 403, 413, 422, 502, 504],
            ),
            sref("CreateInstance"),
            true,
        ),
        Handler::InstancesGet => op(
            name,
            "facade",
            "Get an instance",
            "",
            (200, json_response("The instance.", sref("Instance"))),
            &[401, 403, 404, 502, 504],
        ),
        Handler::InstancesPatch => {
            let mut m = op(
                name,
                "facade",
                "Change an instance (JSON merge patch)",
                &format!(
                    "RFC 7396 merge patch onto the changeable fields, sent to OrionVM as its PUT \
                     (and the attachment PUTs for disks, keys, adapters, availability group). \
                     Memory, performance tier, virtualization and disks change only while \
                     stopped. {state_rules}"
                ),
                (
                    200,
                    json_response("The instance after the change.", sref("Instance")),
                ),
                &[400, 401, 403, 404, 409, 413, 422, 502, 504],
            );
            m.insert(
                "requestBody".into(),
                json!({"required": true, "content": {
                    "application/merge-patch+json": {"schema": sref("InstancePatch")},
                    "application/json": {"schema": sref("InstancePatch")}}}),
            );
            m
        }
        Handler::InstancesDelete => op(
            name,
            "facade",
            "Delete an instance",
            state_rules,
            (
                202,
                json_response("The instance, now terminating.", sref("Instance")),
            ),
            &[401, 403, 404, 409, 502, 504],
        ),
        Handler::InstancesPoweron | Handler::InstancesPoweroff => {
            let (summary, from) = if h == Handler::InstancesPoweron {
                ("Power an instance on (OrionVM start)", "stopped")
            } else {
                ("Power an instance off (OrionVM stop)", "running")
            };
            op(
                name,
                "facade",
                summary,
                &format!("Only from `{from}`. {state_rules}"),
                (
                    202,
                    json_response("The instance, now changing state.", sref("Instance")),
                ),
                &[401, 403, 404, 409, 502, 504],
            )
        }
        Handler::InstancesReboot => op(
            name,
            "facade",
            "Reboot an instance",
            &format!(
                "Only from `running`: stop, wait until stopped, start, wait until running, as a \
                 task. The task fails when a state change does not settle within \
                 `facade.transition_timeout_ms`. {state_rules}"
            ),
            task_ok(),
            &[401, 403, 404, 409, 502, 504],
        ),
        Handler::InstancesSnapshot => with_body(
            op(
                name,
                "facade",
                "Snapshot an instance's disks",
                &format!(
                    "Clones every disk of the instance (named after the instance and the time) \
                     as a task. {state_rules}"
                ),
                task_ok(),
                &[401, 403, 404, 409, 422, 502, 504],
            ),
            sref("SnapshotRequest"),
            false,
        ),
        Handler::TasksList => op(
            name,
            "tasks",
            "List the caller's tasks",
            "Only the caller's tenant's tasks.",
            list_ok(sref("TaskList")),
            &[400, 401, 403],
        ),
        Handler::TasksGet => op(
            name,
            "tasks",
            "Get a task",
            "Another tenant's task is not found.",
            (200, json_response("The task.", sref("Task"))),
            &[401, 403, 404],
        ),
    }
}

fn token_op(name: &str) -> Map<String, Value> {
    let mut m = op(
        name,
        "auth",
        "Get an access token (OAuth2 client credentials)",
        "For registered clients: `grant_type=client_credentials`, `client_id`, `client_secret`, as \
         JSON or form-urlencoded. The token is 64 characters; send it as `Authorization: Bearer`.",
        (
            200,
            json_response(
                "The token (status 200, as OrionVM's clients expect).",
                sref("TokenResponse"),
            ),
        ),
        &[400, 401, 413, 429],
    );
    m.insert("security".into(), json!([]));
    m.insert(
        "requestBody".into(),
        json!({"required": true, "content": {
            "application/json": {"schema": sref("TokenRequest")},
            "application/x-www-form-urlencoded": {"schema": sref("TokenRequest")}}}),
    );
    m
}

fn public(mut m: Map<String, Value>) -> Map<String, Value> {
    m.insert("security".into(), json!([]));
    m
}

fn health_op(name: &str) -> Map<String, Value> {
    public(op(
        name,
        "operations",
        "Liveness",
        "",
        (
            200,
            json_response(
                "Alive.",
                json!({"type": "object", "properties": {"status": {"const": "ok"}}}),
            ),
        ),
        &[431],
    ))
}

fn ready_op(name: &str) -> Map<String, Value> {
    public(op(
        name,
        "operations",
        "Readiness",
        "Ready when every account has an OrionVM endpoint that answered its last probe.",
        (200, json_response("Ready.", json!({"type": "object"}))),
        &[431, 503],
    ))
}

fn openapi_op(name: &str) -> Map<String, Value> {
    public(op(
        name,
        "operations",
        "This document",
        "",
        (
            200,
            json_response("The OpenAPI document.", json!({"type": "object"})),
        ),
        &[431],
    ))
}

fn docs_op(name: &str, template: &str) -> Map<String, Value> {
    let (media, what) = if template.ends_with(".js") {
        ("text/javascript", "Redoc's script, embedded in the binary.")
    } else {
        ("text/html", "The Redoc page over /openapi.json.")
    };
    public(op(
        name,
        "operations",
        "Browsable API documentation",
        "Redoc over this document; the page and its script are served by the proxy (no CDN).",
        (
            200,
            json!({"description": what, "content": {media: {"schema": {"type": "string"}}}}),
        ),
        &[431],
    ))
}

/// OrionVM calls that answer a bare array although they are not lists: the PUTs on an instance's
/// attachments and the context calls (docs/orionvm-contract.md, "Answers").
fn answers_array(r: &Route) -> bool {
    let Some(rest) = r.template.strip_prefix("/api/v1/instances/") else {
        return false;
    };
    let tail = rest.split_once('/').map_or("", |(_, t)| t);
    let attachment = matches!(
        tail,
        "disks" | "public_keys" | "network_adapters" | "availability_group"
    );
    (attachment && r.method == http::Method::PUT)
        || tail == "context"
        || tail.starts_with("context/")
}

/// A mirror route: forwarded to OrionVM at the same path, with OrionVM's own answer.
fn mirror_op(r: &Route) -> Map<String, Value> {
    let permission = r
        .permission
        .as_ref()
        .map(|(_, p)| format!(" Needs `{p}`."))
        .unwrap_or_default();
    let mut description = format!(
        "Forwarded to OrionVM's `{} {}` with the proxy's credentials for the caller's tenant.{permission}",
        r.method, r.template
    );
    let ok = if r.list {
        description.push_str(
            " Without list parameters the answer is OrionVM's bare array, untouched; with any of \
             them the proxy pages, filters and sorts it (still a bare array) and adds \
             `X-Total-Count` and `Link`.",
        );
        list_ok(json!({"type": "array", "items": sref("Object")}))
    } else if answers_array(r) {
        (
            200,
            json_response(
                "OrionVM's answer: the attached objects (for the context, one `{\"key\", \"value\"}` \
                 object per entry), a bare array.",
                json!({"type": "array", "items": sref("Object")}),
            ),
        )
    } else {
        (200, json_response("OrionVM's answer.", sref("Object")))
    };
    let errors: &[u16] = if r.json_body {
        &[400, 401, 403, 404, 413, 422, 502, 504]
    } else {
        &[400, 401, 403, 404, 422, 502, 504]
    };
    let mut m = op(
        &r.name,
        "mirror",
        &format!("OrionVM {}", r.name),
        &description,
        ok,
        errors,
    );
    if r.json_body {
        m = with_body(m, sref("Object"), false);
    }
    m
}

fn operation(r: &Route) -> Map<String, Value> {
    if r.method == http::Method::POST && &*r.template == "/oauth/token" {
        return token_op(&r.name);
    }
    let mut m = match (r.kind, r.handler) {
        (RouteKind::Facade, Some(h)) => facade_op(&r.name, h),
        (RouteKind::Health, _) => health_op(&r.name),
        (RouteKind::Ready, _) => ready_op(&r.name),
        (RouteKind::Openapi, _) => openapi_op(&r.name),
        (RouteKind::Docs, _) => docs_op(&r.name, &r.template),
        _ => mirror_op(r),
    };
    let mut params = path_params(&r.template);
    match r.handler {
        Some(Handler::InstancesList) => params.extend(list_params("instances")),
        Some(Handler::TasksList) => params.extend(list_params("tasks")),
        _ if r.list => params.extend(list_params("instances")),
        _ => {}
    }
    let idempotent = crate::config::idempotency::DEFAULT_ROUTES.contains(&&*r.name);
    if idempotent {
        params.push(json!({"$ref": "#/components/parameters/Idempotency-Key"}));
    }
    if !params.is_empty() {
        m.insert("parameters".into(), Value::Array(params));
    }
    if idempotent {
        let note = " With an `Idempotency-Key`, a retry with the same key and body gets the first \
            answer again (`Idempotent-Replayed: true`); the same key with another body 422 \
            `idempotency_key_reused`; a retry while the first is in flight 409 \
            `idempotency_key_in_flight`. Keys are per tenant and kept 24 hours.";
        let text = m
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        m.insert("description".into(), json!(format!("{text}{note}").trim()));
        // A replayed answer says so; a retry while the first is in flight is 409, a reused key
        // 422 (declared even where no body is read).
        if let Some(Value::Object(responses)) = m.get_mut("responses") {
            for (code, r) in responses.iter_mut() {
                if code.starts_with('2')
                    && let Value::Object(r) = r
                    && !r.contains_key("$ref")
                {
                    let headers = r.entry("headers").or_insert_with(|| json!({}));
                    headers["Idempotent-Replayed"] =
                        json!({"$ref": "#/components/headers/Idempotent-Replayed"});
                }
            }
            for c in [409, 422] {
                responses
                    .entry(c.to_string())
                    .or_insert_with(|| json!({"$ref": format!("#/components/responses/E{c}")}));
            }
        }
    }
    if let Some((_, p)) = &r.permission {
        m.insert("x-permission".into(), json!(&**p));
        // What any call that needs a principal can get besides its own answers: refused
        // credentials or permission, a rate limit, OrionVM unreachable, unavailable or slow;
        // and for a body the proxy reads, too large or invalid.
        let mut codes = vec![401, 403, 429, 502, 503, 504];
        if r.json_body {
            codes.extend([413, 422]);
        }
        if let Some(Value::Object(responses)) = m.get_mut("responses") {
            for (k, v) in err_responses(&codes) {
                responses.entry(k).or_insert(v);
            }
        }
    }
    // The body's schema from `schemas/` where the route names a shipped one.
    if let Some(name) = r.schema.as_deref().filter(|n| shipped_schema(n).is_some())
        && let Some(Value::Object(content)) =
            m.get_mut("requestBody").and_then(|b| b.get_mut("content"))
    {
        for media in content.values_mut() {
            media["schema"] = sref(&component_name(name));
        }
    }
    m
}

/// A schema shipped in `schemas/` as components: the schema under its name (its `$schema` and
/// `$id` dropped) and each of its `$defs` as `NAME.DEF`, with the references rewritten.
fn shipped_schema(name: &str) -> Option<Map<String, Value>> {
    let (_, text) = crate::validate::schema::BUILTIN
        .iter()
        .find(|(n, _)| *n == name)?;
    let mut v: Value = serde_json::from_str(text).ok()?;
    rewrite_refs(&mut v, name);
    let mut out = Map::new();
    if let Value::Object(m) = &mut v {
        m.remove("$schema");
        m.remove("$id");
        if let Some(Value::Object(defs)) = m.remove("$defs") {
            for (k, mut d) in defs {
                no_false_schemas(&mut d);
                out.insert(component_name(&format!("{name}.{k}")), d);
            }
        }
    }
    no_false_schemas(&mut v);
    out.insert(component_name(name), v);
    Some(out)
}

/// The component name of a shipped schema: its file name with `_` for `.` (client generators
/// make class names from component names and read a dot as a separator, so that
/// `instances.create` and `instances.create.id_ref` would collide).
pub fn component_name(schema: &str) -> String {
    schema.replace('.', "_")
}

/// An `enum` whose values are of several JSON types (OrionVM's booleans that also come as
/// `"true"`/`"1"`) as an `anyOf` of one schema per type: the same values, and generators,
/// which take an enum as one type, read it.
fn split_mixed_enum(m: &mut Map<String, Value>) {
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let Some(Value::Array(values)) = m.get("enum") else {
        return;
    };
    let mut kinds: Vec<&str> = values.iter().map(kind).collect();
    kinds.dedup();
    kinds.sort_unstable();
    kinds.dedup();
    if kinds.len() < 2 {
        return;
    }
    let values = values.clone();
    m.remove("enum");
    m.remove("type");
    let any: Vec<Value> = kinds
        .iter()
        .map(|k| match *k {
            "null" => json!({"type": "null"}),
            "boolean" => json!({"type": "boolean"}),
            k => json!({"type": k, "enum": values.iter().filter(|v| kind(v) == k).cloned().collect::<Vec<_>>()}),
        })
        .collect();
    m.insert("anyOf".into(), Value::Array(any));
}

/// Two changes that keep a shipped schema's meaning and let client generators read it: a
/// property that must not be sent (the schema `false` in `schemas/`) is `{"not": {}}`, and a
/// schema's `title` becomes its description (generators name classes after titles, and the
/// titles of `schemas/` are sentences).
fn no_false_schemas(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(title)) = m.remove("title") {
                m.entry("description").or_insert(Value::String(title));
            }
            split_mixed_enum(m);
            // "One of these members is required" (`anyOf` of bare `required` lists): said in
            // the description (generators take such an `anyOf` for a union of types and write
            // invalid code); the proxy still enforces it.
            let only_required = |v: &Value| {
                v.as_object()
                    .is_some_and(|o| o.len() == 1 && o.contains_key("required"))
            };
            if let Some(Value::Array(alts)) = m.get("anyOf")
                && !alts.is_empty()
                && alts.iter().all(only_required)
            {
                let names: Vec<String> = alts
                    .iter()
                    .flat_map(|a| a["required"].as_array().cloned().unwrap_or_default())
                    .filter_map(|n| n.as_str().map(|n| format!("`{n}`")))
                    .collect();
                m.remove("anyOf");
                let note = format!("(one of {} is required)", names.join(", "));
                match m.get_mut("description") {
                    Some(Value::String(d)) => {
                        d.push(' ');
                        d.push_str(&note);
                    }
                    _ => {
                        m.insert("description".into(), json!(note));
                    }
                }
            }
            // A boolean `const` (openapi-python-client writes invalid Python for one): a boolean
            // whose only value is named in the description, which the proxy enforces.
            if let Some(Value::Bool(b)) = m.get("const").cloned() {
                m.remove("const");
                m.insert("type".into(), json!("boolean"));
                let note = format!("(only `{b}` is accepted)");
                match m.get_mut("description") {
                    Some(Value::String(d)) => {
                        d.push(' ');
                        d.push_str(&note);
                    }
                    _ => {
                        m.insert("description".into(), json!(note));
                    }
                }
            }
            for (k, x) in m.iter_mut() {
                if k == "properties"
                    && let Value::Object(props) = x
                {
                    for p in props.values_mut() {
                        if *p == Value::Bool(false) {
                            *p = json!({"not": {}, "description": "not accepted"});
                        } else {
                            no_false_schemas(p);
                        }
                    }
                } else {
                    no_false_schemas(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(no_false_schemas),
        _ => {}
    }
}

fn rewrite_refs(v: &mut Value, name: &str) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match (k.as_str(), &*x) {
                    ("$ref", Value::String(r)) if r.starts_with("#/$defs/") => {
                        *x = json!(format!(
                            "#/components/schemas/{}",
                            component_name(&format!("{name}.{}", &r["#/$defs/".len()..]))
                        ));
                    }
                    _ => rewrite_refs(x, name),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_refs(x, name)),
        _ => {}
    }
}

fn query_param(wire: &str, description: &str, schema: Value) -> Value {
    json!({"name": wire, "in": "query", "required": false, "description": description,
           "schema": schema})
}

/// The response component of an error status: the `Error` body as `application/problem+json`
/// (RFC 9457) when the caller's `Accept` names it, else `application/json` (what OrionVM's
/// clients send and parse); the same body either way (`crate::errors::media_type`). 429 and
/// 503 carry `Retry-After` (and 429 the RateLimit fields); the document needs those header
/// components.
pub(crate) fn error_response(code: u16, text: &str) -> Value {
    let mut r = json!({"description": text, "content": {
        "application/problem+json": {"schema": sref("Error")},
        "application/json": {"schema": sref("Error")}
    }});
    match code {
        429 => {
            r["headers"] = json!({
                "RateLimit": {"$ref": "#/components/headers/RateLimit"},
                "RateLimit-Policy": {"$ref": "#/components/headers/RateLimit-Policy"},
                "Retry-After": {"$ref": "#/components/headers/Retry-After"}
            });
        }
        503 => {
            r["headers"] = json!({"Retry-After": {"$ref": "#/components/headers/Retry-After"}});
        }
        _ => {}
    }
    r
}

/// The one error body's schema (`crate::errors::ApiError::render`).
pub(crate) fn error_schema() -> Value {
    json!({
        "type": "object",
        "description": "The one error body: RFC 9457 members and the keys OrionVM's clients parse.",
        "required": ["type", "title", "status", "detail", "instance", "request_id", "error", "error_description", "details"],
        "properties": {
            "type": {"type": "string", "examples": ["/problems/validation-failed"]},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string", "examples": ["urn:request:01JD0000000000000000000000"]},
            "request_id": {"type": "string"},
            "error": {"type": "string", "examples": ["validation_failed", "invalid_state"]},
            "error_description": {"type": "string"},
            "details": {"type": "object", "additionalProperties": true}
        }
    })
}

/// The `Retry-After` header component.
pub(crate) fn retry_after_header() -> Value {
    json!({"description": "Seconds to wait before trying again", "schema": {"type": "integer", "minimum": 0}})
}

fn components() -> Value {
    let mut generator = {
        let mut s = SchemaSettings::draft2020_12();
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
        s.into_generator()
    };
    let _ = generator.subschema_for::<CreateInstance>();
    let _ = generator.subschema_for::<InstancePatch>();
    let _ = generator.subschema_for::<SnapshotRequest>();
    let mut schemas: Map<String, Value> = generator.take_definitions(true);
    let statuses = [
        (400, "Invalid request or query parameter"),
        (401, "Missing, unknown or disabled credentials"),
        (
            403,
            "The caller's roles do not grant the route's permission",
        ),
        (404, "Not found"),
        (409, "The instance's state does not allow the action"),
        (413, "Request body too large"),
        (422, "Request body is invalid"),
        (429, "Too many requests"),
        (431, "Request headers too large (`server.max_header_bytes`)"),
        (502, "OrionVM could not be reached or refused the proxy"),
        (503, "Not ready / unavailable"),
        (504, "OrionVM did not answer in time"),
    ];
    let mut responses = Map::new();
    for (code, text) in statuses {
        responses.insert(format!("E{code}"), error_response(code, text));
    }
    let more = json!({
        "Error": error_schema(),
        "Object": {"description": "An OrionVM object, as OrionVM answers it.", "type": "object", "additionalProperties": true},
        "Instance": {
            "type": "object",
            "additionalProperties": true,
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "name": {"type": "string"},
                "hostname": {"type": "string"},
                "memory": {"type": "integer", "description": "MB"},
                "virtualization": {"enum": ["hvm", "pv"]},
                "boot_device": {"enum": ["disk", "cdrom", "network"]},
                "start_on_shutdown": {"type": "boolean"},
                "start_on_reboot": {"type": "boolean"},
                "start_on_crash": {"type": "boolean"},
                "state": {"type": "string", "enum": ["running", "stopped", "terminated", "transferred", "failed_to_provision", "initial", "pending_verification", "provisioning", "starting", "stopping", "terminating", "updating", "updating_network"]},
                "performance_tier": {"type": ["object", "null"]},
                "region": {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "code": {"type": "string"}}},
                "availability_group": {"type": "array", "items": {"type": "string"}},
                "disks": {"type": "array", "items": {"type": "object"}},
                "public_keys": {"type": "array", "items": {"type": "object"}},
                "network_adapters": {"type": "array", "items": {"type": "object"}},
                "created_at": {"type": "string"},
                "updated_at": {"type": "string"}
            }
        },
        "InstanceList": {
            "type": "object",
            "required": ["items", "total", "limit", "offset"],
            "properties": {
                "items": {"type": "array", "items": sref("Instance")},
                "total": {"type": "integer", "description": "Items that pass the filters, on all pages"},
                "limit": {"type": "integer"},
                "offset": {"type": "integer"}
            }
        },
        "Task": {
            "type": "object",
            "required": ["id", "type", "status", "instance_id", "steps_done", "steps", "created_at", "updated_at"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "type": {"enum": ["reboot", "snapshot"]},
                "status": {"enum": ["pending", "running", "completed", "failed"]},
                "instance_id": {"type": "string"},
                "steps_done": {"type": "array", "items": {"type": "string"}},
                "steps": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"},
                    "status": {"enum": ["running", "completed", "failed"]},
                    "started_at": {"type": "string"},
                    "finished_at": {"type": ["string", "null"]}}}},
                "result": {"type": ["object", "null"], "description": "Snapshot: `{\"snapshots\": [{\"source_disk\", \"disk\", \"name\"}]}`"},
                "error": {"type": ["object", "null"], "properties": {
                    "error": {"type": "string"}, "error_description": {"type": "string"},
                    "status": {"type": "integer"}, "details": {"type": "object"}}},
                "created_at": {"type": "string"},
                "updated_at": {"type": "string"},
                "finished_at": {"type": ["string", "null"]}
            }
        },
        "TaskList": {
            "type": "object",
            "required": ["items", "total", "limit", "offset"],
            "properties": {
                "items": {"type": "array", "items": sref("Task")},
                "total": {"type": "integer"},
                "limit": {"type": "integer"},
                "offset": {"type": "integer"}
            }
        },
        "TokenRequest": {
            "type": "object",
            "required": ["grant_type", "client_id", "client_secret"],
            "properties": {
                "grant_type": {"const": "client_credentials"},
                "client_id": {"type": "string"},
                "client_secret": {"type": "string"}
            }
        },
        "TokenResponse": {
            "type": "object",
            "required": ["access_token", "token_type", "expires_in", "refresh_token", "scope"],
            "properties": {
                "access_token": {"type": "string", "minLength": 64, "maxLength": 64},
                "token_type": {"const": "bearer"},
                "expires_in": {"type": "integer", "minimum": 61},
                "refresh_token": {"type": "null"},
                "scope": {"type": "string"}
            }
        }
    });
    if let Value::Object(m) = more {
        schemas.extend(m);
    }
    let int = |min: u64, max: Option<u64>| match max {
        Some(max) => json!({"type": "integer", "minimum": min, "maximum": max}),
        None => json!({"type": "integer", "minimum": min}),
    };
    let s = json!({"type": "string"});
    let parameters = json!({
        "limit": query_param("limit", "Items per page (default 50)", int(1, Some(1000))),
        "offset": query_param("offset", "Items skipped", int(0, None)),
        "page": query_param("page", "Page number from 1 (with per_page; not with limit/offset)", int(1, None)),
        "per_page": query_param("per_page", "Items per page (default 50)", int(1, Some(1000))),
        "sort": query_param("sort", "Sort keys, comma-separated, `-` for descending: `state,-memory`", s.clone()),
        "state": query_param("state", "Only these states (comma-separated)", s.clone()),
        "region": query_param("region", "Only these region codes or ids (comma-separated)", s.clone()),
        "name": query_param("name", "Exactly this name", s.clone()),
        "name_contains": query_param("name_contains", "Names containing this text, without case (also as `name~`)", s.clone()),
        "memory_min": query_param("memory_min", "At least this much memory (MB)", int(0, None)),
        "memory_max": query_param("memory_max", "At most this much memory (MB)", int(0, None)),
        "status": query_param("status", "Only these task statuses (comma-separated)", s.clone()),
        "type": query_param("type", "Only these task types (comma-separated)", s.clone()),
        "instance_id": query_param("instance_id", "Only tasks of these instances", s),
        "Idempotency-Key": {
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "draft-ietf-httpapi-idempotency-key-header: a unique key for this create (a structured-field string such as \"8e03978e-40d5-43e8-bc93-6894a57f9324\", 1 to 255 characters); retries with the same key never create twice",
            "schema": {"type": "string", "minLength": 1, "maxLength": 257}
        },
    });
    json!({
        "schemas": schemas,
        "responses": responses,
        "parameters": parameters,
        "headers": {
            "X-Total-Count": {"description": "Items that pass the filters, on all pages", "schema": {"type": "integer"}},
            "Link": {"description": "RFC 8288 links: first, prev, next, last", "schema": {"type": "string"}},
            "RateLimit": {"description": "The policy's remaining quota and the seconds until its window resets (IETF RateLimit fields), e.g. `\"default\";r=0;t=42`", "schema": {"type": "string"}},
            "RateLimit-Policy": {"description": "The policy's quota and window, e.g. `\"default\";q=600;w=60`", "schema": {"type": "string"}},
            "Retry-After": retry_after_header(),
            "Idempotent-Replayed": {"description": "`true` on an answer replayed for an Idempotency-Key", "schema": {"type": "string"}}
        },
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "An API key or a token from /oauth/token"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "oauth2": {"type": "oauth2", "description": "A client registered in `clients:` gets a token from /oauth/token (client credentials, JSON, form or HTTP Basic) and sends it as a bearer token",
                "flows": {"clientCredentials": {"tokenUrl": "/oauth/token", "scopes": {}}}}
        }
    })
}

/// The document for a route table.
pub fn document(routes: &[Arc<Route>]) -> Value {
    let mut paths: Map<String, Value> = Map::new();
    let mut add = |path: &str, method: &str, operation: Map<String, Value>| {
        let entry = paths
            .entry(path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(method.to_ascii_lowercase(), Value::Object(operation));
        }
    };
    let mut has_token = false;
    let mut body_schemas = Map::new();
    for r in routes {
        has_token |= r.method == http::Method::POST && &*r.template == "/oauth/token";
        add(&r.template, r.method.as_str(), operation(r));
        if let Some(parts) = r.schema.as_deref().and_then(shipped_schema) {
            body_schemas.extend(parts);
        }
    }
    if !has_token {
        add("/oauth/token", "POST", token_op("oauth.token"));
    }
    let mut components = components();
    if let Some(Value::Object(schemas)) = components.get_mut("schemas") {
        // The structs' own schemas only where no route names a shipped one instead.
        let used = Value::Object(paths.clone()).to_string();
        if !used.contains("/schemas/CreateInstance\"") {
            schemas.remove("CreateInstance");
        }
        if !used.contains("/schemas/InstancePatch\"") {
            for n in [
                "InstancePatch",
                "AdapterPatch",
                "Virtualization",
                "BootDevice",
            ] {
                schemas.remove(n);
            }
        }
        schemas.extend(body_schemas);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "orion-proxy",
            "version": env!("CARGO_PKG_VERSION"),
            "contact": {"name": "The operators of this orion-proxy deployment"},
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
            "description": "An edge proxy in front of OrionVM's v1 instances API: the OrionVM mirror \
                (`/api/v1`), the REST facade (`/v1`), the token endpoint and the proxy's own \
                endpoints. Every error is the `Error` body. `x-permission` names the permission an \
                operation needs. The admin API has its own document, served by the admin listener \
                (`server.admin_listen`) at `/openapi.json` there and shipped as \
                `admin-openapi.json`."
        },
        "security": [{"bearer": []}, {"apiKey": []}, {"oauth2": []}],
        "servers": [{"url": "/", "description": "The proxy listener (`server.listen`)"}],
        "tags": [
            {"name": "facade", "description": "The REST facade over OrionVM"},
            {"name": "tasks", "description": "Composite operations in progress"},
            {"name": "mirror", "description": "OrionVM v1, as OrionVM answers it"},
            {"name": "auth", "description": "Tokens"},
            {"name": "operations", "description": "Health, readiness, this document"}
        ],
        "paths": paths,
        "components": components,
    })
}

/// The document for the shipped routes (`openapi.json` in the repository).
pub fn shipped() -> Result<Value, Vec<String>> {
    let defaults: Value = serde_yaml::from_str(crate::config::DEFAULTS_YAML)
        .map_err(|e| vec![format!("built-in defaults: {e}")])?;
    let routes: Vec<crate::config::model::RouteConfig> =
        serde_json::from_value(defaults["routes"].clone())
            .map_err(|e| vec![format!("built-in routes: {e}")])?;
    let mut registry = crate::auth::permissions::PermissionRegistry::default();
    let table = crate::routes::RouteTable::build(&routes, &mut registry)?;
    Ok(document(table.routes()))
}
