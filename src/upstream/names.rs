//! The header names the proxy sets on every request and answer, built at compile time: an
//! insert by one of them hashes and places the name in Pingora's two maps (values, and the
//! names' case) and nothing else: no parsing, no copy of the name, no allocation for it
//! (`insert_header_name`, a patch of the vendored pingora-http: vendor/pingora-http/ORION-PATCH.md).
//! Each is written on the wire exactly as given here (lowercase, as the proxy always sent them).

use http::HeaderValue;
use http::header::HeaderName;
use pingora::http::{CaseHeaderName, RequestHeader, ResponseHeader};

/// A header name for both of Pingora's maps.
pub struct Name {
    pub name: HeaderName,
    /// As written on the wire.
    pub case: CaseHeaderName,
}

impl Name {
    /// `wire` is lowercase (checked at compile time) and is written on the wire as it is.
    pub const fn new(wire: &'static str) -> Name {
        Name {
            name: HeaderName::from_static(wire),
            case: CaseHeaderName::from_static(wire),
        }
    }
}

pub static AUTHORIZATION: Name = Name::new("authorization");
pub static HOST: Name = Name::new("host");
pub static X_REQUEST_ID: Name = Name::new("x-request-id");
pub static TRACEPARENT: Name = Name::new("traceparent");
pub static CONTENT_LENGTH: Name = Name::new("content-length");
pub static X_FORWARDED_FOR: Name = Name::new("x-forwarded-for");
pub static FORWARDED: Name = Name::new("forwarded");
pub static X_FORWARDED_PROTO: Name = Name::new("x-forwarded-proto");

/// Inserting by a [`Name`] (replacing any header of that name), on a request or an answer.
pub trait SetHeader {
    fn set(&mut self, name: &Name, value: HeaderValue) -> pingora::Result<()>;
}

impl SetHeader for RequestHeader {
    fn set(&mut self, name: &Name, value: HeaderValue) -> pingora::Result<()> {
        self.insert_header_name(&name.name, &name.case, value)
    }
}

impl SetHeader for ResponseHeader {
    fn set(&mut self, name: &Name, value: HeaderValue) -> pingora::Result<()> {
        self.insert_header_name(&name.name, &name.case, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_go_on_the_wire_as_written() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("X-Request-Id", "caller").unwrap();
        req.append_header("Host", "caller.example").unwrap();
        req.set(&X_REQUEST_ID, HeaderValue::from_static("01ID"))
            .unwrap();
        req.set(&HOST, HeaderValue::from_static("orionvm")).unwrap();
        req.set(&X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"))
            .unwrap();
        let mut wire = vec![];
        req.header_to_h1_wire(&mut wire);
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "x-request-id: 01ID\r\nhost: orionvm\r\nx-forwarded-for: 1.2.3.4\r\n"
        );
        assert_eq!(req.headers.get("x-request-id").unwrap(), "01ID");
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.set(&X_REQUEST_ID, HeaderValue::from_static("01ID"))
            .unwrap();
        let mut wire = vec![];
        resp.header_to_h1_wire(&mut wire);
        assert_eq!(wire, b"x-request-id: 01ID\r\n");
    }
}
