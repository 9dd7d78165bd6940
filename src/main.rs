//! The `orion-proxy` command: run, check, simulate, demo, keygen.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

// `--features system-alloc` keeps the system allocator, for heap profilers that hook malloc
// (heaptrack; README "Performance", idle connections).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "orion-proxy",
    version,
    about = "An edge proxy in front of OrionVM's v1 API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file.
    Run {
        #[arg(short, long, default_value = "conf/orion-proxy.yaml")]
        config: PathBuf,
    },
    /// Validate a config file without starting, like `nginx -t`.
    Check {
        #[arg(short, long, default_value = "conf/orion-proxy.yaml")]
        config: PathBuf,
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
    /// Print the OpenAPI document of the shipped routes (what `openapi.json` holds).
    Openapi,
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
        Command::Run { config } => match orion_proxy::server::run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(errors) => report(&config, &errors),
        },
        Command::Check { config } => {
            match orion_proxy::runtime::load(&config, &orion_proxy::runtime::State::memory()) {
                Ok(staged) => {
                    let rt = staged.inspect();
                    println!(
                        "{}: OK (version {}, {} routes, {} accounts, {} tenants, {} API keys, {} clients, {} JWT issuers)",
                        config.display(),
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
        Command::Openapi => match orion_proxy::facade::openapi::shipped() {
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
    ExitCode::from(2)
}
