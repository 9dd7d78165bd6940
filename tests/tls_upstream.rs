//! OrionVM over HTTPS: certificate and name checks with SNI, a custom CA from `ca_file`, for
//! both the proxied calls (Pingora) and the token fetch (the proxy's own client).

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::sync::Arc;

struct TlsFront {
    url: String,
    ca_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// A TLS terminator on a loopback port, with a certificate for 127.0.0.1 and orionvm.test
/// signed by a private CA, relaying to the simulator.
async fn tls_front(upstream: std::net::SocketAddr) -> TlsFront {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "orion test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params =
        CertificateParams::new(vec!["orionvm.test".to_string(), "127.0.0.1".to_string()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    TlsFront {
        url,
        ca_path,
        _dir: dir,
    }
}

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
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "proxy test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["proxy.test".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("proxy.crt"), dir.path().join("proxy.key"));
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();

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
        .add_root_certificate(reqwest::Certificate::from_pem(ca_cert.pem().as_bytes()).unwrap())
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
