//! The admin API's OpenAPI 3.1 document: served at `/openapi.json` on the admin listener (with
//! Redoc at `/docs`, the same embedded page as the proxy listener's), and shipped as
//! `admin-openapi.json` beside `openapi.json` (`orion-proxy openapi --admin` prints it).
//!
//! It is built from [`super::OPERATIONS`], the table the admin router matches, so it names
//! every operation the listener serves and nothing else; each operation lists every status it
//! can answer (the authentication ones, its own refusals, 413 where a body is read, 500/503
//! where a store or task can fail). Errors are the one error body, as
//! `application/problem+json` when `Accept` names it (`crate::errors::media_type`).

use super::Endpoint;
use crate::facade::openapi::{
    error_response, error_schema, json_response, op, retry_after_header, sref, with_body,
};
use serde_json::{Map, Value, json};

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}

/// The statuses every authenticated admin operation may answer besides its own: 400 (two
/// different credentials, or a path refused before routing; added by `op`), 401, 403 (not an
/// administrator, or a tenant administrator asking for more than its tenant) and 503 (the
/// credential could not be checked: JWKS or the state store unreachable).
const AUTH: &[u16] = &[401, 403, 503];

fn codes(own: &[u16]) -> Vec<u16> {
    let mut all: Vec<u16> = AUTH.iter().chain(own).copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// The credentials' kind in a path (`api-keys` or `clients`).
fn credential_kind(
    template: &str,
) -> (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
) {
    if template.starts_with("/admin/api-keys") {
        ("api_keys", "API key", "ManagedApiKey", "NewApiKey", "key")
    } else {
        (
            "clients",
            "client",
            "ManagedClient",
            "NewClient",
            "client_secret",
        )
    }
}

fn id_param() -> Value {
    json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"},
        "description": "The credential's id (`k_...`, `c_...`) from the listing"}])
}

/// The operation object of one entry of [`super::OPERATIONS`].
fn operation(method: &str, template: &str, endpoint: Endpoint) -> Map<String, Value> {
    match endpoint {
        Endpoint::Document => public(op(
            "admin.openapi",
            "documents",
            "This document",
            "The admin API's OpenAPI document (no credentials needed).",
            (
                200,
                json_response("The document", json!({"type": "object"})),
            ),
            &[],
        )),
        Endpoint::Docs | Endpoint::DocsScript => {
            let (id, summary, media) = if endpoint == Endpoint::Docs {
                (
                    "admin.docs",
                    "This document, browsable (Redoc)",
                    "text/html",
                )
            } else {
                (
                    "admin.docs.script",
                    "Redoc's script for the browsable documentation",
                    "text/javascript",
                )
            };
            public(op(
                id,
                "documents",
                summary,
                "Embedded in the binary (no CDN); no credentials needed.",
                (
                    200,
                    json!({"description": "The page or script", "content": {media: {"schema": {"type": "string"}}}}),
                ),
                &[],
            ))
        }
        Endpoint::Config => op(
            "admin.config",
            "operations",
            "The config in force, without secrets",
            "Version, scope, accounts (credential kind, endpoints and their health), tenants, \
             roles, API keys and clients of the config file (names, roles, tenants; never hashes \
             or secrets), JWT issuers and the number of routes. A tenant administrator sees its \
             tenant's entries only.",
            (
                200,
                json_response(
                    "The config summary",
                    object(
                        &[
                            "config_version",
                            "scope",
                            "accounts",
                            "tenants",
                            "roles",
                            "api_keys",
                            "clients",
                            "routes",
                            "jwt_issuers",
                        ],
                        json!({
                            "config_version": {"type": "string"},
                            "scope": {"description": "`process`, or `{\"tenant\": ...}` for a tenant administrator"},
                            "accounts": {"type": "object", "additionalProperties": {"type": "object"}},
                            "tenants": {"type": "object", "additionalProperties": {"type": "string"}},
                            "roles": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
                            "api_keys": {"type": "array", "items": {"type": "object"}},
                            "clients": {"type": "array", "items": {"type": "object"}},
                            "routes": {"type": "integer"},
                            "jwt_issuers": {"type": "array", "items": {"type": "object"}}
                        }),
                    ),
                ),
            ),
            &codes(&[]),
        ),
        Endpoint::EndpointStats => op(
            "admin.endpoints.stats",
            "operations",
            "OrionVM endpoints: health, breaker, counters",
            "Every OrionVM endpoint of every account: health, breaker state, requests, errors, \
             timeouts and latency percentiles of the last calls. The whole process's: a tenant \
             administrator is refused (403).",
            (
                200,
                json_response(
                    "The endpoint statistics",
                    object(
                        &["config_version", "endpoints"],
                        json!({
                            "config_version": {"type": "string"},
                            "endpoints": {"type": "array", "items": object(
                                &["account", "name", "url", "health", "breaker", "counters"],
                                json!({
                                    "account": {"type": "string"},
                                    "index": {"type": "integer"},
                                    "name": {"type": "string"},
                                    "url": {"type": "string"},
                                    "health": {"enum": ["unknown", "up", "down"]},
                                    "breaker": {"type": "string"},
                                    "counters": {"type": "object"}
                                }),
                            )}
                        }),
                    ),
                ),
            ),
            &codes(&[]),
        ),
        Endpoint::Audit => {
            let mut m = op(
                "admin.audit.export",
                "audit",
                "Export the audit trail",
                "The audit records, oldest first, across the rotated files, streamed: JSON lines \
                 (`format=jsonl`, the default) or CSV with a header row. A tenant administrator \
                 gets its tenant's records only. 404 when the audit trail is off; 500 or 503 when \
                 its files or store cannot be read.",
                (
                    200,
                    json!({"description": "The matching records", "content": {
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "text/csv": {"schema": {"type": "string"}}
                    }}),
                ),
                &codes(&[400, 404, 500]),
            );
            let date = json!({"type": "string", "description": "RFC 3339 time or YYYY-MM-DD date"});
            m.insert("parameters".into(), json!([
                query("user", "A principal id (`key:ci`) or its name (`ci`)", json!({"type": "string"})),
                query("tenant", "A tenant", json!({"type": "string"})),
                query("action", "A route name (`instances.stop`), `unmatched`, or an admin action (`admin.reload`)", json!({"type": "string"})),
                query("resource", "The id of the object acted on", json!({"type": "string"})),
                query("from", "Records from this time (inclusive)", date.clone()),
                query("to", "Records before this time (exclusive)", date),
                query("offset", "Matching records skipped", json!({"type": "integer", "minimum": 0})),
                query("limit", "Records returned at most", json!({"type": "integer", "minimum": 0, "maximum": crate::observe::audit::MAX_LIMIT})),
                query("format", "`jsonl` (default; also `ndjson`, `json`) or `csv`", json!({"type": "string", "enum": ["jsonl", "ndjson", "json", "csv"]})),
            ]));
            m
        }
        Endpoint::Usage => {
            let counts = object(
                &["requests", "errors", "rate_limited"],
                json!({
                    "requests": {"type": "integer"}, "errors": {"type": "integer"}, "rate_limited": {"type": "integer"}
                }),
            );
            let windows = json!({"last_minute": counts, "last_hour": counts, "last_day": counts});
            let mut client = windows.clone();
            client["principal"] = json!({"type": "string"});
            client["tenant"] = json!({"type": "string"});
            let mut tenant = windows;
            tenant["tenant"] = json!({"type": "string"});
            let mut m = op(
                "admin.usage",
                "usage",
                "Usage per client and tenant",
                "Requests, errors and rate-limited requests per principal and per tenant over the \
                 last minute, hour and day. A tenant administrator sees its tenant only.",
                (
                    200,
                    json_response(
                        "Usage counts by client and tenant",
                        object(
                            &["windows_seconds", "clients", "tenants"],
                            json!({
                                "windows_seconds": {"type": "object", "additionalProperties": {"type": "integer"}},
                                "clients": {"type": "array", "items": {"type": "object", "properties": client}},
                                "tenants": {"type": "array", "items": {"type": "object", "properties": tenant}}
                            }),
                        ),
                    ),
                ),
                &codes(&[400]),
            );
            m.insert(
                "parameters".into(),
                json!([
                    query(
                        "principal",
                        "A principal id (`key:ci`); also as `user`",
                        json!({"type": "string"})
                    ),
                    query("user", "The same as `principal`", json!({"type": "string"})),
                    query("tenant", "A tenant", json!({"type": "string"})),
                ]),
            );
            m
        }
        Endpoint::Reload => op(
            "admin.reload",
            "operations",
            "Reload the config file",
            "Validates the file and swaps it in atomically (like SIGHUP); on any error the old \
             config stays in force and the errors are in `details.config` (422). Process \
             administrators only. Audited.",
            (
                200,
                json_response(
                    "Reloaded",
                    object(
                        &["status", "config_version"],
                        json!({
                            "status": {"type": "string", "enum": ["reloaded"]},
                            "config_version": {"type": "string"}
                        }),
                    ),
                ),
            ),
            &codes(&[413, 422, 500]),
        ),
        Endpoint::Credentials => credential_op(method, template),
    }
}

/// The operations on API keys and clients (`super::credentials`).
fn credential_op(method: &str, template: &str) -> Map<String, Value> {
    let (kind, noun, item, new, secret) = credential_kind(template);
    let with_secret = json!({"allOf": [sref(item), {"type": "object", "required": [secret, "note"],
        "properties": {secret: {"type": "string", "description": "The secret, shown in this answer only"}, "note": {"type": "string"}}}]});
    let tag = "credentials";
    let verb = template.rsplit('/').next().unwrap_or("");
    // Mutating calls read their body (audited): 413 past `MAX_BODY`.
    let mut m = match (method, verb) {
        ("GET", _) => op(
            &format!("admin.{kind}.list"),
            tag,
            &format!(
                "Every {noun}: the config file's (read-only, `id` null) and the runtime-managed ones"
            ),
            "Never shows a secret or a hash. A tenant administrator sees its tenant's only.",
            (
                200,
                json_response(
                    "The credentials",
                    object(
                        &[kind],
                        json!({kind: {"type": "array", "items": sref(item)}}),
                    ),
                ),
            ),
            &codes(&[]),
        ),
        ("POST", "api-keys" | "clients") => with_body(
            op(
                &format!("admin.{kind}.create"),
                tag,
                &format!("Issue a {noun}"),
                "Answers 201 with the secret, shown only in this answer; the state store keeps \
                 its hash. Takes effect at once. A tenant administrator issues for its tenant \
                 only. Audited.",
                (201, json_response("Issued", with_secret.clone())),
                &codes(&[400, 409, 413, 500]),
            ),
            sref(new),
            true,
        ),
        ("PATCH", _) => with_body(
            op(
                &format!("admin.{kind}.policy"),
                tag,
                &format!("Set the {noun}'s rate-limit policy (null: the one its roles pick)"),
                "Audited.",
                (200, json_response("Changed", sref(item))),
                &codes(&[400, 404, 413]),
            ),
            json!({"type": "object", "required": ["policy"], "additionalProperties": false,
                "properties": {"policy": {"type": ["string", "null"]}}}),
            true,
        ),
        ("DELETE", _) => op(
            &format!("admin.{kind}.delete"),
            tag,
            &format!("Delete a runtime-managed {noun}"),
            "Its credential stops working at once. Audited.",
            (
                200,
                json_response(
                    "Deleted",
                    object(
                        &["id", "deleted"],
                        json!({"id": {"type": "string"}, "deleted": {"type": "boolean"}}),
                    ),
                ),
            ),
            &codes(&[404, 413]),
        ),
        (_, "rotate") => op(
            &format!("admin.{kind}.rotate"),
            tag,
            &format!("Rotate the secret of a runtime-managed {noun}"),
            "The old secret stops working at once; the new one is in this answer only. Audited.",
            (
                201,
                json_response(
                    "Rotated: the new secret, shown only in this answer",
                    with_secret,
                ),
            ),
            &codes(&[404, 413, 500]),
        ),
        (_, verb) => op(
            &format!("admin.{kind}.{verb}"),
            tag,
            &format!(
                "{} a runtime-managed {noun}",
                if verb == "enable" {
                    "Enable"
                } else {
                    "Disable"
                }
            ),
            "Takes effect at once on every node sharing the state store. Audited.",
            (200, json_response("Changed", sref(item))),
            &codes(&[404, 413]),
        ),
    };
    if template.ends_with("{id}") || template.contains("{id}/") {
        m.insert("parameters".into(), id_param());
    }
    m
}

fn public(mut m: Map<String, Value>) -> Map<String, Value> {
    m.insert("security".into(), json!([]));
    m
}

fn components() -> Value {
    let statuses = [
        (
            400,
            "Invalid request, query parameter or body; or two different credentials",
        ),
        (401, "Missing, unknown or disabled credentials"),
        (
            403,
            "Not an administrator, or a tenant administrator asking for another tenant or the whole process",
        ),
        (
            404,
            "No such credential (runtime-managed), or the audit trail is off",
        ),
        (409, "A credential of that name exists"),
        (413, "Request body too large"),
        (422, "The new config is invalid; the old one stays in force"),
        (500, "The operation failed inside the proxy"),
        (
            503,
            "A store (credentials, usage, audit) or the identity provider is unavailable; try again",
        ),
    ];
    let responses: Map<String, Value> = statuses
        .into_iter()
        .map(|(code, text)| (format!("E{code}"), error_response(code, text)))
        .collect();
    let grants = json!({
        "roles": {"type": "array", "minItems": 1, "items": {"type": "string"}, "description": "Role names of the config (or console:read, console:write)"},
        "tenant": {"type": "string"},
        "policy": {"type": ["string", "null"], "description": "A rate-limit policy of `limits.policies` replacing the one the roles pick"}
    });
    let managed = |name_field: &str| {
        let mut props = json!({
            "id": {"type": ["string", "null"], "description": "null for credentials of the config file"},
            name_field: {"type": "string"},
            "principal": {"type": "string"},
            "enabled": {"type": "boolean"},
            "source": {"type": "string", "enum": ["config", "runtime"]},
            "created_at": {"type": "string"},
            "updated_at": {"type": "string"}
        });
        if let (Some(p), Some(g)) = (props.as_object_mut(), grants.as_object()) {
            p.extend(g.clone());
        }
        json!({"type": "object", "required": ["id", name_field, "principal", "roles", "tenant", "enabled", "source"], "properties": props})
    };
    let new = |name_field: &str| {
        let mut props =
            json!({name_field: {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}});
        if let (Some(p), Some(g)) = (props.as_object_mut(), grants.as_object()) {
            p.extend(g.clone());
        }
        json!({"type": "object", "additionalProperties": false, "required": [name_field, "roles", "tenant"], "properties": props})
    };
    json!({
        "schemas": {
            "Error": error_schema(),
            "ManagedApiKey": managed("name"),
            "ManagedClient": managed("client_id"),
            "NewApiKey": new("name"),
            "NewClient": new("client_id")
        },
        "responses": responses,
        "headers": {"Retry-After": retry_after_header()},
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "An API key, a token from the proxy's /oauth/token or a JWT, of a principal with the `process_admin` or `admin` role"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "An API key of a principal with the `process_admin` or `admin` role"}
        }
    })
}

/// The admin API's document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for (method, template, endpoint) in super::OPERATIONS {
        let entry = paths
            .entry(template.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(
                method.to_ascii_lowercase(),
                Value::Object(operation(method, template, *endpoint)),
            );
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "orion-proxy admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "contact": {"name": "The operators of this orion-proxy deployment"},
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
            "description": "The admin listener (`server.admin_listen`, loopback by default), with \
                any credential the proxy accepts. A principal with the `process_admin` role \
                administers the whole process; one with `admin` administers its own tenant (its \
                audit records, usage, config entries and credentials; endpoint statistics and \
                reload are refused with 403). Errors are the proxy's one error body, as \
                `application/problem+json` when `Accept` names it and `application/json` \
                otherwise. The operators' web console (`/ui/`, HTML forms with a session \
                cookie) is served by the same listener and is not part of this API. The proxy \
                listener's API has its own document (`/openapi.json` there)."
        },
        "servers": [{"url": "/", "description": "The admin listener (`server.admin_listen`)"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "tags": [
            {"name": "operations", "description": "The config, OrionVM endpoints, reload"},
            {"name": "audit", "description": "The audit trail"},
            {"name": "usage", "description": "Usage per client and tenant"},
            {"name": "credentials", "description": "Runtime-managed API keys and clients (the config file's are listed read-only)"},
            {"name": "documents", "description": "This document"}
        ],
        "paths": paths,
        "components": components(),
    })
}
