//! Assembling the Pingora server: the proxy listener, the admin and metrics listeners, the
//! readiness prober and the SIGHUP reloader.

use crate::admin::AdminApp;
use crate::proxy::OrionProxy;
use crate::runtime::{SharedState, State};
use crate::upstream::Prober;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Loads the config and builds the server; the caller runs it.
pub fn build(config_path: &Path) -> Result<(Server, Arc<SharedState>), Vec<String>> {
    // The state backends come from the first config (a reload cannot move them).
    let text = crate::config::read_file(config_path)?;
    let model = crate::config::parse(&text)?;
    let stores = crate::runtime::state::stores_for(&model.state)?;
    let state = Arc::new(SharedState::start(
        config_path,
        Arc::new(State::with_stores(stores)),
    )?);
    let runtime = state.current();
    crate::metrics::init(&runtime.version);
    let server_cfg = runtime.config.server.clone();
    drop(runtime);
    crate::runtime::watch_metrics(&state);

    let conf = ServerConf {
        threads: server_cfg.threads,
        grace_period_seconds: Some(server_cfg.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(2),
        upstream_keepalive_pool_size: 256,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);

    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        OrionProxy::new(state.clone()),
        "orion-proxy",
    );
    let mut listener = ListenerConfig::tcp(server_cfg.listen.clone()).l4_buffer(
        L4BufferSettings::default()
            .read(server_cfg.read_buffer_bytes)
            .write(server_cfg.write_buffer_bytes),
    );
    if let Some(tls) = &server_cfg.tls {
        let settings = TlsSettings::intermediate(&tls.cert_file, &tls.key_file)
            .map_err(|e| vec![format!("server.tls: {e}")])?;
        listener = listener.tls(settings);
        match certificate_not_after(&tls.cert_file) {
            Ok(not_after) => crate::metrics::register_certificate_expiry(not_after),
            Err(e) => log::warn!("server.tls.cert_file: cannot read its expiry: {e}"),
        }
    }
    proxy.add_listener(listener);
    server.add_service(proxy);

    if let Some(addr) = &server_cfg.admin_listen {
        let mut admin = Service::new(
            "orion-proxy admin".to_string(),
            AdminApp {
                state: state.clone(),
            },
        );
        admin.add_tcp(addr);
        server.add_service(admin);
    }
    if let Some(addr) = &server_cfg.metrics_listen {
        let mut metrics = pingora_prometheus::prometheus_http_service();
        metrics.add_tcp(addr);
        server.add_service(metrics);
    }
    server.add_service(background_service(
        "readiness prober",
        Prober {
            accounts: {
                let state = state.clone();
                Box::new(move || {
                    state
                        .current()
                        .upstreams
                        .accounts
                        .values()
                        .cloned()
                        .collect()
                })
            },
            interval: Duration::from_secs(2),
        },
    ));
    server.add_service(background_service(
        "JWKS refresher",
        state.state.auth.refresher(),
    ));
    // Declared with every backend, so that dashboards and alerts find the series.
    crate::metrics::declare_state(&["counters", "kv", "tasks", "usage", "ping"]);
    if let Some(shared) = state.state.stores.shared.clone() {
        server.add_service(background_service(
            "state backend sync",
            StateSync {
                shared,
                tasks: state.state.stores.tasks.clone(),
                every: Duration::from_millis(model.state.sync_interval_ms),
            },
        ));
    }
    server.add_service(background_service(
        "SIGHUP reloader",
        Reloader {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "SIGUSR1 log reopener",
        LogReopener {
            state: state.clone(),
        },
    ));
    Ok((server, state))
}

/// The `notAfter` (Unix seconds) of the first certificate in a PEM file.
fn certificate_not_after(path: &str) -> Result<i64, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| e.to_string())?;
    let cert = pem.parse_x509().map_err(|e| e.to_string())?;
    Ok(cert.validity().not_after.timestamp())
}

/// Runs the server until SIGTERM (graceful) or SIGINT (at once).
pub fn run(config_path: &Path) -> Result<(), Vec<String>> {
    let (server, state) = build(config_path)?;
    server.run(RunArgs::default());
    state.state.observe.flush_all();
    Ok(())
}

struct Reloader {
    state: Arc<SharedState>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Reloader {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload only through the admin API: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let state = self.state.clone();
                    let _ = tokio::task::spawn_blocking(move || state.reload()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The shared backend's background work: batched counters and usage sent every interval, task
/// leases renewed, and the tasks of nodes that died (their lease expired) marked failed.
struct StateSync {
    shared: Arc<crate::store::redis::Backends>,
    tasks: Arc<dyn crate::store::tasks::TaskStore>,
    every: Duration,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for StateSync {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let sweep_every = self
            .tasks
            .lease()
            .map(|l| l / 3)
            .unwrap_or(Duration::from_secs(5));
        let tasks = self.tasks.clone();
        let sweeper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(sweep_every).await;
                crate::facade::tasks::sweep_orphans(&*tasks, crate::errors::facade::task_error)
                    .await;
            }
        });
        tokio::select! {
            _ = self.shared.run_sync(self.every) => {}
            _ = shutdown.changed() => {}
        }
        sweeper.abort();
        // What was counted since the last sync is not lost at a graceful stop.
        self.shared.usage.flush().await;
    }
}

/// `SIGUSR1` (logrotate's `postrotate`): every log file is closed and opened again at its path.
struct LogReopener {
    state: Arc<SharedState>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for LogReopener {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut usr1 =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) {
                Ok(s) => s,
                Err(e) => {
                    log::error!("cannot listen for SIGUSR1, log files are not reopened: {e}");
                    return;
                }
            };
        loop {
            tokio::select! {
                _ = usr1.recv() => {
                    let state = self.state.clone();
                    let _ = tokio::task::spawn_blocking(move || state.state.observe.reopen_all()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
