//! Request and response logging with every secret redacted, in the access log (rotated by
//! size) and in the audit trail.

use crate::harness::*;
use serde_json::{Value, json};
use std::time::Duration;

const HEADER_SECRET: &str = "internal-note-secret-4471";
const COOKIE_SECRET: &str = "cookie-secret-val-9911";
const QUERY_SECRET: &str = "query-secret-val-5530";
const PASSWORD: &str = "hunter2-password-value";
const CLIENT_SECRET: &str = "client-secret-value-xyz";
const NESTED_TOKEN: &str = "nested-access-token-abc";
const CONFIGURED_FIELD: &str = "ssn-123-45-6789";
const BROKEN_BODY_SECRET: &str = "broken-json-secret-2288";

fn log_files(dir: &std::path::Path, base: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == base || n.starts_with(&format!("{base}.")))
        })
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_a_log_line() {
    let h = Harness::start_with(|c| {
        c.extra_logging = "  request_headers: true\n  response_headers: true\n  request_body: true\n  response_body: true\n  body_max_bytes: 2048\n  redact_headers: [X-Internal-Note]\n  redact_fields: [ssn]\n  rotate: {max_bytes: 8192, max_files: 50}\n".into();
    })
    .await;
    let admin = h.key("admin").to_string();
    let id = h.first_instance(&admin).await;

    // A context full of secrets: the request body and OrionVM's echo both carry them.
    let resp = h
        .http
        .put(h.url(&format!("/api/v1/instances/{id}/context")))
        .bearer_auth(&admin)
        .header("cookie", format!("session={COOKIE_SECRET}"))
        .header("x-internal-note", HEADER_SECRET)
        .json(&json!({
            "note": "visible-marker-1",
            "db_password": PASSWORD,
            "client_secret": CLIENT_SECRET,
            "ssn": CONFIGURED_FIELD,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = resp.text().await.unwrap();
    assert!(echoed.contains(PASSWORD), "OrionVM echoes the context");

    // Nested secrets in a body OrionVM refuses (422): the request body is still logged.
    let resp = h
        .post(
            &admin,
            "/api/v1/instances",
            json!({"name": "n", "extra": {"deep": [{"access_token": NESTED_TOKEN}], "Password": PASSWORD}}),
        )
        .await;
    assert!(resp.status().is_client_error());

    // The key in X-API-Key, a secret in the query string.
    let resp = h
        .http
        .get(h.url(&format!("/api/v1/regions?api_key={QUERY_SECRET}&x=1")))
        .header("x-api-key", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A wrong key, an unparseable body with a secret in it, a body past the log cap.
    let wrong_key = "w".repeat(64);
    let resp = h.get(&wrong_key, "/api/v1/regions").await;
    assert_eq!(resp.status(), 401);
    let resp = h
        .http
        .post(h.url("/api/v1/disks"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(format!("{{\"password\": \"{BROKEN_BODY_SECRET}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let filler = "f".repeat(3000);
    let resp = h
        .http
        .put(h.url(&format!("/api/v1/instances/{id}/context")))
        .bearer_auth(&admin)
        .json(&json!({"a_filler": filler, "z_password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Enough traffic to rotate the access log a few times.
    for _ in 0..20 {
        let r = h.get(&admin, "/api/v1/regions").await;
        assert_eq!(r.status(), 200);
    }

    // OrionVM's own credentials, as the proxy sent them.
    let upstream_auth: Vec<String> = h
        .sim
        .recent_requests()
        .iter()
        .flat_map(|r| r.headers.iter())
        .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim_start_matches("Bearer ").to_string())
        .collect();
    assert!(!upstream_auth.is_empty());

    let total_requests = 27;
    let dir = h.proxy.dir.path().to_path_buf();
    let lines = poll("access log lines", Duration::from_secs(10), || async {
        let mut lines = Vec::new();
        for f in log_files(&dir, "access.log") {
            for l in std::fs::read_to_string(&f).unwrap().lines() {
                lines.push(l.to_string());
            }
        }
        (lines.iter().filter(|l| l.contains("\"/api/v1/")).count() >= total_requests)
            .then_some(lines)
    })
    .await;
    assert!(
        log_files(&dir, "access.log").len() >= 3,
        "the access log rotated by size: {:?}",
        log_files(&dir, "access.log")
    );
    let audit_lines: Vec<String> = std::fs::read_to_string(h.proxy.audit_log_path())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        audit_lines.len(),
        4,
        "four mutating calls: {audit_lines:#?}"
    );

    let mut secrets: Vec<String> = vec![
        HEADER_SECRET.into(),
        COOKIE_SECRET.into(),
        QUERY_SECRET.into(),
        PASSWORD.into(),
        CLIENT_SECRET.into(),
        NESTED_TOKEN.into(),
        CONFIGURED_FIELD.into(),
        BROKEN_BODY_SECRET.into(),
        wrong_key.clone(),
        ACME_CLIENT_SECRET.into(),
        GLOBEX_STATIC_TOKEN.into(),
    ];
    secrets.extend(h.config.keys.iter().map(|k| k.key.clone()));
    secrets.extend(upstream_auth);
    let stderr = h.proxy.stderr();
    for (i, line) in lines
        .iter()
        .chain(audit_lines.iter())
        .chain(
            stderr
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
                .iter(),
        )
        .enumerate()
    {
        for s in &secrets {
            assert!(!line.contains(s.as_str()), "secret {s} in line {i}: {line}");
        }
    }

    // The lines are ECS JSON with the configured extras, redacted where needed.
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for v in &parsed {
        for f in [
            "@timestamp",
            "log.level",
            "http.request.method",
            "url.path",
            "http.response.status_code",
            "event.duration",
            "trace.id",
            "http.request.id",
        ] {
            assert!(!v[f].is_null(), "{f} missing in {v}");
        }
    }
    let ctx_put = parsed
        .iter()
        .find(|v| {
            v["orion.route"] == "instances.context.update"
                && v["http.request.body.content"]
                    .as_str()
                    .is_some_and(|b| b.contains("visible-marker-1"))
        })
        .expect("the context PUT line");
    let rh = &ctx_put["orion.http.request.headers"];
    assert_eq!(rh["authorization"], "[redacted]");
    assert_eq!(rh["cookie"], "[redacted]");
    assert_eq!(rh["x-internal-note"], "[redacted]");
    assert_eq!(rh["content-type"], "application/json");
    let body: Value =
        serde_json::from_str(ctx_put["http.request.body.content"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"note": "visible-marker-1", "db_password": "[redacted]", "client_secret": "[redacted]", "ssn": "[redacted]"})
    );
    // OrionVM answers the context as key/value entries; a secret key's value is redacted.
    let resp_body: Value =
        serde_json::from_str(ctx_put["http.response.body.content"].as_str().unwrap()).unwrap();
    let entry = |key: &str| {
        resp_body
            .as_array()
            .expect("the context answer is an array")
            .iter()
            .find(|e| e["key"] == key)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        entry("note"),
        Some(json!("visible-marker-1")),
        "{resp_body}"
    );
    for key in ["db_password", "client_secret", "ssn"] {
        assert_eq!(entry(key), Some(json!("[redacted]")), "{key}: {resp_body}");
    }
    assert_eq!(
        ctx_put["orion.http.response.headers"]["x-request-id"],
        ctx_put["http.request.id"]
    );

    let nested = parsed
        .iter()
        .find(|v| v["orion.route"] == "instances.create")
        .expect("the create line");
    let body: Value =
        serde_json::from_str(nested["http.request.body.content"].as_str().unwrap()).unwrap();
    assert_eq!(body["extra"]["deep"][0]["access_token"], "[redacted]");
    assert_eq!(body["extra"]["Password"], "[redacted]");
    assert_eq!(body["name"], "n");
    // The error body the caller got is logged too.
    assert!(
        nested["http.response.body.content"]
            .as_str()
            .unwrap()
            .contains("request_id")
    );

    let with_key = parsed
        .iter()
        .find(|v| v["url.query"].as_str().is_some_and(|q| q.contains("x=1")))
        .unwrap();
    assert_eq!(with_key["url.query"], "api_key=[redacted]&x=1");
    assert_eq!(
        with_key["orion.http.request.headers"]["x-api-key"],
        "[redacted]"
    );

    let long = parsed
        .iter()
        .find(|v| {
            v["http.request.body.content"]
                .as_str()
                .is_some_and(|b| b.contains("fffff"))
        })
        .unwrap();
    assert_eq!(long["orion.http.request.body.truncated"], true);
    assert_eq!(
        long["http.request.body.content"].as_str().unwrap().len(),
        2048
    );
}
