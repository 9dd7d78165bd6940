//! The request as it goes to OrionVM (`upstream_request_filter`): the caller's credentials
//! dropped and the account's attached (a bearer token, or an RFC 9421 signature), the target
//! rebuilt with the endpoint's base path, `Host`, `X-Request-Id`, `traceparent` and the
//! `Content-Length` of a body that was read and checked.

use super::Account;
use super::endpoint::Endpoint;
use super::error::{Failure, UpstreamError};
use super::names::{self, SetHeader};
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
    /// Who called, for the forwarding headers.
    pub caller: super::forward::Caller,
    /// Which of the caller's headers go on (`upstream.forward_headers`).
    pub forward: crate::config::model::ForwardHeaders,
    /// The request's trace, when it is traced: a token fetched for this call is its span.
    pub trace: Option<&'a dyn super::trace::CallTracer>,
}

/// Headers of the caller's that never reach OrionVM (`authorization` first: an account's own
/// replaces it).
const CALLER_CREDENTIALS: [&str; 4] = [
    "authorization",
    "x-api-key",
    "cookie",
    "proxy-authorization",
];

fn header_error(e: Box<pingora::Error>) -> UpstreamError {
    UpstreamError::Internal(format!("a header for OrionVM could not be set: {e}"))
}

fn value(v: &str) -> Result<http::HeaderValue, UpstreamError> {
    http::HeaderValue::from_str(v)
        .map_err(|e| UpstreamError::Internal(format!("a header for OrionVM could not be set: {e}")))
}

/// Rewrites `req` for `endpoint` of `account`. Returns the `Authorization` value sent, if any
/// (to recognise a refused token).
pub async fn rewrite_request(
    req: &mut RequestHeader,
    endpoint: &Endpoint,
    account: &Account,
    out: &Outbound<'_>,
) -> Result<Option<http::HeaderValue>, UpstreamError> {
    let auth = account.credentials.authorization_header(out.trace).await;
    // The caller's credentials never reach OrionVM (not even on a request that fails here);
    // hop-by-hop headers end here; the forwarding headers say who called (`super::forward`,
    // one pass over the names). A caller's `Authorization` that the account's replaces is not
    // removed first: the insert below replaces it.
    let credentials: &[&str] = if matches!(auth, Ok(Some(_))) {
        &CALLER_CREDENTIALS[1..]
    } else {
        &CALLER_CREDENTIALS
    };
    super::forward::caller_headers(req, out.forward, &out.caller, credentials)
        .map_err(header_error)?;
    let auth = auth.map_err(|e| UpstreamError::Credentials(e.to_string()))?;
    if let Some(auth) = &auth {
        req.set(&names::AUTHORIZATION, auth.clone())
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
    req.set(&names::HOST, endpoint.host_value.clone())
        .map_err(header_error)?;
    req.set(&names::X_REQUEST_ID, value(out.request_id)?)
        .map_err(header_error)?;
    req.set(&names::TRACEPARENT, value(out.traceparent)?)
        .map_err(header_error)?;
    if let Some(b) = out.body {
        req.remove_header(&http::header::TRANSFER_ENCODING);
        req.set(&names::CONTENT_LENGTH, http::HeaderValue::from(b.len()))
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

#[cfg(test)]
mod tests {
    use super::super::UpstreamState;
    use super::super::testing::{self, NO_CHECKS};
    use super::*;

    fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
        req.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn outbound<'a>(
        path: &'a str,
        original: &'a http::Uri,
        body: Option<&'a [u8]>,
    ) -> Outbound<'a> {
        Outbound {
            path,
            original,
            request_id: "01REQ",
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            body,
            caller: super::super::forward::Caller {
                ip: None,
                trusted: false,
                tls: false,
            },
            forward: Default::default(),
            trace: None,
        }
    }

    #[tokio::test]
    async fn the_callers_credentials_go_and_orionvms_come_with_the_base_path() {
        let state = UpstreamState::default();
        let url = format!("{}/base/", testing::urls(1)[0]);
        let tenant = testing::tenant(&testing::config(&[url], NO_CHECKS, ""), &state);
        let account = &tenant.account;
        let original: http::Uri = "//api/v1/instances?region=syd".parse().unwrap();
        let mut req = RequestHeader::build("POST", b"//api/v1/instances?region=syd", None).unwrap();
        for (k, v) in [
            ("authorization", "Bearer caller"),
            ("x-api-key", "caller-key"),
            ("cookie", "session=1"),
            ("proxy-authorization", "Basic eA=="),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
        ] {
            req.insert_header(k, v).unwrap();
        }
        let body = br#"{"name":"a"}"#;
        let out = outbound("/api/v1/instances", &original, Some(body));
        let sent = rewrite_request(&mut req, &account.endpoints[0], account, &out)
            .await
            .unwrap();
        assert_eq!(sent.unwrap(), "Bearer test-token");
        assert_eq!(req.uri.to_string(), "/base/api/v1/instances?region=syd");
        assert_eq!(header(&req, "authorization"), Some("Bearer test-token"));
        for gone in [
            "x-api-key",
            "cookie",
            "proxy-authorization",
            "transfer-encoding",
        ] {
            assert_eq!(header(&req, gone), None, "{gone}");
        }
        assert_eq!(header(&req, "host"), Some("127.0.0.1:1"));
        assert_eq!(header(&req, "x-request-id"), Some("01REQ"));
        assert_eq!(header(&req, "traceparent"), Some(out.traceparent));
        assert_eq!(header(&req, "content-length"), Some("12"));
        assert_eq!(header(&req, "content-type"), Some("application/json"));
        assert_eq!(header(&req, "signature"), None);
    }

    #[tokio::test]
    async fn an_unchanged_target_is_kept_and_a_streamed_body_keeps_its_framing() {
        let state = UpstreamState::default();
        let tenant = testing::tenant(&testing::config(&testing::urls(1), NO_CHECKS, ""), &state);
        let account = &tenant.account;
        let original: http::Uri = "/api/v1/instances/7?x=%2F".parse().unwrap();
        let mut req = RequestHeader::build("PUT", b"/api/v1/instances/7?x=%2F", None).unwrap();
        req.insert_header("transfer-encoding", "chunked").unwrap();
        let out = outbound("/api/v1/instances/7", &original, None);
        let mut state = AttemptState {
            endpoint: Some(0),
            ..Default::default()
        };
        state.rewrite(account, &mut req, &out).await.unwrap();
        assert_eq!(req.uri.to_string(), "/api/v1/instances/7?x=%2F");
        assert_eq!(header(&req, "transfer-encoding"), Some("chunked"));
        assert_eq!(header(&req, "content-length"), None);
        assert_eq!(state.upstream_auth.unwrap(), "Bearer test-token");
        // Without an endpoint chosen there is nothing to rewrite for.
        let mut none = AttemptState::default();
        let got = none.rewrite(account, &mut req, &out).await;
        assert!(matches!(got, Err(UpstreamError::Internal(_))));
    }

    #[tokio::test]
    async fn credentials_that_cannot_be_obtained_fail_the_attempt() {
        let state = UpstreamState::default();
        let secret = testing::secret_file();
        let creds = format!(
            "{{type: oauth2, client_id: {{file: \"{secret}\"}}, client_secret: {{file: \"{secret}\"}}}}"
        );
        let config = testing::config_with(
            &testing::urls(1),
            &creds,
            "    connect_timeout_ms: 200\n    read_timeout_ms: 500\n    health_check: {enabled: false}\n",
            "",
        );
        let tenant = testing::tenant(&config, &state);
        let original: http::Uri = "/api/v1/regions".parse().unwrap();
        let mut req = RequestHeader::build("GET", b"/api/v1/regions", None).unwrap();
        req.insert_header("authorization", "Bearer caller").unwrap();
        let mut s = AttemptState {
            endpoint: Some(0),
            ..Default::default()
        };
        let got = s
            .rewrite(
                &tenant.account,
                &mut req,
                &outbound("/api/v1/regions", &original, None),
            )
            .await;
        assert!(matches!(got, Err(UpstreamError::Credentials(_))), "{got:?}");
        assert_eq!(s.failure, Some(Failure::Credentials));
        assert_eq!(
            header(&req, "authorization"),
            None,
            "the caller's token never goes on"
        );
    }
}
