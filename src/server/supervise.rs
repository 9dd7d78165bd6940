//! Every Pingora service runs under a [`Supervised`] wrapper, so that the process is never half
//! alive:
//!
//! - a listening service binds its addresses itself, at once, into Pingora's table of listening
//!   sockets (the table SIGQUIT hands to a process started with `--upgrade`; sockets already in
//!   it came from the previous process and are kept). A taken or unusable address ends the
//!   process with a message that names it, instead of Pingora's 30 s of retries and a panic that
//!   leaves the other services up;
//! - once every listening service has bound, [`Readiness`] tells systemd `READY=1`;
//! - a service that panics, or a listening service that stops while no shutdown was asked,
//!   ends the process non-zero (systemd's `Restart=on-failure` then acts).

use super::notify;
use crate::runtime::SharedState;
use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the listening services still to bind; the last one makes the process ready.
pub struct Readiness {
    pending: AtomicUsize,
    state: Arc<SharedState>,
}

impl Readiness {
    pub fn new(listening_services: usize, state: Arc<SharedState>) -> Arc<Readiness> {
        Arc::new(Readiness {
            pending: AtomicUsize::new(listening_services),
            state,
        })
    }

    fn bound(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let version = self.state.current().version.clone();
            log::info!("every listener is bound; ready with config version {version}");
            notify::ready(&version);
        }
    }
}

/// Ends the process: the message goes to stderr (the journal), the log and systemd's status.
pub fn fatal(message: &str) -> ! {
    eprintln!("orion-proxy: {message}");
    log::error!("{message}");
    notify::failed(message);
    std::process::exit(1)
}

pub struct Supervised {
    inner: Option<Box<dyn ServiceWithDependents>>,
    name: String,
    addrs: Vec<String>,
    threads: Option<usize>,
    readiness: Option<Arc<Readiness>>,
}

impl Supervised {
    /// Wraps a service; `readiness` for the listening ones (those that count toward `READY=1`).
    pub fn new(
        inner: impl ServiceWithDependents + 'static,
        readiness: Option<Arc<Readiness>>,
    ) -> Supervised {
        Supervised {
            name: inner.name().to_string(),
            addrs: inner.listen_addresses().unwrap_or_default(),
            threads: inner.threads(),
            inner: Some(Box::new(inner)),
            readiness,
        }
    }
}

/// Binds `addr` into the table unless the table already holds it (handed over by the previous
/// process). The socket listens when this returns: connections queue until Pingora accepts.
fn bind_into(fds: &ListenFds, addr: &str) -> Result<(), String> {
    let mut table = fds.lock();
    if table.get(addr).is_some() {
        return Ok(());
    }
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| "not an IP:port address".to_string())?;
    let listener = std::net::TcpListener::bind(sock).map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    table.add(addr.to_string(), listener.into_raw_fd());
    Ok(())
}

#[async_trait]
impl ServiceWithDependents for Supervised {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        if let Some(table) = &fds {
            for addr in &self.addrs {
                if let Err(e) = bind_into(table, addr) {
                    fatal(&format!(
                        "cannot listen on {addr} (the {} listener): {e}",
                        self.name
                    ));
                }
            }
        }
        let watch = shutdown.clone();
        let task = tokio::spawn(async move {
            inner
                .start_service(fds, shutdown, listeners_per_fd, ready_notifier)
                .await;
        });
        if let Some(readiness) = &self.readiness {
            readiness.bound();
        }
        let outcome = task.await;
        let stopping = *watch.borrow();
        match outcome {
            Err(e) if e.is_panic() => {
                fatal(&format!("the {} service died (a panic)", self.name));
            }
            _ if !stopping && !self.addrs.is_empty() => {
                fatal(&format!(
                    "the {} service stopped while no shutdown was asked",
                    self.name
                ));
            }
            _ => {}
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        self.threads
    }

    fn runtime_opts_override(
        &self,
        global: &pingora::server::RuntimeOpts,
    ) -> Option<pingora::server::RuntimeOpts> {
        self.inner
            .as_ref()
            .and_then(|i| i.runtime_opts_override(global))
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.addrs.clone())
    }
}
