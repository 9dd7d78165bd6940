//! The request as it goes to OrionVM (`upstream_request_filter`): the caller's credentials
//! dropped and the account's attached (a bearer token, or an RFC 9421 signature), the target
//! rebuilt with the endpoint's base path, `Host`, `X-Request-Id`, `traceparent` and the
//! `Content-Length` of a body that was read and checked.

use super::Account;
use super::endpoint::Endpoint;
use super::error::{Failure, UpstreamError};
use super::peer::AttemptState;
use pingora::http::RequestHeader;

/// What the proxy knows about the request that the rewrite needs.
#[derive(Debug, Clone, Copy)]
pub struct Outbound<'a> {
    /// The normalised path that routes and checks saw.
    pub path: &'a str,
    /// The request target as the caller sent it.
    pub original: &'a http::Uri,
    pub request_id: &'a str,
    /// The `traceparent` value to send (a child of the caller's trace).
    pub traceparent: &'a str,
    /// The body read and checked in `request_filter`, when it was read: sent as is, with its
    /// `Content-Length`, and signed.
    pub body: Option<&'a [u8]>,
}

/// Headers of the caller's that never reach OrionVM.
const CALLER_CREDENTIALS: [&str; 4] = [
    "authorization",
    "x-api-key",
    "cookie",
    "proxy-authorization",
];

fn header_error(e: Box<pingora::Error>) -> UpstreamError {
    UpstreamError::Internal(format!("a header for OrionVM could not be set: {e}"))
}

/// Rewrites `req` for `endpoint` of `account`. Returns the `Authorization` value sent, if any
/// (to recognise a refused token).
pub async fn rewrite_request(
    req: &mut RequestHeader,
    endpoint: &Endpoint,
    account: &Account,
    out: &Outbound<'_>,
) -> Result<Option<http::HeaderValue>, UpstreamError> {
    // The caller's credentials never reach OrionVM.
    for name in CALLER_CREDENTIALS {
        req.remove_header(name);
    }
    let auth = account
        .credentials
        .authorization_header()
        .await
        .map_err(|e| UpstreamError::Credentials(e.to_string()))?;
    if let Some(auth) = &auth {
        req.insert_header("authorization", auth.clone())
            .map_err(header_error)?;
    }
    // The request line is rebuilt only when what was checked differs from what came in
    // (a doubled slash, a base path, an absolute-form URI).
    let original = out.original;
    if !endpoint.base_path.is_empty() || original.scheme().is_some() || original.path() != out.path
    {
        let target = match original.query() {
            Some(q) => format!("{}{}?{q}", endpoint.base_path, out.path),
            None => format!("{}{}", endpoint.base_path, out.path),
        };
        let uri = target
            .parse::<http::Uri>()
            .map_err(|_| UpstreamError::BadTarget)?;
        req.set_uri(uri);
    }
    req.insert_header("host", endpoint.authority.as_str())
        .map_err(header_error)?;
    req.insert_header("x-request-id", out.request_id)
        .map_err(header_error)?;
    req.insert_header("traceparent", out.traceparent)
        .map_err(header_error)?;
    if let Some(b) = out.body {
        req.remove_header("transfer-encoding");
        req.insert_header("content-length", b.len().to_string())
            .map_err(header_error)?;
    }
    if let Some(signer) = account.credentials.signer() {
        // Last, on the request exactly as it leaves: path, Host and body are final.
        let body = out.body.unwrap_or_default();
        super::signing::sign_request_header(signer, req, &endpoint.authority, body)
            .map_err(|e| UpstreamError::Internal(format!("signing failed: {e}")))?;
    }
    Ok(auth)
}

impl AttemptState {
    /// Rewrites the request for the endpoint of the current attempt and remembers the
    /// credentials sent; a failure to obtain them counts as a failed attempt.
    pub async fn rewrite(
        &mut self,
        account: &Account,
        req: &mut RequestHeader,
        out: &Outbound<'_>,
    ) -> Result<(), UpstreamError> {
        let Some(endpoint) = self.endpoint.and_then(|i| account.endpoints.get(i)) else {
            return Err(UpstreamError::Internal("no endpoint chosen".into()));
        };
        match rewrite_request(req, endpoint, account, out).await {
            Ok(auth) => {
                self.upstream_auth = auth;
                Ok(())
            }
            Err(e) => {
                if let UpstreamError::Credentials(m) = &e {
                    log::warn!("request {}: {m}", out.request_id);
                    self.failure = Some(Failure::Credentials);
                }
                Err(e)
            }
        }
    }
}
