//! The live process: the [`Runtime`] built from one validated config, the one [`State`] that
//! owns everything that outlives a request, and reload (stage, then commit).
//!
//! A reload builds a complete staging [`Staged`] from the new model against the current
//! `State`. Building reads the state (to hand over what the new config shares with the old:
//! sinks, pools, counters) but changes nothing in it: no file is opened, no thread started, no
//! map filled. Only [`Staged::commit`], called once the whole build succeeded, does that. A
//! failed build drops the staging copy and leaves no trace (`docs/ARCHITECTURE.md`, "Reload").

pub mod reload;
pub mod state;
pub mod tls;

pub use reload::SharedState;
pub use state::State;

use crate::auth::Auth;
use crate::auth::permissions::{PermissionRegistry, Roles};
use crate::config::model::Config;
use crate::config::{self, defaults};
use crate::observe::LogPolicy;
use crate::routes::RouteTable;
use crate::upstream::Upstreams;
use std::path::Path;

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
    /// The proxy listener's certificate and key from `server.tls`, loaded by this build.
    pub tls_key: Option<std::sync::Arc<pingora::tls::sign::CertifiedKey>>,
    /// The admin listener's, from `server.admin_tls`.
    pub admin_tls_key: Option<std::sync::Arc<pingora::tls::sign::CertifiedKey>>,
    /// `Idempotency-Key` on creates (`crate::idempotency`).
    pub idempotency: crate::idempotency::Idempotency,
    /// OpenTelemetry traces (`tracing:`; off when absent): the exporter starts at commit.
    pub traces: crate::observe::trace::Traces,
}

/// A runtime that was built completely but is not in force yet.
pub struct Staged {
    runtime: Runtime,
}

impl Staged {
    /// Puts the staged runtime's side effects into the process (files, writer threads, pools
    /// registered in the state) and returns the runtime to swap in.
    pub fn commit(self, state: &State) -> Runtime {
        let mut rt = self.runtime;
        rt.upstreams.commit(&state.upstream);
        rt.traces.commit(&state.observe);
        rt.log.commit(&state.observe);
        rt.auth.commit(&state.auth);
        state.tls.commit(rt.tls_key.clone());
        state.admin_tls.commit(rt.admin_tls_key.clone());
        rt
    }

    /// The runtime without committing it: for `orion-proxy check` and tests that only look.
    pub fn inspect(&self) -> &Runtime {
        &self.runtime
    }
}

/// Validates a parsed config into a staged runtime. Reads `state`, never changes it: what the
/// new config shares with the old (unchanged accounts' credentials and pools, unchanged
/// issuers' key sets, open sinks) is found there and handed over at commit.
pub fn stage(config: Config, text: &str, state: &State) -> Result<Staged, Vec<String>> {
    let mut errors = Vec::new();
    let defaults = defaults().map_err(|e| vec![e])?;
    let trusted_networks = config::check_server(&config)
        .map_err(|e| errors.extend(e))
        .unwrap_or_default();

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
        Auth::build(&config, r, &state.auth)
            .map_err(|e| errors.extend(e))
            .ok()
    });
    let upstreams = Upstreams::build(&config, &state.upstream)
        .map_err(|e| errors.extend(e))
        .ok();
    errors.extend(crate::facade::check_config(&config.facade));
    errors.extend(crate::config::state::check(&config.state));
    let log = LogPolicy::build(&config.logging, &state.observe)
        .map_err(|e| errors.extend(e))
        .ok();
    let body_rules = crate::validate::BodyRules::build(route_list, &config.validation)
        .map_err(|e| errors.extend(e))
        .ok();
    let tls_key = tls::stage(config.server.tls.as_ref(), "server.tls", &mut errors);
    let admin_tls_key = tls::stage(
        config.server.admin_tls.as_ref(),
        "server.admin_tls",
        &mut errors,
    );
    let role_names: Vec<&str> = role_map.keys().map(String::as_str).collect();
    let limits = crate::limits::Limits::build(&config, routes.as_ref(), &role_names, &state.limits)
        .map_err(|e| errors.extend(e))
        .ok();
    let idempotency = crate::idempotency::Idempotency::build(&config, routes.as_ref())
        .map_err(|e| errors.extend(e))
        .ok();
    let traces = crate::observe::trace::Traces::build(config.tracing.as_ref())
        .map_err(|e| errors.extend(e))
        .ok();

    match (
        routes,
        auth,
        upstreams,
        log,
        body_rules,
        limits,
        idempotency,
        traces,
    ) {
        (
            Some(routes),
            Some(auth),
            Some(upstreams),
            Some(log),
            Some(body_rules),
            Some(limits),
            Some(idempotency),
            Some(traces),
        ) if errors.is_empty() => Ok(Staged {
            runtime: Runtime {
                traces,
                body_rules,
                limits,
                idempotency,
                version: config::version_of(text),
                max_body_bytes: config.server.max_body_bytes,
                config,
                routes,
                auth,
                upstreams,
                log,
                trusted_networks,
                tls_key,
                admin_tls_key,
            },
        }),
        _ => Err(errors),
    }
}

/// Reads, parses and validates a file into a staged runtime: what `orion-proxy check` runs
/// (with a fresh `State` that is then dropped, so it has no side effects).
pub fn load(path: &Path, state: &State) -> Result<Staged, Vec<String>> {
    let text = config::read_file(path)?;
    let model = config::parse(&text)?;
    stage(model, &text, state)
}

/// Declares the metric series of the live config and reports endpoint health at scrape time.
pub fn watch_metrics(shared: &std::sync::Arc<SharedState>) {
    let rt = shared.current();
    let endpoints = rt
        .upstreams
        .accounts
        .values()
        .flat_map(|a| a.endpoints.iter().map(|e| &*e.name));
    let get_routes = rt
        .routes
        .routes()
        .iter()
        .filter(|r| r.method == http::Method::GET)
        .map(|r| &*r.name);
    crate::metrics::declare_series(endpoints, get_routes);
    declare_tenants(&rt);
    let weak = std::sync::Arc::downgrade(shared);
    crate::metrics::register_endpoint_health(Box::new(move || {
        let Some(shared) = weak.upgrade() else {
            return Vec::new();
        };
        let rt = shared.current();
        rt.upstreams
            .accounts
            .iter()
            .flat_map(|(name, account)| {
                account
                    .endpoints
                    .iter()
                    .map(|e| crate::metrics::EndpointReport {
                        account: name.clone(),
                        endpoint: e.name.to_string(),
                        up: e.health.is_up(),
                        breaker: match &account.breaker {
                            Some(s) => {
                                crate::metrics::breaker_state_value(e.breaker.reported(s).as_str())
                            }
                            None => 0,
                        },
                    })
            })
            .collect()
    }));
}

/// `orion_proxy_tenant_info`: each tenant of `rt` with its account.
pub fn declare_tenants(rt: &Runtime) {
    crate::metrics::set_tenants(
        rt.upstreams
            .tenants
            .iter()
            .map(|(name, t)| (name.as_str(), &*t.account.name)),
    );
}

/// Validates a file without starting anything and without side effects: `orion-proxy check`.
/// Host names are resolved only with `resolve` (a check makes no DNS query otherwise); the
/// staged runtime is only looked at, never committed, so no file is created and no thread
/// started.
pub fn check(path: &Path, resolve: bool) -> Result<Staged, Vec<String>> {
    let state = State::memory();
    state
        .upstream
        .skip_dns
        .store(!resolve, std::sync::atomic::Ordering::Relaxed);
    load(path, &state)
}

/// `orion-proxy check --offline`: [`check`] without DNS, where what the config names on the
/// deployment host may be missing (CI): each missing secret, certificate, key, CA bundle, JWKS
/// file or log directory is returned as not checked instead of an error
/// (`crate::config::host`); what is there is checked in full.
pub fn check_offline(path: &Path) -> (Result<Staged, Vec<String>>, Vec<String>) {
    crate::config::host::offline(|| check(path, false))
}
