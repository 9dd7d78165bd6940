//! The proxy's own log lines (the `log` crate: start, reload, errors) on stderr. With
//! `logging.format: json` each line is a JSON object in the access log's ECS shape
//! (`@timestamp`, `log.level`, `log.logger`, `message`, `ecs.version`, `event.dataset`), so one
//! pipeline takes both; `text` keeps env_logger's human form; `auto` (the default) is json when
//! systemd started the process (it sets `JOURNAL_STREAM` / `INVOCATION_ID`), text otherwise.
//!
//! The logger is process-wide (the `log` crate has one), so the chosen shape is a process-wide
//! switch, set by [`super::LogPolicy::commit`] when a config comes into force.

use crate::config::model::LogFormat;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

/// 0: not decided yet (auto), 1: json, 2: text.
static FORMAT: AtomicU8 = AtomicU8::new(0);

fn systemd() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some()
}

/// Sets the shape of the diagnostic lines from the config in force.
pub fn set_format(format: LogFormat) {
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => systemd(),
    };
    FORMAT.store(if json { 1 } else { 2 }, Ordering::Relaxed);
}

fn is_json() -> bool {
    match FORMAT.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => systemd(),
    }
}

/// One diagnostic line as JSON (without the newline).
pub fn json_line(level: log::Level, target: &str, message: &str) -> Vec<u8> {
    let level = match level {
        log::Level::Error => "error",
        log::Level::Warn => "warn",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    };
    let v = serde_json::json!({
        "@timestamp": crate::clock::timestamp(std::time::SystemTime::now()),
        "log.level": level,
        "log.logger": target,
        "message": message,
        "ecs.version": super::access::ECS_VERSION,
        "event.dataset": "orion_proxy.log",
        "event.kind": "event",
        "process.pid": std::process::id(),
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Installs the process's logger (`RUST_LOG` filters, default `info`). Called once by the
/// binary; a second call does nothing.
pub fn init() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            if is_json() {
                let line = json_line(record.level(), record.target(), &record.args().to_string());
                buf.write_all(&line)?;
                buf.write_all(b"\n")
            } else {
                writeln!(
                    buf,
                    "[{} {:<5} {}] {}",
                    crate::clock::timestamp(std::time::SystemTime::now()),
                    record.level(),
                    record.target(),
                    record.args()
                )
            }
        })
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_has_the_ecs_fields() {
        let l = json_line(
            log::Level::Warn,
            "orion_proxy::runtime",
            "a \"quoted\"\nline",
        );
        let v: serde_json::Value = serde_json::from_slice(&l).unwrap();
        assert_eq!(v["log.level"], "warn");
        assert_eq!(v["log.logger"], "orion_proxy::runtime");
        assert_eq!(v["message"], "a \"quoted\"\nline");
        assert_eq!(v["ecs.version"], super::super::access::ECS_VERSION);
        assert!(v["@timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(!l.contains(&b'\n'));
    }
}
