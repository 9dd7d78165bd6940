//! The audit trail: one JSON record per mutating call (POST, PUT, PATCH, DELETE), whatever
//! its outcome, appended to its own size-rotated file by its writer thread
//! ([`super::audit_writer`]) before the caller has the end of the answer. `GET /admin/audit`
//! streams it back, filtered, as JSON lines or CSV, reading the rotated files oldest first one
//! line at a time.

use super::audit_writer::{AuditWriter, Ticket, Written};
use super::{LogPolicy, ObserveError, RequestObs};
use crate::auth::principal::Principal;
use crate::request::RequestView;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read};

/// Whether a call with this method gets an audit record.
pub fn is_audited(method: &http::Method) -> bool {
    !matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE
    )
}

/// Whether this policy writes a record for a call with this method.
pub fn wants_record(policy: &LogPolicy, method: &http::Method) -> bool {
    policy.audit.is_some() && is_audited(method)
}

/// What became of the call, for the `audit.result` field.
pub fn result_of(status: u16, failed: bool) -> &'static str {
    match status {
        0 => "error",
        s if s < 400 && failed => "error",
        s if s < 400 => "success",
        401 | 403 => "denied",
        429 => "rate_limited",
        s if s < 500 => "rejected",
        _ => "error",
    }
}

/// `sha256:<hex>` of the body with its secret fields redacted (so that the digest cannot be
/// used to guess a secret); `None` without a JSON body.
pub fn body_digest(policy: &LogPolicy, body: Option<&Bytes>) -> Option<String> {
    let body = body?;
    let mut v: Value = serde_json::from_slice(body).ok()?;
    policy.redactor.json(&mut v);
    let canonical = serde_json::to_vec(&v).ok()?;
    Some(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(&canonical))
    ))
}

/// One audit record, whatever listener the call came to.
pub struct Entry<'a> {
    pub started_at: std::time::SystemTime,
    pub started: std::time::Instant,
    pub action: &'a str,
    pub request_id: &'a str,
    pub trace_id: Option<&'a str>,
    pub principal: Option<&'a Principal>,
    pub client_ip: Option<std::net::IpAddr>,
    pub method: &'a str,
    pub path: &'a str,
    pub resource: Option<String>,
    pub body_digest: Option<String>,
    pub status: u16,
    pub failed: bool,
    pub error_code: Option<&'a str>,
    /// OrionVM's status, when it answered.
    pub upstream_status: Option<u16>,
    /// The request reached OrionVM (it may have carried it out, answered or not).
    pub request_sent: bool,
    /// How the request's `Idempotency-Key` was handled (a replay is recorded as such).
    pub idempotency: Option<&'a str>,
}

/// The audit result, told by what OrionVM did when it was asked: a call OrionVM answered with
/// success succeeded even if the caller's connection failed afterwards; a call OrionVM received
/// but never answered has an unknown outcome. Otherwise by the caller's status ([`result_of`]).
pub fn true_result(
    status: u16,
    failed: bool,
    upstream_status: Option<u16>,
    request_sent: bool,
) -> &'static str {
    let answer_lost = failed || status == 0 || status >= 500;
    match upstream_status {
        Some(s) if s < 400 && answer_lost => "success",
        None if request_sent && answer_lost => "unknown",
        _ => result_of(status, failed),
    }
}

impl Entry<'_> {
    pub fn to_line(&self) -> Option<Vec<u8>> {
        let result = true_result(
            self.status,
            self.failed,
            self.upstream_status,
            self.request_sent,
        );
        let mut rec = Map::with_capacity(20);
        rec.insert(
            "@timestamp".into(),
            json!(crate::clock::timestamp(self.started_at)),
        );
        rec.insert(
            "message".into(),
            json!(format!(
                "{} {} {} {}",
                self.action,
                self.method,
                self.status,
                self.principal.map(|p| &*p.id).unwrap_or("-")
            )),
        );
        rec.insert("ecs.version".into(), json!(super::access::ECS_VERSION));
        rec.insert("event.dataset".into(), json!("orion_proxy.audit"));
        rec.insert("event.kind".into(), json!("event"));
        rec.insert("event.category".into(), json!(["web", "configuration"]));
        rec.insert(
            "event.type".into(),
            json!(match self.method {
                "POST" => ["creation"],
                "DELETE" => ["deletion"],
                _ => ["change"],
            }),
        );
        rec.insert("event.action".into(), json!(self.action));
        rec.insert(
            "event.outcome".into(),
            json!(match result {
                "success" => "success",
                "unknown" => "unknown",
                _ => "failure",
            }),
        );
        rec.insert("orion.audit.result".into(), json!(result));
        rec.insert("http.request.id".into(), json!(self.request_id));
        if let Some(t) = self.trace_id {
            rec.insert("trace.id".into(), json!(t));
        }
        if let Some(p) = self.principal {
            rec.insert("user.id".into(), json!(&*p.id));
            rec.insert(
                "user.roles".into(),
                json!(p.roles.iter().map(|r| &**r).collect::<Vec<_>>()),
            );
            rec.insert("organization.id".into(), json!(&*p.tenant));
            rec.insert("orion.auth.kind".into(), json!(p.kind.as_str()));
        }
        if let Some(ip) = self.client_ip {
            rec.insert("client.ip".into(), json!(ip.to_string()));
        }
        rec.insert("http.request.method".into(), json!(self.method));
        let path: String = self.path.chars().take(256).collect();
        rec.insert("url.path".into(), json!(path));
        rec.insert("orion.resource.id".into(), json!(self.resource));
        rec.insert(
            "orion.http.request.body.digest".into(),
            json!(self.body_digest),
        );
        rec.insert("http.response.status_code".into(), json!(self.status));
        if let Some(s) = self.upstream_status {
            rec.insert("orion.upstream.status_code".into(), json!(s));
        }
        if self.request_sent {
            rec.insert("orion.upstream.request_sent".into(), json!(true));
        }
        if let Some(code) = self.error_code {
            rec.insert("error.code".into(), json!(code));
        }
        if let Some(how) = self.idempotency {
            rec.insert("orion.idempotency".into(), json!(how));
        }
        rec.insert(
            "event.duration".into(),
            json!(self.started.elapsed().as_nanos() as u64),
        );
        serde_json::to_vec(&Value::Object(rec)).ok()
    }

    /// Hands the record to the trail's writer.
    pub fn submit(&self, writer: &AuditWriter) -> Option<Ticket> {
        Some(writer.submit(self.to_line()?))
    }
}

/// Logs a record that a request waited for and did not get written.
fn report(writer: &AuditWriter, request_id: &str, written: Written) {
    match written {
        Written::Yes => {}
        Written::Failed => log::error!(
            "audit trail {}: the record of request {request_id} was not written",
            writer.path().display()
        ),
        Written::Unknown => {
            if writer.is_healthy() {
                // It did not answer in time: stalled until it completes a batch.
                writer.note_timeout();
            }
            log::error!(
                "audit trail {}: the record of request {request_id} may not be written (the writer is failing or did not answer in time)",
                writer.path().display()
            );
        }
    }
}

/// Hands the audit record of this request to the writer, once, if the call is audited and the
/// trail is on. `failed`: an error ended the request early (from the `logging` phase).
/// Returns the ticket to wait on (`None` when no record was made).
pub fn submit(
    policy: &LogPolicy,
    req: &RequestView<'_>,
    obs: &mut RequestObs,
    failed: bool,
) -> Option<Ticket> {
    if obs.audited || !is_audited(req.method) {
        return None;
    }
    let writer = policy.audit.as_ref()?;
    obs.audited = true;
    let status = obs.status.unwrap_or(0);
    let resource = req
        .param("id")
        .map(str::to_string)
        .or_else(|| created_id(obs, status));
    Entry {
        started_at: obs.started_at,
        started: obs.started,
        action: req.route_name(),
        request_id: req.request_id,
        trace_id: Some(&obs.trace_id),
        principal: req.principal.map(|p| &**p),
        client_ip: req.client_ip,
        method: req.method.as_str(),
        path: req.path,
        resource,
        body_digest: body_digest(policy, obs.request_body.as_ref()),
        status,
        failed,
        error_code: obs.error.as_ref().map(|e| e.code),
        upstream_status: obs.upstream_status,
        request_sent: obs.request_sent,
        idempotency: obs.idempotency,
    }
    .submit(writer)
}

/// Writes the audit record of this request and waits (blocking, without doing I/O itself)
/// until the writer has it in the file: for the proxy's synchronous body filter.
pub fn record(policy: &LogPolicy, req: &RequestView<'_>, obs: &mut RequestObs, failed: bool) {
    if let Some(ticket) = submit(policy, req, obs, failed)
        && let Some(writer) = &policy.audit
    {
        report(writer, req.request_id, ticket.wait());
    }
}

/// [`record`] for async callers: waits without blocking the thread.
pub async fn record_async(
    policy: &LogPolicy,
    req: &RequestView<'_>,
    obs: &mut RequestObs,
    failed: bool,
) {
    if let Some(ticket) = submit(policy, req, obs, failed)
        && let Some(writer) = &policy.audit
    {
        report(writer, req.request_id, ticket.wait_async().await);
    }
}

/// The audit record of a mutating call to the admin listener (`POST /admin/reload`), written
/// before its answer. `req.principal` is whoever the caller authenticated as, when the
/// credential was valid, so that refused calls are recorded with who they claimed to be.
pub async fn record_admin(
    policy: &LogPolicy,
    req: &RequestView<'_>,
    started: (std::time::SystemTime, std::time::Instant),
    status: u16,
    error_code: Option<&str>,
    action: &str,
    resource: Option<&str>,
) {
    if !is_audited(req.method) {
        return;
    }
    let Some(writer) = policy.audit.as_ref() else {
        return;
    };
    let ticket = Entry {
        started_at: started.0,
        started: started.1,
        action,
        request_id: req.request_id,
        trace_id: None,
        principal: req.principal.map(|p| &**p),
        client_ip: req.client_ip,
        method: req.method.as_str(),
        path: req.path,
        resource: resource.map(str::to_string),
        body_digest: None,
        status,
        failed: false,
        error_code,
        upstream_status: None,
        request_sent: false,
        idempotency: None,
    }
    .submit(writer);
    if let Some(ticket) = ticket {
        report(writer, req.request_id, ticket.wait_async().await);
    }
}

/// The id of the resource a successful create answered with.
fn created_id(obs: &RequestObs, status: u16) -> Option<String> {
    if !(200..300).contains(&status) || obs.response_body_overflow {
        return None;
    }
    let body = obs.response_body.as_ref()?;
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("id")?.as_str().map(|s| s.chars().take(128).collect())
}

// ---- export ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
}

/// The filters of `GET /admin/audit`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportQuery {
    pub user: Option<String>,
    pub tenant: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    /// Inclusive, as the records' own timestamp text (UTC, milliseconds).
    pub from: Option<String>,
    /// Exclusive.
    pub to: Option<String>,
    pub limit: usize,
    pub offset: usize,
    pub format: Format,
}

pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 1_000_000;

fn bad_query(field: &str, message: String) -> ObserveError {
    ObserveError::BadQuery {
        field: field.to_string(),
        message,
    }
}

/// `2026-11-23T04:05:06Z`, any RFC 3339 offset, or a date (`2026-11-23`, midnight UTC), as
/// the records' timestamp text.
fn parse_time(field: &str, v: &str) -> Result<String, ObserveError> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(v, &Rfc3339)
        .or_else(|_| {
            time::Date::parse(v, time::macros::format_description!("[year]-[month]-[day]"))
                .map(|d| d.midnight().assume_utc())
        })
        .map_err(|_| {
            bad_query(
                field,
                format!("'{v}' is not an RFC 3339 time or a YYYY-MM-DD date"),
            )
        })?;
    Ok(crate::clock::timestamp(t.into()))
}

pub fn parse_query(query: Option<&str>) -> Result<ExportQuery, ObserveError> {
    let mut q = ExportQuery {
        user: None,
        tenant: None,
        action: None,
        resource: None,
        from: None,
        to: None,
        limit: DEFAULT_LIMIT,
        offset: 0,
        format: Format::Jsonl,
    };
    let number = |k: &str, v: &str, max: usize| -> Result<usize, ObserveError> {
        v.parse::<usize>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| bad_query(k, format!("'{v}' is not a number from 0 to {max}")))
    };
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let v = v.into_owned();
        match &*k {
            "user" => q.user = Some(v),
            "tenant" => q.tenant = Some(v),
            "action" => q.action = Some(v),
            "resource" => q.resource = Some(v),
            "from" => q.from = Some(parse_time("from", &v)?),
            "to" => q.to = Some(parse_time("to", &v)?),
            "limit" => q.limit = number("limit", &v, MAX_LIMIT)?,
            "offset" => q.offset = number("offset", &v, usize::MAX)?,
            "format" => {
                q.format = match v.as_str() {
                    "jsonl" | "ndjson" | "json" => Format::Jsonl,
                    "csv" => Format::Csv,
                    _ => {
                        return Err(bad_query(
                            "format",
                            format!("'{v}' is not one of jsonl, csv"),
                        ));
                    }
                }
            }
            other => {
                return Err(bad_query(
                    other,
                    "unknown parameter (user, tenant, action, resource, from, to, limit, offset, format)"
                        .into(),
                ));
            }
        }
    }
    Ok(q)
}

/// The fields of a record that filters and CSV use.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Row {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    #[serde(rename = "http.request.id")]
    pub request_id: String,
    #[serde(rename = "user.id")]
    pub user: Option<String>,
    #[serde(rename = "organization.id")]
    pub tenant: Option<String>,
    #[serde(rename = "user.roles")]
    pub roles: Vec<String>,
    #[serde(rename = "event.action")]
    pub action: String,
    #[serde(rename = "http.request.method")]
    pub method: String,
    #[serde(rename = "url.path")]
    pub path: String,
    #[serde(rename = "orion.resource.id", alias = "resource.id")]
    pub resource: Option<String>,
    #[serde(rename = "orion.audit.result", alias = "audit.result")]
    pub result: String,
    #[serde(rename = "http.response.status_code")]
    pub status: u16,
    #[serde(
        rename = "orion.http.request.body.digest",
        alias = "http.request.body.digest"
    )]
    pub body_digest: Option<String>,
    #[serde(rename = "error.code")]
    pub error_code: Option<String>,
    #[serde(rename = "client.ip")]
    pub client_ip: Option<String>,
}

impl ExportQuery {
    pub fn matches(&self, r: &Row) -> bool {
        let user_ok = self.user.as_deref().is_none_or(|want| {
            r.user.as_deref().is_some_and(|u| {
                u == want || u.split_once(':').is_some_and(|(_, name)| name == want)
            })
        });
        user_ok
            && self
                .tenant
                .as_deref()
                .is_none_or(|t| r.tenant.as_deref() == Some(t))
            && self.action.as_deref().is_none_or(|a| r.action == a)
            && self
                .resource
                .as_deref()
                .is_none_or(|x| r.resource.as_deref() == Some(x))
            && self
                .from
                .as_deref()
                .is_none_or(|f| r.timestamp.as_str() >= f)
            && self.to.as_deref().is_none_or(|t| r.timestamp.as_str() < t)
    }
}

pub const CSV_HEADER: &str = "timestamp,request_id,user,tenant,roles,action,method,path,resource,result,status,body_digest,error_code,client_ip\r\n";

/// One CSV cell (RFC 4180), with a leading `'` before text a spreadsheet would run as a formula.
fn csv_cell(out: &mut String, v: &str) {
    let guarded = matches!(
        v.as_bytes().first(),
        Some(b'=' | b'+' | b'-' | b'@' | b'\t')
    );
    if guarded || v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        if guarded {
            out.push('\'');
        }
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

pub fn csv_row(out: &mut String, r: &Row) {
    let status = r.status.to_string();
    let roles = r.roles.join(";");
    let cells: [&str; 14] = [
        &r.timestamp,
        &r.request_id,
        r.user.as_deref().unwrap_or(""),
        r.tenant.as_deref().unwrap_or(""),
        &roles,
        &r.action,
        &r.method,
        &r.path,
        r.resource.as_deref().unwrap_or(""),
        &r.result,
        &status,
        r.body_digest.as_deref().unwrap_or(""),
        r.error_code.as_deref().unwrap_or(""),
        r.client_ip.as_deref().unwrap_or(""),
    ];
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_cell(out, c);
    }
    out.push_str("\r\n");
}

/// Longest record line read; longer lines (not written by the proxy) are skipped.
const MAX_LINE: u64 = 1024 * 1024;
/// Bytes gathered before a chunk is handed to the connection.
const CHUNK: usize = 32 * 1024;

/// Reads the trail's files in order and sends the matching records, `CHUNK` bytes at a time,
/// until `limit` records went out or the receiver is gone. Holds one line and one chunk.
pub fn stream_records(
    files: Vec<impl Read>,
    q: &ExportQuery,
    mut send: impl FnMut(Bytes) -> bool,
) -> std::io::Result<usize> {
    let mut out = String::with_capacity(CHUNK + 4096);
    if q.format == Format::Csv {
        out.push_str(CSV_HEADER);
    }
    let mut skipped = 0usize;
    let mut sent = 0usize;
    let mut line = Vec::with_capacity(4096);
    'files: for f in files {
        let mut reader = BufReader::with_capacity(64 * 1024, f);
        loop {
            if sent >= q.limit {
                break 'files;
            }
            line.clear();
            let n = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            if !line.ends_with(b"\n") && n as u64 == MAX_LINE {
                // Skip the rest of an overlong line.
                loop {
                    line.clear();
                    let m = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)?;
                    if m == 0 || line.ends_with(b"\n") {
                        break;
                    }
                }
                continue;
            }
            let Ok(row) = serde_json::from_slice::<Row>(&line) else {
                continue;
            };
            if !q.matches(&row) {
                continue;
            }
            if skipped < q.offset {
                skipped += 1;
                continue;
            }
            match q.format {
                Format::Jsonl => {
                    out.push_str(String::from_utf8_lossy(&line).trim_end());
                    out.push('\n');
                }
                Format::Csv => csv_row(&mut out, &row),
            }
            sent += 1;
            if out.len() >= CHUNK && !send(Bytes::from(std::mem::take(&mut out))) {
                return Ok(sent);
            }
        }
    }
    if !out.is_empty() {
        send(Bytes::from(out));
    }
    Ok(sent)
}

/// A streamed export: its content type and its chunks, produced by a blocking task. A chunk
/// that is an `Err` ends the export early.
pub struct Export {
    pub content_type: &'static str,
    pub chunks: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
}

/// `GET /admin/audit`: checks the query, then streams the trail from a blocking task.
pub fn export(policy: &LogPolicy, query: Option<&str>) -> Result<Export, ObserveError> {
    let q = parse_query(query)?;
    let Some(writer) = policy.audit.clone() else {
        return Err(ObserveError::AuditOff);
    };
    let files = writer.open_all().map_err(|e| {
        log::error!("audit trail {}: {e}", writer.path().display());
        ObserveError::AuditUnreadable
    })?;
    let content_type = match q.format {
        Format::Jsonl => "application/x-ndjson",
        Format::Csv => "text/csv; charset=utf-8",
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(4);
    tokio::task::spawn_blocking(move || {
        let result = stream_records(files, &q, |chunk| tx.blocking_send(Ok(chunk)).is_ok());
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(format!(
                "reading the audit trail {}: {e}",
                writer.path().display()
            )));
        }
    });
    Ok(Export {
        content_type,
        chunks: rx,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize, user: &str, tenant: &str, action: &str) -> String {
        json!({
            "@timestamp": format!("2026-11-23T04:{:02}:{:02}.000Z", i / 60 % 60, i % 60),
            "http.request.id": format!("r{i}"),
            "user.id": format!("key:{user}"),
            "organization.id": tenant,
            "user.roles": ["admin", "ops"],
            "event.action": action,
            "http.request.method": "POST",
            "url.path": "/api/v1/x",
            "orion.resource.id": format!("id-{}", i % 3),
            "orion.audit.result": "success",
            "http.response.status_code": 200,
        })
        .to_string()
    }

    fn run(files: Vec<String>, query: &str) -> String {
        let q = parse_query(Some(query)).unwrap();
        let mut out = Vec::new();
        stream_records(
            files.into_iter().map(std::io::Cursor::new).collect(),
            &q,
            |b| {
                out.extend_from_slice(&b);
                true
            },
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn filters_paginate_across_files() {
        let a: String = (0..10)
            .map(|i| {
                rec(
                    i,
                    if i % 2 == 0 { "alice" } else { "bob" },
                    "acme",
                    "instances.start",
                ) + "\n"
            })
            .collect();
        let b: String = (10..20)
            .map(|i| rec(i, "alice", "globex", "instances.stop") + "\n")
            .collect();
        let files = vec![a, "not json\n".into(), b];
        let ids = |text: &str| -> Vec<String> {
            text.lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["http.request.id"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect()
        };
        assert_eq!(
            ids(&run(files.clone(), "user=alice&limit=3&offset=4")),
            ["r8", "r10", "r11"]
        );
        assert_eq!(
            ids(&run(files.clone(), "user=key:bob&tenant=acme")),
            ["r1", "r3", "r5", "r7", "r9"]
        );
        assert_eq!(
            ids(&run(files.clone(), "action=instances.stop&resource=id-0")),
            ["r12", "r15", "r18"]
        );
        assert_eq!(
            ids(&run(
                files.clone(),
                "from=2026-11-23T04:00:05Z&to=2026-11-23T05:00:07%2B01:00"
            )),
            ["r5", "r6"]
        );
        let csv = run(files, "format=csv&tenant=globex&limit=2");
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines[0], CSV_HEADER.trim_end());
        assert_eq!(
            lines[1],
            "2026-11-23T04:00:10.000Z,r10,key:alice,globex,admin;ops,instances.stop,POST,/api/v1/x,id-1,success,200,,,"
        );
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn bad_queries_are_refused() {
        for q in [
            "limit=x",
            "limit=2000000",
            "format=xml",
            "from=yesterday",
            "bogus=1",
        ] {
            let e = parse_query(Some(q)).unwrap_err();
            assert!(matches!(e, ObserveError::BadQuery { .. }), "{q}");
        }
    }

    #[test]
    fn csv_cells_are_quoted_and_guarded() {
        let mut s = String::new();
        csv_cell(&mut s, "a,\"b\"");
        s.push('|');
        csv_cell(&mut s, "=HYPERLINK()");
        assert_eq!(s, "\"a,\"\"b\"\"\"|\"'=HYPERLINK()\"");
    }

    #[test]
    fn results() {
        assert_eq!(result_of(200, false), "success");
        assert_eq!(result_of(200, true), "error");
        assert_eq!(result_of(403, false), "denied");
        assert_eq!(result_of(429, false), "rate_limited");
        assert_eq!(result_of(422, false), "rejected");
        assert_eq!(result_of(0, true), "error");
        assert_eq!(result_of(502, false), "error");
    }
}

#[cfg(test)]
mod true_result_tests {
    use super::true_result;

    #[test]
    fn the_result_follows_what_orionvm_did() {
        // OrionVM carried it out (200) though the caller's answer failed: success.
        assert_eq!(true_result(502, false, Some(200), true), "success");
        assert_eq!(true_result(200, true, Some(200), true), "success");
        // OrionVM received it and never answered: unknown, not rejected.
        assert_eq!(true_result(502, false, None, true), "unknown");
        assert_eq!(true_result(0, true, None, true), "unknown");
        // Never sent, or answered and delivered: by the caller's status.
        assert_eq!(true_result(502, false, None, false), "error");
        assert_eq!(true_result(400, false, None, false), "rejected");
        assert_eq!(true_result(404, false, Some(404), true), "rejected");
        assert_eq!(true_result(200, false, Some(200), true), "success");
    }
}
