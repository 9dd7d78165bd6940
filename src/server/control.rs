//! The local control socket (`server.control_socket`, a Unix socket of mode 0600): how
//! `orion-proxy reload -c FILE` asks the running process to reload and waits for the result,
//! and how `orion-proxy run --upgrade` asks it to hand its listening sockets over. Whoever may
//! open the socket file may ask; no secret is passed. One request line, one JSON answer line:
//!
//! - `reload PATH`: reload (PATH must be the file the process runs): `{"ok": true,
//!   "config_version": V}` or `{"ok": false, "errors": [...], "config_version": OLD}`;
//! - `upgrade`: `{"ok": true, "pid": P}`, then the process sends itself SIGQUIT (Pingora hands
//!   the listening sockets over at `server.upgrade_socket` and drains);
//! - `status`: `{"ok": true, "pid": P, "config_version": V, "config": PATH}`.

use crate::runtime::SharedState;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Binds the control socket: a stale file (no process answers) is replaced; a live one is an
/// error, unless `taking_over` (the process that answered is handing over to this one).
pub fn bind(path: &Path, taking_over: bool) -> Result<std::os::unix::net::UnixListener, String> {
    if path.exists() {
        if !taking_over && std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another orion-proxy process answers on the control socket {} (use `run --upgrade` to take over from it)",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot replace {}: {e}", path.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| format!("cannot bind the control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("control socket {}: {e}", path.display()))?;
    Ok(listener)
}

/// Serves the control socket until shutdown.
pub struct ControlService {
    pub listener: parking_lot::Mutex<Option<std::os::unix::net::UnixListener>>,
    pub state: Arc<SharedState>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ControlService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().take() else {
            return;
        };
        let listener = match tokio::net::UnixListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                log::error!("control socket: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let state = self.state.clone();
                        tokio::spawn(async move { serve(stream, state).await });
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

async fn serve(stream: tokio::net::UnixStream, state: Arc<SharedState>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read);
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let line = line.trim();
    let (command, arg) = line.split_once(' ').unwrap_or((line, ""));
    let mut upgrade = false;
    let answer = match command {
        "reload" => reload(&state, arg).await,
        "status" => json!({
            "ok": true,
            "pid": std::process::id(),
            "config_version": state.current().version,
            "config": state.path().display().to_string(),
        }),
        "upgrade" => {
            upgrade = true;
            json!({"ok": true, "pid": std::process::id()})
        }
        other => json!({"ok": false, "errors": [format!("unknown command '{other}'")]}),
    };
    let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
    let _ = write.shutdown().await;
    if upgrade {
        state.drain();
        log::info!("control socket: a new process takes over; handing the listening sockets over");
        // Pingora's SIGQUIT: send the listening sockets to `server.upgrade_socket`, then drain.
        unsafe {
            libc::kill(std::process::id() as i32, libc::SIGQUIT);
        }
    }
}

async fn reload(state: &Arc<SharedState>, path: &str) -> Value {
    let ours = std::fs::canonicalize(state.path()).unwrap_or_else(|_| state.path().to_path_buf());
    let asked = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
    if ours != asked {
        return json!({
            "ok": false,
            "errors": [format!("this process runs {}, not {path}", state.path().display())],
            "config_version": state.current().version,
        });
    }
    let shared = state.clone();
    match tokio::task::spawn_blocking(move || shared.reload()).await {
        Ok(Ok(version)) => json!({"ok": true, "config_version": version}),
        Ok(Err(errors)) => json!({
            "ok": false,
            "errors": errors,
            "config_version": state.current().version,
        }),
        Err(_) => json!({"ok": false, "errors": ["the reload task failed"]}),
    }
}

/// Sends one request to the control socket at `path` and returns the JSON answer; waits up to
/// `timeout` for it.
pub fn request(path: &Path, line: &str, timeout: Duration) -> Result<Value, String> {
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        format!(
            "no orion-proxy process answers on the control socket {}: {e}",
            path.display()
        )
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("control socket {}: {e}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("control socket {}: no answer: {e}", path.display()))?;
    serde_json::from_str(&answer)
        .map_err(|e| format!("control socket {}: not an answer ({e})", path.display()))
}
