//! Driver of the one-command jobs ([`crate::engine::single`]: vm start,
//! stop, move, create, vfw move, node check). The command follows from the
//! job's spec ([`crate::jobs::JobSpec::command`]); this journals the machine into `Job.engine`
//! before sending it with an id of the job, finds out an unknown outcome,
//! and ends the job as the machine says. A move ends only once the
//! registry shows the VM where the agent put it (read-your-writes).

use crate::driver::enable::{find_out, journal};
use crate::driver::executor::stopped;
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

/// A one-command job, started or resumed from its journal.
pub async fn run(c: Arc<Coordinator>, job: Job) {
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
    let journaled = job
        .engine
        .clone()
        .and_then(|v| serde_json::from_value::<Single>(v).ok());
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
            if machine.phase == Phase::Ready {
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
