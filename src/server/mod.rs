//! Assembling the Pingora server: the proxy listener (TLS with ALPN h2 and http/1.1 when
//! `server.tls` is set), the admin listener (TLS when `server.admin_tls` is set) and the metrics
//! listener, the readiness prober, the SIGHUP
//! reloader, the SIGUSR1 log reopener and the control socket; every service supervised ([`supervise`]); what systemd is
//! told ([`notify`]); the zero-downtime upgrade (`run --upgrade`, Pingora's listener hand-over).

pub mod control;
pub mod notify;
pub mod supervise;

use crate::admin::AdminApp;
use crate::metrics::ListenerSeries;
use crate::proxy::OrionProxy;
use crate::proxy::connection::{Caps, Open};
use crate::runtime::{SharedState, State};
use crate::upstream::Prober;
use pingora::apps::ServerApp;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::modules::http::compression::ResponseCompressionBuilder;
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use supervise::{Readiness, Supervised};

/// How `orion-proxy run` failed: the config (exit status 3) or the process (exit status 1).
pub enum Failure {
    Config(Vec<String>),
    Runtime(String),
}

/// Options of `orion-proxy run`.
#[derive(Default, Clone)]
pub struct RunOptions {
    /// Take the listening sockets over from the running process (found through
    /// `server.control_socket`; without one, the operator sends it SIGQUIT).
    pub upgrade: bool,
}

/// Loads the config and builds the server; the caller runs it.
pub fn build(config_path: &Path) -> Result<(Server, Arc<SharedState>), Vec<String>> {
    build_with(config_path, &RunOptions::default()).map_err(|f| match f {
        Failure::Config(e) => e,
        Failure::Runtime(e) => vec![e],
    })
}

/// Loads the config and builds the server for `opts`; the caller runs it.
pub fn build_with(
    config_path: &Path,
    opts: &RunOptions,
) -> Result<(Server, Arc<SharedState>), Failure> {
    // The state backends come from the first config (a reload cannot move them).
    let text = crate::config::read_file(config_path).map_err(Failure::Config)?;
    let model = crate::config::parse(&text).map_err(Failure::Config)?;
    let stores = crate::runtime::state::stores_for(&model.state).map_err(Failure::Config)?;
    let state = Arc::new(
        SharedState::start(config_path, Arc::new(State::with_stores(stores)))
            .map_err(Failure::Config)?,
    );
    let runtime = state.current();
    crate::metrics::init(&runtime.version);
    let server_cfg = runtime.config.server.clone();
    drop(runtime);
    crate::runtime::watch_metrics(&state);

    // Upgrade: ask the running process (through the control socket) to hand over; it answers,
    // then sends itself SIGQUIT and Pingora passes its listening sockets to `upgrade_socket`.
    let control_path = server_cfg.control_socket.as_ref().map(PathBuf::from);
    let mut taking_over = false;
    if opts.upgrade {
        match &control_path {
            Some(path) => match control::request(path, "upgrade", Duration::from_secs(10)) {
                Ok(answer) if answer["ok"] == true => {
                    log::info!(
                        "taking the listening sockets over from process {}",
                        answer["pid"]
                    );
                    taking_over = true;
                }
                Ok(answer) => {
                    return Err(Failure::Runtime(format!(
                        "the running process refused to hand over: {answer}"
                    )));
                }
                Err(e) => log::warn!("--upgrade: {e}; starting on fresh sockets"),
            },
            None => {
                log::info!(
                    "--upgrade without server.control_socket: waiting for the running process's sockets at {} (send it SIGQUIT)",
                    server_cfg.upgrade_socket
                );
                taking_over = true;
            }
        }
    }
    let control_listener = match &control_path {
        Some(path) => Some(control::bind(path, taking_over).map_err(Failure::Runtime)?),
        None => None,
    };

    let conf = ServerConf {
        threads: server_cfg.threads,
        grace_period_seconds: Some(server_cfg.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(2),
        upstream_keepalive_pool_size: 256,
        upgrade_sock: server_cfg.upgrade_socket.clone(),
        ..Default::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade: taking_over,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    if taking_over {
        // Receives the listening sockets (Pingora exits 1 when none come within 5 s).
        server.bootstrap();
    }
    let listening = 1
        + usize::from(server_cfg.admin_listen.is_some())
        + usize::from(server_cfg.metrics_listen.is_some());
    let readiness = Readiness::new(listening, state.clone());

    let inner = pingora_proxy::http_proxy(&server.configuration, OrionProxy::new(state.clone()));
    let proxy_series = Arc::new(ListenerSeries::new("proxy", server_cfg.tls.is_some()));
    let mut proxy = Service::new(
        "orion-proxy".to_string(),
        Counted {
            inner: Arc::new(inner),
            series: proxy_series.clone(),
            caps: Some(Capped {
                caps: Arc::new(Caps::default()),
                state: state.clone(),
            }),
        },
    );
    proxy.set_connection_filter(Arc::new(CountAccepts(proxy_series)));
    let mut listener = ListenerConfig::tcp(server_cfg.listen.clone()).l4_buffer(
        L4BufferSettings::default()
            .read(server_cfg.read_buffer_bytes)
            .write(server_cfg.write_buffer_bytes)
            // An idle kept-alive connection holds no buffers (vendor/pingora-core/ORION-PATCH.md).
            .release_while_idle(true),
    );
    if server_cfg.tls.is_some() {
        // ALPN offers h2 and http/1.1; h2c stays off.
        let mut settings = tls_settings(&state.state.tls, "server.tls")?;
        settings.enable_h2();
        listener = listener.tls(settings);
    }
    proxy.add_listener(listener);
    server.add_service(Supervised::new(proxy, Some(readiness.clone())));

    if let Some(addr) = &server_cfg.admin_listen {
        let series = Arc::new(ListenerSeries::new("admin", server_cfg.admin_tls.is_some()));
        let mut admin = Service::new(
            "orion-proxy admin".to_string(),
            Counted {
                inner: Arc::new(AdminApp {
                    state: state.clone(),
                }),
                series: series.clone(),
                caps: None,
            },
        );
        admin.set_connection_filter(Arc::new(CountAccepts(series)));
        let mut listener = ListenerConfig::tcp(addr.clone());
        if server_cfg.admin_tls.is_some() {
            // HTTP/1.1 only: the admin API and the console need nothing more.
            listener = listener.tls(tls_settings(&state.state.admin_tls, "server.admin_tls")?);
        }
        admin.add_listener(listener);
        server.add_service(Supervised::new(admin, Some(readiness.clone())));
    }
    if let Some(addr) = &server_cfg.metrics_listen {
        let series = Arc::new(ListenerSeries::new("metrics", false));
        let mut metrics = Service::new(
            "Prometheus metric HTTP".to_string(),
            Counted {
                inner: Arc::new(metrics_app(state.clone())),
                series: series.clone(),
                caps: None,
            },
        );
        metrics.set_connection_filter(Arc::new(CountAccepts(series)));
        metrics.add_tcp(addr);
        server.add_service(Supervised::new(metrics, Some(readiness.clone())));
    }
    if let Some(listener) = control_listener {
        server.add_service(Supervised::new(
            background_service(
                "control socket",
                control::ControlService {
                    listener: parking_lot::Mutex::new(Some(listener)),
                    state: state.clone(),
                },
            ),
            None,
        ));
    }
    if let Some(period) = notify::watchdog_period() {
        server.add_service(Supervised::new(
            background_service("systemd watchdog", Watchdog { period }),
            None,
        ));
    }
    let weak = Arc::downgrade(&state);
    state.observe_reloads(Box::new(move |event| match event {
        crate::runtime::reload::ReloadEvent::Started => notify::reloading(),
        crate::runtime::reload::ReloadEvent::Finished(Ok(version)) => {
            notify::reloaded(version, None)
        }
        crate::runtime::reload::ReloadEvent::Finished(Err(errors)) => {
            let kept = weak
                .upgrade()
                .map(|s| s.current().version.clone())
                .unwrap_or_default();
            notify::reloaded(&kept, Some(errors.len()))
        }
    }));
    server.add_service(Supervised::new(
        background_service(
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
        ),
        None,
    ));
    server.add_service(Supervised::new(
        background_service("JWKS refresher", state.state.auth.refresher()),
        None,
    ));
    // Declared with every backend, so that dashboards and alerts find the series.
    crate::metrics::declare_state(&["counters", "kv", "tasks", "usage", "ping"]);
    if let Some(shared) = state.state.stores.shared.clone() {
        server.add_service(Supervised::new(
            background_service(
                "state backend sync",
                StateSync {
                    shared,
                    tasks: state.state.stores.tasks.clone(),
                    every: Duration::from_millis(model.state.sync_interval_ms),
                },
            ),
            None,
        ));
    }
    server.add_service(Supervised::new(
        background_service(
            "SIGHUP reloader",
            Reloader {
                state: state.clone(),
            },
        ),
        None,
    ));
    server.add_service(Supervised::new(
        background_service(
            "SIGUSR1 log reopener",
            LogReopener {
                state: state.clone(),
            },
        ),
        None,
    ));
    Ok((server, state))
}

/// A TLS listener's settings: Mozilla's intermediate profile, the certificate taken from the
/// runtime state at each handshake so that a reload renews it (src/runtime/tls.rs).
fn tls_settings(
    tls: &Arc<crate::runtime::tls::TlsState>,
    path: &str,
) -> Result<TlsSettings, Failure> {
    let mut settings =
        TlsSettings::intermediate("", "").map_err(|e| Failure::Runtime(format!("{path}: {e}")))?;
    settings.set_cert_resolver(tls.resolver());
    Ok(settings)
}

/// Runs the server until SIGTERM (graceful), SIGINT (at once) or SIGQUIT (hand the listening
/// sockets to a process started with `--upgrade`, then drain).
pub fn run(config_path: &Path, opts: &RunOptions) -> Result<(), Failure> {
    let (server, state) = build_with(config_path, opts)?;
    let mut phases = server.watch_execution_phase();
    let watched = state.clone();
    std::thread::spawn(move || {
        use pingora::server::ExecutionPhase as P;
        while let Ok(phase) = phases.blocking_recv() {
            match phase {
                P::GracefulUpgradeTransferringFds => {
                    watched.drain();
                    notify::stopping("handing the listening sockets to the new process")
                }
                P::GracefulTerminate => {
                    watched.drain();
                    notify::stopping("draining")
                }
                P::ShutdownStarted => notify::stopping("stopping"),
                P::Terminated => return,
                _ => {}
            }
        }
    });
    server.run(RunArgs::default());
    state.state.observe.flush_all();
    Ok(())
}

/// The metrics listener: pingora-prometheus's `/metrics` (gzip as it ships), whose connections
/// close after their answer while the process hands its listeners over or drains, like the
/// proxy's and the admin listener's.
fn metrics_app(state: Arc<SharedState>) -> HttpServer<Metrics> {
    let mut app = HttpServer::new_app(Metrics { state });
    app.add_module(ResponseCompressionBuilder::enable(7));
    app
}

struct Metrics {
    state: Arc<SharedState>,
}

#[async_trait::async_trait]
impl ServeHttp for Metrics {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        if self.state.is_draining() {
            session.set_keepalive(None);
        }
        pingora_prometheus::PrometheusHttpApp
            .response(session)
            .await
    }
}

/// Sends `WATCHDOG=1` at half the unit's `WatchdogSec=` while the process's runtimes run.
struct Watchdog {
    period: Duration,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Watchdog {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(self.period / 2);
        loop {
            tokio::select! {
                _ = tick.tick() => notify::watchdog(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Counts every connection a listener accepts (`orion_proxy_connections_accepted_total`), at
/// accept, before the TLS handshake and the caps (Pingora's `connection_filter` hook).
struct CountAccepts(Arc<ListenerSeries>);

impl std::fmt::Debug for CountAccepts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "accept counter of the {} listener", self.0.name)
    }
}

#[async_trait::async_trait]
impl pingora::listeners::ConnectionFilter for CountAccepts {
    async fn should_accept(&self, _addr: Option<&std::net::SocketAddr>) -> bool {
        self.0.accepted();
        true
    }
}

/// A failed or timed-out TLS handshake (the patched Pingora's `handshake_failed` hook): counted in
/// `orion_proxy_tls_handshakes_total`, logged at debug level only (a scanner would otherwise
/// write an ERROR line per connection).
fn handshake_failed(
    series: &ListenerSeries,
    error: Option<&pingora::Error>,
    peer: Option<&pingora::protocols::l4::socket::SocketAddr>,
) {
    series.handshake(error.map(|_| false));
    let peer = peer.map(|p| p.to_string()).unwrap_or_default();
    match error {
        Some(e) => log::debug!(
            "{} listener: TLS handshake from {peer} failed: {e}",
            series.name
        ),
        None => log::debug!(
            "{} listener: TLS handshake from {peer} timed out",
            series.name
        ),
    }
}

/// A listener's application with its TLS handshakes and open connections counted
/// (`orion_proxy_connections_open`), behind the connection caps where the listener has them
/// (the proxy listener).
struct Counted<A> {
    inner: Arc<A>,
    series: Arc<ListenerSeries>,
    caps: Option<Capped>,
}

/// The proxy listener's connection caps (`server.max_connections`,
/// `server.max_connections_per_ip`, read from the config in force at each accept). A connection
/// past a cap is closed as soon as it is accepted, before any read (on a TLS listener, after the
/// handshake Pingora's listener has done), and counted.
struct Capped {
    caps: Arc<Caps>,
    state: Arc<SharedState>,
}

impl Capped {
    /// A place for a connection from `stream`'s peer, or `None` (counted) past a cap.
    fn enter(&self, stream: &Stream) -> Option<Open> {
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let (max_total, max_per_ip) = {
            let rt = self.state.current();
            let s = &rt.config.server;
            (s.max_connections, s.max_connections_per_ip)
        };
        match self.caps.enter(ip, max_total, max_per_ip) {
            Ok(open) => Some(open),
            Err(cap) => {
                crate::metrics::connection_refused(cap);
                None
            }
        }
    }
}

#[async_trait::async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Counted<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &pingora::server::ShutdownWatch,
    ) -> Option<Stream> {
        if stream.get_ssl_digest().is_some() {
            self.series.handshake(Some(true));
        }
        let place = match &self.caps {
            Some(caps) => Some(caps.enter(&stream)?),
            None => None,
        };
        let _open = self.series.open();
        // An HTTP app serves the whole connection (every keep-alive request) in this call.
        let reused = self.inner.process_new(stream, shutdown).await;
        drop(place);
        reused
    }

    fn handshake_failed(
        &self,
        error: Option<&pingora::Error>,
        peer: Option<&pingora::protocols::l4::socket::SocketAddr>,
    ) {
        handshake_failed(&self.series, error, peer);
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
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
