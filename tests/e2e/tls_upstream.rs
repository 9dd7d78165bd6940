//! OrionVM over HTTPS: certificate and name checks with SNI, a custom CA from `ca_file`, for
//! both the proxied calls (Pingora) and the token fetch (the proxy's own client).

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_a_private_ca() {
    let sim = start_sim(sim_options()).await;
    let front = tls_front(sim.addr()).await;
    let mut config = ConfigBuilder::new(&front.url);
    config.account_extra = format!("    ca_file: \"{}\"\n", front.ca_path.display());
    let proxy = ProxyProcess::start(&config).await;
    let http = reqwest::Client::new();
    // acme's account uses OAuth2: the token fetch goes over TLS too.
    let r = http
        .get(format!("{}/api/v1/regions", proxy.url))
        .bearer_auth(config.key("admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(sim.tokens_issued(), 1);
    let r = http
        .get(format!("{}/api/v1/instances", proxy.url))
        .bearer_auth(config.key("other_tenant_admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ready = http
        .get(format!("{}/ready", proxy.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused() {
    let sim = start_sim(sim_options()).await;
    let front = tls_front(sim.addr()).await;
    // No ca_file: the system roots do not know the private CA.
    let mut config = ConfigBuilder::new(&front.url);
    config.acme_upstream = Upstream::Static;
    let proxy = ProxyProcess::start(&config).await;
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/api/v1/regions", proxy.url))
        .bearer_auth(config.key("admin"))
        .send()
        .await
        .unwrap();
    expect_error(r, 502, "upstream_unreachable").await;
    assert_eq!(
        sim.calls().api_calls(),
        0,
        "nothing went over the untrusted connection"
    );
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
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/api/v1/regions", proxy.url))
        .bearer_auth(config.key("admin"))
        .send()
        .await
        .unwrap();
    expect_error(r, 502, "upstream_unreachable").await;
    // The certificate's other name works.
    drop(proxy);
    config.endpoint_extra = ", sni: orionvm.test".into();
    let proxy = ProxyProcess::start(&config).await;
    let r = http
        .get(format!("{}/api/v1/regions", proxy.url))
        .bearer_auth(config.key("admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_says_when_orionvm_is_unreachable() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let mut config = ConfigBuilder::new(&closed);
    config.acme_upstream = Upstream::Static;
    let proxy = ProxyProcess::start(&config).await;
    let http = reqwest::Client::new();
    let r = poll(
        "readiness probed",
        std::time::Duration::from_secs(10),
        || async {
            let r = http
                .get(format!("{}/ready", proxy.url))
                .send()
                .await
                .unwrap();
            (r.status() == 503).then_some(r)
        },
    )
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
    let mut child = std::process::Command::new(binary())
        .args(["run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
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
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let _ = child.wait();
}
