//! The logs as operators' tools read them: every access-log and audit field outside `orion.*`
//! is an ECS 8.x field with the ECS type, the probes stay out of the access log, `SIGUSR1`
//! reopens the log files (logrotate's `postrotate`), and with `logging.format: json` the
//! proxy's own lines on stderr are JSON in the same shape.

use crate::harness::*;
use serde_json::Value;
use std::time::Duration;

/// The ECS 8.x fields the proxy writes outside `orion.*`, with their ECS types.
const ECS_FIELDS: &[(&str, &str)] = &[
    ("@timestamp", "date"),
    ("message", "text"),
    ("ecs.version", "keyword"),
    ("log.level", "keyword"),
    ("log.logger", "keyword"),
    ("event.dataset", "keyword"),
    ("event.kind", "keyword"),
    ("event.category", "keyword[]"),
    ("event.type", "keyword[]"),
    ("event.outcome", "keyword"),
    ("event.action", "keyword"),
    ("event.duration", "long"),
    ("http.request.id", "keyword"),
    ("http.request.method", "keyword"),
    ("http.request.body.bytes", "long"),
    ("http.request.body.content", "text"),
    ("http.response.status_code", "long"),
    ("http.response.body.bytes", "long"),
    ("http.response.body.content", "text"),
    ("trace.id", "keyword"),
    ("span.id", "keyword"),
    ("client.ip", "ip"),
    ("url.path", "text"),
    ("url.query", "keyword"),
    ("user.id", "keyword"),
    ("user.roles", "keyword[]"),
    ("organization.id", "keyword"),
    ("user_agent.original", "keyword"),
    ("error.code", "keyword"),
    ("error.message", "text"),
    ("error.type", "keyword"),
    ("process.pid", "long"),
];

/// ECS's allowed values for the categorisation fields.
const EVENT_KINDS: &[&str] = &["alert", "enrichment", "event", "metric", "state", "signal"];
const EVENT_CATEGORIES: &[&str] = &["web", "configuration", "authentication", "iam", "network"];
const EVENT_TYPES: &[&str] = &[
    "access", "error", "info", "change", "creation", "deletion", "allowed", "denied",
];

/// Every problem of one line against ECS.
fn ecs_problems(line: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(obj) = line.as_object() else {
        return vec![format!("not an object: {line}")];
    };
    for (k, v) in obj {
        if k.starts_with("orion.") {
            continue;
        }
        let Some((_, ty)) = ECS_FIELDS.iter().find(|(f, _)| f == k) else {
            problems.push(format!(
                "{k}: not an ECS field (custom fields go under orion.*)"
            ));
            continue;
        };
        let ok = match *ty {
            "date" => v.as_str().is_some_and(|s| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .is_ok()
            }),
            "long" => v.is_u64() || v.is_i64(),
            "ip" => v
                .as_str()
                .is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok()),
            "keyword[]" => {
                v.as_array().is_some_and(|a| a.iter().all(Value::is_string)) || v.is_string()
            }
            _ => v.is_string() || v.is_null(),
        };
        if !ok {
            problems.push(format!("{k}: {v} is not of ECS type {ty}"));
        }
    }
    for (field, allowed) in [
        ("event.kind", EVENT_KINDS),
        ("event.category", EVENT_CATEGORIES),
        ("event.type", EVENT_TYPES),
    ] {
        let values: Vec<&str> = match &line[field] {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if values.is_empty() {
            problems.push(format!("{field} missing"));
        }
        for v in values {
            if !allowed.contains(&v) {
                problems.push(format!("{field}: {v} is not an ECS value"));
            }
        }
    }
    for f in ["@timestamp", "message", "ecs.version", "event.outcome"] {
        if line[f].is_null() {
            problems.push(format!("{f} missing"));
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_and_audit_lines_are_ecs_probes_are_skipped_and_sigusr1_reopens() {
    let h = Harness::start_with(|c| {
        c.extra_logging = "  format: json\n  request_body: true\n".into();
    })
    .await;
    let admin = h.key("admin").to_string();
    let id = h.first_instance(&admin).await;
    for path in ["/health", "/ready"] {
        let r = h.http.get(h.url(path)).send().await.unwrap();
        assert!(r.status().is_success() || r.status() == 503, "{path}");
    }
    assert_eq!(h.get(&admin, "/api/v1/regions").await.status(), 200);
    assert_eq!(
        h.get(&"w".repeat(64), "/api/v1/regions").await.status(),
        401
    );
    let r = h
        .post(
            &admin,
            &format!("/api/v1/instances/{id}/stop"),
            serde_json::json!({}),
        )
        .await;
    assert!(r.status().is_success() || r.status().is_client_error());

    let lines = h.proxy.access_log(3).await;
    assert!(lines.len() >= 3, "{lines:#?}");
    assert!(
        lines
            .iter()
            .all(|l| l["url.path"] != "/health" && l["url.path"] != "/ready"),
        "logging.access.skip_routes leaves the probes out by default: {lines:#?}"
    );
    for l in &lines {
        let p = ecs_problems(l);
        assert!(p.is_empty(), "{p:#?} in {l}");
        assert_eq!(l["ecs.version"], "8.11.0");
        assert_eq!(l["log.logger"], "orion_proxy.access");
    }
    let ok = lines
        .iter()
        .find(|l| l["url.path"] == "/api/v1/regions" && l["http.response.status_code"] == 200)
        .unwrap();
    assert_eq!(ok["event.outcome"], "success");
    assert_eq!(ok["message"], "GET /api/v1/regions 200");
    assert_eq!(ok["orion.route"], "regions.list");
    assert_eq!(ok["orion.upstream.account"], "acme-orionvm");
    assert!(ok["orion.upstream.status_code"].is_u64() && ok["orion.latency_ms"].is_number());
    let refused = lines
        .iter()
        .find(|l| l["http.response.status_code"] == 401)
        .unwrap();
    assert_eq!(refused["event.outcome"], "failure");
    assert_eq!(
        refused["event.type"],
        serde_json::json!(["access", "error"])
    );
    assert!(refused["orion.auth.failure"].is_string(), "{refused}");

    let audit = poll("the audit record", Duration::from_secs(10), || async {
        let a = h.proxy.audit_log();
        (!a.is_empty()).then_some(a)
    })
    .await;
    for r in &audit {
        let p = ecs_problems(r);
        assert!(p.is_empty(), "{p:#?} in {r}");
        assert!(r["orion.audit.result"].is_string(), "{r}");
    }

    // logrotate: rename both files away, then SIGUSR1; the next lines go to new files.
    let dir = h.proxy.dir.path().to_path_buf();
    std::fs::rename(dir.join("access.log"), dir.join("access.log.rotated")).unwrap();
    std::fs::rename(dir.join("audit.log"), dir.join("audit.log.rotated")).unwrap();
    h.proxy.signal(libc::SIGUSR1);
    poll(
        "the reopened access log",
        Duration::from_secs(20),
        || async {
            assert_eq!(h.get(&admin, "/api/v1/regions").await.status(), 200);
            tokio::time::sleep(Duration::from_millis(100)).await;
            std::fs::read_to_string(dir.join("access.log"))
                .ok()
                .filter(|t| t.contains("/api/v1/regions"))
        },
    )
    .await;
    let r = h
        .post(
            &admin,
            &format!("/api/v1/instances/{id}/start"),
            serde_json::json!({}),
        )
        .await;
    assert!(r.status().as_u16() < 500);
    poll(
        "the reopened audit trail",
        Duration::from_secs(20),
        || async { (!h.proxy.audit_log().is_empty()).then_some(()) },
    )
    .await;

    // The proxy's own lines: a reload that fails is logged as JSON with log.level and log.logger.
    h.proxy.write_config("server: [not, a, mapping]\n");
    let r = h.proxy.admin_post(&admin, "/admin/reload").await;
    assert_eq!(r.status(), 422);
    let line = poll(
        "a JSON diagnostic line",
        Duration::from_secs(10),
        || async {
            h.proxy
                .stderr()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| {
                    v["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("reload failed"))
                })
        },
    )
    .await;
    assert_eq!(line["log.level"], "error", "{line}");
    assert!(
        line["log.logger"]
            .as_str()
            .is_some_and(|l| l.starts_with("orion_proxy")),
        "{line}"
    );
    let p = ecs_problems(&line);
    assert!(
        p.iter().all(|p| p.starts_with("event.category")
            || p.starts_with("event.type")
            || p.starts_with("event.outcome")),
        "{p:#?}"
    );
    for l in h.proxy.stderr().lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(l).is_ok(),
            "not JSON on stderr: {l}"
        );
    }
}
