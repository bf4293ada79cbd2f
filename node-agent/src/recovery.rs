//! Where a command cut off by an agent crash left its VM (pure decisions).
//!
//! A restarted agent finds ids it claimed but never recorded a result for.
//! Re-running them blindly could start a VM twice or migrate it from a node
//! it already left, so the agent first looks at what the hypervisors hold
//! now and records that as the command's result.

use nodemaint_proto::model::VmState;

/// The source's view of the VM after the restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local {
    pub state: VmState,
    /// A migration job still runs on it (libvirtd carries on without us).
    pub job_running: bool,
}

/// What a cut-off migration amounts to, seen from source and destination.
#[derive(Debug, PartialEq, Eq)]
pub enum Migration {
    /// Still in flight or settling: look again shortly.
    Wait,
    /// It did not happen (or was rolled back): the VM is on the source.
    OnSource,
    /// It completed: the VM is on the destination.
    OnDestination,
    /// Neither node holds it (or the destination cannot be asked): say so.
    Unknown(String),
}

/// `local`: the domain on the source (`None`: not defined there).
/// `remote`: the destination's answer (`Ok(None)`: not defined there).
pub fn migration(local: Option<Local>, remote: Result<Option<VmState>, String>) -> Migration {
    match (local, remote) {
        (Some(l), _) if l.job_running => Migration::Wait,
        // The destination's paused incoming copy: switch-over or clean-up
        // of a failed attempt is under way.
        (_, Ok(Some(VmState::Migrating))) => Migration::Wait,
        (None, Ok(Some(_))) => Migration::OnDestination,
        (Some(_), Ok(None)) => Migration::OnSource,
        // Completed, the source definition not yet removed (undefine-source
        // follows the switch-over): settles in a moment.
        (Some(l), Ok(Some(VmState::Running))) if l.state != VmState::Running => Migration::Wait,
        (Some(l), Ok(Some(r))) => Migration::Unknown(format!(
            "defined on both nodes (source {:?}, destination {r:?})",
            l.state
        )),
        (None, Ok(None)) => Migration::Unknown("defined on neither node".into()),
        (Some(_), Err(e)) | (None, Err(e)) => {
            Migration::Unknown(format!("cannot ask the destination: {e}"))
        }
    }
}

/// What a cut-off start or stop amounts to: `Some(true)` when the VM is in
/// the state the command wanted, `Some(false)` when not, `None` when it is
/// not defined here.
pub fn reached(want_running: bool, local: Option<VmState>) -> Option<bool> {
    local.map(|s| (s == VmState::Running) == want_running)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here(state: VmState, job_running: bool) -> Option<Local> {
        Some(Local { state, job_running })
    }

    #[test]
    fn a_migration_still_running_in_libvirtd_is_waited_for() {
        assert_eq!(
            migration(here(VmState::Running, true), Ok(Some(VmState::Migrating))),
            Migration::Wait
        );
        assert_eq!(
            migration(here(VmState::Running, false), Ok(Some(VmState::Migrating))),
            Migration::Wait
        );
    }

    #[test]
    fn the_vm_is_where_exactly_one_node_holds_it() {
        assert_eq!(
            migration(None, Ok(Some(VmState::Running))),
            Migration::OnDestination
        );
        assert_eq!(
            migration(None, Ok(Some(VmState::Shutoff))),
            Migration::OnDestination
        );
        assert_eq!(
            migration(here(VmState::Running, false), Ok(None)),
            Migration::OnSource
        );
    }

    #[test]
    fn doubtful_cases_are_waited_for_or_reported_never_guessed() {
        assert_eq!(
            migration(here(VmState::Shutoff, false), Ok(Some(VmState::Running))),
            Migration::Wait
        );
        assert!(matches!(
            migration(here(VmState::Running, false), Ok(Some(VmState::Running))),
            Migration::Unknown(_)
        ));
        assert!(matches!(migration(None, Ok(None)), Migration::Unknown(_)));
        assert!(matches!(
            migration(here(VmState::Running, false), Err("down".into())),
            Migration::Unknown(_)
        ));
    }

    #[test]
    fn starts_and_stops_are_judged_by_the_state_reached() {
        assert_eq!(reached(true, Some(VmState::Running)), Some(true));
        assert_eq!(reached(true, Some(VmState::Shutoff)), Some(false));
        assert_eq!(reached(false, Some(VmState::Shutoff)), Some(true));
        assert_eq!(reached(false, None), None);
    }
}
