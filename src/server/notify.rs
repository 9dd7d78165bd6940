//! What the process tells systemd (`Type=notify`): `READY=1` once every listener is bound,
//! `STATUS=` lines with the config version, `RELOADING=1` then `READY=1` around a reload,
//! `STOPPING=1` when it starts to drain, `WATCHDOG=1` while it runs. Without `NOTIFY_SOCKET`
//! (not under systemd) every call does nothing.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("cannot notify systemd: {e}");
    }
}

/// Every listener is bound and the config is loaded.
pub fn ready(version: &str) {
    let status = format!("serving, config version {version}");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// A reload started (systemd waits for the next `READY=1`).
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading, NotifyState::Status("reloading")];
    let now = NotifyState::monotonic_usec_now().ok();
    if let Some(now) = now {
        states.push(now);
    }
    send(&states);
}

/// A reload ended: the version in force now, and whether the new file was refused.
pub fn reloaded(version: &str, refused: Option<usize>) {
    let status = match refused {
        None => format!("serving, config version {version}"),
        Some(n) => {
            format!("serving, config version {version}; the last reload was refused ({n} error(s))")
        }
    };
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// The process stops: a graceful shutdown, or a hand-over to a process started with
/// `--upgrade`.
pub fn stopping(why: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(why)]);
}

/// The process cannot run: the status names why, before it exits non-zero.
pub fn failed(why: &str) {
    send(&[NotifyState::Status(why), NotifyState::Errno(1)]);
}

/// The keep-alive of `WatchdogSec=`.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// The watchdog period when the unit has `WatchdogSec=` (and this process is the one watched).
pub fn watchdog_period() -> Option<std::time::Duration> {
    sd_notify::watchdog_enabled()
}
