//! Driver of the one-command jobs ([`crate::engine::single`]: vm start,
//! stop, move, create, vfw move, node check). The command follows from the
//! job's spec ([`crate::jobs::JobSpec::command`]); this journals the machine into `Job.engine`
//! before sending it with an id of the job, finds out an unknown outcome,
//! and ends the job as the machine says. A move ends only once the
//! registry shows the VM where the agent put it (read-your-writes).

use crate::driver::enable::{find_out, journal};
use crate::driver::executor::{command_record, stopped};
use crate::driver::slots::Priority;
use crate::driver::stop_all::{answer, stop_reason};
use crate::engine::single::{Event, Phase, Single};
use crate::engine::{Action, Answer, Ending};
use crate::jobs::{Job, JobSpec, JobState};
use crate::server::Coordinator;
use nodemaint_proto::pb::{self, agent_command::Kind};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the write that journals the command may take before the
/// command is given up as not sent.
const SEND_JOURNAL_WITHIN: Duration = Duration::from_secs(20);

/// Where the command goes, about which VM, and the command.
struct Prepared {
    node: String,
    vm: String,
    to: Option<String>,
    kind: Kind,
}

fn prepared(job: &Job) -> Option<Prepared> {
    let (node, kind) = job.spec.command(job.node.as_deref().unwrap_or_default())?;
    let to = match &job.spec {
        JobSpec::Move(m) => Some(m.to.clone()),
        JobSpec::Create(c) => Some(c.to.clone()),
        _ => None,
    };
    Some(Prepared {
        node,
        vm: job.spec.vm().unwrap_or_default().to_string(),
        to,
        kind,
    })
}

/// Journals a new job's first step in the job itself, before it is
/// recorded: the machine as it is once the command is sent (phase `Sent`)
/// and, for a command that lands no VM, its entry in the command list. The
/// record then allows the send, so the driver sends at once instead of
/// writing the journal first (two round trips each); a job resumed after a
/// restart finds the command out like any sent one. A command that lands a
/// VM (create, move) is journaled by the send as before, after the
/// destination's claim that a refusal must leave unsent.
pub fn prejournal(job: &mut Job) {
    let Some(cmd) = prepared(job) else { return };
    let Ok((state, actions)) = Single::new(&job.id, &cmd.vm).step(Event::Resume) else {
        return;
    };
    let [Action::Journal, Action::SendCommand { cmd: id }] = actions.as_slice() else {
        return;
    };
    if !matches!(cmd.kind, Kind::Migrate(_) | Kind::Define(_)) {
        let (_, rec) = command_record(
            id,
            job,
            &cmd.node,
            &cmd.vm,
            cmd.to.as_deref(),
            cmd.kind.clone(),
        );
        job.commands.push(rec);
    }
    job.engine = Some(serde_json::to_value(&state).expect("serializable"));
}

/// A one-command job, started or resumed from its journal.
pub async fn run(c: Arc<Coordinator>, job: Job, resumed: bool) {
    let Some(cmd) = prepared(&job) else {
        // External input (the jobs bucket): a job without a readable
        // command cannot have sent one.
        return c
            .jobs
            .finish(
                &job.id,
                JobState::Failed,
                "nothing was sent: the job has no readable command".into(),
            )
            .await;
    };
    let cmd = Arc::new(cmd);
    let mut journaled = job
        .engine
        .clone()
        .and_then(|v| serde_json::from_value::<Single>(v).ok());
    // A new job recorded with its first step ([`prejournal`]): that step
    // is taken again, without writing what the record already holds.
    let mut prejournaled = false;
    if let (false, Some(m)) = (resumed, &journaled) {
        let fresh = Single::new(&job.id, &cmd.vm);
        prejournaled = fresh.step(Event::Resume).is_ok_and(|(s, _)| s == *m);
        if prejournaled {
            journaled = Some(fresh);
        }
    }
    let mut machine = match (journaled, job.commands.last()) {
        (Some(m), _) => m,
        // Journaled by the executor this driver replaced (a job older than
        // the upgrade): find out what became of that command.
        (None, Some(old)) => Single::journaled(&job.id, &cmd.vm, &old.id),
        // Nothing journaled, so nothing sent: it is sent now.
        (None, None) => Single::new(&job.id, &cmd.vm),
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<(Event, Option<pb::CommandResult>)>();
    let mut stops = c.stops.watch(&job.id);
    let mut stop_fed = false;
    let mut last: Option<pb::CommandResult> = None;
    let mut next = Some(Event::Resume);
    loop {
        let event = match next.take() {
            Some(e) => e,
            None if machine.finished => return,
            None => tokio::select! {
                Some((e, r)) = rx.recv() => {
                    last = r.or(last);
                    e
                }
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
        if actions.first() == Some(&Action::Journal) {
            if std::mem::take(&mut prejournaled) {
                // Written by the job's creation.
            } else if machine.phase == Phase::Ready {
                // This write is what allows the send: if it cannot be made
                // in time, the command is not sent and the job says so.
                if let Err(e) = journal_within(&c, &job.id, &state).await {
                    let Ok((failed, actions)) = machine.step(Event::NotJournaled(e)) else {
                        return;
                    };
                    machine = failed;
                    for a in actions {
                        perform(&c, &job, &cmd, &machine, a, &tx, &last).await;
                    }
                    return;
                }
            } else if !journal(&c, &job.id, &state).await {
                tracing::error!(job = %job.id, "job record unwritable; {} halted", job.kind());
                return;
            }
        }
        machine = state;
        for a in actions {
            perform(&c, &job, &cmd, &machine, a, &tx, &last).await;
        }
    }
}

/// One attempt series at journaling, bounded in time.
async fn journal_within(c: &Coordinator, job: &str, state: &Single) -> Result<(), String> {
    let write = journal(c, job, state);
    match tokio::time::timeout(SEND_JOURNAL_WITHIN, write).await {
        Ok(true) => Ok(()),
        Ok(false) => Err("the job record is gone".into()),
        Err(_) => Err(format!(
            "the jobs bucket took no write within {} s",
            SEND_JOURNAL_WITHIN.as_secs()
        )),
    }
}

async fn perform(
    c: &Arc<Coordinator>,
    job: &Job,
    cmd: &Arc<Prepared>,
    m: &Single,
    a: Action,
    tx: &mpsc::UnboundedSender<(Event, Option<pb::CommandResult>)>,
    last: &Option<pb::CommandResult>,
) {
    match a {
        // Performed by the loop.
        Action::Journal => {}
        Action::SendCommand { cmd: id } => {
            let (c, job, p, tx) = (c.clone(), job.clone(), cmd.clone(), tx.clone());
            tokio::spawn(async move {
                let r = match p.kind.clone() {
                    kind @ Kind::Migrate(_) => {
                        match c
                            .migrate_one_as(&id, &job, &p.node, kind, Priority::Manual)
                            .await
                        {
                            Ok(r) => r,
                            // Stopped while waiting for a migration slot.
                            Err(reason) => {
                                let why = format!("{} not moved: {reason}", p.vm);
                                let _ = tx.send((Event::Answered(Answer::Failed(why)), None));
                                return;
                            }
                        }
                    }
                    kind => {
                        c.run_command_as(&id, &job, &p.node, &p.vm, p.to.as_deref(), kind)
                            .await
                    }
                };
                let _ = tx.send((Event::Answered(answer(&r)), Some(r)));
            });
        }
        Action::FindOut { cmd: id, .. } => {
            let (c, job, p, tx) = (c.clone(), job.clone(), cmd.clone(), tx.clone());
            tokio::spawn(async move {
                let r = find_out(&c, &job, &p.node, id, p.kind.clone()).await;
                let _ = tx.send((Event::Answered(answer(&r)), Some(r)));
            });
        }
        Action::Note { vm, ok, message } => c.jobs.step(&job.id, vm.as_deref(), ok, message).await,
        Action::Finish { ending, summary } => {
            // Read-your-writes for the operator: the job ends once the
            // registry shows the VM where the agent says it is (a `vm list`
            // or a next move right after the command sees it).
            if let (Ending::Succeeded, Some(r)) = (ending, last) {
                if !r.vm.is_empty() && !r.vm_node.is_empty() {
                    c.wait_placed(&[(r.vm.clone(), r.vm_node.clone())]).await;
                }
            }
            let state = match ending {
                Ending::Succeeded => JobState::Succeeded,
                Ending::Failed => JobState::Failed,
                Ending::Aborted => JobState::Aborted,
            };
            tracing::debug!(job = %job.id, phase = ?m.phase, "single-command job ends");
            c.jobs.finish(&job.id, state, summary).await;
        }
        a @ (Action::Record { .. }
        | Action::Unrecord { .. }
        | Action::SendStop { .. }
        | Action::SendStart { .. }) => {
            tracing::error!(job = %job.id, action = ?a, "not a single-job action; ignored")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{MoveVm, StartVm};

    /// The record a new job is created with allows the send (journal before
    /// send), and a restart that finds it finds the command out instead of
    /// sending it blindly.
    #[test]
    fn a_new_job_is_recorded_with_its_command_journaled_as_sent() {
        let spec = JobSpec::Start(StartVm { vm: "vm1".into() });
        let mut job = Job::new(spec, "alice", Some("node1"));
        let plain = job.clone();
        prejournal(&mut job);
        let m: Single = serde_json::from_value(job.engine.clone().expect("journaled")).unwrap();
        assert_eq!(m.phase, Phase::Sent);
        // What the send would have journaled: the send finds it and writes
        // nothing more.
        let kind = Kind::Start(pb::StartVm { vm: "vm1".into() });
        let (_, rec) = command_record(&m.command_id(), &plain, "node1", "vm1", None, kind);
        assert_eq!(job.commands, vec![rec]);
        let (_, actions) = m.step(Event::Resume).unwrap();
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::FindOut { cmd, .. } if *cmd == m.command_id())));
        assert!(!actions
            .iter()
            .any(|a| matches!(a, Action::SendCommand { .. })));
    }

    /// A move's command is journaled by its send, after the destination's
    /// claim: a refused claim must leave no command entry behind.
    #[test]
    fn a_landing_command_is_left_to_the_send_to_journal() {
        let spec = JobSpec::Move(MoveVm {
            vm: "vm1".into(),
            from: "node1".into(),
            to: "node2".into(),
            ..Default::default()
        });
        let mut job = Job::new(spec, "alice", Some("node1"));
        prejournal(&mut job);
        assert!(job.commands.is_empty());
        let m: Single = serde_json::from_value(job.engine.clone().expect("journaled")).unwrap();
        assert_eq!(m.phase, Phase::Sent);
    }
}
