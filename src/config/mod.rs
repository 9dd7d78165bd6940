//! Configuration as plain data: the serde model of the one YAML file, strict parsing with every
//! error named by its path, and the checks that need nothing but the model. No module here
//! imports a concern; `src/runtime/` builds the live process from this model
//! (`docs/ARCHITECTURE.md`, "Config and runtime").

pub mod auth;
pub mod health;
pub mod host;
pub mod idempotency;
pub mod limits;
pub mod model;
pub mod secret;
pub mod state;

use model::{Config, RouteConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The shipped defaults: roles and the route set (`conf/defaults.yaml`).
pub const DEFAULTS_YAML: &str = include_str!("../../conf/defaults.yaml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub roles: BTreeMap<String, Vec<String>>,
    pub routes: Vec<RouteConfig>,
}

/// The shipped roles and routes, parsed.
pub fn defaults() -> Result<Defaults, String> {
    serde_yaml::from_str(DEFAULTS_YAML).map_err(|e| format!("built-in defaults: {e}"))
}

/// Parses YAML text into the model, reporting every problem with its path.
pub fn parse(text: &str) -> Result<Config, Vec<String>> {
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| vec![format!("YAML: {e}")])?;
    let json = serde_json::to_value(&yaml).map_err(|e| vec![format!("YAML: {e}")])?;
    let schema =
        serde_json::to_value(schemars::schema_for!(Config)).map_err(|e| vec![e.to_string()])?;
    let validator =
        jsonschema::validator_for(&schema).map_err(|e| vec![format!("config schema: {e}")])?;
    let mut errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| {
            let path = dotted(&e.instance_path().to_string());
            let what = describe(&e, &path);
            let at = if path.is_empty() {
                "(top level)".to_string()
            } else {
                path
            };
            format!("{at}: {what}")
        })
        .collect();
    if !errors.is_empty() {
        errors.sort();
        errors.dedup();
        return Err(errors);
    }
    serde_path_to_error::deserialize(json).map_err(|e| vec![format!("{}: {}", e.path(), e.inner())])
}

/// A schema error's message without the offending value (it may be a secret pasted in the
/// wrong place), with a hint for the forms that have several shapes.
fn describe(e: &jsonschema::ValidationError<'_>, path: &str) -> String {
    let msg = e
        .to_string()
        .replace(&e.instance().to_string(), "the value");
    if msg.contains("oneOf") || msg.contains("anyOf") {
        if path.contains("credentials") {
            return "must be {type: oauth2, client_id, client_secret} or {type: static_token, token}; \
                    each secret is {env: NAME}, {file: PATH} or {credential: NAME}, never the secret itself"
                .to_string();
        }
        return "the value matches none of the allowed forms (see the configuration reference)"
            .to_string();
    }
    msg
}

/// `/server/listen` -> `server.listen`, `/api_keys/0/hash` -> `api_keys[0].hash`.
fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for part in pointer.split('/').filter(|p| !p.is_empty()) {
        let part = part.replace("~1", "/").replace("~0", "~");
        if part.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&part);
        }
    }
    out
}

pub fn read_file(path: &Path) -> Result<String, Vec<String>> {
    std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read {}: {e}", path.display())])
}

/// The checks of the `server` section that need nothing but the model: addresses, sizes,
/// networks. Returns the trusted networks, parsed.
pub fn check_server(config: &Config) -> Result<Vec<ipnet::IpNet>, Vec<String>> {
    let mut errors = Vec::new();
    let s = &config.server;
    for (key, value) in [
        ("server.listen", Some(&s.listen)),
        ("server.admin_listen", s.admin_listen.as_ref()),
        ("server.metrics_listen", s.metrics_listen.as_ref()),
    ] {
        if let Some(v) = value
            && v.parse::<std::net::SocketAddr>().is_err()
        {
            errors.push(format!("{key}: '{v}' is not an IP:port address"));
        }
    }
    if s.threads == 0 || s.threads > 256 {
        errors.push("server.threads: must be between 1 and 256".into());
    }
    if s.max_body_bytes == 0 || s.max_body_bytes > 65536 {
        errors.push(
            "server.max_body_bytes: must be between 1 and 65536 (Pingora's replay buffer)".into(),
        );
    }
    if s.read_buffer_bytes > 1024 * 1024 {
        errors.push("server.read_buffer_bytes: must be at most 1048576".into());
    }
    if s.write_buffer_bytes > 1024 * 1024 {
        errors.push("server.write_buffer_bytes: must be at most 1048576".into());
    }
    if s.max_header_bytes < 1024 || s.max_header_bytes > 1024 * 1024 {
        errors.push("server.max_header_bytes: must be between 1024 and 1048576".into());
    }
    let t = &s.timeouts;
    for (key, value, max) in [
        ("header_read_ms", t.header_read_ms, 600_000),
        ("body_read_ms", t.body_read_ms, 600_000),
        ("keepalive_idle_ms", t.keepalive_idle_ms, 3_600_000),
        ("upstream_connect_ms", t.upstream_connect_ms, 60_000),
        ("upstream_read_ms", t.upstream_read_ms, 600_000),
    ] {
        if value == 0 || value > max {
            errors.push(format!(
                "server.timeouts.{key}: must be between 1 and {max}"
            ));
        }
    }
    for (path, tls) in [("server.tls", &s.tls), ("server.admin_tls", &s.admin_tls)] {
        let Some(tls) = tls else { continue };
        for (k, f) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
            if !Path::new(f).is_file() && !host::missing(|| format!("{path}.{k}: {f} is not here"))
            {
                errors.push(format!("{path}.{k}: {f} is not a readable file"));
            }
        }
    }
    if s.admin_tls.is_some() && s.admin_listen.is_none() {
        errors.push("server.admin_tls: there is no admin listener (server.admin_listen)".into());
    }
    if s.upgrade_socket.is_empty() {
        errors.push("server.upgrade_socket: must be a path".into());
    }
    if let Some(c) = &s.control_socket
        && (c.is_empty() || *c == s.upgrade_socket)
    {
        errors
            .push("server.control_socket: must be a path other than server.upgrade_socket".into());
    }
    let mut trusted_networks = Vec::new();
    for (i, n) in s.trusted_networks.iter().enumerate() {
        match n.parse::<ipnet::IpNet>() {
            Ok(net) => trusted_networks.push(net),
            Err(_) => errors.push(format!(
                "server.trusted_networks[{i}]: '{n}' is not a CIDR network"
            )),
        }
    }
    if errors.is_empty() {
        Ok(trusted_networks)
    } else {
        Err(errors)
    }
}

/// A short hash of the config text: the version reported by `/ready`, metrics and admin.
pub fn version_of(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(text.as_bytes())[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let d = defaults().unwrap();
        assert!(d.routes.len() > 40);
        assert!(d.roles.contains_key("admin"));
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let text = r#"
server: {listen: "127.0.0.1:1", bogus: 1, threads: "two"}
accounts: {}
tenants: {}
extra_top: true
"#;
        let errs = parse(text).unwrap_err();
        let all = errs.join("\n");
        assert!(all.contains("bogus"), "{all}");
        assert!(all.contains("server.threads"), "{all}");
        assert!(all.contains("extra_top"), "{all}");
    }

    #[test]
    fn dotted_paths() {
        assert_eq!(dotted("/api_keys/0/hash"), "api_keys[0].hash");
        assert_eq!(dotted("/server/listen"), "server.listen");
        assert_eq!(dotted(""), "");
    }
}
