//! The engine's driver: performs a machine's actions against the registry,
//! the job journal and the agents, and feeds back what happened. Thin on
//! purpose: every decision is in `crate::engine`, where the simulator
//! checks it; here is only I/O.

use crate::driver::executor::{describe, record_stopped};
use crate::engine::stop_all::{Event, StopAll};
use crate::engine::{Action, Answer, Ending, StopReason};
use crate::jobs::{Job, JobState, Report};
use crate::server::Coordinator;
use nodemaint_proto::bus;
use nodemaint_proto::model::{VmKind, VmState};
use nodemaint_proto::pb::{self, agent_command::Kind, error::Code};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// VMs stopped at once by stop all.
const STOP_PARALLEL: usize = 4;
/// How long one find-out waits for the agent before the engine asks again.
pub(crate) const FIND_OUT_WAIT: Duration = Duration::from_secs(30);

/// What a command's result means to the engine.
pub(crate) fn answer(r: &pb::CommandResult) -> Answer {
    match (r.ok, r.error.as_ref().map(|e| e.code)) {
        (true, _) => Answer::Done(describe(r)),
        (false, Some(c)) if c == Code::OutcomeUnknown as i32 => Answer::Unknown(describe(r)),
        (false, _) => Answer::Failed(describe(r)),
    }
}

pub(crate) fn stop_reason(reason: String) -> StopReason {
    if reason.starts_with("deadline") {
        StopReason::Deadline
    } else {
        StopReason::Abort(reason)
    }
}

/// Stop all (maintenance `--mode stop`), started or resumed: the machine
/// comes from the job's journal when there is one.
pub async fn stop_all(c: Arc<Coordinator>, job: Job) {
    let node = job.node.clone().unwrap_or_default();
    let journaled = job
        .engine
        .clone()
        .and_then(|v| serde_json::from_value::<StopAll>(v).ok());
    let mut machine = match journaled {
        Some(m) => m,
        None => {
            let rec = c.registry.get(&node).unwrap_or_default();
            let running: Vec<(String, bool)> = rec
                .domains
                .iter()
                .filter(|d| matches!(d.state, VmState::Running | VmState::Paused))
                .map(|d| (d.name.clone(), d.kind == VmKind::Vfw))
                .collect();
            StopAll::new(&job.id, &node, STOP_PARALLEL, &running)
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut stops = c.stops.watch(&job.id);
    let mut stop_fed = false;
    let mut next = Some(Event::Resume);
    loop {
        let event = match next.take() {
            Some(e) => e,
            // A machine journaled as finished still gets its Resume (which
            // repeats the ending: the job record may not have it yet).
            None if machine.finished => return,
            None => tokio::select! {
                Some(e) = rx.recv() => e,
                reason = crate::driver::executor::stopped(&mut stops), if !stop_fed => {
                    stop_fed = true;
                    Event::Stop(stop_reason(reason))
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
            // Not journaled: nothing of this step happens. The record is
            // gone (permanent), so the job cannot go on.
            tracing::error!(job = %job.id, "job record unwritable; stop-all halted");
            return;
        }
        machine = state;
        for a in actions {
            perform(&c, &job, &node, &machine, a, &tx).await;
        }
    }
}

/// Writes the machine's state into the job, waiting out an unavailable KV
/// store; false only when the job record is gone.
pub(crate) async fn journal(c: &Coordinator, job: &str, state: &impl serde::Serialize) -> bool {
    let value = serde_json::to_value(state).expect("serializable");
    let mut backoff = bus::Backoff::default();
    loop {
        if c.jobs
            .update(job, |j| j.engine = Some(value.clone()))
            .await
            .is_some()
        {
            return true;
        }
        if c.jobs.vanished(job).await {
            return false;
        }
        tracing::warn!(
            job,
            "cannot journal the job's state; waiting for the jobs bucket"
        );
        backoff.wait().await;
    }
}

async fn perform(
    c: &Arc<Coordinator>,
    job: &Job,
    node: &str,
    m: &StopAll,
    a: Action,
    tx: &mpsc::UnboundedSender<Event>,
) {
    let stop = |vm: &str| {
        Kind::Stop(pb::StopVm {
            vm: vm.to_string(),
            graceful_timeout_s: c.cfg.stop_graceful_timeout_s,
        })
    };
    match a {
        Action::Journal => {}
        Action::Record { vm } => {
            let result = record_stopped(c, node, &vm, Some(&job.id)).await;
            let _ = tx.send(Event::Recorded { vm, result });
        }
        Action::Unrecord { vm } => {
            if let Err(e) = record_stopped(c, node, &vm, None).await {
                tracing::warn!(node, %vm, error = %e, "record left (enable skips a running VM)");
            }
        }
        Action::SendStop { vm, cmd } => {
            let (c, job, node, tx, kind) = (
                c.clone(),
                job.clone(),
                node.to_string(),
                tx.clone(),
                stop(&vm),
            );
            c.jobs
                .step(&job.id, Some(&vm), None, format!("stopping {vm}"))
                .await;
            tokio::spawn(async move {
                let r = c.run_command_as(&cmd, &job, &node, &vm, None, kind).await;
                let _ = tx.send(Event::Answered {
                    vm,
                    answer: answer(&r),
                });
            });
        }
        Action::FindOut { vm, cmd } => {
            let command = pb::AgentCommand {
                id: cmd,
                op_id: job.id.clone(),
                requested_by: job.user.clone(),
                kind: Some(stop(&vm)),
                ..Default::default()
            };
            let (c, node, tx) = (c.clone(), node.to_string(), tx.clone());
            tokio::spawn(async move {
                let r = c.settle(&node, &command, FIND_OUT_WAIT).await;
                let _ = tx.send(Event::Answered {
                    vm,
                    answer: answer(&r),
                });
            });
        }
        Action::Note { vm, ok, message } => c.jobs.step(&job.id, vm.as_deref(), ok, message).await,
        a @ (Action::SendStart { .. } | Action::SendCommand { .. }) => {
            tracing::error!(job = %job.id, action = ?a, "not a stop-all action; ignored")
        }
        Action::Finish { ending, summary } => {
            let summary = super::name_the_deadline(c, &job.id, summary);
            let mut report = Report::default();
            for (vm, o) in m.outcomes() {
                let detail = o.detail(vm, node);
                report.record(
                    vm.to_string(),
                    if o.done() { Ok(detail) } else { Err(detail) },
                );
            }
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
    }
}
