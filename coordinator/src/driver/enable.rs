//! Driver of enable and start-stopped ([`crate::engine::enable`]): journals
//! the machine into `Job.engine` before acting, starts VMs through the
//! agents, finds out unknown outcomes, drops `stopped_by` records when the
//! machine says so. Every decision is in the engine.

use crate::driver::executor::{describe, record_stopped, shut_off, stopped};
use crate::driver::stop_all::{answer, stop_reason, FIND_OUT_WAIT};
use crate::engine::enable::{Enable, Event, Found, Which};
use crate::engine::{Action, Ending};
use crate::jobs::{Job, JobState, Report};
use crate::server::Coordinator;
use nodemaint_proto::bus;
use nodemaint_proto::model::{NodeRecord, VmKind, VmState};
use nodemaint_proto::pb::{self, agent_command::Kind};
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The machine for a new job, from the node's record: the VMs maintenance
/// recorded (enable) or the shut-off ones (start-stopped), each with what
/// the inventory says of it.
pub fn machine(job: &str, rec: &NodeRecord, which: Which) -> Enable {
    let names: Vec<String> = match which {
        Which::Enable => rec.stopped_by.keys().cloned().collect(),
        Which::StartStopped => shut_off(rec),
    };
    let vms: Vec<(String, bool, Found)> = names
        .into_iter()
        .map(|name| {
            let d = rec.domains.iter().find(|d| d.name == name);
            let found = match d.map(|d| d.state) {
                None => Found::Gone,
                Some(VmState::Running) => Found::Running,
                Some(_) => Found::ShutOff,
            };
            let vfw = d.is_some_and(|d| d.kind == VmKind::Vfw);
            (name, vfw, found)
        })
        .collect();
    Enable::new(job, &rec.name, which, &vms)
}

/// Enable or start-stopped, started or resumed: the machine comes from the
/// job's journal when there is one, else from a fresh inventory.
pub async fn run(c: Arc<Coordinator>, job: Job, resumed: bool, which: Which) {
    let node = job.node.clone().unwrap_or_default();
    let journaled = job
        .engine
        .clone()
        .and_then(|v| serde_json::from_value::<Enable>(v).ok());
    let mut machine = match journaled {
        Some(m) => m,
        None => {
            if resumed {
                // Nothing journaled, so nothing started: decide on a
                // current inventory.
                let _ = c.fresh_inventory(&node).await;
            }
            let mut rec = c.registry.get(&node).unwrap_or_default();
            rec.name = node.clone();
            machine(&job.id, &rec, which)
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut stops = c.stops.watch(&job.id);
    let mut stop_fed = false;
    let mut next = Some(Event::Resume);
    loop {
        let event = match next.take() {
            Some(e) => e,
            None if machine.finished => return,
            None => tokio::select! {
                Some(e) = rx.recv() => e,
                reason = stopped(&mut stops), if !stop_fed => {
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
            tracing::error!(job = %job.id, "job record unwritable; {} halted", job.kind());
            return;
        }
        machine = state;
        for a in actions {
            perform(&c, &job, &node, &machine, a, &tx).await;
        }
    }
}

/// Writes an engine's state into the job, waiting out an unavailable KV
/// store; false only when the job record is gone.
pub(crate) async fn journal<T: Serialize>(c: &Coordinator, job: &str, state: &T) -> bool {
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

/// Finds out a journaled command's outcome (the agent's results, the same
/// id re-sent if never claimed) and notes it in the job's command list.
pub(crate) async fn find_out(
    c: &Coordinator,
    job: &Job,
    node: &str,
    cmd: String,
    kind: Kind,
) -> pb::CommandResult {
    let command = pb::AgentCommand {
        id: cmd.clone(),
        op_id: job.id.clone(),
        requested_by: job.user.clone(),
        kind: Some(kind),
        ..Default::default()
    };
    let r = c.settle(node, &command, FIND_OUT_WAIT).await;
    if let crate::engine::Answer::Done(_) | crate::engine::Answer::Failed(_) = answer(&r) {
        let (ok, msg) = (r.ok, describe(&r));
        c.jobs
            .update(&job.id, |j| {
                if let Some(rec) = j.commands.iter_mut().find(|rec| rec.id == cmd) {
                    rec.ok = Some(ok);
                    rec.message = Some(msg.clone());
                }
            })
            .await;
    }
    r
}

async fn perform(
    c: &Arc<Coordinator>,
    job: &Job,
    node: &str,
    m: &Enable,
    a: Action,
    tx: &mpsc::UnboundedSender<Event>,
) {
    let start = |vm: &str| Kind::Start(pb::StartVm { vm: vm.to_string() });
    match a {
        Action::Journal => {}
        Action::SendStart { vm, cmd } => {
            c.jobs
                .step(&job.id, Some(&vm), None, format!("starting {vm}"))
                .await;
            let (c, job, node, tx, kind) = (
                c.clone(),
                job.clone(),
                node.to_string(),
                tx.clone(),
                start(&vm),
            );
            tokio::spawn(async move {
                let r = c.run_command_as(&cmd, &job, &node, &vm, None, kind).await;
                let _ = tx.send(Event::Answered {
                    vm,
                    answer: answer(&r),
                });
            });
        }
        Action::FindOut { vm, cmd } => {
            let (c, job, node, tx, kind) = (
                c.clone(),
                job.clone(),
                node.to_string(),
                tx.clone(),
                start(&vm),
            );
            tokio::spawn(async move {
                let r = find_out(&c, &job, &node, cmd, kind).await;
                let _ = tx.send(Event::Answered {
                    vm,
                    answer: answer(&r),
                });
            });
        }
        Action::Unrecord { vm } => {
            // The VM runs: a record left behind would make the next drain
            // skip it as "stopped by maintenance", so the write is retried
            // while the registry is unavailable.
            let mut backoff = bus::Backoff::default();
            for attempt in 1.. {
                match record_stopped(c, node, &vm, None).await {
                    Ok(()) => break,
                    Err(e) if attempt >= 12 || c.registry.get(node).is_none() => {
                        tracing::error!(node, %vm, error = %e, "running, but its record stays:                             `vm list` shows it; a drain leaves it in place");
                        c.jobs
                            .step(
                                &job.id,
                                Some(&vm),
                                Some(false),
                                format!(
                                "{vm} runs, but its stopped_by record could not be removed ({e})"
                            ),
                            )
                            .await;
                        break;
                    }
                    Err(_) => backoff.wait().await,
                }
            }
        }
        Action::Note { vm, ok, message } => c.jobs.step(&job.id, vm.as_deref(), ok, message).await,
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
        a @ (Action::Record { .. } | Action::SendStop { .. } | Action::SendCommand { .. }) => {
            tracing::error!(job = %job.id, action = ?a, "not an enable action; ignored")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodemaint_proto::model::Vm;

    #[test]
    fn the_machine_takes_the_recorded_or_shut_off_vms_as_the_inventory_shows_them() {
        let vm = |name: &str, kind, state| Vm {
            name: name.into(),
            kind,
            state,
            ..Default::default()
        };
        let mut rec = NodeRecord {
            name: "n1".into(),
            domains: vec![
                vm("a", VmKind::User, VmState::Shutoff),
                vm("cs1-vfw", VmKind::Vfw, VmState::Shutoff),
                vm("up", VmKind::User, VmState::Running),
                vm("tenant-off", VmKind::User, VmState::Shutoff),
            ],
            ..Default::default()
        };
        for v in ["a", "cs1-vfw", "up", "ghost"] {
            rec.stopped_by.insert(v.into(), "j0".into());
        }
        let m = machine("j1", &rec, Which::Enable);
        let got: Vec<(&str, bool, Found)> = m
            .vms
            .iter()
            .map(|t| (t.vm.as_str(), t.vfw, t.found))
            .collect();
        assert_eq!(
            got,
            [
                ("cs1-vfw", true, Found::ShutOff),
                ("a", false, Found::ShutOff),
                ("ghost", false, Found::Gone),
                ("up", false, Found::Running),
            ]
        );
        let m = machine("j1", &rec, Which::StartStopped);
        let names: Vec<&str> = m.vms.iter().map(|t| t.vm.as_str()).collect();
        assert_eq!(names, ["cs1-vfw", "a", "tenant-off"]);
    }
}
