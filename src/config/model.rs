//! The configuration file's shape: serde structs, strict (`deny_unknown_fields`), with a JSON
//! Schema derived from them so that every error in a file is reported at once with its path.
//! Nothing here is read on the hot path: [`super::Runtime`] is built from it once per load.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners, threads and request limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// OrionVM accounts: endpoints and the credentials the proxy uses toward them.
    pub accounts: BTreeMap<String, AccountConfig>,
    /// Tenants: each names the OrionVM account that carries its calls.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Roles as sets of permissions (`instances:read`, `instances:*`, `*`). Defaults to the
    /// shipped `viewer`, `operator` and `admin` when absent.
    #[serde(default)]
    pub roles: Option<BTreeMap<String, Vec<String>>>,
    /// Callers' API keys, stored as hashes (`orion-proxy keygen` makes them).
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// Access log and redaction.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// The route table. Defaults to the shipped OrionVM mirror and facade routes.
    #[serde(default)]
    pub routes: Option<Vec<RouteConfig>>,
    /// The proxy's own token endpoint (`POST /oauth/token`): signing key, lifetime, limits.
    #[serde(default)]
    pub oauth: crate::config::auth::OAuthConfig,
    /// Clients registered for the client-credentials grant of `/oauth/token`.
    #[serde(default)]
    pub clients: Vec<crate::config::auth::ClientConfig>,
    /// External identity providers whose JWTs are accepted.
    #[serde(default)]
    pub jwt: crate::config::auth::JwtConfig,
    /// Request body validation: schemas, strictness, switches.
    #[serde(default)]
    pub validation: ValidationConfig,
    /// The REST facade (`/v1`): how its tasks wait for OrionVM's state changes.
    #[serde(default)]
    pub facade: FacadeConfig,
    /// Rate limits, the polling cache, the budget toward OrionVM and the circuit breaker.
    #[serde(default)]
    pub limits: crate::config::limits::LimitsConfig,
    /// `Idempotency-Key` on creates: the first answer kept and replayed to retries.
    #[serde(default)]
    pub idempotency: crate::config::idempotency::IdempotencyConfig,
    /// The web console served by the admin listener at `/ui/`.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// What of the caller's request reaches OrionVM.
    #[serde(default)]
    pub upstream: UpstreamSettings,
    /// Where shared state lives: memory (one node) or Redis (several nodes).
    #[serde(default)]
    pub state: crate::config::state::StateConfig,
    /// OpenTelemetry traces exported over OTLP/HTTP; off when absent.
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
}

/// `tracing`: a server span per request and a client span per call to OrionVM, exported over
/// OTLP/HTTP (protobuf) to a collector. Reloadable: a reload with other settings starts a new
/// exporter and retires the old one once its last request is done.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Where the spans go.
    pub otlp: OtlpConfig,
    /// Share of new traces that are recorded and exported, 0.0 to 1.0 (by trace id). A trace
    /// continued from a trusted caller's `traceparent` follows the caller's sampled flag.
    #[serde(default = "default_sampling_ratio")]
    pub sampling_ratio: f64,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

/// `tracing.otlp`: an OTLP/HTTP collector.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's URL, `http(s)://host:4318`; `/v1/traces` is added when the URL has no
    /// path.
    pub endpoint: String,
    /// Headers sent with every export (an API key, a tenant): a value is a string or a secret
    /// reference (`{env: NAME}`, `{file: PATH}`, `{credential: NAME}`), never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, OtlpHeaderValue>,
    /// How long one export may take before it is given up (its spans counted as dropped).
    #[serde(default = "default_otlp_timeout_ms")]
    pub timeout_ms: u64,
}

/// A header value for the collector: plain text, or a secret reference.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum OtlpHeaderValue {
    Plain(String),
    Secret(SecretRef),
}

fn default_sampling_ratio() -> f64 {
    1.0
}
fn default_service_name() -> String {
    "orion-proxy".into()
}
fn default_otlp_timeout_ms() -> u64 {
    5000
}

/// The operators' web console (`/ui/` on the admin listener).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console (the admin listener must be configured).
    pub enabled: bool,
    /// A session ends after this many seconds without a request.
    pub idle_timeout_seconds: u64,
    /// A session ends this many seconds after sign-in, used or not.
    pub absolute_timeout_seconds: u64,
    /// Failed sign-ins accepted per source address and minute; further attempts get 429.
    pub sign_in_failures_per_minute: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            idle_timeout_seconds: 900,
            absolute_timeout_seconds: 8 * 3600,
            sign_in_failures_per_minute: 5,
        }
    }
}

/// What of the caller's request reaches OrionVM (every account).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSettings {
    /// `all` (default): every header of the caller's but its credentials and the hop-by-hop
    /// ones; `allowlist`: only those OrionVM needs (Accept, Content-Type, User-Agent,
    /// Idempotency-Key, conditional headers...). The proxy's own (Authorization, Host,
    /// X-Request-Id, traceparent, X-Forwarded-For, Forwarded) are added in both cases.
    pub forward_headers: ForwardHeaders,
}

/// `upstream.forward_headers`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ForwardHeaders {
    #[default]
    All,
    Allowlist,
}

/// The REST facade's tasks (reboot, snapshot).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FacadeConfig {
    /// How long a task waits for one state change (a reboot's stop, a snapshot's clones)
    /// before it fails.
    pub transition_timeout_ms: u64,
    /// How often a task polls OrionVM while it waits.
    pub poll_interval_ms: u64,
    /// Tasks kept in memory; the oldest finished ones are forgotten first.
    pub max_tasks: usize,
}

impl Default for FacadeConfig {
    fn default() -> Self {
        FacadeConfig {
            transition_timeout_ms: 300_000,
            poll_interval_ms: 1000,
            max_tasks: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the proxy listener, `host:port`.
    pub listen: String,
    /// TLS for the proxy listener; plain HTTP when absent.
    pub tls: Option<TlsConfig>,
    /// Address of the admin listener; none when null.
    pub admin_listen: Option<String>,
    /// TLS for the admin listener (the admin API and the console), like `tls`; plain HTTP when
    /// absent. With it the console's session cookie is `Secure` and `__Host-` prefixed.
    pub admin_tls: Option<TlsConfig>,
    /// Address of the Prometheus metrics listener; none when null.
    pub metrics_listen: Option<String>,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Seconds SIGTERM waits for in-flight requests before exiting.
    pub grace_period_seconds: u64,
    /// Networks whose `X-Request-Id` and `traceparent` are trusted (CIDR).
    pub trusted_networks: Vec<String>,
    /// Largest request body read and checked by the proxy (at most 65536: Pingora's replay buffer).
    pub max_body_bytes: usize,
    /// Largest total size of request headers accepted.
    pub max_header_bytes: usize,
    /// Read buffer of each client connection. Pingora's default is 64 KiB per connection, which
    /// idle keep-alive connections hold too; requests are parsed into their own buffers, so a
    /// small one costs no CPU. 0 reads unbuffered.
    pub read_buffer_bytes: usize,
    /// Deadlines of a client connection and the defaults of the calls toward OrionVM.
    pub timeouts: TimeoutsConfig,
    /// Most client connections open at once over the proxy listener (0: no cap). Past it, a new
    /// connection is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Most client connections open at once from one IP address (0: no cap).
    pub max_connections_per_ip: usize,
    /// Write buffer of each client connection. The response header and the first body bytes
    /// that fit in it leave in one write; Pingora's default (1460 bytes, one TCP segment) makes
    /// a header and a 1 KiB JSON body two `sendto` calls, each waking the client. 0 writes
    /// unbuffered.
    pub write_buffer_bytes: usize,
    /// A local Unix socket (mode 0600) through which `orion-proxy reload -c FILE` asks the
    /// running process to reload and `orion-proxy run --upgrade` asks it to hand its listening
    /// sockets over. None: no control socket.
    pub control_socket: Option<String>,
    /// The Unix socket over which a process started with `run --upgrade` receives the
    /// listening sockets of the running one (Pingora's `upgrade_sock`).
    pub upgrade_socket: String,
}

/// `server.timeouts`, in milliseconds.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// The whole request header must arrive within this time (on a keep-alive connection:
    /// after the idle wait). Past it the connection is closed with 408.
    pub header_read_ms: u64,
    /// The whole request body must arrive within this time once its header was read; past it,
    /// 408 `request_timeout`. The body is read before any call to OrionVM is made.
    pub body_read_ms: u64,
    /// An idle keep-alive connection is closed after this time.
    pub keepalive_idle_ms: u64,
    /// Default of each account's `connect_timeout_ms`.
    pub upstream_connect_ms: u64,
    /// Default of each account's `read_timeout_ms` (one read of OrionVM's answer).
    pub upstream_read_ms: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            header_read_ms: 10_000,
            body_read_ms: 10_000,
            keepalive_idle_ms: 60_000,
            upstream_connect_ms: default_connect_timeout_ms(),
            upstream_read_ms: default_read_timeout_ms(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            tls: None,
            admin_listen: Some("127.0.0.1:9091".into()),
            admin_tls: None,
            metrics_listen: Some("127.0.0.1:9090".into()),
            threads: 2,
            grace_period_seconds: 5,
            trusted_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            max_body_bytes: 65536,
            max_header_bytes: 32 * 1024,
            read_buffer_bytes: 2048,
            timeouts: TimeoutsConfig::default(),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            write_buffer_bytes: 4096,
            control_socket: None,
            upgrade_socket: "/tmp/orion-proxy-upgrade.sock".into(),
        }
    }
}

/// A listener's certificate: PEM files, read at start and at every reload (a reload renews the
/// certificate without a restart).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert_file: String,
    /// The private key of the leaf certificate.
    pub key_file: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// OrionVM base URLs (`https://api.orionvm.com`), tried in order of health.
    pub endpoints: Vec<EndpointConfig>,
    /// PEM file with the CA that signs the endpoints' certificates (system roots otherwise).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// How the proxy authenticates to OrionVM for this account.
    pub credentials: CredentialsConfig,
    /// Connect timeout toward the endpoints (default: `server.timeouts.upstream_connect_ms`).
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Timeout of one read of OrionVM's answer (default: `server.timeouts.upstream_read_ms`).
    #[serde(default)]
    pub read_timeout_ms: Option<u64>,
    /// Active health check of the endpoints.
    #[serde(default)]
    pub health_check: crate::config::health::HealthCheckConfig,
    /// The largest answer the proxy reads whole from OrionVM for its own calls (facade
    /// composites, lists it pages, filters or sorts, coalesced reads), in bytes: past it the
    /// caller gets 502 `upstream_response_too_large`. Error answers are read up to 64 KiB.
    /// Answers proxied as they are stream through and are not limited.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
}

fn default_connect_timeout_ms() -> u64 {
    3000
}
/// 8 MiB: a list of several thousand instances.
pub fn default_max_response_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_read_timeout_ms() -> u64 {
    30000
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `http://host:port` or `https://host[:port]`, optionally with a base path.
    pub url: String,
    /// A short name for logs and stats; defaults to the host.
    #[serde(default)]
    pub name: Option<String>,
    /// SNI and certificate name, when it differs from the URL's host.
    #[serde(default)]
    pub sni: Option<String>,
    /// A disabled endpoint gets no traffic (and is still listed in the stats).
    #[serde(default = "default_true")]
    pub enabled: bool,
}

/// The proxy's credentials toward OrionVM. Secrets are references, never values.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialsConfig {
    /// OAuth2 client credentials against OrionVM's `/oauth/token`.
    Oauth2 {
        client_id: SecretRef,
        client_secret: SecretRef,
        #[serde(default = "default_token_path")]
        token_path: String,
        /// Refresh this many seconds before the token expires.
        #[serde(default = "default_refresh_before")]
        refresh_before_seconds: u64,
    },
    /// A long-lived OrionVM token, sent as `Authorization: Bearer`.
    StaticToken { token: SecretRef },
    /// RFC 9421 HTTP Message Signatures on every request (`src/upstream/signing.rs`),
    /// optionally with a static bearer token as well.
    Signature {
        /// The `keyid` the upstream knows the key by.
        keyid: String,
        /// HMAC: the shared secret (raw bytes, or `base64:...`); ed25519: the 32-byte private
        /// key seed as `base64:...` or 64 hex digits.
        key: SecretRef,
        #[serde(default)]
        algorithm: SignatureAlgorithm,
        /// Lifetime of a signature (`expires` - `created`), seconds.
        #[serde(default = "default_signature_expires")]
        expires_seconds: u64,
        /// A static token also sent as `Authorization: Bearer`, for upstreams that want both.
        #[serde(default)]
        token: Option<SecretRef>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
pub enum SignatureAlgorithm {
    #[default]
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "ed25519")]
    Ed25519,
}

fn default_signature_expires() -> u64 {
    60
}

fn default_token_path() -> String {
    "/oauth/token".into()
}
fn default_refresh_before() -> u64 {
    60
}

/// Where a secret comes from: an environment variable, a file, or a systemd credential
/// (`$CREDENTIALS_DIRECTORY/NAME`, from `LoadCredential=`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretRef {
    Env(String),
    File(String),
    Credential(String),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The account (a key of `accounts`) whose credentials carry this tenant's calls.
    pub account: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who holds the key; appears in logs and audit records.
    pub name: String,
    /// `sha256:<64 hex digits>`, as printed by `orion-proxy keygen`.
    pub hash: String,
    pub roles: Vec<String>,
    pub tenant: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `stdout`, `off`, or a file path for the JSON access log.
    pub access_log: String,
    /// Size-based rotation of a file access log.
    pub rotate: RotateConfig,
    /// Log the request headers (secrets redacted).
    pub request_headers: bool,
    /// Log the response headers (secrets redacted).
    pub response_headers: bool,
    /// Log JSON request bodies (secret fields redacted), up to `body_max_bytes`.
    pub request_body: bool,
    /// Log JSON response bodies (secret fields redacted), up to `body_max_bytes`.
    pub response_body: bool,
    /// Largest logged body, in bytes of redacted JSON; longer bodies are cut.
    pub body_max_bytes: usize,
    /// Extra header names to redact (Authorization, X-API-Key, Cookie, Set-Cookie always are).
    pub redact_headers: Vec<String>,
    /// Extra body field names to redact (client_secret, access_token, password... always are).
    pub redact_fields: Vec<String>,
    /// The audit trail: one record per mutating call, in its own file.
    pub audit: AuditConfig,
    /// The shape of the proxy's own log lines on stderr (diagnostics): `json` (ECS lines like
    /// the access log), `text`, or `auto` (json under systemd, text otherwise).
    pub format: LogFormat,
    /// Which requests the access log leaves out.
    pub access: AccessLogConfig,
}

/// The shape of the diagnostic log lines (`logging.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when started by systemd (`JOURNAL_STREAM` or `INVOCATION_ID` set), text otherwise.
    #[default]
    Auto,
    Json,
    Text,
}

/// `logging.access`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Requests to these paths (exact, after normalisation) or route names get no access-log
    /// line (they are still counted in the metrics). Default: the probes, `/health` and
    /// `/ready`.
    pub skip_routes: Vec<String>,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            skip_routes: vec!["/health".into(), "/ready".into()],
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            access_log: "stdout".into(),
            rotate: RotateConfig::default(),
            request_headers: false,
            response_headers: false,
            request_body: false,
            response_body: false,
            body_max_bytes: 4096,
            redact_headers: Vec::new(),
            redact_fields: Vec::new(),
            audit: AuditConfig::default(),
            format: LogFormat::Auto,
            access: AccessLogConfig::default(),
        }
    }
}

/// Size-based rotation: `FILE` is renamed `FILE.1` (older ones shift to `.2`...) once it would
/// pass `max_bytes`; at most `max_files` rotated files are kept.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RotateConfig {
    pub max_bytes: u64,
    pub max_files: u32,
}

impl Default for RotateConfig {
    fn default() -> Self {
        RotateConfig {
            max_bytes: 100 * 1024 * 1024,
            max_files: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// File path of the audit trail, or `off`. Never the access log's file.
    pub path: String,
    /// Size-based rotation of the audit file.
    pub rotate: RotateConfig,
    /// How far a record has gone before the caller gets the last byte of the answer.
    pub durability: AuditDurability,
    /// What happens to a mutating call when the trail cannot take its record.
    pub on_failure: AuditOnFailure,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: "off".into(),
            rotate: RotateConfig::default(),
            durability: AuditDurability::default(),
            on_failure: AuditOnFailure::default(),
        }
    }
}

/// `logging.audit.durability`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditDurability {
    /// The audit writer has handed the record to the kernel (it survives the proxy crashing,
    /// not the machine losing power).
    #[default]
    Buffered,
    /// The audit writer has also flushed the file to the disk (`fdatasync`), so the record
    /// survives a power loss.
    Fsync,
}

/// `logging.audit.on_failure`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditOnFailure {
    /// Serve the call anyway; the lost record is logged and counted.
    #[default]
    Open,
    /// Refuse mutating calls with 503 `audit_unavailable`, before they reach OrionVM, while the
    /// trail cannot be written.
    Closed,
}

/// One route: a method and a path template, what serves it and what it needs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, used in logs and metrics (`instances.start`).
    pub name: String,
    /// HTTP method, upper case.
    pub method: String,
    /// Path template with `{param}` segments (`/api/v1/instances/{id}/start`).
    pub path: String,
    /// What serves it.
    #[serde(default)]
    pub kind: RouteKind,
    /// Permission needed (`instances:power`); a route without one is public.
    #[serde(default)]
    pub permission: Option<String>,
    /// Whether the request body is JSON that the proxy reads and checks before forwarding.
    #[serde(default)]
    pub json_body: bool,
    /// For `kind: facade`: the facade operation that answers (`instances.create`...).
    #[serde(default)]
    pub handler: Option<String>,
    /// A mirror `GET` whose answer is a bare array: with list query parameters (`limit`,
    /// `sort`, `state`...) the proxy pages, filters and sorts it itself.
    #[serde(default)]
    pub list: bool,
    /// JSON Schema the body must match: a shipped schema's name (`instances.assemble`, see
    /// `schemas/`) or a `.json` file. Implies `json_body`.
    #[serde(default)]
    pub schema: Option<String>,
    /// Refuse fields the schema does not name (default: `validation.strict_mirror`).
    #[serde(default)]
    pub strict: Option<bool>,
    /// Rewrites applied to the validated body before it goes upstream.
    #[serde(default)]
    pub rewrite: Option<RewriteConfig>,
}

/// Request body validation settings.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Refuse unknown fields in mirror bodies too (facade schemas always refuse them).
    pub strict_mirror: bool,
    /// Directory searched first for `NAME.json` when a route names a schema, and against
    /// which relative schema file paths are resolved.
    pub schema_dir: Option<String>,
    /// Route names whose schema is switched off (the body is still size-checked and parsed).
    pub skip: Vec<String>,
}

/// Body rewriting rules of a route, applied in this order: drop, rename, set, defaults.
/// Field names are top-level keys or dotted paths into objects (`network.id`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RewriteConfig {
    /// Fields removed whatever the caller sent (fields the caller may not set).
    pub drop: Vec<String>,
    /// Fields renamed, `from: to` (facade names to OrionVM names).
    pub rename: BTreeMap<String, String>,
    /// Fields set whatever the caller sent.
    pub set: BTreeMap<String, serde_json::Value>,
    /// Fields set only when the caller did not send them (or sent null).
    pub defaults: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    /// Forwarded to OrionVM at the same path.
    #[default]
    Mirror,
    /// Liveness, answered by the proxy.
    Health,
    /// Readiness, answered by the proxy.
    Ready,
    /// The proxy's own OAuth2 token endpoint (client credentials), answered by the proxy.
    OauthToken,
    /// The REST facade (`/v1`), answered by the proxy through its own calls to OrionVM.
    Facade,
    /// The OpenAPI document, answered by the proxy.
    Openapi,
    /// The browsable API documentation (Redoc, embedded in the binary) at `/docs` and its
    /// script at `/docs/redoc.standalone.js`, answered by the proxy.
    Docs,
}
