//! The proxy as a service operators run (issue 18): it tells systemd when it is ready, exits
//! non-zero naming a listener it cannot bind, reloads through `orion-proxy reload` with a
//! result, renews its certificate on reload, speaks HTTP/2 on its TLS listener, and hands its
//! listening sockets (proxy, admin and metrics listeners) to a process started with
//! `run --upgrade` without losing a request.

use crate::harness::*;
use rustls_pki_types::pem::PemObject;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A proxy process started by these tests: its directory, config and ports.
pub(crate) struct Service {
    pub(crate) child: ChildGuard,
    pub(crate) dir: PathBuf,
    pub(crate) config_path: PathBuf,
    pub(crate) ports: Ports,
}

impl Service {
    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }
    fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
}

/// The `server` lines every config here adds: the control and upgrade sockets in `dir`.
fn sockets(dir: &Path) -> String {
    format!(
        "  control_socket: \"{}\"\n  upgrade_socket: \"{}\"\n",
        dir.join("control.sock").display(),
        dir.join("upgrade.sock").display()
    )
}

/// Spawns `orion-proxy run` with `args` after `run` (e.g. `--upgrade`), stderr to
/// `dir/stderr.log`, `env` added.
fn spawn(config: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> ChildGuard {
    let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let mut cmd = Command::new(binary());
    cmd.arg("run").args(args).arg("-c").arg(config);
    cmd.env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    ChildGuard(cmd.spawn().unwrap())
}

/// `orion-proxy reload -c config`: success, stdout, stderr.
pub(crate) fn reload_command(config: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(binary())
        .args(["reload", "-c"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The control socket's `status` answer, once the process answers there.
fn status(control: &Path) -> Option<serde_json::Value> {
    orion_proxy::server::control::request(control, "status", Duration::from_secs(5))
        .ok()
        .filter(|v| v["ok"] == true)
}

/// Starts a service with `builder` (+ `extra_server`), waiting until its control socket answers
/// and its proxy port accepts; retries on fresh ports when a port picked free was taken.
pub(crate) async fn start_service(
    builder: &ConfigBuilder,
    edit: impl Fn(&str) -> String,
) -> Service {
    let mut last = String::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap().keep();
        let mut b = builder.clone();
        b.extra_server = format!("{}{}", sockets(&dir), builder.extra_server);
        let ports = Ports::free();
        let config_path = b.write(&dir, &ports);
        let text = std::fs::read_to_string(&config_path).unwrap();
        std::fs::write(&config_path, edit(&text)).unwrap();
        let mut child = spawn(&config_path, &dir, &[], &[]);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = child.0.try_wait() {
                last = format!(
                    "exited with {st}: {}",
                    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
                );
                break;
            }
            if status(&dir.join("control.sock")).is_some_and(|s| s["pid"] == child.0.id())
                && std::net::TcpStream::connect(("127.0.0.1", ports.proxy)).is_ok()
            {
                return Service {
                    child,
                    dir,
                    config_path,
                    ports,
                };
            }
            if Instant::now() > deadline {
                last = "not up in 60 s".into();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("the service did not start: {last}");
}

#[tokio::test]
async fn a_taken_port_ends_the_process_at_once_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigBuilder::unreachable();
    let ports = Ports {
        proxy: port,
        admin: free_port(),
        metrics: free_port(),
    };
    let path = config.write(dir.path(), &ports);
    let mut child = spawn(&path, dir.path(), &[], &[]);
    // Pingora alone retries a taken port for 30 s and then leaves a half-alive process.
    let deadline = Instant::now() + Duration::from_secs(25);
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "still running with its port taken"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    drop(taken);
}

#[tokio::test]
async fn systemd_hears_ready_only_once_the_listener_accepts_and_reloading_around_a_reload() {
    use std::os::unix::net::UnixDatagram;
    let sim = start_sim(sim_options()).await;
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut builder = ConfigBuilder::new(&sim.url());
    builder.extra_server = sockets(dir.path());
    let ports = Ports::free();
    let config = builder.write(dir.path(), &ports);
    let _child = spawn(
        &config,
        dir.path(),
        &[],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    // Wait for READY=1; at that moment the proxy listener must accept and answer.
    loop {
        assert!(Instant::now() < deadline, "no READY=1: {messages:?}");
        let Ok(n) = notify.recv(&mut buf) else {
            continue;
        };
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        messages.push(msg.clone());
        if msg.lines().any(|l| l == "READY=1") {
            let health = reqwest::get(format!("http://127.0.0.1:{}/health", ports.proxy))
                .await
                .expect("the listener accepts when READY=1 is sent");
            assert_eq!(health.status(), 200);
            assert!(msg.contains("STATUS=serving, config version "), "{msg}");
            break;
        }
    }
    // A reload: RELOADING=1 first, then READY=1 with the new version.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap() + "# changed\n",
    )
    .unwrap();
    let (code, out, err) = reload_command(&config);
    assert_eq!(code, Some(0), "{out}{err}");
    let mut reload_msgs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reload_msgs
        .iter()
        .any(|m: &String| m.lines().any(|l| l == "READY=1"))
    {
        assert!(Instant::now() < deadline, "{reload_msgs:?}");
        if let Ok(n) = notify.recv(&mut buf) {
            reload_msgs.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    assert!(
        reload_msgs[0].lines().any(|l| l == "RELOADING=1"),
        "{reload_msgs:?}"
    );
    assert!(
        reload_msgs[0].contains("MONOTONIC_USEC="),
        "{reload_msgs:?}"
    );
}

/// A CA-signed certificate for 127.0.0.1 with `serial`; returns (ca_pem, cert_pem, key_pem).
fn cert_with_serial(ca: &(rcgen::Certificate, rcgen::KeyPair), serial: u64) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &ca.0, &ca.1).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn test_ca() -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "orion-proxy test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    (params.self_signed(&key).unwrap(), key)
}

fn serial_of_der(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.tbs_certificate.raw_serial_as_string()
}

fn serial_of_pem(pem: &str) -> String {
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    serial_of_der(&der)
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to 127.0.0.1:`port` trusting `ca_pem`, with ALPN http/1.1.
async fn tls_connect(port: u16, ca_pem: &str) -> Tls {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

fn peer_serial(tls: &Tls) -> String {
    let certs = tls.get_ref().1.peer_certificates().unwrap();
    serial_of_der(&certs[0])
}

/// One keep-alive `GET /health` on an open connection; the status.
async fn health_on(tls: &mut Tls) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = tls.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                return text[9..12].parse().unwrap();
            }
        }
    }
}

#[tokio::test]
async fn reload_command_reports_and_renews_the_certificate() {
    let ca = test_ca();
    let ca_pem = ca.0.pem();
    let (cert_a, key_a) = cert_with_serial(&ca, 1001);
    let (cert_b, key_b) = cert_with_serial(&ca, 1002);
    let tls_dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (tls_dir.path().join("c.pem"), tls_dir.path().join("k.pem"));
    std::fs::write(&cert_path, &cert_a).unwrap();
    std::fs::write(&key_path, &key_a).unwrap();
    let mut builder = ConfigBuilder::unreachable();
    builder.extra_server = format!(
        "  tls: {{cert_file: \"{}\", key_file: \"{}\"}}\n",
        cert_path.display(),
        key_path.display()
    );
    let svc = start_service(&builder, str::to_string).await;
    let port = svc.ports.proxy;
    let mut before = tls_connect(port, &ca_pem).await;
    assert_eq!(peer_serial(&before), serial_of_pem(&cert_a));
    assert_eq!(health_on(&mut before).await, 200);
    let version_a = status(&svc.control()).unwrap()["config_version"].clone();

    // A renewed certificate and a changed file: reload says so and exits 0.
    std::fs::write(&cert_path, &cert_b).unwrap();
    std::fs::write(&key_path, &key_b).unwrap();
    let text = std::fs::read_to_string(&svc.config_path).unwrap();
    std::fs::write(&svc.config_path, format!("{text}# renewed\n")).unwrap();
    let (code, out, err) = reload_command(&svc.config_path);
    assert_eq!(code, Some(0), "{out}{err}");
    let version_b = status(&svc.control()).unwrap()["config_version"].clone();
    assert_ne!(version_a, version_b);
    assert!(
        out.contains(version_b.as_str().unwrap()),
        "{out} names {version_b}"
    );
    // New handshakes get the new certificate; the connection made before goes on.
    let mut after = tls_connect(port, &ca_pem).await;
    assert_eq!(peer_serial(&after), serial_of_pem(&cert_b));
    assert_eq!(health_on(&mut after).await, 200);
    assert_eq!(health_on(&mut before).await, 200);

    // A broken file: exit 3, every error printed, the old config (and certificate) still serve.
    std::fs::write(
        &svc.config_path,
        text.replace("server:\n", "server:\n  colour: blue\n")
            .replace("threads: 2", "threads: many"),
    )
    .unwrap();
    let (code, out, err) = reload_command(&svc.config_path);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(
        err.contains("colour") && err.contains("server.threads"),
        "{err}"
    );
    assert!(err.contains(version_b.as_str().unwrap()), "{err}");
    assert_eq!(status(&svc.control()).unwrap()["config_version"], version_b);
    let mut again = tls_connect(port, &ca_pem).await;
    assert_eq!(peer_serial(&again), serial_of_pem(&cert_b));
    assert_eq!(health_on(&mut again).await, 200);
    // SIGHUP still reloads (here: refused again, and the process stays up).
    unsafe {
        libc::kill(svc.child.0.id() as i32, libc::SIGHUP);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(health_on(&mut again).await, 200);
    assert!(svc.stderr().contains("configuration reload failed"));
}

/// `curl --http2` through the TLS listener: method, path, key, JSON body; status and body.
fn curl_h2(
    port: u16,
    ca: &Path,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&serde_json::Value>,
) -> (String, u16, serde_json::Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http2", "--cacert"])
        .arg(ca)
        .args(["-X", method, "-H"])
        .arg(format!("Authorization: Bearer {key}"))
        .args(["-w", "\n%{http_version} %{http_code}"]);
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "--data"])
            .arg(b.to_string());
    }
    cmd.arg(format!("https://127.0.0.1:{port}{path}"));
    let out = cmd.output().unwrap();
    if !out.status.success() {
        eprintln!("curl: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut tail = tail.split_whitespace();
    let version = tail.next().unwrap_or_default().to_string();
    let status = tail.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (version, status, json)
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_on_the_tls_listener_runs_the_lifecycle() {
    let sim = start_sim(sim_options()).await;
    let ca = test_ca();
    let (cert, key) = cert_with_serial(&ca, 7);
    let tls_dir = tempfile::tempdir().unwrap();
    let ca_path = tls_dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.0.pem()).unwrap();
    std::fs::write(tls_dir.path().join("c.pem"), cert).unwrap();
    std::fs::write(tls_dir.path().join("k.pem"), key).unwrap();
    let mut builder = ConfigBuilder::new(&sim.url());
    builder.extra_server = format!(
        "  tls: {{cert_file: \"{}\", key_file: \"{}\"}}\n",
        tls_dir.path().join("c.pem").display(),
        tls_dir.path().join("k.pem").display()
    );
    let svc = start_service(&builder, str::to_string).await;
    let port = svc.ports.proxy;
    let admin = builder.key("admin").to_string();
    let h2 = |method: &str, path: &str, body: Option<serde_json::Value>| {
        let (v, s, j) = curl_h2(port, &ca_path, method, path, &admin, body.as_ref());
        assert_eq!(v, "2", "{method} {path} over HTTP/{v}");
        (s, j)
    };
    let (s, regions) = h2("GET", "/api/v1/regions", None);
    assert_eq!(s, 200, "{regions}");
    let region = regions[0]["id"].as_str().unwrap().to_string();
    let (_, templates) = h2("GET", "/api/v1/templates", None);
    let template = templates
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["region"]["id"] == region.as_str())
        .unwrap()["id"]
        .clone();
    let (_, tiers) = h2("GET", "/api/v1/performance_tiers/instances", None);
    let tier = tiers
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["region"]["id"] == region.as_str())
        .unwrap()["id"]
        .clone();
    let (_, dtiers) = h2("GET", "/api/v1/performance_tiers/disks", None);
    let dtier = dtiers
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["region"]["id"] == region.as_str())
        .unwrap()["id"]
        .clone();
    let (s, disk) = h2(
        "POST",
        "/api/v1/disks",
        Some(
            serde_json::json!({"name": "h2-boot", "performance_tier": dtier, "region": region, "size": 20, "template": template}),
        ),
    );
    assert_eq!(s, 200, "{disk}");
    let disk_id = disk["id"].as_str().unwrap().to_string();
    let until = |path: String, field: &str, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, v) = h2("GET", &path, None);
            if v[field] == want {
                return;
            }
            assert!(Instant::now() < deadline, "{path}: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    until(format!("/api/v1/disks/{disk_id}"), "state", "unattached");
    let (s, inst) = h2(
        "POST",
        "/api/v1/instances/assemble",
        Some(
            serde_json::json!({"name": "h2-1", "memory": 1024, "performance_tier": tier, "region": region, "disks": [disk_id], "virtualization": "hvm", "boot_device": "disk"}),
        ),
    );
    assert_eq!(s, 200, "{inst}");
    let id = inst["id"].as_str().unwrap().to_string();
    let (s, _) = h2(
        "POST",
        &format!("/api/v1/instances/{id}/start"),
        Some(serde_json::json!({})),
    );
    assert_eq!(s, 200);
    until(format!("/api/v1/instances/{id}/state"), "state", "running");
    // The one error body, over HTTP/2 as over HTTP/1.1.
    let (s, err) = h2(
        "POST",
        &format!("/api/v1/instances/{id}/start"),
        Some(serde_json::json!({})),
    );
    assert_eq!(s, 422);
    assert_error_body(&err, 422, "validation_failed");
    let (s, _) = h2(
        "POST",
        &format!("/api/v1/instances/{id}/stop"),
        Some(serde_json::json!({})),
    );
    assert_eq!(s, 200);
    until(format!("/api/v1/instances/{id}/state"), "state", "stopped");
    let (s, deleted) = h2("DELETE", &format!("/api/v1/instances/{id}"), None);
    assert_eq!(s, 200, "{deleted}");
    let (v, s, err) = curl_h2(
        port,
        &ca_path,
        "GET",
        "/api/v1/instances",
        "not-a-key",
        None,
    );
    assert_eq!((v.as_str(), s), ("2", 401));
    assert_eq!(err["status"], 401, "{err}");
    assert!(err["request_id"].is_string(), "{err}");
    // Logged like HTTP/1.1 calls: the access log has the calls with their statuses.
    let log_path = svc.dir.join("access.log");
    poll(
        "access log of the h2 calls",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let done = text.contains(&format!("/api/v1/instances/{id}/stop"))
                && text.contains("\"http.response.status_code\":422");
            async move { done.then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_loses_no_request() {
    let mut builder = ConfigBuilder::unreachable();
    // The access logs tell which process answered each request: log the /health probes too.
    builder.extra_logging = "  access: {skip_routes: []}\n".into();
    // The old process drains for 3 s after it stops accepting.
    let grace = |t: &str| t.replace("grace_period_seconds: 0", "grace_period_seconds: 3");
    let mut old = start_service(&builder, grace).await;
    let old_pid = old.child.0.id();
    let url = format!("http://127.0.0.1:{}/health", old.ports.proxy);

    // 4 keep-alive clients, each sending one request after the other with its own request id.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let sent = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (stop, failures, sent, url) =
            (stop.clone(), failures.clone(), sent.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut ids = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("upgrade-{c}-{n}");
                n += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                match http.get(&url).header("x-request-id", &id).send().await {
                    Ok(r) if r.status() == 200 => ids.push(id),
                    Ok(r) => failures.lock().push(format!("{id}: status {}", r.status())),
                    Err(e) => failures.lock().push(format!("{id}: {e:?}")),
                }
                // Paced: unpaced, the clients sent about 8,000 requests a second, and the access
                // log rotated (100 MB) under the test, which then missed lines that were there.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            ids
        }));
    }
    // One keep-alive client on the admin listener (`GET /admin/config` with the admin key) and
    // one on the metrics listener (`GET /metrics`): every answer is 200 and says which config
    // version (so which process) answered.
    let old_version = status(&old.control()).unwrap()["config_version"]
        .as_str()
        .unwrap()
        .to_string();
    let admin_key = builder.key("admin").to_string();
    let side = |url: String, key: Option<String>| {
        let (stop, failures) = (stop.clone(), failures.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut versions = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let mut req = http.get(&url);
                if let Some(k) = &key {
                    req = req.bearer_auth(k);
                }
                match req.send().await {
                    Ok(r) if r.status() == 200 => {
                        let text = r.text().await.unwrap_or_default();
                        versions.push(version_in(&text));
                    }
                    Ok(r) => failures
                        .lock()
                        .push(format!("{url}: status {}", r.status())),
                    Err(e) => failures.lock().push(format!("{url}: {e:?}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            versions
        })
    };
    let admin_side = side(
        format!("http://127.0.0.1:{}/admin/config", old.ports.admin),
        Some(admin_key),
    );
    let metrics_side = side(
        format!("http://127.0.0.1:{}/metrics", old.ports.metrics),
        None,
    );
    let warm = Instant::now();
    while sent.load(Ordering::Relaxed) < 200 && warm.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Two keep-alive connections to the old process's admin and metrics listeners, opened now
    // and used again once it hands over (below).
    let idle = reqwest::Client::builder()
        .pool_max_idle_per_host(2)
        .build()
        .unwrap();
    let admin_url = format!("http://127.0.0.1:{}/admin/config", old.ports.admin);
    let metrics_url = format!("http://127.0.0.1:{}/metrics", old.ports.metrics);
    let ask = |url: &str| {
        let req = idle.get(url);
        if url.contains("/admin/") {
            req.bearer_auth(builder.key("admin"))
        } else {
            req
        }
    };
    for url in [&admin_url, &metrics_url] {
        let r = ask(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["connection"], "keep-alive", "{url}");
        assert_eq!(version_in(&r.text().await.unwrap()), old_version);
    }

    // The new process: same listeners and sockets, its own log files.
    let new_dir = tempfile::tempdir().unwrap().keep();
    let mut b = builder.clone();
    b.extra_server = format!("{}{}", sockets(&old.dir), builder.extra_server);
    let new_config = b.write(&new_dir, &old.ports);
    let text = std::fs::read_to_string(&new_config).unwrap();
    std::fs::write(&new_config, grace(&text)).unwrap();
    let mut new = spawn(&new_config, &new_dir, &["--upgrade"], &[]);
    let new_pid = new.0.id();
    // Once the old process hands over (it logs that after it started draining), an answer on a
    // connection it already had says `Connection: close`, so that the client's next request
    // goes to a new connection (which the new process accepts), not after its 5 s of
    // accepting, nor cut when it exits.
    poll(
        "the old process hands over",
        Duration::from_secs(60),
        || {
            let handing = old.stderr().contains("handing the listening sockets over");
            async move { handing.then_some(()) }
        },
    )
    .await;
    for url in [&admin_url, &metrics_url] {
        let r = ask(url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(r.headers()["connection"], "close", "{url}");
        assert_eq!(version_in(&r.text().await.unwrap()), old_version, "{url}");
    }
    // The old one hands over, drains and exits 0; the new one answers on the control socket.
    let deadline = Instant::now() + Duration::from_secs(90);
    let old_status = loop {
        if let Some(st) = old.child.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            new.0.try_wait().unwrap().is_none(),
            "the new process exited: {}",
            std::fs::read_to_string(new_dir.join("stderr.log")).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "the old process did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(old_status.success(), "old: {old_status}: {}", old.stderr());
    let new_status = status(&old.control()).unwrap();
    assert_eq!(new_status["pid"], new_pid);
    let new_version = new_status["config_version"].as_str().unwrap().to_string();
    assert_ne!(
        old_version, new_version,
        "the two configs differ (their log paths)"
    );
    // Some more requests to the new one alone, then stop.
    let more = sent.load(Ordering::Relaxed) + 100;
    let until = Instant::now() + Duration::from_secs(30);
    while sent.load(Ordering::Relaxed) < more && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut answered = BTreeSet::new();
    for c in clients {
        answered.extend(c.await.unwrap());
    }
    // The admin and metrics listeners were handed over too: answered throughout (no failure
    // below), first by the old process, last by the new one.
    for (what, side) in [("admin", admin_side), ("metrics", metrics_side)] {
        let versions = side.await.unwrap();
        assert!(
            versions.first() == Some(&old_version) && versions.last() == Some(&new_version),
            "{what}: {} answers, first by {:?}, last by {:?} (old {old_version}, new {new_version})",
            versions.len(),
            versions.first(),
            versions.last()
        );
    }
    let failures = failures.lock().clone();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert!(answered.len() > 300, "{} answered", answered.len());

    // Every request was answered by one of the two: its id is in one of the access logs.
    // The log and its rotated files (`access.log.1`, ...), should it still have rotated.
    let ids_in = |path: PathBuf| -> BTreeSet<String> {
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        for n in 1..=5 {
            let rotated = PathBuf::from(format!("{}.{n}", path.display()));
            text.push_str(&std::fs::read_to_string(rotated).unwrap_or_default());
        }
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["http.request.id"].as_str().map(str::to_string))
            .collect()
    };
    let by_new_path = new_dir.join("access.log");
    let by_old = ids_in(old.dir.join("access.log"));
    // The new process's log is written in batches: wait until it has caught up.
    let by_new = poll("the new access log", Duration::from_secs(15), || {
        let ids = ids_in(by_new_path.clone());
        let complete = answered
            .iter()
            .all(|id| by_old.contains(id) || ids.contains(id));
        async move { complete.then_some(ids) }
    })
    .await;
    assert!(
        by_old.iter().any(|i| answered.contains(i)) && by_new.iter().any(|i| answered.contains(i)),
        "both processes answered some: old {}, new {}",
        by_old.len(),
        by_new.len()
    );
    assert_ne!(old_pid, new_pid);
    drop(new);
}

/// The config version in an admin `/admin/config` answer or a `/metrics` scrape.
fn version_in(text: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        return v["config_version"].as_str().unwrap_or_default().to_string();
    }
    text.lines()
        .find_map(|l| l.strip_prefix("orion_proxy_config_info{version=\""))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_is_off_on_the_plain_listener() {
    let proxy = ProxyProcess::start(&ConfigBuilder::unreachable()).await;
    let out = Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
        ])
        .arg(format!("{}/health", proxy.url))
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout).to_string();
    assert_ne!(version, "2", "cleartext HTTP/2 was accepted");
    // HTTP/1.1 is served as before.
    assert_eq!(
        reqwest::get(format!("{}/health", proxy.url))
            .await
            .unwrap()
            .status(),
        200
    );
}
