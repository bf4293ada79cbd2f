//! Rolling maintenance's driver: performs the machine's actions
//! (`crate::engine::rolling`, where every decision is and where the
//! simulator checks them) and feeds back what happened. The machine is
//! journaled into the job's `engine` field before each of its acts; the
//! operator-facing mirror (`rolling.progress`, `boot_before`, `children`)
//! is written in the same update.
//!
//! Drains and enables are child jobs with ids derived from the rolling's
//! (resumed on their own after a restart; this driver awaits them); the
//! reboot hook and the checks are agent commands journaled in a small
//! per-node job (`rolling.node`), also with derived ids, so a resumed
//! rolling finds, never repeats, what it launched or sent.

use crate::driver::executor::{await_job, describe, launch_child};
use crate::driver::stop_all::{stop_reason, FIND_OUT_WAIT};
use crate::engine::rolling::{Action, Command, Event, Hook, Inspection, Phase, Progress, Rolling};
use crate::engine::{Answer, Ending};
use crate::jobs::{self, Job, JobSpec, JobState, Report};
use crate::server::Coordinator;
use nodemaint_planner as planner;
use nodemaint_proto::bus;
use nodemaint_proto::model::NodeStatus;
use nodemaint_proto::pb::{self, agent_command::Kind, error::Code};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the driver looks at the job for pause, resume and continue.
const POLL: Duration = Duration::from_millis(500);

/// Plans the drains of one group jointly: each node's drain is planned on a
/// snapshot in which the group is in maintenance and the VMs of the nodes
/// planned before it are already on their destinations, so concurrent
/// drains never count on the same free memory.
pub fn plan_group(
    fleet: &planner::Fleet,
    group: &[String],
    limits: &planner::Limits,
) -> Result<Vec<planner::DrainPlan>, planner::PlanError> {
    let mut f = fleet.clone();
    for n in &mut f.nodes {
        if group.contains(&n.name) {
            n.status = planner::NodeStatus::Maintenance;
        }
    }
    let mut plans = Vec::new();
    for node in group {
        let plan = planner::plan_drain(&f, node, limits)?;
        for m in &plan.moves {
            if let Some(vm) = f.vms.iter_mut().find(|v| v.name == m.vm) {
                vm.node = m.to.clone();
            }
        }
        plans.push(plan);
    }
    Ok(plans)
}

/// The machine of a job that has none journaled yet, from its parameters.
fn machine_of(job: &Job) -> Rolling {
    let p = match &job.spec {
        JobSpec::Rolling(r) => r.clone(),
        _ => Default::default(),
    };
    let hook = if p.wait_for_continue {
        Hook::Continue
    } else {
        Hook::Named(p.hook.clone())
    };
    let mut m = Rolling::new(
        &job.id,
        &p.groups,
        p.max_unavailable.max(1) as usize,
        hook,
        p.checks_must_pass,
        u64::from(p.reboot_timeout_s),
        (p.deadline_s > 0).then_some(u64::from(p.deadline_s)),
    );
    let progress = job.rolling.clone().unwrap_or_default();
    // A rolling journaled by an older coordinator (no machine): the nodes
    // it finished stay finished; any other is started afresh (one that was
    // mid-way is still held by its old child, so its drain is refused and
    // it fails loudly rather than reboot twice).
    for t in &mut m.nodes {
        if progress.phase(&t.node) == jobs::Phase::Done {
            t.phase = Phase::Done;
        }
    }
    m
}

pub async fn run(c: Arc<Coordinator>, job: Job, resumed: bool) {
    let journaled = job
        .engine
        .clone()
        .and_then(|v| serde_json::from_value::<Rolling>(v).ok());
    let mut machine = journaled.unwrap_or_else(|| machine_of(&job));
    if resumed {
        c.jobs
            .step(
                &job.id,
                None,
                None,
                "resuming rolling maintenance from its journal".into(),
            )
            .await;
    }
    if machine.finished {
        // Journaled as finished; the job's own end may not have been written.
        let a = machine.finish();
        return perform(&c, &job, &machine, a, &mpsc::unbounded_channel().0).await;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut stops = c.stops.watch(&job.id);
    let mut stop_fed = false;
    let mut poll = tokio::time::interval(POLL);
    let mut next = vec![Event::Start];
    while !machine.finished {
        let event = match next.pop() {
            Some(e) => e,
            None => tokio::select! {
                Some(e) = rx.recv() => e,
                reason = crate::driver::executor::stopped(&mut stops), if !stop_fed => {
                    stop_fed = true;
                    Event::Stop(stop_reason(reason))
                }
                _ = poll.tick() => {
                    next = operator_events(&c, &job.id, &machine).await;
                    continue;
                }
            },
        };
        let (state, actions) = match machine.step(event) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(job = %job.id, error = %e, "event refused by the engine");
                continue;
            }
        };
        if actions.first() == Some(&Action::Journal) {
            if !journal(&c, &job.id, &state).await {
                tracing::error!(job = %job.id, "job record gone; rolling maintenance halted");
                return;
            }
            announce(&c, &job.id, &machine, &state).await;
        }
        machine = state;
        for a in actions {
            perform(&c, &job, &machine, a, &tx).await;
        }
    }
}

/// Pause, resume and continue come through the job record (the API writes
/// them there, so they survive a restart).
async fn operator_events(c: &Coordinator, id: &str, m: &Rolling) -> Vec<Event> {
    let Some(job) = c.jobs.get(id).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    match job.state {
        JobState::Paused if !m.paused => out.push(Event::Pause),
        JobState::Running if m.paused => out.push(Event::Unpause),
        _ => {}
    }
    for t in &m.nodes {
        if t.phase == Phase::AwaitingContinue
            && job
                .rolling
                .as_ref()
                .is_some_and(|r| r.continued.contains(&t.node))
        {
            out.push(Event::Continued {
                node: t.node.clone(),
            });
        }
    }
    out
}

/// Writes the machine and its operator-facing mirror into the job, waiting
/// out an unavailable KV store; false only when the job record is gone.
async fn journal(c: &Coordinator, id: &str, m: &Rolling) -> bool {
    let value = serde_json::to_value(m).expect("serializable");
    let mut backoff = bus::Backoff::default();
    loop {
        let written = c
            .jobs
            .update(id, |j| {
                j.engine = Some(value.clone());
                for (i, t) in m.nodes.iter().enumerate() {
                    let n = t.node.as_str();
                    let progress = t.phase.progress();
                    let r = j.rolling.get_or_insert_with(Default::default);
                    r.progress.insert(n.to_string(), progress);
                    if let Some(b) = &t.boot_before {
                        r.boot_before.insert(n.to_string(), b.clone());
                    }
                    let children = r.children.entry(n.to_string()).or_default();
                    if progress > Progress::Pending {
                        children.drain = Some(m.drain_id(i));
                        children.node = Some(m.node_job_id(i));
                    }
                    if progress >= Progress::Checked
                        && !matches!(
                            t.phase,
                            Phase::Checked | Phase::Failed { .. } | Phase::Stopped { .. }
                        )
                    {
                        children.enable = Some(m.enable_id(i));
                    }
                }
            })
            .await
            .is_some();
        if written {
            return true;
        }
        if c.jobs.vanished(id).await {
            return false;
        }
        tracing::warn!(
            job = id,
            "cannot journal the rolling's state; waiting for the jobs bucket"
        );
        backoff.wait().await;
    }
}

/// Live watchers see each node's phase change.
async fn announce(c: &Coordinator, id: &str, before: &Rolling, after: &Rolling) {
    for (b, a) in before.nodes.iter().zip(&after.nodes) {
        if b.phase.progress() != a.phase.progress() {
            c.jobs
                .event(pb::JobEvent {
                    job_id: id.to_string(),
                    kind: "rolling".into(),
                    state: "RUNNING".into(),
                    message: format!("{}: {}", a.node, a.phase.progress().as_str()),
                    ..Default::default()
                })
                .await;
        }
    }
}

/// The per-node job that journals the node's agent commands.
async fn node_job(c: &Coordinator, m: &Rolling, parent: &Job, node: &str) -> Result<Job, String> {
    let id = m.node_job_id(m.index(node).map_err(|e| e.to_string())?);
    if let Some(j) = c.jobs.get(&id).await {
        return Ok(j);
    }
    let spec = JobSpec::RollingNode(jobs::RollingNode {
        parent: parent.id.clone(),
    });
    let mut j = Job::new(spec, &parent.user, Some(node));
    j.id = id;
    c.jobs.create(&j).await.map_err(|e| e.to_string())?;
    Ok(j)
}

/// Takes the node for a child job; already taken by that child (a restart
/// between the take and the child's creation) counts as taken.
async fn take(
    c: &Coordinator,
    node: &str,
    from: NodeStatus,
    to: NodeStatus,
    child: &str,
) -> Result<(), String> {
    if let Some(r) = c.registry.get(node) {
        if r.current_job.as_deref() == Some(child) && r.status == to {
            return Ok(());
        }
    }
    super::take_node(c, node, from, to, child)
        .await
        .map(|_| ())
        .map_err(|r| r.1)
}

/// Launches a child job with the given id, unless it exists.
async fn child_job(c: &Arc<Coordinator>, mut job: Job, id: &str) -> Result<(), String> {
    if c.jobs.get(id).await.is_some() {
        return Ok(());
    }
    job.id = id.to_string();
    launch_child(c, job)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Feeds the child's end back: `Ok` when it SUCCEEDED.
fn await_child(
    c: &Arc<Coordinator>,
    id: String,
    tx: &mpsc::UnboundedSender<Event>,
    event: impl FnOnce(Result<(), String>) -> Event + Send + 'static,
) {
    let (c, tx) = (c.clone(), tx.clone());
    tokio::spawn(async move {
        let r = match await_job(&c, &id).await {
            Some(j) if j.state == JobState::Succeeded => Ok(()),
            Some(j) => Err(j.outcome.unwrap_or_else(|| format!("{:?}", j.state))),
            None => Err(format!("job {id} vanished")),
        };
        let _ = tx.send(event(r));
    });
}

/// A result as the engine's answer; `unknown` are the codes that mean the
/// outcome is not known (for a hook, a timeout too: the node may be
/// rebooting under it).
fn answer(r: &pb::CommandResult, unknown: &[Code]) -> Answer {
    match (r.ok, r.error.as_ref().map(|e| e.code)) {
        (true, _) => Answer::Done(r.message.clone()),
        (false, Some(c)) if unknown.iter().any(|u| *u as i32 == c) => Answer::Unknown(describe(r)),
        (false, _) => Answer::Failed(
            r.error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_else(|| r.message.clone()),
        ),
    }
}

fn kind_of(what: &Command) -> Kind {
    match what {
        Command::Hook(name) => Kind::RunHook(pb::RunHook {
            name: name.clone(),
            timeout_s: 600,
        }),
        Command::Checks => Kind::RunChecks(pb::RunChecks { start_failed: true }),
    }
}

fn unknown_codes(what: &Command) -> &'static [Code] {
    match what {
        Command::Hook(_) => &[Code::Timeout, Code::OutcomeUnknown],
        Command::Checks => &[Code::OutcomeUnknown],
    }
}

async fn perform(
    c: &Arc<Coordinator>,
    job: &Job,
    m: &Rolling,
    a: Action,
    tx: &mpsc::UnboundedSender<Event>,
) {
    match a {
        Action::Journal => {}
        Action::Drain { nodes } => drain(c, job, m, nodes, tx).await,
        Action::Inspect { node } => {
            let (c, tx) = (c.clone(), tx.clone());
            spawn_for(&node.clone(), async move {
                let result = inspect(&c, &node).await;
                let _ = tx.send(Event::Inspected { node, result });
            });
        }
        Action::Send { node, cmd, what } | Action::FindOut { node, cmd, what } => {
            send(c, job, m, node, cmd, what, tx).await
        }
        Action::WaitBack {
            node,
            before,
            timeout_s,
        } => {
            let (c, tx) = (c.clone(), tx.clone());
            spawn_for(&node.clone(), async move {
                let e =
                    match wait_new_boot(&c, &node, &before, Duration::from_secs(timeout_s)).await {
                        Ok(()) => Event::Back { node },
                        Err(why) => Event::NotBack { node, why },
                    };
                let _ = tx.send(e);
            });
        }
        Action::Enable { node, child } => {
            let launched = async {
                if c.jobs.get(&child).await.is_some() {
                    return Ok(());
                }
                take(
                    c,
                    &node,
                    NodeStatus::Maintenance,
                    NodeStatus::Enabled,
                    &child,
                )
                .await?;
                let spec = JobSpec::Enable(jobs::Enable {
                    restart: Vec::new(),
                    parent: Some(job.id.clone()),
                });
                let j = Job::new(spec, &job.user, Some(&node));
                child_job(c, j, &child).await
            }
            .await;
            match launched {
                Ok(()) => await_child(c, child, tx, move |result| Event::EnableEnded {
                    node,
                    result,
                }),
                Err(e) => {
                    let _ = tx.send(Event::EnableEnded {
                        node,
                        result: Err(e),
                    });
                }
            }
        }
        Action::Verify { node } => {
            let (c, tx) = (c.clone(), tx.clone());
            spawn_for(&node.clone(), async move {
                let result = verify(&c, &node).await;
                let _ = tx.send(Event::Verified { node, result });
            });
        }
        Action::Note {
            node: _,
            ok,
            message,
        } => c.jobs.step(&job.id, None, ok, message).await,
        Action::Finish { ending, summary } => {
            let mut report = Report::default();
            for (i, (node, r)) in m.report().into_iter().enumerate() {
                // The node's command journal ends with the node.
                let nid = m.node_job_id(i);
                if c.jobs
                    .get(&nid)
                    .await
                    .is_some_and(|j| !j.state.is_terminal())
                {
                    let (state, outcome) = match &r {
                        Ok(_) => (JobState::Succeeded, format!("{node} done")),
                        Err(e) => (JobState::Failed, e.clone()),
                    };
                    c.jobs.finish(&nid, state, outcome).await;
                }
                report.record(node, r);
            }
            let state = match ending {
                Ending::Succeeded => JobState::Succeeded,
                Ending::Failed => JobState::Failed,
                Ending::Aborted => JobState::Aborted,
            };
            c.jobs
                .finish_with(&job.id, state, summary, Some(report))
                .await;
        }
    }
}

fn spawn_for(node: &str, f: impl std::future::Future<Output = ()> + Send + 'static) {
    let span = tracing::info_span!("node", node = %node);
    tokio::spawn(tracing::Instrument::instrument(f, span));
}

/// Puts the nodes in maintenance and launches their drains, planned
/// jointly; children that exist (a restart) are only awaited.
async fn drain(
    c: &Arc<Coordinator>,
    job: &Job,
    m: &Rolling,
    nodes: Vec<(String, String)>,
    tx: &mpsc::UnboundedSender<Event>,
) {
    let mut launch = Vec::new();
    for (node, child) in nodes {
        if let Err(e) = node_job(c, m, job, &node).await {
            tracing::warn!(%node, error = %e, "cannot create the node's command journal");
        }
        if c.jobs.get(&child).await.is_some() {
            await_child(c, child, tx, move |result| Event::DrainEnded {
                node,
                result,
            });
        } else {
            launch.push((node, child));
        }
    }
    if launch.is_empty() {
        return;
    }
    let names: Vec<String> = launch.iter().map(|(n, _)| n.clone()).collect();
    let limits = crate::fleet::limits(&c.cfg.limits, 0);
    let fleet = crate::fleet::snapshot(&c.registry.all(), nodemaint_proto::now_ms());
    let plans = match plan_group(&fleet, &names, &limits) {
        Ok(p) => p,
        Err(e) => {
            let why = format!("cannot drain {}: {e}", names.join(", "));
            for (node, _) in launch {
                let _ = tx.send(Event::DrainEnded {
                    node,
                    result: Err(why.clone()),
                });
            }
            return;
        }
    };
    for ((node, child), plan) in launch.into_iter().zip(plans) {
        let spec = JobSpec::Drain(jobs::Drain {
            plan: Some(plan),
            parent: Some(job.id.clone()),
            deadline_s: job.spec.deadline_s(),
            adaptive: c.cfg.drain.concurrency == crate::config::Concurrency::Adaptive,
            ..Default::default()
        });
        let mut j = Job::new(spec, &job.user, Some(&node));
        // The rolling's deadline bounds its drains too.
        j.deadline_ms = job.deadline_ms;
        let launched = match take(
            c,
            &node,
            NodeStatus::Enabled,
            NodeStatus::Maintenance,
            &child,
        )
        .await
        {
            Ok(()) => child_job(c, j, &child).await.inspect_err(|_| {
                let (c, node, child) = (c.clone(), node.clone(), child.clone());
                tokio::spawn(async move { c.release_node(&node, &child).await });
            }),
            Err(e) => Err(e),
        };
        match launched {
            Ok(()) => await_child(c, child, tx, move |result| Event::DrainEnded {
                node,
                result,
            }),
            Err(e) => {
                let _ = tx.send(Event::DrainEnded {
                    node,
                    result: Err(e),
                });
            }
        }
    }
}

/// A fresh inventory of a drained node: what runs there unrecorded.
async fn inspect(c: &Coordinator, node: &str) -> Inspection {
    match c.fresh_inventory(node).await {
        Some(rec) => {
            let running = rec.running_unrecorded();
            if running.is_empty() {
                Inspection::Empty {
                    boot_id: rec.boot_id,
                }
            } else {
                Inspection::Holds(running)
            }
        }
        _ => {
            // Asked again by the engine: not in a tight loop.
            tokio::time::sleep(Duration::from_secs(1)).await;
            Inspection::Unknown(format!("no fresh inventory from {node}"))
        }
    }
}

/// Sends the node's hook or checks, or finds out what became of them: a
/// command in the node's journal was (maybe) sent, so its result is looked
/// up (the same id resent if the agent never claimed it); one not in the
/// journal was never sent (journal before send), so it is sent now. A
/// hook's node that comes back with a new boot id has answered.
async fn send(
    c: &Arc<Coordinator>,
    job: &Job,
    m: &Rolling,
    node: String,
    cmd: String,
    what: Command,
    tx: &mpsc::UnboundedSender<Event>,
) {
    let nj = match node_job(c, m, job, &node).await {
        Ok(j) => j,
        Err(e) => {
            // No journal for it, so not sent. A hook not sent is a failed
            // hook (waiting for a reboot would only time out); the checks
            // are asked for again.
            let why = format!("not sent: cannot create its journal ({e})");
            let answer = match what {
                Command::Hook(_) => Answer::Failed(why),
                Command::Checks => Answer::Unknown(why),
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = tx.send(Event::Answered { node, cmd, answer });
            });
            return;
        }
    };
    let before = m
        .nodes
        .iter()
        .find(|t| t.node == node)
        .and_then(|t| t.boot_before.clone())
        .unwrap_or_default();
    let kind = kind_of(&what);
    let sent_before = nj.commands.iter().any(|r| r.id == cmd);
    let (c, tx) = (c.clone(), tx.clone());
    spawn_for(&node.clone(), async move {
        let asked = async {
            if sent_before {
                let command = pb::AgentCommand {
                    id: cmd.clone(),
                    op_id: nj.id.clone(),
                    requested_by: nj.user.clone(),
                    kind: Some(kind),
                    ..Default::default()
                };
                let r = c.settle(&node, &command, FIND_OUT_WAIT).await;
                let (ok, msg) = (r.ok, describe(&r));
                let id = cmd.clone();
                c.jobs
                    .update(&nj.id, |j| {
                        if let Some(rec) = j.commands.iter_mut().find(|rec| rec.id == id) {
                            rec.ok = Some(ok);
                            rec.message = Some(msg.clone());
                        }
                    })
                    .await;
                r
            } else {
                c.run_command_as(&cmd, &nj, &node, "", None, kind).await
            }
        };
        let event = match what {
            Command::Hook(_) => {
                let back = wait_new_boot(&c, &node, &before, Duration::from_secs(24 * 3600));
                tokio::select! {
                    r = asked => Event::Answered { node, cmd, answer: answer(&r, unknown_codes(&what)) },
                    Ok(()) = back => Event::Back { node },
                }
            }
            Command::Checks => {
                let r = asked.await;
                Event::Answered {
                    node,
                    cmd,
                    answer: answer(&r, unknown_codes(&what)),
                }
            }
        };
        let _ = tx.send(event);
    });
}

async fn wait_new_boot(
    c: &Coordinator,
    node: &str,
    before: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(r) = c.registry.get(node) {
            if r.reachable_at(nodemaint_proto::now_ms())
                && !r.boot_id.is_empty()
                && r.boot_id != before
            {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "did not come back with a new boot id within {} s",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// ENABLED and reachable before the next group goes down (a heartbeat may
/// be a moment late under load: allow 15 s).
async fn verify(c: &Coordinator, node: &str) -> Result<(), String> {
    for _ in 0..60 {
        let rec = c
            .registry
            .get(node)
            .ok_or_else(|| format!("{node} vanished"))?;
        if rec.status == NodeStatus::Enabled && rec.reachable_at(nodemaint_proto::now_ms()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err("not ENABLED and reachable 15 s after enable".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joint_group_plans_never_share_free_memory() {
        // Three nodes of 1000 MiB; a and b each hold 400 MiB; c is empty.
        // Draining a and b together must not put 800 MiB on c twice over.
        let mut f = planner::Fleet::default();
        for n in ["a", "b", "c", "d"] {
            f.nodes.push(planner::Node::new(n, 1000, 8));
        }
        f.vms.push(planner::Vm::new("va", "a", 400, 1));
        f.vms.push(planner::Vm::new("vb", "b", 400, 1));
        f.vms.push(planner::Vm::new("vd", "d", 500, 1));
        let plans = plan_group(&f, &["a".into(), "b".into()], &planner::Limits::default()).unwrap();
        let dests: Vec<&str> = plans
            .iter()
            .flat_map(|p| p.moves.iter().map(|m| m.to.as_str()))
            .collect();
        assert_eq!(dests.len(), 2);
        assert!(!dests.contains(&"a") && !dests.contains(&"b"), "{dests:?}");
        let on_c = plans
            .iter()
            .flat_map(|p| &p.moves)
            .filter(|m| m.to == "c")
            .count();
        let on_d = plans
            .iter()
            .flat_map(|p| &p.moves)
            .filter(|m| m.to == "d")
            .count();
        assert!(
            on_c <= 2 && on_d <= 1,
            "d has room for one 400 MiB VM only: {dests:?}"
        );
    }

    #[test]
    fn a_job_without_a_machine_starts_one_from_its_parameters() {
        let abc: Vec<String> = ["a", "b", "c"].map(String::from).into();
        let spec = JobSpec::Rolling(jobs::Rolling {
            nodes: abc.clone(),
            groups: vec![abc[..2].to_vec(), abc[2..].to_vec()],
            max_unavailable: 2,
            hook: "reboot".into(),
            wait_for_continue: false,
            checks_must_pass: true,
            reboot_timeout_s: 60,
            deadline_s: 0,
        });
        let mut job = Job::new(spec, "alice", None);
        if let Some(r) = job.rolling.as_mut() {
            r.progress.insert("a".into(), jobs::Phase::Done);
        }
        job.id = "r".into();
        let m = machine_of(&job);
        assert_eq!(m.hook, Hook::Named("reboot".into()));
        assert_eq!(m.nodes[0].phase, Phase::Done);
        assert_eq!(m.nodes[1].phase, Phase::Waiting);
        assert_eq!(m.reboot_timeout_s, 60);
        assert!(m.checks_must_pass);
    }
}
