//! Job executors: the I/O side of maintenance (move all, stop all), enable,
//! single moves and starts. Decisions come from the planner; executors send
//! agent commands, journal each before sending it, and end every job with a
//! report of what was done and what was not.
//!
//! Executors are written to be re-run: after a coordinator restart a job is
//! resumed by re-sending its unfinished commands (same ids, so agents never
//! execute one twice) and then re-deriving the remaining work from the
//! registry (a drain moves whatever is still on the node).

use crate::driver::slots::Priority;
use crate::engine::enable::Which;
use crate::jobs::{hex, CommandRecord, Job, JobSpec, JobState, Report};
use crate::server::Coordinator;
use nodemaint_planner as planner;
use nodemaint_proto::model::{NodeRecord, VmKind, VmState};
use nodemaint_proto::pb::{self, agent_command::Kind, error::Code, event::Body};
use nodemaint_proto::Message as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A request to an agent to publish its inventory now (the coordinator's
/// own, outside any job).
fn refresh_command() -> pb::AgentCommand {
    pb::AgentCommand {
        id: uuid::Uuid::new_v4().to_string(),
        op_id: String::new(),
        requested_by: "coordinator".into(),
        kind: Some(Kind::RefreshInventory(pb::RefreshInventory {})),
        ..Default::default()
    }
}

/// The agent command of job `job` with id `id`, and its journal entry.
pub fn command_record(
    id: &str,
    job: &Job,
    node: &str,
    vm: &str,
    to: Option<&str>,
    kind: Kind,
) -> (pb::AgentCommand, CommandRecord) {
    let action = kind.action();
    let cmd = pb::AgentCommand {
        id: id.to_string(),
        op_id: job.id.clone(),
        requested_by: job.user.clone(),
        kind: Some(kind),
        ..Default::default()
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
    (cmd, rec)
}

/// Stop requests of running jobs (an operator's abort, an expired
/// deadline). Executors watch their job's entry: nothing new starts once it
/// is set, and in-flight migrations are cancelled. The reason is also
/// journaled in the job (`Job::stop_reason`), so a resumed job honours it.
#[derive(Default)]
pub struct Stops(Mutex<HashMap<String, watch::Sender<Option<String>>>>);

impl Stops {
    pub fn watch(&self, job: &str) -> watch::Receiver<Option<String>> {
        let mut m = self.0.lock().unwrap();
        m.entry(job.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// Sets the reason (the first one wins).
    pub fn request(&self, job: &str, reason: &str) {
        let mut m = self.0.lock().unwrap();
        let tx = m
            .entry(job.to_string())
            .or_insert_with(|| watch::channel(None).0);
        tx.send_if_modified(|r| {
            if r.is_some() {
                return false;
            }
            *r = Some(reason.to_string());
            true
        });
    }

    pub fn reason(&self, job: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap()
            .get(job)
            .and_then(|tx| tx.borrow().clone())
    }

    fn forget(&self, job: &str) {
        self.0.lock().unwrap().remove(job);
    }
}

/// Resolves with the stop reason once one is set (never, otherwise).
pub async fn stopped(rx: &mut watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(r) = rx.borrow_and_update().clone() {
            return r;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
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

pub fn describe(r: &pb::CommandResult) -> String {
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
        let id = uuid::Uuid::new_v4().to_string();
        self.run_command_as(&id, job, node, vm, to, kind).await
    }

    /// [`Coordinator::run_command`] with the command id given (engine jobs
    /// derive ids from the job, so that a resent command is the same one).
    pub async fn run_command_as(
        &self,
        id: &str,
        job: &Job,
        node: &str,
        vm: &str,
        to: Option<&str>,
        kind: Kind,
    ) -> pb::CommandResult {
        let action = kind.action();
        let wait = self.command_wait(&kind);
        let destination = match &kind {
            Kind::Migrate(m) => Some(m.dest_node.clone()),
            _ => None,
        };
        // A VM about to land on a node claims it first, refused once the node
        // is in maintenance: a drain never gains a VM it did not plan for.
        let landing = match &kind {
            Kind::Define(_) => Some(node),
            _ => destination.as_deref(),
        };
        if let Some(dest) = landing {
            if let Err(why) = self.registry.claim_inbound(dest, vm, &job.id).await {
                return failed(
                    Code::WrongState,
                    format!("{action} of {vm} not sent: {why}"),
                );
            }
        }
        let (cmd, rec) = command_record(id, job, node, vm, to, kind);
        // Journal before act: a command whose journal entry was not written
        // is not sent (a resumed job could not know about it). One the job
        // was recorded with ([`crate::driver::single::prejournal`]) is.
        let journaled = job.commands.contains(&rec);
        if !journaled
            && self
                .jobs
                .update(&job.id, |j| j.commands.push(rec.clone()))
                .await
                .is_none()
        {
            return failed(
                Code::Internal,
                format!("{action} of {vm} not sent: its journal entry could not be written"),
            );
        }
        let timer = crate::metrics::CommandTimer::start(action, &cmd.id);
        let mut r = self.send_and_await(&job.id, node, &cmd, wait).await;
        // Agents execute an id once and answer repeats with its record: a
        // record about another VM answers another command that had this id,
        // and this one will never run. Said so, never taken as done.
        if r.ok && !r.vm.is_empty() && !vm.is_empty() && r.vm != vm {
            r = failed(
                Code::Internal,
                format!(
                    "{action} of {vm} not done: command id {} was already used for {} \
                     (its record answers for that VM)",
                    cmd.id, r.vm
                ),
            );
        }
        timer.finish(&r);
        // The destination's inventory changed either way: the VM arrived,
        // or the paused incoming copy of a failed migration went away.
        if let Some(dest) = destination {
            self.refresh_inventory(&dest).await;
        }
        r
    }

    /// Asks a node's agent to publish its inventory now (after a migration
    /// landed there), instead of waiting for its next poll.
    pub async fn refresh_inventory(&self, node: &str) {
        if let Err(e) = self.link.send_command(node, &refresh_command()).await {
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
        let result = self.send_and_wait(node, cmd, wait).await;
        let (id, ok, msg) = (cmd.id.clone(), result.ok, describe(&result));
        self.jobs
            .update(job_id, |j| {
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
            // A journal is external input (the jobs bucket): an unreadable
            // or kind-less command is skipped, never a panic.
            let Some((cmd, kind)) = crate::jobs::journaled_command(&rec.payload) else {
                tracing::warn!(job = %job.id, cmd = %rec.id, "unreadable journaled command skipped");
                continue;
            };
            let wait = self.command_wait(&kind);
            let r = self.settle(&rec.node, &cmd, wait).await;
            let (id, ok, msg) = (cmd.id.clone(), r.ok, describe(&r));
            tracing::info!(job = %job.id, cmd = %cmd.id, vm = %rec.vm, ok, "settled a command left unfinished by the restart");
            self.jobs
                .update(&job.id, |j| {
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

    /// Waits up to `wait` for the agent's recorded result of a command,
    /// re-sending it (same command id) when the agent never claimed it; an
    /// `OUTCOME_UNKNOWN` result when it is still not known.
    pub async fn settle(
        &self,
        node: &str,
        cmd: &pb::AgentCommand,
        wait: Duration,
    ) -> pb::CommandResult {
        let key = format!("{node}.{}", cmd.id);
        let deadline = tokio::time::Instant::now() + wait;
        let mut resent = false;
        loop {
            match self.link.recorded_result(node, &cmd.id).await {
                Ok(Some(r)) => return r,
                Err(e) => return failed(Code::Internal, e.to_string()),
                Ok(None) if !resent => {
                    // Not recorded: claimed (executing) or never claimed.
                    if let Ok(None) =
                        nodemaint_proto::bus::leader_value(&self.link.results, &key).await
                    {
                        resent = self
                            .link
                            .publish_command(
                                node,
                                cmd,
                                // A fresh message id: JetStream would drop a
                                // repeat inside its duplicate window.
                                &format!("{}.resend.{}", cmd.id, nodemaint_proto::now_ms()),
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
                    Code::OutcomeUnknown,
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
    /// The node's record once it holds an inventory taken now: the agent
    /// publishes one before it answers a refresh, and generations only
    /// grow, so a newer generation than before the ask is one taken after
    /// it. (Waiting for a heartbeat interval past the ask, as before, cost
    /// every drain a second or more at its end.) `None` when the agent does
    /// not answer within 15 s or its inventory does not land within 5 s.
    pub async fn fresh_inventory(&self, node: &str) -> Option<NodeRecord> {
        let before = self.registry.get(node)?.inventory_generation;
        let r = self
            .send_and_wait(node, &refresh_command(), Duration::from_secs(15))
            .await;
        if !r.ok {
            tracing::warn!(node, error = %describe(&r), "no inventory refresh");
            return None;
        }
        // The inventory event and the answer travel on different subjects:
        // the registry may apply the inventory a moment after the answer.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match self.registry.get(node) {
                Some(rec) if rec.inventory_generation > before => return Some(rec),
                _ if tokio::time::Instant::now() >= deadline => return None,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
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

    /// The migrate command for `vm` to `dest`: completion timeout scaled
    /// by the VM's memory unless `timeout_s` overrides it, and the
    /// configured progress timeout.
    pub fn migrate_kind(
        &self,
        vm: &str,
        dest: &NodeRecord,
        timeout_s: u32,
        max_speed_mibs: u64,
        converge: &nodemaint_proto::model::ConvergePolicy,
    ) -> Result<Kind, String> {
        let (dest_libvirt_uri, dest_migrate_uri) = self.destination(dest)?;
        let memory = self
            .registry
            .find_vm(vm)
            .first()
            .map(|(_, v)| v.memory_mib)
            .unwrap_or(0);
        let t = &self.cfg.migration;
        Ok(Kind::Migrate(pb::MigrateVm {
            vm: vm.to_string(),
            dest_node: dest.name.clone(),
            dest_libvirt_uri,
            dest_migrate_uri,
            timeout_s: if timeout_s > 0 {
                timeout_s
            } else {
                t.completion_s(memory)
            },
            max_speed_mibs,
            progress_timeout_s: t.progress_timeout_s,
            converge: Some(converge.to_pb()),
        }))
    }

    /// Migrates one VM within the fleet-wide slots, unless the job is
    /// stopped first (`Err` with the reason: not started). A stop while it
    /// runs cancels it on the source; the result then says whether it was
    /// cancelled (still on the source) or had passed the point of no return.
    pub async fn migrate_one(
        &self,
        job: &Job,
        from: &str,
        kind: Kind,
        priority: Priority,
    ) -> Result<pb::CommandResult, String> {
        let id = uuid::Uuid::new_v4().to_string();
        self.migrate_one_as(&id, job, from, kind, priority).await
    }

    /// [`Coordinator::migrate_one`] with the command id given (engine jobs
    /// derive ids from the job, so that a resent command is the same one).
    pub async fn migrate_one_as(
        &self,
        id: &str,
        job: &Job,
        from: &str,
        kind: Kind,
        priority: Priority,
    ) -> Result<pb::CommandResult, String> {
        let Kind::Migrate(m) = &kind else {
            return Ok(failed(Code::Internal, "not a migration".into()));
        };
        let (vm, to) = (m.vm.clone(), m.dest_node.clone());
        let mut stop = self.stops.watch(&job.id);
        let _slots = tokio::select! {
            biased;
            reason = stopped(&mut stop) => return Err(reason),
            g = self.slots.acquire(from, &to, priority) => g,
        };
        self.jobs
            .step(
                &job.id,
                Some(&vm),
                None,
                format!("moving {vm} from {from} to {to}"),
            )
            .await;
        let run = self.run_command_as(id, job, from, &vm, Some(&to), kind);
        tokio::pin!(run);
        let r = tokio::select! {
            r = &mut run => r,
            reason = stopped(&mut stop) => {
                self.cancel_migration(job, from, &vm, &reason).await;
                run.await
            }
        };
        // Logged before the slots are released: the journal's intervals
        // between "moving" and "ended" lie within the slot holding.
        self.jobs
            .step(
                &job.id,
                Some(&vm),
                Some(r.ok),
                format!(
                    "migration of {vm} from {from} to {to} ended: {}",
                    if r.ok { "ok" } else { "failed" }
                ),
            )
            .await;
        Ok(r)
    }

    /// Where `dest` is reached for migrations and probes: the configured
    /// templates over its pinned or reported address, checked (never a URI
    /// the node reports: another node's libvirt opens it).
    pub fn destination(&self, dest: &NodeRecord) -> Result<(String, String), String> {
        self.cfg
            .migration
            .destination(&dest.name, &dest.address, &dest.libvirt_uri)
    }

    /// Pre-flight: asks the source's agent whether its libvirt reaches each
    /// destination's (10 s at most); one entry per destination.
    pub async fn probe_destinations(
        &self,
        source: &str,
        plan: &planner::DrainPlan,
    ) -> Vec<(String, Result<(), String>)> {
        // (node, its libvirt URI or why it has none)
        let mut dests: Vec<(String, Result<String, String>)> = Vec::new();
        for m in &plan.moves {
            if dests.iter().all(|(d, _)| *d != m.to) {
                if let Some(d) = self.registry.get(&m.to) {
                    dests.push((d.name.clone(), self.destination(&d).map(|(uri, _)| uri)));
                }
            }
        }
        let uris: Vec<String> = dests
            .iter()
            .filter_map(|(_, u)| u.as_ref().ok().cloned())
            .collect();
        let r = if uris.is_empty() {
            pb::CommandResult::default()
        } else {
            let cmd = pb::AgentCommand {
                id: uuid::Uuid::new_v4().to_string(),
                op_id: String::new(),
                requested_by: "coordinator".into(),
                kind: Some(Kind::ProbeLibvirt(pb::ProbeLibvirt { uris })),
                ..Default::default()
            };
            self.send_and_wait(source, &cmd, Duration::from_secs(10))
                .await
        };
        dests
            .into_iter()
            .map(|(name, uri)| {
                let res = uri.and_then(|uri| {
                    let status = r
                        .checks
                        .as_ref()
                        .and_then(|c| c.services.iter().find(|s| s.service == uri));
                    match status {
                        Some(s) if s.ok => Ok(()),
                        Some(s) => Err(format!("{uri} ({})", s.detail)),
                        None => Err(format!("no answer from {source}: {}", describe(&r))),
                    }
                });
                (name, res)
            })
            .collect()
    }

    /// Sends an unjournaled command and waits for its result.
    async fn send_and_wait(
        &self,
        node: &str,
        cmd: &pb::AgentCommand,
        wait: Duration,
    ) -> pb::CommandResult {
        let r = self.send_and_wait_result(node, cmd, wait).await;
        self.slots.ended(node, &cmd.id, &r);
        r
    }

    async fn send_and_wait_result(
        &self,
        node: &str,
        cmd: &pb::AgentCommand,
        wait: Duration,
    ) -> pb::CommandResult {
        let mut rx = match self.link.send_command(node, cmd).await {
            Ok(rx) => rx,
            // Not acknowledged by NATS: it may still have landed.
            Err(e) => return failed(Code::OutcomeUnknown, format!("{e:#}")),
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Every 2 s without an event, the agent's results bucket is asked
            // too: a result event published while this coordinator was
            // reconnecting to NATS is lost, the recorded result is not.
            let tick = (tokio::time::Instant::now() + Duration::from_secs(2)).min(deadline);
            match tokio::time::timeout_at(tick, rx.recv()).await {
                Ok(Some(pb::Event {
                    body: Some(Body::Result(r)),
                    ..
                })) => return r,
                // Progress: the CLI follows it from the stream; metrics count it.
                Ok(Some(ev)) => {
                    crate::metrics::progress(&ev);
                    self.slots.observe(node, &ev);
                }
                Ok(None) => return failed(Code::Internal, "result channel closed".into()),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    if let Ok(Some(r)) = self.link.recorded_result(node, &cmd.id).await {
                        return r;
                    }
                }
                Err(_) => {
                    return failed(
                        Code::OutcomeUnknown,
                        format!(
                        "no result from node {node} within {} s; the command may still complete",
                        wait.as_secs()
                    ),
                    )
                }
            }
        }
    }

    /// Asks the source agent to cancel a running migration (executed at
    /// once, beside it); the migration's own result tells how it ended.
    pub(crate) async fn cancel_migration(&self, job: &Job, node: &str, vm: &str, reason: &str) {
        self.jobs
            .step(
                &job.id,
                Some(vm),
                None,
                format!("cancelling the migration of {vm} ({reason})"),
            )
            .await;
        let cmd = pb::AgentCommand {
            id: uuid::Uuid::new_v4().to_string(),
            op_id: job.id.clone(),
            requested_by: job.user.clone(),
            kind: Some(Kind::CancelMigration(pb::CancelMigration {
                vm: vm.to_string(),
                reason: reason.to_string(),
            })),
            ..Default::default()
        };
        if let Err(e) = self.link.send_command(node, &cmd).await {
            tracing::warn!(node, vm, error = %e, "cannot send the cancel");
        }
    }

    /// Journals the reason a job must stop, then signals its executor;
    /// a rolling maintenance is marked aborted and its current drains are
    /// stopped too. Refused for a finished job.
    pub async fn stop_job(&self, id: &str, reason: &str) -> Result<Job, String> {
        let res = self
            .jobs
            .modify::<String>(id, |j| {
                let mut j = j.ok_or_else(|| format!("unknown job {id:?}"))?;
                if j.state.is_terminal() {
                    return Err(format!("job {id} already ended ({:?})", j.state));
                }
                if j.stop_reason.is_none() {
                    j.stop_reason = Some(reason.to_string());
                }
                if matches!(j.spec, JobSpec::Rolling(_)) {
                    j.state = JobState::Aborted;
                }
                j.updated_ms = nodemaint_proto::now_ms();
                Ok(j)
            })
            .await;
        let job = match res {
            Ok(j) => j,
            Err(nodemaint_proto::bus::CasError::Rejected(e)) => return Err(e),
            Err(e) => return Err(e.to_string()),
        };
        self.stops.request(id, reason);
        self.jobs
            .step(id, None, None, format!("stop requested: {reason}"))
            .await;
        if let Some(rolling) = &job.rolling {
            for child in rolling.children.values().filter_map(|c| c.drain.as_deref()) {
                if self
                    .jobs
                    .get(child)
                    .await
                    .is_some_and(|j| !j.state.is_terminal())
                {
                    let _ = Box::pin(self.stop_job(child, reason)).await;
                }
            }
        }
        Ok(job)
    }
}

/// Arms a job's stop signal: a journaled stop reason (a job resumed after
/// an abort) fires at once, a deadline when it expires.
fn arm_stops(c: &Arc<Coordinator>, job: &Job) {
    if let Some(reason) = &job.stop_reason {
        c.stops.request(&job.id, reason);
    }
    let Some(deadline_ms) = job.deadline_ms else {
        return;
    };
    let (c, id) = (c.clone(), job.id.clone());
    let secs = job.spec.deadline_s();
    tokio::spawn(async move {
        let wait = (deadline_ms - nodemaint_proto::now_ms()).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let reason = Job::deadline_reason(secs);
        if c.stop_job(&id, &reason).await.is_ok() {
            tracing::warn!(job = %id, "{reason}");
        }
    });
}

/// Runs a job to its end in the background; resumption uses the same path.
pub fn spawn(c: Arc<Coordinator>, job: Job, resumed: bool) {
    arm_stops(&c, &job);
    let span = crate::logs::job_span(&job);
    let (c2, id) = (c.clone(), job.id.clone());
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            tracing::info!(resumed, "job running");
            match &job.spec {
                JobSpec::StopAll(_) => crate::driver::stop_all::stop_all(c, job).await,
                JobSpec::Cordon(_) => cordon(c, job).await,
                JobSpec::Drain(_) => crate::driver::drain::drain(c, job, resumed).await,
                JobSpec::Enable(_) => {
                    crate::driver::enable::run(c, job, resumed, Which::Enable).await
                }
                JobSpec::StartStopped(_) => {
                    crate::driver::enable::run(c, job, resumed, Which::StartStopped).await
                }
                JobSpec::Rolling(_) => crate::driver::rolling::run(c, job, resumed).await,
                JobSpec::Move(_)
                | JobSpec::Start(_)
                | JobSpec::Stop(_)
                | JobSpec::Create(_)
                | JobSpec::Check(_) => crate::driver::single::run(c, job, resumed).await,
                // Settled by its rolling maintenance, never run on its own.
                JobSpec::RollingNode(_) => {}
            }
            c2.stops.forget(&id);
            crate::logs::job_ended(&c2, &id).await;
        },
        span,
    ));
}

/// `--mode none`: the API made the node unschedulable; nothing moves.
async fn cordon(c: Arc<Coordinator>, job: Job) {
    let node = job.node.clone().unwrap_or_default();
    let n = c.registry.get(&node).map(|r| r.vms_running()).unwrap_or(0);
    let msg = format!(
        "{node} cordoned: no new VM lands on it; its {n} running VMs were not moved or stopped"
    );
    finish_node_job(&c, &job, &node, Report::default(), msg.clone(), msg).await;
}

pub use crate::jobs::Fallback;

/// Sets (`Some(job)`) or clears a VM's `stopped_by` entry on a node.
pub async fn record_stopped(
    c: &Coordinator,
    node: &str,
    vm: &str,
    job: Option<&str>,
) -> Result<(), String> {
    c.registry
        .update::<String>(node, |r| {
            let mut r = r.ok_or_else(|| format!("node {node} vanished"))?;
            match job {
                Some(j) => r.stopped_by.insert(vm.to_string(), j.to_string()),
                None => r.stopped_by.remove(vm),
            };
            Ok(r)
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The end of every node job: release the node and finish with the report
/// (`partial` describes what was not done). A stopped job ends ABORTED (an
/// operator's abort) or FAILED (an expired deadline), saying why.
async fn finish_node_job(
    c: &Coordinator,
    job: &Job,
    node: &str,
    report: Report,
    done: String,
    partial: String,
) {
    c.release_node(node, &job.id).await;
    let (state, outcome) = match c.stops.reason(&job.id) {
        Some(reason) => (
            if reason.starts_with("deadline") {
                JobState::Failed
            } else {
                JobState::Aborted
            },
            format!("stopped: {reason}. {partial}"),
        ),
        None if report.not_done.is_empty() => (report.state(), done),
        None => (report.state(), partial),
    };
    c.jobs
        .finish_with(&job.id, state, outcome, Some(report))
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
    c.jobs.create(&job).await?;
    let id = job.id.clone();
    spawn(c.clone(), job, false);
    Ok(id)
}

/// Waits until a job is terminal and returns it.
pub async fn await_job(c: &Coordinator, id: &str) -> Option<Job> {
    loop {
        match c.jobs.get(id).await {
            Some(j) if j.state.is_terminal() => return Some(j),
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            None => return None,
        }
    }
}

/// On start: resume every job the previous coordinator left running.
pub async fn resume_jobs(c: Arc<Coordinator>) {
    // Paused jobs get their executor back too; it waits at its checkpoint.
    // `rolling.node` jobs belong to their rolling job, which settles them.
    for listed in c.jobs.running().into_iter().filter(|j| {
        matches!(j.state, JobState::Running | JobState::Paused)
            && !matches!(j.spec, JobSpec::RollingNode(_))
    }) {
        // The stored record, not the listing: a job resumes from its latest
        // journal (a machine rebuilt from scratch would reuse command ids
        // whose recorded results belong to other VMs).
        let Some(job) = c.jobs.get(&listed.id).await else {
            tracing::warn!(job = %listed.id, "cannot read the job to resume it");
            continue;
        };
        crate::logs::job_span(&job).in_scope(|| tracing::info!("resuming job after restart"));
        c.jobs
            .step(
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

    #[test]
    fn a_drained_node_may_hold_only_recorded_or_stopped_vms() {
        use nodemaint_proto::model::Vm;
        let vm = |name: &str, state| Vm {
            name: name.into(),
            state,
            ..Default::default()
        };
        let mut rec = NodeRecord {
            domains: vec![
                vm("off", VmState::Shutoff),
                vm("recorded", VmState::Running),
                vm("stray", VmState::Running),
                vm("arriving", VmState::Migrating),
            ],
            ..Default::default()
        };
        rec.stopped_by.insert("recorded".into(), "job".into());
        assert_eq!(rec.running_unrecorded(), ["stray", "arriving"]);
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
