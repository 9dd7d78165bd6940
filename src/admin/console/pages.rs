//! The console's pages, rendered on the server (maud escapes every value). Tables are complete
//! without JavaScript; the parts marked `data-live` are refreshed by `console.js`.

use super::{Answer, Operator, Req};
use crate::auth::managed::Kind;
use crate::runtime::{Runtime, SharedState};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

const NAV: [(&str, &str); 7] = [
    ("/ui", "Overview"),
    ("/ui/endpoints", "Endpoints"),
    ("/ui/clients", "Clients and usage"),
    ("/ui/audit", "Audit"),
    ("/ui/tasks", "Tasks"),
    ("/ui/config", "Configuration"),
    ("/ui/credentials", "Credentials"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · orion-proxy console" }
            link rel="stylesheet" href="/ui/assets/uPlot.min.css";
            link rel="stylesheet" href="/ui/assets/console.css";
            script src="/ui/assets/uPlot.iife.min.js" defer {}
            script src="/ui/assets/console.js" defer {}
        }
    }
}

fn layout(op: &Operator, current: &str, title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "orion-proxy" }
                    nav aria-label="Console" {
                        ul {
                            @for (href, name) in NAV {
                                li {
                                    @if href == current {
                                        a href=(href) aria-current="page" { (name) }
                                    } @else {
                                        a href=(href) { (name) }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        span { "Signed in as " strong #who { (op.session.principal) } }
                        span.badge #role { @if op.session.write { "console:write" } @else { "console:read" } }
                        form.inline method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(op.session.csrf);
                            button type="submit" #sign-out { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
    .into_string()
}

/// A page of its own (errors, refusals) without the navigation.
pub fn message(status: u16, title: &str, text: &str) -> Answer {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                main #main .signin {
                    h1 { (title) }
                    p.alert role="alert" #message { (text) }
                    p { a href="/ui/" { "Back to the console" } }
                }
            }
        }
    };
    Answer::html(status, page.into_string())
}

pub fn sign_in(error: Option<&str>) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body {
                main #main .signin {
                    h1 { "Sign in to the orion-proxy console" }
                    @if let Some(e) = error { p.alert role="alert" #message { (e) } }
                    form method="post" action="/ui/login" {
                        fieldset {
                            legend { "With an API key" }
                            label for="key" { "API key" }
                            input #key name="key" type="password" autocomplete="off";
                        }
                        fieldset {
                            legend { "Or with a client's credentials" }
                            label for="client_id" { "Client id" }
                            input #client_id name="client_id" type="text" autocomplete="username";
                            label for="client_secret" { "Client secret" }
                            input #client_secret name="client_secret" type="password" autocomplete="current-password";
                        }
                        button.primary type="submit" #sign-in { "Sign in" }
                    }
                    p.muted { "Needs the admin, console:write or console:read role." }
                }
            }
        }
    }
    .into_string()
}

/// The answer to a console action: its outcome, and a new secret shown this once.
pub fn outcome(
    op: &Operator,
    status: u16,
    title: &str,
    text: &str,
    back: &str,
    secret: Option<&str>,
) -> Answer {
    let body = html! {
        @if status < 400 {
            p.notice role="status" #outcome { (text) }
        } @else {
            p.alert role="alert" #outcome { (text) }
        }
        @if let Some(s) = secret {
            p { "The new secret, shown only now; copy it before leaving this page:" }
            p { code.secret #secret { (s) } }
        }
        p { a href=(back) #back { "Back" } }
    };
    Answer::html(status, layout(op, back, title, body))
}

fn num(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "–".into())
}

/// A GET page, by path.
pub async fn page(
    shared: &Arc<SharedState>,
    rt: &Arc<Runtime>,
    req: &Req<'_>,
    op: &Operator,
    path: &str,
) -> Answer {
    let process_only = matches!(
        path,
        "" | "/ui" | "/ui/endpoints" | "/ui/data/series" | "/ui/data/endpoint"
    );
    if process_only && !op.session.process {
        let title = if path == "/ui/endpoints" {
            "Endpoints"
        } else {
            "Overview"
        };
        let body = html! {
            p.notice role="status" #scope-note {
                "This page shows what every tenant shares (traffic totals, OrionVM endpoints): it is for process administrators. "
                "Your tenant (" (op.session.tenant) ") is under " a href="/ui/clients" { "Clients and usage" } ", "
                a href="/ui/audit" { "Audit" } " and " a href="/ui/tasks" { "Tasks" } "."
            }
        };
        let current = if path == "/ui/endpoints" {
            "/ui/endpoints"
        } else {
            "/ui"
        };
        return Answer::html(200, layout(op, current, title, body));
    }
    let html = match path {
        "" | "/ui" => overview(shared, rt, op).await,
        "/ui/endpoints" => endpoints(rt, op),
        "/ui/clients" => clients(shared, req, op).await,
        "/ui/audit" => return audit(rt, req, op).await,
        "/ui/audit/export" => return export(rt, req, op).await,
        "/ui/tasks" => tasks(shared, rt, req, op).await,
        "/ui/config" => config(shared, rt, op),
        "/ui/credentials" => credentials(rt, shared, op).await,
        "/ui/data/series" => {
            let points = shared
                .state
                .observe
                .series
                .points(Duration::from_secs(3600));
            return super::json(&serde_json::json!({ "points": points }));
        }
        "/ui/data/endpoint" => {
            let account = req.query.get("account").map(String::as_str).unwrap_or("");
            let index: usize = req
                .query
                .get("index")
                .and_then(|i| i.parse().ok())
                .unwrap_or(usize::MAX);
            let points = rt
                .upstreams
                .accounts
                .get(account)
                .and_then(|a| a.endpoints.get(index))
                .map(|e| e.stats.hour(Duration::from_secs(3600)))
                .unwrap_or_default();
            return super::json(&serde_json::json!({ "points": points }));
        }
        "/ui/data/client" => {
            let scope = op.scope();
            let principal = req.query.get("principal").map(String::as_str).unwrap_or("");
            let points = shared
                .state
                .observe
                .series
                .client_points(principal, Duration::from_secs(3600))
                .filter(|(tenant, _)| scope.sees(tenant))
                .map(|(_, points)| points)
                .unwrap_or_default();
            return super::json(&serde_json::json!({ "principal": principal, "points": points }));
        }
        _ => return message(404, "Not found", "No such console page."),
    };
    Answer::html(200, html)
}

async fn overview(shared: &Arc<SharedState>, rt: &Arc<Runtime>, op: &Operator) -> String {
    let series = &shared.state.observe.series;
    let hour = series.totals(Duration::from_secs(3600));
    let minute = series.totals(Duration::from_secs(60));
    let recent = series.points(Duration::from_secs(120));
    let stats = crate::upstream::stats::report(&rt.upstreams, &rt.routes, &rt.version);
    let body = html! {
        p.muted { "Figures the proxy keeps itself (ten-second slots over the last hour); refreshed every 5 seconds, last at " span #refreshed { "page load" } "." }
        section aria-labelledby="h-hour" {
            h2 #h-hour { "Last hour" }
            dl.cards #overview-hour data-live {
                div { dt { "Requests" } dd #requests-hour { (hour.requests) } }
                div { dt { "Requests/s (last minute)" } dd #rps-minute { (format!("{:.2}", minute.requests as f64 / 60.0)) } }
                div { dt { "4xx" } dd #errors-4xx { (hour.errors_4xx) } }
                div { dt { "5xx" } dd #errors-5xx { (hour.errors_5xx) } }
                div { dt { "429 (rate limited)" } dd #limited-429 { (hour.limited_429) } }
                div { dt { "p50 latency (ms)" } dd #p50 { (opt(hour.p50_ms)) } }
                div { dt { "p95 latency (ms)" } dd #p95 { (opt(hour.p95_ms)) } }
                div { dt { "p99 latency (ms)" } dd #p99 { (opt(hour.p99_ms)) } }
                div { dt { "OrionVM errors" } dd #upstream-errors { (hour.upstream_errors) } }
            }
        }
        section aria-labelledby="h-charts" {
            h2 #h-charts { "Charts" }
            div.charts {
                @for (k, t) in [("rps", "Requests per second"), ("errors", "Errors and 429s per 10 s"), ("latency", "Latency percentiles (ms)"), ("upstream", "OrionVM latency (ms) and errors")] {
                    figure.chart data-chart=(k) { figcaption { h3 { (t) } } div.plot {} }
                }
            }
        }
        section aria-labelledby="h-up" {
            h2 #h-up { "OrionVM endpoints" }
            table #overview-endpoints data-live {
                caption { "Health and breaker of each endpoint now" }
                thead { tr { th scope="col" { "Account" } th scope="col" { "Endpoint" } th scope="col" { "Health" } th scope="col" { "Breaker" } th.num scope="col" { "p50 ms" } th.num scope="col" { "p99 ms" } } }
                tbody {
                    @for e in stats["endpoints"].as_array().into_iter().flatten() {
                        tr {
                            td { (num(&e["account"])) } td { (num(&e["name"])) }
                            td class=(if e["health"] == "down" { "bad" } else { "ok" }) { (num(&e["health"])) }
                            td { (num(&e["breaker"])) }
                            td.num { (num(&e["counters"]["latency_ms"]["p50"])) }
                            td.num { (num(&e["counters"]["latency_ms"]["p99"])) }
                        }
                    }
                }
            }
        }
        section aria-labelledby="h-recent" {
            h2 #h-recent { "Last two minutes" }
            table #overview-recent data-live {
                caption { "Per ten seconds, newest last" }
                thead { tr { th scope="col" { "From" } th.num scope="col" { "Requests" } th.num scope="col" { "4xx" } th.num scope="col" { "5xx" } th.num scope="col" { "429" } th.num scope="col" { "p50" } th.num scope="col" { "p95" } th.num scope="col" { "p99" } th.num scope="col" { "OrionVM p50" } } }
                tbody {
                    @for p in &recent {
                        tr {
                            td { (crate::clock::timestamp(std::time::UNIX_EPOCH + Duration::from_secs(p.t))) }
                            td.num { (p.requests) } td.num { (p.errors_4xx) } td.num { (p.errors_5xx) } td.num { (p.limited_429) }
                            td.num { (opt(p.p50_ms)) } td.num { (opt(p.p95_ms)) } td.num { (opt(p.p99_ms)) } td.num { (opt(p.upstream_p50_ms)) }
                        }
                    }
                }
            }
        }
    };
    layout(op, "/ui", "Overview", body)
}

fn endpoints(rt: &Arc<Runtime>, op: &Operator) -> String {
    let stats = crate::upstream::stats::report(&rt.upstreams, &rt.routes, &rt.version);
    let body = html! {
        p.muted { "What " code { "GET /admin/endpoints/stats" } " reports, refreshed every 5 seconds." }
        div.charts { figure.chart data-chart="upstream" { figcaption { h3 { "OrionVM latency (ms) and errors, all endpoints" } } div.plot {} } }
        h2 { "Each endpoint, last hour" }
        div.charts #endpoint-charts {
            @for e in stats["endpoints"].as_array().into_iter().flatten() {
                @let source = format!(
                    "/ui/data/endpoint?{}",
                    serde_urlencoded::to_string([("account", num(&e["account"])), ("index", num(&e["index"]))]).unwrap_or_default()
                );
                figure.chart data-chart="endpoint" data-source=(source) data-endpoint=(format!("{}/{}", num(&e["account"]), num(&e["name"]))) {
                    figcaption { h3 { (num(&e["account"])) " / " (num(&e["name"])) ": calls, failures (5xx or no answer) per 10 s, mean latency (ms)" } }
                    div.plot {}
                }
            }
        }
        table #endpoints data-live {
            caption { "Each OrionVM endpoint per account" }
            thead { tr {
                th scope="col" { "Account" } th scope="col" { "Endpoint" } th scope="col" { "URL" } th scope="col" { "Health" } th scope="col" { "Health since" }
                th scope="col" { "Breaker" } th scope="col" { "Breaker since" } th.num scope="col" { "Opened" } th.num scope="col" { "In flight" }
                th.num scope="col" { "Requests" } th.num scope="col" { "Errors" } th.num scope="col" { "5xx" } th.num scope="col" { "Timeouts" }
                th.num scope="col" { "p50 ms" } th.num scope="col" { "p90 ms" } th.num scope="col" { "p99 ms" }
            } }
            tbody {
                @for e in stats["endpoints"].as_array().into_iter().flatten() {
                    @let c = &e["counters"];
                    tr {
                        td { (num(&e["account"])) } td { (num(&e["name"])) } td { code { (num(&e["url"])) } }
                        td class=(if e["health"] == "down" { "bad" } else { "ok" }) { (num(&e["health"])) }
                        td { (num(&e["health_changed_at"])) }
                        td class=(if e["breaker"] == "open" { "bad" } else { "" }) { (num(&e["breaker"])) }
                        td { (num(&e["breaker_changed_at"])) } td.num { (num(&e["breaker_opened_total"])) } td.num { (num(&e["in_flight"])) }
                        td.num { (num(&c["requests"])) } td.num { (num(&c["errors"])) } td.num { (num(&c["server_errors"])) } td.num { (num(&c["timeouts"])) }
                        td.num { (num(&c["latency_ms"]["p50"])) } td.num { (num(&c["latency_ms"]["p90"])) } td.num { (num(&c["latency_ms"]["p99"])) }
                    }
                }
            }
        }
    };
    layout(op, "/ui/endpoints", "Endpoints", body)
}

async fn clients(shared: &Arc<SharedState>, req: &Req<'_>, op: &Operator) -> String {
    let usage = shared.state.observe.usage();
    let report = crate::observe::usage::report(&**usage, None).await;
    let focus = req
        .query
        .get("principal")
        .cloned()
        .filter(|p| !p.is_empty());
    let body = match report {
        Err(_) => html! { p.alert role="alert" { "Usage cannot be read right now." } },
        Ok(r) => {
            let scope = op.scope();
            let mut rows: Vec<&Value> = r["clients"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["tenant"].as_str().is_some_and(|t| scope.sees(t)))
                .collect();
            rows.sort_by_key(|c| {
                std::cmp::Reverse(c["last_hour"]["requests"].as_u64().unwrap_or(0))
            });
            let shown: Vec<&Value> = rows
                .iter()
                .copied()
                .filter(|c| focus.as_deref().is_none_or(|f| c["principal"] == f))
                .collect();
            html! {
                p.muted { "Requests, errors and 429s per principal over the last minute, hour and day; refreshed every 5 seconds." }
                @if let Some(f) = &focus {
                    p { "Showing " strong { (f) } " only. " a href="/ui/clients" { "All clients" } }
                    (client_chart(shared, &scope, f))
                }
                table #clients data-live {
                    caption { "Clients, busiest in the last hour first" }
                    thead {
                        tr { th scope="col" rowspan="2" { "Principal" } th scope="col" rowspan="2" { "Tenant" } th scope="colgroup" colspan="3" { "Last minute" } th scope="colgroup" colspan="3" { "Last hour" } th scope="colgroup" colspan="3" { "Last day" } th scope="col" rowspan="2" { "Share of the hour" } }
                        tr { @for _ in 0..3 { th.num scope="col" { "requests" } th.num scope="col" { "errors" } th.num scope="col" { "429" } } }
                    }
                    tbody {
                        @let top = rows.first().and_then(|c| c["last_hour"]["requests"].as_u64()).unwrap_or(0).max(1);
                        @for c in &shown {
                            tr data-principal=(num(&c["principal"])) {
                                th scope="row" { a href=(format!("/ui/clients?principal={}", percent_encoding::utf8_percent_encode(&num(&c["principal"]), percent_encoding::NON_ALPHANUMERIC))) { (num(&c["principal"])) } }
                                td { (num(&c["tenant"])) }
                                @for w in ["last_minute", "last_hour", "last_day"] {
                                    td.num { (num(&c[w]["requests"])) } td.num { (num(&c[w]["errors"])) } td.num { (num(&c[w]["rate_limited"])) }
                                }
                                td { meter min="0" max=(top) value=(c["last_hour"]["requests"].as_u64().unwrap_or(0)) { (num(&c["last_hour"]["requests"])) } }
                            }
                        }
                    }
                }
                h2 { "Tenants" }
                table #tenants data-live {
                    caption { "Sums per tenant" }
                    thead { tr { th scope="col" { "Tenant" } th.num scope="col" { "Requests (hour)" } th.num scope="col" { "Errors (hour)" } th.num scope="col" { "429 (hour)" } th.num scope="col" { "Requests (day)" } } }
                    tbody {
                        @for t in r["tenants"].as_array().into_iter().flatten().filter(|t| t["tenant"].as_str().is_some_and(|t| scope.sees(t))) {
                            tr { th scope="row" { (num(&t["tenant"])) } td.num { (num(&t["last_hour"]["requests"])) } td.num { (num(&t["last_hour"]["errors"])) } td.num { (num(&t["last_hour"]["rate_limited"])) } td.num { (num(&t["last_day"]["requests"])) } }
                        }
                    }
                }
            }
        }
    };
    layout(op, "/ui/clients", "Clients and usage", body)
}

/// One principal's last hour on this node (`observe::series`), when the operator may see its
/// tenant: totals (refreshed with the page) and a chart of requests, errors and 429s per ten
/// seconds, drawn from `/ui/data/client`.
fn client_chart(
    shared: &Arc<SharedState>,
    scope: &crate::auth::admin_scope::AdminScope,
    principal: &str,
) -> maud::Markup {
    let hour = shared
        .state
        .observe
        .series
        .client_points(principal, Duration::from_secs(3600))
        .filter(|(tenant, _)| scope.sees(tenant));
    let Some((_, points)) = hour else {
        return html! { p.muted #client-none { "No request from " (principal) " reached this node in the last hour." } };
    };
    let sum =
        |f: fn(&crate::observe::series::ClientPoint) -> u64| points.iter().map(f).sum::<u64>();
    let source = format!(
        "/ui/data/client?principal={}",
        percent_encoding::utf8_percent_encode(principal, percent_encoding::NON_ALPHANUMERIC)
    );
    html! {
        section aria-labelledby="h-client-hour" {
            h2 #h-client-hour { "Last hour on this node" }
            dl.cards #client-hour data-live {
                div { dt { "Requests" } dd #client-requests { (sum(|p| p.requests)) } }
                div { dt { "Errors" } dd #client-errors { (sum(|p| p.errors)) } }
                div { dt { "429 (rate limited)" } dd #client-limited { (sum(|p| p.limited_429)) } }
            }
            div.charts.wide {
                figure.chart data-chart="client" data-source=(source) {
                    figcaption { h3 { "Requests, errors and 429s of " (principal) " per 10 s" } }
                    div.plot {}
                }
            }
        }
    }
}

const AUDIT_PAGE: usize = 50;
const AUDIT_FILTERS: [(&str, &str); 6] = [
    ("user", "User"),
    ("tenant", "Tenant"),
    ("action", "Action"),
    ("resource", "Resource"),
    ("from", "From (RFC 3339 or date)"),
    ("to", "To"),
];

fn audit_query(req: &Req<'_>, extra: &[(&str, String)]) -> String {
    let mut pairs: Vec<(String, String)> = AUDIT_FILTERS
        .iter()
        .filter_map(|(k, _)| {
            req.query
                .get(*k)
                .filter(|v| !v.is_empty())
                .map(|v| (k.to_string(), v.clone()))
        })
        .collect();
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// The export's bytes for a query, collected (bounded by the export's own limit).
async fn collect(rt: &Runtime, query: &str) -> Result<(&'static str, Vec<u8>), String> {
    let mut e =
        crate::observe::audit::export(&rt.log, Some(query)).map_err(|e| format!("{e:?}"))?;
    let mut out = Vec::new();
    while let Some(chunk) = e.chunks.recv().await {
        out.extend_from_slice(&chunk?);
        if out.len() > 64 * 1024 * 1024 {
            return Err("the export is larger than the console shows; narrow the filters".into());
        }
    }
    Ok((e.content_type, out))
}

async fn audit(rt: &Arc<Runtime>, req: &Req<'_>, op: &Operator) -> Answer {
    let page: usize = req
        .query
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let q = audit_query(
        req,
        &[
            ("limit", (AUDIT_PAGE + 1).to_string()),
            ("offset", (page * AUDIT_PAGE).to_string()),
        ],
    );
    let result = collect(rt, &q).await;
    let records: Vec<Value> = match &result {
        Ok((_, bytes)) => String::from_utf8_lossy(bytes)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    let more = records.len() > AUDIT_PAGE;
    let body = html! {
        form.filters method="get" action="/ui/audit" role="search" {
            @for (k, label) in AUDIT_FILTERS {
                label { (label) input name=(k) id=(format!("f-{k}")) value=(req.query.get(k).cloned().unwrap_or_default()); }
            }
            button.primary type="submit" #search { "Search" }
        }
        p {
            "Download these results: "
            a #export-jsonl href=(format!("/ui/audit/export?{}", audit_query(req, &[("format", "jsonl".into()), ("limit", "1000000".into())]))) download="audit.jsonl" { "JSONL" }
            " · "
            a #export-csv href=(format!("/ui/audit/export?{}", audit_query(req, &[("format", "csv".into()), ("limit", "1000000".into())]))) download="audit.csv" { "CSV" }
        }
        @if let Err(e) = &result { p.alert role="alert" { "The audit trail cannot be searched: " (e) } }
        table #audit {
            caption { "Audit records, oldest first, page " (page + 1) }
            thead { tr { th scope="col" { "Time" } th scope="col" { "User" } th scope="col" { "Tenant" } th scope="col" { "Action" } th scope="col" { "Method" } th scope="col" { "Path" } th scope="col" { "Resource" } th scope="col" { "Result" } th.num scope="col" { "Status" } th scope="col" { "Request id" } } }
            tbody {
                @for r in records.iter().take(AUDIT_PAGE) {
                    tr {
                        td { (num(&r["@timestamp"])) } td { (num(&r["user.id"])) } td { (num(&r["organization.id"])) }
                        td { (num(&r["event.action"])) } td { (num(&r["http.request.method"])) } td { code { (num(&r["url.path"])) } }
                        td { (num(&r["orion.resource.id"])) } td { (num(&r["orion.audit.result"])) } td.num { (num(&r["http.response.status_code"])) } td { code { (num(&r["http.request.id"])) } }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if page > 0 { a rel="prev" href=(format!("/ui/audit?{}", audit_query(req, &[("page", (page - 1).to_string())]))) { "Previous page" } }
            @if more { a rel="next" #next-page href=(format!("/ui/audit?{}", audit_query(req, &[("page", (page + 1).to_string())]))) { "Next page" } }
        }
    };
    Answer::html(200, layout(op, "/ui/audit", "Audit", body))
}

async fn export(rt: &Arc<Runtime>, req: &Req<'_>, op: &Operator) -> Answer {
    let Ok(q) = op.scope().confine_query(req.raw_query) else {
        return message(
            403,
            "Refused",
            "Your tenant's records only: the tenant filter must be your own.",
        );
    };
    match collect(rt, q.as_deref().unwrap_or("")).await {
        Ok((ct, bytes)) => {
            let name = if ct.starts_with("text/csv") {
                "audit.csv"
            } else {
                "audit.jsonl"
            };
            Answer {
                status: 200,
                content_type: ct,
                body: bytes.into(),
                headers: vec![(
                    "content-disposition",
                    format!("attachment; filename=\"{name}\""),
                )],
            }
        }
        Err(e) => message(400, "Export failed", &e),
    }
}

async fn tasks(
    shared: &Arc<SharedState>,
    rt: &Arc<Runtime>,
    req: &Req<'_>,
    op: &Operator,
) -> String {
    let tenant = req.query.get("tenant").cloned().filter(|t| !t.is_empty());
    let state = req.query.get("state").cloned().filter(|t| !t.is_empty());
    let store = &shared.state.stores.tasks;
    let mut all = Vec::new();
    let mut failed = false;
    for t in rt
        .config
        .tenants
        .keys()
        .filter(|t| tenant.as_deref().is_none_or(|f| f == t.as_str()))
    {
        match store.list(t).await {
            Ok(list) => all.extend(list.into_iter().filter_map(|r| {
                serde_json::from_slice::<Value>(&r.data)
                    .ok()
                    .map(|v| (r.tenant, v))
            })),
            Err(_) => failed = true,
        }
    }
    all.retain(|(_, v)| state.as_deref().is_none_or(|s| v["status"] == s));
    all.sort_by(|a, b| b.1["created_at"].as_str().cmp(&a.1["created_at"].as_str()));
    let body = html! {
        form.filters method="get" action="/ui/tasks" role="search" {
            label { "Tenant" select name="tenant" #f-tenant {
                option value="" { "all" }
                @for t in rt.config.tenants.keys().filter(|t| op.scope().sees(t)) { option value=(t) selected[tenant.as_deref() == Some(t.as_str())] { (t) } }
            } }
            label { "State" select name="state" #f-state {
                option value="" { "all" }
                @for s in ["pending", "running", "completed", "failed"] { option value=(s) selected[state.as_deref() == Some(s)] { (s) } }
            } }
            button.primary type="submit" { "Filter" }
        }
        @if failed { p.alert role="alert" { "Some tasks cannot be read right now." } }
        table #tasks data-live {
            caption { "Facade tasks, newest first" }
            thead { tr { th scope="col" { "Task" } th scope="col" { "Tenant" } th scope="col" { "Type" } th scope="col" { "Instance" } th scope="col" { "State" } th scope="col" { "Steps" } th scope="col" { "Error" } th scope="col" { "Created" } th scope="col" { "Updated" } } }
            tbody {
                @for (t, v) in &all {
                    tr {
                        td { code { (num(&v["id"])) } } td { (t) } td { (num(&v["type"])) } td { (num(&v["instance_id"])) }
                        td class=(match v["status"].as_str() { Some("failed") => "bad", Some("completed") => "ok", _ => "" }) { (num(&v["status"])) }
                        td {
                            ol { @for s in v["steps"].as_array().into_iter().flatten() { li { (num(&s["name"])) ": " (num(&s["status"])) } } }
                        }
                        td { @if !v["error"].is_null() { (num(&v["error"]["message"])) } }
                        td { (num(&v["created_at"])) } td { (num(&v["updated_at"])) }
                    }
                }
            }
        }
    };
    layout(op, "/ui/tasks", "Tasks", body)
}

/// The config as JSON with every secret-looking value replaced.
pub fn redacted(v: &Value) -> Value {
    fn secret_name(k: &str) -> bool {
        let k = k.to_ascii_lowercase();
        [
            "secret",
            "password",
            "token",
            "hash",
            "signing_key",
            "private",
            "credential",
            "key_file",
        ]
        .iter()
        .any(|s| k.contains(s))
    }
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if secret_name(k) && !v.is_null() && !v.is_array() {
                        Value::String("[redacted]".into())
                    } else if secret_name(k) && v.is_array() {
                        Value::Array(
                            v.as_array()
                                .into_iter()
                                .flatten()
                                .map(|e| {
                                    if e.is_object() {
                                        redacted(e)
                                    } else {
                                        Value::String("[redacted]".into())
                                    }
                                })
                                .collect(),
                        )
                    } else {
                        redacted(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redacted).collect()),
        other => other.clone(),
    }
}

fn config(shared: &Arc<SharedState>, rt: &Arc<Runtime>, op: &Operator) -> String {
    let history = shared.history();
    let text = serde_json::to_value(&rt.config)
        .map(|v| redacted(&v))
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_default();
    let body = html! {
        dl.cards #config-facts data-live {
            div { dt { "Version" } dd #config-version { (rt.version) } }
            div { dt { "Loaded at" } dd { (crate::clock::timestamp(history.loaded_at)) } }
            div { dt { "Proxy" } dd { (env!("CARGO_PKG_VERSION")) } }
        }
        section #last-reload data-live aria-labelledby="h-reload" {
            h2 #h-reload { "Last reload" }
            @match &history.last_reload {
                None => p { "No reload since start." },
                Some(r) if r.ok => p.ok { "Succeeded at " (crate::clock::timestamp(r.at)) "; version " (r.version) " in force." },
                Some(r) => {
                    p.bad { "Failed at " (crate::clock::timestamp(r.at)) "; version " (r.version) " stays in force." }
                    ul { @for e in &r.errors { li { (e) } } }
                },
            }
        }
        @if op.session.write && op.session.process {
            form method="post" action="/ui/config/reload" {
                input type="hidden" name="csrf" value=(op.session.csrf);
                button.primary type="submit" #reload { "Reload the configuration file" }
            }
        }
        h2 { "Running configuration (secrets redacted)" }
        pre.config #config { (text) }
    };
    layout(op, "/ui/config", "Configuration", body)
}

async fn credentials(rt: &Arc<Runtime>, shared: &Arc<SharedState>, op: &Operator) -> String {
    let doc = shared.state.auth.managed.document().await;
    let body = match doc {
        Err(_) => html! { p.alert role="alert" { "The credential store is unavailable." } },
        Ok(doc) => {
            let keys = super::credentials::listing(rt, Kind::ApiKey, &doc, &op.scope());
            let clients = super::credentials::listing(rt, Kind::Client, &doc, &op.scope());
            html! {
                p.muted { "Credentials of the config file are read-only; the ones created here (or through " code { "/admin/api-keys" } " and " code { "/admin/clients" } ") are kept as hashes in the state store and take effect at once." }
                h2 #h-keys { "API keys" }
                (table(op, "api-keys", &keys["api_keys"], "name"))
                @if op.session.write { (create_form(op, rt, "api-keys", "name", "Name", "Issue an API key")) }
                h2 #h-clients { "Clients" }
                (table(op, "clients", &clients["clients"], "client_id"))
                @if op.session.write { (create_form(op, rt, "clients", "client_id", "Client id", "Issue a client")) }
            }
        }
    };
    layout(op, "/ui/credentials", "Credentials", body)
}

fn button(op: &Operator, action: String, label: &str, id: String, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="csrf" value=(op.session.csrf);
            button type="submit" class=(class) id=(id) { (label) }
        }
    }
}

fn table(op: &Operator, kind: &str, rows: &Value, name_field: &str) -> Markup {
    html! {
        table id=(kind) {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Principal" } th scope="col" { "Roles" } th scope="col" { "Tenant" } th scope="col" { "Policy" } th scope="col" { "State" } th scope="col" { "Source" } @if op.session.write { th scope="col" { "Actions" } } } }
            tbody {
                @for r in rows.as_array().into_iter().flatten() {
                    @let name = num(&r[name_field]);
                    tr data-name=(name) {
                        th scope="row" { (name) } td { (num(&r["principal"])) }
                        td { (r["roles"].as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")) }
                        td { (num(&r["tenant"])) } td { (num(&r["policy"])) }
                        td class=(if r["enabled"] == true { "ok" } else { "bad" }) { @if r["enabled"] == true { "enabled" } @else { "disabled" } }
                        td { (num(&r["source"])) }
                        @if op.session.write {
                            td {
                                @if let Some(id) = r["id"].as_str() {
                                    @let base = format!("/ui/credentials/{kind}/{id}");
                                    @if r["enabled"] == true {
                                        (button(op, format!("{base}/disable"), "Disable", format!("disable-{name}"), ""))
                                    } @else {
                                        (button(op, format!("{base}/enable"), "Enable", format!("enable-{name}"), ""))
                                    }
                                    " " (button(op, format!("{base}/rotate"), "Rotate", format!("rotate-{name}"), ""))
                                    " " (button(op, format!("{base}/delete"), "Delete", format!("delete-{name}"), "danger"))
                                    form.inline method="post" action=(format!("{base}/policy")) {
                                        input type="hidden" name="csrf" value=(op.session.csrf);
                                        label { " policy " input name="policy" size="8" value=(r["policy"].as_str().unwrap_or("")); }
                                        button type="submit" { "Set" }
                                    }
                                } @else { span.muted { "read-only (config file)" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn create_form(
    op: &Operator,
    rt: &Runtime,
    kind: &str,
    field: &str,
    label: &str,
    title: &str,
) -> Markup {
    html! {
        form.create method="post" action=(format!("/ui/credentials/{kind}")) aria-label=(title) {
            input type="hidden" name="csrf" value=(op.session.csrf);
            label { (label) input name=(field) id=(format!("new-{kind}-name")) required; }
            label { "Roles (comma-separated)" input name="roles" id=(format!("new-{kind}-roles")) value="viewer" required; }
            label { "Tenant" select name="tenant" id=(format!("new-{kind}-tenant")) { @for t in rt.config.tenants.keys().filter(|t| op.scope().sees(t)) { option value=(t) { (t) } } } }
            label { "Rate-limit policy (optional)" input name="policy" id=(format!("new-{kind}-policy")); }
            button.primary type="submit" id=(format!("create-{kind}")) { (title) }
        }
    }
}
