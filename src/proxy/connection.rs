//! Connection hygiene (`server.timeouts`, `server.max_connections*`): what a client connection
//! may cost before, between and around its requests.
//!
//! - The caps on open connections ([`Caps`]), checked by the listener wrapper in `server.rs`
//!   as soon as a connection is accepted: past a cap it is closed at once, before any read.
//! - The request header's deadline and the answer to a header Pingora refuses: two hooks of
//!   the patched `pingora-proxy` (`vendor/pingora-proxy/ORION-PATCH.md`), called before any
//!   `ProxyHttp` phase. A refused header gets the one JSON error body with a request id and an
//!   access-log line; a connection that ends before its header (closed, broken, too slow) is
//!   counted in `orion_proxy_connections_aborted_total`, never an ERROR line each.
//! - Per request ([`per_request`]): the keep-alive idle time, and HTTP/1.1 pipelining (requests
//!   sent in one write are answered in order, instead of Pingora's "Sent data after end of
//!   body" error on the first one).

use crate::config::model::TimeoutsConfig;
use crate::errors::ApiError;
use crate::metrics;
use crate::observe::{self, ErrorNote, request_id};
use crate::runtime::Runtime;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::{Error, ErrorType};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Settings of the downstream session for one request, taken in `early_request_filter`.
pub fn per_request(downstream: &mut ServerSession, timeouts: &TimeoutsConfig) {
    downstream.set_pipelining_enabled(true);
    // Keep-alive stays off where Pingora turned it off (`Connection: close`, HTTP/1.0).
    if downstream.get_keepalive().is_some() {
        downstream.set_keepalive(Some(keepalive_secs(timeouts)));
    }
}

/// Pingora counts keep-alive time in whole seconds (0 would mean "forever").
fn keepalive_secs(timeouts: &TimeoutsConfig) -> u64 {
    timeouts.keepalive_idle_ms.div_ceil(1000).max(1)
}

/// The longest the whole request header may take, counted from when the proxy starts waiting
/// for it: `header_read_ms` on a new connection; on a reused keep-alive connection the wait
/// includes the idle time, so `keepalive_idle + header_read`.
pub fn header_deadline(timeouts: &TimeoutsConfig, reused: bool) -> Duration {
    let header = Duration::from_millis(timeouts.header_read_ms);
    if reused {
        header + Duration::from_secs(keepalive_secs(timeouts))
    } else {
        header
    }
}

/// What happens to a connection whose request header could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderFailure {
    /// Refused by Pingora's parser or framing checks: 400 in the error body, logged.
    Invalid,
    /// Past the header deadline: 408 in the error body, counted.
    Timeout,
    /// The client closed or broke the connection: counted, nothing to answer.
    Gone(&'static str),
}

/// The kind of a header-read error (`None`: leave it to Pingora).
pub fn classify_header_error(e: &Error) -> Option<HeaderFailure> {
    match e.etype() {
        ErrorType::InvalidHTTPHeader => Some(HeaderFailure::Invalid),
        ErrorType::ReadTimedout => Some(HeaderFailure::Timeout),
        ErrorType::ConnectionClosed => Some(HeaderFailure::Gone("closed")),
        ErrorType::ReadError => Some(HeaderFailure::Gone("read_error")),
        _ => None,
    }
}

/// The patched Pingora's `request_header_failed` hook: answers a refused header with the error
/// body (and an access-log line), a slow one with 408, and counts every one.
pub async fn header_failed(session: &mut ServerSession, e: &Error, rt: &Runtime) -> bool {
    let Some(kind) = classify_header_error(e) else {
        return false;
    };
    let err = match kind {
        HeaderFailure::Gone(reason) => {
            metrics::connection_aborted(reason);
            return true;
        }
        HeaderFailure::Timeout => {
            metrics::connection_aborted("header_timeout");
            ApiError::new(
                408,
                "request_timeout",
                "The request did not arrive in time",
                "the request header did not arrive within the proxy's deadline",
            )
        }
        HeaderFailure::Invalid => {
            metrics::connection_aborted("invalid_header");
            ApiError::new(
                400,
                "invalid_request",
                "The request is invalid",
                "the request's framing or header is malformed (Content-Length, \
                 Transfer-Encoding, Host or the header syntax)",
            )
        }
    };
    let id = request_id::new_id();
    let client_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let status = err.status;
    if kind == HeaderFailure::Invalid {
        let note = ErrorNote {
            code: err.code,
            detail: err.detail.clone(),
        };
        observe::log_refused_header(&rt.log, &id, client_ip, status, note);
    }
    let body = err.render(&id);
    if let Err(we) = write_error(session, status, &id, body).await {
        log::debug!("request {id}: could not write the error: {we}");
    }
    true
}

async fn write_error(
    session: &mut ServerSession,
    status: u16,
    id: &str,
    body: Bytes,
) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(status, Some(5))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("x-request-id", id)?;
    header.insert_header("cache-control", "no-store")?;
    header.insert_header("connection", "close")?;
    session.write_error_response(header, body).await
}

/// Open client connections, in total and per IP address, against `server.max_connections`
/// and `server.max_connections_per_ip`. Owned by the proxy listener.
#[derive(Default)]
pub struct Caps {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection; dropping it gives its place back.
pub struct Open {
    caps: Arc<Caps>,
    ip: Option<IpAddr>,
}

impl Caps {
    /// Takes a place for a new connection from `ip`, or names the cap it is past (`total`,
    /// `per_ip`). 0 means no cap.
    pub fn enter(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Open, &'static str> {
        let before = self.total.fetch_add(1, Ordering::AcqRel);
        if max_total > 0 && before >= max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err("total");
        }
        if let Some(ip) = ip {
            let mut map = self.per_ip.lock();
            let n = map.entry(ip).or_insert(0);
            if max_per_ip > 0 && *n >= max_per_ip {
                drop(map);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err("per_ip");
            }
            *n += 1;
        }
        Ok(Open {
            caps: self.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut map = self.caps.per_ip.lock();
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        self.caps.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_refuse_past_the_total_and_per_address_and_give_places_back() {
        let caps = Arc::new(Caps::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = caps.enter(Some(a), 3, 2).unwrap();
        let _a2 = caps.enter(Some(a), 3, 2).unwrap();
        assert_eq!(caps.enter(Some(a), 3, 2).err(), Some("per_ip"));
        let _b1 = caps.enter(Some(b), 3, 2).unwrap();
        assert_eq!(caps.enter(Some(b), 3, 2).err(), Some("total"));
        assert_eq!(caps.open(), 3);
        drop(a1);
        assert_eq!(caps.open(), 2);
        let _a3 = caps.enter(Some(a), 3, 2).unwrap();
        // 0: no cap.
        let unlimited = Arc::new(Caps::default());
        let held: Vec<_> = (0..100)
            .map(|_| unlimited.enter(Some(a), 0, 0).unwrap())
            .collect();
        assert_eq!(unlimited.open(), 100);
        drop(held);
        assert_eq!(unlimited.open(), 0);
        assert!(unlimited.per_ip.lock().is_empty());
    }

    #[test]
    fn header_deadline_adds_the_idle_time_on_a_reused_connection() {
        let t = TimeoutsConfig {
            header_read_ms: 2_000,
            keepalive_idle_ms: 1_500,
            ..Default::default()
        };
        assert_eq!(header_deadline(&t, false), Duration::from_secs(2));
        assert_eq!(header_deadline(&t, true), Duration::from_secs(4));
    }

    #[test]
    fn header_errors_are_classified() {
        let e = |t| Error::new(t);
        assert_eq!(
            classify_header_error(&e(ErrorType::InvalidHTTPHeader)),
            Some(HeaderFailure::Invalid)
        );
        assert_eq!(
            classify_header_error(&e(ErrorType::ReadTimedout)),
            Some(HeaderFailure::Timeout)
        );
        assert_eq!(
            classify_header_error(&e(ErrorType::ConnectionClosed)),
            Some(HeaderFailure::Gone("closed"))
        );
        assert_eq!(classify_header_error(&e(ErrorType::InternalError)), None);
    }
}
