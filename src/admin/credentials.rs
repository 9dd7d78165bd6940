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

    /// The kind of credential it is about.
    pub fn kind(&self) -> Kind {
        match self {
            Op::List(k)
            | Op::Create(k)
            | Op::Enable(k, _)
            | Op::Disable(k, _)
            | Op::Rotate(k, _)
            | Op::SetPolicy(k, _)
            | Op::Delete(k, _) => *k,
        }
    }

    /// The id of the existing credential it changes.
    pub fn id(&self) -> Option<&str> {
        match self {
            Op::Enable(_, id)
            | Op::Disable(_, id)
            | Op::Rotate(_, id)
            | Op::SetPolicy(_, id)
            | Op::Delete(_, id) => Some(id),
            Op::List(_) | Op::Create(_) => None,
        }
    }

    /// The audit action and the credential's id.
    pub fn audit(&self) -> (&'static str, Option<&str>) {
        let (key, client) = match self {
            Op::List(_) => return ("admin.credentials.list", None),
            Op::Create(_) => ("admin.api_key.create", "admin.client.create"),
            Op::Enable(..) => ("admin.api_key.enable", "admin.client.enable"),
            Op::Disable(..) => ("admin.api_key.disable", "admin.client.disable"),
            Op::Rotate(..) => ("admin.api_key.rotate", "admin.client.rotate"),
            Op::SetPolicy(..) => ("admin.api_key.policy", "admin.client.policy"),
            Op::Delete(..) => ("admin.api_key.delete", "admin.client.delete"),
        };
        let action = match self.kind() {
            Kind::ApiKey => key,
            Kind::Client => client,
        };
        (action, self.id())
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

/// A create request of either kind: its name (a key's `name`, a client's `client_id`).
struct Create {
    name: String,
    roles: Vec<String>,
    tenant: String,
    policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPolicy {
    policy: Option<String>,
}

/// The fields a change may touch, the same for both kinds.
struct Fields<'a> {
    enabled: &'a mut bool,
    policy: &'a mut Option<String>,
    /// The stored hash of the secret (a key's `sha256:` line, a client's Argon2 string).
    secret_hash: &'a mut String,
    updated_at: &'a mut String,
}

/// A kind of runtime-managed credential, as the one generic handler ([`run_on`]) sees it.
trait Credential: Sized + Clone {
    const KIND: Kind;
    /// Its list in the document and in a listing's answer (`api_keys`, `clients`).
    const LIST: &'static str;
    /// The request and answer field that names it (`name`, `client_id`).
    const NAME: &'static str;
    /// The answer field that carries a new secret (`key`, `client_secret`).
    const SECRET: &'static str;
    fn all(doc: &Document) -> &Vec<Self>;
    fn all_mut(doc: &mut Document) -> &mut Vec<Self>;
    fn id(&self) -> &str;
    fn name(&self) -> &str;
    fn tenant(&self) -> &str;
    fn fields(&mut self) -> Fields<'_>;
    /// What listings and answers show (never the hash).
    fn view(&self) -> Value;
    fn parse_create(body: &[u8]) -> Result<Create, Refusal>;
    fn new(id: String, req: Create, secret_hash: String, now: String) -> Self;
    /// The read-only credentials of the config file, as listed.
    fn configured(rt: &Runtime) -> Vec<Value>;
}

impl Credential for ManagedKey {
    const KIND: Kind = Kind::ApiKey;
    const LIST: &'static str = "api_keys";
    const NAME: &'static str = "name";
    const SECRET: &'static str = "key";
    fn all(doc: &Document) -> &Vec<Self> {
        &doc.api_keys
    }
    fn all_mut(doc: &mut Document) -> &mut Vec<Self> {
        &mut doc.api_keys
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn fields(&mut self) -> Fields<'_> {
        Fields {
            enabled: &mut self.enabled,
            policy: &mut self.policy,
            secret_hash: &mut self.hash,
            updated_at: &mut self.updated_at,
        }
    }
    fn view(&self) -> Value {
        json!({"id": self.id, "name": self.name, "principal": format!("key:{}", self.name),
            "roles": self.roles, "tenant": self.tenant, "policy": self.policy,
            "enabled": self.enabled, "source": "runtime", "created_at": self.created_at,
            "updated_at": self.updated_at})
    }
    fn parse_create(body: &[u8]) -> Result<Create, Refusal> {
        let r: CreateKey = parse_body(body)?;
        Ok(Create {
            name: r.name,
            roles: r.roles,
            tenant: r.tenant,
            policy: r.policy,
        })
    }
    fn new(id: String, req: Create, hash: String, now: String) -> Self {
        ManagedKey {
            id,
            name: req.name,
            hash,
            roles: req.roles,
            tenant: req.tenant,
            policy: req.policy,
            enabled: true,
            created_at: now.clone(),
            updated_at: now,
        }
    }
    fn configured(rt: &Runtime) -> Vec<Value> {
        rt.config
            .api_keys
            .iter()
            .map(|k| {
                json!({"id": null, "name": k.name, "principal": format!("key:{}", k.name),
                    "roles": k.roles, "tenant": k.tenant, "policy": null,
                    "enabled": k.enabled, "source": "config"})
            })
            .collect()
    }
}

impl Credential for ManagedClient {
    const KIND: Kind = Kind::Client;
    const LIST: &'static str = "clients";
    const NAME: &'static str = "client_id";
    const SECRET: &'static str = "client_secret";
    fn all(doc: &Document) -> &Vec<Self> {
        &doc.clients
    }
    fn all_mut(doc: &mut Document) -> &mut Vec<Self> {
        &mut doc.clients
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.client_id
    }
    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn fields(&mut self) -> Fields<'_> {
        Fields {
            enabled: &mut self.enabled,
            policy: &mut self.policy,
            secret_hash: &mut self.secret_hash,
            updated_at: &mut self.updated_at,
        }
    }
    fn view(&self) -> Value {
        json!({"id": self.id, "client_id": self.client_id,
            "principal": format!("client:{}", self.client_id), "roles": self.roles,
            "tenant": self.tenant, "policy": self.policy, "enabled": self.enabled,
            "source": "runtime", "created_at": self.created_at, "updated_at": self.updated_at})
    }
    fn parse_create(body: &[u8]) -> Result<Create, Refusal> {
        let r: CreateClient = parse_body(body)?;
        Ok(Create {
            name: r.client_id,
            roles: r.roles,
            tenant: r.tenant,
            policy: r.policy,
        })
    }
    fn new(id: String, req: Create, secret_hash: String, now: String) -> Self {
        ManagedClient {
            id,
            client_id: req.name,
            secret_hash,
            roles: req.roles,
            tenant: req.tenant,
            policy: req.policy,
            enabled: true,
            created_at: now.clone(),
            updated_at: now,
        }
    }
    fn configured(rt: &Runtime) -> Vec<Value> {
        rt.config
            .clients
            .iter()
            .map(|c| {
                json!({"id": null, "client_id": c.client_id,
                    "principal": format!("client:{}", c.client_id), "roles": c.roles,
                    "tenant": c.tenant, "policy": null, "enabled": c.enabled,
                    "source": "config"})
            })
            .collect()
    }
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

/// Every credential of a kind in the caller's scope: the config's (read-only) and the
/// runtime-managed ones.
pub fn listing(rt: &Runtime, kind: Kind, doc: &Document, scope: &AdminScope) -> Value {
    match kind {
        Kind::ApiKey => listing_of::<ManagedKey>(rt, doc, scope),
        Kind::Client => listing_of::<ManagedClient>(rt, doc, scope),
    }
}

fn listing_of<C: Credential>(rt: &Runtime, doc: &Document, scope: &AdminScope) -> Value {
    let mut rows = C::configured(rt);
    rows.extend(C::all(doc).iter().map(C::view));
    rows.retain(|r| r["tenant"].as_str().is_some_and(|t| scope.sees(t)));
    let mut out = serde_json::Map::new();
    out.insert(C::LIST.into(), Value::Array(rows));
    Value::Object(out)
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
    let done = match op.kind() {
        Kind::ApiKey => run_on::<ManagedKey>(rt, auth, scope, op, body).await,
        Kind::Client => run_on::<ManagedClient>(rt, auth, scope, op, body).await,
    };
    done.map_err(Refusal::api)
}

/// A change to an existing credential is refused (as not found) outside the caller's tenant.
async fn in_scope<C: Credential>(
    auth: &crate::auth::AuthState,
    scope: &AdminScope,
    id: &str,
) -> Result<(), Refusal> {
    if scope.is_process() {
        return Ok(());
    }
    let doc = auth.managed.document().await.map_err(store_error)?;
    match C::all(&doc).iter().find(|c| c.id() == id) {
        Some(c) if scope.sees(c.tenant()) => Ok(()),
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

/// One handler for both kinds: list, create, enable/disable, policy, rotate, delete.
async fn run_on<C: Credential>(
    rt: &Runtime,
    auth: &crate::auth::AuthState,
    scope: &AdminScope,
    op: &Op,
    body: &[u8],
) -> Result<(u16, Value), Refusal> {
    let managed = &auth.managed;
    if let Some(id) = op.id() {
        in_scope::<C>(auth, scope, id).await?;
    }
    let now = crate::clock::now_text();
    match op {
        Op::List(_) => {
            let doc = managed.document().await.map_err(store_error)?;
            Ok((200, listing_of::<C>(rt, &doc, scope)))
        }
        Op::Create(_) => {
            let req = C::parse_create(body)?;
            if !valid_name(&req.name) {
                return Err(invalid(C::NAME, "1 to 64 letters, digits, '-', '_' or '.'"));
            }
            check_grants(rt, &req.roles, &req.tenant, req.policy.as_deref())?;
            check_scope(scope, &req.roles, &req.tenant)?;
            if C::configured(rt)
                .iter()
                .any(|c| c[C::NAME] == req.name.as_str())
            {
                return Err(conflict(&req.name));
            }
            let (secret, hash) = new_secret(C::KIND, auth).await?;
            let record = C::new(managed::new_id(C::KIND), req, hash, now);
            let view = record.view();
            managed
                .update(|d| {
                    let all = C::all_mut(d);
                    if all.iter().any(|c| c.name() == record.name()) {
                        return Err(conflict(record.name()));
                    }
                    if all.len() >= managed::MAX_EACH {
                        return Err(invalid(C::NAME, format!("too many managed {}", C::LIST)));
                    }
                    all.push(record.clone());
                    Ok(())
                })
                .await
                .map_err(store_error)??;
            Ok((201, with_secret(view, C::SECRET, &secret)))
        }
        Op::Enable(_, id) | Op::Disable(_, id) => {
            let on = matches!(op, Op::Enable(..));
            let view = change::<C>(managed, id, &now, |f| *f.enabled = on).await?;
            Ok((200, view))
        }
        Op::SetPolicy(_, id) => {
            let req: SetPolicy = parse_body(body)?;
            if let Some(p) = &req.policy
                && !rt.limits.has_policy(p)
            {
                return Err(invalid(
                    "policy",
                    format!("unknown rate-limit policy '{p}'"),
                ));
            }
            let view = change::<C>(managed, id, &now, |f| *f.policy = req.policy.clone()).await?;
            Ok((200, view))
        }
        Op::Rotate(_, id) => {
            let (secret, hash) = new_secret(C::KIND, auth).await?;
            let view = change::<C>(managed, id, &now, |f| *f.secret_hash = hash.clone()).await?;
            Ok((201, with_secret(view, C::SECRET, &secret)))
        }
        Op::Delete(_, id) => {
            managed
                .update(|d| {
                    let all = C::all_mut(d);
                    let before = all.len();
                    all.retain(|c| c.id() != id);
                    if all.len() == before {
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

/// A new secret and its stored hash: a key and its `sha256:` line, or a client secret and its
/// Argon2 string (slow on purpose: computed off the async workers, `auth` bounds how many).
async fn new_secret(
    kind: Kind,
    auth: &crate::auth::AuthState,
) -> Result<(String, String), Refusal> {
    if kind == Kind::ApiKey {
        let key = crate::auth::api_keys::generate();
        let hash = managed::hash_line(&key);
        return Ok((key, hash));
    }
    let secret = crate::auth::tokens::generate_secret();
    let s = secret.clone();
    let hash = auth
        .check_secret(move || crate::auth::tokens::hash_secret(&s))
        .await
        .ok_or(Refusal::Busy)?
        .map_err(Refusal::Internal)?;
    Ok((secret, hash))
}

/// Changes one credential in place (and its `updated_at`) and answers its new view.
async fn change<C: Credential>(
    managed: &managed::Managed,
    id: &str,
    now: &str,
    f: impl Fn(Fields<'_>),
) -> Result<Value, Refusal> {
    managed
        .update(|d| {
            let c = C::all_mut(d)
                .iter_mut()
                .find(|c| c.id() == id)
                .ok_or_else(|| not_found(id))?;
            let fields = c.fields();
            *fields.updated_at = now.to_string();
            f(fields);
            Ok(c.view())
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
