//! Stop all (maintenance `--mode stop`) as a state machine.
//!
//! Per VM: record it in the node's `stopped_by` (so that `enable` restarts
//! it), then stop it. The record goes only when the agent answers that the
//! stop failed; an unknown outcome is found out, as long as it takes (an
//! abort ends the wait and leaves the record, so a stop that lands later
//! is still restarted by enable). User VMs first, VFWs last, at most
//! `parallel` VMs in flight.

use super::{Action, Answer, Ending, Invalid, StopReason};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopAll {
    pub job: String,
    pub node: String,
    pub parallel: usize,
    pub vms: Vec<VmTask>,
    #[serde(default)]
    pub stopping: Option<StopReason>,
    #[serde(default)]
    pub finished: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmTask {
    pub vm: String,
    pub vfw: bool,
    pub phase: Phase,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Waiting,
    /// The `stopped_by` record is being written.
    Recording,
    /// Recorded; the stop command is out.
    Stopping,
    /// The stop's outcome is unknown; finding out.
    FindingOut,
    Done(VmOutcome),
}

/// What became of one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmOutcome {
    /// Stopped and recorded: `enable` restarts it.
    Stopped(String),
    /// The agent says the stop failed: still running, not recorded.
    NotStopped(String),
    /// The record could not be written, so it was not stopped.
    NotRecorded(String),
    /// Not attempted (the job was stopped first): still running.
    Skipped(StopReason),
    /// The job ended before the stop's outcome was known: recorded, so
    /// that `enable` restarts it if the stop landed.
    Unknown(String),
}

impl VmOutcome {
    pub fn done(&self) -> bool {
        matches!(self, VmOutcome::Stopped(_))
    }

    pub fn detail(&self, vm: &str, node: &str) -> String {
        match self {
            VmOutcome::Stopped(m) => format!("stopped and recorded ({m})"),
            VmOutcome::NotStopped(m) => format!("not stopped: {m}; still running on {node}"),
            VmOutcome::NotRecorded(m) => {
                format!("not stopped: cannot record it as stopped by maintenance ({m})")
            }
            VmOutcome::Skipped(r) => format!("not stopped ({r}); still running"),
            VmOutcome::Unknown(m) => format!(
                "outcome of the stop unknown ({m}); {vm} stays recorded, so that \
                 `node enable {node}` restarts it if it did stop"
            ),
        }
    }
}

pub type Output = (StopAll, Vec<Action>);

/// Events a stop-all job reacts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Start, or resume from the journaled state after a restart.
    Resume,
    Recorded {
        vm: String,
        result: Result<(), String>,
    },
    Answered {
        vm: String,
        answer: Answer,
    },
    Stop(StopReason),
}

impl StopAll {
    /// A new job over the node's running VMs (`(name, is_vfw)`).
    pub fn new(job: &str, node: &str, parallel: usize, running: &[(String, bool)]) -> StopAll {
        let mut vms: Vec<VmTask> = running
            .iter()
            .map(|(vm, vfw)| VmTask {
                vm: vm.clone(),
                vfw: *vfw,
                phase: Phase::Waiting,
            })
            .collect();
        vms.sort_by(|a, b| (a.vfw, &a.vm).cmp(&(b.vfw, &b.vm)));
        StopAll {
            job: job.into(),
            node: node.into(),
            parallel: parallel.max(1),
            vms,
            stopping: None,
            finished: false,
        }
    }

    /// The stop command's id of the VM at `index`: a function of the job,
    /// so a resent command is the same command (agents execute an id once).
    pub fn command_id(&self, index: usize) -> String {
        format!("{}-stop{index}", self.job)
    }

    fn index(&self, vm: &str) -> Result<usize, Invalid> {
        self.vms
            .iter()
            .position(|t| t.vm == vm)
            .ok_or_else(|| Invalid(format!("{vm} is not part of this job")))
    }

    /// Pure: the next state and what to do, or why the event is refused.
    pub fn step(&self, event: Event) -> Result<Output, Invalid> {
        if self.finished {
            // The coordinator may have died between the journal and the
            // job's end: a resume repeats the ending, nothing else.
            return match event {
                Event::Resume => Ok((self.clone(), vec![self.finish()])),
                e => Err(Invalid(format!("job finished; {e:?} ignored"))),
            };
        }
        let mut s = self.clone();
        let mut out = Vec::new();
        match event {
            Event::Resume => {
                // What was in flight when the journal was written: do it again
                // (recording is idempotent; a stop is found out, never re-run
                // blindly).
                for i in 0..s.vms.len() {
                    let t = &s.vms[i];
                    match t.phase {
                        Phase::Recording => out.push(Action::Record { vm: t.vm.clone() }),
                        Phase::Stopping | Phase::FindingOut => {
                            let (vm, cmd) = (t.vm.clone(), s.command_id(i));
                            s.vms[i].phase = Phase::FindingOut;
                            out.push(Action::FindOut { vm, cmd });
                        }
                        _ => {}
                    }
                }
            }
            Event::Recorded { vm, result } => {
                let i = s.index(&vm)?;
                if s.vms[i].phase != Phase::Recording {
                    return Err(Invalid(format!(
                        "{vm}: record answer while {:?}",
                        s.vms[i].phase
                    )));
                }
                match result {
                    Ok(()) if s.stopping.is_some() => {
                        // Recorded but never stopped: the record goes again.
                        let reason = s.stopping.clone().expect("checked");
                        s.vms[i].phase = Phase::Done(VmOutcome::Skipped(reason));
                        out.push(Action::Unrecord { vm: vm.clone() });
                    }
                    Ok(()) => {
                        s.vms[i].phase = Phase::Stopping;
                        out.push(Action::SendStop {
                            vm: vm.clone(),
                            cmd: s.command_id(i),
                        });
                    }
                    Err(e) => s.vms[i].phase = Phase::Done(VmOutcome::NotRecorded(e)),
                }
            }
            Event::Answered { vm, answer } => {
                let i = s.index(&vm)?;
                if !matches!(s.vms[i].phase, Phase::Stopping | Phase::FindingOut) {
                    return Err(Invalid(format!(
                        "{vm}: stop answer while {:?}",
                        s.vms[i].phase
                    )));
                }
                match answer {
                    Answer::Done(m) => s.vms[i].phase = Phase::Done(VmOutcome::Stopped(m)),
                    Answer::Failed(m) => {
                        s.vms[i].phase = Phase::Done(VmOutcome::NotStopped(m));
                        out.push(Action::Unrecord { vm: vm.clone() });
                    }
                    Answer::Unknown(m) => match &s.stopping {
                        Some(reason) if s.vms[i].phase == Phase::FindingOut => {
                            s.vms[i].phase =
                                Phase::Done(VmOutcome::Unknown(format!("{m}; {reason}")));
                        }
                        _ => {
                            if s.vms[i].phase == Phase::Stopping {
                                out.push(Action::Note {
                                    vm: Some(vm.clone()),
                                    ok: None,
                                    message: format!(
                                        "{vm}: outcome of the stop unknown ({m}); finding out"
                                    ),
                                });
                            }
                            s.vms[i].phase = Phase::FindingOut;
                            out.push(Action::FindOut {
                                vm: vm.clone(),
                                cmd: s.command_id(i),
                            });
                        }
                    },
                }
            }
            Event::Stop(reason) => {
                if s.stopping.is_some() {
                    return Err(Invalid("already stopping".into()));
                }
                for t in &mut s.vms {
                    match t.phase {
                        Phase::Waiting => t.phase = Phase::Done(VmOutcome::Skipped(reason.clone())),
                        // No answer is coming that the wait would change.
                        Phase::FindingOut => {
                            t.phase = Phase::Done(VmOutcome::Unknown(format!("{reason}")))
                        }
                        _ => {}
                    }
                }
                s.stopping = Some(reason);
            }
        }
        // Notes for VMs that just ended.
        for (before, after) in self.vms.iter().zip(&s.vms) {
            if let (false, Phase::Done(o)) = (matches!(before.phase, Phase::Done(_)), &after.phase)
            {
                out.push(Action::Note {
                    vm: Some(after.vm.clone()),
                    ok: Some(o.done()),
                    message: format!("{}: {}", after.vm, o.detail(&after.vm, &s.node)),
                });
            }
        }
        s.schedule(&mut out);
        if s.vms.iter().all(|t| matches!(t.phase, Phase::Done(_))) {
            s.finished = true;
            out.push(s.finish());
        }
        if s != *self {
            out.insert(0, Action::Journal);
        }
        Ok((s, out))
    }

    fn in_flight(&self) -> usize {
        self.vms
            .iter()
            .filter(|t| {
                matches!(
                    t.phase,
                    Phase::Recording | Phase::Stopping | Phase::FindingOut
                )
            })
            .count()
    }

    /// Starts waiting VMs up to the parallelism (user VMs first: the list
    /// is sorted so).
    fn schedule(&mut self, out: &mut Vec<Action>) {
        if self.stopping.is_some() {
            return;
        }
        while self.in_flight() < self.parallel {
            let Some(t) = self.vms.iter_mut().find(|t| t.phase == Phase::Waiting) else {
                return;
            };
            t.phase = Phase::Recording;
            out.push(Action::Record { vm: t.vm.clone() });
        }
    }

    fn finish(&self) -> Action {
        let stopped = self.outcomes().filter(|(_, o)| o.done()).count();
        let not: Vec<&str> = self
            .outcomes()
            .filter(|(_, o)| !o.done())
            .map(|(vm, _)| vm)
            .collect();
        let node = &self.node;
        let ending = match (&self.stopping, not.is_empty()) {
            (Some(StopReason::Abort(_)), _) => Ending::Aborted,
            (_, true) => Ending::Succeeded,
            (_, false) => Ending::Failed,
        };
        let summary = if not.is_empty() {
            format!(
                "{node}: {stopped} VMs stopped and recorded; `node enable {node}` restarts them"
            )
        } else {
            format!(
                "{node}: {stopped} stopped, {} not ({}); the node stays in maintenance",
                not.len(),
                not.join(", ")
            )
        };
        let summary = match &self.stopping {
            Some(r) => format!("stopped: {r}. {summary}"),
            None => summary,
        };
        Action::Finish { ending, summary }
    }

    /// Each VM that ended, with its outcome.
    pub fn outcomes(&self) -> impl Iterator<Item = (&str, &VmOutcome)> {
        self.vms.iter().filter_map(|t| match &t.phase {
            Phase::Done(o) => Some((t.vm.as_str(), o)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(names: &[(&str, bool)]) -> StopAll {
        let running: Vec<(String, bool)> = names.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        StopAll::new("j1", "n1", 2, &running)
    }

    fn records(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Record { vm } => Some(vm.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn records_before_stopping_user_vms_first_within_the_parallelism() {
        let s = job(&[("cs1-vfw", true), ("b", false), ("a", false)]);
        let (s, out) = s.step(Event::Resume).unwrap();
        assert_eq!(out[0], Action::Journal);
        assert_eq!(records(&out), ["a", "b"]);
        let (s, out) = s
            .step(Event::Recorded {
                vm: "a".into(),
                result: Ok(()),
            })
            .unwrap();
        assert!(out.contains(&Action::SendStop {
            vm: "a".into(),
            cmd: "j1-stop0".into()
        }));
        // The VFW waits until a slot frees.
        assert!(records(&out).is_empty());
        let (_, out) = s
            .step(Event::Answered {
                vm: "a".into(),
                answer: Answer::Done("shut off".into()),
            })
            .unwrap();
        assert_eq!(records(&out), ["cs1-vfw"]);
    }

    #[test]
    fn an_unknown_outcome_is_found_out_and_never_unrecorded() {
        let s = job(&[("a", false)]);
        let (s, _) = s.step(Event::Resume).unwrap();
        let (s, _) = s
            .step(Event::Recorded {
                vm: "a".into(),
                result: Ok(()),
            })
            .unwrap();
        let (s, out) = s
            .step(Event::Answered {
                vm: "a".into(),
                answer: Answer::Unknown("no answer in 70 s".into()),
            })
            .unwrap();
        assert!(out.contains(&Action::FindOut {
            vm: "a".into(),
            cmd: "j1-stop0".into()
        }));
        assert!(!out.iter().any(|a| matches!(a, Action::Unrecord { .. })));
        // An abort ends the wait; the record stays.
        let (s, out) = s
            .step(Event::Stop(StopReason::Abort("alice".into())))
            .unwrap();
        assert!(s.finished);
        assert!(!out.iter().any(|a| matches!(a, Action::Unrecord { .. })));
        assert!(matches!(s.vms[0].phase, Phase::Done(VmOutcome::Unknown(_))));
        assert!(matches!(
            out.last(),
            Some(Action::Finish {
                ending: Ending::Aborted,
                ..
            })
        ));
    }

    #[test]
    fn only_the_agents_failure_drops_the_record() {
        let s = job(&[("a", false)]);
        let (s, _) = s.step(Event::Resume).unwrap();
        let (s, _) = s
            .step(Event::Recorded {
                vm: "a".into(),
                result: Ok(()),
            })
            .unwrap();
        let (s, out) = s
            .step(Event::Answered {
                vm: "a".into(),
                answer: Answer::Failed("libvirt: busy".into()),
            })
            .unwrap();
        assert!(out.contains(&Action::Unrecord { vm: "a".into() }));
        assert!(matches!(
            out.last(),
            Some(Action::Finish {
                ending: Ending::Failed,
                ..
            })
        ));
        assert!(s.finished);
    }

    #[test]
    fn duplicates_and_strangers_are_refused_without_change() {
        let s = job(&[("a", false)]);
        let (s, _) = s.step(Event::Resume).unwrap();
        assert!(s
            .step(Event::Answered {
                vm: "a".into(),
                answer: Answer::Done("x".into()),
            })
            .is_err());
        assert!(s
            .step(Event::Recorded {
                vm: "zz".into(),
                result: Ok(()),
            })
            .is_err());
    }

    #[test]
    fn a_record_that_cannot_be_written_means_no_stop() {
        let s = job(&[("a", false)]);
        let (s, _) = s.step(Event::Resume).unwrap();
        let (s, out) = s
            .step(Event::Recorded {
                vm: "a".into(),
                result: Err("KV down".into()),
            })
            .unwrap();
        assert!(!out.iter().any(|a| matches!(a, Action::SendStop { .. })));
        assert!(matches!(
            s.vms[0].phase,
            Phase::Done(VmOutcome::NotRecorded(_))
        ));
    }

    /// The coordinator died after journaling the end, before ending the
    /// job record: the resumed job ends (it used to stay RUNNING, its node
    /// held, as the driver skipped a finished machine).
    #[test]
    fn a_finished_job_resumed_repeats_its_end() {
        let s = job(&[("a", false)]);
        let (s, _) = s.step(Event::Resume).unwrap();
        let (s, _) = s
            .step(Event::Recorded {
                vm: "a".into(),
                result: Ok(()),
            })
            .unwrap();
        let (s, _) = s
            .step(Event::Answered {
                vm: "a".into(),
                answer: Answer::Done("shut off".into()),
            })
            .unwrap();
        assert!(s.finished);
        let (same, out) = s.step(Event::Resume).unwrap();
        assert_eq!(same, s);
        assert!(matches!(
            out.as_slice(),
            [Action::Finish {
                ending: Ending::Succeeded,
                ..
            }]
        ));
    }

    #[test]
    fn resume_finds_out_what_was_in_flight() {
        let s = job(&[("a", false), ("b", false)]);
        let (s, _) = s.step(Event::Resume).unwrap();
        let (s, _) = s
            .step(Event::Recorded {
                vm: "a".into(),
                result: Ok(()),
            })
            .unwrap();
        // The coordinator restarts from this journaled state.
        let (_, out) = s.step(Event::Resume).unwrap();
        assert!(out.contains(&Action::FindOut {
            vm: "a".into(),
            cmd: "j1-stop0".into()
        }));
        assert!(out.contains(&Action::Record { vm: "b".into() }));
    }
}
