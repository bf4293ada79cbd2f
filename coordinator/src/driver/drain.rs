//! The drain's driver (maintenance `--mode move`): performs the machine's
//! actions (`crate::engine::drain`) against the registry, the job journal,
//! the planner and the agents, and feeds back what happened. Every
//! decision is in the engine, where the simulator checks it; here is only
//! I/O.

use crate::driver::executor::{record_stopped, stopped};
use crate::driver::slots::Priority;
use crate::driver::stop_all::{answer, journal, stop_reason, FIND_OUT_WAIT};
use crate::engine::concurrency::{Change, Controller, Window};
use crate::engine::drain::{Action, Drain, Event, Planned};
use crate::engine::{Answer, Ending};
use crate::jobs::{Job, JobSpec, JobState, Report};
use crate::server::Coordinator;
use nodemaint_planner as planner;
use nodemaint_proto::model::{NodeRecord, VmState};
use nodemaint_proto::pb::{self, agent_command::Kind};
use std::sync::Arc;
use tokio::sync::mpsc;

/// How a drain is paced: adaptive or not, the limit it starts at, and the
/// most its source's slots allow it.
struct Pace {
    adaptive: bool,
    start: usize,
    ceiling: usize,
}

fn pace_of(c: &Coordinator, job: &Job) -> Pace {
    let (max_parallel, adaptive) = match &job.spec {
        JobSpec::Drain(d) => (d.max_parallel, d.adaptive),
        _ => (0, false),
    };
    let per_source = crate::fleet::limits(&c.cfg.limits, max_parallel).per_source;
    if adaptive {
        let ceiling = c.cfg.drain.max(&c.cfg.limits);
        Pace {
            adaptive: true,
            start: per_source.min(ceiling),
            ceiling,
        }
    } else {
        Pace {
            adaptive: false,
            start: per_source,
            ceiling: per_source,
        }
    }
}

/// The machine for a new drain: the plan accepted with the job (rolling
/// plans a group's drains jointly), or one made now; VMs maintenance
/// already stopped and recorded stay where they are.
fn new_machine(
    c: &Coordinator,
    job: &Job,
    node: &str,
    resumed: bool,
    pace: &Pace,
) -> Result<Drain, String> {
    let JobSpec::Drain(spec) = &job.spec else {
        return Err(format!("job {} is a {}, not a drain", job.id, job.kind()));
    };
    let limits = crate::fleet::limits(&c.cfg.limits, spec.max_parallel);
    // After a restart with nothing journaled, nothing was done: re-plan
    // from the fleet as it is now.
    let accepted: Option<planner::DrainPlan> = if resumed { None } else { spec.plan.clone() };
    let plan = match accepted {
        Some(p) => p,
        None => {
            let fleet = crate::fleet::snapshot(&c.registry.all(), nodemaint_proto::now_ms());
            planner::plan_drain(&fleet, node, &limits).map_err(|e| e.to_string())?
        }
    };
    let rec: NodeRecord = c.registry.get(node).unwrap_or_default();
    let moves =
        plan.moves
            .iter()
            .filter(|m| !rec.stopped_by.contains_key(&m.vm))
            .map(|m| Planned {
                vm: m.vm.clone(),
                to: m.to.clone(),
                wave: m.wave,
                vfw: m.kind == planner::VmKind::Vfw,
                running: rec.domains.iter().any(|d| {
                    d.name == m.vm && matches!(d.state, VmState::Running | VmState::Paused)
                }),
                not_migratable: m.not_migratable.clone(),
            })
            .collect();
    // The engine paces the drain (in plan order); the slots hold the
    // fleet-wide limits.
    Ok(
        Drain::new(&job.id, node, spec.fallback, spec.ack_vfw_downtime, moves)
            .with_concurrency(pace.start as u32),
    )
}

/// An adaptive drain's controller and its measurement windows.
struct Pacing {
    controller: Controller,
    tick: tokio::time::Interval,
    since: tokio::time::Instant,
}

impl Pacing {
    fn new(c: &Coordinator, start: u32, max: usize) -> Pacing {
        let period = std::time::Duration::from_millis(c.cfg.drain.adaptive_window_ms.max(100));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Pacing {
            controller: Controller::new(start, max as u32),
            tick,
            since: tokio::time::Instant::now(),
        }
    }

    /// One window: what the drain's migrations copied since the last one,
    /// and whether VMs waited for the limit.
    fn window(&mut self, c: &Coordinator, node: &str, m: &Drain) -> Option<Change> {
        let now = tokio::time::Instant::now();
        let secs = (now - self.since).as_secs_f64();
        self.since = now;
        let (bytes, stalled) = c.slots.take_meter(node);
        let binding = m.held_back() > 0 && m.in_flight() >= m.concurrency as usize;
        self.controller.window(&Window {
            bytes,
            secs,
            binding,
            stalled,
        })
    }
}

/// The next window of an adaptive drain; never, for a fixed one.
async fn next_window(p: &mut Option<Pacing>) {
    match p {
        Some(p) => {
            p.tick.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Move all, started or resumed: the machine comes from the job's journal
/// when there is one.
pub async fn drain(c: Arc<Coordinator>, job: Job, resumed: bool) {
    let pace = pace_of(&c, &job);
    let node = job.node.clone().unwrap_or_default();
    let journaled = job
        .engine
        .clone()
        .and_then(|v| serde_json::from_value::<Drain>(v).ok());
    let mut machine = match journaled {
        Some(m) => m,
        None => match new_machine(&c, &job, &node, resumed, &pace) {
            Ok(m) => {
                c.jobs
                    .step(
                        &job.id,
                        None,
                        None,
                        format!(
                            "plan: {} VMs to move, VFWs first, then the largest first; {} at once{}; fallback {}",
                            m.vms.len(),
                            m.concurrency,
                            if pace.adaptive { " to start (adaptive)" } else { "" },
                            m.fallback.as_str()
                        ),
                    )
                    .await;
                m
            }
            Err(e) => {
                c.release_node(&node, &job.id).await;
                let msg = format!(
                    "cannot drain {node}: {e}; nothing was moved, the node stays in maintenance"
                );
                return c
                    .jobs
                    .finish_with(&job.id, JobState::Failed, msg, Some(Report::default()))
                    .await;
            }
        },
    };
    if machine.finished {
        // Journaled as finished, the job itself not: finish it now.
        let (ending, summary) = match machine.finish() {
            Action::Finish { ending, summary } => (ending, summary),
            _ => unreachable!("finish() is a Finish"),
        };
        return finish(&c, &job, &node, &machine, ending, summary).await;
    }
    let mut pacing = pace
        .adaptive
        .then(|| Pacing::new(&c, machine.concurrency, pace.ceiling));
    let _paced = c.slots.pace(&node, pace.ceiling, pace.adaptive);
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut stops = c.stops.watch(&job.id);
    let mut stop_fed = machine.stopping.is_some();
    let mut next = Some(Event::Resume);
    while !machine.finished {
        let event = match next.take() {
            Some(e) => e,
            None => tokio::select! {
                Some(e) = rx.recv() => e,
                reason = stopped(&mut stops), if !stop_fed => {
                    stop_fed = true;
                    Event::Stop(stop_reason(reason))
                }
                _ = next_window(&mut pacing) => {
                    let Some(p) = pacing.as_mut() else { continue };
                    let Some(ch) = p.window(&c, &node, &machine) else { continue };
                    let msg = format!("concurrency {} → {}: {}", ch.from, ch.to, ch.reason);
                    c.jobs.step(&job.id, None, None, msg).await;
                    Event::Concurrency(ch.to)
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
        if actions.first() == Some(&Action::Journal) && !journal(&c, &job.id, &state).await {
            // Not journaled: nothing of this step happens.
            tracing::error!(job = %job.id, "job record unwritable; drain halted");
            return;
        }
        machine = state;
        for a in actions {
            perform(&c, &job, &node, &machine, a, &tx).await;
        }
    }
}

fn send(tx: &mpsc::UnboundedSender<Event>, e: Event) {
    // The receiver lives as long as the job's loop; after it ended an
    // answer has nobody to tell.
    let _ = tx.send(e);
}

async fn perform(
    c: &Arc<Coordinator>,
    job: &Job,
    node: &str,
    m: &Drain,
    a: Action,
    tx: &mpsc::UnboundedSender<Event>,
) {
    match a {
        Action::Journal => {}
        Action::Migrate { vm, to, cmd, live } => {
            let (c, job, node, tx) = (c.clone(), job.clone(), node.to_string(), tx.clone());
            tokio::spawn(async move {
                let answer = migrate(&c, &job, &node, &vm, &to, &cmd, live).await;
                send(&tx, Event::Answered { vm, cmd, answer });
            });
        }
        Action::Cancel { vm, reason } => c.cancel_migration(job, node, &vm, &reason).await,
        Action::FindAlternative { vm, exclude } => {
            let fleet = crate::fleet::snapshot(&c.registry.all(), nodemaint_proto::now_ms());
            let exclude: Vec<&str> = exclude.iter().map(String::as_str).collect();
            let to = planner::feasible_destinations(&fleet, &vm, &exclude)
                .into_iter()
                .next();
            send(tx, Event::Alternative { vm, to });
        }
        Action::Record { vm, node } => {
            let result = record_stopped(c, &node, &vm, Some(&job.id)).await;
            send(tx, Event::Recorded { vm, node, result });
        }
        Action::Unrecord { vm, node } => {
            if let Err(e) = record_stopped(c, &node, &vm, None).await {
                tracing::warn!(%node, %vm, error = %e, "record left (enable skips a running VM)");
            }
        }
        Action::SendStop { vm, cmd } => {
            let kind = Kind::Stop(pb::StopVm {
                vm: vm.clone(),
                graceful_timeout_s: c.cfg.stop_graceful_timeout_s,
            });
            command(c, job, node, vm, cmd, kind, tx);
        }
        Action::SendStart { vm, node, cmd } => {
            let kind = Kind::Start(pb::StartVm { vm: vm.clone() });
            command(c, job, &node, vm, cmd, kind, tx);
        }
        Action::FindOut { vm, cmd } => {
            let (c, job_id, tx) = (c.clone(), job.id.clone(), tx.clone());
            tokio::spawn(async move {
                let event = find_out(&c, &job_id, vm, cmd).await;
                send(&tx, event);
            });
        }
        Action::CheckEmpty => {
            // The registry first shows the moved VMs where they went (a
            // rolling plans its next group from it), then the node's
            // fresh inventory is asked.
            let placements: Vec<(String, String)> = m
                .outcomes()
                .map(|(vm, o)| (vm.to_string(), o.moved_to().unwrap_or(node).to_string()))
                .collect();
            let (c, node, tx) = (c.clone(), node.to_string(), tx.clone());
            tokio::spawn(async move {
                c.wait_placed(&placements).await;
                let answer = match c.fresh_inventory(&node).await {
                    Some(rec) => Ok(rec.running_unrecorded()),
                    None => Err(format!("no fresh inventory from {node}")),
                };
                send(&tx, Event::Inventory(answer));
            });
        }
        Action::Note { vm, ok, message } => c.jobs.step(&job.id, vm.as_deref(), ok, message).await,
        Action::Finish { ending, summary } => finish(c, job, node, m, ending, summary).await,
    }
}

/// Sends a journaled command in the background; its answer is an event.
fn command(
    c: &Arc<Coordinator>,
    job: &Job,
    node: &str,
    vm: String,
    cmd: String,
    kind: Kind,
    tx: &mpsc::UnboundedSender<Event>,
) {
    let (c, job, node, tx) = (c.clone(), job.clone(), node.to_string(), tx.clone());
    tokio::spawn(async move {
        let r = c.run_command_as(&cmd, &job, &node, &vm, None, kind).await;
        let answer = answer(&r);
        send(&tx, Event::Answered { vm, cmd, answer });
    });
}

/// One migration within the fleet-wide slots. A stop before a slot is
/// free means it is not sent at all (a failure the engine can rely on); a
/// stop while it runs is the engine's cancel.
async fn migrate(
    c: &Coordinator,
    job: &Job,
    from: &str,
    vm: &str,
    to: &str,
    cmd: &str,
    live: bool,
) -> Answer {
    let (max_speed, converge) = match &job.spec {
        JobSpec::Drain(d) => (d.max_speed_mibs, d.converge.clone()),
        _ => (0, None),
    };
    let converge = converge.unwrap_or_else(|| c.cfg.migration.converge.clone());
    let kind = match c.registry.get(to) {
        Some(dest) => c.migrate_kind(vm, &dest, 0, max_speed, &converge),
        None => Err(format!("unknown node {to}")),
    };
    let kind = match kind {
        Ok(k) => k,
        Err(e) => return Answer::Failed(format!("not sent: {e}")),
    };
    let mut stop = c.stops.watch(&job.id);
    let _slots = tokio::select! {
        biased;
        reason = stopped(&mut stop) => return Answer::Failed(format!("not started ({reason})")),
        g = c.slots.acquire(from, to, Priority::Maintenance) => g,
    };
    let how = if live { "moving" } else { "moving (shut off)" };
    c.jobs
        .step(
            &job.id,
            Some(vm),
            None,
            format!("{how} {vm} from {from} to {to}"),
        )
        .await;
    let r = c.run_command_as(cmd, job, from, vm, Some(to), kind).await;
    // Logged before the slots are released: the journal's intervals
    // between "moving" and "ended" lie within the slot holding.
    c.jobs
        .step(
            &job.id,
            Some(vm),
            Some(r.ok),
            format!(
                "migration of {vm} from {from} to {to} ended: {}",
                if r.ok { "ok" } else { "failed" }
            ),
        )
        .await;
    answer(&r)
}

/// What became of a command: the job's command journal says whether it
/// was sent (`run_command_as` journals before it sends); the agent's
/// results bucket what it did, the command being re-sent (same id) if the
/// agent never claimed it.
async fn find_out(c: &Coordinator, job_id: &str, vm: String, cmd: String) -> Event {
    let Some(job) = c.jobs.get(job_id).await else {
        let answer = Answer::Unknown("cannot read the job's journal".into());
        return Event::Answered { vm, cmd, answer };
    };
    let Some(rec) = job.commands.iter().find(|r| r.id == cmd) else {
        return Event::NeverSent { vm, cmd };
    };
    let Some((command, _)) = crate::jobs::journaled_command(&rec.payload) else {
        // Unreadable: the agent's answer is still found by id.
        let answer = Answer::Unknown(format!("journaled command {cmd} unreadable"));
        return Event::Answered { vm, cmd, answer };
    };
    let r = c.settle(&rec.node, &command, FIND_OUT_WAIT).await;
    Event::Answered {
        vm,
        cmd,
        answer: answer(&r),
    }
}

async fn finish(
    c: &Coordinator,
    job: &Job,
    node: &str,
    m: &Drain,
    ending: Ending,
    summary: String,
) {
    let summary = super::name_the_deadline(c, &job.id, summary);
    let mut report = Report::default();
    for (vm, line) in m.report() {
        report.record(vm, line);
    }
    locate_not_done(c, &mut report);
    let state = match ending {
        Ending::Succeeded => JobState::Succeeded,
        Ending::Failed => JobState::Failed,
        Ending::Aborted => JobState::Aborted,
    };
    c.release_node(node, &job.id).await;
    c.jobs
        .finish_with(&job.id, state, summary, Some(report))
        .await;
}

/// Appends where each VM that was not done is now (per the inventories),
/// so the report says exactly where every VM is.
fn locate_not_done(c: &Coordinator, report: &mut Report) {
    for line in &mut report.not_done {
        let at = c
            .registry
            .find_vm(&line.vm)
            .iter()
            .map(|(n, v)| format!("{} ({:?})", n.name, v.state).to_lowercase())
            .collect::<Vec<_>>();
        if !at.is_empty() {
            line.detail = format!("{} [now on {}]", line.detail, at.join(", "));
        }
    }
}
