//! The CLI's exit codes, in one place: what a script can tell apart
//! without reading the message. Documented in `coordinator --help` (built
//! from [`help`]) and the README.

use super::client::ClientError;
use nodemaint_proto::pb::error::Code;

/// Every exit code of a `coordinator` command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done (a job: it succeeded).
    Success = 0,
    /// The job failed, was aborted, or ended partly (its report says what
    /// was not done); any other failure.
    Failed = 1,
    /// The command line is wrong, found before anything is sent: an unknown
    /// or malformed option (clap's own code), or the CLI's settings
    /// (credentials file, operator name).
    Usage = 2,
    /// Refused by the coordinator or NATS, nothing changed: pre-flight,
    /// permission, unknown node or VM, wrong state, no capacity, a
    /// conflicting job, an invalid argument, an infeasible plan.
    Refused = 3,
    /// Unavailable, try again later: no NATS server reachable, no
    /// coordinator answering, an agent unreachable.
    Unavailable = 4,
    /// A timeout or deadline expired (`--deadline`, `wait-rebooted --timeout`).
    Timeout = 5,
}

impl Exit {
    pub const ALL: [Exit; 6] = [
        Exit::Success,
        Exit::Failed,
        Exit::Usage,
        Exit::Refused,
        Exit::Unavailable,
        Exit::Timeout,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    /// One line of `--help`.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Success => "success",
            Exit::Failed => {
                "the job failed, was aborted or ended partly (see its report); other failures"
            }
            Exit::Usage => {
                "usage error, nothing sent: unknown or malformed option, bad credentials file"
            }
            Exit::Refused => {
                "refused, nothing changed: pre-flight, permission, unknown node/VM, wrong state"
            }
            Exit::Unavailable => {
                "unavailable, retry later: NATS unreachable, no coordinator, agent down"
            }
            Exit::Timeout => "a timeout or deadline expired (--deadline, --timeout)",
        }
    }
}

/// The "Exit codes:" section of the top-level `--help`.
pub fn help() -> String {
    let mut s = String::from("Exit codes:\n");
    for e in Exit::ALL {
        s.push_str(&format!("  {}  {}\n", e.code(), e.meaning()));
    }
    s
}

/// An error that knows its exit code.
#[derive(Debug)]
pub struct Coded {
    pub exit: Exit,
    pub message: String,
}

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

fn coded(exit: Exit, message: impl std::fmt::Display) -> anyhow::Error {
    Coded {
        exit,
        message: message.to_string(),
    }
    .into()
}

/// A command line that cannot work as given (exit 2).
pub fn usage(message: impl std::fmt::Display) -> anyhow::Error {
    coded(Exit::Usage, message)
}

/// A refusal: nothing changed (exit 3).
pub fn refused(message: impl std::fmt::Display) -> anyhow::Error {
    coded(Exit::Refused, message)
}

/// A timeout or deadline expired (exit 5).
pub fn timed_out(message: impl std::fmt::Display) -> anyhow::Error {
    coded(Exit::Timeout, message)
}

/// A job that ended badly: 5 when its deadline stopped it, else 1.
pub fn job_failed(deadline_expired: bool, message: impl std::fmt::Display) -> anyhow::Error {
    coded(
        if deadline_expired {
            Exit::Timeout
        } else {
            Exit::Failed
        },
        message,
    )
}

/// The exit code of a failed command: that of the outermost error in its
/// chain that has one; 1 when none does.
pub fn of(e: &anyhow::Error) -> Exit {
    e.chain()
        .find_map(|cause| {
            if let Some(c) = cause.downcast_ref::<Coded>() {
                Some(c.exit)
            } else {
                cause.downcast_ref::<ClientError>().map(of_client)
            }
        })
        .unwrap_or(Exit::Failed)
}

fn of_client(e: &ClientError) -> Exit {
    match e {
        ClientError::Settings(_) => Exit::Usage,
        ClientError::Unreachable(_) | ClientError::NoCoordinator { .. } => Exit::Unavailable,
        // The request may have been acted on: "try again later" (with
        // --request-id, a retry gets the same job).
        ClientError::Timeout { .. } => Exit::Unavailable,
        ClientError::ConnectRefused(_) | ClientError::Refused(_) => Exit::Refused,
        ClientError::Api(err) => of_api(err.code()),
        ClientError::Other(_) => Exit::Failed,
    }
}

/// The API's error codes (`ApiReply` errors, see `crate::refusal`).
pub fn of_api(code: Code) -> Exit {
    match code {
        Code::InvalidArgument
        | Code::NotFound
        | Code::WrongState
        | Code::NoCapacity
        | Code::PermissionDenied
        | Code::Conflict => Exit::Refused,
        Code::Unavailable | Code::StaleLeader => Exit::Unavailable,
        Code::Timeout => Exit::Timeout,
        Code::Unspecified
        | Code::Malformed
        | Code::Aborted
        | Code::Hypervisor
        | Code::Internal
        | Code::OutcomeUnknown => Exit::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodemaint_proto::pb;

    #[test]
    fn codes_are_distinct_and_clap_usage_is_2() {
        let codes: std::collections::BTreeSet<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(codes.len(), Exit::ALL.len());
        assert_eq!(
            Exit::Usage.code(),
            clap::Error::new(clap::error::ErrorKind::InvalidValue).exit_code() as u8
        );
        let help = help();
        for e in Exit::ALL {
            assert!(help.contains(&format!("  {}  {}", e.code(), e.meaning())));
        }
    }

    #[test]
    fn errors_map_to_their_codes() {
        let api = |code: Code| {
            anyhow::Error::from(ClientError::Api(pb::Error {
                code: code as i32,
                message: "m".into(),
            }))
        };
        assert_eq!(of(&api(Code::NotFound)), Exit::Refused);
        assert_eq!(of(&api(Code::WrongState)), Exit::Refused);
        assert_eq!(of(&api(Code::PermissionDenied)), Exit::Refused);
        assert_eq!(of(&api(Code::Unavailable)), Exit::Unavailable);
        assert_eq!(of(&api(Code::Timeout)), Exit::Timeout);
        assert_eq!(of(&api(Code::Internal)), Exit::Failed);
        let unreachable = anyhow::Error::from(ClientError::Unreachable("x".into()));
        assert_eq!(of(&unreachable), Exit::Unavailable);
        // Context added on the way out keeps the code.
        assert_eq!(
            of(&unreachable.context("while listing nodes")),
            Exit::Unavailable
        );
        assert_eq!(of(&usage("name the nodes")), Exit::Usage);
        assert_eq!(of(&job_failed(true, "deadline")), Exit::Timeout);
        assert_eq!(of(&job_failed(false, "failed")), Exit::Failed);
        assert_eq!(of(&anyhow::anyhow!("anything else")), Exit::Failed);
    }
}
