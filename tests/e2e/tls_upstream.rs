//! OrionVM over HTTPS: certificate and name checks with SNI, a custom CA from `ca_file`, for
//! both the proxied calls (Pingora) and the token fetch (the proxy's own client).

use crate::harness::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_a_private_ca() {
    let sim = start_sim(sim_options()).await;
    let front = tls_front(sim.addr()).await;
    let h = Harness::start_on(sim, |c| {
        c.sim_urls = vec![front.url.clone()];
        // A loaded machine can take more than the default second for a TLS check (issue 13,
        // finding 14: /ready answered 503 in a fresh-clone run): give each check room, and
        // check often, so that readiness is a condition to wait for, not a race.
        c.account_extra = format!(
            "    ca_file: \"{}\"\n    health_check: {{timeout_ms: 10000, interval_ms: 500}}\n",
            front.ca_path.display()
        );
    })
    .await;
    // acme's account uses OAuth2: the token fetch goes over TLS too.
    let r = h.get(h.key("admin"), "/api/v1/regions").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(h.sim.tokens_issued(), 1);
    let r = h
        .get(h.key("other_tenant_admin"), "/api/v1/instances")
        .await;
    assert_eq!(r.status(), 200);
    // Readiness comes from the background prober, whose first check over TLS may still be
    // under way: wait for it (the endpoint stays down for good if the CA is not used).
    let ready = poll("ready over TLS", Duration::from_secs(90), || async {
        let r = h.http.get(h.url("/ready")).send().await.unwrap();
        (r.status() == 200).then_some(r)
    })
    .await;
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused() {
    let sim = start_sim(sim_options()).await;
    let front = tls_front(sim.addr()).await;
    // No ca_file: the system roots do not know the private CA.
    let h = Harness::start_on(sim, |c| {
        c.sim_urls = vec![front.url.clone()];
        c.acme_upstream = Upstream::Static;
    })
    .await;
    let r = h.get(h.key("admin"), "/api/v1/regions").await;
    expect_error(r, 502, "upstream_unreachable").await;
    assert_eq!(
        h.sim.calls().api_calls(),
        0,
        "nothing went over the untrusted connection"
    );
}

/// Issue 13, finding 11: an account without the private CA got 502 on its own, but 200 once
/// another account had opened a verified connection to the same address, because Pingora's
/// pool reused that connection. Pools are now keyed by account and verification settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_account_reuses_a_connection_verified_with_another_account_s_ca() {
    let sim = start_sim(sim_options()).await;
    let front = tls_front(sim.addr()).await;
    let h = Harness::start_on(sim, |c| {
        c.sim_urls = vec![front.url.clone()];
        c.acme_upstream = Upstream::Static;
        // acme trusts the private CA, globex (system roots) does not.
        c.account_extra = format!("    ca_file: \"{}\"\n", front.ca_path.display());
        c.globex_account_extra = Some(String::new());
    })
    .await;
    for round in 0..3 {
        let r = h.get(h.key("admin"), "/api/v1/regions").await;
        assert_eq!(r.status(), 200, "acme, round {round}");
        let r = h.get(h.key("other_tenant_admin"), "/api/v1/regions").await;
        expect_error(r, 502, "upstream_unreachable").await;
    }
    // Every call that reached OrionVM was acme's.
    for call in h.sim.recent_requests() {
        if call.path.starts_with("/api/") {
            assert_eq!(call.account.as_deref(), Some("acme"), "{call:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_must_match_the_sni_name() {
    let sim = start_sim(sim_options()).await;
    let front = tls_front(sim.addr()).await;
    let mut config = ConfigBuilder::new(&front.url);
    config.acme_upstream = Upstream::Static;
    config.account_extra = format!("    ca_file: \"{}\"\n", front.ca_path.display());
    // Right CA, wrong name.
    config.endpoint_extra = ", sni: api.other.example".into();
    let proxy = ProxyProcess::start(&config).await;
    let r = proxy.get(config.key("admin"), "/api/v1/regions").await;
    expect_error(r, 502, "upstream_unreachable").await;
    // The certificate's other name works.
    drop(proxy);
    config.endpoint_extra = ", sni: orionvm.test".into();
    let proxy = ProxyProcess::start(&config).await;
    let r = proxy.get(config.key("admin"), "/api/v1/regions").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_says_when_orionvm_is_unreachable() {
    let proxy = ProxyProcess::start(&ConfigBuilder::unreachable()).await;
    let http = reqwest::Client::new();
    let r = poll("readiness probed", Duration::from_secs(10), || async {
        let r = http
            .get(format!("{}/ready", proxy.url))
            .send()
            .await
            .unwrap();
        (r.status() == 503).then_some(r)
    })
    .await;
    let body = expect_error(r, 503, "not_ready").await;
    assert_eq!(
        body["details"]["accounts"]["acme-orionvm"]["ready"], false,
        "{body}"
    );
    assert_eq!(
        http.get(format!("{}/health", proxy.url))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "alive all the same"
    );
}

/// The proxy's own listener over TLS (production's `server.tls`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_listener_serves_https() {
    let sim = start_sim(sim_options()).await;
    let pki = test_pki(&["proxy.test", "127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("proxy.crt"), dir.path().join("proxy.key"));
    std::fs::write(&cert, &pki.cert_pem).unwrap();
    std::fs::write(&key, &pki.key_pem).unwrap();

    let mut config = ConfigBuilder::new(&sim.url());
    config.extra_server = format!(
        "  tls: {{cert_file: \"{}\", key_file: \"{}\"}}\n",
        cert.display(),
        key.display()
    );
    let ports = Ports::free();
    let path = config.write(dir.path(), &ports);
    let _proxy = spawn_proxy(&path, std::process::Stdio::null());
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{}", ports.proxy);
    let health = poll(
        "HTTPS health",
        std::time::Duration::from_secs(30),
        || async {
            let r = https.get(format!("{base}/health")).send().await.ok()?;
            (r.status() == 200).then_some(r)
        },
    )
    .await;
    assert_eq!(health.status(), 200);
    let r = https
        .get(format!("{base}/api/v1/regions"))
        .bearer_auth(config.key("viewer"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP on the TLS port is not served.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/health", ports.proxy))
        .send()
        .await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));
}
