//! OrionVM accounts: where their endpoints are and how the proxy authenticates to them.
//! Each tenant maps to one account, so two tenants' calls go out under different OrionVM
//! credentials.

//! The concern owns the breaker ([`breaker`]) and the budget ([`budget`]) that guard every call
//! to OrionVM, peer selection for the proxied path ([`peer`]), the rewrite of the request that
//! goes upstream ([`rewrite`]) and the proxy's own calls ([`client`]). It imports nothing above
//! it (no proxy, runtime, observe or errors): it returns [`UpstreamError`] and
//! [`client::CallError`], which `src/errors/upstream.rs` turns into the error body.

pub mod balance;
pub mod breaker;
pub mod budget;
pub mod client;
pub mod credentials;
pub mod endpoint;
pub mod error;
pub mod forward;
pub mod names;
pub mod peer;
pub mod rewrite;
pub mod signing;
pub mod stats;
pub mod trace;

pub use error::{Failure, UpstreamError};
pub use peer::AttemptState;
pub use rewrite::{Outbound, rewrite_request};

use crate::auth::principal::Principal;
use crate::config::model::{AccountConfig, Config, CredentialsConfig};
use breaker::Ticket;
use budget::{Budget, BudgetState};
use credentials::Credentials;
use endpoint::{Endpoint, Kept};
use parking_lot::Mutex;
use stats::{EndpointStats, Outcome};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The upstream concern's part of the process state (`runtime::State`): what outlives one
/// config. Building a config ([`Upstreams::build`]) only reads it, to hand over what the new
/// config shares with the old; [`Upstreams::commit`] registers what is new and forgets what is
/// gone.
#[derive(Default)]
pub struct UpstreamState {
    /// The load balancers (with their active health) by account, kept while the account's
    /// endpoints and checks stay the same.
    pools: Mutex<HashMap<String, (AccountConfig, Arc<balance::Pool>)>>,
    /// Health, breaker and counters of each endpoint, by URL.
    endpoints: Mutex<HashMap<String, Kept>>,
    /// The credentials (with their cached OrionVM token) by account, kept while the account's
    /// config stays the same.
    credentials: Mutex<HashMap<String, (AccountConfig, Arc<Credentials>)>>,
    /// Semaphores, waiting count and global rate of the budget toward OrionVM.
    pub budget: BudgetState,
    /// Set by `orion-proxy check` without `--resolve`: building does not resolve the
    /// endpoints' host names (no DNS query); such a build is only looked at, never served.
    pub skip_dns: std::sync::atomic::AtomicBool,
}

impl UpstreamState {
    /// The kept record of the endpoint at `url`, if any.
    fn kept(&self, url: &str) -> Option<Kept> {
        self.endpoints.lock().get(url).cloned()
    }

    /// The credentials kept for account `name`, if its config is still `ac`.
    fn credentials_for(&self, name: &str, ac: &AccountConfig) -> Option<Arc<Credentials>> {
        self.credentials
            .lock()
            .get(name)
            .filter(|(old, _)| old == ac)
            .map(|(_, c)| c.clone())
    }
}

pub struct Account {
    pub name: Arc<str>,
    pub endpoints: Vec<Endpoint>,
    pub credentials: Arc<Credentials>,
    /// For the proxy's own calls to OrionVM ([`client`]).
    pub http: reqwest::Client,
    /// The endpoints as a pingora load balancer with active health checks.
    pub pool: Arc<balance::Pool>,
    /// Concurrency cap and rate toward OrionVM (None: `limits.enabled: false`).
    pub budget: Option<Arc<Budget>>,
    /// Breaker settings (None: `limits.enabled: false`, no breaker).
    pub breaker: Option<breaker::Settings>,
    /// The largest successful answer read whole by [`client::call`]
    /// (`accounts.NAME.max_response_bytes`).
    pub max_response_bytes: usize,
    pub(crate) config: AccountConfig,
}

/// The smallest and largest `accounts.NAME.max_response_bytes`.
pub const MAX_RESPONSE_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=(256 << 20);

/// One call's claim on an endpoint: its breaker ticket and its budget permit. Report how the
/// call ended with [`Attempt::finish`]; dropped without it, nothing is counted.
pub struct Attempt {
    pub index: usize,
    pub started: Instant,
    ticket: Option<Ticket>,
    permit: Option<budget::Permits>,
    stats: Arc<EndpointStats>,
    series: Arc<crate::metrics::UpstreamSeries>,
}

impl Attempt {
    pub fn finish(mut self, outcome: Outcome, elapsed: Option<Duration>) {
        let elapsed = elapsed.unwrap_or_else(|| self.started.elapsed());
        self.stats.record(outcome, Some(elapsed));
        let result = match outcome {
            Outcome::Status(s) => crate::metrics::UpstreamResult::Status(s),
            Outcome::Connect => crate::metrics::UpstreamResult::Connect,
            Outcome::Timeout => crate::metrics::UpstreamResult::Timeout,
            Outcome::Reset => crate::metrics::UpstreamResult::Reset,
        };
        let answered = matches!(outcome, Outcome::Status(_));
        self.series
            .observe(result, answered.then_some(elapsed.as_secs_f64()));
        if let Some(t) = self.ticket.take() {
            t.finish(!outcome.is_failure());
        }
    }

    /// Gives the concurrency slot back (the upstream answer is complete).
    pub fn release_budget(&mut self) {
        self.permit = None;
    }
}

impl Account {
    /// The endpoint for the next attempt, without claiming it (no breaker probe, no budget).
    pub fn pick(&self, avoid: Option<usize>) -> Option<(usize, &Endpoint)> {
        let (i, _ticket) = self.choose(avoid)?;
        Some((i, &self.endpoints[i]))
    }

    /// Round robin over the enabled endpoints that are healthy and whose breaker lets a call
    /// through, skipping `avoid`; when none is healthy, any whose breaker lets a call through.
    fn choose(&self, avoid: Option<usize>) -> Option<(usize, Option<Ticket>)> {
        let usable = |i: usize| Some(i) != avoid && self.endpoints[i].enabled;
        let take = |i: usize| -> Option<Option<Ticket>> {
            match &self.breaker {
                None => Some(None),
                Some(s) => self.endpoints[i].breaker.try_acquire(s).map(Some),
            }
        };
        if self.endpoints.len() == 1 {
            return if usable(0) {
                take(0).map(|t| (0, t))
            } else {
                None
            };
        }
        let slot: Cell<Option<Ticket>> = Cell::new(None);
        let picked = self.pool.select(|i, healthy| {
            if !healthy || !usable(i) {
                return false;
            }
            match take(i) {
                Some(t) => {
                    slot.set(t);
                    true
                }
                None => false,
            }
        });
        if let Some(i) = picked {
            return Some((i, slot.take()));
        }
        (0..self.endpoints.len())
            .filter(|i| usable(*i))
            .find_map(|i| take(i).map(|t| (i, t)))
    }

    /// Whether some endpoint would take a call now (the breaker check before any work).
    pub fn available(&self) -> bool {
        match &self.breaker {
            None => true,
            Some(s) => self
                .endpoints
                .iter()
                .any(|e| e.enabled && e.breaker.available(s)),
        }
    }

    /// Whether an endpoint other than `i` would take a call now.
    pub fn available_besides(&self, i: usize) -> bool {
        self.endpoints.iter().enumerate().any(|(j, e)| {
            j != i && e.enabled && self.breaker.as_ref().is_none_or(|s| e.breaker.available(s))
        })
    }

    /// Seconds until the first open breaker lets a probe through.
    pub fn retry_after(&self) -> u64 {
        match &self.breaker {
            None => 1,
            Some(s) => self
                .endpoints
                .iter()
                .filter(|e| e.enabled)
                .map(|e| e.breaker.retry_after(s))
                .min()
                .unwrap_or(1),
        }
    }

    /// The refusal when no endpoint would take a call ([`Account::available`] is false, the
    /// fast check before any upstream work): counted, with the time until the first probe.
    pub fn refuse_open(&self) -> UpstreamError {
        let e = UpstreamError::Open {
            retry_after: self.retry_after(),
        };
        count_refusal(&e);
        e
    }

    /// Claims an endpoint for one call: breaker first, then the budget (a bounded wait). A
    /// refusal is counted here, whoever asked (the proxied path, a retry, the proxy's own
    /// calls).
    pub async fn acquire(&self, avoid: Option<usize>) -> Result<Attempt, UpstreamError> {
        self.acquire_for(avoid, None).await
    }

    /// [`Account::acquire`] for a caller, within its tenant's and its own shares of the
    /// endpoint (`budget`).
    pub async fn acquire_for(
        &self,
        avoid: Option<usize>,
        caller: Option<budget::Caller<'_>>,
    ) -> Result<Attempt, UpstreamError> {
        let Some((index, ticket)) = self.choose(avoid) else {
            return Err(self.refuse_open());
        };
        let endpoint = &self.endpoints[index];
        let permit = match &self.budget {
            Some(b) => match b
                .acquire_for(&endpoint.url, endpoint.budget.as_ref(), caller)
                .await
            {
                Ok(p) => Some(p),
                Err(e) => {
                    count_refusal(&e);
                    return Err(e);
                }
            },
            None => None,
        };
        Ok(Attempt {
            index,
            started: Instant::now(),
            ticket,
            permit,
            stats: endpoint.stats.clone(),
            series: endpoint.series.clone(),
        })
    }
}

/// Counts a refusal in `orion_proxy_upstream_refused_total`.
fn count_refusal(e: &UpstreamError) {
    match e {
        UpstreamError::Busy { .. } => crate::metrics::upstream_refused("busy"),
        UpstreamError::Open { .. } => crate::metrics::upstream_refused("open"),
        _ => {}
    }
}

pub struct Tenant {
    pub name: Arc<str>,
    pub account: Arc<Account>,
}

pub struct Upstreams {
    pub accounts: HashMap<String, Arc<Account>>,
    /// foldhash: looked up on every request (names from the config).
    pub tenants: foldhash::HashMap<String, Arc<Tenant>>,
    /// `upstream.forward_headers`: which of the caller's headers reach OrionVM.
    pub forward_headers: crate::config::model::ForwardHeaders,
}

impl Upstreams {
    /// Builds accounts and tenants. Reads `state` to hand over what an unchanged account keeps
    /// (its credentials with their cached token, its pool, its endpoints' health and breakers,
    /// its semaphores) and never changes it: [`Upstreams::commit`] does, once the whole config
    /// was built.
    pub fn build(config: &Config, state: &UpstreamState) -> Result<Upstreams, Vec<String>> {
        let mut errors = Vec::new();
        let mut accounts = HashMap::new();
        if config.accounts.is_empty() {
            errors.push("accounts: at least one OrionVM account is needed".to_string());
        }
        // Endpoints of this build by URL, so that two accounts on one URL share its record.
        let mut staged: HashMap<String, Kept> = HashMap::new();
        for (name, ac) in &config.accounts {
            let at = format!("accounts.{name}");
            let timeouts = &config.server.timeouts;
            match build_account(name, ac, timeouts, &config.limits, state, &mut staged) {
                Ok(a) => {
                    accounts.insert(name.clone(), Arc::new(a));
                }
                Err(errs) => errors.extend(errs.into_iter().map(|e| format!("{at}.{e}"))),
            }
        }
        let mut tenants = foldhash::HashMap::default();
        if config.tenants.is_empty() {
            errors.push("tenants: at least one tenant is needed".to_string());
        }
        for (name, tc) in &config.tenants {
            match accounts.get(&tc.account) {
                Some(a) => {
                    tenants.insert(
                        name.clone(),
                        Arc::new(Tenant {
                            name: name.as_str().into(),
                            account: a.clone(),
                        }),
                    );
                }
                None if config.accounts.contains_key(&tc.account) => {} // already reported
                None => errors.push(format!(
                    "tenants.{name}.account: unknown account '{}'",
                    tc.account
                )),
            }
        }
        if errors.is_empty() {
            Ok(Upstreams {
                accounts,
                tenants,
                forward_headers: config.upstream.forward_headers,
            })
        } else {
            Err(errors)
        }
    }

    /// The tenant (and so the OrionVM account) a caller's requests go out under.
    pub fn tenant_for(&self, principal: &Principal) -> Result<Arc<Tenant>, UpstreamError> {
        self.tenants
            .get(&*principal.tenant)
            .cloned()
            .ok_or_else(|| UpstreamError::UnknownTenant {
                tenant: principal.tenant.clone(),
            })
    }

    /// Registers this config's pools, credentials, endpoint records and semaphores in the state
    /// (after the whole config was built), and forgets those of accounts and endpoints that are
    /// gone.
    pub fn commit(&self, state: &UpstreamState) {
        {
            let mut pools = state.pools.lock();
            pools.retain(|name, _| self.accounts.contains_key(name));
            for (name, account) in &self.accounts {
                pools.insert(name.clone(), (account.config.clone(), account.pool.clone()));
            }
        }
        {
            let mut creds = state.credentials.lock();
            creds.retain(|name, _| self.accounts.contains_key(name));
            for (name, account) in &self.accounts {
                creds.insert(
                    name.clone(),
                    (account.config.clone(), account.credentials.clone()),
                );
            }
        }
        let mut kept = HashMap::new();
        let mut semaphores = HashMap::new();
        for account in self.accounts.values() {
            for e in &account.endpoints {
                kept.insert(e.url.clone(), e.kept());
                if let (Some(sem), Some(b)) = (&e.budget, &account.budget) {
                    semaphores.insert(e.url.clone(), (b.max_concurrent, sem.clone()));
                }
            }
        }
        *state.endpoints.lock() = kept;
        state.budget.keep(semaphores);
    }
}

fn build_account(
    name: &str,
    ac: &AccountConfig,
    timeouts: &crate::config::model::TimeoutsConfig,
    limits: &crate::config::limits::LimitsConfig,
    state: &UpstreamState,
    staged: &mut HashMap<String, Kept>,
) -> Result<Account, Vec<String>> {
    let mut errors = ac.health_check.validate();
    if ac.endpoints.is_empty() {
        errors.push("endpoints: at least one endpoint is needed".to_string());
    }
    // The account's own timeouts, else `server.timeouts` (checked with the server section).
    let connect_ms = ac
        .connect_timeout_ms
        .unwrap_or(timeouts.upstream_connect_ms);
    let read_ms = ac.read_timeout_ms.unwrap_or(timeouts.upstream_read_ms);
    if ac.connect_timeout_ms.is_some() && !(1..=60_000).contains(&connect_ms) {
        errors.push("connect_timeout_ms: must be between 1 and 60000".to_string());
    }
    if ac.read_timeout_ms.is_some() && !(1..=600_000).contains(&read_ms) {
        errors.push("read_timeout_ms: must be between 1 and 600000".to_string());
    }
    if !MAX_RESPONSE_BYTES_RANGE.contains(&ac.max_response_bytes) {
        errors.push(format!(
            "max_response_bytes: must be between {} and {}",
            MAX_RESPONSE_BYTES_RANGE.start(),
            MAX_RESPONSE_BYTES_RANGE.end()
        ));
    }
    let (ca, ca_pem) = match &ac.ca_file {
        Some(path) => match endpoint::load_ca(path) {
            Ok((list, pem)) => (Some(list), Some(pem)),
            Err(_)
                if !std::path::Path::new(path).exists()
                    && crate::config::host::missing(|| format!("ca_file: {path} is not here")) =>
            {
                (None, None)
            }
            Err(e) => {
                errors.push(format!("ca_file: {e}"));
                (None, None)
            }
        },
        None => (None, None),
    };
    let connect = Duration::from_millis(connect_ms.max(1));
    let read = Duration::from_millis(read_ms.max(1));
    let mut endpoints = Vec::new();
    for (i, ec) in ac.endpoints.iter().enumerate() {
        let kept = |url: &str, name: &str| {
            staged
                .entry(url.to_string())
                .or_insert_with(|| state.kept(url).unwrap_or_else(|| Kept::new(name)))
                .clone()
        };
        let resolve = !state.skip_dns.load(std::sync::atomic::Ordering::Relaxed);
        match Endpoint::build(name, ec, ca.clone(), connect, read, resolve, kept) {
            Ok(mut e) => {
                e.pool_key = endpoint::pool_key(name, ca_pem.as_deref(), &e);
                endpoints.push(e)
            }
            Err(e) => errors.push(format!("endpoints[{i}].url: {e}")),
        }
    }
    let budget = if limits.enabled {
        match Budget::build(&limits.upstream, "limits.upstream", &state.budget) {
            Ok(b) => Some(Arc::new(b)),
            Err(e) => {
                // Reported by the limits section itself.
                drop(e);
                None
            }
        }
    } else {
        None
    };
    if let Some(b) = &budget {
        for e in &mut endpoints {
            e.budget = b.semaphore_for(&e.url, &state.budget);
        }
    }
    let breaker = limits
        .enabled
        .then(|| breaker::Settings::from_config(&limits.breaker));
    let pool = if endpoints.len() == ac.endpoints.len() && !endpoints.is_empty() {
        match pool_for(state, name, ac, &endpoints) {
            Ok(p) => Some(p),
            Err(e) => {
                errors.push(e);
                None
            }
        }
    } else {
        None
    };
    let credentials = match state.credentials_for(name, ac) {
        Some(c) => Some(c),
        None => {
            match build_credentials(&ac.credentials, endpoints.first(), ca_pem.as_deref(), read) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        }
    };
    match (credentials, pool) {
        (Some(credentials), Some(pool)) if errors.is_empty() => Ok(Account {
            name: name.into(),
            endpoints,
            credentials,
            pool,
            budget,
            breaker,
            max_response_bytes: ac.max_response_bytes,
            http: http_client(ca_pem.as_deref(), connect, read).map_err(|e| vec![e])?,
            config: ac.clone(),
        }),
        _ => Err(errors),
    }
}

/// The account's pool: the one in the state when the endpoints and the health-check settings
/// did not change (so active health survives a reload), else a new one that
/// [`Upstreams::commit`] registers.
fn pool_for(
    state: &UpstreamState,
    name: &str,
    ac: &AccountConfig,
    endpoints: &[Endpoint],
) -> Result<Arc<balance::Pool>, String> {
    let same = |old: &AccountConfig| {
        old.endpoints == ac.endpoints
            && old.health_check == ac.health_check
            && old.ca_file == ac.ca_file
    };
    if let Some((old, pool)) = state.pools.lock().get(name)
        && same(old)
        && pool.serves(endpoints)
    {
        return Ok(pool.clone());
    }
    Ok(Arc::new(balance::Pool::build(endpoints, &ac.health_check)?))
}

/// The HTTP client for the proxy's own calls to OrionVM: the account's CA and timeouts.
pub fn http_client(
    ca_pem: Option<&[u8]>,
    connect: Duration,
    read: Duration,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect)
        .timeout(read)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("orion-proxy/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = ca_pem {
        for cert in
            reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("ca_file: {e}"))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| format!("HTTP client: {e}"))
}

fn build_credentials(
    cc: &CredentialsConfig,
    first: Option<&Endpoint>,
    ca_pem: Option<&[u8]>,
    timeout: Duration,
) -> Result<Credentials, String> {
    match cc {
        CredentialsConfig::StaticToken { token } => {
            let t = token
                .resolve()
                .map_err(|e| format!("credentials.token: {e}"))?;
            Credentials::static_token(&t).map_err(|e| format!("credentials.token: {e}"))
        }
        CredentialsConfig::Signature {
            keyid,
            key,
            algorithm,
            expires_seconds,
            token,
        } => {
            let k = key.resolve().map_err(|e| format!("credentials.key: {e}"))?;
            let lifetime = Duration::from_secs(*expires_seconds);
            let signer = match algorithm {
                crate::config::model::SignatureAlgorithm::HmacSha256 => {
                    signing::Signer::hmac_sha256(keyid, k.expose(), lifetime)
                }
                crate::config::model::SignatureAlgorithm::Ed25519 => {
                    signing::Signer::ed25519(keyid, k.expose(), lifetime)
                }
            }
            .map_err(|e| format!("credentials: {e}"))?;
            let token = token
                .as_ref()
                .map(|t| t.resolve().map_err(|e| format!("credentials.token: {e}")))
                .transpose()?;
            Credentials::signed(signer, token.as_ref())
                .map_err(|e| format!("credentials.token: {e}"))
        }
        CredentialsConfig::Oauth2 {
            client_id,
            client_secret,
            token_path,
            refresh_before_seconds,
        } => {
            let id = client_id
                .resolve()
                .map_err(|e| format!("credentials.client_id: {e}"))?;
            let secret = client_secret
                .resolve()
                .map_err(|e| format!("credentials.client_secret: {e}"))?;
            if !token_path.starts_with('/') {
                return Err("credentials.token_path: must start with /".into());
            }
            let first =
                first.ok_or_else(|| "credentials: no endpoint to fetch tokens from".to_string())?;
            Credentials::oauth2(
                first.url_for(token_path),
                id,
                secret,
                Duration::from_secs(*refresh_before_seconds),
                ca_pem,
                timeout.min(Duration::from_secs(30)),
            )
            .map_err(|e| format!("credentials: {e}"))
        }
    }
}

/// The accounts of the config in force, as the [`Prober`] asks for them on every round.
pub type CurrentAccounts = Box<dyn Fn() -> Vec<Arc<Account>> + Send + Sync>;

/// Drives the active health checks of every account of the current config (each on its own
/// interval) and so keeps `/ready` and the endpoint stats current.
pub struct Prober {
    /// The accounts of the config in force.
    pub accounts: CurrentAccounts,
    /// How often due checks are looked for.
    pub interval: Duration,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Prober {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let tick = self.interval.min(Duration::from_millis(100));
        loop {
            let mut checks = tokio::task::JoinSet::new();
            for account in (self.accounts)() {
                checks.spawn(async move {
                    account.pool.check_if_due(&account.endpoints).await;
                });
            }
            loop {
                tokio::select! {
                    next = checks.join_next() => if next.is_none() { break },
                    _ = shutdown.changed() => return,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Accounts built from YAML in-process, for the unit tests of this concern.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A file holding `test-token`, for secrets (one per test process, written once: tests run
    /// in parallel).
    pub fn secret_file() -> String {
        static TOKEN: std::sync::OnceLock<tempfile::NamedTempFile> = std::sync::OnceLock::new();
        TOKEN
            .get_or_init(|| {
                let mut f = tempfile::NamedTempFile::new().unwrap();
                std::io::Write::write_all(&mut f, b"test-token").unwrap();
                f
            })
            .path()
            .display()
            .to_string()
    }

    /// The YAML of a static-token credentials object.
    pub fn static_token() -> String {
        format!(
            "{{type: static_token, token: {{file: \"{}\"}}}}",
            secret_file()
        )
    }

    /// A config with one account `a` (static token, `account_extra` lines indented four
    /// spaces) on `urls`, one tenant `t`, and `top` appended at the top level.
    pub fn config(urls: &[String], account_extra: &str, top: &str) -> Config {
        config_with(urls, &static_token(), account_extra, top)
    }

    /// [`config`] with other credentials (a YAML flow map).
    pub fn config_with(
        urls: &[String],
        credentials: &str,
        account_extra: &str,
        top: &str,
    ) -> Config {
        let endpoints: String = urls
            .iter()
            .enumerate()
            .map(|(i, u)| format!("      - {{url: \"{u}\", name: e{i}}}\n"))
            .collect();
        let yaml = format!(
            "accounts:\n  a:\n    endpoints:\n{endpoints}    credentials: {credentials}\n{account_extra}tenants:\n  t: {{account: a}}\n{top}"
        );
        parse(&yaml)
    }

    pub fn parse(yaml: &str) -> Config {
        crate::config::parse(yaml).unwrap_or_else(|e| panic!("{e:?}\n{yaml}"))
    }

    /// Builds and commits the config's upstreams against `state`; returns tenant `t`.
    pub fn tenant(config: &Config, state: &UpstreamState) -> Arc<Tenant> {
        let u = Upstreams::build(config, state).unwrap();
        u.commit(state);
        u.tenants["t"].clone()
    }

    /// `n` distinct loopback URLs where nothing is expected to answer.
    pub fn urls(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("http://127.0.0.1:{}", 1 + i))
            .collect()
    }

    /// `orion_proxy_upstream_refused_total{reason}` as the metrics endpoint would show it.
    pub fn refused(reason: &str) -> u64 {
        prometheus::gather()
            .iter()
            .filter(|f| f.name() == "orion_proxy_upstream_refused_total")
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| m.get_label().iter().any(|l| l.value() == reason))
            .map(|m| m.get_counter().value() as u64)
            .sum()
    }

    /// Tests that read the refusal counters hold this, so that no other test counts at the
    /// same time.
    pub static METRICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// Account lines that switch the active health check off.
    pub const NO_CHECKS: &str = "    health_check: {enabled: false}\n";
}

#[cfg(test)]
mod tests {
    use super::testing::{self, NO_CHECKS};
    use super::*;

    fn semaphores(state: &UpstreamState) -> usize {
        state.budget.semaphores_len()
    }

    #[test]
    fn a_callers_tenant_or_the_refusal_naming_it() {
        let state = UpstreamState::default();
        let config = testing::config(&testing::urls(1), NO_CHECKS, "");
        let built = Upstreams::build(&config, &state).unwrap();
        let who = |tenant: &str| {
            crate::auth::api_keys::principal_for_key("k", &[], tenant, Default::default())
        };
        let t = built.tenant_for(&who("t")).unwrap();
        assert_eq!(&*t.name, "t");
        assert!(Arc::ptr_eq(&t.account, &built.accounts["a"]));
        assert_eq!(
            built.tenant_for(&who("gone")).err(),
            Some(UpstreamError::UnknownTenant {
                tenant: "gone".into()
            })
        );
    }

    #[test]
    fn a_build_changes_nothing_in_the_state_until_commit() {
        let state = UpstreamState::default();
        let config = testing::config(&testing::urls(2), NO_CHECKS, "");
        let built = Upstreams::build(&config, &state).unwrap();
        assert!(state.pools.lock().is_empty());
        assert!(state.endpoints.lock().is_empty());
        assert!(state.credentials.lock().is_empty());
        assert_eq!(semaphores(&state), 0);
        // A rejected config (an unknown account) leaves no trace either.
        let mut bad = config.clone();
        bad.tenants.get_mut("t").unwrap().account = "nope".into();
        assert!(Upstreams::build(&bad, &state).is_err());
        assert!(state.endpoints.lock().is_empty());
        built.commit(&state);
        assert_eq!(state.pools.lock().len(), 1);
        assert_eq!(state.endpoints.lock().len(), 2);
        assert_eq!(state.credentials.lock().len(), 1);
        assert_eq!(semaphores(&state), 2);
    }

    #[test]
    fn unchanged_accounts_keep_their_credentials_breakers_pools_and_semaphores() {
        let state = UpstreamState::default();
        let config = testing::config(&testing::urls(2), NO_CHECKS, "");
        let first = testing::tenant(&config, &state);
        let a = &first.account;
        let again = testing::tenant(&config, &state);
        let b = &again.account;
        assert!(Arc::ptr_eq(&a.credentials, &b.credentials));
        assert!(Arc::ptr_eq(&a.pool, &b.pool));
        for (x, y) in a.endpoints.iter().zip(&b.endpoints) {
            assert!(Arc::ptr_eq(&x.breaker, &y.breaker));
            assert!(Arc::ptr_eq(&x.health, &y.health));
            assert!(Arc::ptr_eq(&x.stats, &y.stats));
            assert!(Arc::ptr_eq(
                x.budget.as_ref().unwrap(),
                y.budget.as_ref().unwrap()
            ));
        }
        // A changed account gets new credentials; its endpoints (same URLs) keep their records.
        let mut changed = config.clone();
        changed.accounts.get_mut("a").unwrap().read_timeout_ms = Some(1234);
        changed.limits.upstream.max_concurrent_per_endpoint += 1;
        let c = testing::tenant(&changed, &state).account.clone();
        assert!(!Arc::ptr_eq(&a.credentials, &c.credentials));
        assert!(Arc::ptr_eq(
            &a.endpoints[0].breaker,
            &c.endpoints[0].breaker
        ));
        assert!(!Arc::ptr_eq(
            a.endpoints[0].budget.as_ref().unwrap(),
            c.endpoints[0].budget.as_ref().unwrap()
        ));
        // An endpoint that is gone is forgotten at the commit.
        let fewer = testing::config(&testing::urls(1), NO_CHECKS, "");
        testing::tenant(&fewer, &state);
        assert_eq!(state.endpoints.lock().len(), 1);
        assert_eq!(semaphores(&state), 1);
    }

    #[test]
    fn two_accounts_on_one_url_share_its_record() {
        let state = UpstreamState::default();
        let url = &testing::urls(1)[0];
        let creds = testing::static_token();
        let yaml = format!(
            "accounts:\n  a:\n    endpoints: [{{url: \"{url}\"}}]\n    credentials: {creds}\n  b:\n    endpoints: [{{url: \"{url}\"}}]\n    credentials: {creds}\ntenants:\n  t: {{account: a}}\n"
        );
        let u = Upstreams::build(&testing::parse(&yaml), &state).unwrap();
        let (a, b) = (&u.accounts["a"].endpoints[0], &u.accounts["b"].endpoints[0]);
        assert!(Arc::ptr_eq(&a.breaker, &b.breaker));
        assert!(Arc::ptr_eq(&a.stats, &b.stats));
        u.commit(&state);
        let again = Upstreams::build(&testing::parse(&yaml), &state).unwrap();
        assert!(Arc::ptr_eq(
            &again.accounts["b"].endpoints[0].breaker,
            &a.breaker
        ));
    }
}
