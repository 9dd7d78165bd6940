//! The TLS listener's series (issue 16): handshakes by result, accepted and open connections
//! by listener, and the days until the listener certificate expires, on a certificate made with
//! `openssl`; the certificate alert rule fires on the value the proxy reports and stops after a
//! reload with a renewed certificate.

use crate::harness::*;
use crate::service_ops::{reload_command, start_service};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A self-signed certificate for 127.0.0.1 valid for `days`, made with `openssl` (an EC key),
/// written to `cert` and `key`.
fn openssl_cert(cert: &Path, key: &Path, days: u32) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args([
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-days")
        .arg(days.to_string())
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn scrape(port: u16) -> Scrape {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    Scrape::from_text(text)
}

/// `GET /health` over TLS with curl (certificate not checked: it is self-signed); the status.
fn curl_health(port: u16) -> String {
    let out = Command::new("curl")
        .args(["-sk", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://127.0.0.1:{port}/health"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Plain HTTP sent to the TLS port: the handshake fails, the connection is closed.
async fn plain_http_to(port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut buf)).await;
}

/// The days until the listener certificate expires, from the scraped expiry time.
fn days_left(s: &Scrape) -> f64 {
    let at = s.value(
        "orion_proxy_tls_certificate_expiration_timestamp_seconds",
        &[("listener", "proxy")],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    (at - now) / 86_400.0
}

/// Runs the shipped `OrionProxyCertificateExpiring` rule with `promtool test rules` on an expiry
/// `days` after the evaluation (as the proxy reported it, to two decimals): `Ok` when it fires as `fires`
/// says, `Err` with promtool's output otherwise.
fn certificate_alert(dir: &Path, days: f64, fires: bool) -> Result<(), String> {
    let rules_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/prometheus-alerts.yaml");
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&rules_path).unwrap()).unwrap();
    let rule = rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .find(|r| r["alert"] == "OrionProxyCertificateExpiring")
        .expect("the certificate rule")
        .clone();
    // Prometheus' `humanize` of a value from 1 to 1000 with two decimals is its shortest form.
    let value: f64 = format!("{days:.2}").parse().unwrap();
    // At the evaluation (5m), time() is 300: the series holds the expiry `value` days later.
    let expires_at = format!("{:.0}", 300.0 + value * 86_400.0);
    let expected = if fires {
        let description = rule["annotations"]["description"].as_str().unwrap();
        format!(
            "\n          - exp_labels: {{severity: warning, job: orion-proxy, instance: \"edge:9090\", listener: proxy}}\n            exp_annotations:\n              summary: \"orion-proxy edge:9090: the proxy listener certificate expires in {value} days\"\n              description: {}\n",
            serde_json::to_string(description).unwrap()
        )
    } else {
        " []\n".to_string()
    };
    let test = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n      - series: 'orion_proxy_tls_certificate_expiration_timestamp_seconds{{job=\"orion-proxy\", instance=\"edge:9090\", listener=\"proxy\"}}'\n        values: '{expires_at}x10'\n    alert_rule_test:\n      - eval_time: 5m\n        alertname: OrionProxyCertificateExpiring\n        exp_alerts:{expected}",
        rules_path.display()
    );
    let path = dir.join("certificate-rule.test.yaml");
    std::fs::write(&path, &test).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .expect("promtool (scripts/setup installs Debian's prometheus package)");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{test}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_series_and_the_certificate_expiry_alert() {
    let tls_dir = tempfile::tempdir().unwrap();
    let (cert, key) = (tls_dir.path().join("c.pem"), tls_dir.path().join("k.pem"));
    openssl_cert(&cert, &key, 5);
    let mut builder = ConfigBuilder::unreachable();
    builder.extra_server = format!(
        "  tls: {{cert_file: \"{}\", key_file: \"{}\"}}\n",
        cert.display(),
        key.display()
    );
    let svc = start_service(&builder, str::to_string).await;
    let (proxy, metrics) = (svc.ports.proxy, svc.ports.metrics);

    // One handshake that succeeds, one that fails (plain HTTP on the TLS port).
    assert_eq!(curl_health(proxy), "200");
    plain_http_to(proxy).await;
    let s = poll("handshakes counted", Duration::from_secs(30), || async {
        let s = scrape(metrics).await;
        let counted = |result| {
            s.value(
                "orion_proxy_tls_handshakes_total",
                &[("listener", "proxy"), ("result", result)],
            )
        };
        (counted("success") >= 1.0 && counted("failure") >= 1.0).then_some(s)
    })
    .await;
    assert_eq!(
        s.value(
            "orion_proxy_tls_handshakes_total",
            &[("listener", "proxy"), ("result", "timeout")]
        ),
        0.0
    );
    // Accepted: both, counted before the handshake. This scrape's own connection is open on the
    // metrics listener.
    let accepted =
        |s: &Scrape, l| s.value("orion_proxy_connections_accepted_total", &[("listener", l)]);
    let open = |s: &Scrape, l| s.value("orion_proxy_connections_open", &[("listener", l)]);
    assert!(accepted(&s, "proxy") >= 2.0, "{}", s.text);
    assert!(accepted(&s, "metrics") >= 1.0, "{}", s.text);
    assert!(open(&s, "metrics") >= 1.0, "{}", s.text);
    assert!(
        s.types
            .get("orion_proxy_connections_open")
            .is_some_and(|t| t == "gauge")
    );
    // The admin listener counts its own.
    let before = accepted(&s, "admin");
    let r = reqwest::get(format!("http://127.0.0.1:{}/openapi.json", svc.ports.admin))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    poll(
        "admin connection counted",
        Duration::from_secs(30),
        || async {
            let s = scrape(metrics).await;
            (accepted(&s, "admin") > before).then_some(())
        },
    )
    .await;
    // The closed proxy connections are no longer open.
    poll(
        "proxy connections closed",
        Duration::from_secs(30),
        || async { (open(&scrape(metrics).await, "proxy") == 0.0).then_some(()) },
    )
    .await;
    // A failed handshake is counted, not logged as an ERROR line each.
    assert!(
        !svc.stderr().contains("Downstream handshake error"),
        "{}",
        svc.stderr()
    );

    // The whole scrape, TLS series included, is clean for Prometheus' linter.
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
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

    // The certificate expires in 5 days: the gauge says about 5, and the alert fires on it.
    let days = days_left(&s);
    assert!((4.9..=5.0).contains(&days), "{days}");
    certificate_alert(tls_dir.path(), days, true).unwrap();
    // The check can fail: the same value does not pass as "quiet".
    assert!(certificate_alert(tls_dir.path(), days, false).is_err());

    // Renewed for 90 days and reloaded: the gauge moves, the alert stops.
    openssl_cert(&cert, &key, 90);
    let text = std::fs::read_to_string(&svc.config_path).unwrap();
    std::fs::write(&svc.config_path, format!("{text}# renewed\n")).unwrap();
    let (code, out, err) = reload_command(&svc.config_path);
    assert_eq!(code, Some(0), "{out}{err}");
    let days = days_left(&scrape(metrics).await);
    assert!((89.9..=90.0).contains(&days), "{days}");
    certificate_alert(tls_dir.path(), days, false).unwrap();
    assert_eq!(curl_health(proxy), "200");
}
