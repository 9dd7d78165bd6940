//! Which actions an instance's state allows, checked before OrionVM is called.
//!
//! | state | allowed |
//! |---|---|
//! | `running` | poweroff, reboot, snapshot, patch (not memory/performance_tier/virtualization/disks), delete |
//! | `stopped` | poweron, snapshot, patch, delete |
//! | `failed_to_provision` | delete |
//! | `transferred`, `terminated` | nothing |
//! | moving (`starting`, `stopping`, ...) | nothing for now: 409 with `Retry-After` |
//! | `terminating` | nothing (it only ends in `terminated`) |

use super::FacadeError;

/// The facade's actions on an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Poweron,
    Poweroff,
    Reboot,
    Snapshot,
    Patch,
    /// A patch that changes memory, performance tier, virtualization or disks.
    PatchStopped,
    Delete,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Poweron => "poweron",
            Action::Poweroff => "poweroff",
            Action::Reboot => "reboot",
            Action::Snapshot => "snapshot",
            Action::Patch => "patch",
            Action::PatchStopped => "patch of memory, performance_tier, virtualization or disks",
            Action::Delete => "delete",
        }
    }
}

/// States that OrionVM is moving out of on its own.
pub fn is_moving(state: &str) -> bool {
    matches!(
        state,
        "initial"
            | "pending_verification"
            | "provisioning"
            | "starting"
            | "stopping"
            | "terminating"
            | "updating"
            | "updating_network"
    )
}

/// The actions a state allows, in a stable order.
pub fn allowed(state: &str) -> &'static [Action] {
    use Action::*;
    match state {
        "running" => &[Poweroff, Reboot, Snapshot, Patch, Delete],
        "stopped" => &[Poweron, Snapshot, Patch, PatchStopped, Delete],
        "failed_to_provision" => &[Delete],
        _ => &[],
    }
}

/// Seconds a caller should wait before asking again about a moving state.
pub const RETRY_AFTER_SECONDS: u64 = 2;

/// Ok when `state` allows `action`; otherwise the 409 that names the state and what it allows.
pub fn check(action: Action, state: &str) -> Result<(), FacadeError> {
    if allowed(state).contains(&action) {
        return Ok(());
    }
    let retry_after = (is_moving(state) && state != "terminating").then_some(RETRY_AFTER_SECONDS);
    Err(FacadeError::InvalidState {
        action: action.name(),
        state: state.to_string(),
        allowed: allowed(state)
            .iter()
            .filter(|a| **a != Action::PatchStopped)
            .map(|a| a.name())
            .collect(),
        retry_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        assert!(check(Action::Poweron, "stopped").is_ok());
        assert!(check(Action::Poweron, "running").is_err());
        assert!(check(Action::Poweroff, "running").is_ok());
        assert!(check(Action::Reboot, "stopped").is_err());
        assert!(check(Action::PatchStopped, "running").is_err());
        assert!(check(Action::PatchStopped, "stopped").is_ok());
        match check(Action::Poweron, "starting") {
            Err(FacadeError::InvalidState {
                retry_after,
                allowed,
                ..
            }) => {
                assert_eq!(retry_after, Some(2));
                assert!(allowed.is_empty());
            }
            other => panic!("{other:?}"),
        }
        match check(Action::Delete, "terminating") {
            Err(FacadeError::InvalidState { retry_after, .. }) => assert_eq!(retry_after, None),
            other => panic!("{other:?}"),
        }
    }
}
