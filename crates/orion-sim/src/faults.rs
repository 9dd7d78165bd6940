//! Fault injection: a run-wide [`FaultPlan`] and the per-request `X-Sim-Fault` header.

use std::time::Duration;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::util::status_or_500;

/// A run-wide fault plan. Every fault applies only to requests matching the
/// optional scope (`path_prefix`, matched against the raw path and against the
/// route template such as `/api/v1/instances/{id}/stop`; `method`, case-insensitive).
///
/// JSON form (all members optional; `latency` and `slow_body` are accepted for the
/// `_ms` names):
/// `{"path_prefix": "/api/v1/instances", "method": "POST", "latency_ms": 300,
///   "error_burst": {"status": 503, "count": 2, "html": false}, "reset": 1,
///   "reset_mid_body": 1, "reset_after": 1, "slow_body_ms": 50, "hang_transitions": true, "empty_error": 500}`
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultPlan {
    pub path_prefix: Option<String>,
    pub method: Option<String>,
    /// Added before answering.
    #[serde(rename = "latency_ms", alias = "latency", with = "opt_ms")]
    pub latency: Option<Duration>,
    /// The next `count` matching requests answer `status`.
    pub error_burst: Option<ErrorBurst>,
    /// The next N matching requests get a TCP reset instead of a response.
    pub reset: u32,
    /// The next N matching requests get their headers and part of the body, then a reset.
    pub reset_mid_body: u32,
    /// The next N matching requests are carried out (an instance is created), then the
    /// connection is reset before any answer: the caller cannot tell what happened.
    pub reset_after: u32,
    /// The body goes out in small chunks with this delay between them.
    #[serde(rename = "slow_body_ms", alias = "slow_body", with = "opt_ms")]
    pub slow_body: Option<Duration>,
    /// Moving states (`starting`, `stopping`, ...) never settle while set. With a
    /// scope, only transitions begun by a matching request hang.
    pub hang_transitions: bool,
    /// Answer this status with an empty body.
    pub empty_error: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBurst {
    pub status: u16,
    pub count: u32,
    /// An HTML page instead of the JSON error body.
    #[serde(default)]
    pub html: bool,
}

impl FaultPlan {
    /// Checks the statuses are real HTTP statuses.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if let Some(b) = &self.error_burst
            && !(400..=599).contains(&b.status)
        {
            return Err(format!(
                "error_burst.status {} is not an error status",
                b.status
            ));
        }
        if let Some(s) = self.empty_error
            && !(200..=599).contains(&s)
        {
            return Err(format!("empty_error {s} is not an HTTP status"));
        }
        Ok(())
    }
}

mod opt_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        v.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// Scope of a plan: which requests it touches.
#[derive(Clone, Debug, Default)]
pub(crate) struct Scope {
    pub path_prefix: Option<String>,
    pub method: Option<String>,
}

impl Scope {
    pub(crate) fn matches(&self, method: &str, path: &str, route: &str) -> bool {
        if let Some(m) = &self.method
            && !m.eq_ignore_ascii_case(method)
        {
            return false;
        }
        match &self.path_prefix {
            Some(p) => path.starts_with(p.as_str()) || route.starts_with(p.as_str()),
            None => true,
        }
    }
}

/// The plan plus what is left of its counted faults.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    pub plan: FaultPlan,
    pub burst_left: u32,
    pub reset_left: u32,
    pub reset_mid_body_left: u32,
    pub reset_after_left: u32,
    pub injected: u64,
}

/// What to do to one request.
#[derive(Debug, Default, Clone)]
pub(crate) struct Decision {
    pub latency: Duration,
    pub reset: bool,
    pub error: Option<(StatusCode, bool)>,
    pub empty: Option<StatusCode>,
    pub reset_mid_body: bool,
    pub slow_body: Option<Duration>,
    /// Carry the request out, then reset instead of answering.
    pub reset_after: bool,
}

impl Decision {
    pub(crate) fn any(&self) -> bool {
        !self.latency.is_zero()
            || self.reset
            || self.error.is_some()
            || self.empty.is_some()
            || self.reset_mid_body
            || self.slow_body.is_some()
            || self.reset_after
    }
}

impl FaultState {
    pub(crate) fn set(&mut self, plan: FaultPlan) {
        self.burst_left = plan.error_burst.as_ref().map_or(0, |b| b.count);
        self.reset_left = plan.reset;
        self.reset_mid_body_left = plan.reset_mid_body;
        self.reset_after_left = plan.reset_after;
        self.plan = plan;
    }

    pub(crate) fn scope(&self) -> Scope {
        Scope {
            path_prefix: self.plan.path_prefix.clone(),
            method: self.plan.method.clone(),
        }
    }

    /// The scope of `hang_transitions` when it is set.
    pub(crate) fn hang_scope(&self) -> Option<Scope> {
        self.plan.hang_transitions.then(|| self.scope())
    }

    /// Decides the faults for one request, consuming counted faults.
    pub(crate) fn decide(
        &mut self,
        method: &str,
        path: &str,
        route: &str,
        header: Option<&HeaderFault>,
    ) -> Decision {
        let mut d = Decision::default();
        if self.scope().matches(method, path, route) {
            let plan = &self.plan;
            d.latency = plan.latency.unwrap_or_default();
            d.slow_body = plan.slow_body;
            if self.reset_left > 0 {
                self.reset_left -= 1;
                d.reset = true;
            } else if self.burst_left > 0 {
                self.burst_left -= 1;
                if let Some(b) = &plan.error_burst {
                    d.error = Some((status_or_500(b.status), b.html));
                }
            } else if let Some(s) = plan.empty_error {
                d.empty = Some(status_or_500(s));
            }
            if !d.reset && self.reset_mid_body_left > 0 {
                self.reset_mid_body_left -= 1;
                d.reset_mid_body = true;
            }
            if !d.reset && self.reset_after_left > 0 {
                self.reset_after_left -= 1;
                d.reset_after = true;
            }
        }
        if let Some(h) = header {
            d.latency += h.latency.unwrap_or_default();
            d.reset |= h.reset;
            d.reset_mid_body |= h.reset_mid_body;
            d.reset_after |= h.reset_after;
            if h.slow_body.is_some() {
                d.slow_body = h.slow_body;
            }
            if let Some(s) = h.status {
                d.error = Some((s, h.html));
            } else if let Some(s) = h.empty {
                d.error = None;
                d.empty = Some(s);
            }
        }
        if d.any() {
            self.injected += 1;
        }
        d
    }
}

/// A parsed `X-Sim-Fault` header.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct HeaderFault {
    pub latency: Option<Duration>,
    pub status: Option<StatusCode>,
    pub html: bool,
    pub reset: bool,
    pub reset_mid_body: bool,
    pub reset_after: bool,
    pub slow_body: Option<Duration>,
    pub empty: Option<StatusCode>,
}

/// `300ms`, `2s`, `1.5s` or a bare number of milliseconds.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    if !v.is_finite() || v < 0.0 || v * unit_ms > 3_600_000.0 {
        return None;
    }
    Some(Duration::from_micros((v * unit_ms * 1000.0) as u64))
}

fn parse_status(s: &str) -> Option<StatusCode> {
    let code: u16 = s.trim().parse().ok()?;
    if !(200..=599).contains(&code) {
        return None;
    }
    StatusCode::from_u16(code).ok()
}

/// Parses `latency=300ms, status=502;html, reset, reset_mid_body, reset_after, slow_body=50ms,
/// empty=500`.
/// Directives are separated by `,` or `;`.
pub(crate) fn parse_header(value: &str) -> Result<HeaderFault, String> {
    let mut f = HeaderFault::default();
    for raw in value.split([',', ';']) {
        let tok = raw.trim();
        if tok.is_empty() {
            continue;
        }
        let (key, val) = match tok.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (tok.to_ascii_lowercase(), None),
        };
        let bad = || format!("bad X-Sim-Fault directive `{tok}`");
        match (key.as_str(), val) {
            ("latency", Some(v)) => f.latency = Some(parse_duration(v).ok_or_else(bad)?),
            ("status", Some(v)) => f.status = Some(parse_status(v).ok_or_else(bad)?),
            ("html", None) => f.html = true,
            ("reset", None) => f.reset = true,
            ("reset_mid_body", None) => f.reset_mid_body = true,
            ("reset_after", None) => f.reset_after = true,
            ("slow_body", Some(v)) => f.slow_body = Some(parse_duration(v).ok_or_else(bad)?),
            ("empty", Some(v)) => f.empty = Some(parse_status(v).ok_or_else(bad)?),
            _ => return Err(bad()),
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_vocabulary() {
        let f = parse_header("latency=300ms, status=502;html").unwrap();
        assert_eq!(f.latency, Some(Duration::from_millis(300)));
        assert_eq!(f.status, Some(StatusCode::BAD_GATEWAY));
        assert!(f.html);
        assert!(parse_header("reset").unwrap().reset);
        assert!(parse_header("reset_mid_body").unwrap().reset_mid_body);
        assert!(parse_header("reset_after").unwrap().reset_after);
        assert_eq!(
            parse_header("slow_body=1.5s").unwrap().slow_body,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_header("empty=500").unwrap().empty,
            Some(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert!(parse_header("status=abc").is_err());
        assert!(parse_header("explode").is_err());
        assert!(parse_header("latency=-1ms").is_err());
    }

    #[test]
    fn plan_json_and_counters() {
        let plan: FaultPlan = serde_json::from_str(
            r#"{"path_prefix":"/api/v1/instances","latency_ms":5,"error_burst":{"status":503,"count":2}}"#,
        )
        .unwrap();
        assert_eq!(plan.latency, Some(Duration::from_millis(5)));
        let mut st = FaultState::default();
        st.set(plan);
        let d = st.decide("GET", "/api/v1/instances", "/api/v1/instances", None);
        assert_eq!(d.error, Some((StatusCode::SERVICE_UNAVAILABLE, false)));
        let _ = st.decide("GET", "/api/v1/regions", "/api/v1/regions", None);
        assert_eq!(st.burst_left, 1);
        let _ = st.decide("GET", "/api/v1/instances", "/api/v1/instances", None);
        let d = st.decide("GET", "/api/v1/instances", "/api/v1/instances", None);
        assert_eq!(d.error, None);
        assert!(serde_json::from_str::<FaultPlan>(r#"{"lateny_ms":5}"#).is_err());
        let p: FaultPlan = serde_json::from_str(r#"{"slow_body":7,"latency":3}"#).unwrap();
        assert_eq!(p.slow_body, Some(Duration::from_millis(7)));
        assert_eq!(p.latency, Some(Duration::from_millis(3)));
        let out = serde_json::to_value(&p).unwrap();
        assert_eq!(out["slow_body_ms"], 7);
        assert_eq!(out["latency_ms"], 3);
    }

    #[test]
    fn scope_matches_route_template() {
        let s = Scope {
            path_prefix: Some("/api/v1/instances/{id}/stop".into()),
            method: Some("post".into()),
        };
        assert!(s.matches(
            "POST",
            "/api/v1/instances/abc/stop",
            "/api/v1/instances/{id}/stop"
        ));
        assert!(!s.matches(
            "POST",
            "/api/v1/instances/abc/start",
            "/api/v1/instances/{id}/start"
        ));
    }
}
