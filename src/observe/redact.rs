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
                let secret_entry = ["key", "name"].iter().any(|entry| {
                    map.get(*entry)
                        .and_then(Value::as_str)
                        .is_some_and(|k| self.is_secret_field(k))
                });
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

    /// Whether a query parameter's name is secret: a secret field name (`-` read as `_`), or
    /// one of the short names services use for keys and signatures (`key`, `sig`, `auth`...).
    pub fn is_secret_param(&self, name: &str) -> bool {
        let n = percent_decoded(name).to_ascii_lowercase().replace('-', "_");
        self.is_secret_field(&n)
            || SECRET_PARAM_NAMES.contains(&n.as_str())
            || SECRET_PARAM_WORDS.iter().any(|w| n.contains(w))
    }

    /// A query string with the values of secret parameters replaced. Parameters are separated
    /// by `&` or `;` (both are kept as they were); a `value` parameter is secret too when a
    /// `key`/`name` parameter of the same query names a secret (`?key=root_password&value=...`).
    pub fn query(&self, query: &str) -> String {
        let pairs = || {
            query
                .split(['&', ';'])
                .filter_map(|pair| pair.split_once('='))
        };
        let secret_entry = pairs().any(|(k, v)| {
            matches!(k.to_ascii_lowercase().as_str(), "key" | "name")
                && self.is_secret_field(&percent_decoded(v))
        });
        let mut out = String::with_capacity(query.len());
        let mut rest = query;
        loop {
            let end = rest.find(['&', ';']).unwrap_or(rest.len());
            let pair = &rest[..end];
            match pair.split_once('=') {
                Some((k, _))
                    if self.is_secret_param(k)
                        || (secret_entry && k.eq_ignore_ascii_case("value")) =>
                {
                    out.push_str(k);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                _ => out.push_str(pair),
            }
            if end == rest.len() {
                return out;
            }
            out.push_str(&rest[end..end + 1]);
            rest = &rest[end + 1..];
        }
    }

    /// A request target as it may appear in any log line: the path as is, the query redacted.
    pub fn target(&self, path: &str, query: Option<&str>) -> String {
        match query {
            Some(q) => format!("{path}?{}", self.query(q)),
            None => path.to_string(),
        }
    }
}

impl Redactor {
    /// The request as Pingora's diagnostic lines name it (`request_summary`): method, path,
    /// redacted query, `Host` and the request id. Never the authority or user info of an
    /// absolute-form target.
    pub fn request_summary(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        host: Option<&str>,
        request_id: &str,
    ) -> String {
        format!(
            "{method} {}, Host: {}, request {request_id}",
            self.target(uri.path(), uri.query()),
            host.unwrap_or("-")
        )
    }
}

impl Default for Redactor {
    /// The built-in names only (for lines written before a config is in force).
    fn default() -> Self {
        Redactor::new(&[], &[])
    }
}

/// Query parameter names that are secret although no secret word is in them.
const SECRET_PARAM_NAMES: &[&str] = &[
    "key",
    "sig",
    "signature",
    "auth",
    "code",
    "pass",
    "pwd",
    "jwt",
    "session",
    "sid",
    "credential",
    "credentials",
];
/// Parts of query parameter names that make a parameter secret (on top of the field words).
const SECRET_PARAM_WORDS: &[&str] = &["auth", "api_key", "_key", "signature", "_sig"];

/// `%XX` sequences decoded (so that `api%5Fkey` is recognised); invalid ones kept.
fn percent_decoded(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
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

    #[test]
    fn query_names_services_use_for_keys_and_signatures() {
        let r = Redactor::default();
        for name in [
            "api-key",
            "API-Key",
            "key",
            "sig",
            "auth",
            "access_token",
            "api_key",
            "token",
            "password",
            "secret",
            "client_secret",
            "X-Amz-Signature",
            "oauth_token",
            "api%5Fkey",
            "private_key",
            "authToken",
        ] {
            let q = format!("region=syd&{name}=s3cr3t-v4lue&x=1");
            let out = r.query(&q);
            assert!(!out.contains("s3cr3t-v4lue"), "{name}: {out}");
            assert_eq!(out, format!("region=syd&{name}=[redacted]&x=1"));
        }
        assert_eq!(
            r.query("region=syd&limit=5&sort=name"),
            "region=syd&limit=5&sort=name"
        );
    }

    #[test]
    fn semicolon_separated_parameters_and_key_value_entries_in_a_query() {
        let r = Redactor::default();
        assert_eq!(
            r.query("a=1;api_key=xyz;b=2&token=t"),
            "a=1;api_key=[redacted];b=2&token=[redacted]"
        );
        assert_eq!(
            r.query("key=root_password&value=hunter2"),
            "key=[redacted]&value=[redacted]"
        );
        assert_eq!(r.query("name=role&value=web"), "name=role&value=web");
        assert_eq!(r.query("flag&;&="), "flag&;&=");
        assert_eq!(
            r.target("/api/v1/regions", Some("sig=abc")),
            "/api/v1/regions?sig=[redacted]"
        );
    }

    #[test]
    fn the_request_summary_of_diagnostic_lines_is_redacted() {
        let r = Redactor::default();
        let uri: http::Uri = "http://u:pw@h/api/v1/regions?access_token=t0k;sig=s1g"
            .parse()
            .unwrap();
        let s = r.request_summary(&http::Method::GET, &uri, Some("h"), "01R");
        assert_eq!(
            s,
            "GET /api/v1/regions?access_token=[redacted];sig=[redacted], Host: h, request 01R"
        );
    }

    #[test]
    fn orionvm_context_entries_whose_key_looks_secret() {
        let r = Redactor::default();
        let mut v = json!({"context": [
            {"key": "root_password", "value": "hunter2"},
            {"name": "ROOT_PASSWORD", "value": "hunter3"},
            {"key": "hostname", "value": "web-1"}
        ]});
        r.json(&mut v);
        let text = v.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("hunter3"),
            "{text}"
        );
        assert_eq!(v["context"][2]["value"], "web-1");
    }
}
