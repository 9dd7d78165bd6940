//! `orion-proxy demo`: the OrionVM simulator and the proxy together on loopback, with fresh
//! credentials for every demo role, printed for a person (or as one JSON line with `--json`).

use crate::config::model::{ApiKeyConfig, Config, SecretRef};
use orion_sim::{self as sim, SimOptions};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

pub const DEMO_YAML: &str = include_str!("../conf/demo.yaml");

pub struct DemoOptions {
    pub json: bool,
    /// Use free ports everywhere instead of the documented defaults.
    pub ephemeral: bool,
    /// Base config; `conf/demo.yaml` as shipped when absent.
    pub config: Option<PathBuf>,
    /// Proxy nodes (1: the single-node demo on the memory backend).
    pub nodes: usize,
    /// The Redis that several nodes share; a local `redis-server` is started when absent.
    pub redis: Option<String>,
}

/// The demo's API keys: label, roles, tenant. `admin` administers the process (every
/// tenant, reloads); `acme_admin` and `globex_admin` (and `other_tenant_admin`) administer
/// their own tenant only (`crate::auth::admin_scope`).
const DEMO_KEYS: &[(&str, &[&str], &str)] = &[
    ("viewer", &["viewer"], "acme"),
    ("operator", &["operator"], "acme"),
    ("admin", &["admin", "process_admin"], "acme"),
    ("other_tenant_admin", &["admin"], "globex"),
    ("acme_admin", &["admin"], "acme"),
    ("globex_admin", &["admin"], "globex"),
    // Signs in to the web console (/ui/ on the admin listener) read-only.
    ("console_reader", &["console:read"], "acme"),
];

/// The demo's OAuth2 clients for `/oauth/token`: client id, roles, tenant.
const DEMO_CLIENTS: &[(&str, &str, &str)] = &[
    ("acme-ci", "operator", "acme"),
    ("acme-terraform", "admin", "acme"),
    ("globex-terraform", "admin", "globex"),
];

/// The default port if it is free, otherwise any free one.
fn port(default: u16, ephemeral: bool) -> Result<u16, String> {
    if !ephemeral && let Ok(l) = TcpListener::bind(("127.0.0.1", default)) {
        drop(l);
        return Ok(default);
    }
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn default_port(addr: &Option<String>, fallback: u16) -> u16 {
    addr.as_deref()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .unwrap_or(fallback)
}

fn write_secret(dir: &Path, name: &str, value: &str) -> Result<SecretRef, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(value.as_bytes()).map_err(|e| e.to_string())?;
    Ok(SecretRef::File(path.display().to_string()))
}

pub fn run(opts: DemoOptions) -> Result<(), String> {
    let text = match &opts.config {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?
        }
        None => DEMO_YAML.to_string(),
    };
    let mut config: Config = crate::config::parse(&text).map_err(|e| e.join("\n"))?;
    if opts.nodes == 0 || opts.nodes > 16 {
        return Err("--nodes: between 1 and 16".into());
    }

    // Ports: the documented defaults where free.
    let proxy_port = port(
        default_port(&Some(config.server.listen.clone()), 8080),
        opts.ephemeral,
    )?;
    let admin_port = port(
        default_port(&config.server.admin_listen, 9091),
        opts.ephemeral,
    )?;
    let metrics_port = port(
        default_port(&config.server.metrics_listen, 9090),
        opts.ephemeral,
    )?;
    let sim_port = port(8081, opts.ephemeral)?;
    config.server.listen = format!("127.0.0.1:{proxy_port}");
    config.server.admin_listen = Some(format!("127.0.0.1:{admin_port}"));
    config.server.metrics_listen = Some(format!("127.0.0.1:{metrics_port}"));

    // The simulator, on its own runtime thread, alive as long as the demo runs.
    let sim_addr: SocketAddr = ([127, 0, 0, 1], sim_port).into();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("simulator".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                match tokio::net::TcpListener::bind(sim_addr).await {
                    Ok(l) => match sim::start(l, SimOptions::demo()).await {
                        Ok(handle) => {
                            let _ = tx.send(Ok(handle.url()));
                            std::future::pending::<()>().await;
                            drop(handle);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                        }
                    },
                    Err(e) => {
                        let _ = tx.send(Err(format!("simulator cannot bind {sim_addr}: {e}")));
                    }
                }
            });
        })
        .map_err(|e| e.to_string())?;
    let sim_url = rx
        .recv()
        .map_err(|_| "the simulator did not start".to_string())??;

    // Credentials toward the simulator, as files in a private directory.
    let dir = tempfile::Builder::new()
        .prefix("orion-proxy-demo-")
        .tempdir()
        .map_err(|e| format!("cannot make a temp dir: {e}"))?;
    let secrets: BTreeMap<&str, &str> = [
        ("demo-client-id", sim::DEMO_ACME_CLIENT_ID),
        ("demo-client-secret", sim::DEMO_ACME_CLIENT_SECRET),
        ("demo-static-token", sim::DEMO_GLOBEX_STATIC_TOKEN),
    ]
    .into_iter()
    .collect();
    for account in config.accounts.values_mut() {
        for e in account.endpoints.iter_mut() {
            e.url = sim_url.clone();
        }
        patch_secret_refs(&mut account.credentials, dir.path(), &secrets)?;
    }

    // Fresh API keys for every demo role.
    let mut keys = serde_json::Map::new();
    config.api_keys = DEMO_KEYS
        .iter()
        .map(|(label, roles, tenant)| {
            let key = crate::auth::api_keys::generate();
            keys.insert(label.to_string(), serde_json::Value::String(key.clone()));
            ApiKeyConfig {
                name: format!("demo-{label}"),
                hash: format!(
                    "sha256:{}",
                    hex::encode(crate::auth::api_keys::hash_key(&key))
                ),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                tenant: tenant.to_string(),
                enabled: true,
            }
        })
        .collect();

    // OAuth2 clients of the proxy's own /oauth/token, and the key that signs their tokens.
    let signing_key = {
        use base64::Engine;
        use rand::RngCore;
        let mut k = [0u8; 48];
        rand::rngs::OsRng.fill_bytes(&mut k);
        base64::engine::general_purpose::STANDARD.encode(k)
    };
    config.oauth.signing_key = Some(write_secret(dir.path(), "token-signing-key", &signing_key)?);
    let mut clients = Vec::new();
    config.clients = DEMO_CLIENTS
        .iter()
        .map(|(id, role, tenant)| {
            let secret = crate::auth::tokens::generate_secret();
            let hash = crate::auth::tokens::hash_secret(&secret)?;
            clients.push(serde_json::json!({
                "client_id": id, "client_secret": secret, "roles": [role], "tenant": tenant,
            }));
            Ok(crate::config::auth::ClientConfig {
                client_id: id.to_string(),
                secret_hash: hash,
                roles: vec![role.to_string()],
                tenant: tenant.to_string(),
                enabled: true,
            })
        })
        .collect::<Result<_, String>>()?;

    // The audit trail in the demo's directory, so that `GET /admin/audit` has something to show.
    if config.logging.audit.path == "off" {
        config.logging.audit.path = dir.path().join("audit.log").display().to_string();
    }
    // Runtime-managed credentials (the console, /admin/api-keys) in the demo's directory.
    if config.state.dir.is_none() {
        config.state.dir = Some(dir.path().join("state").display().to_string());
    }
    // Several nodes share one state on Redis: the one given, or a local redis-server.
    let mut children = Vec::new();
    let mut redis_url = opts.redis.clone();
    if opts.nodes > 1 && redis_url.is_none() {
        let (child, url) = start_redis(dir.path())?;
        children.push(child);
        redis_url = Some(url);
    }
    if let Some(url) = &redis_url {
        config.state.backend = crate::config::state::Backend::Redis;
        config.state.redis = Some(crate::config::state::RedisConfig {
            url: url.clone(),
            tls: false,
            ca_file: None,
            username: None,
            password: None,
            prefix: "orion-proxy-demo:".into(),
            connect_timeout_ms: 1000,
            command_timeout_ms: 250,
            pool_size: 2,
        });
    }
    let config_path = dir.path().join("demo.yaml");
    write_config(&config, &config_path)?;

    // Nodes 2..N: child processes on their own ports (they stop with the demo).
    let mut nodes = Vec::new();
    for n in 2..=opts.nodes {
        let ports = (port(0, true)?, port(0, true)?, port(0, true)?);
        let mut c = config.clone();
        c.server.listen = format!("127.0.0.1:{}", ports.0);
        c.server.admin_listen = Some(format!("127.0.0.1:{}", ports.1));
        c.server.metrics_listen = Some(format!("127.0.0.1:{}", ports.2));
        if c.logging.audit.path != "off" {
            c.logging.audit.path = dir
                .path()
                .join(format!("audit-{n}.log"))
                .display()
                .to_string();
        }
        let path = dir.path().join(format!("demo-node{n}.yaml"));
        write_config(&c, &path)?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["run", "-c"]).arg(&path);
        children.push(spawn_with_parent(cmd)?);
        nodes.push(ports);
    }

    let proxy_url = format!("http://127.0.0.1:{proxy_port}");
    let admin_url = format!("http://127.0.0.1:{admin_port}");
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let mut proxy_urls = vec![proxy_url.clone()];
    let mut admin_urls = vec![admin_url.clone()];
    for (p, a, _) in &nodes {
        proxy_urls.push(format!("http://127.0.0.1:{p}"));
        admin_urls.push(format!("http://127.0.0.1:{a}"));
    }
    let mut info = serde_json::json!({
        "proxy_url": proxy_url,
        "admin_url": admin_url,
        "metrics_url": metrics_url,
        "simulator_url": sim_url,
        "config_path": config_path.display().to_string(),
        "api_keys": keys,
        "clients": clients,
    });
    if opts.nodes > 1 || redis_url.is_some() {
        info["proxy_urls"] = serde_json::json!(proxy_urls);
        info["admin_urls"] = serde_json::json!(admin_urls);
        info["state"] = serde_json::json!({"backend": "redis", "url": redis_url});
    }
    let (server, state) = crate::server::build(&config_path).map_err(|e| e.join("\n"))?;
    let mut out = std::io::stdout().lock();
    if opts.json {
        let _ = writeln!(out, "{info}");
    } else {
        let _ = writeln!(out, "{}", human(&info));
    }
    let _ = out.flush();
    drop(out);
    server.run(pingora::server::RunArgs::default());
    state.state.observe.flush_all();
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(dir);
    Ok(())
}

/// Writes a config as YAML (through JSON, so that enums come out as maps, `{file: ...}`, not
/// YAML tags).
fn write_config(config: &Config, path: &Path) -> Result<(), String> {
    let as_json = serde_json::to_value(config).map_err(|e| e.to_string())?;
    let yaml = serde_yaml::to_string(&as_json).map_err(|e| e.to_string())?;
    std::fs::write(path, yaml).map_err(|e| e.to_string())
}

/// Spawns a child that the kernel stops when the demo ends, however it ends.
fn spawn_with_parent(mut cmd: std::process::Command) -> Result<std::process::Child, String> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))
}

/// A local `redis-server` on a free loopback port, without persistence; its URL.
fn start_redis(dir: &Path) -> Result<(std::process::Child, String), String> {
    let installed = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        return Err(
            "several nodes share their state on Redis, and redis-server is not installed: \
             install it (Debian/Ubuntu: `sudo apt-get install redis-server`; scripts/setup does) \
             or pass --redis redis://HOST:PORT/0"
                .into(),
        );
    }
    let port = port(0, true)?;
    let mut cmd = std::process::Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null());
    let mut child = spawn_with_parent(cmd)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((child, format!("redis://127.0.0.1:{port}/0")));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server exited: {status}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    Err("redis-server did not start within 10 s".into())
}

fn patch_secret_refs(
    creds: &mut crate::config::model::CredentialsConfig,
    dir: &Path,
    secrets: &BTreeMap<&str, &str>,
) -> Result<(), String> {
    use crate::config::model::CredentialsConfig as C;
    let patch = |r: &mut SecretRef| -> Result<(), String> {
        if let SecretRef::File(name) = r
            && let Some(value) = secrets.get(name.as_str())
        {
            *r = write_secret(dir, name, value)?;
        }
        Ok(())
    };
    match creds {
        C::Oauth2 {
            client_id,
            client_secret,
            ..
        } => {
            patch(client_id)?;
            patch(client_secret)?;
        }
        C::StaticToken { token } => patch(token)?,
        C::Signature { key, token, .. } => {
            patch(key)?;
            if let Some(t) = token {
                patch(t)?;
            }
        }
    }
    Ok(())
}

fn human(info: &serde_json::Value) -> String {
    let s = |k: &str| info[k].as_str().unwrap_or_default().to_string();
    let mut out = String::new();
    out.push_str("\norion-proxy demo: the OrionVM simulator and the proxy are running.\n\n");
    out.push_str(&format!("  proxy       {}\n", s("proxy_url")));
    if let Some(urls) = info["proxy_urls"].as_array() {
        for u in urls.iter().skip(1) {
            out.push_str(&format!(
                "  proxy       {}\n",
                u.as_str().unwrap_or_default()
            ));
        }
        out.push_str(&format!(
            "  state       redis {}\n",
            info["state"]["url"].as_str().unwrap_or_default()
        ));
    }
    out.push_str(&format!("  admin       {}\n", s("admin_url")));
    out.push_str(&format!(
        "  console     {}/ui/  (sign in with the admin key)\n",
        s("admin_url")
    ));
    out.push_str(&format!("  metrics     {}\n", s("metrics_url")));
    out.push_str(&format!("  simulator   {}\n\n", s("simulator_url")));
    out.push_str("  API keys (send as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'):\n");
    if let Some(keys) = info["api_keys"].as_object() {
        for (role, key) in keys {
            let tenant = DEMO_KEYS
                .iter()
                .find(|(label, _, _)| label == role)
                .map(|(_, _, t)| format!("  tenant {t}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "    {role:<20} {}{tenant}\n",
                key.as_str().unwrap_or_default()
            ));
        }
    }
    out.push_str("\n  OAuth2 clients (POST /oauth/token with grant_type=client_credentials):\n");
    if let Some(clients) = info["clients"].as_array() {
        for c in clients {
            out.push_str(&format!(
                "    {:<20} secret {}  roles {}  tenant {}\n",
                c["client_id"].as_str().unwrap_or_default(),
                c["client_secret"].as_str().unwrap_or_default(),
                c["roles"]
                    .as_array()
                    .map(|r| r
                        .iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(","))
                    .unwrap_or_default(),
                c["tenant"].as_str().unwrap_or_default()
            ));
        }
    }
    out.push_str(&format!(
        "\n  Try:\n    export KEY={}\n    curl -s -H \"Authorization: Bearer $KEY\" {}/api/v1/instances\n    curl -s -d grant_type=client_credentials -d client_id={} -d client_secret={} {}/oauth/token\n\n  Ctrl-C stops both.\n",
        info["api_keys"]["admin"].as_str().unwrap_or_default(),
        s("proxy_url"),
        info["clients"][0]["client_id"].as_str().unwrap_or_default(),
        info["clients"][0]["client_secret"].as_str().unwrap_or_default(),
        s("proxy_url")
    ));
    out
}
