//! The runtime in force and its reload: stage the new one, commit it, swap it in; on any error
//! keep the old one, untouched.

use super::{Runtime, Staged, State};
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The live runtime, where it came from, and the state it was built against.
pub struct SharedState {
    path: PathBuf,
    current: ArcSwap<Runtime>,
    reload_lock: parking_lot::Mutex<()>,
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
            state,
        }
    }

    pub fn current(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Re-reads the file; on success commits and swaps it in, on failure keeps the old one.
    pub fn reload(&self) -> Result<String, Vec<String>> {
        let _one_at_a_time = self.reload_lock.lock();
        let old = self.current();
        match super::load(&self.path, &self.state) {
            Ok(staged) => {
                let rt = staged.commit(&self.state);
                let version = rt.version.clone();
                if rt.config.server.listen != old.config.server.listen
                    || rt.config.server.admin_listen != old.config.server.admin_listen
                    || rt.config.server.metrics_listen != old.config.server.metrics_listen
                    || rt.config.server.tls != old.config.server.tls
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
                crate::metrics::config_reloaded(true, &version);
                log::info!("configuration reloaded, version {version}");
                Ok(version)
            }
            Err(errors) => {
                crate::metrics::config_reloaded(false, &old.version);
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
