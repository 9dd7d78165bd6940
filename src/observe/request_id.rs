//! Request ids and W3C trace context. An inbound `X-Request-Id` or `traceparent` is kept only
//! from a trusted network and only when well formed; otherwise the proxy makes its own.

use std::net::IpAddr;

/// A new request id: a ULID (26 characters, sortable by time).
pub fn new_id() -> String {
    ulid::Ulid::new().to_string()
}

/// 1 to 128 characters of `[A-Za-z0-9._:-]`.
pub fn valid_inbound(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

pub fn is_trusted(ip: Option<IpAddr>, networks: &[ipnet::IpNet]) -> bool {
    ip.is_some_and(|ip| networks.iter().any(|n| n.contains(&ip)))
}

/// The trace id of a valid `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    parse_traceparent(traceparent).map(|(t, _, _)| t)
}

/// A valid `traceparent`'s trace id, parent id and flags (hex, as sent).
pub fn parse_traceparent(traceparent: &str) -> Option<(&str, &str, &str)> {
    let mut parts = traceparent.split('-');
    let (v, t, p, f) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || v.len() != 2 || v == "ff" {
        return None;
    }
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !(hex(v, 2) && hex(t, 32) && hex(p, 16) && hex(f, 2)) {
        return None;
    }
    if t.bytes().all(|b| b == b'0') || p.bytes().all(|b| b == b'0') {
        return None;
    }
    Some((t, p, f))
}

pub fn new_trace_id() -> String {
    let mut out = String::with_capacity(32);
    push_hex(&mut out, &rand::random::<[u8; 16]>());
    out
}

/// A `traceparent` for the upstream hop: the trace id kept, a new span id.
pub fn child_traceparent(trace_id: &str) -> String {
    let mut out = String::with_capacity(trace_id.len() + 24);
    out.push_str("00-");
    out.push_str(trace_id);
    out.push('-');
    push_hex(&mut out, &rand::random::<[u8; 8]>());
    out.push_str("-01");
    out
}

/// Lower-case hex, as `hex::encode` writes it, without its per-character collect.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_ids() {
        assert!(valid_inbound("abc-123_x.y"));
        assert!(!valid_inbound(""));
        assert!(!valid_inbound("a b"));
        assert!(!valid_inbound("<script>"));
        assert!(!valid_inbound(&"a".repeat(129)));
        assert_eq!(new_id().len(), 26);
    }

    #[test]
    fn traceparent() {
        let t = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id_of(t), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(
            trace_id_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_of("00-XYZ-00f067aa0ba902b7-01"), None);
        assert_eq!(
            parse_traceparent(t),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01"))
        );
        let c = child_traceparent("4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace_id_of(&c), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        let t = new_trace_id();
        assert_eq!(t.len(), 32);
        assert!(trace_id_of(&format!("00-{t}-00f067aa0ba902b7-01")).is_some());
        let mut out = String::new();
        push_hex(&mut out, &[0x00, 0x0f, 0xa5, 0xff]);
        assert_eq!(out, hex::encode([0x00, 0x0f, 0xa5, 0xff]));
    }
}
