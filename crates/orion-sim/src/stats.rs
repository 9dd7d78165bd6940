//! Call counting, so tests can prove whether the proxy called OrionVM.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Calls the simulator received (the `/_sim/` control API is not counted).
///
/// Keys are `"METHOD /route/template"`, e.g. `"POST /api/v1/instances/{id}/start"`
/// or `"POST /oauth/token"`; a request that matched no route is keyed by its raw path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallStats {
    pub total: u64,
    pub routes: BTreeMap<String, u64>,
    /// Per account name, for requests whose credentials named an account
    /// (a known bearer token, or the client id of an `/oauth/token` call).
    pub accounts: BTreeMap<String, AccountCalls>,
    /// Requests that had a fault injected.
    pub faulted: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountCalls {
    pub total: u64,
    pub routes: BTreeMap<String, u64>,
}

fn key(method: &str, route: &str) -> String {
    format!("{} {}", method.to_ascii_uppercase(), route)
}

impl CallStats {
    /// Calls of `method` on the route template, e.g. `count("POST", "/api/v1/instances/{id}/start")`.
    pub fn count(&self, method: &str, route: &str) -> u64 {
        self.routes.get(&key(method, route)).copied().unwrap_or(0)
    }

    /// Calls of `method` on the route template by one account.
    pub fn account_count(&self, account: &str, method: &str, route: &str) -> u64 {
        self.accounts
            .get(account)
            .and_then(|a| a.routes.get(&key(method, route)))
            .copied()
            .unwrap_or(0)
    }

    /// All calls by one account.
    pub fn account_total(&self, account: &str) -> u64 {
        self.accounts.get(account).map_or(0, |a| a.total)
    }

    /// Calls on any `/api/v1` route (what OrionVM bills as API use; excludes `/oauth/token`).
    pub fn api_calls(&self) -> u64 {
        self.routes
            .iter()
            .filter(|(k, _)| {
                k.split_once(' ')
                    .is_some_and(|(_, p)| p.starts_with("/api/"))
            })
            .map(|(_, v)| *v)
            .sum()
    }

    pub(crate) fn record(&mut self, method: &str, route: &str, account: Option<&str>) {
        let k = key(method, route);
        self.total += 1;
        *self.routes.entry(k.clone()).or_default() += 1;
        if let Some(a) = account {
            let acc = self.accounts.entry(a.to_owned()).or_default();
            acc.total += 1;
            *acc.routes.entry(k).or_default() += 1;
        }
    }
}

/// One request as the simulator saw it (newest last in [`super::SimHandle::recent_requests`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub route: String,
    pub account: Option<String>,
    /// Header name (lowercase) and value; `authorization` values are reduced to
    /// their scheme and a `<redacted>` marker.
    pub headers: Vec<(String, String)>,
    /// The request body as received (lossy UTF-8, first 64 KiB).
    #[serde(default)]
    pub body: String,
}

impl RecordedRequest {
    /// All values of one header (name case-insensitive).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

pub(crate) const RECENT_MAX: usize = 256;

#[derive(Debug, Default)]
pub(crate) struct StatsBook {
    pub stats: CallStats,
    pub recent: VecDeque<RecordedRequest>,
}

impl StatsBook {
    pub(crate) fn push_recent(&mut self, r: RecordedRequest) {
        if self.recent.len() >= RECENT_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back(r);
    }
}
