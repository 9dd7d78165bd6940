//! The admin listener: `/admin/**`, for administrators only: a process administrator
//! (`process_admin` role) sees everything and may reload; a tenant administrator (`admin`
//! role) sees its own tenant's audit records, usage and config entries and nothing else
//! (`crate::auth::admin_scope`, the one place that decides it).
//!
//! It is its own Pingora HTTP app (not a proxy), so that answers can be streamed. It also
//! serves the operators' web console at `/ui/` (`console`), signed in with a session cookie
//! instead of a bearer credential.

pub mod console;
pub mod credentials;
pub mod openapi;

use crate::auth::admin_scope::AdminScope;
use crate::errors::ApiError;
use crate::observe::request_id;
use crate::routes::RouteError;
use crate::runtime::SharedState;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::HttpServerApp;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use serde_json::json;
use std::sync::Arc;

pub const ADMIN_ROLE: &str = crate::auth::admin_scope::TENANT_ADMIN_ROLE;

/// Request bodies the admin listener reads at most.
pub const MAX_BODY: usize = 64 * 1024;

/// What the audit record of an admin call says besides the request: who, what, on what.
#[derive(Default)]
pub struct AuditNote {
    pub principal: Option<Arc<crate::auth::principal::Principal>>,
    pub action: Option<&'static str>,
    pub resource: Option<String>,
}

/// The audit action (and the resource) of an admin call, from its method and path.
fn action_of(method: &str, path: &str) -> (Option<&'static str>, Option<String>) {
    let path = crate::routes::path::normalize(path).unwrap_or_default();
    if let Some(op) = credentials::Op::parse(method, &path) {
        let (action, resource) = op.audit();
        return (Some(action), resource.map(str::to_string));
    }
    match (method, path.as_str()) {
        ("POST", "/admin/reload") => (Some("admin.reload"), None),
        _ => (None, None),
    }
}

/// What an admin operation does (the router's answer for a method and path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Document,
    Docs,
    DocsScript,
    Config,
    EndpointStats,
    Audit,
    Usage,
    Reload,
    /// An operation on API keys or clients (`credentials::Op` says which).
    Credentials,
}

/// Every operation of the admin listener besides the console (`/ui/`): method, path template
/// (`{id}`: one non-empty segment) and what it does. The router matches these and nothing else,
/// and the API document (`openapi::document`) describes exactly these.
pub const OPERATIONS: &[(&str, &str, Endpoint)] = &[
    ("GET", "/openapi.json", Endpoint::Document),
    ("GET", "/docs", Endpoint::Docs),
    ("GET", "/docs/redoc.standalone.js", Endpoint::DocsScript),
    ("GET", "/admin/config", Endpoint::Config),
    ("GET", "/admin/endpoints/stats", Endpoint::EndpointStats),
    ("GET", "/admin/audit", Endpoint::Audit),
    ("GET", "/admin/usage", Endpoint::Usage),
    ("POST", "/admin/reload", Endpoint::Reload),
    ("GET", "/admin/api-keys", Endpoint::Credentials),
    ("POST", "/admin/api-keys", Endpoint::Credentials),
    ("PATCH", "/admin/api-keys/{id}", Endpoint::Credentials),
    ("DELETE", "/admin/api-keys/{id}", Endpoint::Credentials),
    ("POST", "/admin/api-keys/{id}/enable", Endpoint::Credentials),
    (
        "POST",
        "/admin/api-keys/{id}/disable",
        Endpoint::Credentials,
    ),
    ("POST", "/admin/api-keys/{id}/rotate", Endpoint::Credentials),
    ("GET", "/admin/clients", Endpoint::Credentials),
    ("POST", "/admin/clients", Endpoint::Credentials),
    ("PATCH", "/admin/clients/{id}", Endpoint::Credentials),
    ("DELETE", "/admin/clients/{id}", Endpoint::Credentials),
    ("POST", "/admin/clients/{id}/enable", Endpoint::Credentials),
    ("POST", "/admin/clients/{id}/disable", Endpoint::Credentials),
    ("POST", "/admin/clients/{id}/rotate", Endpoint::Credentials),
];

fn template_matches(template: &str, path: &str) -> bool {
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) if ts.starts_with('{') => {
                if ps.is_empty() {
                    return false;
                }
            }
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return false,
        }
    }
}

/// The operation a method and (normalised) path name: `Err(true)` when the path is served with
/// other methods (405), `Err(false)` when it is not served (404).
pub fn route(method: &str, path: &str) -> Result<Endpoint, bool> {
    let mut path_known = false;
    for (m, template, endpoint) in OPERATIONS {
        if template_matches(template, path) {
            if *m == method {
                return Ok(*endpoint);
            }
            path_known = true;
        }
    }
    Err(path_known)
}

/// Reads a request body whole, up to [`MAX_BODY`]; `None` when it is larger or unreadable.
pub async fn read_body(session: &mut ServerSession) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return None;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Some(body),
            Err(_) => return None,
        }
    }
}

pub struct AdminApp {
    pub state: Arc<SharedState>,
}

/// An admin answer: status and JSON body, or an error.
pub type AdminResult = Result<(u16, serde_json::Value), ApiError>;

/// A streamed admin answer (status 200): its content type and its body's chunks, produced by
/// another task. A handler that streams puts one in `stream` and returns `Ok` (the JSON part
/// is then ignored); errors found before streaming are returned as usual. A chunk that is an
/// `Err` ends the answer without its last chunk, so the client sees it incomplete.
pub struct Streamed {
    pub content_type: &'static str,
    pub chunks: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
}

impl AdminApp {
    async fn handle(
        &self,
        session: &mut ServerSession,
        stream: &mut Option<Streamed>,
        note: &mut AuditNote,
    ) -> AdminResult {
        let rt = self.state.current();
        let req = session.req_header();
        // What the call would do, named before it is authorized: a refused call is audited
        // under the same action as an allowed one.
        let (action, resource) = action_of(req.method.as_str(), req.uri.path());
        note.action = action;
        note.resource = resource;
        let principal = rt
            .auth
            .authenticate(&req.headers)
            .await
            .map_err(ApiError::from)?;
        note.principal = Some(principal.clone());
        let scope = AdminScope::of(&principal)?;
        let path = crate::routes::path::normalize(req.uri.path())
            .map_err(|e| ApiError::from(RouteError::InvalidPath(e)))?;
        let method = req.method.clone();
        let query = req.uri.query().map(str::to_string);
        let endpoint = route(method.as_str(), &path).map_err(|path_known| {
            if path_known {
                ApiError::from(RouteError::WrongMethod {
                    method: method.clone(),
                    path: path.clone(),
                })
            } else {
                ApiError::from(RouteError::NotFound { path: path.clone() })
            }
        })?;
        if endpoint == Endpoint::Credentials
            && let Some(op) = credentials::Op::parse(method.as_str(), &path)
        {
            let body = if crate::observe::audit::is_audited(&method) {
                read_body(session).await.ok_or_else(|| {
                    ApiError::new(
                        413,
                        "payload_too_large",
                        "Request body too large",
                        format!("at most {MAX_BODY} bytes"),
                    )
                })?
            } else {
                Vec::new()
            };
            return credentials::perform(&rt, &self.state.state.auth, &scope, &op, &body).await;
        }
        match endpoint {
            Endpoint::Config => Ok((200, config_summary(&rt, &scope))),
            Endpoint::EndpointStats => {
                // Endpoints and their counts are shared by every tenant on them.
                scope.require_process("endpoint statistics")?;
                Ok((
                    200,
                    crate::upstream::stats::report(&rt.upstreams, &rt.routes, &rt.version),
                ))
            }
            Endpoint::Audit => {
                let query = scope.confine_query(query.as_deref())?;
                let export = crate::observe::audit::export(&rt.log, query.as_deref())?;
                *stream = Some(Streamed {
                    content_type: export.content_type,
                    chunks: export.chunks,
                });
                Ok((200, serde_json::Value::Null))
            }
            Endpoint::Usage => {
                let query = scope.confine_query(query.as_deref())?;
                let usage = self.state.state.observe.usage();
                Ok((
                    200,
                    crate::observe::usage::report(&**usage, query.as_deref()).await?,
                ))
            }
            Endpoint::Reload => {
                scope.require_process("reload")?;
                let state = self.state.clone();
                let result = tokio::task::spawn_blocking(move || state.reload())
                    .await
                    .map_err(|_| ApiError::internal("the reload task failed"))?;
                match result {
                    Ok(version) => Ok((
                        200,
                        json!({"status": "reloaded", "config_version": version}),
                    )),
                    Err(errors) => {
                        let mut details = serde_json::Map::new();
                        details.insert("config".into(), json!(errors));
                        Err(ApiError::new(
                            422,
                            "invalid_config",
                            "The new configuration is invalid",
                            format!(
                                "the old configuration (version {}) stays in force",
                                rt.version
                            ),
                        )
                        .with_details(details))
                    }
                }
            }
            // The public documents are answered before authentication (`process_new_http`);
            // every credentials path is an `Op`.
            Endpoint::Document | Endpoint::Docs | Endpoint::DocsScript | Endpoint::Credentials => {
                Err(RouteError::NotFound { path }.into())
            }
        }
    }
}

/// What an administrator may see of the config: structure and names, never secrets or
/// hashes; a tenant administrator only its tenant, its account, its keys and clients.
pub fn config_summary(rt: &crate::runtime::Runtime, scope: &AdminScope) -> serde_json::Value {
    let config = &rt.config;
    let accounts: serde_json::Map<String, serde_json::Value> = rt
        .upstreams
        .accounts
        .iter()
        .filter(|(name, _)| {
            scope.is_process()
                || config
                    .tenants
                    .iter()
                    .any(|(t, tc)| scope.sees(t) && &tc.account == *name)
        })
        .map(|(name, a)| {
            (
                name.clone(),
                json!({
                    "credentials": a.credentials.mode(),
                    "endpoints": a.endpoints.iter().map(|e| json!({"name": &*e.name, "url": e.url, "up": e.health.is_up()})).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    let mut summary = json!({
        "config_version": rt.version,
        "scope": match scope {
            AdminScope::Process => json!("process"),
            AdminScope::Tenant(t) => json!({"tenant": &**t}),
        },
        "accounts": accounts,
        "tenants": config.tenants.iter().filter(|(k, _)| scope.sees(k)).map(|(k, v)| (k.clone(), json!(v.account))).collect::<serde_json::Map<_, _>>(),
        "roles": rt.auth.roles.patterns(),
        "api_keys": config.api_keys.iter().filter(|k| scope.sees(&k.tenant)).map(|k| json!({"name": k.name, "roles": k.roles, "tenant": k.tenant, "enabled": k.enabled})).collect::<Vec<_>>(),
        "clients": config.clients.iter().filter(|c| scope.sees(&c.tenant)).map(|c| json!({"client_id": c.client_id, "roles": c.roles, "tenant": c.tenant, "enabled": c.enabled})).collect::<Vec<_>>(),
        "routes": rt.routes.routes().len(),
    });
    // A tenant administrator sees the issuers that may speak for its tenant: those whose
    // tokens default to it or name their tenant in a claim.
    summary["jwt_issuers"] = config
        .jwt
        .issuers
        .iter()
        .filter(|i| {
            scope.is_process()
                || i.tenant_claim.is_some()
                || i.default_tenant.as_deref().is_some_and(|t| scope.sees(t))
        })
        .map(|i| json!({"name": i.name, "issuer": i.issuer, "algorithms": i.algorithms, "jwks_url": i.jwks_url})).collect::<Vec<_>>()
        .into();
    summary
}

/// The admin API's document and its Redoc page (public, like the proxy listener's): the answer
/// to a `GET` of one of them.
fn public_document(req: &pingora::http::RequestHeader) -> Option<(&'static str, Bytes)> {
    if req.method != http::Method::GET {
        return None;
    }
    let path = crate::routes::path::normalize(req.uri.path()).ok()?;
    match route("GET", &path) {
        Ok(Endpoint::Document) => {
            static DOCUMENT: once_cell::sync::Lazy<Bytes> =
                once_cell::sync::Lazy::new(|| Bytes::from(openapi::document().to_string()));
            Some(("application/json", DOCUMENT.clone()))
        }
        Ok(Endpoint::Docs | Endpoint::DocsScript) => {
            let (content_type, bytes) = crate::facade::docs::asset(&path);
            Some((content_type, Bytes::from_static(bytes)))
        }
        _ => None,
    }
}

/// Writes a whole answer; `content_type` is `application/json` (or a document's), or for an
/// error the media type the caller's `Accept` picks (`crate::errors::media_type`, as on the proxy listener).
async fn write_body(
    session: &mut ServerSession,
    status: u16,
    content_type: &'static str,
    body: Bytes,
    request_id: &str,
    extra: &[(&'static str, String)],
) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(status, Some(4))?;
    h.insert_header("content-type", content_type)?;
    h.insert_header("content-length", body.len().to_string())?;
    h.insert_header("x-request-id", request_id)?;
    h.insert_header("cache-control", "no-store")?;
    for (k, v) in extra {
        h.append_header(*k, v.as_str())?;
    }
    session.write_response_header(Box::new(h)).await?;
    session.write_response_body(body, true).await?;
    Ok(())
}

/// Writes a streamed answer with chunked transfer encoding, chunk by chunk as they come.
async fn write_stream(
    session: &mut ServerSession,
    mut stream: Streamed,
    request_id: &str,
) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(200, Some(4))?;
    h.insert_header("content-type", stream.content_type)?;
    h.insert_header("transfer-encoding", "chunked")?;
    h.insert_header("x-request-id", request_id)?;
    h.insert_header("cache-control", "no-store")?;
    session.write_response_header(Box::new(h)).await?;
    while let Some(chunk) = stream.chunks.recv().await {
        match chunk {
            Ok(bytes) => session.write_response_body(bytes, false).await?,
            Err(e) => {
                log::error!("admin request {request_id}: the streamed answer failed: {e}");
                return Err(pingora::Error::explain(
                    pingora::ErrorType::InternalError,
                    "streamed answer failed",
                ));
            }
        }
    }
    session.write_response_body(Bytes::new(), true).await?;
    Ok(())
}

#[async_trait]
impl HttpServerApp for AdminApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<pingora::apps::ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            _ => return None,
        }
        // Stopping, or handing the listeners over to a new process: answer this request with
        // `Connection: close`, so that the client's next one opens a connection that the process
        // keeping the listeners accepts.
        let closing = *shutdown.borrow() || self.state.is_draining();
        session.set_keepalive(if closing { None } else { Some(60) });
        let rid = request_id::new_id();
        let started = (std::time::SystemTime::now(), std::time::Instant::now());
        if console::is_console(session.req_header().uri.path()) {
            let done = console::serve(&self.state, &mut session, &rid, started).await;
            if done.is_err() {
                return None;
            }
            return reuse(session).await;
        }
        if let Some(answer) = public_document(session.req_header()) {
            let (content_type, body) = answer;
            if write_body(&mut session, 200, content_type, body, &rid, &[])
                .await
                .is_err()
            {
                return None;
            }
            return reuse(session).await;
        }
        let mut stream = None;
        let mut note = AuditNote::default();
        let outcome = self.handle(&mut session, &mut stream, &mut note).await;
        let (status, code) = match &outcome {
            Ok((status, _)) => (*status, None),
            Err(e) => (e.status, Some(e.code)),
        };
        let rt = self.state.current();
        let req = session.req_header();
        if crate::observe::audit::wants_record(&rt.log, &req.method) {
            // Refused calls are recorded with whoever they claimed to be when the credential
            // was valid.
            let principal = note.principal.clone();
            let path = crate::routes::path::normalize(req.uri.path()).unwrap_or_default();
            let view = crate::request::RequestView {
                method: &req.method,
                path: if path.is_empty() {
                    req.uri.path()
                } else {
                    &path
                },
                query: req.uri.query(),
                headers: &req.headers,
                route: None,
                params: &[],
                principal: principal.as_ref(),
                tenant: None,
                client_ip: session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip()),
                request_id: &rid,
            };
            crate::observe::audit::record_admin(
                &rt.log,
                &view,
                started,
                status,
                code,
                note.action.unwrap_or("admin.unmatched"),
                note.resource.as_deref(),
            )
            .await;
        }
        let written = match (outcome, stream) {
            (Ok(_), Some(stream)) => write_stream(&mut session, stream, &rid).await,
            (Ok((status, value)), None) => {
                write_body(
                    &mut session,
                    status,
                    "application/json",
                    Bytes::from(value.to_string()),
                    &rid,
                    &[],
                )
                .await
            }
            (Err(err), _) => {
                let mut extra = err.headers.clone();
                if let Some(s) = err.retry_after {
                    extra.push(("retry-after", s.to_string()));
                }
                let media = crate::errors::media_type(session.req_header().headers.get("accept"));
                write_body(
                    &mut session,
                    err.status,
                    media,
                    err.render(&rid),
                    &rid,
                    &extra,
                )
                .await
            }
        };
        if written.is_err() {
            return None;
        }
        reuse(session).await
    }
}

/// A session whose answer is written: its connection back to Pingora for the next request
/// (`None`: not reusable, so it is closed).
async fn reuse(session: ServerSession) -> Option<pingora::apps::ReusedHttpStream> {
    let settings = pingora::apps::HttpPersistentSettings::for_session(&session);
    session
        .finish()
        .await
        .ok()
        .flatten()
        .map(|s| pingora::apps::ReusedHttpStream::from_reusable_stream(s, settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The router and the document are one table: every operation is documented with its
    /// method, and the document has nothing else (tests/e2e/openapi_document.rs checks the same
    /// against the running listener).
    #[test]
    fn the_document_describes_exactly_the_routed_operations() {
        let doc = openapi::document();
        let paths = doc["paths"].as_object().unwrap();
        let mut documented = 0;
        for (template, ops) in paths {
            for method in ops.as_object().unwrap().keys() {
                documented += 1;
                let method = method.to_ascii_uppercase();
                assert!(
                    OPERATIONS
                        .iter()
                        .any(|(m, t, _)| *m == method && t == template),
                    "{method} {template} is documented but not routed"
                );
            }
        }
        assert_eq!(documented, OPERATIONS.len());
        for (method, template, endpoint) in OPERATIONS {
            let path = template.replace("{id}", "k_1");
            assert_eq!(route(method, &path), Ok(*endpoint), "{method} {path}");
            // Every credentials operation is one the credentials module performs.
            assert_eq!(
                *endpoint == Endpoint::Credentials,
                credentials::Op::parse(method, &path).is_some(),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn paths_outside_the_table_are_not_routed() {
        assert_eq!(route("GET", "/admin/api-keysX"), Err(false));
        assert_eq!(route("GET", "/admin/nothing"), Err(false));
        assert_eq!(route("POST", "/admin/api-keys/k_1/enable/x"), Err(false));
        assert_eq!(route("POST", "/admin/api-keys//enable"), Err(false));
        assert_eq!(route("DELETE", "/admin/config"), Err(true));
        assert_eq!(route("GET", "/admin/reload"), Err(true));
        assert_eq!(route("GET", "/admin/api-keys"), Ok(Endpoint::Credentials));
    }
}
