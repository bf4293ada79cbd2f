//! A job of one agent command (vm start, stop, move, create, vfw move,
//! node check) as a state machine.
//!
//! The command is journaled (phase `Sent`, its id a function of the job)
//! before it is sent, so a restarted coordinator knows whether it may have
//! gone out: a job resumed with no journaled command sends it now; one
//! resumed with the command journaled finds out what became of it (the
//! agent's results, re-sending the same id if it was never claimed). The
//! job succeeds only on the agent's `Done` answer: never because nothing
//! is left to do. A journal write that fails means the command is not
//! sent, and the job fails saying so.

use super::{Action, Answer, Ending, Invalid, StopReason};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Single {
    pub job: String,
    /// The VM the command is about (empty for a node check).
    pub vm: String,
    pub phase: Phase,
    /// The id of a command journaled before this engine existed (in the
    /// job's command list, by the executor it replaced); else derived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_cmd: Option<String>,
    #[serde(default)]
    pub stopping: Option<StopReason>,
    #[serde(default)]
    pub finished: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Nothing sent: the job has not journaled its command yet.
    Ready,
    /// Journaled and sent (or about to be: the journal came first).
    Sent,
    /// The outcome is unknown; finding out.
    FindingOut,
    Done(Outcome),
}

/// How the command ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The agent says it worked.
    Done(String),
    /// The agent says it did not (or refused it).
    Failed(String),
    /// Its journal entry could not be written: never sent.
    NotSent(String),
    /// Stopped before it was sent.
    Skipped(StopReason),
    /// Stopped while its outcome was unknown.
    Unknown(String),
}

impl Outcome {
    pub fn done(&self) -> bool {
        matches!(self, Outcome::Done(_))
    }

    pub fn detail(&self) -> String {
        match self {
            Outcome::Done(m) | Outcome::Failed(m) => m.clone(),
            Outcome::NotSent(e) => {
                format!("nothing was sent: the command could not be journaled ({e})")
            }
            Outcome::Skipped(r) => format!("nothing was sent ({r})"),
            Outcome::Unknown(m) => format!(
                "the command was sent, but its outcome is unknown ({m}); `vm list` shows \
                 what the agents report"
            ),
        }
    }
}

pub type Output = (Single, Vec<Action>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Start, or resume from the journaled state after a restart.
    Resume,
    /// The journal write of the step that would send the command failed:
    /// fed to the state before that step, whose send is not performed.
    NotJournaled(String),
    Answered(Answer),
    Stop(StopReason),
}

impl Single {
    pub fn new(job: &str, vm: &str) -> Single {
        Single {
            job: job.into(),
            vm: vm.into(),
            phase: Phase::Ready,
            legacy_cmd: None,
            stopping: None,
            finished: false,
        }
    }

    /// A job whose command the previous executor journaled (id `cmd`) but
    /// no machine: it may have gone out, so it is found out, never re-sent
    /// under another id.
    pub fn journaled(job: &str, vm: &str, cmd: &str) -> Single {
        Single {
            phase: Phase::Sent,
            legacy_cmd: Some(cmd.into()),
            ..Single::new(job, vm)
        }
    }

    /// The command's id: a function of the job, so that a resent command
    /// is the same command (agents execute an id once).
    pub fn command_id(&self) -> String {
        match &self.legacy_cmd {
            Some(id) => id.clone(),
            None => format!("{}-cmd", self.job),
        }
    }

    /// Pure: the next state and what to do, or why the event is refused.
    pub fn step(&self, event: Event) -> Result<Output, Invalid> {
        if self.finished {
            // Died between journaling the end and finishing the record:
            // a resume repeats the ending.
            return match event {
                Event::Resume => Ok((self.clone(), vec![self.finish()])),
                e => Err(Invalid(format!("job finished; {e:?} ignored"))),
            };
        }
        let mut s = self.clone();
        let mut out = Vec::new();
        let cmd = self.command_id();
        match (event, &self.phase) {
            (Event::Resume, Phase::Ready) => match &s.stopping {
                Some(r) => s.phase = Phase::Done(Outcome::Skipped(r.clone())),
                None => {
                    s.phase = Phase::Sent;
                    out.push(Action::SendCommand { cmd });
                }
            },
            // Journaled as sent: it may have gone out. Find out; never
            // send blindly, never assume.
            (Event::Resume, Phase::Sent | Phase::FindingOut) => {
                s.phase = Phase::FindingOut;
                out.push(Action::FindOut {
                    vm: s.vm.clone(),
                    cmd,
                });
            }
            (Event::NotJournaled(e), Phase::Ready) => {
                s.phase = Phase::Done(Outcome::NotSent(e));
            }
            (Event::Answered(a), Phase::Sent | Phase::FindingOut) => match a {
                Answer::Done(m) => s.phase = Phase::Done(Outcome::Done(m)),
                Answer::Failed(m) => s.phase = Phase::Done(Outcome::Failed(m)),
                Answer::Unknown(m) => match &s.stopping {
                    Some(r) if self.phase == Phase::FindingOut => {
                        s.phase = Phase::Done(Outcome::Unknown(format!("{m}; {r}")));
                    }
                    _ => {
                        if self.phase == Phase::Sent {
                            out.push(Action::Note {
                                vm: Some(s.vm.clone()).filter(|v| !v.is_empty()),
                                ok: None,
                                message: format!("outcome unknown ({m}); finding out"),
                            });
                        }
                        s.phase = Phase::FindingOut;
                        out.push(Action::FindOut {
                            vm: s.vm.clone(),
                            cmd,
                        });
                    }
                },
            },
            (Event::Stop(r), _) if self.stopping.is_none() => {
                match self.phase {
                    Phase::Ready => s.phase = Phase::Done(Outcome::Skipped(r.clone())),
                    Phase::FindingOut => s.phase = Phase::Done(Outcome::Unknown(format!("{r}"))),
                    // A command out is answered (a migration is cancelled by
                    // the driver; its answer says how it ended).
                    _ => {}
                }
                s.stopping = Some(r);
            }
            (e, p) => return Err(Invalid(format!("{e:?} while {p:?}"))),
        }
        if let Phase::Done(o) = &s.phase {
            out.push(Action::Note {
                vm: Some(s.vm.clone()).filter(|v| !v.is_empty()),
                ok: Some(o.done()),
                message: o.detail(),
            });
            s.finished = true;
            out.push(s.finish());
        }
        if s != *self {
            out.insert(0, Action::Journal);
        }
        Ok((s, out))
    }

    fn finish(&self) -> Action {
        let Phase::Done(o) = &self.phase else {
            unreachable!("finish of an unfinished job")
        };
        let ending = match (o, &self.stopping) {
            (Outcome::Done(_), _) => Ending::Succeeded,
            (_, Some(StopReason::Abort(_))) => Ending::Aborted,
            _ => Ending::Failed,
        };
        Action::Finish {
            ending,
            summary: o.detail(),
        }
    }

    /// The outcome once finished.
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.phase {
            Phase::Done(o) => Some(o),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ending(out: &[Action]) -> Option<Ending> {
        out.iter().find_map(|a| match a {
            Action::Finish { ending, .. } => Some(*ending),
            _ => None,
        })
    }

    fn started() -> Single {
        Single::new("j1", "vm1").step(Event::Resume).unwrap().0
    }

    #[test]
    fn journals_before_sending_with_an_id_of_the_job() {
        let (s, out) = Single::new("j1", "vm1").step(Event::Resume).unwrap();
        assert_eq!(
            out,
            [
                Action::Journal,
                Action::SendCommand {
                    cmd: "j1-cmd".into()
                }
            ]
        );
        assert_eq!(s.phase, Phase::Sent);
    }

    #[test]
    fn succeeds_only_on_a_done_answer() {
        let (s, out) = started()
            .step(Event::Answered(Answer::Done("vm1 started".into())))
            .unwrap();
        assert!(s.finished);
        assert_eq!(ending(&out), Some(Ending::Succeeded));
        let (_, out) = started()
            .step(Event::Answered(Answer::Failed("libvirt: no".into())))
            .unwrap();
        assert_eq!(ending(&out), Some(Ending::Failed));
    }

    /// The defect: a job resumed without a journaled command ended
    /// SUCCEEDED (`all(ok)` over no commands). Unjournaled means unsent:
    /// it is sent now.
    #[test]
    fn a_resumed_job_with_nothing_journaled_sends_its_command() {
        let fresh = Single::new("j1", "vm1");
        let (s, out) = fresh.step(Event::Resume).unwrap();
        assert!(out.contains(&Action::SendCommand {
            cmd: "j1-cmd".into()
        }));
        assert!(ending(&out).is_none() && !s.finished);
    }

    #[test]
    fn a_resumed_job_with_its_command_journaled_finds_out_and_never_resends_blindly() {
        let (s, out) = started().step(Event::Resume).unwrap();
        assert_eq!(
            out,
            [
                Action::Journal,
                Action::FindOut {
                    vm: "vm1".into(),
                    cmd: "j1-cmd".into()
                }
            ]
        );
        // Still unknown: ask again, as long as it takes.
        let (s, out) = s
            .step(Event::Answered(Answer::Unknown("node unreachable".into())))
            .unwrap();
        assert!(out.iter().any(|a| matches!(a, Action::FindOut { .. })));
        assert!(!s.finished);
        let (s, out) = s
            .step(Event::Answered(Answer::Done("vm1 started".into())))
            .unwrap();
        assert!(s.finished);
        assert_eq!(ending(&out), Some(Ending::Succeeded));
    }

    #[test]
    fn a_command_the_previous_executor_journaled_is_found_out_under_its_own_id() {
        let (s, out) = Single::journaled("j1", "vm1", "uuid-1")
            .step(Event::Resume)
            .unwrap();
        assert!(out.contains(&Action::FindOut {
            vm: "vm1".into(),
            cmd: "uuid-1".into()
        }));
        assert!(!out.iter().any(|a| matches!(a, Action::SendCommand { .. })));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(serde_json::from_value::<Single>(json).unwrap(), s);
    }

    #[test]
    fn an_unjournaled_command_is_not_sent_and_the_job_fails_saying_so() {
        let (s, out) = Single::new("j1", "vm1")
            .step(Event::NotJournaled("KV unavailable".into()))
            .unwrap();
        assert!(!out.iter().any(|a| matches!(a, Action::SendCommand { .. })));
        assert_eq!(ending(&out), Some(Ending::Failed));
        assert!(s.outcome().unwrap().detail().contains("nothing was sent"));
        // Only before sending: once journaled, a failure is not this event.
        assert!(started().step(Event::NotJournaled("late".into())).is_err());
    }

    #[test]
    fn a_stop_while_unknown_ends_without_success() {
        let (s, _) = started()
            .step(Event::Answered(Answer::Unknown("timeout".into())))
            .unwrap();
        let (s, out) = s
            .step(Event::Stop(StopReason::Abort("alice".into())))
            .unwrap();
        assert!(s.finished);
        assert_eq!(ending(&out), Some(Ending::Aborted));
        assert!(matches!(s.outcome(), Some(Outcome::Unknown(_))));
    }

    #[test]
    fn a_stop_while_sent_waits_for_the_answer() {
        let (s, out) = started().step(Event::Stop(StopReason::Deadline)).unwrap();
        assert!(!s.finished && ending(&out).is_none());
        let (_, out) = s
            .step(Event::Answered(Answer::Failed("cancelled".into())))
            .unwrap();
        assert_eq!(ending(&out), Some(Ending::Failed));
        let (s, _) = started()
            .step(Event::Stop(StopReason::Abort("bob".into())))
            .unwrap();
        let (_, out) = s
            .step(Event::Answered(Answer::Done("moved".into())))
            .unwrap();
        assert_eq!(ending(&out), Some(Ending::Succeeded), "it did happen");
    }

    #[test]
    fn duplicates_and_late_answers_are_refused_and_a_finished_job_repeats_its_end() {
        let s = Single::new("j1", "vm1");
        assert!(s.step(Event::Answered(Answer::Done("x".into()))).is_err());
        let (s, _) = started()
            .step(Event::Answered(Answer::Done("ok".into())))
            .unwrap();
        assert!(s.step(Event::Answered(Answer::Done("x".into()))).is_err());
        let (same, out) = s.step(Event::Resume).unwrap();
        assert_eq!(same, s);
        assert_eq!(out.len(), 1);
        assert_eq!(ending(&out), Some(Ending::Succeeded));
    }
}
