//! Metrics, usage per client, dashboards and alert rules, against a running proxy after a
//! scripted mix of traffic: successes, auth failures, OrionVM's rate limits, upstream faults.

use crate::harness::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

async fn send(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    fault: Option<&str>,
) -> u16 {
    let mut req = h.http.request(method.clone(), h.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(f) = fault {
        req = req.header("x-sim-fault", f);
    }
    if method == reqwest::Method::POST {
        req = req.json(&json!({}));
    }
    req.send().await.unwrap().status().as_u16()
}

/// The mix, and what each piece must count.
async fn traffic(h: &Harness) -> String {
    use reqwest::Method as M;
    let admin = h.key("admin").to_string();
    let viewer = h.key("viewer").to_string();
    let id = h.first_instance(&admin).await;

    for _ in 0..3 {
        assert_eq!(
            send(h, M::GET, "/api/v1/regions", Some(&admin), None).await,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(send(h, M::GET, "/api/v1/regions", None, None).await, 401);
    }
    let bad_key = "x".repeat(64);
    assert_eq!(
        send(h, M::GET, "/api/v1/regions", Some(&bad_key), None).await,
        401
    );
    let stop = format!("/api/v1/instances/{id}/stop");
    assert_eq!(send(h, M::POST, &stop, Some(&viewer), None).await, 403);
    // OrionVM's own rate limit, twice.
    for _ in 0..2 {
        assert_eq!(
            send(
                h,
                M::GET,
                "/api/v1/templates",
                Some(&admin),
                Some("status=429")
            )
            .await,
            429
        );
    }
    // Upstream faults: a 503, a reset, a timeout (POSTs are not retried).
    assert_eq!(
        send(h, M::GET, "/api/v1/disks", Some(&admin), Some("status=503")).await,
        503
    );
    assert_eq!(
        send(h, M::POST, &stop, Some(&admin), Some("reset")).await,
        502
    );
    let start = format!("/api/v1/instances/{id}/start");
    assert_eq!(
        send(h, M::POST, &start, Some(&admin), Some("latency=15s")).await,
        504
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_traffic_mix() {
    let h = Harness::start_with(|c| c.read_timeout_ms = 5000).await;
    traffic(&h).await;

    // Counters are updated in the logging phase, after the answer: wait for the last one.
    let s = poll("metrics settle", Duration::from_secs(60), || async {
        let s = h.proxy.scrape().await;
        let done = s.value("orion_proxy_requests_in_flight", &[]) == 0.0
            && s.sum(
                "orion_proxy_requests_total",
                &[("route", "instances.start")],
            ) == 1.0;
        done.then_some(s)
    })
    .await;

    // The text format is valid for Prometheus' own linter.
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/setup installs Debian's prometheus package)");
    use std::io::Write;
    // The whole scrape: the proxy's series and the process collector's.
    assert!(s.text.contains("process_cpu_seconds_total"), "{}", s.text);
    lint.stdin
        .take()
        .unwrap()
        .write_all(s.text.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let req = |route: &str, method: &str, class: &str, tenant: &str| {
        s.value(
            "orion_proxy_requests_total",
            &[
                ("route", route),
                ("method", method),
                ("status_class", class),
                ("tenant", tenant),
            ],
        )
    };
    assert_eq!(req("regions.list", "GET", "2xx", "acme"), 3.0);
    assert_eq!(req("regions.list", "GET", "4xx", "none"), 3.0);
    assert_eq!(req("instances.stop", "POST", "4xx", "acme"), 1.0);
    assert_eq!(req("instances.stop", "POST", "5xx", "acme"), 1.0);
    assert_eq!(req("instances.start", "POST", "5xx", "acme"), 1.0);
    assert_eq!(req("templates.list", "GET", "4xx", "acme"), 2.0);
    assert_eq!(req("disks.list", "GET", "5xx", "acme"), 1.0);
    assert_eq!(req("instances.list", "GET", "2xx", "acme"), 1.0);
    assert_eq!(s.types["orion_proxy_requests_total"], "counter");
    // The exact status code beside the class.
    let code = |route: &str, code: &str| {
        s.sum(
            "orion_proxy_requests_total",
            &[("route", route), ("code", code)],
        )
    };
    assert_eq!(code("regions.list", "200"), 3.0);
    assert_eq!(code("regions.list", "401"), 3.0);
    assert_eq!(code("templates.list", "429"), 2.0);
    assert_eq!(code("disks.list", "503"), 1.0);
    assert_eq!(code("instances.stop", "502"), 1.0);
    assert_eq!(code("instances.start", "504"), 1.0);

    // Per account and endpoint: OrionVM calls by result, and their latency up to 60 s.
    let acme = |result: &str| {
        s.value(
            "orion_proxy_upstream_requests_total",
            &[
                ("account", "acme-orionvm"),
                ("endpoint", "sim0"),
                ("result", result),
            ],
        )
    };
    assert_eq!(acme("2xx"), 4.0, "the instance list and three region lists");
    assert_eq!(acme("4xx"), 2.0);
    assert!(acme("5xx") >= 1.0);
    assert_eq!(acme("reset"), 1.0);
    assert_eq!(acme("timeout"), 1.0);
    assert_eq!(acme("connect"), 0.0);
    assert_eq!(
        s.value(
            "orion_proxy_upstream_requests_total",
            &[
                ("account", "globex-orionvm"),
                ("endpoint", "sim0"),
                ("result", "2xx")
            ]
        ),
        0.0,
        "the other account on the same host has its own series"
    );
    let answered = s.value(
        "orion_proxy_upstream_request_duration_seconds_count",
        &[("account", "acme-orionvm"), ("endpoint", "sim0")],
    );
    assert!(answered >= 7.0, "{answered}");
    assert_eq!(
        s.value(
            "orion_proxy_upstream_request_duration_seconds_bucket",
            &[
                ("account", "acme-orionvm"),
                ("endpoint", "sim0"),
                ("le", "60")
            ]
        ),
        answered
    );
    assert!(
        s.text.contains(
            "orion_proxy_request_duration_seconds_bucket{route=\"regions.list\",le=\"60\"}"
        ),
        "buckets up to 60 s"
    );
    // Bytes, tenants and their accounts, the process collector.
    assert!(s.value("orion_proxy_response_bytes_total", &[("tenant", "acme")]) > 0.0);
    assert_eq!(
        s.value(
            "orion_proxy_tenant_info",
            &[("tenant", "globex"), ("account", "globex-orionvm")]
        ),
        1.0
    );
    assert!(s.value("process_resident_memory_bytes", &[]) > 0.0);
    assert!(s.value("process_open_fds", &[]) > 0.0);
    assert_eq!(
        s.value("orion_proxy_config_last_reload_successful", &[]),
        1.0
    );
    let loaded_at = s.value(
        "orion_proxy_config_last_reload_success_timestamp_seconds",
        &[],
    );
    assert!(loaded_at > 1.7e9, "{loaded_at}");

    let auth = |reason: &str| s.value("orion_proxy_auth_failures_total", &[("reason", reason)]);
    assert_eq!(auth("missing"), 2.0);
    assert_eq!(auth("unknown_key"), 1.0);
    assert_eq!(auth("forbidden"), 1.0);

    assert_eq!(
        s.value("orion_proxy_rate_limited_total", &[("policy", "orionvm")]),
        2.0
    );
    let upstream = |kind: &str| s.value("orion_proxy_upstream_errors_total", &[("kind", kind)]);
    assert_eq!(upstream("5xx"), 1.0);
    assert_eq!(upstream("reset"), 1.0);
    assert_eq!(upstream("timeout"), 1.0);
    assert_eq!(upstream("connect"), 0.0);

    // Histograms: every regions.list request timed; only the three that went upstream there.
    assert_eq!(s.types["orion_proxy_request_duration_seconds"], "histogram");
    assert_eq!(
        s.value(
            "orion_proxy_request_duration_seconds_count",
            &[("route", "regions.list")]
        ),
        6.0
    );
    assert_eq!(
        s.value(
            "orion_proxy_upstream_duration_seconds_count",
            &[("route", "regions.list")]
        ),
        3.0
    );
    let inf = s.value(
        "orion_proxy_request_duration_seconds_bucket",
        &[("route", "regions.list"), ("le", "+Inf")],
    );
    assert_eq!(inf, 6.0);
    // The timed-out start took at least the read timeout (1 s).
    let under_1s = s.value(
        "orion_proxy_request_duration_seconds_bucket",
        &[("route", "instances.start"), ("le", "0.5")],
    );
    assert_eq!(under_1s, 0.0);

    assert_eq!(
        s.value(
            "orion_proxy_upstream_token_refreshes_total",
            &[("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        s.value(
            "orion_proxy_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    for account in ["acme-orionvm", "globex-orionvm"] {
        assert_eq!(
            s.value(
                "orion_proxy_breaker_state",
                &[("account", account), ("endpoint", "sim0")]
            ),
            0.0
        );
    }
    // Three mutating calls, three audit records.
    assert_eq!(
        s.value("orion_proxy_audit_records_total", &[("result", "ok")]),
        3.0
    );
    // No raw ids or paths in any label.
    let id_like = regex_free_uuid_check(&s.text);
    assert!(id_like.is_none(), "an id in a label: {id_like:?}");

    // Endpoint health comes from the prober.
    poll("upstream_up", Duration::from_secs(10), || async {
        let s = h.proxy.scrape().await;
        (s.value(
            "orion_proxy_upstream_up",
            &[("account", "acme-orionvm"), ("endpoint", "sim0")],
        ) == 1.0)
            .then_some(())
    })
    .await;

    // Reloads by result, and the loaded version.
    let admin = h.key("admin").to_string();
    let text = h.proxy.edit_config(|t| format!("{t}\n# changed\n"));
    h.reload_ok().await;
    h.proxy.write_config(&format!("{text}\nbogus_key: 1\n"));
    assert_eq!(h.reload().await.status(), 422);
    let ready: Value = h
        .http
        .get(h.url("/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let s = h.proxy.scrape().await;
    assert_eq!(
        s.value("orion_proxy_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        s.value("orion_proxy_config_reloads_total", &[("result", "error")]),
        1.0
    );
    let version = ready["config_version"].as_str().unwrap();
    assert_eq!(
        s.value("orion_proxy_config_info", &[("version", version)]),
        1.0
    );
    assert_eq!(s.sum("orion_proxy_config_info", &[]), 1.0);
    // The failed reload is visible until a reload succeeds, with the time of the last success.
    assert_eq!(
        s.value("orion_proxy_config_last_reload_successful", &[]),
        0.0
    );
    assert!(
        s.value(
            "orion_proxy_config_last_reload_success_timestamp_seconds",
            &[]
        ) >= loaded_at
    );

    // Usage per client over the same traffic.
    let usage: Value = h
        .proxy
        .admin_get(&admin, "/admin/usage?tenant=acme")
        .await
        .json()
        .await
        .unwrap();
    let client = |p: &str| {
        usage["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["principal"] == p)
            .cloned()
            .unwrap_or_else(|| panic!("{p} in {usage}"))
    };
    // admin: instances list, 3 regions, 2 templates (429), disks (503), stop (502), start (504).
    let a = client("key:admin");
    assert_eq!(a["tenant"], "acme");
    for w in ["last_minute", "last_hour", "last_day"] {
        assert_eq!(
            a[w],
            json!({"requests": 9, "errors": 3, "rate_limited": 2}),
            "{w}: {usage}"
        );
    }
    assert_eq!(
        client("key:viewer")["last_hour"],
        json!({"requests": 1, "errors": 1, "rate_limited": 0})
    );
    assert!(
        usage["clients"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["tenant"] == "acme"),
        "{usage}"
    );
    assert_eq!(usage["tenants"][0]["tenant"], "acme");
    assert_eq!(usage["tenants"][0]["last_minute"]["requests"], 10);
    let bad = h.proxy.admin_get(&admin, "/admin/usage?bogus=1").await;
    expect_error(bad, 400, "invalid_request").await;
    let forbidden = h.proxy.admin_get(h.key("viewer"), "/admin/usage").await;
    expect_error(forbidden, 403, "forbidden").await;

    // The facade's own calls to OrionVM count in the account's series too.
    let before = h.proxy.scrape().await.value(
        "orion_proxy_upstream_requests_total",
        &[
            ("account", "acme-orionvm"),
            ("endpoint", "sim0"),
            ("result", "2xx"),
        ],
    );
    assert_eq!(h.get(&admin, "/v1/instances").await.status(), 200);
    poll(
        "the facade's call counted",
        Duration::from_secs(10),
        || async {
            let s = h.proxy.scrape().await;
            (s.value(
                "orion_proxy_upstream_requests_total",
                &[
                    ("account", "acme-orionvm"),
                    ("endpoint", "sim0"),
                    ("result", "2xx"),
                ],
            ) > before)
                .then_some(())
        },
    )
    .await;
}

/// A UUID inside a label value, if any.
fn regex_free_uuid_check(text: &str) -> Option<String> {
    for line in text.lines().filter(|l| l.starts_with("orion_proxy_")) {
        if let Some(labels) = line.split_once('{').map(|(_, r)| r) {
            for part in labels.split('"') {
                let p = part.as_bytes();
                if p.len() == 36 && p[8] == b'-' && p[13] == b'-' && p[18] == b'-' && p[23] == b'-'
                {
                    return Some(line.to_string());
                }
                if part.starts_with("/api/") {
                    return Some(line.to_string());
                }
            }
        }
    }
    None
}

/// Metric names in PromQL expressions (`orion_proxy_...`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("orion_proxy_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn conf(path: &str) -> String {
    std::fs::read_to_string(format!("{}/conf/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Every expression of the dashboard (panels' targets, templating queries).
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

#[test]
fn promtool_checks_the_alert_rules() {
    let path = format!("{}/conf/prometheus-alerts.yaml", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("promtool")
        .args(["check", "rules", &path])
        .output()
        .expect("promtool (scripts/setup installs Debian's prometheus package)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS"), "{text}");
    // The rules' unit tests: the alerts fire (and stay quiet) on the series they are for.
    let path = format!(
        "{}/conf/prometheus-alerts.test.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = std::process::Command::new("promtool")
        .args(["test", "rules", &path])
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_name_only_existing_metrics() {
    let h = Harness::start_with(|c| c.read_timeout_ms = 5000).await;
    traffic(&h).await;
    let s = poll("metrics settle", Duration::from_secs(60), || async {
        let s = h.proxy.scrape().await;
        (s.value("orion_proxy_requests_in_flight", &[]) == 0.0
            && s.sum(
                "orion_proxy_requests_total",
                &[("route", "instances.start")],
            ) == 1.0)
            .then_some(s)
    })
    .await;
    let exposed: BTreeSet<String> = s.samples.iter().map(|x| x.name.clone()).collect();

    let dashboard: Value = serde_json::from_str(&conf("grafana-dashboard.json")).unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "dashboard has {} queries", exprs.len());

    let rules: serde_yaml::Value = serde_yaml::from_str(&conf("prometheus-alerts.yaml")).unwrap();
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            if let Some(e) = rule["expr"].as_str() {
                exprs.push(e.to_string());
            }
            if let Some(a) = rule["alert"].as_str() {
                alerts.insert(a.to_string());
            }
        }
    }
    for want in [
        "OrionProxyHighErrorRate",
        "OrionProxyUpstreamDown",
        "OrionProxyBreakerOpen",
        "OrionProxyHighLatencyP99",
        "OrionProxyRateLimitStorm",
        "OrionProxyConfigReloadFailed",
        "OrionProxyDown",
        "OrionProxyAbsent",
        "OrionProxyConfigReloadFailing",
        "OrionProxyCertificateExpiring",
        "OrionProxyAuthFailureSpike",
    ] {
        assert!(alerts.contains(want), "alert {want} missing: {alerts:?}");
    }

    let mut named = BTreeSet::new();
    for e in &exprs {
        named.extend(metric_names(e));
    }
    assert!(named.len() >= 8, "{named:?}");
    // Exposed only with a TLS proxy listener (the harness's is plain HTTP);
    // tests/e2e/observe_tls.rs checks them on a TLS listener.
    let tls_only = [
        "orion_proxy_tls_certificate_expiration_timestamp_seconds",
        "orion_proxy_tls_handshakes_total",
    ];
    let missing: Vec<&String> = named
        .iter()
        .filter(|n| !exposed.contains(*n) && !tls_only.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "queries name metrics the proxy does not expose: {missing:?}\nexposed: {exposed:?}"
    );
}
