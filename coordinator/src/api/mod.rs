//! API handlers: one function per method, each validating everything before
//! changing anything, so a refused request leaves the fleet as it was.

pub mod events;
mod maintenance;
mod nodes;
pub mod preflight;
mod rolling;
mod vms;

use maintenance::*;
use nodes::*;
use rolling::*;
pub use vms::vfw_cloudspaces;
use vms::*;

use crate::jobs::{self, Job, JobSpec};
use crate::server::Coordinator;
use nodemaint_planner as planner;
use nodemaint_proto::model::{NodeRecord, NodeStatus, Vm, VmKind, VmState};
use nodemaint_proto::pb::{self, api_reply::Kind as Reply, api_request::Kind as Req, error::Code};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::refusal::{status_word, Refusal};

type Result<T> = std::result::Result<T, Refusal>;

fn refuse<T>(code: Code, msg: impl Into<String>) -> Result<T> {
    Err(Refusal(code, msg.into()))
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal(Code::Internal, e.to_string())
}

/// Answers one request of `user`, the authenticated caller (the API
/// subject's user token, or the portal's logged-in user), never the body's
/// `user` field.
pub async fn handle(c: &Arc<Coordinator>, user: &str, req: pb::ApiRequest) -> pb::ApiReply {
    let user = user.to_string();
    let method = req.method().unwrap_or("").to_string();
    if req.is_mutating() {
        if let Err(msg) = c.cfg.authorize_change(&user, &method) {
            tracing::info!(%user, %method, "refused: permission");
            return pb::ApiReply::error(Code::PermissionDenied, msg);
        }
    }
    let request_key = (!req.request_id.is_empty() && req.is_mutating()).then(|| {
        format!(
            "{}.{}",
            crate::jobs::hex(user.as_bytes()),
            crate::jobs::hex(req.request_id.as_bytes())
        )
    });
    if let Some(key) = &request_key {
        if req.request_id.len() > 128 {
            return pb::ApiReply::error(
                Code::InvalidArgument,
                "request id: at most 128 characters",
            );
        }
        // Claimed with a create, so of two concurrent duplicates exactly one
        // runs; the other waits for its job id.
        match claim_request(c, key).await {
            Claim::Ours => {}
            Claim::Done(id) => {
                let state = c.jobs.get(&id).await.map(|j| j.state);
                tracing::info!(%user, %method, job = %id, "repeated request answered with its job");
                return pb::ApiReply {
                    kind: Some(Reply::Accepted(pb::Accepted {
                        op_id: id.clone(),
                        events_from_seq: 0,
                        message: format!(
                            "request {} was already accepted as job {id} ({state:?}); not repeated",
                            req.request_id
                        ),
                    })),
                };
            }
            Claim::Refused(r) => return r.into(),
        }
    }
    let res = match req.kind.expect("method() checked the kind") {
        Req::ListNodes(_) => Ok(list_nodes(c)),
        Req::ShowNode(r) => show_node(c, &r.node),
        Req::ListVms(r) => list_vms(c, &r),
        Req::ListVfws(_) => Ok(list_vfws(c)),
        Req::StartVm(r) => start_vm(c, &user, &r).await,
        Req::StopVm(r) => stop_vm(c, &user, &r).await,
        Req::MoveVm(r) => move_vm(c, &user, &r).await,
        Req::MoveVfw(r) => move_vfw(c, &user, &r).await,
        Req::StartMaintenance(r) => start_maintenance(c, &user, &r).await,
        Req::EnableNode(r) => enable_node(c, &user, &r).await,
        Req::StartStopped(r) => start_stopped(c, &user, &r).await,
        Req::CreateVm(r) => create_vm(c, &user, &r).await,
        Req::CheckNode(r) => check_node(c, &user, &r).await,
        Req::StartRolling(r) => start_rolling(c, &user, &r).await,
        Req::ControlRolling(r) => control_rolling(c, &user, &r).await,
        Req::AbortJob(r) => abort_job(c, &user, &r).await,
        Req::RetryMaintenance(r) => retry_maintenance(c, &user, &r).await,
        Req::ExportFleet(_) => json(&fleet(c)),
        Req::PlanDrain(r) => plan_drain(c, &r),
        Req::PlanRolling(r) => plan_rolling(c, &r),
        Req::ListJobs(r) => {
            let l = c.jobs.list(match r.limit {
                0 => 100,
                n => n as usize,
            });
            Ok(Reply::Jobs(pb::JobList {
                jobs: l.jobs.iter().map(pb::Job::from).collect(),
                total: l.total as u64,
            }))
        }
        Req::ReadEvents(r) => events::read_events(c, &r).await,
        Req::ShowJob(r) => match c.jobs.get(&r.job_id).await {
            Some(job) => Ok(Reply::Job(pb::Job::from(&job))),
            None => refuse(Code::NotFound, format!("unknown job {:?}", r.job_id)),
        },
    };
    if let Some(key) = &request_key {
        settle_request(c, key, &res).await;
    }
    match res {
        Ok(kind) => pb::ApiReply { kind: Some(kind) },
        Err(r) => {
            tracing::info!(%user, %method, code = ?r.0, reason = %r.1, "request refused");
            r.into()
        }
    }
}

/// What a request id's record says: this call runs it, or it already ran.
enum Claim {
    Ours,
    Done(String),
    Refused(Refusal),
}

/// A request id's record while its first call runs.
const IN_FLIGHT: &[u8] = b"-";

/// Claims a request id for this call (put-if-absent), or returns the job an
/// earlier call with the same id started. A duplicate arriving while the
/// first call still runs waits for its answer.
async fn claim_request(c: &Coordinator, key: &str) -> Claim {
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(25);
    loop {
        match c.requests.create(key, IN_FLIGHT.into()).await {
            Ok(_) => return Claim::Ours,
            Err(e) if !nodemaint_proto::bus::create_conflict(&e) => {
                return Claim::Refused(internal(format!("cannot record the request id: {e}")))
            }
            Err(_) => {}
        }
        // Watch before reading, so an answer landing in between is seen.
        let mut watch = match c.requests.watch(key).await {
            Ok(w) => w,
            Err(e) => return Claim::Refused(internal(e)),
        };
        match nodemaint_proto::bus::leader_value(&c.requests, key).await {
            Ok(Some(v)) if v.as_ref() != IN_FLIGHT => {
                return Claim::Done(String::from_utf8_lossy(&v).into_owned())
            }
            // Deleted (the first call was refused) since our create: retry.
            Ok(None) => continue,
            Ok(Some(_)) => {}
            Err(e) => return Claim::Refused(internal(e)),
        }
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(Ok(e))) if e.operation == async_nats::jetstream::kv::Operation::Put => {
                if e.value.as_ref() != IN_FLIGHT {
                    return Claim::Done(String::from_utf8_lossy(&e.value).into_owned());
                }
            }
            Ok(_) => continue,
            Err(_) => {
                return Claim::Refused(Refusal(
                    Code::Unavailable,
                    "an earlier call with this request id is still running (or its coordinator \
                     died before answering); ask `job list`, or retry with a new request id"
                        .into(),
                ))
            }
        }
    }
}

/// Records what a claimed request id led to: its job, or nothing (a refused
/// request may be sent again with the same id once fixed).
async fn settle_request(c: &Coordinator, key: &str, res: &Result<Reply>) {
    let done = match res {
        Ok(Reply::Accepted(a)) => c
            .requests
            .put(key, a.op_id.clone().into())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        _ => c.requests.delete(key).await.map_err(|e| e.to_string()),
    };
    if let Err(e) = done {
        tracing::warn!(error = %e, "cannot record the request id's outcome");
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<Reply> {
    serde_json::to_string(v).map(Reply::Json).map_err(internal)
}

fn now() -> i64 {
    nodemaint_proto::now_ms()
}

fn fleet(c: &Coordinator) -> planner::Fleet {
    crate::fleet::snapshot(&c.registry.all(), now())
}

fn known_nodes(c: &Coordinator) -> String {
    let names: Vec<String> = c.registry.all().into_iter().map(|n| n.name).collect();
    if names.is_empty() {
        "no node has registered yet".into()
    } else {
        format!("known nodes: {}", names.join(", "))
    }
}

fn node(c: &Coordinator, name: &str) -> Result<NodeRecord> {
    c.registry.get(name).ok_or_else(|| {
        Refusal(
            Code::NotFound,
            format!("unknown node {name:?} ({})", known_nodes(c)),
        )
    })
}

/// The single node a VM is on; refuses unknown VMs and reports duplicates.
fn locate_vm(c: &Coordinator, name: &str) -> Result<(NodeRecord, Vm)> {
    let mut hits = c.registry.find_vm(name);
    match hits.len() {
        0 => refuse(
            Code::NotFound,
            format!("unknown VM {name:?}: no node reports a domain of that name"),
        ),
        1 => Ok(hits.remove(0)),
        _ => {
            refuse(
                Code::Conflict,
                format!(
                "VM {name:?} is reported by several nodes ({}); resolve this before acting on it",
                hits.iter().map(|(n, _)| n.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
            )
        }
    }
}

fn require_reachable(n: &NodeRecord) -> Result<()> {
    if n.reachable_at(now()) {
        return Ok(());
    }
    let ago = if n.last_seen_ms > 0 {
        format!("last seen {} s ago", (now() - n.last_seen_ms) / 1000)
    } else {
        "never seen".into()
    };
    refuse(
        Code::Unavailable,
        format!("node {} is unreachable ({ago})", n.name),
    )
}

/// Records a job and runs it in the background; replies "accepted" with
/// where its events start.
async fn launch(c: &Arc<Coordinator>, mut job: Job) -> Result<Reply> {
    // A one-command job is recorded with its command journaled already, so
    // its driver sends it without a journal write of its own.
    crate::driver::single::prejournal(&mut job);
    // Where the job's events start, read while the job is recorded: either
    // way it precedes the job's first event, announced after both.
    let (from_seq, recorded) = tokio::join!(c.link.events_seq(), record(c, &job));
    recorded?;
    c.jobs.announce(&job).await;
    let message = format!("{} accepted as job {}", job.kind(), job.id);
    let op_id = job.id.clone();
    crate::driver::executor::spawn(c.clone(), job, false);
    Ok(Reply::Accepted(pb::Accepted {
        op_id,
        events_from_seq: from_seq,
        message,
    }))
}

/// Takes the job's VM (if it has one), then records the job.
async fn record(c: &Coordinator, job: &Job) -> Result<()> {
    if let Some(vm) = job.spec.vm() {
        if let Err(holder) = c.jobs.lock_vm(vm, &job.id).await {
            return refuse(
                Code::Conflict,
                format!("job {holder} is acting on VM {vm}; wait for it to end (job show {holder}) or abort it"),
            );
        }
    }
    if let Err(e) = c.jobs.record_new(job).await {
        // Not recorded: nothing holds the locks it took.
        c.jobs.unlock_job(job).await;
        return Err(internal(e));
    }
    Ok(())
}

fn plan_error(e: planner::PlanError) -> Refusal {
    use planner::PlanError as E;
    let code = match &e {
        E::UnknownNode(_) | E::UnknownVm(_) | E::UnknownCloudspace(_) => Code::NotFound,
        E::Infeasible { .. } => Code::NoCapacity,
        _ => Code::WrongState,
    };
    Refusal(code, e.to_string())
}

/// Takes the node for the job and launches it; if the launch fails the
/// node is given back in the status it had (a refusal leaves no trace).
async fn take_and_launch(
    c: &Arc<Coordinator>,
    name: &str,
    from: NodeStatus,
    to: NodeStatus,
    job: Job,
) -> Result<Reply> {
    let id = job.id.clone();
    // What a rollback restores: when the node entered `from` (read before
    // the take, which stamps the new status).
    let since = c.registry.get(name).map(|r| r.status_since_ms);
    crate::driver::take_node(c, name, from, to, &id).await?;
    match launch(c, job).await {
        Ok(r) => Ok(r),
        Err(e) => {
            let _ = c
                .registry
                .update::<String>(name, |r| {
                    let mut r = r.ok_or_else(|| "node vanished".to_string())?;
                    if r.current_job.as_deref() == Some(id.as_str()) {
                        r.current_job = None;
                        r.status = from;
                        if let Some(t) = since {
                            r.status_since_ms = t;
                        }
                    }
                    Ok(r)
                })
                .await;
            Err(e)
        }
    }
}
