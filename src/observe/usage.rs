//! Usage per client: requests, errors (4xx and 5xx answers other than 429) and rate-limit
//! refusals (429) per principal and tenant, over the last minute, hour and day.
//!
//! The counts live in the [`UsageStore`] of the process state (`store::usage`; in memory by
//! default, bounded), so a reload keeps them. This module decides what counts as what and
//! renders `GET /admin/usage`.

use super::ObserveError;
use crate::store::usage::{ClientUsage, Outcome, UsageCounts, UsageQuery, UsageStore, Window};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// How an answer with this status counts (0: the caller got no answer).
pub fn outcome_of(status: u16) -> Outcome {
    match status {
        429 => Outcome::RateLimited,
        s if s >= 400 || s == 0 => Outcome::Error,
        _ => Outcome::Ok,
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Counts one answered request of an authenticated caller. A store that fails is logged, never
/// the caller's problem.
pub async fn record(store: &dyn UsageStore, principal: &str, tenant: &str, status: u16) {
    if let Some(memory) = store.as_memory() {
        memory.record_now(principal, tenant, outcome_of(status), now_secs());
        return;
    }
    if let Err(e) = store
        .record(principal, tenant, outcome_of(status), now_secs())
        .await
    {
        log::warn!("usage of {principal} ({tenant}) not counted: {e}");
    }
}

/// The filters of `GET /admin/usage`: `principal` (or `user`) and `tenant`.
pub fn parse_query(query: Option<&str>) -> Result<UsageQuery, ObserveError> {
    let mut q = UsageQuery::default();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "principal" | "user" => q.principal = Some(v.into_owned()),
            "tenant" => q.tenant = Some(v.into_owned()),
            other => {
                return Err(ObserveError::BadQuery {
                    field: other.to_string(),
                    message: "unknown parameter (principal, tenant)".into(),
                });
            }
        }
    }
    Ok(q)
}

/// `GET /admin/usage[?principal=...&tenant=...]`.
pub async fn report(store: &dyn UsageStore, query: Option<&str>) -> Result<Value, ObserveError> {
    let q = parse_query(query)?;
    let clients = store.report(&q, now_secs()).await.map_err(|e| {
        log::error!("usage report: {e}");
        ObserveError::UsageUnavailable
    })?;
    Ok(render(&clients))
}

fn window_name(w: Window) -> &'static str {
    match w {
        Window::LastMinute => "last_minute",
        Window::LastHour => "last_hour",
        Window::LastDay => "last_day",
    }
}

fn counts_json(c: &UsageCounts) -> Value {
    json!({"requests": c.requests, "errors": c.errors, "rate_limited": c.rate_limited})
}

/// The answer of `GET /admin/usage`: each client, and the sums per tenant.
pub fn render(clients: &[ClientUsage]) -> Value {
    let mut out = Vec::with_capacity(clients.len());
    let mut tenants: BTreeMap<&str, [UsageCounts; 3]> = BTreeMap::new();
    for c in clients {
        let per_tenant = tenants.entry(&c.tenant).or_default();
        let mut m = Map::new();
        m.insert("principal".into(), json!(c.principal));
        m.insert("tenant".into(), json!(c.tenant));
        for (i, w) in Window::ALL.iter().enumerate() {
            per_tenant[i].add(&c.windows[i]);
            m.insert(window_name(*w).into(), counts_json(&c.windows[i]));
        }
        out.push(Value::Object(m));
    }
    let tenants: Vec<Value> = tenants
        .into_iter()
        .map(|(t, sums)| {
            let mut m = Map::new();
            m.insert("tenant".into(), json!(t));
            for (i, w) in Window::ALL.iter().enumerate() {
                m.insert(window_name(*w).into(), counts_json(&sums[i]));
            }
            Value::Object(m)
        })
        .collect();
    let windows: Map<String, Value> = Window::ALL
        .iter()
        .map(|w| (window_name(*w).to_string(), json!(w.seconds())))
        .collect();
    json!({
        "windows_seconds": windows,
        "clients": out,
        "tenants": tenants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::usage::MemoryUsage;

    #[test]
    fn statuses_count_as_outcomes() {
        assert_eq!(outcome_of(200), Outcome::Ok);
        assert_eq!(outcome_of(302), Outcome::Ok);
        assert_eq!(outcome_of(404), Outcome::Error);
        assert_eq!(outcome_of(502), Outcome::Error);
        assert_eq!(outcome_of(0), Outcome::Error);
        assert_eq!(outcome_of(429), Outcome::RateLimited);
    }

    #[tokio::test]
    async fn the_report_sums_per_tenant_and_filters() {
        let store = MemoryUsage::new(100);
        for (p, t, status) in [
            ("key:a", "acme", 200),
            ("key:a", "acme", 500),
            ("key:b", "acme", 429),
            ("key:c", "globex", 200),
        ] {
            record(&store, p, t, status).await;
        }
        let v = report(&store, None).await.unwrap();
        assert_eq!(
            v["windows_seconds"],
            json!({"last_minute": 60, "last_hour": 3600, "last_day": 86400})
        );
        assert_eq!(v["clients"].as_array().unwrap().len(), 3);
        assert_eq!(v["clients"][0]["principal"], "key:a");
        assert_eq!(
            v["clients"][0]["last_minute"],
            json!({"requests": 2, "errors": 1, "rate_limited": 0})
        );
        assert_eq!(v["tenants"][0]["tenant"], "acme");
        assert_eq!(
            v["tenants"][0]["last_day"],
            json!({"requests": 3, "errors": 1, "rate_limited": 1})
        );
        let v = report(&store, Some("tenant=globex")).await.unwrap();
        assert_eq!(v["clients"].as_array().unwrap().len(), 1);
        let v = report(&store, Some("user=key:b")).await.unwrap();
        assert_eq!(v["clients"][0]["last_hour"]["rate_limited"], 1);
        assert!(matches!(
            report(&store, Some("bogus=1")).await,
            Err(ObserveError::BadQuery { .. })
        ));
    }

    struct Down;

    #[async_trait::async_trait]
    impl UsageStore for Down {
        async fn record(
            &self,
            _: &str,
            _: &str,
            _: Outcome,
            _: u64,
        ) -> Result<(), crate::store::StoreError> {
            Err(crate::store::StoreError::Timeout)
        }
        async fn report(
            &self,
            _: &UsageQuery,
            _: u64,
        ) -> Result<Vec<ClientUsage>, crate::store::StoreError> {
            Err(crate::store::StoreError::Unavailable("gone".into()))
        }
    }

    #[tokio::test]
    async fn a_failing_store_is_not_the_callers_problem() {
        record(&Down, "key:a", "acme", 200).await;
        assert_eq!(
            report(&Down, None).await.unwrap_err(),
            ObserveError::UsageUnavailable
        );
    }
}
