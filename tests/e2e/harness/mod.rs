//! Test harness: the OrionVM simulator in-process on an ephemeral port, the proxy binary as a
//! child process with a generated config on free loopback ports.

pub mod console;
pub mod facade;
pub mod identity;
pub mod metrics;
pub mod redis;
pub mod tls;

pub use metrics::Scrape;
use orion_sim::{self as sim, SimAccount, SimClient, SimHandle, SimOptions, SimTimings};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACME_CLIENT_ID: &str = "acme-test-client";
pub const ACME_CLIENT_SECRET: &str = "acme-test-secret-4f1d2c9e";
pub const ACME_STATIC_TOKEN: &str =
    "acme-static-token-0123456789abcdef0123456789abcdef0123456789abcd";
pub const GLOBEX_CLIENT_ID: &str = "globex-test-client";
pub const GLOBEX_CLIENT_SECRET: &str = "globex-test-secret-77aa01";
pub const GLOBEX_STATIC_TOKEN: &str =
    "globex-static-token-0123456789abcdef0123456789abcdef0123456789ab";

pub fn sim_options() -> SimOptions {
    SimOptions {
        accounts: vec![
            SimAccount {
                name: "acme".into(),
                clients: vec![SimClient {
                    client_id: ACME_CLIENT_ID.into(),
                    client_secret: ACME_CLIENT_SECRET.into(),
                }],
                static_tokens: vec![ACME_STATIC_TOKEN.into()],
            },
            SimAccount {
                name: "globex".into(),
                clients: vec![SimClient {
                    client_id: GLOBEX_CLIENT_ID.into(),
                    client_secret: GLOBEX_CLIENT_SECRET.into(),
                }],
                static_tokens: vec![GLOBEX_STATIC_TOKEN.into()],
            },
        ],
        timings: SimTimings::default(),
        token_ttl: Duration::from_secs(3600),
        signature: None,
    }
}

pub async fn start_sim(opts: SimOptions) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sim");
    sim::start(listener, opts).await.expect("start sim")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A generated API key and the config line for it.
#[derive(Clone)]
pub struct Key {
    pub name: String,
    pub key: String,
    pub roles: Vec<String>,
    pub tenant: String,
    pub enabled: bool,
}

impl Key {
    pub fn new(name: &str, roles: &[&str], tenant: &str) -> Key {
        Key {
            name: name.into(),
            key: orion_proxy::auth::api_keys::generate(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            tenant: tenant.into(),
            enabled: true,
        }
    }
    fn yaml(&self) -> String {
        format!(
            "  - {{name: {}, hash: \"sha256:{}\", roles: [{}], tenant: {}, enabled: {}}}\n",
            self.name,
            hex::encode(orion_proxy::auth::api_keys::hash_key(&self.key)),
            self.roles.join(", "),
            self.tenant,
            self.enabled
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Upstream {
    OAuth2,
    Static,
}

/// Builds a proxy config for the simulator at `sim_url`.
#[derive(Clone)]
pub struct ConfigBuilder {
    pub sim_urls: Vec<String>,
    pub acme_upstream: Upstream,
    pub keys: Vec<Key>,
    pub extra_server: String,
    pub extra_top: String,
    /// Lines added under `logging:` (indented by two spaces).
    pub extra_logging: String,
    pub max_body_bytes: usize,
    pub read_timeout_ms: u64,
    /// YAML for the acme account's `credentials:` (indented six spaces), replacing
    /// `acme_upstream` (signing tests).
    pub acme_credentials: Option<String>,
    /// Appended inside each endpoint's flow map (e.g. `, sni: other.example`).
    pub endpoint_extra: String,
    /// Extra lines of each account (indented four spaces, e.g. a `ca_file`).
    pub account_extra: String,
    /// When set, the globex account's extra lines instead of `account_extra`.
    pub globex_account_extra: Option<String>,
    /// The admin listener's certificate and key files (`server.admin_tls`): it serves HTTPS.
    pub admin_tls: Option<(PathBuf, PathBuf)>,
}

impl ConfigBuilder {
    pub fn new(sim_url: &str) -> Self {
        ConfigBuilder {
            sim_urls: vec![sim_url.to_string()],
            acme_upstream: Upstream::OAuth2,
            keys: vec![
                Key::new("viewer", &["viewer"], "acme"),
                Key::new("operator", &["operator"], "acme"),
                Key::new("admin", &["admin", "process_admin"], "acme"),
                Key::new("other_tenant_admin", &["admin"], "globex"),
            ],
            extra_server: String::new(),
            extra_top: String::new(),
            extra_logging: String::new(),
            max_body_bytes: 65536,
            read_timeout_ms: 5000,
            acme_credentials: None,
            endpoint_extra: String::new(),
            account_extra: String::new(),
            globex_account_extra: None,
            admin_tls: None,
        }
    }

    /// A config whose OrionVM endpoint is a loopback port nobody listens on (acme on a static
    /// token, so that the proxy starts without fetching one).
    pub fn unreachable() -> Self {
        let mut config = ConfigBuilder::new(&format!("http://127.0.0.1:{}", free_port()));
        config.acme_upstream = Upstream::Static;
        config
    }

    pub fn key(&self, name: &str) -> &str {
        &self.keys.iter().find(|k| k.name == name).expect("key").key
    }

    /// Writes secrets and config into `dir`; returns the config path.
    pub fn write(&self, dir: &std::path::Path, ports: &Ports) -> PathBuf {
        let secret = |name: &str, value: &str| {
            let p = dir.join(name);
            std::fs::write(&p, value).unwrap();
            p.display().to_string()
        };
        let acme_creds = match self.acme_upstream {
            Upstream::OAuth2 => format!(
                "      type: oauth2\n      client_id: {{file: \"{}\"}}\n      client_secret: {{file: \"{}\"}}\n",
                secret("acme-id", ACME_CLIENT_ID),
                secret("acme-secret", ACME_CLIENT_SECRET)
            ),
            Upstream::Static => format!(
                "      type: static_token\n      token: {{file: \"{}\"}}\n",
                secret("acme-token", ACME_STATIC_TOKEN)
            ),
        };
        let acme_creds = self.acme_credentials.clone().unwrap_or(acme_creds);
        let globex_token = secret("globex-token", GLOBEX_STATIC_TOKEN);
        let endpoints: String = self
            .sim_urls
            .iter()
            .enumerate()
            .map(|(i, u)| {
                format!(
                    "      - {{url: \"{u}\", name: sim{i}{}}}\n",
                    self.endpoint_extra
                )
            })
            .collect();
        let keys: String = self.keys.iter().map(Key::yaml).collect();
        let log = dir.join("access.log");
        let mut yaml = String::new();
        yaml += "server:\n";
        yaml += &format!("  listen: \"127.0.0.1:{}\"\n", ports.proxy);
        yaml += &format!("  admin_listen: \"127.0.0.1:{}\"\n", ports.admin);
        yaml += &format!("  metrics_listen: \"127.0.0.1:{}\"\n", ports.metrics);
        yaml += "  threads: 2\n  grace_period_seconds: 0\n";
        yaml += &format!("  max_body_bytes: {}\n", self.max_body_bytes);
        if let Some((cert, key)) = &self.admin_tls {
            yaml += &format!(
                "  admin_tls: {{cert_file: \"{}\", key_file: \"{}\"}}\n",
                cert.display(),
                key.display()
            );
        }
        yaml += &self.extra_server;
        yaml += "accounts:\n";
        yaml += &format!(
            "  acme-orionvm:\n    endpoints:\n{endpoints}{}    read_timeout_ms: {}\n    credentials:\n{acme_creds}",
            self.account_extra, self.read_timeout_ms
        );
        yaml += &format!(
            "  globex-orionvm:\n    endpoints:\n{endpoints}{}    read_timeout_ms: {}\n    credentials:\n",
            self.globex_account_extra
                .as_deref()
                .unwrap_or(&self.account_extra),
            self.read_timeout_ms
        );
        yaml += &format!("      type: static_token\n      token: {{file: \"{globex_token}\"}}\n");
        yaml += "tenants:\n  acme: {account: acme-orionvm}\n  globex: {account: globex-orionvm}\n";
        yaml += &format!("api_keys:\n{keys}");
        yaml += &format!("logging:\n  access_log: \"{}\"\n", log.display());
        yaml += &format!(
            "  audit: {{path: \"{}\"}}\n",
            dir.join("audit.log").display()
        );
        yaml += &self.extra_logging;
        yaml += &self.extra_top;
        let path = dir.join("orion-proxy.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }
}

pub struct Ports {
    pub proxy: u16,
    pub admin: u16,
    pub metrics: u16,
}

impl Ports {
    pub fn free() -> Ports {
        Ports {
            proxy: free_port(),
            admin: free_port(),
            metrics: free_port(),
        }
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_orion-proxy")
}

/// What `orion-proxy check -c FILE` printed, and whether it passed.
pub struct CheckRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CheckRun {
    /// stdout then stderr.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `orion-proxy check -c config_path`.
pub fn check_config(config_path: &std::path::Path) -> CheckRun {
    let out = Command::new(binary())
        .args(["check", "-c"])
        .arg(config_path)
        .output()
        .expect("run orion-proxy check");
    CheckRun {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A child process (the proxy, the demo) stopped on drop: SIGINT, and SIGKILL if it has not
/// exited within 5 s.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `orion-proxy run -c config_path` (warnings and errors to `stderr`), stopped on drop.
pub fn spawn_proxy(config_path: &std::path::Path, stderr: Stdio) -> ChildGuard {
    let child = Command::new(binary())
        .args(["run", "-c"])
        .arg(config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn proxy");
    ChildGuard(child)
}

/// The proxy binary running with a generated config; stopped on drop.
pub struct ProxyProcess {
    child: ChildGuard,
    http: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub url: String,
    pub admin_url: String,
    pub metrics_url: String,
}

impl ProxyProcess {
    pub async fn start(builder: &ConfigBuilder) -> ProxyProcess {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(builder, dir).await
    }

    pub async fn start_in(builder: &ConfigBuilder, mut dir: tempfile::TempDir) -> ProxyProcess {
        // A port picked free may be taken by the time the proxy binds: try a few times.
        let mut last_err = String::new();
        for _ in 0..3 {
            let ports = Ports::free();
            let config_path = builder.write(dir.path(), &ports);
            let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
            let child = spawn_proxy(&config_path, stderr.into());
            let mut p = ProxyProcess {
                child,
                http: reqwest::Client::new(),
                config_path,
                url: format!("http://127.0.0.1:{}", ports.proxy),
                admin_url: format!(
                    "{}://127.0.0.1:{}",
                    if builder.admin_tls.is_some() {
                        "https"
                    } else {
                        "http"
                    },
                    ports.admin
                ),
                metrics_url: format!("http://127.0.0.1:{}", ports.metrics),
                dir,
            };
            match p.wait_healthy().await {
                Ok(()) => return p,
                Err(e) => {
                    last_err = e;
                    let _ = p.child.0.kill();
                    dir = std::mem::replace(&mut p.dir, tempfile::tempdir().unwrap());
                }
            }
        }
        panic!("proxy did not start: {last_err}");
    }

    async fn wait_healthy(&mut self) -> Result<(), String> {
        let client = self.http.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                return Err(format!("exited with {status}: {}", self.stderr()));
            }
            let ok = client
                .get(format!("{}/health", self.url))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            // Accepting connections (over TLS too: no handshake needed to know).
            let admin_ok = tokio::net::TcpStream::connect(
                self.admin_url
                    .trim_start_matches("http://")
                    .trim_start_matches("https://"),
            )
            .await
            .is_ok();
            if ok && admin_ok {
                // A port picked free may have been taken by another test's process in the
                // meantime; then what answered is not this proxy. Check that this child holds
                // every listening socket.
                let pid = self.pid();
                for url in [&self.url, &self.admin_url, &self.metrics_url] {
                    let port = url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                    if !port.is_some_and(|p| listens_on(pid, p)) {
                        return Err(format!("{url} is served by another process"));
                    }
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("not healthy in time: {}", self.stderr()))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// The access log's lines, parsed; waits until at least `min` lines other than the
    /// harness's `/health` probes are there (lines are written in batches every 20 ms).
    pub async fn access_log(&self, min: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(self.access_log_path()).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    serde_json::from_str(l)
                        .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}"))
                })
                .collect();
            // The harness's own readiness probes (`/health`) don't count toward `min`.
            let counted = lines.iter().filter(|l| l["url.path"] != "/health").count();
            if counted >= min || Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn audit_log_path(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// The audit trail's records, parsed (the current file only).
    pub fn audit_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.audit_log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    pub fn access_log_text(&self) -> String {
        std::fs::read_to_string(self.access_log_path()).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.0.id() as i32, sig);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }

    /// `GET path` on the proxy listener with `key` as the bearer token.
    pub async fn get(&self, key: &str, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(key)
            .send()
            .await
            .expect("GET")
    }

    /// `POST path` on the proxy listener with a JSON body.
    pub async fn post(&self, key: &str, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("POST")
    }

    /// `PUT path` on the proxy listener with a JSON body.
    pub async fn http_put(
        &self,
        key: &str,
        path: &str,
        body: serde_json::Value,
    ) -> reqwest::Response {
        self.http
            .put(format!("{}{path}", self.url))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("PUT")
    }

    /// `GET path` on the admin listener (`/admin/...`) with `key`.
    pub async fn admin_get(&self, key: &str, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.admin_url))
            .bearer_auth(key)
            .send()
            .await
            .expect("admin GET")
    }

    /// `POST path` (no body) on the admin listener with `key`.
    pub async fn admin_post(&self, key: &str, path: &str) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.admin_url))
            .bearer_auth(key)
            .send()
            .await
            .expect("admin POST")
    }

    /// `/metrics`, parsed.
    pub async fn scrape(&self) -> Scrape {
        let resp = self
            .http
            .get(format!("{}/metrics", self.metrics_url))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(resp.status(), 200, "GET /metrics");
        Scrape::from_text(resp.text().await.expect("metrics text"))
    }

    /// Rewrites the config file with `edit` (which must change it; reload to apply it) and
    /// returns the text it had before.
    pub fn edit_config(&self, edit: impl FnOnce(&str) -> String) -> String {
        let before = std::fs::read_to_string(&self.config_path).expect("read config");
        let after = edit(&before);
        assert_ne!(before, after, "the edit changes the config");
        self.write_config(&after);
        before
    }

    /// Replaces the config file with `text` (reload to apply it).
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config_path, text).expect("write config");
    }
}

/// A proxy in front of a fresh simulator, with the default keys.
pub struct Harness {
    pub sim: SimHandle,
    pub proxy: ProxyProcess,
    pub config: ConfigBuilder,
    pub http: reqwest::Client,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    /// A fresh simulator with the default accounts, and the proxy with `adjust`'s config.
    pub async fn start_with(adjust: impl FnOnce(&mut ConfigBuilder)) -> Harness {
        Self::start_on(start_sim(sim_options()).await, adjust).await
    }

    /// The proxy in front of `sim` (started with other options, or behind a TLS front: then
    /// `adjust` points `sim_urls` there).
    pub async fn start_on(sim: SimHandle, adjust: impl FnOnce(&mut ConfigBuilder)) -> Harness {
        let mut config = ConfigBuilder::new(&sim.url());
        adjust(&mut config);
        let proxy = ProxyProcess::start(&config).await;
        Harness {
            sim,
            proxy,
            config,
            http: reqwest::Client::new(),
        }
    }

    pub fn key(&self, name: &str) -> &str {
        self.config.key(name)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.proxy.url, path)
    }

    pub async fn get(&self, key: &str, path: &str) -> reqwest::Response {
        self.proxy.get(key, path).await
    }

    pub async fn post(&self, key: &str, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.proxy.post(key, path, body).await
    }

    /// `GET path` asking the simulator for a fault (`x-sim-fault`, e.g. `reset` or `status=503`).
    pub async fn get_with_fault(&self, key: &str, path: &str, fault: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(key)
            .header("x-sim-fault", fault)
            .send()
            .await
            .expect("GET")
    }

    /// The id of the first instance in the list `key`'s tenant sees through the mirror.
    pub async fn first_instance(&self, key: &str) -> String {
        let list = ok_json(self.get(key, "/api/v1/instances").await).await;
        list.as_array().expect("bare array")[0]["id"]
            .as_str()
            .expect("id")
            .to_string()
    }

    /// `POST /admin/reload` with the admin key; the answer as it came.
    pub async fn reload(&self) -> reqwest::Response {
        self.proxy
            .admin_post(self.key("admin"), "/admin/reload")
            .await
    }

    /// `POST /admin/reload` that must succeed; returns the new config version.
    pub async fn reload_ok(&self) -> String {
        let r = self.reload().await;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(status, 200, "reload: {text}");
        let body: serde_json::Value = serde_json::from_str(&text).expect("reload answer JSON");
        assert_eq!(body["status"], "reloaded", "{body}");
        body["config_version"]
            .as_str()
            .expect("config_version")
            .to_string()
    }

    /// Reloads with SIGHUP (what the systemd unit's ExecReload sends) and waits until the proxy
    /// has tried, as its reload counters tell: the new config version, or None when the new
    /// file was refused and the old config stays.
    pub async fn reload_by_sighup(&self) -> Option<String> {
        const RELOADS: &str = "orion_proxy_config_reloads_total";
        let before = self.proxy.scrape().await;
        let ok = before.value(RELOADS, &[("result", "ok")]);
        let failed = before.value(RELOADS, &[("result", "error")]);
        self.proxy.signal(libc::SIGHUP);
        let after = poll("the SIGHUP reload", Duration::from_secs(15), || async {
            let s = self.proxy.scrape().await;
            (s.value(RELOADS, &[("result", "ok")]) > ok
                || s.value(RELOADS, &[("result", "error")]) > failed)
                .then_some(s)
        })
        .await;
        if after.value(RELOADS, &[("result", "ok")]) == ok {
            return None;
        }
        let version = after
            .samples
            .iter()
            .find(|s| s.name == "orion_proxy_config_info" && s.value == 1.0)
            .and_then(|s| s.labels.get("version"))
            .expect("orion_proxy_config_info after a reload");
        Some(version.clone())
    }

    pub async fn delete(&self, key: &str, path: &str) -> reqwest::Response {
        self.http
            .delete(self.url(path))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .send()
            .await
            .expect("DELETE")
    }
}

/// The JSON body of a successful answer (panics with the status and body otherwise).
pub async fn ok_json(resp: reqwest::Response) -> serde_json::Value {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "status {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// The state of an instance, through the proxy's mirror.
pub async fn state_of(h: &Harness, key: &str, id: &str) -> String {
    let v = ok_json(h.get(key, &format!("/api/v1/instances/{id}/state")).await).await;
    v["state"].as_str().unwrap().to_string()
}

pub async fn wait_state(h: &Harness, key: &str, id: &str, state: &str) {
    let mut last = String::new();
    let result = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            last = state_of(h, key, id).await;
            if last == state {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "instance {id} never reached {state} (last {last})"
    );
}

/// Checks the one error body and returns it.
pub async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let rid = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string())
        .expect("x-request-id");
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    let body: serde_json::Value = resp.json().await.expect("JSON error body");
    assert_error_body(&body, status, code);
    assert_eq!(
        body["request_id"],
        rid.as_str(),
        "request id in body and header"
    );
    body
}

pub fn assert_error_body(body: &serde_json::Value, status: u16, code: &str) {
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(body["error_description"].is_string(), "{body}");
    assert!(
        body["title"].is_string() && body["type"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    assert!(body["details"].is_object(), "{body}");
    let rid = body["request_id"].as_str().expect("request_id");
    assert!(!rid.is_empty());
    assert_eq!(body["instance"], format!("urn:request:{rid}"));
}

/// Polls `f` until it returns Some or the deadline passes. The deadline is at least 30 s, however
/// short `timeout`: it only bounds how long a failing test takes, and a loaded machine (CI, 2 cores
/// shared with builds) may stall a process for seconds. What must happen within some time is
/// asserted by the test itself, never by this deadline.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout.max(Duration::from_secs(30));
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Sends raw bytes to `url`'s host and port and reads the answer until the connection closes
/// (send `Connection: close`). For requests that HTTP clients would normalise or refuse.
pub async fn raw_request(url: &str, request: &[u8]) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = buf[split..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16)
            .unwrap_or(0);
        data = &data[line_end + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// `orion-proxy demo --json --ephemeral` as a child process; stopped with SIGINT on drop.
pub struct DemoProcess {
    _child: ChildGuard,
    /// The JSON object the demo printed on its first line.
    pub info: serde_json::Value,
}

impl DemoProcess {
    /// Starts the demo, reads its first line and waits until `/ready` answers 200.
    pub async fn start() -> DemoProcess {
        DemoProcess::start_with(&[]).await
    }

    /// `start` with more arguments (e.g. `--config BASE`).
    pub async fn start_with(args: &[&str]) -> DemoProcess {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(binary())
            .args(["demo", "--json", "--ephemeral"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn demo");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        reader.read_line(&mut first).expect("first line");
        // Keep draining the access log so the pipe never fills.
        std::thread::spawn(move || for _ in reader.lines() {});
        let info: serde_json::Value = serde_json::from_str(&first)
            .unwrap_or_else(|e| panic!("first line is not JSON ({e}): {first}"));
        let demo = DemoProcess {
            _child: ChildGuard(child),
            info,
        };
        let proxy = demo.url("proxy_url");
        poll("the demo is ready", Duration::from_secs(30), || async {
            let r = reqwest::get(format!("{proxy}/ready")).await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        demo
    }

    pub fn url(&self, name: &str) -> String {
        self.info[name].as_str().unwrap_or_default().to_string()
    }

    pub fn key(&self, role: &str) -> String {
        self.info["api_keys"][role]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs the first ```sh block after the README heading `heading`, with the demo's admin key
    /// and ports put in place of the documented defaults. Returns success, stdout and stderr.
    pub fn run_readme_block(&self, heading: &str) -> (bool, String, String) {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README");
        let section = readme
            .find(heading)
            .unwrap_or_else(|| panic!("README has no '{heading}'"));
        let start = readme[section..].find("```sh").expect("a sh block") + section + 5;
        let end = readme[start..].find("```").expect("block end") + start;
        let port = |u: String| {
            u.trim_end_matches("/metrics")
                .rsplit(':')
                .next()
                .unwrap_or_default()
                .to_string()
        };
        let script = readme[start..end]
            .replace("<the admin key the demo printed>", &self.key("admin"))
            .replace(
                "127.0.0.1:8080",
                &format!("127.0.0.1:{}", port(self.url("proxy_url"))),
            )
            .replace(
                "127.0.0.1:9091",
                &format!("127.0.0.1:{}", port(self.url("admin_url"))),
            )
            .replace(
                "127.0.0.1:9090",
                &format!("127.0.0.1:{}", port(self.url("metrics_url"))),
            );
        let out = Command::new("timeout")
            .args(["120", "bash", "-euo", "pipefail", "-c", &script])
            .output()
            .expect("bash");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
}

/// A private CA and a certificate it signs for `names` (DNS names or IP addresses).
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

pub fn test_pki(names: &[&str]) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "orion test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        cert_pem: leaf.pem(),
        cert_der: leaf.der().to_vec(),
        key_pem: leaf_key.serialize_pem(),
        key_der: leaf_key.serialize_der(),
    }
}

/// A TLS terminator on a loopback port, with a certificate for 127.0.0.1 and orionvm.test from a
/// private CA (written to `ca_path`), relaying to a plain server.
pub struct TlsFront {
    pub url: String,
    pub ca_path: PathBuf,
    pub dir: tempfile::TempDir,
}

pub async fn tls_front(upstream: std::net::SocketAddr) -> TlsFront {
    use std::sync::Arc;
    let pki = test_pki(&["orionvm.test", "127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(
                pki.cert_der.clone(),
            )],
            rustls::pki_types::PrivateKeyDer::try_from(pki.key_der.clone()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
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
    TlsFront { url, ca_path, dir }
}

/// Whether process `pid` holds a socket listening on 127.0.0.1:`port` (from /proc/net/tcp and
/// the process's descriptors).
fn listens_on(pid: u32, port: u16) -> bool {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let inodes: Vec<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            let listening = f.get(3)? == &"0A";
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| f.get(9).map(|s| s.to_string()))?
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|target| {
            let t = target.to_string_lossy();
            inodes.iter().any(|i| t == format!("socket:[{i}]"))
        })
}
