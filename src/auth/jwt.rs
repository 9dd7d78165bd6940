//! JWTs from external identity providers (RFC 8725 rules).
//!
//! Each issuer pins its algorithms; `none` cannot even be parsed (jsonwebtoken has no such
//! algorithm) and a key is only ever used with an algorithm of its own family, so an HS256
//! token "signed" with an RSA public key is refused. `iss`, `aud`, `exp` and `nbf` are checked
//! with a leeway. Keys come from a JWKS URL (cached, refreshed on a schedule by a background
//! service, fetched again at most once per `jwks_min_refetch_seconds` when a token names an
//! unknown `kid`), a JWKS file, or a shared HMAC secret. A verified token is remembered until
//! it expires, so a repeated token costs one cache lookup.

use super::permissions::Roles;
use super::principal::{CredentialKind, Principal};
use crate::config::auth::{IssuerConfig, JwtConfig};
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use pingora_memory_cache::MemoryCache;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest a verified token stays cached, whatever its `exp`.
const MAX_CACHE_TTL: Duration = Duration::from_secs(300);
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Keys tried for a token without `kid`.
const MAX_KEYS_WITHOUT_KID: usize = 16;

/// Why a JWT was refused: a stable reason for logs and metrics, and the caller's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwtError {
    pub reason: &'static str,
    pub detail: &'static str,
}

const fn err(reason: &'static str, detail: &'static str) -> JwtError {
    JwtError { reason, detail }
}

struct KeyEntry {
    kid: Option<String>,
    /// The algorithm the JWK declares, if any; the token must use exactly it.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

#[derive(Default)]
pub struct KeySet {
    keys: Vec<KeyEntry>,
}

impl KeySet {
    /// Builds a key set from a JWKS document, skipping keys not meant for signatures or of
    /// unsupported types.
    pub fn from_jwks(doc: &[u8]) -> Result<KeySet, String> {
        let set: JwkSet =
            serde_json::from_slice(doc).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            let alg = match jwk.common.key_algorithm {
                Some(a) => match Algorithm::try_from(a) {
                    Ok(a) => Some(a),
                    Err(_) => continue,
                },
                None => None,
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            // Symmetric keys are never taken from a JWKS: they would let anyone who can read
            // the document sign tokens.
            if key.family() == AlgorithmFamily::Hmac {
                continue;
            }
            keys.push(KeyEntry {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            });
        }
        Ok(KeySet { keys })
    }

    fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a KeyEntry> + 'a {
        self.keys
            .iter()
            .filter(move |k| match kid {
                Some(kid) => k.kid.as_deref() == Some(kid),
                None => true,
            })
            .filter(move |k| k.key.family() == alg.family() && k.alg.is_none_or(|a| a == alg))
            .take(MAX_KEYS_WITHOUT_KID)
    }

    fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A JWKS fetched over HTTP(S). Lives across reloads while its settings stay the same.
pub struct RemoteJwks {
    settings: JwksSettings,
    url: String,
    client: reqwest::Client,
    keys: ArcSwap<KeySet>,
    refresh: Duration,
    min_refetch: Duration,
    /// Last attempt and last success.
    last_attempt: parking_lot::Mutex<Option<Instant>>,
    last_ok: parking_lot::Mutex<Option<Instant>>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

impl RemoteJwks {
    fn new(ic: &IssuerConfig, url: &str) -> Result<RemoteJwks, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("'{url}' is not a URL: {e}"))?;
        match parsed.scheme() {
            "https" => {}
            "http" if is_loopback(&parsed) => {}
            "http" => {
                return Err(format!(
                    "'{url}': JWKS must be fetched over https (plain http only for loopback hosts)"
                ));
            }
            s => return Err(format!("'{url}': unsupported scheme {s}")),
        }
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("orion-proxy/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = ic.ca_file.as_ref().filter(|ca| {
            std::path::Path::new(ca).exists()
                || !crate::config::host::missing(|| format!("jwt ca_file: {ca} is not here"))
        }) {
            let pem = std::fs::read(ca).map_err(|e| format!("ca_file {ca}: {e}"))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("ca_file {ca}: not a PEM certificate: {e}"))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the JWKS client: {e}"))?;
        Ok(RemoteJwks {
            settings: settings_of(ic, url),
            url: url.to_string(),
            client,
            keys: ArcSwap::from_pointee(KeySet::default()),
            refresh: Duration::from_secs(ic.jwks_refresh_seconds),
            min_refetch: Duration::from_secs(ic.jwks_min_refetch_seconds),
            last_attempt: Default::default(),
            last_ok: Default::default(),
            fetching: Default::default(),
            fetches: AtomicU64::new(0),
        })
    }

    /// How many times the JWKS was requested.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    async fn fetch(&self) -> Result<usize, String> {
        *self.last_attempt.lock() = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let resp = self
            .client
            .get(&self.url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("JWKS {}: {e}", self.url))?;
        if !resp.status().is_success() {
            return Err(format!("JWKS {}: status {}", self.url, resp.status()));
        }
        let mut body = Vec::new();
        let mut resp = resp;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("JWKS {}: {e}", self.url))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!(
                    "JWKS {}: larger than {MAX_JWKS_BYTES} bytes",
                    self.url
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let set = KeySet::from_jwks(&body).map_err(|e| format!("JWKS {}: {e}", self.url))?;
        let n = set.len();
        self.keys.store(Arc::new(set));
        *self.last_ok.lock() = Some(Instant::now());
        Ok(n)
    }

    /// The scheduled refresh: fetches when the keys are older than `jwks_refresh_seconds`
    /// (or were never fetched; failures are retried every `jwks_min_refetch_seconds`).
    pub async fn refresh_if_due(&self) {
        let now = Instant::now();
        let due = match (*self.last_ok.lock(), *self.last_attempt.lock()) {
            (_, None) => true,
            (Some(ok), Some(at)) => {
                now.duration_since(ok) >= self.refresh
                    && now.duration_since(at) >= self.min_refetch.min(self.refresh)
            }
            (None, Some(at)) => now.duration_since(at) >= self.min_refetch,
        };
        if !due {
            return;
        }
        let Ok(_one) = self.fetching.try_lock() else {
            return;
        };
        match self.fetch().await {
            Ok(n) => log::debug!("JWKS {} refreshed: {n} keys", self.url),
            Err(e) => log::warn!("{e}; keeping the keys already known"),
        }
    }

    /// A token named a `kid` not in the set: fetch again, at most once per
    /// `jwks_min_refetch_seconds`, however many such tokens arrive.
    async fn refetch_for(&self, kid: &str) {
        let allowed = |this: &Self| {
            this.last_attempt
                .lock()
                .is_none_or(|at| at.elapsed() >= this.min_refetch)
        };
        if !allowed(self) {
            return;
        }
        let _one = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        if self.keys.load().has_kid(kid) || !allowed(self) {
            return;
        }
        if let Err(e) = self.fetch().await {
            log::warn!("{e}");
        }
    }
}

/// What decides whether a remote key set can be handed over to a new config: the URL, the CA,
/// and the refresh settings.
type JwksSettings = (String, Option<String>, u64, u64);

fn settings_of(ic: &IssuerConfig, url: &str) -> JwksSettings {
    (
        url.to_string(),
        ic.ca_file.clone(),
        ic.jwks_refresh_seconds,
        ic.jwks_min_refetch_seconds,
    )
}

/// The remote key sets of the config in force, by issuer (`iss`), kept in the process state
/// (`AuthState`) so that a reload neither drops keys nor fetches them again.
///
/// [`Jwt::build`] only reads it (an unchanged issuer gets the same [`RemoteJwks`]);
/// [`Jwt::commit`], once the whole config was built, makes the new config's sets the
/// registered ones. The [`Refresher`] refreshes exactly the registered sets, so a config that
/// failed to build never fetches anything.
#[derive(Default)]
pub struct JwksRegistry {
    by_issuer: parking_lot::Mutex<HashMap<String, Arc<RemoteJwks>>>,
}

impl JwksRegistry {
    /// The registered key set of `iss`, if its settings are the same.
    fn kept(&self, iss: &str, settings: &JwksSettings) -> Option<Arc<RemoteJwks>> {
        self.by_issuer
            .lock()
            .get(iss)
            .filter(|r| r.settings == *settings)
            .cloned()
    }

    /// The registered key sets, for the refresher and for tests.
    pub fn sets(&self) -> Vec<Arc<RemoteJwks>> {
        self.by_issuer.lock().values().cloned().collect()
    }

    /// Runs the scheduled refreshes that are due.
    pub async fn refresh_due(&self) {
        // The lock is not held across the fetches.
        for r in self.sets() {
            r.refresh_if_due().await;
        }
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

enum Keys {
    Static(KeySet),
    Remote(Arc<RemoteJwks>),
    Hmac(DecodingKey),
}

pub struct Issuer {
    pub name: String,
    iss: String,
    algorithms: Vec<Algorithm>,
    /// One per pinned algorithm: jsonwebtoken wants every algorithm of a `Validation` to fit
    /// the key's family.
    validations: Vec<(Algorithm, Validation)>,
    keys: Keys,
    subject_claim: String,
    roles_claim: String,
    role_map: HashMap<String, Vec<String>>,
    tenant_claim: Option<String>,
    default_tenant: Option<String>,
}

impl Issuer {
    /// The remote JWKS, if the keys come from a URL.
    pub fn remote(&self) -> Option<&Arc<RemoteJwks>> {
        match &self.keys {
            Keys::Remote(r) => Some(r),
            _ => None,
        }
    }
}

struct Cached {
    token: Box<str>,
    principal: Arc<Principal>,
    exp: u64,
}

/// The JWT runtime of one config load.
pub struct Jwt {
    issuers: Vec<Arc<Issuer>>,
    by_iss: HashMap<String, Arc<Issuer>>,
    cache: MemoryCache<String, Arc<Cached>>,
    leeway: u64,
    tenants: HashSet<String>,
    /// Signature checks made (cache misses that got as far as a key).
    signature_checks: AtomicU64,
}

impl Jwt {
    /// Validates the `jwt` section. An issuer whose remote key set is registered in `kept`
    /// with the same settings gets that set (keys and all); `kept` is only read.
    pub fn build(
        cfg: &JwtConfig,
        roles: &Roles,
        tenants: &HashSet<&str>,
        kept: &JwksRegistry,
        errors: &mut Vec<String>,
    ) -> Jwt {
        let mut issuers = Vec::new();
        let mut by_iss = HashMap::new();
        let mut names = HashSet::new();
        for (i, ic) in cfg.issuers.iter().enumerate() {
            let at = format!("jwt.issuers[{i}] ({})", ic.name);
            if !names.insert(ic.name.clone()) {
                errors.push(format!("{at}.name: duplicate issuer name"));
            }
            if let Some(issuer) =
                build_issuer(ic, cfg.leeway_seconds, roles, tenants, kept, &at, errors)
            {
                let issuer = Arc::new(issuer);
                if by_iss.insert(ic.issuer.clone(), issuer.clone()).is_some() {
                    errors.push(format!("{at}.issuer: '{}' is configured twice", ic.issuer));
                }
                issuers.push(issuer);
            }
        }
        if cfg.cache_entries == 0 || cfg.cache_entries > 10_000_000 {
            errors.push("jwt.cache_entries: must be between 1 and 10000000".into());
        }
        Jwt {
            issuers,
            by_iss,
            cache: MemoryCache::new(cfg.cache_entries.clamp(1, 10_000_000)),
            leeway: cfg.leeway_seconds,
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
            signature_checks: AtomicU64::new(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Makes this config's remote key sets the registered ones (those of issuers that are
    /// gone are forgotten). Called once the whole config was built.
    pub fn commit(&self, registry: &JwksRegistry) {
        let mut map = registry.by_issuer.lock();
        map.clear();
        for i in &self.issuers {
            if let Some(r) = i.remote() {
                map.insert(i.iss.clone(), r.clone());
            }
        }
    }

    /// How many tokens needed a signature check (the rest came from the cache).
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    pub fn issuers(&self) -> &[Arc<Issuer>] {
        &self.issuers
    }

    /// Verifies a JWT and maps it to a principal.
    pub async fn verify(&self, token: &str, roles: &Roles) -> Result<Arc<Principal>, JwtError> {
        let now = super::tokens::now_unix();
        if let (Some(hit), _) = self.cache.get(token)
            && &*hit.token == token
            && now < hit.exp.saturating_add(self.leeway)
        {
            return Ok(hit.principal.clone());
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| err("malformed", "the token is not a well-formed JWT"))?;
        if header.crit.is_some() {
            // RFC 7515 section 4.1.11: a recipient that does not understand a critical
            // extension must refuse the token; this proxy understands none.
            return Err(err(
                "critical_extension",
                "the token names critical header parameters (crit) the proxy does not understand",
            ));
        }
        #[derive(serde::Deserialize)]
        struct Iss {
            iss: Option<String>,
        }
        let unverified: Iss = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| err("malformed", "the token is not a well-formed JWT"))?;
        let issuer = unverified
            .iss
            .as_deref()
            .and_then(|iss| self.by_iss.get(iss))
            .ok_or(err("unknown_issuer", "the token's issuer is not accepted"))?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(err(
                "algorithm",
                "the token's algorithm is not accepted for its issuer",
            ));
        }
        let claims = self.check_signature(issuer, token, &header).await?;
        let principal = Arc::new(map_claims(issuer, &claims, roles, &self.tenants)?);
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
        let ttl = Duration::from_secs(exp.saturating_add(self.leeway).saturating_sub(now))
            .min(MAX_CACHE_TTL);
        self.cache.put(
            token,
            Arc::new(Cached {
                token: token.into(),
                principal: principal.clone(),
                exp,
            }),
            Some(ttl),
        );
        Ok(principal)
    }

    async fn check_signature(
        &self,
        issuer: &Issuer,
        token: &str,
        header: &jsonwebtoken::Header,
    ) -> Result<Value, JwtError> {
        let alg = header.alg;
        let kid = header.kid.as_deref();
        let validation = issuer
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(err(
                "algorithm",
                "the token's algorithm is not accepted for its issuer",
            ))?;
        let decode = |key: &DecodingKey| {
            self.signature_checks.fetch_add(1, Ordering::Relaxed);
            jsonwebtoken::decode::<Value>(token, key, validation).map(|d| d.claims)
        };
        let result = match &issuer.keys {
            Keys::Hmac(key) => decode(key),
            Keys::Static(set) => first_valid(set, kid, alg, decode)?,
            Keys::Remote(remote) => {
                if let Some(kid) = kid
                    && !remote.keys.load().has_kid(kid)
                {
                    remote.refetch_for(kid).await;
                }
                let set = remote.keys.load();
                first_valid(&set, kid, alg, decode)?
            }
        };
        result.map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => err("expired", "the token has expired"),
                K::ImmatureSignature => err("not_yet_valid", "the token is not valid yet"),
                K::InvalidIssuer => err("issuer", "the token's issuer is not accepted"),
                K::InvalidAudience => err("audience", "the token is not meant for this proxy"),
                K::MissingRequiredClaim(_) => {
                    err("claims", "the token lacks a required claim (exp, iss, aud)")
                }
                K::InvalidAlgorithm | K::InvalidKeyFormat => err(
                    "algorithm",
                    "the token's algorithm does not fit the issuer's key",
                ),
                K::InvalidSignature => err("signature", "the token's signature is not valid"),
                _ => err("malformed", "the token is not a well-formed JWT"),
            }
        })
    }
}

/// Tries the candidate keys; the first that verifies wins. No candidate: unknown key.
fn first_valid(
    set: &KeySet,
    kid: Option<&str>,
    alg: Algorithm,
    decode: impl Fn(&DecodingKey) -> jsonwebtoken::errors::Result<Value>,
) -> Result<jsonwebtoken::errors::Result<Value>, JwtError> {
    let mut last = None;
    for k in set.candidates(kid, alg) {
        match decode(&k.key) {
            Ok(v) => return Ok(Ok(v)),
            Err(e) => {
                let signature_problem =
                    matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature);
                last = Some(e);
                if !signature_problem {
                    break;
                }
            }
        }
    }
    last.map(Err).ok_or(err(
        "unknown_key",
        "the token's signing key is not known for its issuer",
    ))
}

fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(claims, |v, part| v.get(part))
}

fn map_claims(
    issuer: &Issuer,
    claims: &Value,
    roles: &Roles,
    tenants: &HashSet<String>,
) -> Result<Principal, JwtError> {
    let subject = match claim(claims, &issuer.subject_claim) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(err("claims", "the token has no subject")),
    };
    let values: Vec<&str> = match claim(claims, &issuer.roles_claim) {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => s.split_whitespace().collect(),
        _ => Vec::new(),
    };
    let mut mapped: Vec<Arc<str>> = Vec::new();
    for v in values {
        let targets: Vec<&str> = if issuer.role_map.is_empty() {
            if roles.contains(v) { vec![v] } else { vec![] }
        } else {
            issuer
                .role_map
                .get(v)
                .map(|t| t.iter().map(String::as_str).collect())
                .unwrap_or_default()
        };
        for t in targets {
            if !mapped.iter().any(|m| &**m == t) {
                mapped.push(t.into());
            }
        }
    }
    let tenant = issuer
        .tenant_claim
        .as_deref()
        .and_then(|c| claim(claims, c))
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| issuer.default_tenant.clone())
        .ok_or(err("tenant", "the token names no tenant"))?;
    if !tenants.contains(&tenant) {
        return Err(err("tenant", "the token's tenant is not configured"));
    }
    Ok(Principal {
        id: format!("jwt:{}#{subject}", issuer.name).into(),
        kind: CredentialKind::Jwt,
        permissions: roles.union_of(mapped.iter().map(|r| &**r)),
        roles: mapped,
        tenant: tenant.into(),
        policy: None,
    })
}

const ASYMMETRIC: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fn build_issuer(
    ic: &IssuerConfig,
    leeway: u64,
    roles: &Roles,
    tenants: &HashSet<&str>,
    kept: &JwksRegistry,
    at: &str,
    errors: &mut Vec<String>,
) -> Option<Issuer> {
    let before = errors.len();
    if ic.issuer.is_empty() {
        errors.push(format!("{at}.issuer: must not be empty"));
    }
    if ic.audiences.is_empty() || ic.audiences.iter().any(String::is_empty) {
        errors.push(format!(
            "{at}.audiences: name at least one audience (the aud the provider puts in tokens for this proxy)"
        ));
    }
    let mut algorithms = Vec::new();
    for (j, a) in ic.algorithms.iter().enumerate() {
        match Algorithm::from_str(a) {
            Ok(alg) => algorithms.push(alg),
            Err(_) => errors.push(format!(
                "{at}.algorithms[{j}]: '{a}' is not accepted (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512)"
            )),
        }
    }
    if ic.algorithms.is_empty() {
        errors.push(format!("{at}.algorithms: pin at least one algorithm"));
    }
    let hmac = algorithms
        .iter()
        .any(|a| a.family() == AlgorithmFamily::Hmac);
    let asym = algorithms.iter().any(|a| ASYMMETRIC.contains(a));
    if hmac && asym {
        errors.push(format!(
            "{at}.algorithms: HS* and public-key algorithms cannot be mixed in one issuer"
        ));
    }
    let sources = [
        ic.jwks_url.is_some(),
        ic.jwks_file.is_some(),
        ic.hmac_secret.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if sources != 1 {
        errors.push(format!(
            "{at}: exactly one of jwks_url, jwks_file, hmac_secret is needed"
        ));
    }
    if hmac && ic.hmac_secret.is_none() {
        errors.push(format!("{at}.algorithms: HS* algorithms need hmac_secret"));
    }
    if ic.hmac_secret.is_some() && asym {
        errors.push(format!(
            "{at}.hmac_secret: only for HS256/HS384/HS512 issuers"
        ));
    }
    if ic.jwks_refresh_seconds == 0 {
        errors.push(format!("{at}.jwks_refresh_seconds: must be at least 1"));
    }
    if !ic.role_map.is_empty() {
        for (k, targets) in &ic.role_map {
            for t in targets {
                if !roles.contains(t) {
                    errors.push(format!("{at}.role_map.{k}: unknown role '{t}'"));
                }
            }
        }
    }
    if let Some(t) = &ic.default_tenant
        && !tenants.contains(t.as_str())
    {
        errors.push(format!("{at}.default_tenant: unknown tenant '{t}'"));
    }
    if ic.tenant_claim.is_none() && ic.default_tenant.is_none() {
        errors.push(format!(
            "{at}: set tenant_claim, default_tenant, or both (every principal has a tenant)"
        ));
    }
    let keys = if let Some(url) = &ic.jwks_url {
        match kept.kept(&ic.issuer, &settings_of(ic, url)) {
            Some(r) => Some(Keys::Remote(r)),
            None => match RemoteJwks::new(ic, url) {
                Ok(r) => Some(Keys::Remote(Arc::new(r))),
                Err(e) => {
                    errors.push(format!("{at}.jwks_url: {e}"));
                    None
                }
            },
        }
    } else if let Some(path) = &ic.jwks_file {
        // Not on this host (an offline check): no keys, the rest of the issuer is checked.
        if !std::path::Path::new(path).exists()
            && crate::config::host::missing(|| format!("{at}.jwks_file: {path} is not here"))
        {
            Some(Keys::Static(KeySet::default()))
        } else {
            match std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|b| KeySet::from_jwks(&b))
            {
                Ok(set) if !set.is_empty() => Some(Keys::Static(set)),
                Ok(_) => {
                    errors.push(format!(
                        "{at}.jwks_file: {path} holds no usable signing key"
                    ));
                    None
                }
                Err(e) => {
                    errors.push(format!("{at}.jwks_file: {path}: {e}"));
                    None
                }
            }
        }
    } else if let Some(secret) = &ic.hmac_secret {
        match secret.resolve() {
            Ok(s) if s.expose().len() >= 32 => {
                Some(Keys::Hmac(DecodingKey::from_secret(s.expose().as_bytes())))
            }
            Ok(_) => {
                errors.push(format!("{at}.hmac_secret: must be at least 32 bytes"));
                None
            }
            Err(e) => {
                errors.push(format!("{at}.hmac_secret: {e}"));
                None
            }
        }
    } else {
        None
    };
    if errors.len() > before {
        return None;
    }
    let validations = algorithms
        .iter()
        .map(|alg| {
            let mut v = Validation::new(*alg);
            v.leeway = leeway;
            v.validate_nbf = true;
            v.validate_exp = true;
            v.set_issuer(&[ic.issuer.as_str()]);
            v.set_audience(&ic.audiences);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            (*alg, v)
        })
        .collect();
    Some(Issuer {
        name: ic.name.clone(),
        iss: ic.issuer.clone(),
        algorithms,
        validations,
        keys: keys?,
        subject_claim: ic.subject_claim.clone(),
        roles_claim: ic.roles_claim.clone(),
        role_map: ic.role_map.clone().into_iter().collect(),
        tenant_claim: ic.tenant_claim.clone(),
        default_tenant: ic.default_tenant.clone(),
    })
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("name", &self.name)
            .field("iss", &self.iss)
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

/// Background service: runs the scheduled refreshes of the registered JWKS (those of the
/// config in force).
pub struct Refresher {
    pub registry: Arc<JwksRegistry>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Refresher {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => self.registry.refresh_due().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::permissions::PermissionRegistry;
    use jsonwebtoken::{EncodingKey, Header, jwk::Jwk};
    use std::collections::BTreeMap;

    fn roles() -> Roles {
        let mut reg = PermissionRegistry::default();
        reg.intern("instances:read").unwrap();
        reg.intern("instances:delete").unwrap();
        let mut r = BTreeMap::new();
        r.insert("viewer".to_string(), vec!["*:read".to_string()]);
        r.insert("admin".to_string(), vec!["*".to_string()]);
        Roles::build(&r, &reg).unwrap()
    }

    fn issuer(name: &str) -> IssuerConfig {
        serde_json::from_value(serde_json::json!({
            "name": name, "issuer": format!("https://{name}.test"), "audiences": ["proxy"],
            "algorithms": ["ES256"], "default_tenant": "acme",
        }))
        .unwrap()
    }

    fn now() -> u64 {
        crate::auth::tokens::now_unix()
    }

    #[tokio::test]
    async fn eddsa_from_a_static_jwks() {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let sk = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let enc = EncodingKey::from_ed_der(sk.to_pkcs8_der().unwrap().as_bytes());
        use base64::Engine;
        let x =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sk.verifying_key().as_bytes());
        let jwk: Jwk = serde_json::from_value(serde_json::json!(
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ed", "alg": "EdDSA"}
        ))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        std::fs::write(
            &file,
            serde_json::to_vec(&JwkSet { keys: vec![jwk] }).unwrap(),
        )
        .unwrap();
        let mut ic = issuer("ed");
        ic.algorithms = vec!["EdDSA".into()];
        ic.jwks_file = Some(file.display().to_string());
        let cfg = JwtConfig {
            issuers: vec![ic],
            ..Default::default()
        };
        let roles = roles();
        let tenants: HashSet<&str> = ["acme"].into_iter().collect();
        let mut errors = Vec::new();
        let jwt = Jwt::build(
            &cfg,
            &roles,
            &tenants,
            &JwksRegistry::default(),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some("ed".into());
        let claims = serde_json::json!({"iss": "https://ed.test", "aud": ["other", "proxy"],
            "sub": "eve", "exp": now() + 300, "roles": ["admin"]});
        let token = jsonwebtoken::encode(&h, &claims, &enc).unwrap();
        let p = jwt.verify(&token, &roles).await.unwrap();
        assert_eq!((&*p.id, &*p.tenant), ("jwt:ed#eve", "acme"));
        assert!(p.has_role("admin"));
    }

    #[tokio::test]
    async fn static_keys_map_claims_and_a_repeated_token_is_a_cache_hit() {
        use p256::pkcs8::EncodePrivateKey;
        let sk = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let enc = EncodingKey::from_ec_der(sk.to_pkcs8_der().unwrap().as_bytes());
        let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some("k1".into());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        std::fs::write(
            &file,
            serde_json::to_vec(&JwkSet { keys: vec![jwk] }).unwrap(),
        )
        .unwrap();
        let mut ic = issuer("idp");
        ic.jwks_file = Some(file.display().to_string());
        ic.tenant_claim = Some("org.tenant".into());
        let cfg = JwtConfig {
            issuers: vec![ic],
            ..Default::default()
        };
        let roles = roles();
        let tenants: HashSet<&str> = ["acme", "globex"].into_iter().collect();
        let mut errors = Vec::new();
        let jwt = Jwt::build(
            &cfg,
            &roles,
            &tenants,
            &JwksRegistry::default(),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("k1".into());
        let claims = serde_json::json!({"iss": "https://idp.test", "aud": "proxy", "sub": "ann",
            "exp": now() + 300, "roles": ["viewer", "not-a-role"], "org": {"tenant": "globex"}});
        let token = jsonwebtoken::encode(&h, &claims, &enc).unwrap();
        let p = jwt.verify(&token, &roles).await.unwrap();
        assert_eq!(&*p.id, "jwt:idp#ann");
        assert_eq!(&*p.tenant, "globex");
        assert_eq!(p.roles.len(), 1);
        assert_eq!(&*p.roles[0], "viewer");
        assert_eq!(jwt.signature_checks(), 1);
        let again = jwt.verify(&token, &roles).await.unwrap();
        assert!(Arc::ptr_eq(&p, &again));
        assert_eq!(
            jwt.signature_checks(),
            1,
            "the second time is a cache lookup"
        );
        // Without the nested claim, the default tenant.
        let mut c2 = claims.clone();
        c2.as_object_mut().unwrap().remove("org");
        let t2 = jsonwebtoken::encode(&h, &c2, &enc).unwrap();
        assert_eq!(&*jwt.verify(&t2, &roles).await.unwrap().tenant, "acme");
    }

    #[tokio::test]
    async fn unknown_critical_header_parameters_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hs");
        let key = b"0123456789abcdef0123456789abcdef-hs";
        std::fs::write(&secret, key).unwrap();
        let mut ic = issuer("hs");
        ic.algorithms = vec!["HS256".into()];
        ic.hmac_secret = Some(crate::config::model::SecretRef::File(
            secret.display().to_string(),
        ));
        let cfg = JwtConfig {
            issuers: vec![ic],
            ..Default::default()
        };
        let roles = roles();
        let tenants: HashSet<&str> = ["acme"].into_iter().collect();
        let mut errors = Vec::new();
        let jwt = Jwt::build(
            &cfg,
            &roles,
            &tenants,
            &JwksRegistry::default(),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let claims = serde_json::json!({"iss": "https://hs.test", "aud": "proxy", "sub": "ann",
            "exp": now() + 300, "roles": ["viewer"]});
        let enc = EncodingKey::from_secret(key);
        let mut h = Header::new(Algorithm::HS256);
        h.crit = Some(vec!["exp-policy".into()]);
        let with_crit = jsonwebtoken::encode(&h, &claims, &enc).unwrap();
        let e = jwt.verify(&with_crit, &roles).await.unwrap_err();
        assert_eq!(e.reason, "critical_extension");
        // The same token without `crit` is accepted.
        let plain = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &enc).unwrap();
        assert!(jwt.verify(&plain, &roles).await.is_ok());
    }

    #[tokio::test]
    async fn hmac_issuers_need_their_own_secret_and_cannot_mix_families() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hs");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef-hs").unwrap();
        let mut ic = issuer("hs");
        ic.algorithms = vec!["HS256".into()];
        ic.hmac_secret = Some(crate::config::model::SecretRef::File(
            secret.display().to_string(),
        ));
        ic.role_map = [("ops".to_string(), vec!["admin".to_string()])].into();
        let cfg = JwtConfig {
            issuers: vec![ic.clone()],
            ..Default::default()
        };
        let roles = roles();
        let tenants: HashSet<&str> = ["acme"].into_iter().collect();
        let mut errors = Vec::new();
        let jwt = Jwt::build(
            &cfg,
            &roles,
            &tenants,
            &JwksRegistry::default(),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let claims = serde_json::json!({"iss": "https://hs.test", "aud": "proxy", "sub": 7,
            "exp": now() + 300, "roles": "ops"});
        let good = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef-hs"),
        )
        .unwrap();
        let p = jwt.verify(&good, &roles).await.unwrap();
        assert_eq!(&*p.roles[0], "admin");
        assert_eq!(&*p.id, "jwt:hs#7");
        let bad = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"another secret of enough length!!"),
        )
        .unwrap();
        assert_eq!(
            jwt.verify(&bad, &roles).await.unwrap_err().reason,
            "signature"
        );

        // Mixing HS256 with a public-key algorithm, or HS256 without a secret: config errors.
        let mut mixed = ic.clone();
        mixed.algorithms = vec!["HS256".into(), "RS256".into()];
        let mut no_secret = issuer("nosecret");
        no_secret.algorithms = vec!["HS256".into()];
        no_secret.jwks_url = Some("https://idp.example/jwks".into());
        let mut none = issuer("none");
        none.algorithms = vec!["none".into()];
        none.jwks_url = Some("https://idp.example/jwks".into());
        for bad in [mixed, no_secret, none] {
            let cfg = JwtConfig {
                issuers: vec![bad.clone()],
                ..Default::default()
            };
            let mut errors = Vec::new();
            Jwt::build(
                &cfg,
                &roles,
                &tenants,
                &JwksRegistry::default(),
                &mut errors,
            );
            assert!(!errors.is_empty(), "{} should be refused", bad.name);
        }
    }

    #[test]
    fn remote_key_sets_are_handed_over_on_commit_only() {
        let roles = roles();
        let tenants: HashSet<&str> = ["acme"].into_iter().collect();
        let mut ic = issuer("remote");
        ic.jwks_url = Some("http://127.0.0.1:9/jwks.json".into());
        let cfg = JwtConfig {
            issuers: vec![ic.clone()],
            ..Default::default()
        };
        let registry = JwksRegistry::default();
        let remote_of = |jwt: &Jwt| jwt.issuers()[0].remote().unwrap().clone();
        let build = |cfg: &JwtConfig| {
            let mut errors = Vec::new();
            let jwt = Jwt::build(cfg, &roles, &tenants, &registry, &mut errors);
            assert!(errors.is_empty(), "{errors:?}");
            jwt
        };

        // Built but not committed (a reload that failed elsewhere): nothing registered, and
        // the next build does not get its key set.
        let first = build(&cfg);
        assert!(registry.sets().is_empty());
        let second = build(&cfg);
        assert!(!Arc::ptr_eq(&remote_of(&first), &remote_of(&second)));

        // Committed: an unchanged issuer gets the same key set (keys and fetch schedule).
        second.commit(&registry);
        assert_eq!(registry.sets().len(), 1);
        let third = build(&cfg);
        assert!(Arc::ptr_eq(&remote_of(&second), &remote_of(&third)));

        // Changed settings: a new key set.
        let mut changed = ic.clone();
        changed.jwks_refresh_seconds += 1;
        let fourth = build(&JwtConfig {
            issuers: vec![changed],
            ..Default::default()
        });
        assert!(!Arc::ptr_eq(&remote_of(&second), &remote_of(&fourth)));

        // A config without the issuer forgets it once committed.
        build(&JwtConfig::default()).commit(&registry);
        assert!(registry.sets().is_empty());
    }
}
