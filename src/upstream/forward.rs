//! Which of the caller's headers reach OrionVM, and what the proxy says about the caller:
//! hop-by-hop headers stripped (RFC 9110 section 7.6.1: the fixed list and every name the
//! `Connection` header lists), `X-Forwarded-For` and `Forwarded` (RFC 7239) appended to, and
//! their inbound values kept only from `server.trusted_networks`; with
//! `upstream.forward_headers: allowlist`, only the headers OrionVM needs.
//!
//! The same stripping applies to OrionVM's answer on its way back ([`strip_response`]).

use super::names::{self, SetHeader};
use crate::config::model::ForwardHeaders;
use http::HeaderMap;
use http::header::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;

/// Hop-by-hop headers (RFC 9110 sections 7.6.1 and 7.8, RFC 9112 section 9.6 and the
/// non-standard `Keep-Alive`/`Proxy-Connection`). `Transfer-Encoding` is hop-by-hop too but
/// frames a streamed body, so [`removals`] leaves it to Pingora.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Headers a `Connection` option may never remove: they frame the message or name its
/// target, and the proxy sets or checks them itself.
const FRAMING: &[&str] = &["content-length", "transfer-encoding", "host"];

/// Headers the proxy sets about the caller; from an untrusted peer they are dropped.
const FORWARDING: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
];

/// What OrionVM needs of a caller's request under `forward_headers: allowlist` (the proxy
/// adds its own: `Authorization`, `Host`, `X-Request-Id`, `traceparent`, the forwarding
/// headers and a signature).
pub const ALLOWLIST: &[&str] = &[
    "accept",
    "accept-language",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "user-agent",
    "idempotency-key",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "tracestate",
];

/// The caller as the proxy's listener saw it.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The TCP peer's address.
    pub ip: Option<IpAddr>,
    /// Whether the peer is in `server.trusted_networks` (a load balancer in front): then its
    /// forwarding headers are kept and appended to.
    pub trusted: bool,
    /// Whether the caller reached the proxy over TLS.
    pub tls: bool,
}

/// The names to remove from `headers`, found in one pass over its names (no lookup by name):
/// the hop-by-hop headers present, every header the `Connection` header names (but never a
/// framing header), and every name `drop` says goes. A name may appear twice (removing it
/// again is a no-op).
fn removals(headers: &HeaderMap, drop: impl Fn(&HeaderName) -> bool) -> Vec<HeaderName> {
    let mut names = Vec::new();
    for name in headers.keys() {
        if *name == http::header::CONNECTION {
            names.extend(
                headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                    .filter(|n| !FRAMING.contains(&n.as_str())),
            );
        }
        if HOP_BY_HOP.contains(&name.as_str()) || drop(name) {
            names.push(name.clone());
        }
    }
    names
}

/// Removes hop-by-hop headers from OrionVM's answer.
pub fn strip_response(resp: &mut ResponseHeader) {
    for name in removals(&resp.headers, |_| false) {
        resp.remove_header(&name);
    }
}

/// The caller's headers as they may go to OrionVM, before the proxy adds its own: `drop`
/// (the caller's credentials) and hop-by-hop headers stripped, then the allowlist applied when
/// configured, then the forwarding headers appended to (or started afresh for an untrusted
/// peer). One pass over the caller's header names decides what goes.
pub fn caller_headers(
    req: &mut RequestHeader,
    policy: ForwardHeaders,
    caller: &Caller,
    drop: &[&str],
) -> pingora::Result<()> {
    // Inbound forwarding values from an untrusted peer are the caller's claims, not facts.
    let inbound = if caller.trusted {
        Inbound {
            xff: joined(&req.headers, &names::X_FORWARDED_FOR.name),
            forwarded: joined(&req.headers, &http::header::FORWARDED),
        }
    } else {
        Inbound::default()
    };
    let gone = removals(&req.headers, |n| {
        let n = n.as_str();
        drop.contains(&n)
            || match policy {
                ForwardHeaders::Allowlist => !ALLOWLIST.contains(&n),
                ForwardHeaders::All => !caller.trusted && FORWARDING.contains(&n),
            }
    });
    for name in gone {
        req.remove_header(&name);
    }
    let Some(ip) = caller.ip else {
        return Ok(());
    };
    let proto = if caller.tls { "https" } else { "http" };
    // Built by pushing the parts: `format!` and the address's `Display` cost about 1,300
    // instructions per address written.
    let mut xff = String::with_capacity(64);
    if let Some(prev) = &inbound.xff {
        xff.push_str(prev);
        xff.push_str(", ");
    }
    let start = xff.len();
    push_ip(&mut xff, ip);
    // The address is written once: `Forwarded` copies its text.
    let ip_text = &xff[start..];
    let mut forwarded = String::with_capacity(64);
    if let Some(prev) = &inbound.forwarded {
        forwarded.push_str(prev);
        forwarded.push_str(", ");
    }
    forwarded.push_str("for=");
    push_forwarded_node(&mut forwarded, ip, ip_text);
    forwarded.push_str(";proto=");
    forwarded.push_str(proto);
    req.set(&names::X_FORWARDED_FOR, header_value(xff)?)?;
    req.set(&names::FORWARDED, header_value(forwarded)?)?;
    req.set(
        &names::X_FORWARDED_PROTO,
        http::HeaderValue::from_static(proto),
    )?;
    Ok(())
}

/// A value the proxy built (an inbound value from a trusted peer is part of it, so it is
/// checked).
fn header_value(v: String) -> pingora::Result<http::HeaderValue> {
    use pingora::OrErr;
    http::HeaderValue::try_from(v).or_err(
        pingora::ErrorType::InvalidHTTPHeader,
        "invalid forwarding header value",
    )
}

#[derive(Default)]
struct Inbound {
    xff: Option<String>,
    forwarded: Option<String>,
}

/// All values of a header as one comma-separated list (`None` when absent or unreadable).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// An RFC 7239 node (`text`: `ip` as [`push_ip`] writes it): an IPv6 address is bracketed
/// and quoted.
fn push_forwarded_node(out: &mut String, ip: IpAddr, text: &str) {
    match ip {
        IpAddr::V4(_) => out.push_str(text),
        IpAddr::V6(_) => {
            out.push_str("\"[");
            out.push_str(text);
            out.push_str("]\"");
        }
    }
}

/// `ip` in its usual text form (as its `Display` writes it), appended to `out`: an IPv4
/// address digit by digit (`Display` goes through the formatter, about 1,300 instructions),
/// an IPv6 address by `Display`.
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(digits.format(octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&'static str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/api/v1/regions", None).unwrap();
        for (k, v) in pairs {
            r.append_header(*k, *v).unwrap();
        }
        r
    }

    fn get<'a>(r: &'a RequestHeader, name: &str) -> Option<&'a str> {
        r.headers.get(name).and_then(|v| v.to_str().ok())
    }

    const UNTRUSTED: Caller = Caller {
        ip: Some(IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9))),
        trusted: false,
        tls: false,
    };

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "203.0.113.9",
            "255.255.255.255",
            "10.1.20.100",
            "::1",
            "2001:db8::7",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::from("x");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x{ip}"));
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_stripped() {
        let mut r = request(&[
            ("connection", "keep-alive, X-Secret-Hop, content-length"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x-checksum"),
            ("x-secret-hop", "1"),
            ("content-length", "2"),
            ("accept", "application/json"),
        ]);
        caller_headers(&mut r, ForwardHeaders::All, &UNTRUSTED, &[]).unwrap();
        for gone in [
            "connection",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-connection",
            "trailer",
            "x-secret-hop",
        ] {
            assert_eq!(get(&r, gone), None, "{gone}");
        }
        // Framing stays, whatever Connection says.
        assert_eq!(get(&r, "content-length"), Some("2"));
        assert_eq!(get(&r, "accept"), Some("application/json"));
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("connection", "x-upstream-hop").unwrap();
        resp.append_header("x-upstream-hop", "1").unwrap();
        resp.append_header("keep-alive", "timeout=5").unwrap();
        resp.append_header("content-type", "application/json")
            .unwrap();
        strip_response(&mut resp);
        let names: Vec<&str> = resp.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type"]);
    }

    #[test]
    fn an_untrusted_peer_s_forwarding_claims_are_replaced() {
        let mut r = request(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-host", "evil.example"),
        ]);
        caller_headers(&mut r, ForwardHeaders::All, &UNTRUSTED, &[]).unwrap();
        assert_eq!(get(&r, "x-forwarded-for"), Some("203.0.113.9"));
        assert_eq!(get(&r, "forwarded"), Some("for=203.0.113.9;proto=http"));
        assert_eq!(get(&r, "x-forwarded-proto"), Some("http"));
        assert_eq!(get(&r, "x-real-ip"), None);
        assert_eq!(get(&r, "x-forwarded-host"), None);
    }

    #[test]
    fn a_trusted_peer_s_forwarding_headers_are_appended_to() {
        let caller = Caller {
            ip: Some("2001:db8::7".parse().unwrap()),
            trusted: true,
            tls: true,
        };
        let mut r = request(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("forwarded", "for=198.51.100.1"),
            ("x-real-ip", "198.51.100.1"),
        ]);
        caller_headers(&mut r, ForwardHeaders::All, &caller, &[]).unwrap();
        assert_eq!(
            get(&r, "x-forwarded-for"),
            Some("198.51.100.1, 198.51.100.2, 2001:db8::7")
        );
        assert_eq!(
            get(&r, "forwarded"),
            Some("for=198.51.100.1, for=\"[2001:db8::7]\";proto=https")
        );
        assert_eq!(get(&r, "x-real-ip"), Some("198.51.100.1"));
    }

    #[test]
    fn the_allowlist_keeps_what_orionvm_needs() {
        let mut r = request(&[
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("x-sim-fault", "reset"),
            ("x-internal-debug", "1"),
            ("x-real-ip", "1.2.3.4"),
            ("idempotency-key", "k1"),
        ]);
        caller_headers(&mut r, ForwardHeaders::Allowlist, &UNTRUSTED, &[]).unwrap();
        let mut names: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "accept",
                "content-type",
                "forwarded",
                "idempotency-key",
                "x-forwarded-for",
                "x-forwarded-proto"
            ]
        );
    }
}
