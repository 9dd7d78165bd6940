//! Redaction of secrets in headers, JSON bodies and query strings, for every log line and audit
//! record. A name is secret when the config or the built-in list names it, or when it contains
//! a secret-looking word (`token`, `secret`, `password`...), so that a new credential field is
//! redacted before anyone thinks of listing it.

use http::HeaderMap;
use serde_json::{Map, Value};
use std::collections::HashSet;

pub const REDACTED: &str = "[redacted]";

/// Header names always redacted.
pub const ALWAYS_REDACTED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
    "set-cookie",
];
/// Parts of header names that make a header secret.
const SECRET_HEADER_WORDS: &[&str] = &[
    "auth",
    "token",
    "secret",
    "password",
    "api-key",
    "apikey",
    "cookie",
    "credential",
    "session",
];
/// Body and query field names always redacted.
pub const ALWAYS_REDACTED_FIELDS: &[&str] = &[
    "client_secret",
    "access_token",
    "refresh_token",
    "id_token",
    "password",
    "token",
    "api_key",
    "secret",
];
/// Parts of field names that make a field secret.
const SECRET_FIELD_WORDS: &[&str] = &[
    "secret",
    "password",
    "passwd",
    "token",
    "api_key",
    "apikey",
    "private_key",
    "credential",
    "authorization",
];

/// The names to redact, built once per config load.
#[derive(Debug, Clone)]
pub struct Redactor {
    headers: HashSet<String>,
    fields: HashSet<String>,
}

impl Redactor {
    pub fn new(extra_headers: &[String], extra_fields: &[String]) -> Redactor {
        let mut headers: HashSet<String> = ALWAYS_REDACTED_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect();
        headers.extend(extra_headers.iter().map(|h| h.to_ascii_lowercase()));
        let mut fields: HashSet<String> = ALWAYS_REDACTED_FIELDS
            .iter()
            .map(|s| s.to_string())
            .collect();
        fields.extend(extra_fields.iter().map(|h| h.to_ascii_lowercase()));
        Redactor { headers, fields }
    }

    pub fn is_secret_header(&self, name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        self.headers.contains(&n) || SECRET_HEADER_WORDS.iter().any(|w| n.contains(w))
    }

    pub fn is_secret_field(&self, name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        self.fields.contains(&n) || SECRET_FIELD_WORDS.iter().any(|w| n.contains(w))
    }

    /// Headers as one JSON object (`name: "v1, v2"`), secret values replaced.
    pub fn headers(&self, headers: &HeaderMap) -> Value {
        let mut out = Map::new();
        for name in headers.keys() {
            let value = if self.is_secret_header(name.as_str()) {
                REDACTED.to_string()
            } else {
                headers
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.insert(name.as_str().to_string(), Value::String(value));
        }
        Value::Object(out)
    }

    /// Replaces the value of every secret field, at any depth. A key/value entry
    /// (`{"key": "db_password", "value": ...}`, the form of OrionVM's context answers) whose key
    /// names a secret has its `value` replaced.
    pub fn json(&self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                let secret_entry = map
                    .get("key")
                    .and_then(Value::as_str)
                    .is_some_and(|k| self.is_secret_field(k));
                for (k, v) in map.iter_mut() {
                    if self.is_secret_field(k) || (secret_entry && k == "value") {
                        *v = Value::String(REDACTED.into());
                    } else {
                        self.json(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.json(v)),
            _ => {}
        }
    }

    /// A query string with the values of secret parameters replaced.
    pub fn query(&self, query: &str) -> String {
        query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if self.is_secret_field(k) => format!("{k}={REDACTED}"),
                _ => pair.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_fields_and_configured_names() {
        let r = Redactor::new(&[], &["ssn".into()]);
        let mut v = json!({
            "name": "web-1",
            "client_secret": "s3cr3t",
            "nested": {"deep": [{"Password": "p", "ok": 1}, {"my_access_token": "t"}]},
            "SSN": "123",
            "context": {"db_credentials": {"user": "u"}}
        });
        r.json(&mut v);
        let text = v.to_string();
        for secret in ["s3cr3t", "\"p\"", "\"t\"", "123", "\"u\""] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(v["name"], "web-1");
        assert_eq!(v["nested"]["deep"][0]["ok"], 1);
    }

    #[test]
    fn key_value_entries_by_their_key() {
        let r = Redactor::new(&[], &[]);
        let mut v = json!([
            {"key": "db_password", "value": "hunter2"},
            {"key": "role", "value": "web"},
            {"key": "api_token", "value": {"nested": "t0k"}}
        ]);
        r.json(&mut v);
        let text = v.to_string();
        assert!(!text.contains("hunter2") && !text.contains("t0k"), "{text}");
        assert_eq!(v[0]["key"], "db_password");
        assert_eq!(v[1]["value"], "web");
    }

    #[test]
    fn headers_and_query() {
        let r = Redactor::new(&["X-Custom".into()], &[]);
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().unwrap());
        h.insert("x-auth-token", "abc".parse().unwrap());
        h.insert("x-custom", "abc".parse().unwrap());
        h.insert("accept", "application/json".parse().unwrap());
        let v = r.headers(&h);
        assert!(!v.to_string().contains("abc"), "{v}");
        assert_eq!(v["accept"], "application/json");
        assert_eq!(
            r.query("a=1&api_key=xyz&Token=abc"),
            "a=1&api_key=[redacted]&Token=[redacted]"
        );
    }
}
