//! Job executors: the I/O side of maintenance (move all, stop all), enable,
//! single moves and starts. Decisions come from the planner; executors send
//! agent commands, journal each before sending it, and end every job with a
//! report of what was done and what was not.
//!
//! Executors are written to be re-run: after a coordinator restart a job is
//! resumed by re-sending its unfinished commands (same ids, so agents never
//! execute one twice) and then re-deriving the remaining work from the
//! registry (a drain moves whatever is still on the node).

use crate::jobs::{hex, unhex, CommandRecord, Job, JobState, Report, ReportLine};
use crate::server::Coordinator;
use futures::StreamExt;
use nodemaint_planner as planner;
use nodemaint_proto::model::{NodeRecord, VmKind, VmState};
use nodemaint_proto::pb::{self, agent_command::Kind, error::Code, event::Body};
use nodemaint_proto::Message as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Outbound and inbound migration slots of one node.
type NodeSlots = (Arc<Semaphore>, Arc<Semaphore>);

/// Migration concurrency shared by every job: a fleet-wide limit and
/// per-node outbound and inbound limits.
pub struct MigrationSlots {
    global: Arc<Semaphore>,
    per_node: Mutex<HashMap<String, NodeSlots>>,
    limits: crate::config::Limits,
}

pub struct SlotGuard(#[allow(dead_code)] Vec<OwnedSemaphorePermit>);

impl MigrationSlots {
    pub fn new(limits: crate::config::Limits) -> Self {
        MigrationSlots {
            global: Arc::new(Semaphore::new(limits.global.max(1))),
            per_node: Default::default(),
            limits,
        }
    }

    fn node(&self, node: &str) -> NodeSlots {
        let mut m = self.per_node.lock().unwrap();
        m.entry(node.to_string())
            .or_insert_with(|| {
                (
                    Arc::new(Semaphore::new(self.limits.per_source.max(1))),
                    Arc::new(Semaphore::new(self.limits.per_destination.max(1))),
                )
            })
            .clone()
    }

    /// Waits for a fleet slot, an outbound slot on `from` and an inbound
    /// slot on `to`, always in that order (no lock-order deadlock).
    pub async fn acquire(&self, from: &str, to: &str) -> SlotGuard {
        let g = self
            .global
            .clone()
            .acquire_owned()
            .await
            .expect("open semaphore");
        let out = self
            .node(from)
            .0
            .acquire_owned()
            .await
            .expect("open semaphore");
        let inb = self
            .node(to)
            .1
            .acquire_owned()
            .await
            .expect("open semaphore");
        SlotGuard(vec![g, out, inb])
    }
}

fn failed(code: Code, message: String) -> pb::CommandResult {
    pb::CommandResult {
        ok: false,
        error: Some(pb::Error::new(code, message.clone())),
        message,
        ..Default::default()
    }
}

fn describe(r: &pb::CommandResult) -> String {
    if r.ok {
        r.message.clone()
    } else {
        r.error
            .as_ref()
            .map(|e| e.to_string())
            .unwrap_or_else(|| r.message.clone())
    }
}

impl Coordinator {
    /// How long to wait for an agent's answer to a command.
    fn command_wait(&self, kind: &Kind) -> Duration {
        match kind {
            Kind::Migrate(m) => Duration::from_secs(u64::from(m.timeout_s.max(1)) + 60),
            Kind::Stop(s) => Duration::from_secs(u64::from(s.graceful_timeout_s) + 60),
            Kind::RunHook(h) => Duration::from_secs(u64::from(h.timeout_s.max(600)) + 60),
            // Checks with start commands can take several check timeouts.
            Kind::RunChecks(_) => Duration::from_secs(600),
            _ => Duration::from_secs(120),
        }
    }

    /// Journals, sends and awaits one agent command. Always returns a
    /// result; transport problems become failed results that say so.
    pub async fn run_command(
        &self,
        job: &Job,
        node: &str,
        vm: &str,
        to: Option<&str>,
        kind: Kind,
    ) -> pb::CommandResult {
        let action = match &kind {
            Kind::Migrate(_) => "migrate",
            Kind::Stop(_) => "stop",
            Kind::Start(_) => "start",
            Kind::Define(_) => "define",
            Kind::RunHook(_) => "hook",
            Kind::RunChecks(_) => "checks",
            Kind::RefreshInventory(_) => "refresh",
        };
        let wait = self.command_wait(&kind);
        let destination = match &kind {
            Kind::Migrate(m) => Some(m.dest_node.clone()),
            _ => None,
        };
        let cmd = pb::AgentCommand {
            id: uuid::Uuid::new_v4().to_string(),
            op_id: job.id.clone(),
            requested_by: job.user.clone(),
            kind: Some(kind),
        };
        let rec = CommandRecord {
            id: cmd.id.clone(),
            node: node.to_string(),
            vm: vm.to_string(),
            action: action.to_string(),
            to: to.map(str::to_string),
            payload: hex(&cmd.encode_to_vec()),
            ok: None,
            message: None,
        };
        self.update_job(&job.id, |j| j.commands.push(rec.clone()))
            .await;
        let r = self.send_and_await(&job.id, node, &cmd, wait).await;
        if let (true, Some(dest)) = (r.ok, destination) {
            self.refresh_inventory(&dest).await;
        }
        r
    }

    /// Asks a node's agent to publish its inventory now (after a migration
    /// landed there), instead of waiting for its next poll.
    pub async fn refresh_inventory(&self, node: &str) {
        let cmd = pb::AgentCommand {
            id: uuid::Uuid::new_v4().to_string(),
            op_id: String::new(),
            requested_by: "coordinator".into(),
            kind: Some(Kind::RefreshInventory(pb::RefreshInventory {})),
        };
        if let Err(e) = self.send_command(node, &cmd).await {
            tracing::warn!(node, error = %e, "cannot ask for an inventory refresh");
        }
    }

    async fn send_and_await(
        &self,
        job_id: &str,
        node: &str,
        cmd: &pb::AgentCommand,
        wait: Duration,
    ) -> pb::CommandResult {
        let result = match self.send_command(node, cmd).await {
            Err(e) => failed(Code::Unavailable, format!("{e:#}")),
            Ok(mut rx) => {
                let deadline = tokio::time::Instant::now() + wait;
                loop {
                    // Every 2 s without an event, the agent's results bucket is
                    // asked too: a result event published while this coordinator
                    // was reconnecting to NATS is lost, the recorded result is not.
                    let tick = (tokio::time::Instant::now() + Duration::from_secs(2)).min(deadline);
                    match tokio::time::timeout_at(tick, rx.recv()).await {
                        Ok(Some(pb::Event { body: Some(Body::Result(r)), .. })) => break r,
                        Ok(Some(_)) => continue, // progress: the CLI follows it from the stream
                        Ok(None) => break failed(Code::Internal, "result channel closed".into()),
                        Err(_) if tokio::time::Instant::now() < deadline => {
                            if let Ok(Some(r)) = self.recorded_result(node, &cmd.id).await {
                                break r;
                            }
                        }
                        Err(_) => {
                            break failed(
                                Code::Timeout,
                                format!("no result from node {node} within {} s; the command may still complete", wait.as_secs()),
                            )
                        }
                    }
                }
            }
        };
        let (id, ok, msg) = (cmd.id.clone(), result.ok, describe(&result));
        self.update_job(job_id, |j| {
            if let Some(r) = j.commands.iter_mut().find(|r| r.id == id) {
                r.ok = Some(ok);
                r.message = Some(msg.clone());
            }
        })
        .await;
        result
    }

    /// After a restart: settles the job's unfinished commands. The agent's
    /// results bucket says what happened: a recorded result is taken as is,
    /// a command still executing is waited for, and a command the agent never
    /// claimed is re-sent with its original id (under a new message id, as
    /// JetStream would drop a same-id resend inside its duplicate window).
    pub async fn finish_unfinished_commands(
        &self,
        job: &Job,
    ) -> Vec<(CommandRecord, pb::CommandResult)> {
        let mut out = Vec::new();
        for rec in job.commands.iter().filter(|r| r.ok.is_none()) {
            let Some(cmd) =
                unhex(&rec.payload).and_then(|b| pb::AgentCommand::decode(b.as_slice()).ok())
            else {
                continue;
            };
            let wait =
                self.command_wait(cmd.kind.as_ref().expect("journaled commands have a kind"));
            let r = self.settle(&rec.node, &cmd, wait).await;
            let (id, ok, msg) = (cmd.id.clone(), r.ok, describe(&r));
            tracing::info!(job = %job.id, cmd = %cmd.id, vm = %rec.vm, ok, "settled a command left unfinished by the restart");
            self.update_job(&job.id, |j| {
                if let Some(c) = j.commands.iter_mut().find(|c| c.id == id) {
                    c.ok = Some(ok);
                    c.message = Some(msg.clone());
                }
            })
            .await;
            out.push((rec.clone(), r));
        }
        out
    }

    async fn settle(
        &self,
        node: &str,
        cmd: &pb::AgentCommand,
        wait: Duration,
    ) -> pb::CommandResult {
        let key = format!("{node}.{}", cmd.id);
        let deadline = tokio::time::Instant::now() + wait;
        let mut resent = false;
        loop {
            match self.recorded_result(node, &cmd.id).await {
                Ok(Some(r)) => return r,
                Err(e) => return failed(Code::Internal, e.to_string()),
                Ok(None) if !resent => {
                    // Not recorded: claimed (executing) or never claimed.
                    if let Ok(None) = self.agent_results.get(&key).await {
                        resent = self
                            .publish_command(
                                node,
                                cmd,
                                &format!("{}.resend", cmd.id),
                                Duration::from_secs(30),
                            )
                            .await
                            .is_ok();
                    }
                }
                Ok(None) => {}
            }
            if tokio::time::Instant::now() > deadline {
                return failed(
                    Code::Timeout,
                    format!(
                        "no result from node {node} within {} s after the restart",
                        wait.as_secs()
                    ),
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until `node` heartbeats after `since_ms`, so its inventory is
    /// current (up to 15 s).
    pub async fn wait_fresh(&self, node: &str, since_ms: i64) {
        for _ in 0..150 {
            if let Some(n) = self.registry.get(node) {
                let interval = i64::from(n.heartbeat_interval_ms.max(100));
                if n.last_seen_ms > since_ms + interval {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (up to 10 s) until the registry shows each VM settled on its
    /// node: the agents' inventories caught up with what their commands did.
    pub async fn wait_placed(&self, placements: &[(String, String)]) {
        for _ in 0..100 {
            let settled = placements.iter().all(|(vm, node)| {
                let hits = self.registry.find_vm(vm);
                hits.len() == 1
                    && hits[0].0.name == *node
                    && hits[0].1.state != nodemaint_proto::model::VmState::Migrating
            });
            if settled {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::warn!(
            ?placements,
            "inventories did not show the new placements within 10 s"
        );
    }

    /// Releases the node from the job (status is left as the job made it).
    pub async fn release_node(&self, node: &str, job_id: &str) {
        let _ = self
            .registry
            .update::<String>(node, |r| {
                let mut r = r.ok_or_else(|| "node vanished".to_string())?;
                if r.current_job.as_deref() == Some(job_id) {
                    r.current_job = None;
                }
                Ok(r)
            })
            .await;
    }

    fn migrate_kind(&self, vm: &str, dest: &NodeRecord, timeout_s: u32) -> Result<Kind, String> {
        if dest.libvirt_uri.is_empty() || dest.address.is_empty() {
            return Err(format!("node {} has no migration address", dest.name));
        }
        Ok(Kind::Migrate(pb::MigrateVm {
            vm: vm.to_string(),
            dest_node: dest.name.clone(),
            dest_libvirt_uri: dest.libvirt_uri.clone(),
            dest_migrate_uri: format!("tcp://{}", dest.address),
            timeout_s: if timeout_s > 0 {
                timeout_s
            } else {
                self.cfg.migration_timeout_s
            },
            max_speed_mibs: 0,
        }))
    }

    /// Migrates one VM within the shared migration limits.
    pub async fn migrate_one(
        &self,
        job: &Job,
        vm: &str,
        from: &str,
        to: &str,
        timeout_s: u32,
    ) -> pb::CommandResult {
        let Some(dest) = self.registry.get(to) else {
            return failed(Code::NotFound, format!("unknown node {to}"));
        };
        let kind = match self.migrate_kind(vm, &dest, timeout_s) {
            Ok(k) => k,
            Err(e) => return failed(Code::Unavailable, e),
        };
        let _slots = self.slots.acquire(from, to).await;
        self.job_step(
            &job.id,
            Some(vm),
            None,
            format!("moving {vm} from {from} to {to}"),
        )
        .await;
        self.run_command(job, from, vm, Some(to), kind).await
    }
}

/// Runs a job to its end in the background; resumption uses the same path.
pub fn spawn(c: Arc<Coordinator>, job: Job, resumed: bool) {
    tokio::spawn(async move {
        let kind = job.kind.clone();
        match kind.as_str() {
            "maintenance.start" => match job.params["mode"].as_str() {
                Some("stop") => stop_all(c, job, resumed).await,
                _ => drain(c, job, resumed).await,
            },
            "node.enable" => enable(c, job, resumed).await,
            "node.start-stopped" => start_stopped(c, job, resumed).await,
            "rolling" => crate::rolling::run(c, job, resumed).await,
            _ => single(c, job, resumed).await,
        }
    });
}

/// Jobs of one command (vm start/stop/move/create, vfw move): the command
/// was prepared by the API handler and is in `params.command` (hex).
async fn single(c: Arc<Coordinator>, job: Job, resumed: bool) {
    let result = if resumed {
        c.finish_unfinished_commands(&job)
            .await
            .pop()
            .map(|(_, r)| r)
    } else {
        let node = job.params["command_node"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let vm = job.params["vm"].as_str().unwrap_or_default().to_string();
        let to = job.params["to"].as_str().map(str::to_string);
        let kind = job.params["command"]
            .as_str()
            .and_then(unhex)
            .and_then(|b| pb::AgentCommand::decode(b.as_slice()).ok())
            .and_then(|c| c.kind);
        match kind {
            Some(Kind::Migrate(m)) => {
                let from = node.clone();
                let to = m.dest_node.clone();
                let _slots = c.slots.acquire(&from, &to).await;
                Some(
                    c.run_command(&job, &node, &vm, Some(&to), Kind::Migrate(m))
                        .await,
                )
            }
            Some(kind) => Some(c.run_command(&job, &node, &vm, to.as_deref(), kind).await),
            None => Some(failed(Code::Internal, "job without a command".into())),
        }
    };
    let Some(r) = result else {
        // Resumed with nothing unfinished: the outcome was journaled.
        let ok = job.commands.iter().all(|r| r.ok == Some(true));
        let msg = job
            .commands
            .last()
            .and_then(|r| r.message.clone())
            .unwrap_or_default();
        let state = if ok {
            JobState::Succeeded
        } else {
            JobState::Failed
        };
        return c.finish_job(&job.id, state, msg).await;
    };
    // Read-your-writes for the operator: the job ends once the registry
    // shows the VM where the agent says it is (a `vm list` or a next move
    // right after the command sees the new placement).
    if r.ok && !r.vm.is_empty() && !r.vm_node.is_empty() {
        c.wait_placed(&[(r.vm.clone(), r.vm_node.clone())]).await;
    }
    let outcome = describe(&r);
    c.job_step(&job.id, Some(&r.vm), Some(r.ok), outcome.clone())
        .await;
    let state = if r.ok {
        JobState::Succeeded
    } else {
        JobState::Failed
    };
    c.finish_job(&job.id, state, outcome).await;
}

/// Move all: live-migrate every VM of the node (VFWs first) to planner
/// destinations, wave by wave; a failed move is retried once elsewhere.
async fn drain(c: Arc<Coordinator>, job: Job, resumed: bool) {
    let node = job.node.clone().unwrap_or_default();
    let mut report = resume(&c, &job, &node, resumed, Some("migrate")).await;
    let max_parallel = job.params["max_parallel"].as_u64().unwrap_or(0) as u32;
    let limits = crate::fleet::limits(&c.cfg.limits, max_parallel);
    let fleet = crate::fleet::snapshot(&c.registry.all(), nodemaint_proto::now_ms());
    // The plan made when the job was accepted (rolling plans a group's drains
    // jointly); after a restart, re-plan whatever is still on the node.
    let accepted: Option<planner::DrainPlan> = if resumed {
        None
    } else {
        serde_json::from_value(job.params["plan"].clone()).ok()
    };
    let plan = match accepted
        .map(Ok)
        .unwrap_or_else(|| planner::plan_drain(&fleet, &node, &limits))
    {
        Ok(p) => p,
        Err(e) => {
            c.release_node(&node, &job.id).await;
            let msg = format!(
                "cannot drain {node}: {e}; nothing was moved, the node stays in maintenance"
            );
            return c
                .finish_job_with(&job.id, JobState::Failed, msg, Some(report))
                .await;
        }
    };
    c.job_step(
        &job.id,
        None,
        None,
        format!(
            "plan: {} VMs to move in {} waves (VFWs first)",
            plan.moves.len(),
            plan.waves()
        ),
    )
    .await;
    for wave in 0..plan.waves() {
        let moves: Vec<_> = plan
            .moves
            .iter()
            .filter(|m| m.wave == wave)
            .cloned()
            .collect();
        let results: Vec<(planner::Move, Result<String, String>)> = futures::stream::iter(moves)
            .map(|m| {
                let c = c.clone();
                let job = job.clone();
                async move {
                    let r = c.migrate_one(&job, &m.vm, &m.from, &m.to, 0).await;
                    if r.ok {
                        c.job_step(
                            &job.id,
                            Some(&m.vm),
                            Some(true),
                            format!("moved {} to {}", m.vm, m.to),
                        )
                        .await;
                        return (m.clone(), Ok(m.to.clone()));
                    }
                    let first = describe(&r);
                    // Retry once on another feasible node.
                    let fleet =
                        crate::fleet::snapshot(&c.registry.all(), nodemaint_proto::now_ms());
                    let alt = planner::feasible_destinations(
                        &fleet,
                        &m.vm,
                        &[m.from.as_str(), m.to.as_str()],
                    );
                    let Some(alt) = alt.first().cloned() else {
                        let msg = format!(
                            "{} failed to move to {}: {first}; no other node can take it",
                            m.vm, m.to
                        );
                        c.job_step(&job.id, Some(&m.vm), Some(false), msg.clone())
                            .await;
                        return (m.clone(), Err(msg));
                    };
                    c.job_step(
                        &job.id,
                        Some(&m.vm),
                        Some(false),
                        format!(
                            "{} failed to move to {}: {first}; retrying on {alt}",
                            m.vm, m.to
                        ),
                    )
                    .await;
                    let r2 = c.migrate_one(&job, &m.vm, &m.from, &alt, 0).await;
                    if r2.ok {
                        c.job_step(
                            &job.id,
                            Some(&m.vm),
                            Some(true),
                            format!("moved {} to {alt} (retry)", m.vm),
                        )
                        .await;
                        (m.clone(), Ok(alt))
                    } else {
                        let msg = format!(
                            "{} failed to move to {} ({first}) and to {alt} ({})",
                            m.vm,
                            m.to,
                            describe(&r2)
                        );
                        c.job_step(&job.id, Some(&m.vm), Some(false), msg.clone())
                            .await;
                        (m.clone(), Err(msg))
                    }
                }
            })
            .buffer_unordered(plan.moves.len().max(1))
            .collect()
            .await;
        for (m, r) in results {
            match r {
                Ok(to) => report.done.push(ReportLine {
                    vm: m.vm.clone(),
                    detail: format!("moved to {to}"),
                }),
                Err(e) => report.not_done.push(ReportLine {
                    vm: m.vm.clone(),
                    detail: e,
                }),
            }
        }
    }
    // Before the job ends (and a rolling plans its next group), the
    // registry must show the moved VMs on their destinations.
    let moved: Vec<(String, String)> = report
        .done
        .iter()
        .filter_map(|l| {
            l.detail
                .strip_prefix("moved to ")
                .map(|to| (l.vm.clone(), to.to_string()))
        })
        .collect();
    c.wait_placed(&moved).await;
    let done = format!(
        "{node} drained: {} VMs moved; the node is in maintenance",
        report.done.len()
    );
    let partial = format!(
        "{node} partly drained: {} moved, {} not moved ({}); the node stays in maintenance",
        report.done.len(),
        report.not_done.len(),
        report.not_done_names()
    );
    finish_node_job(&c, &job, &node, report, done, partial).await;
}

/// Stop all: stops every running VM of the node (user VMs first, then the
/// VFWs the operator acknowledged), recording each in the node's
/// `stopped_by` before stopping it, so `enable` restarts exactly these.
async fn stop_all(c: Arc<Coordinator>, job: Job, resumed: bool) {
    let node = job.node.clone().unwrap_or_default();
    let mut report = resume(&c, &job, &node, resumed, Some("stop")).await;
    let rec = c.registry.get(&node).unwrap_or_default();
    let mut vms: Vec<_> = rec
        .domains
        .iter()
        .filter(|d| matches!(d.state, VmState::Running | VmState::Paused))
        .cloned()
        .collect();
    vms.sort_by_key(|d| (d.kind == VmKind::Vfw, d.name.clone()));
    let graceful = c.cfg.stop_graceful_timeout_s;
    let results: Vec<(String, pb::CommandResult)> = futures::stream::iter(vms)
        .map(|vm| {
            let c = c.clone();
            let job = job.clone();
            let node = node.clone();
            async move {
                let name = vm.name.clone();
                let _ = c
                    .registry
                    .update::<String>(&node, |r| {
                        let mut r = r.ok_or_else(|| "node vanished".to_string())?;
                        r.stopped_by.insert(name.clone(), job.id.clone());
                        Ok(r)
                    })
                    .await;
                c.job_step(&job.id, Some(&name), None, format!("stopping {name}"))
                    .await;
                let r = c
                    .run_command(
                        &job,
                        &node,
                        &name,
                        None,
                        Kind::Stop(pb::StopVm {
                            vm: name.clone(),
                            graceful_timeout_s: graceful,
                        }),
                    )
                    .await;
                if !r.ok {
                    // Not stopped: not ours to restart later.
                    let _ = c
                        .registry
                        .update::<String>(&node, |r| {
                            let mut r = r.ok_or_else(|| "node vanished".to_string())?;
                            r.stopped_by.remove(&name);
                            Ok(r)
                        })
                        .await;
                }
                c.job_step(&job.id, Some(&name), Some(r.ok), describe(&r))
                    .await;
                (name, r)
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    for (vm, r) in results {
        let line = ReportLine {
            vm,
            detail: describe(&r),
        };
        if r.ok {
            report.done.push(line)
        } else {
            report.not_done.push(line)
        }
    }
    let done = format!(
        "{node}: {} VMs stopped and recorded; `node enable {node}` restarts them",
        report.done.len()
    );
    let partial = format!(
        "{node}: {} stopped, {} still running ({}); the node stays in maintenance",
        report.done.len(),
        report.not_done.len(),
        report.not_done_names()
    );
    finish_node_job(&c, &job, &node, report, done, partial).await;
}

/// Starts VMs one after another in the given order, VFWs first; used by
/// enable (the recorded set) and start-stopped (every shut-off VM).
async fn start_vms(
    c: &Arc<Coordinator>,
    job: &Job,
    node: &str,
    names: Vec<String>,
    report: &mut Report,
) {
    let rec = c.registry.get(node).unwrap_or_default();
    let mut vms: Vec<(bool, String)> = names
        .into_iter()
        .map(|n| {
            let vfw = rec
                .domains
                .iter()
                .any(|d| d.name == n && d.kind == VmKind::Vfw);
            (!vfw, n)
        })
        .collect();
    vms.sort();
    for (_, name) in vms {
        let current = rec.domains.iter().find(|d| d.name == name);
        let outcome = match current.map(|d| d.state) {
            None => Err(format!("{name} is no longer defined on {node}")),
            Some(VmState::Running) => Ok(format!("{name} already running")),
            Some(_) => {
                let r = c
                    .run_command(
                        job,
                        node,
                        &name,
                        None,
                        Kind::Start(pb::StartVm { vm: name.clone() }),
                    )
                    .await;
                if r.ok {
                    Ok(describe(&r))
                } else {
                    Err(describe(&r))
                }
            }
        };
        let ok = outcome.is_ok();
        let detail = outcome.unwrap_or_else(|e| e);
        c.job_step(&job.id, Some(&name), Some(ok), detail.clone())
            .await;
        if ok {
            let _ = c
                .registry
                .update::<String>(node, |r| {
                    let mut r = r.ok_or_else(|| "node vanished".to_string())?;
                    r.stopped_by.remove(&name);
                    Ok(r)
                })
                .await;
        }
        let line = ReportLine { vm: name, detail };
        if ok {
            report.done.push(line)
        } else {
            report.not_done.push(line)
        }
    }
}

/// Enable: the node is ENABLED already (the API did it); restart exactly
/// the VMs maintenance stopped, VFWs first.
async fn enable(c: Arc<Coordinator>, job: Job, resumed: bool) {
    let node = job.node.clone().unwrap_or_default();
    let mut report = resume(&c, &job, &node, resumed, None).await;
    let recorded: Vec<String> = c
        .registry
        .get(&node)
        .map(|r| r.stopped_by.keys().cloned().collect())
        .unwrap_or_default();
    start_vms(&c, &job, &node, recorded, &mut report).await;
    let done = format!(
        "{node} enabled; {} VMs that maintenance stopped were started",
        report.done.len()
    );
    let partial = format!(
        "{node} enabled, but {} VMs did not start ({}); they stay recorded",
        report.not_done.len(),
        report.not_done_names()
    );
    finish_node_job(&c, &job, &node, report, done, partial).await;
}

/// The seed's `virsh start` loop: every shut-off VM of the node, VFWs first.
async fn start_stopped(c: Arc<Coordinator>, job: Job, resumed: bool) {
    let node = job.node.clone().unwrap_or_default();
    let mut report = resume(&c, &job, &node, resumed, None).await;
    let names = shut_off(&c.registry.get(&node).unwrap_or_default());
    start_vms(&c, &job, &node, names, &mut report).await;
    let outcome = format!(
        "{node}: {} started, {} failed",
        report.done.len(),
        report.not_done.len()
    );
    finish_node_job(&c, &job, &node, report, outcome.clone(), outcome).await;
}

/// What a job's journal says it did with `action` commands before a
/// restart: each VM's last such command decides (a retried move that
/// succeeded counts as done).
pub fn journal_report(job: &Job, action: &str) -> Report {
    let mut last: Vec<(String, bool, String)> = Vec::new();
    for c in job
        .commands
        .iter()
        .filter(|c| c.action == action && c.ok.is_some())
    {
        let detail = match (&c.to, c.ok) {
            (Some(to), Some(true)) => format!("moved to {to}"),
            _ => c.message.clone().unwrap_or_default(),
        };
        last.retain(|(vm, _, _)| vm != &c.vm);
        last.push((c.vm.clone(), c.ok == Some(true), detail));
    }
    let mut report = Report::default();
    for (vm, ok, detail) in last {
        let line = ReportLine { vm, detail };
        if ok {
            report.done.push(line)
        } else {
            report.not_done.push(line)
        }
    }
    report
}

/// The start of every node job: after a restart, settle the commands the
/// journal left unfinished, take over what the journal says was done with
/// `action` commands (if given), and wait for the node's fresh inventory.
async fn resume(
    c: &Coordinator,
    job: &Job,
    node: &str,
    resumed: bool,
    action: Option<&str>,
) -> Report {
    if !resumed {
        return Report::default();
    }
    c.finish_unfinished_commands(job).await;
    let mut report = Report::default();
    if let (Some(action), Some(j)) = (action, c.get_job(&job.id).await) {
        report = journal_report(&j, action);
    }
    c.wait_fresh(node, nodemaint_proto::now_ms()).await;
    report
}

/// The end of every node job: release the node and finish with the report
/// (`partial` describes what was not done).
async fn finish_node_job(
    c: &Coordinator,
    job: &Job,
    node: &str,
    report: Report,
    done: String,
    partial: String,
) {
    c.release_node(node, &job.id).await;
    let outcome = if report.not_done.is_empty() {
        done
    } else {
        partial
    };
    c.finish_job_with(&job.id, report.state(), outcome, Some(report))
        .await;
}

/// Names of the node's shut-off VMs, VFWs first.
pub fn shut_off(rec: &NodeRecord) -> Vec<String> {
    let mut v: Vec<_> = rec
        .domains
        .iter()
        .filter(|d| matches!(d.state, VmState::Shutoff | VmState::Crashed))
        .map(|d| (d.kind != VmKind::Vfw, d.name.clone()))
        .collect();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

/// Records a job and starts it; used for jobs that other jobs spawn.
pub async fn launch_child(c: &Arc<Coordinator>, job: Job) -> anyhow::Result<String> {
    c.create_job(&job).await?;
    let id = job.id.clone();
    spawn(c.clone(), job, false);
    Ok(id)
}

/// Waits until a job is terminal and returns it.
pub async fn await_job(c: &Coordinator, id: &str) -> Option<Job> {
    loop {
        match c.get_job(id).await {
            Some(j) if j.state.is_terminal() => return Some(j),
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            None => return None,
        }
    }
}

/// On start: resume every job the previous coordinator left running.
pub async fn resume_jobs(c: Arc<Coordinator>) {
    let jobs = match c.list_jobs().await {
        Ok(j) => j,
        Err(e) => return tracing::warn!(error = %e, "cannot list jobs to resume"),
    };
    // Paused jobs get their executor back too; it waits at its checkpoint.
    // `rolling.node` jobs belong to their rolling job, which settles them.
    for job in jobs.into_iter().filter(|j| {
        matches!(j.state, JobState::Running | JobState::Paused) && j.kind != "rolling.node"
    }) {
        tracing::info!(job = %job.id, kind = %job.kind, "resuming job after restart");
        c.job_step(
            &job.id,
            None,
            None,
            "coordinator restarted; resuming from the journal".into(),
        )
        .await;
        spawn(c.clone(), job, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(vm: &str, action: &str, to: Option<&str>, ok: Option<bool>) -> CommandRecord {
        CommandRecord {
            id: format!("{vm}-{to:?}"),
            node: "n1".into(),
            vm: vm.into(),
            action: action.into(),
            to: to.map(str::to_string),
            payload: String::new(),
            ok,
            message: Some("boom".into()),
        }
    }

    #[test]
    fn journal_report_takes_each_vms_last_outcome() {
        let mut job = Job::new("maintenance.start", "u", Some("n1"), serde_json::json!({}));
        job.commands = vec![
            cmd("a", "migrate", Some("n2"), Some(false)),
            cmd("a", "migrate", Some("n3"), Some(true)),
            cmd("b", "migrate", Some("n2"), Some(false)),
            cmd("c", "migrate", Some("n2"), None),
            cmd("d", "stop", None, Some(true)),
        ];
        let r = journal_report(&job, "migrate");
        assert_eq!(
            r.done,
            vec![ReportLine {
                vm: "a".into(),
                detail: "moved to n3".into()
            }]
        );
        assert_eq!(
            r.not_done,
            vec![ReportLine {
                vm: "b".into(),
                detail: "boom".into()
            }]
        );
    }

    #[test]
    fn shut_off_lists_vfws_first() {
        let vm = |name: &str, kind, state| nodemaint_proto::model::Vm {
            name: name.into(),
            kind,
            state,
            ..Default::default()
        };
        let rec = NodeRecord {
            domains: vec![
                vm("a", VmKind::User, VmState::Shutoff),
                vm("z-vfw", VmKind::Vfw, VmState::Shutoff),
                vm("b", VmKind::User, VmState::Running),
            ],
            ..Default::default()
        };
        assert_eq!(shut_off(&rec), ["z-vfw", "a"]);
    }
}
