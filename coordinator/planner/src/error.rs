//! Planner errors. Written by hand (no `thiserror`) to keep the crate's
//! dependencies to serde alone.

use crate::model::Unplaced;
use std::fmt;

/// Why a request could not be planned. `Infeasible` always lists *every* VM
/// that could not be placed, so an operator sees the whole problem at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    UnknownNode(String),
    UnknownVm(String),
    UnknownCloudspace(String),
    /// The node cannot take part as asked (destination not ENABLED or
    /// unreachable, destination equal to the source, source unreachable...).
    NodeNotEligible {
        node: String,
        reason: String,
    },
    /// At least one VM has no place that satisfies the hard constraints.
    Infeasible {
        unplaced: Vec<Unplaced>,
    },
    /// A running VM that cannot live-migrate was asked to.
    NotMigratable {
        vm: String,
        reason: String,
    },
    /// `place_new` was given a name that already exists in the fleet.
    DuplicateVm(String),
    /// The snapshot is inconsistent (duplicate node, VM on an unknown node,
    /// non-positive ratio...).
    InvalidFleet(String),
    /// A request parameter is unusable (a zero concurrency limit, K = 0).
    InvalidRequest(String),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::UnknownNode(n) => write!(f, "unknown node {n:?}"),
            PlanError::UnknownVm(v) => write!(f, "unknown VM {v:?}"),
            PlanError::UnknownCloudspace(c) => {
                write!(f, "unknown cloudspace {c:?} (no VFW belongs to it)")
            }
            PlanError::NodeNotEligible { node, reason } => {
                write!(f, "node {node:?} is not eligible: {reason}")
            }
            PlanError::Infeasible { unplaced } => {
                write!(f, "{} VM(s) cannot be placed:", unplaced.len())?;
                for u in unplaced {
                    write!(f, "\n  {}: {}", u.vm, u.reason)?;
                }
                Ok(())
            }
            PlanError::NotMigratable { vm, reason } => {
                write!(f, "VM {vm:?} cannot live-migrate: {reason}")
            }
            PlanError::DuplicateVm(v) => write!(f, "a VM named {v:?} already exists"),
            PlanError::InvalidFleet(m) => write!(f, "invalid fleet: {m}"),
            PlanError::InvalidRequest(m) => write!(f, "invalid request: {m}"),
        }
    }
}

impl std::error::Error for PlanError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infeasible_lists_every_vm() {
        let e = PlanError::Infeasible {
            unplaced: vec![
                Unplaced {
                    vm: "a".into(),
                    reason: "needs 4096 MiB".into(),
                },
                Unplaced {
                    vm: "b".into(),
                    reason: "needs 8 vCPUs".into(),
                },
            ],
        };
        let s = e.to_string();
        assert!(s.starts_with("2 VM(s) cannot be placed"));
        assert!(s.contains("a: needs 4096 MiB") && s.contains("b: needs 8 vCPUs"));
    }
}
