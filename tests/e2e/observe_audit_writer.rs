//! The audit trail's writer: records are in the file (and, with `durability: fsync`, flushed to
//! the disk) before the caller has the answer; with `on_failure: closed` a mutating call is
//! refused before it reaches OrionVM while the trail cannot be written, and with `open` it is
//! served anyway.

use crate::harness::*;
use serde_json::{Value, json};
use std::time::Duration;

/// The mutation the tests repeat: idempotent, so it can be sent any number of times.
const UPDATE: &str = "/api/v1/instances/{id}/context";

/// The value of an unlabelled series, or of the series with these labels (0 when absent).
async fn metric(h: &Harness, name: &str) -> f64 {
    metric_with(h, name, &[]).await
}

async fn metric_with(h: &Harness, name: &str, labels: &[(&str, &str)]) -> f64 {
    h.proxy.scrape().await.value(name, labels)
}

async fn wait_metric(h: &Harness, name: &str, want: f64) {
    poll(
        &format!("{name} to be {want}"),
        Duration::from_secs(20),
        || async { (metric(h, name).await == want).then_some(()) },
    )
    .await;
}

/// Replaces the audit settings of the running config and reloads through the admin API.
async fn reload_with_audit(h: &Harness, audit_yaml: &str) {
    h.proxy.edit_config(|text| {
        let start = text.find("  audit: {").expect("audit line");
        let end = start + text[start..].find('\n').expect("end of line");
        format!("{}  audit: {audit_yaml}{}", &text[..start], &text[end..])
    });
    h.reload_ok().await;
}

/// Sets the instance's context; returns the status, request id and body.
async fn update(h: &Harness, id: &str) -> (u16, String, Value) {
    update_with(
        &h.http,
        &h.url(&format!("/api/v1/instances/{id}/context")),
        h.key("admin"),
    )
    .await
}

async fn update_with(http: &reqwest::Client, url: &str, key: &str) -> (u16, String, Value) {
    let r = http
        .put(url)
        .bearer_auth(key)
        .json(&json!({"note": "audited"}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, rid, body)
}

fn records_with(path: &std::path::Path, rid: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(rid))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_durability_flushes_each_batch_before_the_answer() {
    let h = Harness::start().await;
    let id = h.first_instance(h.key("admin")).await;
    let audit = h.proxy.audit_log_path();
    // Buffered (the default): written before the answer, never flushed to the disk.
    let (status, rid, _) = update(&h, &id).await;
    assert_eq!(status, 200);
    assert_eq!(records_with(&audit, &rid), 1);
    assert_eq!(metric(&h, "orion_proxy_audit_fsyncs_total").await, 0.0);

    reload_with_audit(
        &h,
        &format!("{{path: \"{}\", durability: fsync}}", audit.display()),
    )
    .await;
    let syncs_before = metric(&h, "orion_proxy_audit_fsyncs_total").await;
    // The reload's own record was flushed.
    assert!(syncs_before >= 1.0, "{syncs_before}");
    let mut rids = Vec::new();
    for _ in 0..5 {
        let (status, rid, _) = update(&h, &id).await;
        assert_eq!(status, 200);
        // In the file when the answer is: no waiting.
        assert_eq!(records_with(&audit, &rid), 1, "{rid}");
        rids.push(rid);
    }
    // Several at once share flushes, and each still has its record when answered.
    let url = h.url(&format!("/api/v1/instances/{id}/context"));
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, key) = (h.http.clone(), url.clone(), h.key("admin").to_string());
            let audit = audit.clone();
            tokio::spawn(async move {
                let (status, rid, _) = update_with(&http, &url, &key).await;
                // Checked as soon as this answer is in, whatever the others do.
                (status, records_with(&audit, &rid), rid)
            })
        })
        .collect();
    for call in calls {
        let (status, records, rid) = call.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(records, 1, "{rid}");
    }
    let syncs = metric(&h, "orion_proxy_audit_fsyncs_total").await - syncs_before;
    assert!(
        (1.0..=13.0).contains(&syncs),
        "{syncs} flushes for 13 records"
    );
    // The same file and writer: one record each, the trail continues.
    let all = h.proxy.audit_log();
    assert!(
        all.iter()
            .all(|r| r["event.dataset"] == "orion_proxy.audit")
    );
    assert_eq!(metric(&h, "orion_proxy_audit_writable").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_refuses_mutations_while_the_trail_cannot_be_written_and_open_serves() {
    let h = Harness::start().await;
    let id = h.first_instance(h.key("admin")).await;
    let trail_dir = h.proxy.dir.path().join("trail");
    std::fs::create_dir(&trail_dir).unwrap();
    let audit = trail_dir.join("audit.log");
    reload_with_audit(
        &h,
        &format!("{{path: \"{}\", on_failure: closed}}", audit.display()),
    )
    .await;
    let (status, rid, _) = update(&h, &id).await;
    assert_eq!(status, 200);
    assert_eq!(records_with(&audit, &rid), 1);

    // The trail's directory is replaced by a file: the writer cannot write or reopen it.
    let break_trail = || {
        std::fs::remove_dir_all(&trail_dir).unwrap();
        std::fs::write(&trail_dir, "not a directory\n").unwrap();
    };
    let mend_trail = || {
        std::fs::remove_file(&trail_dir).unwrap();
        std::fs::create_dir(&trail_dir).unwrap();
    };
    break_trail();
    wait_metric(&h, "orion_proxy_audit_writable", 0.0).await;
    let before = h.sim.calls().count("PUT", UPDATE);
    let (status, _, body) = update(&h, &id).await;
    assert_eq!(status, 503, "{body}");
    assert_error_body(&body, 503, "audit_unavailable");
    assert_eq!(
        h.sim.calls().count("PUT", UPDATE),
        before,
        "the refused call never reached OrionVM"
    );
    // Reads are not audited and go on.
    assert_eq!(
        h.get(h.key("viewer"), "/api/v1/instances").await.status(),
        200
    );

    // Mended: the writer opens a new file and mutations go through again.
    mend_trail();
    wait_metric(&h, "orion_proxy_audit_writable", 1.0).await;
    let (status, rid, _) = update(&h, &id).await;
    assert_eq!(status, 200);
    assert_eq!(records_with(&audit, &rid), 1);
    assert_eq!(h.sim.calls().count("PUT", UPDATE), before + 1);

    // `open`: the same failure lets the call through, and the lost record is counted.
    reload_with_audit(
        &h,
        &format!("{{path: \"{}\", on_failure: open}}", audit.display()),
    )
    .await;
    break_trail();
    wait_metric(&h, "orion_proxy_audit_writable", 0.0).await;
    let errors = |h| metric_with(h, "orion_proxy_audit_records_total", &[("result", "error")]);
    let errors_before = errors(&h).await;
    let (status, _, body) = update(&h, &id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.sim.calls().count("PUT", UPDATE), before + 2);
    poll(
        "the lost record counted",
        Duration::from_secs(10),
        || async { (errors(&h).await > errors_before).then_some(()) },
    )
    .await;
    mend_trail();
    wait_metric(&h, "orion_proxy_audit_writable", 1.0).await;
}
