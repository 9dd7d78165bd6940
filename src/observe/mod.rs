//! Observability: request ids, the JSON access log with redaction, and metrics.

pub mod access;
pub mod metrics;
pub mod request_id;

use crate::config::model::LoggingConfig;
use std::collections::HashSet;
use std::sync::Arc;

/// Header names always redacted in logs.
pub const ALWAYS_REDACTED_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "cookie",
    "set-cookie",
    "proxy-authorization",
];
/// Body and query field names always redacted in logs.
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

/// What and where to log, from one config load.
pub struct LogPolicy {
    pub sink: Option<Arc<access::Sink>>,
    pub redact_headers: HashSet<String>,
    pub redact_fields: HashSet<String>,
}

impl LogPolicy {
    pub fn build(cfg: &LoggingConfig) -> Result<LogPolicy, Vec<String>> {
        let sink = match cfg.access_log.as_str() {
            "off" => None,
            target => Some(
                access::sink_for(target).map_err(|e| vec![format!("logging.access_log: {e}")])?,
            ),
        };
        let mut redact_headers: HashSet<String> = ALWAYS_REDACTED_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect();
        redact_headers.extend(cfg.redact_headers.iter().map(|h| h.to_ascii_lowercase()));
        let mut redact_fields: HashSet<String> = ALWAYS_REDACTED_FIELDS
            .iter()
            .map(|s| s.to_string())
            .collect();
        redact_fields.extend(cfg.redact_fields.iter().map(|h| h.to_ascii_lowercase()));
        Ok(LogPolicy {
            sink,
            redact_headers,
            redact_fields,
        })
    }

    pub fn is_secret_field(&self, name: &str) -> bool {
        self.redact_fields.contains(&name.to_ascii_lowercase())
    }

    /// A query string with the values of secret parameters replaced.
    pub fn redact_query(&self, query: &str) -> String {
        query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if self.is_secret_field(k) => format!("{k}=[redacted]"),
                _ => pair.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_secrets_are_redacted() {
        let p = LogPolicy::build(&LoggingConfig {
            access_log: "off".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            p.redact_query("a=1&api_key=xyz&Token=abc"),
            "a=1&api_key=[redacted]&Token=[redacted]"
        );
    }
}
