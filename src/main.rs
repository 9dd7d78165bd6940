//! The `orion-proxy` command: run, check, simulate, demo, keygen.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

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
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => match orion_proxy::server::run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(errors) => report(&config, &errors),
        },
        Command::Check { config } => match orion_proxy::config::load(&config, None) {
            Ok(rt) => {
                println!(
                    "{}: OK (version {}, {} routes, {} accounts, {} tenants, {} API keys)",
                    config.display(),
                    rt.version,
                    rt.routes.routes().len(),
                    rt.upstreams.accounts.len(),
                    rt.upstreams.tenants.len(),
                    rt.config.api_keys.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => report(&config, &errors),
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
    }
}

fn report(config: &std::path::Path, errors: &[String]) -> ExitCode {
    eprintln!("{}: {} error(s)", config.display(), errors.len());
    for e in errors {
        eprintln!("  {e}");
    }
    ExitCode::from(2)
}
