//! The runtime in force and its reload: stage the new one, commit it, swap it in; on any error
//! keep the old one, untouched.

use super::{Runtime, Staged, State};
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// What a reload observer is told: a reload started, and how it ended (the new version, or
/// every error of the refused file). The server tells systemd (`RELOADING=1`, `READY=1`).
pub enum ReloadEvent<'a> {
    Started,
    Finished(&'a Result<String, Vec<String>>),
}

pub type ReloadObserver = Box<dyn Fn(ReloadEvent<'_>) + Send + Sync>;

/// The live runtime, where it came from, and the state it was built against.
pub struct SharedState {
    path: PathBuf,
    current: ArcSwap<Runtime>,
    reload_lock: parking_lot::Mutex<()>,
    observer: OnceLock<ReloadObserver>,
    /// Set once the process hands over to another or stops: answers then close their
    /// connection, so that clients move before the listeners close.
    draining: std::sync::atomic::AtomicBool,
    /// When the runtime in force was loaded, and how the last reload went.
    history: parking_lot::Mutex<History>,
    /// The one owner of everything that outlives a request.
    pub state: Arc<State>,
}

impl SharedState {
    /// Loads and commits the first runtime from `path`.
    pub fn start(path: &Path, state: Arc<State>) -> Result<SharedState, Vec<String>> {
        let staged = super::load(path, &state)?;
        Ok(Self::from_staged(path.to_path_buf(), staged, state))
    }

    /// Commits an already staged runtime (tests that build a config in memory).
    pub fn from_staged(path: PathBuf, staged: Staged, state: Arc<State>) -> SharedState {
        let runtime = staged.commit(&state);
        SharedState {
            path,
            current: ArcSwap::from_pointee(runtime),
            reload_lock: Default::default(),
            observer: OnceLock::new(),
            draining: Default::default(),
            history: parking_lot::Mutex::new(History {
                loaded_at: std::time::SystemTime::now(),
                last_reload: None,
            }),
            state,
        }
    }

    /// When the runtime in force was loaded, and how the last reload went.
    pub fn history(&self) -> History {
        self.history.lock().clone()
    }

    pub fn current(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// The file the runtime was loaded from (and every reload re-reads).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// From now on every answer closes its connection (an upgrade or a stop is under way).
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sets the one observer of reloads (the first call wins).
    pub fn observe_reloads(&self, observer: ReloadObserver) {
        let _ = self.observer.set(observer);
    }

    /// Re-reads the file; on success commits and swaps it in, on failure keeps the old one.
    /// SIGHUP, `POST /admin/reload` and the control socket all come here.
    pub fn reload(&self) -> Result<String, Vec<String>> {
        let _one_at_a_time = self.reload_lock.lock();
        if let Some(observer) = self.observer.get() {
            observer(ReloadEvent::Started);
        }
        let result = self.reload_locked();
        if let Some(observer) = self.observer.get() {
            observer(ReloadEvent::Finished(&result));
        }
        result
    }

    fn reload_locked(&self) -> Result<String, Vec<String>> {
        let old = self.current();
        match super::load(&self.path, &self.state) {
            Ok(staged) => {
                let rt = staged.commit(&self.state);
                let version = rt.version.clone();
                if rt.config.server.listen != old.config.server.listen
                    || rt.config.server.admin_listen != old.config.server.admin_listen
                    || rt.config.server.metrics_listen != old.config.server.metrics_listen
                    || rt.config.server.tls.is_some() != old.config.server.tls.is_some()
                    || rt.config.server.admin_tls.is_some() != old.config.server.admin_tls.is_some()
                {
                    log::warn!("listener changes take effect at the next restart");
                }
                // `on_unavailable` is read by the limits at each build; the rest at start.
                let backend =
                    |c: &crate::config::state::StateConfig| crate::config::state::StateConfig {
                        on_unavailable: Default::default(),
                        ..c.clone()
                    };
                if backend(&rt.config.state) != backend(&old.config.state) {
                    log::warn!("state backend changes take effect at the next restart");
                }
                super::declare_tenants(&rt);
                self.current.store(Arc::new(rt));
                let now = std::time::SystemTime::now();
                *self.history.lock() = History {
                    loaded_at: now,
                    last_reload: Some(ReloadOutcome {
                        at: now,
                        ok: true,
                        version: version.clone(),
                        errors: Vec::new(),
                    }),
                };
                crate::metrics::config_reloaded(true, &version);
                log::info!("configuration reloaded, version {version}");
                Ok(version)
            }
            Err(errors) => {
                crate::metrics::config_reloaded(false, &old.version);
                self.history.lock().last_reload = Some(ReloadOutcome {
                    at: std::time::SystemTime::now(),
                    ok: false,
                    version: old.version.clone(),
                    errors: errors.clone(),
                });
                log::error!(
                    "configuration reload failed, keeping version {}: {}",
                    old.version,
                    errors.join("; ")
                );
                Err(errors)
            }
        }
    }
}

/// When the runtime in force was loaded, and the last reload's outcome.
#[derive(Debug, Clone)]
pub struct History {
    pub loaded_at: std::time::SystemTime,
    pub last_reload: Option<ReloadOutcome>,
}

/// One reload: when, whether it took, the version in force after it, its errors.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub at: std::time::SystemTime,
    pub ok: bool,
    pub version: String,
    pub errors: Vec<String>,
}
