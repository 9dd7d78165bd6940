//! Small helpers: ids, timestamps, replies and OrionVM error bodies.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use rand::RngCore;
use serde_json::{Value, json};
use time::OffsetDateTime;

/// Field name -> messages, the `details` member of an OrionVM error.
pub(crate) type Details = BTreeMap<String, Vec<String>>;

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `n` random bytes as lowercase hex (2n characters).
pub(crate) fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

pub(crate) fn now_wall() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// `2016-05-10T03:36:34.615Z`: UTC, millisecond precision.
pub(crate) fn fmt_ts(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

pub(crate) fn parse_ts(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// A response before it is turned into bytes on the wire.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub content_type: Option<&'static str>,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

pub(crate) const JSON: &str = "application/json; charset=utf-8";
pub(crate) const HTML: &str = "text/html; charset=utf-8";

impl Reply {
    pub(crate) fn json(status: StatusCode, value: &Value) -> Reply {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Reply {
            status,
            content_type: Some(JSON),
            body: Bytes::from(body),
            headers: Vec::new(),
        }
    }

    pub(crate) fn ok(value: Value) -> Reply {
        Reply::json(StatusCode::OK, &value)
    }

    pub(crate) fn html(status: StatusCode, page: String) -> Reply {
        Reply {
            status,
            content_type: Some(HTML),
            body: Bytes::from(page),
            headers: Vec::new(),
        }
    }

    pub(crate) fn empty(status: StatusCode) -> Reply {
        Reply {
            status,
            content_type: None,
            body: Bytes::new(),
            headers: Vec::new(),
        }
    }

    pub(crate) fn with_header(mut self, name: &'static str, value: &'static str) -> Reply {
        self.headers.push((
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
        self
    }
}

/// The OrionVM error body: `{"error", "error_description", "details"}`.
pub(crate) fn error(status: StatusCode, code: &str, description: &str, details: &Details) -> Reply {
    Reply::json(
        status,
        &json!({"error": code, "error_description": description, "details": details}),
    )
}

pub(crate) fn error_plain(status: StatusCode, code: &str, description: &str) -> Reply {
    error(status, code, description, &Details::new())
}

pub(crate) fn bad_request(description: &str) -> Reply {
    error_plain(StatusCode::BAD_REQUEST, "invalid_request", description)
}

pub(crate) fn not_found(what: &str) -> Reply {
    error_plain(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("{what} could not be found"),
    )
}

pub(crate) fn validation(description: &str, details: Details) -> Reply {
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        description,
        &details,
    )
}

pub(crate) fn one_detail(field: &str, message: &str) -> Details {
    let mut d = Details::new();
    d.insert(field.to_owned(), vec![message.to_owned()]);
    d
}

/// A path (or method) OrionVM has no route for: a JSON 404 in OrionVM's error body, like every
/// other OrionVM error, so that a client parsing JSON errors keeps working. (An HTML page can
/// still be had as an injected fault: `status=404;html`.)
pub(crate) fn route_not_found(method: &str, path: &str) -> Reply {
    let path: String = path.chars().take(200).collect();
    error_plain(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("No route matches {method} {path}"),
    )
}

/// An HTML error page like the load balancer in front of OrionVM serves.
pub(crate) fn html_error_page(status: StatusCode) -> Reply {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    Reply::html(
        status,
        format!(
            "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
        ),
    )
}

/// A JSON error for an injected status, coded like OrionVM would.
pub(crate) fn json_error_for_status(status: StatusCode) -> Reply {
    let code = match status.as_u16() {
        400 => "invalid_request",
        401 => "invalid_token",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        422 => "validation_failed",
        429 => "rate_limited",
        500 => "internal_server_error",
        502 => "bad_gateway",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        _ => "error",
    };
    error_plain(status, code, status.canonical_reason().unwrap_or("Error"))
}

pub(crate) fn status_or_500(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_format() {
        let t = parse_ts("2016-05-10T03:36:34.615Z").unwrap();
        assert_eq!(fmt_ts(t), "2016-05-10T03:36:34.615Z");
    }

    #[test]
    fn hex_len() {
        assert_eq!(random_hex(32).len(), 64);
    }
}
