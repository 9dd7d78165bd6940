//! The `orion-proxy` command: run, check, reload, health, simulate, demo, keygen.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

// `--features system-alloc` keeps the system allocator, for heap profilers that hook malloc
// (heaptrack; README "Performance", idle connections).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: orion_proxy::allocator::Mimalloc = orion_proxy::allocator::Mimalloc;

/// Exit statuses (also in `--help` and the README).
const EXIT_RUNTIME: u8 = 1;
const EXIT_INVALID_CONFIG: u8 = 3;

const EXIT_CODES: &str = "Exit status: 0 ok; 1 runtime failure (a listener cannot bind, no running process answers, \
a health check fails); 2 usage error (bad arguments); 3 invalid config (check, run, or a reload that was refused).";

#[derive(Parser)]
#[command(
    name = "orion-proxy",
    version,
    about = "An edge proxy in front of OrionVM's v1 API",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file. Tells systemd READY=1 once every listener is bound.
    #[command(after_help = EXIT_CODES)]
    Run {
        #[arg(short, long, default_value = "conf/orion-proxy.yaml")]
        config: PathBuf,
        /// Zero-downtime upgrade: take the listening sockets over from the running process
        /// (asked through server.control_socket; it drains and exits). When no process answers
        /// there, start as usual.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file without starting, like `nginx -t`. Creates no file and opens no
    /// connection: no DNS query (unless --resolve), nothing sent to OrionVM, a JWKS URL,
    /// Redis or an OTLP collector. It reads what the config names on this host (secrets from the environment, files
    /// or systemd credentials; the certificate, key and CA files; JWKS files; log directories)
    /// and refuses the config when one is missing or unusable.
    #[command(after_help = EXIT_CODES)]
    Check {
        #[arg(short, long, default_value = "conf/orion-proxy.yaml")]
        config: PathBuf,
        /// Also resolve the OrionVM endpoints' host names (DNS only; still no connection).
        #[arg(long, conflicts_with = "offline")]
        resolve: bool,
        /// For CI and build machines: check the file where the deployment host's secrets,
        /// certificates, CA bundles, JWKS files and log directories are not. Each one missing
        /// here is listed on stderr as not checked instead of failing the check; each one
        /// present is checked in full. No network, as always (--resolve is refused).
        #[arg(long)]
        offline: bool,
    },
    /// Ask the running process (through server.control_socket) to reload FILE, and wait: exit 0
    /// when the new config is in force, 3 with every error printed when it was refused.
    #[command(after_help = EXIT_CODES)]
    Reload {
        #[arg(short, long, default_value = "conf/orion-proxy.yaml")]
        config: PathBuf,
    },
    /// GET /health on the proxy listener of the config (or --url): exit 0 when it answers 200.
    #[command(after_help = EXIT_CODES)]
    Health {
        #[arg(short, long, default_value = "conf/orion-proxy.yaml")]
        config: PathBuf,
        /// The URL to check instead, e.g. http://127.0.0.1:8080/health.
        #[arg(long)]
        url: Option<String>,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), or with --dir write one per command there
    /// (orion-proxy.1, orion-proxy-check.1, ...).
    #[command(hide = true)]
    Manpage {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run the OrionVM simulator alone.
    Simulate {
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: std::net::SocketAddr,
    },
    /// Run the simulator and the proxy together on loopback, with demo credentials.
    Demo {
        /// Print the URLs and credentials as one JSON object on the first line.
        #[arg(long)]
        json: bool,
        /// Use free ports instead of the defaults (8080, 9091, 9090, 8081).
        #[arg(long)]
        ephemeral: bool,
        /// Base config instead of the shipped conf/demo.yaml.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Proxy nodes sharing one state (Redis) in front of the one simulator.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// The Redis they share (redis://HOST:PORT/DB); without it, several nodes start a
        /// local redis-server.
        #[arg(long)]
        redis: Option<String>,
    },
    /// Print the OpenAPI document of the shipped routes (what `openapi.json` holds), or with
    /// `--admin` the admin listener's (what `admin-openapi.json` holds).
    Openapi {
        /// The admin API's document instead of the proxy listener's.
        #[arg(long)]
        admin: bool,
    },
    /// Print a new API key and the config line that stores its hash.
    Keygen {
        /// Name of the key's holder, for the printed config entry.
        #[arg(long, default_value = "new-key")]
        name: String,
        /// Role for the printed config entry.
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Tenant for the printed config entry.
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Print a new OAuth2 client secret for /oauth/token and the config entry with its hash.
    ClientSecret {
        /// The client id.
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "viewer")]
        role: String,
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Hash a secret read from standard input instead of generating one.
        #[arg(long)]
        stdin: bool,
    },
}

fn main() -> ExitCode {
    orion_proxy::observe::diagnostics::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, upgrade } => {
            let opts = orion_proxy::server::RunOptions { upgrade };
            match orion_proxy::server::run(&config, &opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(orion_proxy::server::Failure::Config(errors)) => report(&config, &errors),
                Err(orion_proxy::server::Failure::Runtime(e)) => {
                    eprintln!("orion-proxy: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::Reload { config } => reload(&config),
        Command::Health { config, url } => health(&config, url),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "orion-proxy", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Manpage { dir } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let written = match dir {
                Some(dir) => clap_mangen::generate_to(cmd, dir),
                None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()),
            };
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::Check {
            config,
            resolve,
            offline,
        } => {
            let (result, not_checked) = if offline {
                orion_proxy::runtime::check_offline(&config)
            } else {
                (orion_proxy::runtime::check(&config, resolve), Vec::new())
            };
            if !not_checked.is_empty() {
                eprintln!(
                    "{}: not checked here (--offline), check again on the host:",
                    config.display()
                );
                for n in &not_checked {
                    eprintln!("  {n}");
                }
            }
            match result {
                Ok(staged) => {
                    let rt = staged.inspect();
                    println!(
                        "{}: OK{} (version {}, {} routes, {} accounts, {} tenants, {} API keys, {} clients, {} JWT issuers)",
                        config.display(),
                        if not_checked.is_empty() {
                            String::new()
                        } else {
                            format!(" offline, {} not checked", not_checked.len())
                        },
                        rt.version,
                        rt.routes.routes().len(),
                        rt.upstreams.accounts.len(),
                        rt.upstreams.tenants.len(),
                        rt.config.api_keys.len(),
                        rt.config.clients.len(),
                        rt.config.jwt.issuers.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(errors) => report(&config, &errors),
            }
        }
        Command::Simulate { listen } => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            println!(
                "OrionVM simulator on http://{listen} (demo accounts: see `orion-proxy demo`)"
            );
            match rt.block_on(orion_sim::run(listen, orion_sim::SimOptions::demo())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("simulator: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo {
            json,
            ephemeral,
            config,
            nodes,
            redis,
        } => {
            match orion_proxy::demo::run(orion_proxy::demo::DemoOptions {
                json,
                ephemeral,
                config,
                nodes,
                redis,
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Openapi { admin: true } => {
            let doc = orion_proxy::admin::openapi::document();
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Command::Openapi { admin: false } => match orion_proxy::facade::openapi::shipped() {
            Ok(doc) => {
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{}", errors.join("\n"));
                ExitCode::FAILURE
            }
        },
        Command::Keygen { name, role, tenant } => {
            let key = orion_proxy::auth::api_keys::generate();
            let hash = hex::encode(orion_proxy::auth::api_keys::hash_key(&key));
            println!("API key (give it to the caller; it is not stored anywhere):\n  {key}\n");
            println!("Config entry (paste under api_keys:):");
            println!(
                "  - {{name: {name}, hash: \"sha256:{hash}\", roles: [{role}], tenant: {tenant}}}"
            );
            ExitCode::SUCCESS
        }
        Command::ClientSecret {
            id,
            role,
            tenant,
            stdin,
        } => {
            let secret = if stdin {
                let mut line = String::new();
                if std::io::stdin().read_line(&mut line).is_err() || line.trim().is_empty() {
                    eprintln!("no secret on standard input");
                    return ExitCode::FAILURE;
                }
                line.trim().to_string()
            } else {
                orion_proxy::auth::tokens::generate_secret()
            };
            let hash = match orion_proxy::auth::tokens::hash_secret(&secret) {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            if !stdin {
                println!(
                    "Client secret (give it to the client; it is not stored anywhere):\n  {secret}\n"
                );
            }
            println!("Config entry (paste under clients:):");
            println!(
                "  - {{client_id: {id}, secret_hash: '{hash}', roles: [{role}], tenant: {tenant}}}"
            );
            ExitCode::SUCCESS
        }
    }
}

fn report(config: &std::path::Path, errors: &[String]) -> ExitCode {
    eprintln!("{}: {} error(s)", config.display(), errors.len());
    for e in errors {
        eprintln!("  {e}");
    }
    ExitCode::from(EXIT_INVALID_CONFIG)
}

/// The `server` section of a file, read leniently (the file may be the broken one a reload is
/// about to refuse): where its control socket and listener are.
fn server_section(config: &std::path::Path) -> Result<serde_yaml::Value, String> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: YAML: {e}", config.display()))?;
    Ok(yaml.get("server").cloned().unwrap_or_default())
}

fn reload(config: &std::path::Path) -> ExitCode {
    let server = match server_section(config) {
        Ok(s) => s,
        Err(e) => return report(config, &[e]),
    };
    let Some(socket) = server.get("control_socket").and_then(|v| v.as_str()) else {
        eprintln!(
            "orion-proxy reload: {} sets no server.control_socket; send SIGHUP or POST /admin/reload instead",
            config.display()
        );
        return ExitCode::from(EXIT_RUNTIME);
    };
    let path = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let line = format!("reload {}", path.display());
    match orion_proxy::server::control::request(
        std::path::Path::new(socket),
        &line,
        std::time::Duration::from_secs(300),
    ) {
        Ok(answer) if answer["ok"] == true => {
            println!(
                "{}: reloaded, config version {}",
                config.display(),
                answer["config_version"].as_str().unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            let errors: Vec<String> = answer["errors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| e.as_str().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default();
            eprintln!(
                "{}: reload refused; config version {} stays in force",
                config.display(),
                answer["config_version"].as_str().unwrap_or("?")
            );
            report(config, &errors)
        }
        Err(e) => {
            eprintln!("orion-proxy reload: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn health(config: &std::path::Path, url: Option<String>) -> ExitCode {
    let url = match url {
        Some(u) => u,
        None => {
            let server = match server_section(config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("orion-proxy health: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            let listen = server
                .get("listen")
                .and_then(|v| v.as_str())
                .unwrap_or("127.0.0.1:8080");
            let Ok(mut addr) = listen.parse::<std::net::SocketAddr>() else {
                eprintln!("orion-proxy health: server.listen '{listen}' is not IP:port");
                return ExitCode::from(EXIT_RUNTIME);
            };
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            let scheme = if server.get("tls").is_some_and(|t| !t.is_null()) {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{addr}/health")
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orion-proxy health: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    // The listener's own certificate names the public host, not the loopback address asked.
    let result = rt.block_on(async {
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let r = client.get(&url).send().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(r.status())
    });
    match result {
        Ok(status) if status.is_success() => {
            println!("{url}: {status}");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("{url}: {status}");
            ExitCode::from(EXIT_RUNTIME)
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
