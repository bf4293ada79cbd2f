//! API handlers: one function per method, each validating everything before
//! changing anything, so a refused request leaves the fleet as it was.

use crate::jobs::{Job, JobState};
use crate::server::Coordinator;
use nodemaint_planner as planner;
use nodemaint_proto::model::{NodeRecord, NodeStatus, Vm, VmKind, VmState};
use nodemaint_proto::pb::{self, api_reply::Kind as Reply, api_request::Kind as Req, error::Code};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A refusal: code and message, turned into an `ApiReply` error.
pub struct Refusal(pub Code, pub String);

impl From<Refusal> for pb::ApiReply {
    fn from(r: Refusal) -> Self {
        pb::ApiReply::error(r.0, r.1)
    }
}

type Result<T> = std::result::Result<T, Refusal>;

fn refuse<T>(code: Code, msg: impl Into<String>) -> Result<T> {
    Err(Refusal(code, msg.into()))
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal(Code::Internal, e.to_string())
}

pub async fn handle(c: &Arc<Coordinator>, req: pb::ApiRequest) -> pb::ApiReply {
    let user = req.user.clone();
    let method = req.method().unwrap_or("").to_string();
    if req.is_mutating() {
        if let Err(msg) = c.cfg.authorize_change(&user, &method) {
            tracing::info!(%user, %method, "refused: permission");
            return pb::ApiReply::error(Code::PermissionDenied, msg);
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
        Req::ExportFleet(_) => json(&fleet(c)),
        Req::PlanDrain(r) => plan_drain(c, &r),
        Req::PlanRolling(r) => plan_rolling(c, &r),
        Req::ListJobs(_) => match c.list_jobs().await {
            Ok(jobs) => json(&jobs),
            Err(e) => Err(internal(e)),
        },
        Req::ShowJob(r) => match c.get_job(&r.job_id).await {
            Some(job) => json(&job),
            None => refuse(Code::NotFound, format!("unknown job {:?}", r.job_id)),
        },
        _ => refuse(
            Code::InvalidArgument,
            format!("method {method} is not available in this coordinator version"),
        ),
    };
    match res {
        Ok(kind) => pb::ApiReply { kind: Some(kind) },
        Err(r) => {
            tracing::info!(%user, %method, code = ?r.0, message = %r.1, "request refused");
            r.into()
        }
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

fn list_nodes(c: &Coordinator) -> Reply {
    let now = now();
    Reply::Nodes(pb::NodeList {
        nodes: c.registry.all().iter().map(|n| n.summary(now)).collect(),
    })
}

fn show_node(c: &Coordinator, name: &str) -> Result<Reply> {
    let n = node(c, name)?;
    Ok(Reply::Node(pb::NodeDetail {
        summary: Some(n.summary(now())),
        domains: n.domains.iter().map(pb::Domain::from).collect(),
        libvirt_uri: n.libvirt_uri.clone(),
    }))
}

fn list_vms(c: &Coordinator, r: &pb::ListVms) -> Result<Reply> {
    if !r.node.is_empty() {
        node(c, &r.node)?;
    }
    let kind = pb::VmKind::try_from(r.kind).unwrap_or_default();
    let state = pb::VmState::try_from(r.state).unwrap_or_default();
    let mut vms = Vec::new();
    for n in c.registry.all() {
        if !r.node.is_empty() && n.name != r.node {
            continue;
        }
        for d in &n.domains {
            let keep = (r.cloudspace.is_empty() || d.cloudspace.as_deref() == Some(&r.cloudspace))
                && (kind == pb::VmKind::Unspecified || pb::VmKind::from(d.kind) == kind)
                && (state == pb::VmState::Unspecified || pb::VmState::from(d.state) == state);
            if keep {
                vms.push(pb::VmEntry {
                    node: n.name.clone(),
                    domain: Some(pb::Domain::from(d)),
                    stopped_by: n.stopped_by.get(&d.name).cloned().unwrap_or_default(),
                });
            }
        }
    }
    Ok(Reply::Vms(pb::VmList { vms }))
}

/// Every cloudspace's VFW and where it runs; a cloudspace whose VMs exist
/// but whose VFW no node reports is listed with an empty node, so a lost
/// firewall shows up instead of disappearing.
fn list_vfws(c: &Coordinator) -> Reply {
    let now = now();
    let mut by_cs: BTreeMap<String, Vec<pb::VfwEntry>> = BTreeMap::new();
    for n in c.registry.all() {
        for d in &n.domains {
            let Some(cs) = d.cloudspace.clone() else {
                continue;
            };
            let entries = by_cs.entry(cs.clone()).or_default();
            if d.kind == VmKind::Vfw {
                entries.push(pb::VfwEntry {
                    cloudspace: cs,
                    node: n.name.clone(),
                    domain: Some(pb::Domain::from(d)),
                    node_reachable: n.reachable_at(now),
                });
            }
        }
    }
    let vfws = by_cs
        .into_iter()
        .flat_map(|(cs, entries)| {
            if entries.is_empty() {
                vec![pb::VfwEntry {
                    cloudspace: cs,
                    ..Default::default()
                }]
            } else {
                entries
            }
        })
        .collect();
    Reply::Vfws(pb::VfwList { vfws })
}

fn new_command(job: &Job, kind: pb::agent_command::Kind) -> pb::AgentCommand {
    pb::AgentCommand {
        id: uuid::Uuid::new_v4().to_string(),
        op_id: job.id.clone(),
        requested_by: job.user.clone(),
        kind: Some(kind),
    }
}

/// Records the job, sends one command, and finishes the job when the
/// agent's result arrives (in the background). Replies "accepted".
async fn single_command_job(
    c: &Arc<Coordinator>,
    job: Job,
    node: &str,
    kind: pb::agent_command::Kind,
) -> Result<Reply> {
    let from_seq = c.events_seq().await;
    c.create_job(&job).await.map_err(internal)?;
    let cmd = new_command(&job, kind);
    let mut rx = match c.send_command(node, &cmd).await {
        Ok(rx) => rx,
        Err(e) => {
            c.finish_job(&job.id, JobState::Failed, format!("{e:#}"))
                .await;
            return Err(Refusal(Code::Unavailable, format!("{e:#}")));
        }
    };
    let job_id = job.id.clone();
    let message = format!("{} accepted as job {}", job.kind, job.id);
    let c2 = c.clone();
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if let Some(pb::event::Body::Result(r)) = ev.body {
                let (state, outcome) = if r.ok {
                    (JobState::Succeeded, r.message.clone())
                } else {
                    (
                        JobState::Failed,
                        r.error.map(|e| e.to_string()).unwrap_or(r.message),
                    )
                };
                c2.job_step(&job_id, Some(&r.vm), Some(r.ok), outcome.clone())
                    .await;
                c2.finish_job(&job_id, state, outcome).await;
                return;
            }
        }
    });
    Ok(Reply::Accepted(pb::Accepted {
        op_id: job.id,
        events_from_seq: from_seq,
        message,
    }))
}

async fn start_vm(c: &Arc<Coordinator>, user: &str, r: &pb::VmAction) -> Result<Reply> {
    let (n, vm) = locate_vm(c, &r.vm)?;
    require_reachable(&n)?;
    if n.status == NodeStatus::Maintenance {
        return refuse(
            Code::WrongState,
            format!(
                "node {} is in maintenance; enable it first or move {} elsewhere",
                n.name, vm.name
            ),
        );
    }
    if vm.state == VmState::Running {
        return refuse(
            Code::WrongState,
            format!("VM {} is already running on {}", vm.name, n.name),
        );
    }
    let job = Job::new(
        "vm.start",
        user,
        Some(&n.name),
        serde_json::json!({ "vm": vm.name }),
    );
    let kind = pb::agent_command::Kind::Start(pb::StartVm {
        vm: vm.name.clone(),
    });
    single_command_job(c, job, &n.name, kind).await
}

async fn stop_vm(c: &Arc<Coordinator>, user: &str, r: &pb::VmAction) -> Result<Reply> {
    let (n, vm) = locate_vm(c, &r.vm)?;
    require_reachable(&n)?;
    if vm.state == VmState::Shutoff {
        return refuse(
            Code::WrongState,
            format!("VM {} is already shut off on {}", vm.name, n.name),
        );
    }
    let timeout = if r.graceful_timeout_s > 0 {
        r.graceful_timeout_s
    } else {
        c.cfg.stop_graceful_timeout_s
    };
    let job = Job::new(
        "vm.stop",
        user,
        Some(&n.name),
        serde_json::json!({ "vm": vm.name, "graceful_timeout_s": timeout }),
    );
    let kind = pb::agent_command::Kind::Stop(pb::StopVm {
        vm: vm.name.clone(),
        graceful_timeout_s: timeout,
    });
    single_command_job(c, job, &n.name, kind).await
}

/// The destination's migration endpoints, or a refusal saying what is missing.
pub fn migration_target(dest: &NodeRecord) -> Result<(String, String)> {
    if dest.libvirt_uri.is_empty() || dest.address.is_empty() {
        return refuse(
            Code::Unavailable,
            format!(
                "node {} has no migration address (set `address` in its agent config)",
                dest.name
            ),
        );
    }
    Ok((dest.libvirt_uri.clone(), format!("tcp://{}", dest.address)))
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

async fn move_vm(c: &Arc<Coordinator>, user: &str, r: &pb::MoveVm) -> Result<Reply> {
    let (src, vm) = locate_vm(c, &r.vm)?;
    let dest = node(c, &r.to_node)?;
    if dest.name == src.name {
        return refuse(
            Code::InvalidArgument,
            format!("VM {} already runs on {}", vm.name, src.name),
        );
    }
    require_reachable(&src)?;
    require_reachable(&dest)?;
    planner::validate_move(&fleet(c), &vm.name, &dest.name).map_err(plan_error)?;
    if vm.state != VmState::Running {
        return refuse(
            Code::WrongState,
            format!(
                "VM {} is {:?} on {}; only running VMs are live-migrated",
                vm.name, vm.state, src.name
            ),
        );
    }
    let (libvirt_uri, migrate_uri) = migration_target(&dest)?;
    let timeout = if r.timeout_s > 0 {
        r.timeout_s
    } else {
        c.cfg.migration_timeout_s
    };
    let job = Job::new(
        "vm.move",
        user,
        Some(&src.name),
        serde_json::json!({ "vm": vm.name, "from": src.name, "to": dest.name, "timeout_s": timeout }),
    );
    let kind = pb::agent_command::Kind::Migrate(pb::MigrateVm {
        vm: vm.name.clone(),
        dest_node: dest.name.clone(),
        dest_libvirt_uri: libvirt_uri,
        dest_migrate_uri: migrate_uri,
        timeout_s: timeout,
        max_speed_mibs: r.max_speed_mibs,
    });
    single_command_job(c, job, &src.name, kind).await
}

fn plan_drain(c: &Coordinator, r: &pb::PlanDrain) -> Result<Reply> {
    node(c, &r.node)?;
    let limits = crate::fleet::limits(&c.cfg.limits, r.max_parallel);
    let report = planner::drain_report(&fleet(c), &r.node, &limits).map_err(plan_error)?;
    json(&report)
}

fn plan_rolling(c: &Coordinator, r: &pb::PlanRolling) -> Result<Reply> {
    let fleet = fleet(c);
    let nodes: Vec<String> = if r.nodes.is_empty() {
        fleet.nodes.iter().map(|n| n.name.clone()).collect()
    } else {
        r.nodes.clone()
    };
    let k = r.max_unavailable.max(1) as usize;
    let plan = planner::plan_rolling(&fleet, &nodes, k).map_err(plan_error)?;
    json(&plan)
}
