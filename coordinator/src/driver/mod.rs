//! The I/O half of the job engine: performs the pure machines' actions
//! (`crate::engine`) against the registry, the job journal and the agents,
//! and runs the jobs not yet expressed as machines.

pub mod drain;
pub mod enable;
pub mod executor;
pub mod probes;
pub mod rolling;
pub mod single;
pub mod slots;
pub mod stop_all;

use crate::refusal::{status_word, Refusal};
use crate::server::Coordinator;
use nodemaint_proto::model::{NodeRecord, NodeStatus};
use nodemaint_proto::pb::error::Code;

/// The engine ends a stopped job with "stopped: deadline passed"; the
/// operator is told which deadline, as its stop request recorded it
/// ("deadline of 3 s expired").
pub(crate) fn name_the_deadline(
    c: &crate::server::Coordinator,
    job: &str,
    summary: String,
) -> String {
    match c.stops.reason(job) {
        Some(r) if r.starts_with("deadline") => summary.replacen("deadline passed", &r, 1),
        _ => summary,
    }
}

/// Takes the node for a job: status `from` → `to`, current job set, in one
/// compare-and-set, so two requests cannot both win.
pub async fn take_node(
    c: &Coordinator,
    name: &str,
    from: NodeStatus,
    to: NodeStatus,
    job_id: &str,
) -> Result<NodeRecord, Refusal> {
    // Claims of jobs that ended are stale (their release may have been cut
    // short by a crash); anything else still lands VMs here.
    let mut stale: Vec<String> = Vec::new();
    for j in c
        .registry
        .get(name)
        .map(|r| r.inbound)
        .unwrap_or_default()
        .into_values()
    {
        if c.jobs.get(&j).await.is_none_or(|j| j.state.is_terminal()) {
            stale.push(j);
        }
    }
    c.registry
        .update(name, |r| {
            let mut r =
                r.ok_or_else(|| Refusal(Code::NotFound, format!("unknown node {name:?}")))?;
            if let Some(j) = &r.current_job {
                return Err(Refusal(
                    Code::Conflict,
                    format!("node {name} is held by job {j}; wait for it or check `job show {j}`"),
                ));
            }
            if r.status != from {
                return Err(Refusal(
                    Code::WrongState,
                    format!(
                        "node {name} is {}, not {}",
                        status_word(r.status),
                        status_word(from)
                    ),
                ));
            }
            r.inbound.retain(|_, j| !stale.contains(j));
            if to == NodeStatus::Maintenance {
                if let Some((vm, j)) = r.inbound.iter().next() {
                    return Err(Refusal(
                        Code::Conflict,
                        format!(
                            "node {name} is receiving VMs ({vm} from job {j}{more}); \
                             wait for it or `job abort {j}`",
                            more = match r.inbound.len() - 1 {
                                0 => String::new(),
                                n => format!(" and {n} more"),
                            }
                        ),
                    ));
                }
            }
            if to != r.status {
                r.status_since_ms = nodemaint_proto::now_ms();
            }
            r.status = to;
            r.current_job = Some(job_id.to_string());
            Ok(r)
        })
        .await
        .map_err(|e| match e {
            nodemaint_proto::bus::CasError::Rejected(r) => r,
            other => Refusal(Code::Internal, other.to_string()),
        })
}
