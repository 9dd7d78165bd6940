//! The audit trail: one record per mutating call, on disk before the caller has the answer;
//! `GET /admin/audit` filters and paginates in both formats and streams a large rotated trail.

use crate::harness::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::time::Duration;

struct Call {
    request_id: String,
    status: u16,
}

async fn call(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
    fault: Option<&str>,
) -> (Call, String) {
    let mut req = h.http.request(method, h.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    } else {
        req = req.header("content-type", "application/json");
    }
    if let Some(f) = fault {
        req = req.header("x-sim-fault", f);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let text = resp.text().await.unwrap();
    (Call { request_id, status }, text)
}

/// The records with this request id, read right after the answer arrived (no waiting).
fn records_for(h: &Harness, rid: &str) -> Vec<Value> {
    h.proxy
        .audit_log()
        .into_iter()
        .filter(|r| r["http.request.id"] == rid)
        .collect()
}

fn digest(v: &Value) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(serde_json::to_vec(v).unwrap()))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_record_per_mutating_call_with_the_right_fields() {
    use reqwest::Method as M;
    let h = Harness::start().await;
    let admin = h.key("admin").to_string();
    let operator = h.key("operator").to_string();
    let viewer = h.key("viewer").to_string();
    let globex = h.key("other_tenant_admin").to_string();
    let id = h.first_instance(&admin).await;
    let globex_id = h.first_instance(&globex).await;

    struct Want {
        call: Call,
        action: &'static str,
        user: Option<&'static str>,
        tenant: Option<&'static str>,
        roles: Option<Value>,
        resource: Option<String>,
        digest: Option<String>,
        result: &'static str,
        error: Option<&'static str>,
    }
    let mut wants = Vec::new();

    // A create: the resource is the id OrionVM gave.
    let key_body = json!({"name": "audit-key", "key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAudit audit@example"});
    let (c, text) = call(
        &h,
        M::POST,
        "/api/v1/public_keys",
        Some(&admin),
        Some(key_body.clone()),
        None,
    )
    .await;
    assert_eq!(c.status, 200, "{text}");
    let created: Value = serde_json::from_str(&text).unwrap();
    wants.push(Want {
        call: c,
        action: "public_keys.create",
        user: Some("key:admin"),
        tenant: Some("acme"),
        roles: Some(json!(["admin", "process_admin"])),
        resource: created["id"].as_str().map(str::to_string),
        digest: Some(digest(&key_body)),
        result: "success",
        error: None,
    });
    // The digest is over the redacted body: the secret does not change it.
    let ctx_body = json!({"note": "n1", "app_password": "pw-one"});
    let (c, _) = call(
        &h,
        M::PUT,
        &format!("/api/v1/instances/{id}/context"),
        Some(&admin),
        Some(ctx_body),
        None,
    )
    .await;
    assert_eq!(c.status, 200);
    wants.push(Want {
        call: c,
        action: "instances.context.update",
        user: Some("key:admin"),
        tenant: Some("acme"),
        roles: Some(json!(["admin", "process_admin"])),
        resource: Some(id.clone()),
        digest: Some(digest(&json!({"note": "n1", "app_password": "[redacted]"}))),
        result: "success",
        error: None,
    });
    let (c, _) = call(
        &h,
        M::POST,
        &format!("/api/v1/instances/{id}/stop"),
        Some(&operator),
        Some(json!({})),
        None,
    )
    .await;
    assert_eq!(c.status, 200);
    wants.push(Want {
        call: c,
        action: "instances.stop",
        user: Some("key:operator"),
        tenant: Some("acme"),
        roles: Some(json!(["operator"])),
        resource: Some(id.clone()),
        digest: Some(digest(&json!({}))),
        result: "success",
        error: None,
    });
    let (c, _) = call(
        &h,
        M::DELETE,
        &format!("/api/v1/instances/{id}"),
        Some(&viewer),
        None,
        None,
    )
    .await;
    assert_eq!(c.status, 403);
    wants.push(Want {
        call: c,
        action: "instances.delete",
        user: Some("key:viewer"),
        tenant: Some("acme"),
        roles: Some(json!(["viewer"])),
        resource: Some(id.clone()),
        digest: None,
        result: "denied",
        error: Some("forbidden"),
    });
    let (c, _) = call(
        &h,
        M::PUT,
        &format!("/api/v1/instances/{id}"),
        None,
        Some(json!({"name": "x"})),
        None,
    )
    .await;
    assert_eq!(c.status, 401);
    wants.push(Want {
        call: c,
        action: "instances.update",
        user: None,
        tenant: None,
        roles: None,
        resource: Some(id.clone()),
        digest: None,
        result: "denied",
        error: Some("unauthorized"),
    });
    let (c, _) = call(
        &h,
        M::POST,
        &format!("/api/v1/instances/{globex_id}/start"),
        Some(&globex),
        Some(json!({})),
        Some("reset"),
    )
    .await;
    assert_eq!(c.status, 502);
    wants.push(Want {
        call: c,
        action: "instances.start",
        user: Some("key:other_tenant_admin"),
        tenant: Some("globex"),
        roles: Some(json!(["admin"])),
        resource: Some(globex_id.clone()),
        digest: Some(digest(&json!({}))),
        // OrionVM received the call and never answered: whether it happened is unknown.
        result: "unknown",
        error: Some("upstream_reset"),
    });
    let (c, _) = call(
        &h,
        M::POST,
        "/api/v1/instances/assemble",
        Some(&admin),
        Some(json!({"name": 1})),
        None,
    )
    .await;
    assert_eq!(c.status, 422);
    wants.push(Want {
        call: c,
        action: "instances.assemble",
        user: Some("key:admin"),
        tenant: Some("acme"),
        roles: Some(json!(["admin", "process_admin"])),
        resource: None,
        // Refused by the proxy's schema check: the digest of what was received.
        digest: Some(digest(&json!({"name": 1}))),
        result: "rejected",
        error: Some("validation_failed"),
    });
    let (c, _) = call(
        &h,
        M::POST,
        "/api/v1/no_such_thing",
        Some(&admin),
        Some(json!({})),
        None,
    )
    .await;
    assert_eq!(c.status, 404);
    wants.push(Want {
        call: c,
        action: "unmatched",
        user: None,
        tenant: None,
        roles: None,
        resource: None,
        digest: None,
        result: "rejected",
        error: Some("not_found"),
    });

    for w in &wants {
        // Written before the answer was finished: there, without waiting.
        let recs = records_for(&h, &w.call.request_id);
        assert_eq!(recs.len(), 1, "{} has {} records", w.action, recs.len());
        let r = &recs[0];
        assert_eq!(r["event.action"], w.action, "{r}");
        assert_eq!(r["user.id"].as_str(), w.user, "{r}");
        assert_eq!(r["organization.id"].as_str(), w.tenant, "{r}");
        assert_eq!(r.get("user.roles").cloned(), w.roles, "{r}");
        assert_eq!(
            r["orion.resource.id"].as_str(),
            w.resource.as_deref(),
            "{r}"
        );
        assert_eq!(
            r["orion.http.request.body.digest"].as_str(),
            w.digest.as_deref(),
            "{r}"
        );
        assert_eq!(r["orion.audit.result"], w.result, "{r}");
        assert_eq!(r["http.response.status_code"], w.call.status, "{r}");
        assert_eq!(r["error.code"].as_str(), w.error, "{r}");
        assert_eq!(r["event.dataset"], "orion_proxy.audit");
        let ts = r["@timestamp"].as_str().unwrap();
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| panic!("timestamp {ts}"));
    }
    // Admin calls that change things are audited too, allowed or not.
    for (key, status, user, result) in [
        (&admin, 200, "key:admin", "success"),
        (&viewer, 403, "key:viewer", "denied"),
    ] {
        let r = h.proxy.admin_post(key, "/admin/reload").await;
        assert_eq!(r.status(), status);
        let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let recs = records_for(&h, &rid);
        assert_eq!(recs.len(), 1, "{rid}");
        assert_eq!(recs[0]["event.action"], "admin.reload");
        assert_eq!(recs[0]["user.id"], user);
        assert_eq!(recs[0]["orion.audit.result"], result);
        assert_eq!(recs[0]["http.response.status_code"], status);
    }
    // Reads leave no record; every mutating call left exactly one.
    for _ in 0..3 {
        let r = h.get(&admin, "/api/v1/regions").await;
        assert_eq!(r.status(), 200);
    }
    let r = h.proxy.admin_get(&admin, "/admin/config").await;
    assert_eq!(r.status(), 200);
    let all = h.proxy.audit_log();
    assert_eq!(all.len(), wants.len() + 2, "{all:#?}");
    // Never mixed with the access log.
    let access = h.proxy.access_log(12).await;
    assert!(
        access
            .iter()
            .all(|l| l["event.dataset"] == "orion_proxy.access")
    );
    assert!(
        all.iter()
            .all(|l| l["event.dataset"] == "orion_proxy.audit")
    );
}

async fn export(h: &Harness, key: &str, query: &str) -> reqwest::Response {
    h.proxy
        .admin_get(key, &format!("/admin/audit?{query}"))
        .await
}

async fn export_ids(h: &Harness, query: &str) -> Vec<String> {
    let resp = export(h, h.key("admin"), query).await;
    assert_eq!(resp.status(), 200, "{query}");
    let text = resp.text().await.unwrap();
    if query.contains("format=csv") {
        let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
        assert_eq!(
            lines.next().unwrap(),
            "timestamp,request_id,user,tenant,roles,action,method,path,resource,result,status,body_digest,error_code,client_ip"
        );
        lines
            .map(|l| l.split(',').nth(1).unwrap().to_string())
            .collect()
    } else {
        text.lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["http.request.id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_filters_and_paginates_in_both_formats() {
    let h = Harness::start().await;
    let admin = h.key("admin").to_string();
    let keys = [
        h.key("admin").to_string(),
        h.key("operator").to_string(),
        h.key("other_tenant_admin").to_string(),
    ];
    let mut ids = Vec::new();
    for k in &keys {
        ids.push(h.first_instance(k).await);
    }
    for i in 0..30 {
        let who = i % 3;
        let path = if i % 2 == 0 {
            format!("/api/v1/instances/{}/stop", ids[who])
        } else {
            format!("/api/v1/instances/{}/start", ids[who])
        };
        let r = h.post(&keys[who], &path, json!({})).await;
        assert!(r.status().as_u16() < 500, "{}", r.status());
        // Spread the timestamps so that a time window selects a clear subset.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let records = h.proxy.audit_log();
    assert_eq!(records.len(), 30);
    let rid = |r: &Value| r["http.request.id"].as_str().unwrap().to_string();
    let expect = |f: &dyn Fn(&Value) -> bool| -> Vec<String> {
        records.iter().filter(|r| f(r)).map(rid).collect()
    };

    for format in ["jsonl", "csv"] {
        let q = |rest: &str| format!("format={format}&{rest}");
        assert_eq!(export_ids(&h, &q("")).await, expect(&|_| true));
        assert_eq!(
            export_ids(&h, &q("user=operator")).await,
            expect(&|r| r["user.id"] == "key:operator")
        );
        assert_eq!(export_ids(&h, &q("user=key:operator")).await.len(), 10);
        assert_eq!(
            export_ids(&h, &q("tenant=globex")).await,
            expect(&|r| r["organization.id"] == "globex")
        );
        assert_eq!(
            export_ids(
                &h,
                &q(&format!("action=instances.stop&resource={}", ids[0]))
            )
            .await,
            expect(&|r| r["event.action"] == "instances.stop"
                && r["orion.resource.id"] == ids[0].as_str())
        );
        let from = records[10]["@timestamp"].as_str().unwrap().to_string();
        let to = records[20]["@timestamp"].as_str().unwrap().to_string();
        let window = export_ids(&h, &q(&format!("from={from}&to={to}"))).await;
        assert_eq!(
            window,
            expect(&|r| {
                let t = r["@timestamp"].as_str().unwrap();
                t >= from.as_str() && t < to.as_str()
            })
        );
        assert!(window.len() >= 5, "{window:?}");
        let all = expect(&|_| true);
        assert_eq!(export_ids(&h, &q("limit=5&offset=5")).await, all[5..10]);
        assert_eq!(export_ids(&h, &q("limit=5&offset=28")).await, all[28..]);
        assert!(export_ids(&h, &q("offset=30")).await.is_empty());
        let tenant_page = export_ids(&h, &q("tenant=acme&limit=4&offset=2")).await;
        let acme = expect(&|r| r["organization.id"] == "acme");
        assert_eq!(tenant_page, acme[2..6]);
    }

    // Streamed (chunked), with the right content types.
    let r = export(&h, &admin, "format=csv").await;
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    assert!(r.headers().get("content-length").is_none());
    assert_eq!(r.headers()["transfer-encoding"], "chunked");
    let r = export(&h, &admin, "").await;
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");

    // Admins only; bad parameters are refused in the error body.
    expect_error(export(&h, h.key("operator"), "").await, 403, "forbidden").await;
    for bad in ["limit=-1", "format=xml", "from=yesterday", "colour=blue"] {
        expect_error(export(&h, &admin, bad).await, 400, "invalid_request").await;
    }
}

/// One record as the proxy writes them, for a pre-made trail.
fn record_line(i: usize) -> String {
    let ms = 1_800_000_000_000i64 + i as i64 * 10;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).unwrap();
    let ts = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    );
    json!({
        "@timestamp": ts,
        "event.dataset": "orion_proxy.audit",
        "event.action": if i.is_multiple_of(2) { "instances.stop" } else { "instances.start" },
        "event.outcome": "success",
        "orion.audit.result": "success",
        "http.request.id": format!("req-{i:08}"),
        "trace.id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "user.id": format!("key:user{}", i % 10),
        "user.roles": ["operator"],
        "organization.id": if i.is_multiple_of(4) { "globex" } else { "acme" },
        "orion.auth.kind": "api_key",
        "client.ip": "127.0.0.1",
        "http.request.method": "POST",
        "url.path": format!("/api/v1/instances/{:08x}-0000-4000-8000-000000000000/stop", i % 1000),
        "orion.resource.id": format!("{:08x}-0000-4000-8000-000000000000", i % 1000),
        "orion.http.request.body.digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "http.response.status_code": 200,
        "event.duration": 1234567,
    })
    .to_string()
}

fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_streams_a_large_rotated_trail() {
    const PER_FILE: usize = 30_000;
    let sim = start_sim(sim_options()).await;
    let config = ConfigBuilder::new(&sim.url());
    let dir = tempfile::tempdir().unwrap();
    // Three files as rotation leaves them: audit.log.2 (oldest), audit.log.1, audit.log.
    let mut trail_bytes = 0u64;
    for (n, name) in ["audit.log.2", "audit.log.1", "audit.log"]
        .iter()
        .enumerate()
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.path().join(name)).unwrap());
        for i in n * PER_FILE..(n + 1) * PER_FILE {
            let line = record_line(i);
            trail_bytes += line.len() as u64 + 1;
            writeln!(f, "{line}").unwrap();
        }
    }
    let total = 3 * PER_FILE;
    let proxy = ProxyProcess::start_in(&config, dir).await;
    let admin = config.key("admin");
    let before = peak_rss_kb(proxy.pid());

    // Everything, oldest first, read as it streams.
    let mut resp = proxy.admin_get(admin, "/admin/audit?limit=1000000").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_none());
    let mut count = 0usize;
    let mut chunks = 0usize;
    let mut partial = Vec::new();
    let mut first = None;
    let mut last = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        chunks += 1;
        partial.extend_from_slice(&chunk);
        while let Some(nl) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=nl).collect();
            let v: Value = serde_json::from_slice(&line).unwrap();
            let rid = v["http.request.id"].as_str().unwrap().to_string();
            assert_eq!(rid, format!("req-{count:08}"), "in order across files");
            if first.is_none() {
                first = Some(rid.clone());
            }
            last = rid;
            count += 1;
        }
    }
    assert!(partial.is_empty());
    assert_eq!(count, total);
    assert_eq!(first.as_deref(), Some("req-00000000"));
    assert_eq!(last, format!("req-{:08}", total - 1));
    assert!(chunks > 100, "streamed in {chunks} chunks");

    // The proxy's peak memory grew by a small fraction of the trail it sent.
    let after = peak_rss_kb(proxy.pid());
    let grown_kb = after.saturating_sub(before);
    assert!(
        grown_kb * 1024 < trail_bytes / 4,
        "peak RSS grew {grown_kb} kB while streaming a {} kB trail",
        trail_bytes / 1024
    );

    // Filters and pages across the files, in CSV.
    let text = proxy
        .admin_get(
            admin,
            "/admin/audit?format=csv&user=user3&tenant=acme&offset=100&limit=50",
        )
        .await
        .text()
        .await
        .unwrap();
    let rows: Vec<&str> = text
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .skip(1)
        .collect();
    let want: Vec<String> = (0..total)
        .filter(|i| i % 10 == 3 && !i.is_multiple_of(4))
        .skip(100)
        .take(50)
        .map(|i| format!("req-{i:08}"))
        .collect();
    let got: Vec<String> = rows
        .iter()
        .map(|r| r.split(',').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(got, want);
    let tail = proxy
        .admin_get(
            admin,
            &format!("/admin/audit?offset={}&limit=50", total - 10),
        )
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(tail.lines().count(), 10);

    // New records go on after the pre-made ones.
    let list: Value = proxy
        .get(admin, "/api/v1/instances")
        .await
        .json()
        .await
        .unwrap();
    let id = list[0]["id"].as_str().unwrap();
    let r = proxy
        .post(admin, &format!("/api/v1/instances/{id}/stop"), json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let tail = proxy
        .admin_get(admin, "/admin/audit?user=admin&limit=5")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(tail.lines().count(), 1);
    assert!(tail.contains(id));
    drop(sim);
}
