//! The job engine's pure part: each job kind is a state machine,
//! `step(state, event) -> (state, actions)`, with no async and no I/O. A
//! driver (`crate::driver::stop_all`) performs the actions against NATS, KV and the
//! agents and feeds back what happened; the simulator ([`sim`]) performs
//! them against a seeded, faulty world and checks the invariants after
//! every step. The same code decides in both.
//!
//! Rules every machine keeps:
//! - **Journal before act**: an output whose state changed starts with
//!   [`Action::Journal`]; the driver performs the other actions only once
//!   that write succeeded, so a restarted coordinator never forgets an act.
//! - **An unknown outcome is not a failure**: a command without an answer
//!   is found out ([`Action::FindOut`]), never assumed done or failed.
//! - **Invalid transitions are rejected** ([`Invalid`]): a duplicated or
//!   late answer changes nothing.

pub mod concurrency;
pub mod drain;
pub mod enable;
pub mod rolling;
pub mod sim;
pub mod sim_drain;
pub mod sim_enable;
pub mod sim_rolling;
pub mod sim_single;
pub mod single;
pub mod stop_all;

use serde::{Deserialize, Serialize};

/// What came back for a command.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Answer {
    /// The agent executed it and says it worked.
    Done(String),
    /// The agent executed it (or refused it) and says it did not work.
    Failed(String),
    /// Nobody knows yet: no answer in time, a send NATS did not acknowledge,
    /// a node that does not answer.
    Unknown(String),
}

/// Why a job stops starting new work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// An operator's abort (with who and why).
    Abort(String),
    /// The job's deadline passed.
    Deadline,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Abort(why) => write!(f, "aborted: {why}"),
            StopReason::Deadline => write!(f, "deadline passed"),
        }
    }
}

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    Succeeded,
    /// Something was not done (the report says what).
    Failed,
    Aborted,
}

/// An event the engine does not accept in its state; the driver logs it
/// and carries on (the state is unchanged).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid transition: {0}")]
pub struct Invalid(pub String);

/// What a machine asks its driver to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Persist the new state (the job's journal) before anything else.
    Journal,
    /// Record the VM in the node's `stopped_by` (this job stopped it).
    Record { vm: String },
    /// Drop that record (the VM is known to run).
    Unrecord { vm: String },
    /// Send the stop command with this id (journaled with the state).
    SendStop { vm: String, cmd: String },
    /// Send the start command with this id (journaled with the state).
    SendStart { vm: String, cmd: String },
    /// Send the job's one prepared command with this id (journaled with
    /// the state).
    SendCommand { cmd: String },
    /// Find out what became of a command: the agent's results bucket,
    /// re-sending the same id when the agent never claimed it; answers
    /// with what it learned (maybe still [`Answer::Unknown`]).
    FindOut { vm: String, cmd: String },
    /// A line for the job's steps.
    Note {
        vm: Option<String>,
        ok: Option<bool>,
        message: String,
    },
    /// The job ended.
    Finish { ending: Ending, summary: String },
}
