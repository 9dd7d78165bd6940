//! What a config names that lives on the host it runs on rather than in the file: secrets
//! (environment variables, secret files, systemd credentials), the listener's certificate and
//! key, CA bundles, JWKS files and log directories.
//!
//! `orion-proxy check --offline` checks a file where none of that is (CI, a build machine): a
//! host resource that is missing there is listed as not checked instead of failing the check,
//! and one that is there is checked in full. The checks ask [`missing`] where they would refuse
//! a missing resource; outside [`offline`] (every `run`, reload and plain `check`) it says no and
//! they refuse as before. A missing secret is stood in for by [`stand_in`], a value of every
//! shape a secret of the config may need (at least 32 bytes, a `hex:` 32-byte key), so that the
//! checks after it run; it never leaves the check.

use std::cell::RefCell;

thread_local! {
    static NOT_CHECKED: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Runs `f` (a whole check, on this thread) tolerating missing host resources; returns its
/// result and what was not checked, one line each.
pub fn offline<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    let outer = NOT_CHECKED.with(|n| n.replace(Some(Vec::new())));
    let result = f();
    let notes = NOT_CHECKED.with(|n| n.replace(outer)).unwrap_or_default();
    (result, notes)
}

/// Whether a missing host resource is tolerated here (inside [`offline`]): then `what` is
/// recorded as not checked and the caller goes on without it.
pub fn missing(what: impl FnOnce() -> String) -> bool {
    NOT_CHECKED.with(|n| match n.borrow_mut().as_mut() {
        Some(notes) => {
            let w = what();
            if !notes.contains(&w) {
                notes.push(w);
            }
            true
        }
        None => false,
    })
}

/// The value that stands in for a secret missing in an offline check.
pub fn stand_in() -> String {
    format!("hex:{}", "5a".repeat(32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_offline_check_tolerates_and_records() {
        assert!(!missing(|| "x".into()));
        let ((a, b), notes) = offline(|| (missing(|| "x".into()), missing(|| "x".into())));
        assert!(a && b);
        assert_eq!(notes, vec!["x".to_string()]);
        assert!(!missing(|| "y".into()), "the scope ends with the check");
    }
}
