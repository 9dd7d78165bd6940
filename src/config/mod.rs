//! Configuration: one YAML file, strictly parsed, validated once into [`Runtime`], swapped
//! atomically on reload (SIGHUP or `POST /admin/reload`); the old config stays on any error.

pub mod model;
pub mod secret;

use crate::auth::Auth;
use crate::auth::permissions::{PermissionRegistry, Roles};
use crate::observe::LogPolicy;
use crate::routes::RouteTable;
use crate::upstream::Upstreams;
use arc_swap::ArcSwap;
use model::{Config, RouteConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The shipped defaults: roles and the route set (`conf/defaults.yaml`).
pub const DEFAULTS_YAML: &str = include_str!("../../conf/defaults.yaml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    roles: BTreeMap<String, Vec<String>>,
    routes: Vec<RouteConfig>,
}

fn defaults() -> Result<Defaults, String> {
    serde_yaml::from_str(DEFAULTS_YAML).map_err(|e| format!("built-in defaults: {e}"))
}

/// Everything the hot path reads, built from one config.
pub struct Runtime {
    pub config: Config,
    /// Short hash of the file, reported by `/ready`, metrics and admin.
    pub version: String,
    pub routes: RouteTable,
    pub auth: Auth,
    pub upstreams: Upstreams,
    pub log: LogPolicy,
    pub trusted_networks: Vec<ipnet::IpNet>,
    pub max_body_bytes: usize,
    /// Per-route body schemas and rewrite rules, compiled once per build.
    pub body_rules: crate::validate::BodyRules,
    pub limits: crate::limits::Limits,
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

/// Validates a parsed config into a runtime. `previous` lets unchanged accounts keep state.
pub fn build(
    config: Config,
    text: &str,
    previous: Option<&Runtime>,
) -> Result<Runtime, Vec<String>> {
    let mut errors = Vec::new();
    let defaults = defaults().map_err(|e| vec![e])?;
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
    if s.max_header_bytes < 1024 || s.max_header_bytes > 1024 * 1024 {
        errors.push("server.max_header_bytes: must be between 1024 and 1048576".into());
    }
    if let Some(tls) = &s.tls {
        for (k, f) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
            if !Path::new(f).is_file() {
                errors.push(format!("server.tls.{k}: {f} is not a readable file"));
            }
        }
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

    let mut registry = PermissionRegistry::default();
    let route_list = config.routes.as_ref().unwrap_or(&defaults.routes);
    let routes = RouteTable::build(route_list, &mut registry)
        .map_err(|e| errors.extend(e))
        .ok();
    let role_map = config.roles.as_ref().unwrap_or(&defaults.roles);
    let roles = Roles::build(role_map, &registry)
        .map_err(|e| errors.extend(e))
        .ok();
    let auth = roles.and_then(|r| {
        Auth::build(&config, r, previous.map(|p| &p.auth))
            .map_err(|e| errors.extend(e))
            .ok()
    });
    let upstreams = Upstreams::build(&config, previous.map(|p| &p.upstreams))
        .map_err(|e| errors.extend(e))
        .ok();
    errors.extend(crate::facade::check_config(&config.facade));
    let log = LogPolicy::build(&config.logging)
        .map_err(|e| errors.extend(e))
        .ok();
    let body_rules = crate::validate::BodyRules::build(route_list, &config.validation)
        .map_err(|e| errors.extend(e))
        .ok();
    let role_names: Vec<&str> = role_map.keys().map(String::as_str).collect();
    let limits = crate::limits::Limits::build(&config, routes.as_ref(), &role_names)
        .map_err(|e| errors.extend(e))
        .ok();

    match (routes, auth, upstreams, log, body_rules, limits) {
        (Some(routes), Some(auth), Some(upstreams), Some(log), Some(body_rules), Some(limits))
            if errors.is_empty() =>
        {
            Ok(Runtime {
                body_rules,
                limits,
                version: version_of(text),
                max_body_bytes: config.server.max_body_bytes,
                config,
                routes,
                auth,
                upstreams,
                log,
                trusted_networks,
            })
        }
        _ => Err(errors),
    }
}

fn version_of(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(text.as_bytes())[..6])
}

/// Reads, parses and validates a file: what `orion-proxy check` runs.
pub fn load(path: &Path, previous: Option<&Runtime>) -> Result<Runtime, Vec<String>> {
    let text = read_file(path)?;
    let config = parse(&text)?;
    build(config, &text, previous)
}

/// The live runtime and where it came from.
pub struct SharedState {
    path: PathBuf,
    current: ArcSwap<Runtime>,
    reload_lock: parking_lot::Mutex<()>,
}

impl SharedState {
    pub fn new(path: PathBuf, runtime: Runtime) -> Self {
        SharedState {
            path,
            current: ArcSwap::from_pointee(runtime),
            reload_lock: Default::default(),
        }
    }

    pub fn current(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Re-reads the file; on success swaps it in, on failure keeps the old one.
    pub fn reload(&self) -> Result<String, Vec<String>> {
        let _one_at_a_time = self.reload_lock.lock();
        let old = self.current();
        let result = load(&self.path, Some(&old));
        match result {
            Ok(rt) => {
                let version = rt.version.clone();
                if rt.config.server.listen != old.config.server.listen
                    || rt.config.server.admin_listen != old.config.server.admin_listen
                    || rt.config.server.metrics_listen != old.config.server.metrics_listen
                    || rt.config.server.tls != old.config.server.tls
                {
                    log::warn!("listener changes take effect at the next restart");
                }
                self.current.store(Arc::new(rt));
                crate::observe::metrics::config_reloaded(true, &version);
                log::info!("configuration reloaded, version {version}");
                Ok(version)
            }
            Err(errors) => {
                crate::observe::metrics::config_reloaded(false, &old.version);
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
