//! The operators' web console at `/ui/` on the admin listener (`docs/ARCHITECTURE.md`).
//!
//! Server-rendered HTML (every table is readable without JavaScript) with a small script that
//! refreshes the live parts and draws charts with the vendored uPlot; every asset is embedded
//! in the binary (`assets`). Sign-in takes an API key or a client's id and secret whose
//! principal has the `admin`, `console:write` or `console:read` role, and answers a session
//! cookie (`session`). Every answer carries a strict Content-Security-Policy, `X-Frame-Options:
//! DENY` and `Referrer-Policy: same-origin`; every POST must come from the console's own
//! origin (`Origin`) and, once signed in, carry the session's CSRF token. Failed sign-ins are
//! counted per source address (429 past `console.sign_in_failures_per_minute`) and audited,
//! like every state-changing console request. A session of a process administrator
//! (`process_admin`) sees everything; any other sees its own tenant only (usage, audit, tasks,
//! credentials, its config entries) and not what tenants share (traffic totals, endpoints),
//! as `auth::admin_scope` decides for the admin API.

mod assets;
mod pages;
pub mod session;

use super::credentials;
use crate::auth::CredentialRef;
use crate::auth::principal::{CredentialKind, Principal};
use crate::runtime::{Runtime, SharedState};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use session::Session;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Whether a path belongs to the console.
pub fn is_console(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// One console answer.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    fn html(status: u16, body: String) -> Answer {
        Answer {
            status,
            content_type: "text/html; charset=utf-8",
            body: Bytes::from(body),
            headers: Vec::new(),
        }
    }

    fn redirect(to: &str) -> Answer {
        Answer {
            status: 303,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from_static(b"See Other"),
            headers: vec![("location", to.to_string())],
        }
    }

    fn json(value: &serde_json::Value) -> Answer {
        Answer {
            status: 200,
            content_type: "application/json",
            body: Bytes::from(value.to_string()),
            headers: Vec::new(),
        }
    }

    fn with(mut self, k: &'static str, v: String) -> Answer {
        self.headers.push((k, v));
        self
    }
}

/// The request as the console sees it.
pub struct Req<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: HashMap<String, String>,
    pub raw_query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    pub form: HashMap<String, String>,
    pub client_ip: Option<std::net::IpAddr>,
    /// It came over TLS (the admin listener has `server.admin_tls`).
    pub tls: bool,
}

/// What the audit record of a console request names.
struct Audit {
    action: &'static str,
    resource: Option<String>,
    principal: Option<Arc<Principal>>,
}

/// The signed-in operator of a request.
pub struct Operator {
    pub session: Session,
    pub token: String,
}

impl Operator {
    /// What this operator administers: the process, or its own tenant.
    pub fn scope(&self) -> crate::auth::admin_scope::AdminScope {
        if self.session.process {
            crate::auth::admin_scope::AdminScope::Process
        } else {
            crate::auth::admin_scope::AdminScope::Tenant(self.session.tenant.as_str().into())
        }
    }

    /// The operator with the rights its credential's principal has now; `None` when it is no
    /// longer the same principal or holds no console role any more.
    fn renewed(mut self, current: &Principal) -> Option<Operator> {
        let (write, process) = rights(current)?;
        if *current.id != *self.session.principal {
            return None;
        }
        self.session.write = write;
        self.session.process = process;
        self.session.tenant = current.tenant.to_string();
        self.session.roles = current.roles.iter().map(|r| r.to_string()).collect();
        Some(self)
    }

    fn principal(&self) -> Arc<Principal> {
        Arc::new(Principal {
            id: self.session.principal.as_str().into(),
            kind: if self.session.principal.starts_with("client:") {
                CredentialKind::IssuedToken
            } else {
                CredentialKind::ApiKey
            },
            roles: self
                .session
                .roles
                .iter()
                .map(|r| Arc::<str>::from(r.as_str()))
                .collect(),
            tenant: self.session.tenant.as_str().into(),
            permissions: Default::default(),
            policy: None,
        })
    }
}

fn parse_pairs(s: &str) -> HashMap<String, String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(s)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// Serves one console request and writes its answer (with the audit record of a POST first).
pub async fn serve(
    shared: &Arc<SharedState>,
    session: &mut ServerSession,
    rid: &str,
    started: (std::time::SystemTime, std::time::Instant),
) -> pingora::Result<()> {
    let rt = shared.current();
    let method = session.req_header().method.clone();
    let body = if method == http::Method::POST {
        super::read_body(session).await
    } else {
        Some(Vec::new())
    };
    let req_header = session.req_header();
    let path = req_header.uri.path().to_string();
    let raw_query = req_header.uri.query().map(str::to_string);
    let client_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let req_header = session.req_header();
    let form = body
        .as_deref()
        .map(|b| parse_pairs(&String::from_utf8_lossy(b)))
        .unwrap_or_default();
    let req = Req {
        method: method.as_str(),
        path: &path,
        query: raw_query.as_deref().map(parse_pairs).unwrap_or_default(),
        raw_query: raw_query.as_deref(),
        headers: &req_header.headers,
        form,
        client_ip,
        tls,
    };
    let mut audit = Audit {
        action: "console.unmatched",
        resource: None,
        principal: None,
    };
    let answer = if body.is_none() {
        pages::message(
            413,
            "Request too large",
            "The form was larger than the console accepts.",
        )
    } else {
        route(shared, &rt, &req, &mut audit).await
    };
    if method == http::Method::POST {
        let view = crate::request::RequestView {
            method: &method,
            path: &path,
            query: None,
            headers: &req_header.headers,
            route: None,
            params: &[],
            principal: audit.principal.as_ref(),
            tenant: None,
            client_ip,
            request_id: rid,
        };
        let code = (answer.status >= 400).then_some("console_refused");
        crate::observe::audit::record_admin(
            &rt.log,
            &view,
            started,
            answer.status,
            code,
            audit.action,
            audit.resource.as_deref(),
        )
        .await;
    }
    write(session, answer, rid).await
}

async fn write(session: &mut ServerSession, a: Answer, rid: &str) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(a.status, Some(10))?;
    h.insert_header("content-type", a.content_type)?;
    h.insert_header("content-length", a.body.len().to_string())?;
    h.insert_header("x-request-id", rid)?;
    h.insert_header("cache-control", "no-store")?;
    h.insert_header("content-security-policy", CSP)?;
    h.insert_header("x-frame-options", "DENY")?;
    // `same-origin`: with `no-referrer` browsers send `Origin: null` on form posts, which the
    // origin check must refuse.
    h.insert_header("referrer-policy", "same-origin")?;
    h.insert_header("x-content-type-options", "nosniff")?;
    h.insert_header("cross-origin-opener-policy", "same-origin")?;
    for (k, v) in a.headers {
        h.append_header(k, v)?;
    }
    session.write_response_header(Box::new(h)).await?;
    session.write_response_body(a.body, true).await?;
    Ok(())
}

fn idle(rt: &Runtime) -> Duration {
    Duration::from_secs(rt.config.console.idle_timeout_seconds.max(1))
}

fn absolute(rt: &Runtime) -> Duration {
    Duration::from_secs(rt.config.console.absolute_timeout_seconds.max(1))
}

/// A POST must come from the console's own origin: `Origin` equal to the scheme and the
/// `Host` the request was sent to.
fn same_origin(req: &Req<'_>, tls: bool) -> bool {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok());
    let origin = req
        .headers
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    match (host, origin) {
        (Some(h), Some(o)) => o == format!("{}://{h}", if tls { "https" } else { "http" }),
        _ => false,
    }
}

/// The session cookie (an empty token and no `max_age`: the cookie that clears it). Always
/// `HttpOnly; SameSite=Strict`. Over TLS (`server.admin_tls`) it is also `Secure` and named with
/// the `__Host-` prefix (which requires `Secure`, `Path=/` and no `Domain`), so that no other
/// site or plain-HTTP page on the host can set or overwrite it. Over plain HTTP neither is
/// possible: a browser drops a `Secure` cookie received over HTTP (loopback aside) and refuses
/// a `__Host-` one, so the console could not sign in; the admin listener then belongs on
/// loopback or behind a TLS-terminating proxy.
fn cookie(tls: bool, token: &str, max_age: Option<u64>) -> String {
    let mut c = format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Strict",
        session::cookie_name(tls)
    );
    if tls {
        c.push_str("; Secure");
    }
    match max_age {
        Some(s) => c.push_str(&format!("; Max-Age={s}")),
        None => c.push_str("; Max-Age=0"),
    }
    c
}

async fn route(
    shared: &Arc<SharedState>,
    rt: &Arc<Runtime>,
    req: &Req<'_>,
    audit: &mut Audit,
) -> Answer {
    if !rt.config.console.enabled {
        return pages::message(
            404,
            "Not found",
            "The console is switched off (console.enabled).",
        );
    }
    let path = req.path.trim_end_matches('/');
    if let Some(name) = path.strip_prefix("/ui/assets/") {
        return assets::get(name)
            .map(|(ct, bytes)| Answer {
                status: 200,
                content_type: ct,
                body: Bytes::from_static(bytes),
                headers: Vec::new(),
            })
            .unwrap_or_else(|| pages::message(404, "Not found", "No such asset."));
    }
    let secure = req.tls;
    if req.method == "POST" && !same_origin(req, secure) {
        audit.action = if path == "/ui/login" {
            "console.sign_in"
        } else {
            "console.refused"
        };
        return pages::message(
            403,
            "Refused",
            "The request did not come from the console's own origin.",
        );
    }
    if path == "/ui/login" {
        return match req.method {
            "POST" => {
                audit.action = "console.sign_in";
                sign_in(rt, shared, req, audit).await
            }
            _ => Answer::html(200, pages::sign_in(None)),
        };
    }
    // Everything else needs a live session.
    let kv = shared.state.stores.kv.clone();
    let token = session::token_from(req.headers, session::cookie_name(secure));
    let live = match &token {
        Some(t) => session::resume(&*kv, t, idle(rt), absolute(rt)).await,
        None => Ok(None),
    };
    let op = match (live, token.clone()) {
        (Ok(Some(s)), Some(t)) => Operator {
            session: s,
            token: t,
        },
        (Err(e), _) => {
            log::error!("console sessions unavailable: {e}");
            return pages::message(
                503,
                "Unavailable",
                "Sessions cannot be read right now; try again.",
            );
        }
        _ => {
            if req.method == "POST" {
                audit.action = "console.refused";
                return pages::message(401, "Signed out", "Sign in again.");
            }
            return Answer::redirect("/ui/login");
        }
    };
    // The credential behind the session, as it is now: disabled, rotated or deleted since the
    // sign-in (on any node), or stripped of its console role, ends the session.
    let op = match rt.auth.resolve(&op.session.credential).await {
        Ok(current) => match current.and_then(|p| Operator::renewed(op, &p)) {
            Some(op) => op,
            None => {
                let _ = session::end(&*kv, token.as_deref().unwrap_or_default()).await;
                audit.action = "console.refused";
                let cleared = cookie(req.tls, "", None);
                if req.method == "POST" {
                    return pages::message(
                        401,
                        "Signed out",
                        "The credential you signed in with was disabled, rotated or deleted; sign in again.",
                    )
                    .with("set-cookie", cleared);
                }
                return Answer::redirect("/ui/login").with("set-cookie", cleared);
            }
        },
        Err(_) => {
            return pages::message(
                503,
                "Unavailable",
                "Credentials cannot be checked right now; try again.",
            );
        }
    };
    audit.principal = Some(op.principal());
    if req.method == "POST" {
        let presented = req.form.get("csrf").map(String::as_str).unwrap_or("");
        if !session::same(presented, &op.session.csrf) {
            audit.action = "console.refused";
            return pages::message(
                403,
                "Refused",
                "The form's CSRF token is missing or wrong; reload the page and try again.",
            );
        }
        if path == "/ui/logout" {
            audit.action = "console.sign_out";
            let _ = session::end(&*kv, &op.token).await;
            return Answer::redirect("/ui/login").with("set-cookie", cookie(req.tls, "", None));
        }
        if !op.session.write {
            audit.action = "console.refused";
            return pages::message(
                403,
                "Read only",
                "Your role (console:read) may look but not act.",
            );
        }
        return act(shared, rt, req, &op, path, audit).await;
    }
    if req.method != "GET" && req.method != "HEAD" {
        return pages::message(405, "Method not allowed", "The console takes GET and POST.");
    }
    pages::page(shared, rt, req, &op, path).await
}

/// Sign-in with an API key (`key`) or a client's id and secret.
async fn sign_in(
    rt: &Arc<Runtime>,
    shared: &Arc<SharedState>,
    req: &Req<'_>,
    audit: &mut Audit,
) -> Answer {
    let counters = &shared.state.stores.counters;
    let who = req
        .client_ip
        .map(|i| i.to_string())
        .unwrap_or_else(|| "unknown".into());
    let limit = rt.config.console.sign_in_failures_per_minute.max(1);
    let window = Duration::from_secs(60);
    const SCOPE: &str = "console.sign_in.failures";
    if let Ok(c) = counters.peek(SCOPE, window, &who).await
        && c.count >= limit
    {
        return Answer::html(
            429,
            pages::sign_in(Some(
                "Too many failed sign-ins from this address; wait a minute.",
            )),
        )
        .with("retry-after", c.resets_in.as_secs().max(1).to_string());
    }
    let principal = credential_principal(rt, shared, req).await;
    let Some((p, credential)) = principal else {
        let _ = counters.hit(SCOPE, window, &who, 1).await;
        return Answer::html(
            401,
            pages::sign_in(Some("Those credentials were not accepted.")),
        );
    };
    audit.principal = Some(p.clone());
    let Some((write, process)) = rights(&p) else {
        let _ = counters.hit(SCOPE, window, &who, 1).await;
        return Answer::html(
            403,
            pages::sign_in(Some(
                "This credential has no console role (admin, console:write or console:read).",
            )),
        );
    };
    let s = Session {
        principal: p.id.to_string(),
        roles: p.roles.iter().map(|r| r.to_string()).collect(),
        tenant: p.tenant.to_string(),
        write,
        process,
        csrf: String::new(),
        signed_in: 0,
        credential,
    };
    match session::start(&*shared.state.stores.kv, s, idle(rt)).await {
        Ok((token, _)) => Answer::redirect("/ui/").with(
            "set-cookie",
            cookie(req.tls, &token, Some(absolute(rt).as_secs())),
        ),
        Err(e) => {
            log::error!("console sessions unavailable: {e}");
            pages::message(503, "Unavailable", "Sessions cannot be stored right now.")
        }
    }
}

/// The principal of the credentials of a sign-in form, and how to find them again.
async fn credential_principal(
    rt: &Arc<Runtime>,
    shared: &Arc<SharedState>,
    req: &Req<'_>,
) -> Option<(Arc<Principal>, CredentialRef)> {
    let key = req.form.get("key").map(|k| k.trim()).unwrap_or("");
    if !key.is_empty() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {key}")).ok()?,
        );
        // Only an API key: an issued token or a JWT expires on its own schedule and cannot be
        // re-checked like a key.
        if key.len() != crate::auth::api_keys::KEY_LEN
            || key.starts_with(crate::auth::tokens::TOKEN_PREFIX)
        {
            return None;
        }
        let p = rt.auth.authenticate(&h).await.ok()?;
        return Some((p, CredentialRef::of_key(key)));
    }
    let id = req.form.get("client_id")?.trim().to_string();
    let secret = req.form.get("client_secret")?.to_string();
    let client = rt.auth.client(&id).await.ok()?;
    let matched = shared
        .state
        .auth
        .check_secret(move || match client {
            Some(c) => c.secret_matches(&secret).then_some(c),
            None => {
                crate::auth::tokens::burn_a_verification(&secret);
                None
            }
        })
        .await??;
    matched.enabled.then(|| {
        (
            matched.principal.clone(),
            CredentialRef::of_client(&matched),
        )
    })
}

/// What a principal may do in the console: act (`write`), and administer the whole process
/// rather than its tenant (`process`); `None` without a console role.
fn rights(p: &Principal) -> Option<(bool, bool)> {
    let process = p.has_role(crate::auth::admin_scope::PROCESS_ADMIN_ROLE);
    let write = process || p.has_role(super::ADMIN_ROLE) || p.has_role("console:write");
    (write || p.has_role("console:read")).then_some((write, process))
}

/// A state-changing request of a signed-in operator with the write role.
async fn act(
    shared: &Arc<SharedState>,
    rt: &Arc<Runtime>,
    req: &Req<'_>,
    op: &Operator,
    path: &str,
    audit: &mut Audit,
) -> Answer {
    if path == "/ui/config/reload" {
        audit.action = "admin.reload";
        if !op.session.process {
            return pages::outcome(
                op,
                403,
                "Reload",
                "Reloading is for process administrators.",
                "/ui/config",
                None,
            );
        }
        let s = shared.clone();
        let result = tokio::task::spawn_blocking(move || s.reload()).await;
        let (ok, text) = match result {
            Ok(Ok(v)) => (
                true,
                format!("Reloaded: configuration version {v} is in force."),
            ),
            Ok(Err(errors)) => (
                false,
                format!(
                    "The new configuration is invalid; version {} stays in force: {}",
                    rt.version,
                    errors.join("; ")
                ),
            ),
            Err(_) => (false, "The reload task failed.".into()),
        };
        return pages::outcome(
            op,
            if ok { 200 } else { 422 },
            "Reload",
            &text,
            "/ui/config",
            None,
        );
    }
    // /ui/credentials/{api-keys|clients}[/{id}/{action}]
    let Some(rest) = path.strip_prefix("/ui/credentials") else {
        return pages::message(404, "Not found", "No such console action.");
    };
    let admin_path = format!("/admin{rest}");
    let (method, admin_path) = match admin_path.strip_suffix("/delete") {
        Some(p) => ("DELETE", p.to_string()),
        None => match admin_path.strip_suffix("/policy") {
            Some(p) => ("PATCH", p.to_string()),
            None => ("POST", admin_path),
        },
    };
    let Some(operation) = credentials::Op::parse(method, &admin_path) else {
        return pages::message(404, "Not found", "No such credential action.");
    };
    let (action, resource) = operation.audit();
    audit.action = action;
    audit.resource = resource.map(str::to_string);
    let field = |k: &str| {
        req.form
            .get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let roles: Vec<String> = field("roles")
        .unwrap_or_default()
        .split([',', ' '])
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect();
    let body = match &operation {
        credentials::Op::Create(crate::auth::managed::Kind::ApiKey) => serde_json::json!({
            "name": field("name").unwrap_or_default(), "roles": roles,
            "tenant": field("tenant").unwrap_or_default(), "policy": field("policy")}),
        credentials::Op::Create(crate::auth::managed::Kind::Client) => serde_json::json!({
            "client_id": field("client_id").unwrap_or_default(), "roles": roles,
            "tenant": field("tenant").unwrap_or_default(), "policy": field("policy")}),
        credentials::Op::SetPolicy(..) => serde_json::json!({"policy": field("policy")}),
        _ => serde_json::json!({}),
    };
    let result = credentials::perform(
        rt,
        &shared.state.auth,
        &op.scope(),
        &operation,
        body.to_string().as_bytes(),
    )
    .await;
    match result {
        Ok((status, value)) => {
            if audit.resource.is_none() {
                audit.resource = value["id"].as_str().map(str::to_string);
            }
            let secret = value["key"]
                .as_str()
                .or(value["client_secret"].as_str())
                .map(str::to_string);
            let what = value["name"]
                .as_str()
                .or(value["client_id"].as_str())
                .or(value["id"].as_str())
                .unwrap_or("")
                .to_string();
            pages::outcome(
                op,
                status,
                "Credentials",
                &format!("{action}: {what} done."),
                "/ui/credentials",
                secret.as_deref(),
            )
        }
        Err(e) => pages::outcome(
            op,
            e.status,
            "Credentials",
            &format!("{}: {}", e.title, e.detail),
            "/ui/credentials",
            None,
        ),
    }
}

/// A JSON answer for the live parts (charts).
pub(crate) fn json(value: &serde_json::Value) -> Answer {
    Answer::json(value)
}
