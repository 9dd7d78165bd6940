//! Why the upstream concern did not (or could not) send a request to OrionVM. The conversion
//! to the one error body is in `src/errors/upstream.rs`; the refusals are counted in
//! `orion_proxy_upstream_refused_total` where they happen (in [`super::Account::acquire`]),
//! never in a conversion.

/// A refusal or failure of the upstream concern before OrionVM answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// The budget toward OrionVM stayed full for the whole wait (503, `upstream_busy`).
    Busy { reason: &'static str },
    /// The breaker of every endpoint that could take the call is open (503, `circuit_open`).
    Open { retry_after: u64 },
    /// A retry after a failed attempt found no other endpoint to take the call: the failure of
    /// the first attempt is what the caller gets (502, `upstream_unreachable`).
    NoOtherEndpoint,
    /// The proxy could not obtain its own OrionVM credentials (502, `upstream_auth_failed`).
    Credentials(String),
    /// The request target cannot be rebuilt for OrionVM (400).
    BadTarget,
    /// The request could not be prepared for OrionVM (a header or signature could not be
    /// built) or the proxy lost track of the call (no tenant, no endpoint): a proxy bug (500).
    Internal(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Busy { reason } => write!(f, "OrionVM is busy: {reason}"),
            UpstreamError::Open { retry_after } => {
                write!(
                    f,
                    "every OrionVM endpoint's breaker is open (retry in {retry_after} s)"
                )
            }
            UpstreamError::NoOtherEndpoint => {
                f.write_str("no other OrionVM endpoint can take the call")
            }
            UpstreamError::Credentials(m) => write!(f, "OrionVM credentials unavailable: {m}"),
            UpstreamError::BadTarget => f.write_str("the request URI cannot be rebuilt"),
            UpstreamError::Internal(m) => write!(f, "upstream call failed: {m}"),
        }
    }
}

impl std::error::Error for UpstreamError {}

/// How an attempt toward OrionVM failed (logs, metrics, the breaker and the endpoint stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection (refused, no route, TLS handshake).
    Connect,
    /// No answer in time (connect, read or write timeout).
    Timeout,
    /// The connection broke before the answer was complete.
    Reset,
    /// The proxy's own OrionVM credentials could not be obtained.
    Credentials,
    /// OrionVM answered 5xx and the call is retried on another endpoint.
    Status5xx,
}

impl Failure {
    /// The kind as logs and metrics name it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::Credentials => "credentials",
            Failure::Status5xx => "5xx",
        }
    }
}
