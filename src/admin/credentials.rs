//! Managing API usage: the runtime-managed API keys and clients (`/admin/api-keys`,
//! `/admin/clients`), for the admin API and the console alike.
//!
//! A new key or client secret is in the answer that made it (201) and nowhere else: the store
//! keeps its hash (`auth::managed`), listings and later answers never show it, and the audit
//! record of the call names the credential's id only. Credentials of the YAML file are listed
//! read-only.

use crate::auth::admin_scope::{AdminScope, PROCESS_ADMIN_ROLE};
use crate::auth::managed::{self, Document, Kind, ManagedClient, ManagedKey};
use crate::errors::ApiError;
use crate::runtime::Runtime;
use serde::Deserialize;
use serde_json::{Value, json};

/// What a management call asked for, parsed from its method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    List(Kind),
    Create(Kind),
    Enable(Kind, String),
    Disable(Kind, String),
    Rotate(Kind, String),
    SetPolicy(Kind, String),
    Delete(Kind, String),
}

impl Op {
    /// The operation of a method and path, when it is one.
    pub fn parse(method: &str, path: &str) -> Option<Op> {
        let (kind, rest) = if let Some(r) = path.strip_prefix("/admin/api-keys") {
            (Kind::ApiKey, r)
        } else if let Some(r) = path.strip_prefix("/admin/clients") {
            (Kind::Client, r)
        } else {
            return None;
        };
        let parts: Vec<&str> = rest.split('/').skip(1).collect();
        let id = |s: &str| s.to_string();
        match (method, parts.as_slice()) {
            ("GET", []) => Some(Op::List(kind)),
            ("POST", []) => Some(Op::Create(kind)),
            ("POST", [i, "enable"]) => Some(Op::Enable(kind, id(i))),
            ("POST", [i, "disable"]) => Some(Op::Disable(kind, id(i))),
            ("POST", [i, "rotate"]) => Some(Op::Rotate(kind, id(i))),
            ("PATCH", [i]) => Some(Op::SetPolicy(kind, id(i))),
            ("DELETE", [i]) => Some(Op::Delete(kind, id(i))),
            _ => None,
        }
    }

    /// The audit action and the credential's id.
    pub fn audit(&self) -> (&'static str, Option<&str>) {
        let k = |kind: &Kind, key: &'static str, client: &'static str| match kind {
            Kind::ApiKey => key,
            Kind::Client => client,
        };
        match self {
            Op::List(_) => ("admin.credentials.list", None),
            Op::Create(kind) => (k(kind, "admin.api_key.create", "admin.client.create"), None),
            Op::Enable(kind, id) => (
                k(kind, "admin.api_key.enable", "admin.client.enable"),
                Some(id),
            ),
            Op::Disable(kind, id) => (
                k(kind, "admin.api_key.disable", "admin.client.disable"),
                Some(id),
            ),
            Op::Rotate(kind, id) => (
                k(kind, "admin.api_key.rotate", "admin.client.rotate"),
                Some(id),
            ),
            Op::SetPolicy(kind, id) => (
                k(kind, "admin.api_key.policy", "admin.client.policy"),
                Some(id),
            ),
            Op::Delete(kind, id) => (
                k(kind, "admin.api_key.delete", "admin.client.delete"),
                Some(id),
            ),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    roles: Vec<String>,
    tenant: String,
    #[serde(default)]
    policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateClient {
    client_id: String,
    roles: Vec<String>,
    tenant: String,
    #[serde(default)]
    policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPolicy {
    policy: Option<String>,
}

/// Why a management call was refused; converted once into the error body by [`Refusal::api`].
#[derive(Debug)]
pub enum Refusal {
    Invalid { field: String, why: String },
    NotFound(String),
    Conflict(String),
    Store(crate::store::StoreError),
    Busy,
    Internal(String),
}

impl Refusal {
    pub fn api(self) -> ApiError {
        match self {
            Refusal::Invalid { field, why } => ApiError::new(
                400,
                "invalid_request",
                "The request is invalid",
                why.clone(),
            )
            .with_detail_entry(field, why),
            Refusal::NotFound(id) => ApiError::new(
                404,
                "not_found",
                "Not found",
                format!(
                    "no runtime-managed credential '{id}' (credentials of the config file are read-only)"
                ),
            ),
            Refusal::Conflict(name) => ApiError::new(
                409,
                "conflict",
                "Already exists",
                format!("a credential named '{name}' exists"),
            ),
            Refusal::Store(e) => {
                log::error!("managed credentials: {e}");
                ApiError::new(
                    503,
                    "state_unavailable",
                    "The credential store is unavailable",
                    "the change was not made; try again",
                )
                .with_retry_after(1)
            }
            Refusal::Busy => ApiError::new(
                503,
                "busy",
                "Busy",
                "too many secret checks at once; try again",
            )
            .with_retry_after(1),
            Refusal::Internal(e) => ApiError::internal(e),
        }
    }
}

fn invalid(field: &str, why: impl Into<String>) -> Refusal {
    Refusal::Invalid {
        field: field.to_string(),
        why: why.into(),
    }
}

fn not_found(id: &str) -> Refusal {
    Refusal::NotFound(id.to_string())
}

fn store_error(e: crate::store::StoreError) -> Refusal {
    Refusal::Store(e)
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| invalid("body", format!("{e}")))
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Checks roles, tenant and policy against the config in force.
fn check_grants(
    rt: &Runtime,
    roles: &[String],
    tenant: &str,
    policy: Option<&str>,
) -> Result<(), Refusal> {
    if roles.is_empty() {
        return Err(invalid("roles", "at least one role"));
    }
    for r in roles {
        if !rt.auth.roles.contains(r) && !crate::auth::is_console_role(r) {
            return Err(invalid("roles", format!("unknown role '{r}'")));
        }
    }
    if !rt.config.tenants.contains_key(tenant) {
        return Err(invalid("tenant", format!("unknown tenant '{tenant}'")));
    }
    if let Some(p) = policy
        && !rt.limits.has_policy(p)
    {
        return Err(invalid(
            "policy",
            format!("unknown rate-limit policy '{p}'"),
        ));
    }
    Ok(())
}

fn key_view(k: &ManagedKey) -> Value {
    json!({"id": k.id, "name": k.name, "principal": format!("key:{}", k.name), "roles": k.roles,
        "tenant": k.tenant, "policy": k.policy, "enabled": k.enabled, "source": "runtime",
        "created_at": k.created_at, "updated_at": k.updated_at})
}

fn client_view(c: &ManagedClient) -> Value {
    json!({"id": c.id, "client_id": c.client_id, "principal": format!("client:{}", c.client_id),
        "roles": c.roles, "tenant": c.tenant, "policy": c.policy, "enabled": c.enabled,
        "source": "runtime", "created_at": c.created_at, "updated_at": c.updated_at})
}

/// Every credential of a kind in the caller's scope: the config's (read-only) and the
/// runtime-managed ones.
pub fn listing(rt: &Runtime, kind: Kind, doc: &Document, scope: &AdminScope) -> Value {
    let mut all = listing_all(rt, kind, doc);
    if let Some(rows) = all
        .as_object_mut()
        .and_then(|o| o.values_mut().next())
        .and_then(Value::as_array_mut)
    {
        rows.retain(|r| r["tenant"].as_str().is_some_and(|t| scope.sees(t)));
    }
    all
}

fn listing_all(rt: &Runtime, kind: Kind, doc: &Document) -> Value {
    match kind {
        Kind::ApiKey => {
            let mut out: Vec<Value> = rt
                .config
                .api_keys
                .iter()
                .map(|k| {
                    json!({"id": null, "name": k.name, "principal": format!("key:{}", k.name),
                        "roles": k.roles, "tenant": k.tenant, "policy": null,
                        "enabled": k.enabled, "source": "config"})
                })
                .collect();
            out.extend(doc.api_keys.iter().map(key_view));
            json!({"api_keys": out})
        }
        Kind::Client => {
            let mut out: Vec<Value> = rt
                .config
                .clients
                .iter()
                .map(|c| {
                    json!({"id": null, "client_id": c.client_id,
                        "principal": format!("client:{}", c.client_id), "roles": c.roles,
                        "tenant": c.tenant, "policy": null, "enabled": c.enabled,
                        "source": "config"})
                })
                .collect();
            out.extend(doc.clients.iter().map(client_view));
            json!({"clients": out})
        }
    }
}

/// Carries out a management operation within the caller's administration scope: a tenant
/// administrator lists, issues and changes its own tenant's credentials only, and may not grant
/// the process administrator's role. `auth` runs the slow secret hashing for clients.
pub async fn perform(
    rt: &Runtime,
    auth: &crate::auth::AuthState,
    scope: &AdminScope,
    op: &Op,
    body: &[u8],
) -> Result<(u16, Value), ApiError> {
    if let Err(e) = in_scope(auth, scope, op).await {
        return Err(e.api());
    }
    run(rt, auth, scope, op, body).await.map_err(Refusal::api)
}

/// A change to an existing credential is refused (as not found) outside the caller's tenant.
async fn in_scope(
    auth: &crate::auth::AuthState,
    scope: &AdminScope,
    op: &Op,
) -> Result<(), Refusal> {
    let (kind, id) = match op {
        Op::Enable(k, id)
        | Op::Disable(k, id)
        | Op::Rotate(k, id)
        | Op::SetPolicy(k, id)
        | Op::Delete(k, id) => (k, id),
        Op::List(_) | Op::Create(_) => return Ok(()),
    };
    if scope.is_process() {
        return Ok(());
    }
    let doc = auth.managed.document().await.map_err(store_error)?;
    let tenant = match kind {
        Kind::ApiKey => doc
            .api_keys
            .iter()
            .find(|k| &k.id == id)
            .map(|k| k.tenant.clone()),
        Kind::Client => doc
            .clients
            .iter()
            .find(|c| &c.id == id)
            .map(|c| c.tenant.clone()),
    };
    match tenant {
        Some(t) if scope.sees(&t) => Ok(()),
        _ => Err(not_found(id)),
    }
}

/// A new credential's tenant and roles must be within the caller's scope.
fn check_scope(scope: &AdminScope, roles: &[String], tenant: &str) -> Result<(), Refusal> {
    if !scope.sees(tenant) {
        return Err(invalid(
            "tenant",
            "a tenant administrator issues credentials of its own tenant only",
        ));
    }
    if !scope.is_process() && roles.iter().any(|r| r == PROCESS_ADMIN_ROLE) {
        return Err(invalid(
            "roles",
            "only a process administrator may grant process_admin",
        ));
    }
    Ok(())
}

async fn run(
    rt: &Runtime,
    auth: &crate::auth::AuthState,
    scope: &AdminScope,
    op: &Op,
    body: &[u8],
) -> Result<(u16, Value), Refusal> {
    let managed = &auth.managed;
    let now = crate::clock::now_text();
    match op {
        Op::List(kind) => {
            let doc = managed.document().await.map_err(store_error)?;
            Ok((200, listing(rt, *kind, &doc, scope)))
        }
        Op::Create(Kind::ApiKey) => {
            let req: CreateKey = parse_body(body)?;
            if !valid_name(&req.name) {
                return Err(invalid("name", "1 to 64 letters, digits, '-', '_' or '.'"));
            }
            check_grants(rt, &req.roles, &req.tenant, req.policy.as_deref())?;
            check_scope(scope, &req.roles, &req.tenant)?;
            if rt.config.api_keys.iter().any(|k| k.name == req.name) {
                return Err(conflict(&req.name));
            }
            let key = crate::auth::api_keys::generate();
            let record = ManagedKey {
                id: managed::new_id(Kind::ApiKey),
                name: req.name.clone(),
                hash: managed::hash_line(&key),
                roles: req.roles,
                tenant: req.tenant,
                policy: req.policy,
                enabled: true,
                created_at: now.clone(),
                updated_at: now,
            };
            let view = key_view(&record);
            managed
                .update(|d| {
                    if d.api_keys.iter().any(|k| k.name == record.name) {
                        return Err(conflict(&record.name));
                    }
                    if d.api_keys.len() >= managed::MAX_EACH {
                        return Err(invalid("name", "too many managed API keys"));
                    }
                    d.api_keys.push(record);
                    Ok(())
                })
                .await
                .map_err(store_error)??;
            Ok((201, with_secret(view, "key", &key)))
        }
        Op::Create(Kind::Client) => {
            let req: CreateClient = parse_body(body)?;
            if !valid_name(&req.client_id) {
                return Err(invalid(
                    "client_id",
                    "1 to 64 letters, digits, '-', '_' or '.'",
                ));
            }
            check_grants(rt, &req.roles, &req.tenant, req.policy.as_deref())?;
            if rt
                .config
                .clients
                .iter()
                .any(|c| c.client_id == req.client_id)
            {
                return Err(conflict(&req.client_id));
            }
            let (secret, hash) = new_secret(auth).await?;
            let record = ManagedClient {
                id: managed::new_id(Kind::Client),
                client_id: req.client_id,
                secret_hash: hash,
                roles: req.roles,
                tenant: req.tenant,
                policy: req.policy,
                enabled: true,
                created_at: now.clone(),
                updated_at: now,
            };
            let view = client_view(&record);
            managed
                .update(|d| {
                    if d.clients.iter().any(|c| c.client_id == record.client_id) {
                        return Err(conflict(&record.client_id));
                    }
                    if d.clients.len() >= managed::MAX_EACH {
                        return Err(invalid("client_id", "too many managed clients"));
                    }
                    d.clients.push(record);
                    Ok(())
                })
                .await
                .map_err(store_error)??;
            Ok((201, with_secret(view, "client_secret", &secret)))
        }
        Op::Enable(kind, id) | Op::Disable(kind, id) => {
            let on = matches!(op, Op::Enable(..));
            change(managed, *kind, id, |k, c| {
                if let Some(k) = k {
                    k.enabled = on;
                    k.updated_at = now.clone();
                }
                if let Some(c) = c {
                    c.enabled = on;
                    c.updated_at = now.clone();
                }
            })
            .await
            .map(|v| (200, v))
        }
        Op::SetPolicy(kind, id) => {
            let req: SetPolicy = parse_body(body)?;
            if let Some(p) = &req.policy
                && !rt.limits.has_policy(p)
            {
                return Err(invalid(
                    "policy",
                    format!("unknown rate-limit policy '{p}'"),
                ));
            }
            change(managed, *kind, id, |k, c| {
                if let Some(k) = k {
                    k.policy = req.policy.clone();
                    k.updated_at = now.clone();
                }
                if let Some(c) = c {
                    c.policy = req.policy.clone();
                    c.updated_at = now.clone();
                }
            })
            .await
            .map(|v| (200, v))
        }
        Op::Rotate(Kind::ApiKey, id) => {
            let key = crate::auth::api_keys::generate();
            let hash = managed::hash_line(&key);
            let view = change(managed, Kind::ApiKey, id, |k, _| {
                if let Some(k) = k {
                    k.hash = hash.clone();
                    k.updated_at = now.clone();
                }
            })
            .await?;
            Ok((201, with_secret(view, "key", &key)))
        }
        Op::Rotate(Kind::Client, id) => {
            let (secret, hash) = new_secret(auth).await?;
            let view = change(managed, Kind::Client, id, |_, c| {
                if let Some(c) = c {
                    c.secret_hash = hash.clone();
                    c.updated_at = now.clone();
                }
            })
            .await?;
            Ok((201, with_secret(view, "client_secret", &secret)))
        }
        Op::Delete(kind, id) => {
            let kind = *kind;
            managed
                .update(|d| {
                    let before = d.api_keys.len() + d.clients.len();
                    match kind {
                        Kind::ApiKey => d.api_keys.retain(|k| k.id != *id),
                        Kind::Client => d.clients.retain(|c| c.id != *id),
                    }
                    if d.api_keys.len() + d.clients.len() == before {
                        return Err(not_found(id));
                    }
                    Ok(())
                })
                .await
                .map_err(store_error)??;
            Ok((200, json!({"id": id, "deleted": true})))
        }
    }
}

fn conflict(name: &str) -> Refusal {
    Refusal::Conflict(name.to_string())
}

fn with_secret(mut view: Value, field: &str, secret: &str) -> Value {
    if let Some(o) = view.as_object_mut() {
        o.insert(field.into(), json!(secret));
        o.insert(
            "note".into(),
            json!("the secret is shown only in this answer; store it now"),
        );
    }
    view
}

async fn new_secret(auth: &crate::auth::AuthState) -> Result<(String, String), Refusal> {
    let secret = crate::auth::tokens::generate_secret();
    let s = secret.clone();
    let hash = auth
        .check_secret(move || crate::auth::tokens::hash_secret(&s))
        .await
        .ok_or(Refusal::Busy)?
        .map_err(Refusal::Internal)?;
    Ok((secret, hash))
}

/// Changes one credential in place and answers its new view.
async fn change(
    managed: &managed::Managed,
    kind: Kind,
    id: &str,
    f: impl FnOnce(Option<&mut ManagedKey>, Option<&mut ManagedClient>),
) -> Result<Value, Refusal> {
    managed
        .update(|d| match kind {
            Kind::ApiKey => {
                let k = d
                    .api_keys
                    .iter_mut()
                    .find(|k| k.id == id)
                    .ok_or_else(|| not_found(id))?;
                f(Some(k), None);
                Ok(key_view(k))
            }
            Kind::Client => {
                let c = d
                    .clients
                    .iter_mut()
                    .find(|c| c.id == id)
                    .ok_or_else(|| not_found(id))?;
                f(None, Some(c));
                Ok(client_view(c))
            }
        })
        .await
        .map_err(store_error)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_by_method_and_path() {
        assert_eq!(
            Op::parse("GET", "/admin/api-keys"),
            Some(Op::List(Kind::ApiKey))
        );
        assert_eq!(
            Op::parse("POST", "/admin/clients/c_1/rotate"),
            Some(Op::Rotate(Kind::Client, "c_1".into()))
        );
        assert_eq!(
            Op::parse("DELETE", "/admin/api-keys/k_1"),
            Some(Op::Delete(Kind::ApiKey, "k_1".into()))
        );
        assert_eq!(Op::parse("GET", "/admin/api-keys/k_1/x"), None);
        assert_eq!(Op::parse("GET", "/admin/config"), None);
        assert_eq!(
            Op::parse("POST", "/admin/api-keys/k_1/disable").map(|o| o.audit().0),
            Some("admin.api_key.disable")
        );
    }
}
