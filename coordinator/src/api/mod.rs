//! API handlers: one function per method, each validating everything before
//! changing anything, so a refused request leaves the fleet as it was.

pub mod preflight;

use crate::jobs::{self, Job, JobSpec};
use crate::server::Coordinator;
use nodemaint_planner as planner;
use nodemaint_proto::model::{NodeRecord, NodeStatus, Vm, VmKind, VmState};
use nodemaint_proto::pb::{self, api_reply::Kind as Reply, api_request::Kind as Req, error::Code};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A refusal: code and message, turned into an `ApiReply` error.
#[derive(Debug)]
pub struct Refusal(pub Code, pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.as_str_name(), self.1)
    }
}

/// Status as operators read it: ENABLED, MAINTENANCE, …
fn status_word(s: NodeStatus) -> String {
    format!("{s:?}").to_uppercase()
}

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
        if let Ok(Some(id)) = c.requests.get(key).await {
            let id = String::from_utf8_lossy(&id).to_string();
            let state = c.get_job(&id).await.map(|j| j.state);
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
        Req::ListJobs(_) => match c.list_jobs().await {
            Ok(jobs) => json(&jobs),
            Err(e) => Err(internal(e)),
        },
        Req::ShowJob(r) => match c.get_job(&r.job_id).await {
            Some(job) => json(&job),
            None => refuse(Code::NotFound, format!("unknown job {:?}", r.job_id)),
        },
    };
    if let (Some(key), Ok(Reply::Accepted(a))) = (&request_key, &res) {
        if let Err(e) = c.requests.create(key, a.op_id.clone().into()).await {
            tracing::warn!(error = %e, "cannot record the request id");
        }
    }
    match res {
        Ok(kind) => pb::ApiReply { kind: Some(kind) },
        Err(r) => {
            tracing::info!(%user, %method, code = ?r.0, reason = %r.1, "request refused");
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

/// Records a job and runs it in the background; replies "accepted" with
/// where its events start.
async fn launch(c: &Arc<Coordinator>, job: Job) -> Result<Reply> {
    let from_seq = c.events_seq().await;
    c.create_job(&job).await.map_err(internal)?;
    let message = format!("{} accepted as job {}", job.kind(), job.id);
    let op_id = job.id.clone();
    crate::driver::executor::spawn(c.clone(), job, false);
    Ok(Reply::Accepted(pb::Accepted {
        op_id,
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
    let spec = JobSpec::Start(jobs::StartVm {
        vm: vm.name.clone(),
    });
    launch(c, Job::new(spec, user, Some(&n.name))).await
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
    let spec = JobSpec::Stop(jobs::StopVm {
        vm: vm.name.clone(),
        graceful_timeout_s: timeout,
    });
    launch(c, Job::new(spec, user, Some(&n.name))).await
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
    migration_target(&dest)?;
    let kind = c
        .migrate_kind(&vm.name, &dest, r.timeout_s, r.max_speed_mibs)
        .map_err(|e| Refusal(Code::Unavailable, e))?;
    let pb::agent_command::Kind::Migrate(m) = kind else {
        return Err(internal("the migrate command is not a migration"));
    };
    let spec = JobSpec::Move(jobs::MoveVm {
        vm: m.vm,
        from: src.name.clone(),
        to: m.dest_node,
        dest_libvirt_uri: m.dest_libvirt_uri,
        dest_migrate_uri: m.dest_migrate_uri,
        timeout_s: m.timeout_s,
        progress_timeout_s: m.progress_timeout_s,
        max_speed_mibs: m.max_speed_mibs,
    });
    launch(c, Job::new(spec, user, Some(&src.name))).await
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

async fn move_vfw(c: &Arc<Coordinator>, user: &str, r: &pb::MoveVfw) -> Result<Reply> {
    let to = (!r.to_node.is_empty()).then_some(r.to_node.as_str());
    if let Some(to) = to {
        node(c, to)?;
    }
    let m = planner::plan_vfw_move(&fleet(c), &r.cloudspace, to).map_err(plan_error)?;
    move_vm(
        c,
        user,
        &pb::MoveVm {
            vm: m.vm,
            to_node: m.to,
            timeout_s: r.timeout_s,
            max_speed_mibs: 0,
        },
    )
    .await
}

/// Cloudspaces whose VFW runs on the node (these firewalls go down in stop mode).
pub fn vfw_cloudspaces(n: &NodeRecord) -> Vec<String> {
    let mut cs: Vec<String> = n
        .domains
        .iter()
        .filter(|d| d.kind == VmKind::Vfw && d.state == VmState::Running)
        .map(|d| d.cloudspace.clone().unwrap_or_else(|| d.name.clone()))
        .collect();
    cs.sort();
    cs.dedup();
    cs
}

/// Takes the node for a job: status `from` → `to`, current job set, in one
/// compare-and-set, so two requests cannot both win.
pub(crate) async fn take_node(
    c: &Coordinator,
    name: &str,
    from: NodeStatus,
    to: NodeStatus,
    job_id: &str,
) -> Result<NodeRecord> {
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
        if c.get_job(&j).await.is_none_or(|j| j.state.is_terminal()) {
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
            r.status = to;
            r.current_job = Some(job_id.to_string());
            Ok(r)
        })
        .await
        .map_err(|e| match e {
            nodemaint_proto::bus::CasError::Rejected(r) => r,
            other => internal(other),
        })
}

async fn start_maintenance(
    c: &Arc<Coordinator>,
    user: &str,
    r: &pb::StartMaintenance,
) -> Result<Reply> {
    use pb::start_maintenance::Mode;
    let n = node(c, &r.node)?;
    match (n.status, &n.current_job) {
        (NodeStatus::Maintenance, _) => {
            return refuse(
                Code::WrongState,
                format!(
                    "node {} is already in maintenance; `node enable {}` ends it, \
                     `maintenance retry {}` continues a drain that left VMs behind",
                    n.name, n.name, n.name
                ),
            )
        }
        (_, Some(j)) => {
            return refuse(
                Code::Conflict,
                format!("node {} is held by job {j}", n.name),
            )
        }
        (NodeStatus::Enabled, None) => {}
        (other, None) => {
            return refuse(
                Code::WrongState,
                format!(
                    "node {} is {}; only an ENABLED node can enter maintenance",
                    n.name,
                    status_word(other)
                ),
            )
        }
    }
    let mode = match Mode::try_from(r.mode).unwrap_or(Mode::Unspecified) {
        Mode::Unspecified => return refuse(Code::InvalidArgument, "give a mode: move (live-migrate every VM away, preferred), stop (stop every VM, VFWs included) or none (only mark it unschedulable)"),
        Mode::Move => "move",
        Mode::Stop => "stop",
        Mode::None => "none",
    };
    let opts = DrainOptions {
        max_parallel: r.max_parallel,
        deadline_s: r.deadline_s,
        fallback: fallback_of(r.fallback),
        ack_vfw_downtime: r.ack_vfw_downtime,
        max_speed_mibs: r.max_speed_mibs,
    };
    let (checks, plan) = preflight(c, &n, mode, &opts, false).await?;
    if r.dry_run {
        return json(&serde_json::json!({
            "node": n.name, "mode": mode, "dry_run": true,
            "ok": checks.iter().all(|c| c.ok), "checks": checks, "plan": plan,
        }));
    }
    refuse_failed(&n.name, &checks)?;
    let spec = match mode {
        "stop" => JobSpec::StopAll(jobs::StopAll {
            vfw_cloudspaces_down: vfw_cloudspaces(&n),
            ack_vfw_downtime: opts.ack_vfw_downtime,
            deadline_s: opts.deadline_s,
        }),
        "move" => JobSpec::Drain(jobs::Drain {
            plan,
            ..opts.drain()
        }),
        _ => JobSpec::Cordon(jobs::Cordon {}),
    };
    let job = Job::new(spec, user, Some(&n.name));
    take_and_launch(
        c,
        &n.name,
        NodeStatus::Enabled,
        NodeStatus::Maintenance,
        job,
    )
    .await
}

/// Refuses when a pre-flight check failed: NO_CAPACITY when the plan does
/// not fit, WRONG_STATE otherwise.
fn refuse_failed(node: &str, checks: &[crate::api::preflight::Check]) -> Result<()> {
    let Some(why) = crate::api::preflight::refusal(node, checks) else {
        return Ok(());
    };
    let capacity = checks.iter().any(|c| c.name == "capacity" && !c.ok);
    refuse(
        if capacity {
            Code::NoCapacity
        } else {
            Code::WrongState
        },
        why,
    )
}

/// The options of a drain (start and retry).
struct DrainOptions {
    max_parallel: u32,
    max_speed_mibs: u64,
    deadline_s: u32,
    fallback: jobs::Fallback,
    ack_vfw_downtime: bool,
}

impl DrainOptions {
    fn drain(&self) -> jobs::Drain {
        jobs::Drain {
            plan: None,
            fallback: self.fallback,
            ack_vfw_downtime: self.ack_vfw_downtime,
            max_parallel: self.max_parallel,
            max_speed_mibs: self.max_speed_mibs,
            deadline_s: self.deadline_s,
            retry: false,
            parent: None,
        }
    }
}

fn fallback_of(f: i32) -> jobs::Fallback {
    use jobs::Fallback;
    match pb::Fallback::try_from(f).unwrap_or(pb::Fallback::Fail) {
        pb::Fallback::Fail => Fallback::Fail,
        pb::Fallback::Stop => Fallback::Stop,
        pb::Fallback::Cold => Fallback::Cold,
    }
}

/// Runs the pre-flight checks of a drain of `n` (plan with headroom,
/// agents, protocol, destination libvirt, limits, conflicting jobs).
async fn preflight(
    c: &Arc<Coordinator>,
    n: &NodeRecord,
    mode: &str,
    opts: &DrainOptions,
    retry: bool,
) -> Result<(
    Vec<crate::api::preflight::Check>,
    Option<planner::DrainPlan>,
)> {
    let plan = if mode == "move" {
        let limits = crate::fleet::limits(&c.cfg.limits, opts.max_parallel);
        let mut f =
            crate::api::preflight::with_headroom(&fleet(c), c.cfg.preflight.headroom_percent);
        // Plan as if the node were already in maintenance.
        for node in &mut f.nodes {
            if node.name == n.name {
                node.status = planner::NodeStatus::Maintenance;
            }
        }
        // A retry leaves what maintenance stopped where it is.
        f.vms
            .retain(|v| !(v.node == n.name && n.stopped_by.contains_key(&v.name)));
        Some(planner::plan_drain(&f, &n.name, &limits))
    } else {
        None
    };
    if let Some(Err(e @ planner::PlanError::UnknownNode(_))) = &plan {
        return Err(plan_error(e.clone()));
    }
    let probes = match &plan {
        Some(Ok(p)) if !p.moves.is_empty() && n.reachable_at(now()) => {
            Some(c.probe_destinations(&n.name, p).await)
        }
        _ => None,
    };
    let running: Vec<Job> = c
        .list_jobs()
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|j| !j.state.is_terminal())
        .collect();
    let nodes = c.registry.all();
    let cs = vfw_cloudspaces(n);
    let checks = crate::api::preflight::evaluate(&crate::api::preflight::Input {
        node: n,
        nodes: &nodes,
        now_ms: now(),
        mode,
        plan: plan.as_ref(),
        headroom_percent: c.cfg.preflight.headroom_percent,
        fallback: opts.fallback,
        ack_vfw_downtime: opts.ack_vfw_downtime,
        vfw_cloudspaces: &cs,
        max_nodes_in_maintenance: c.cfg.preflight.max_nodes_in_maintenance,
        running_jobs: &running,
        probes: probes.as_deref(),
        retry,
    });
    Ok((checks, plan.and_then(|p| p.ok())))
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
    take_node(c, name, from, to, &id).await?;
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
                    }
                    Ok(r)
                })
                .await;
            Err(e)
        }
    }
}

/// The node, if it is in maintenance and no job holds it; otherwise the
/// refusal (`why` says what the operation needs).
fn free_in_maintenance(c: &Coordinator, name: &str, why: &str) -> Result<NodeRecord> {
    let n = node(c, name)?;
    if n.status != NodeStatus::Maintenance {
        return refuse(
            Code::WrongState,
            format!("node {} is {}; {why}", n.name, status_word(n.status)),
        );
    }
    if let Some(j) = &n.current_job {
        return refuse(
            Code::Conflict,
            format!(
                "node {} is held by job {j}; wait for it or `job abort {j}`",
                n.name
            ),
        );
    }
    Ok(n)
}

/// `maintenance retry NODE`: a node in maintenance whose drain left VMs
/// behind drains again, with just those (moved VMs are not on it any more;
/// VMs maintenance stopped stay stopped).
async fn retry_maintenance(
    c: &Arc<Coordinator>,
    user: &str,
    r: &pb::RetryMaintenance,
) -> Result<Reply> {
    let n = free_in_maintenance(
        c,
        &r.node,
        "retry continues the drain of a node in maintenance",
    )?;
    let left = n
        .domains
        .iter()
        .filter(|d| !n.stopped_by.contains_key(&d.name))
        .count();
    if left == 0 {
        return refuse(
            Code::WrongState,
            format!(
                "node {} has nothing left to drain ({} VMs stopped by maintenance stay recorded)",
                n.name,
                n.stopped_by.len()
            ),
        );
    }
    let opts = DrainOptions {
        max_parallel: r.max_parallel,
        deadline_s: r.deadline_s,
        fallback: fallback_of(r.fallback),
        ack_vfw_downtime: r.ack_vfw_downtime,
        max_speed_mibs: r.max_speed_mibs,
    };
    let (checks, plan) = preflight(c, &n, "move", &opts, true).await?;
    refuse_failed(&n.name, &checks)?;
    let mut drain = opts.drain();
    drain.plan = plan;
    drain.retry = true;
    let job = Job::new(JobSpec::Drain(drain), user, Some(&n.name));
    take_and_launch(
        c,
        &n.name,
        NodeStatus::Maintenance,
        NodeStatus::Maintenance,
        job,
    )
    .await
}

/// `job abort ID`: a drain, stop-all, enable or move stops starting new
/// work and cancels its migrations in flight; a rolling maintenance stops
/// at its next step and stops its current drains.
async fn abort_job(c: &Arc<Coordinator>, user: &str, r: &pb::AbortJob) -> Result<Reply> {
    let job = c
        .stop_job(&r.job_id, &format!("aborted by {user}"))
        .await
        .map_err(|e| {
            let code = if e.starts_with("unknown job") {
                Code::NotFound
            } else {
                Code::WrongState
            };
            Refusal(code, e)
        })?;
    Ok(Reply::Accepted(pb::Accepted {
        op_id: job.id.clone(),
        events_from_seq: 0,
        message: format!(
            "abort of {} {} requested: nothing new starts, migrations in flight are cancelled",
            job.kind(),
            job.id
        ),
    }))
}

async fn enable_node(c: &Arc<Coordinator>, user: &str, r: &pb::EnableNode) -> Result<Reply> {
    let n = free_in_maintenance(c, &r.node, "not in maintenance; nothing to enable")?;
    if !n.stopped_by.is_empty() {
        require_reachable(&n)?;
    }
    let restart: Vec<String> = n.stopped_by.keys().cloned().collect();
    let spec = JobSpec::Enable(jobs::Enable {
        restart,
        parent: None,
    });
    let job = Job::new(spec, user, Some(&n.name));
    take_and_launch(
        c,
        &n.name,
        NodeStatus::Maintenance,
        NodeStatus::Enabled,
        job,
    )
    .await
}

async fn start_stopped(c: &Arc<Coordinator>, user: &str, r: &pb::StartStopped) -> Result<Reply> {
    let n = node(c, &r.node)?;
    let names = crate::driver::executor::shut_off(&n);
    if r.dry_run {
        return json(&serde_json::json!({ "node": n.name, "would_start": names }));
    }
    if n.status == NodeStatus::Maintenance {
        return refuse(
            Code::WrongState,
            format!("node {} is in maintenance; enable it first", n.name),
        );
    }
    if let Some(j) = &n.current_job {
        return refuse(
            Code::Conflict,
            format!("node {} is held by job {j}", n.name),
        );
    }
    require_reachable(&n)?;
    if names.is_empty() {
        return refuse(
            Code::WrongState,
            format!("node {} has no shut-off VM", n.name),
        );
    }
    let spec = JobSpec::StartStopped(jobs::StartStopped { start: names });
    let job = Job::new(spec, user, Some(&n.name));
    take_and_launch(c, &n.name, NodeStatus::Enabled, NodeStatus::Enabled, job).await
}

async fn create_vm(c: &Arc<Coordinator>, user: &str, r: &pb::CreateVm) -> Result<Reply> {
    nodemaint_proto::subjects::validate_token(&r.name)
        .map_err(|e| Refusal(Code::InvalidArgument, format!("VM name: {e}")))?;
    if r.memory_mib == 0 || r.vcpus == 0 {
        return refuse(
            Code::InvalidArgument,
            "give --memory MiB and --vcpus, both above 0",
        );
    }
    if r.vfw && r.cloudspace.is_empty() {
        return refuse(
            Code::InvalidArgument,
            "a VFW belongs to a cloudspace: give --cloudspace",
        );
    }
    if !c.registry.find_vm(&r.name).is_empty() {
        return refuse(
            Code::Conflict,
            format!("a VM named {:?} already exists", r.name),
        );
    }
    let f = fleet(c);
    if r.vfw
        && f.vms.iter().any(|v| {
            v.kind == planner::VmKind::Vfw && v.cloudspace.as_deref() == Some(&r.cloudspace)
        })
    {
        return refuse(
            Code::Conflict,
            format!("cloudspace {} already has a VFW", r.cloudspace),
        );
    }
    let mut vm = planner::Vm::new(r.name.clone(), String::new(), r.memory_mib, r.vcpus);
    vm.kind = if r.vfw {
        planner::VmKind::Vfw
    } else {
        planner::VmKind::User
    };
    vm.cloudspace = (!r.cloudspace.is_empty()).then(|| r.cloudspace.clone());
    // The scheduler: never a node in maintenance (the planner only places on ENABLED, reachable nodes).
    let dest = planner::place_new(&f, &vm).map_err(plan_error)?;
    let spec = JobSpec::Create(jobs::CreateVm {
        vm: r.name.clone(),
        memory_mib: r.memory_mib,
        vcpus: r.vcpus,
        cloudspace: r.cloudspace.clone(),
        vfw: r.vfw,
        to: dest.clone(),
    });
    launch(c, Job::new(spec, user, Some(&dest))).await
}

async fn check_node(c: &Arc<Coordinator>, user: &str, r: &pb::CheckNode) -> Result<Reply> {
    let n = node(c, &r.node)?;
    require_reachable(&n)?;
    let spec = JobSpec::Check(jobs::Check {
        start_failed: r.start_failed,
    });
    launch(c, Job::new(spec, user, Some(&n.name))).await
}

async fn start_rolling(c: &Arc<Coordinator>, user: &str, r: &pb::StartRolling) -> Result<Reply> {
    // Exactly one of the two.
    if r.reboot_command.is_empty() != r.wait_for_continue {
        return refuse(
            Code::InvalidArgument,
            "give either --reboot-command CMD (run by each node's agent, {node} is replaced) or --wait-for-continue",
        );
    }
    let f = fleet(c);
    let nodes: Vec<String> = if r.nodes.is_empty() {
        f.nodes.iter().map(|n| n.name.clone()).collect()
    } else {
        for n in &r.nodes {
            node(c, n)?;
        }
        r.nodes.clone()
    };
    if let Ok(jobs) = c.list_jobs().await {
        if let Some(j) = jobs
            .iter()
            .find(|j| matches!(j.spec, JobSpec::Rolling(_)) && !j.state.is_terminal())
        {
            return refuse(
                Code::Conflict,
                format!("rolling maintenance {} is already in progress", j.id),
            );
        }
    }
    let k = r.max_unavailable.max(1) as usize;
    let plan = planner::plan_rolling(&f, &nodes, k).map_err(plan_error)?;
    if !plan.undrainable.is_empty() {
        let why: Vec<String> = plan
            .undrainable
            .iter()
            .map(|u| format!("{}: {}", u.node, u.reason))
            .collect();
        return refuse(
            Code::NoCapacity,
            format!(
                "these nodes cannot be drained, leave them out or make room: {}",
                why.join("; ")
            ),
        );
    }
    let spec = JobSpec::Rolling(jobs::Rolling {
        nodes,
        groups: plan.groups,
        max_unavailable: k as u32,
        reboot_command: r.reboot_command.clone(),
        wait_for_continue: r.wait_for_continue,
        checks_must_pass: r.checks_must_pass,
        reboot_timeout_s: if r.reboot_timeout_s > 0 {
            r.reboot_timeout_s
        } else {
            900
        },
        deadline_s: r.deadline_s,
    });
    launch(c, Job::new(spec, user, None)).await
}

async fn control_rolling(
    c: &Arc<Coordinator>,
    user: &str,
    r: &pb::ControlRolling,
) -> Result<Reply> {
    use crate::jobs::JobState;
    use pb::control_rolling::Action;
    let action = Action::try_from(r.action).unwrap_or(Action::Unspecified);
    let id = r.job_id.clone();
    let node_name = r.node.clone();
    let res = nodemaint_proto::bus::cas_update::<Job, Refusal>(&c.jobs, &id, |j| {
        let mut j = j.ok_or_else(|| Refusal(Code::NotFound, format!("unknown job {id:?}")))?;
        let JobSpec::Rolling(spec) = &j.spec else {
            return Err(Refusal(Code::InvalidArgument, format!("job {id} is a {}, not a rolling maintenance", j.kind())));
        };
        let wait_for_continue = spec.wait_for_continue;
        let state = j.state;
        let wrong = |what: &str| Refusal(Code::WrongState, format!("cannot {what} rolling maintenance {id}: it is {state:?}"));
        match action {
            Action::Pause if state == JobState::Running => j.state = JobState::Paused,
            Action::Pause => return Err(wrong("pause")),
            Action::Resume if state == JobState::Paused => j.state = JobState::Running,
            Action::Resume => return Err(wrong("resume")),
            Action::Abort if !state.is_terminal() => {
                j.state = JobState::Aborted;
                j.stop_reason = Some(format!("aborted by {user}"));
            }
            Action::Abort => return Err(wrong("abort")),
            Action::Continue => {
                let rolling = j.rolling.get_or_insert_with(Default::default);
                if rolling.phase(&node_name) != jobs::Phase::Rebooting || !wait_for_continue {
                    return Err(Refusal(
                        Code::WrongState,
                        format!("node {node_name:?} is not waiting for a continue in rolling maintenance {id}"),
                    ));
                }
                rolling.continued.insert(node_name.clone());
            }
            Action::Unspecified => return Err(Refusal(Code::InvalidArgument, "give an action: pause, resume, abort or continue".into())),
        }
        j.updated_ms = now();
        Ok(j)
    })
    .await;
    let job = match res {
        Ok(u) => u.value,
        Err(nodemaint_proto::bus::CasError::Rejected(r)) => return Err(r),
        Err(e) => return Err(internal(e)),
    };
    if action == Action::Abort {
        // Its drains in flight stop too (nothing new, migrations cancelled).
        let reason = format!("aborted by {user}");
        c.stops.request(&job.id, &reason);
        for child in job
            .rolling
            .iter()
            .flat_map(|r| r.children.values())
            .filter_map(|c| c.drain.as_deref())
        {
            let _ = c.stop_job(child, &reason).await;
        }
    }
    let word = format!("{action:?}").to_lowercase();
    c.job_step(&job.id, None, None, format!("{word} requested"))
        .await;
    Ok(Reply::Accepted(pb::Accepted {
        op_id: job.id.clone(),
        events_from_seq: 0,
        message: format!("rolling maintenance {}: {word} ({:?})", job.id, job.state),
    }))
}
