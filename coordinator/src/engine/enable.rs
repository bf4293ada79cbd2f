//! Enable and start-stopped as a state machine.
//!
//! Starts a node's VMs one at a time, VFWs first (a cloudspace's network
//! before its VMs): for `node enable` exactly the VMs recorded in the
//! node's `stopped_by`, for `node start-stopped` every shut-off VM. A
//! VM's record goes only when it is known to run (the agent answered that
//! the start worked, or the inventory shows it running); an unknown
//! outcome is found out, never assumed; a stop (abort, deadline) starts
//! nothing new and leaves every record that was not proven running.

use super::{Action, Answer, Ending, Invalid, StopReason};
use serde::{Deserialize, Serialize};

/// Which job: the set of VMs differs, the rules do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Which {
    /// `node enable`: the VMs maintenance recorded.
    Enable,
    /// `node start-stopped`: every shut-off VM of the node.
    StartStopped,
}

/// What the inventory said of a VM when the job began.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Found {
    /// Defined on the node, not running.
    ShutOff,
    /// Already running: nothing to start.
    Running,
    /// Not defined on the node (any more).
    Gone,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enable {
    pub job: String,
    pub node: String,
    pub which: Which,
    /// VFWs first, then by name.
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
    pub found: Found,
    pub phase: Phase,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Waiting,
    /// The start command is out.
    Starting,
    /// The start's outcome is unknown; finding out.
    FindingOut,
    Done(VmOutcome),
}

/// What became of one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmOutcome {
    /// The agent says it started; its record went.
    Started(String),
    /// Running already (the inventory says so); its record went.
    AlreadyRunning,
    /// The agent says the start failed: still shut off, still recorded.
    NotStarted(String),
    /// Not defined on the node any more; a record stays for the operator.
    Gone,
    /// Not attempted (the job was stopped first): still shut off.
    Skipped(StopReason),
    /// The job ended before the start's outcome was known: still recorded.
    Unknown(String),
}

impl VmOutcome {
    pub fn done(&self) -> bool {
        matches!(self, VmOutcome::Started(_) | VmOutcome::AlreadyRunning)
    }

    pub fn detail(&self, vm: &str, node: &str) -> String {
        match self {
            VmOutcome::Started(m) => format!("started ({m})"),
            VmOutcome::AlreadyRunning => format!("{vm} already running"),
            VmOutcome::NotStarted(m) => format!("not started: {m}; still shut off on {node}"),
            VmOutcome::Gone => format!("{vm} is no longer defined on {node}; nothing started"),
            VmOutcome::Skipped(r) => format!("not started ({r}); still shut off on {node}"),
            VmOutcome::Unknown(m) => format!(
                "outcome of the start unknown ({m}); {vm} keeps its record on {node}, so that \
                 a later `node enable` or `vm list` settles it"
            ),
        }
    }
}

pub type Output = (Enable, Vec<Action>);

/// Events an enable job reacts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Start, or resume from the journaled state after a restart.
    Resume,
    Answered {
        vm: String,
        answer: Answer,
    },
    Stop(StopReason),
}

impl Enable {
    /// A new job over `vms` (`(name, is_vfw, what the inventory says)`).
    pub fn new(job: &str, node: &str, which: Which, vms: &[(String, bool, Found)]) -> Enable {
        let mut vms: Vec<VmTask> = vms
            .iter()
            .map(|(vm, vfw, found)| VmTask {
                vm: vm.clone(),
                vfw: *vfw,
                found: *found,
                phase: Phase::Waiting,
            })
            .collect();
        vms.sort_by(|a, b| (!a.vfw, &a.vm).cmp(&(!b.vfw, &b.vm)));
        vms.dedup_by(|a, b| a.vm == b.vm);
        Enable {
            job: job.into(),
            node: node.into(),
            which,
            vms,
            stopping: None,
            finished: false,
        }
    }

    /// The start command's id of the VM at `index`: a function of the
    /// job, so a resent command is the same command.
    pub fn command_id(&self, index: usize) -> String {
        format!("{}-start{index}", self.job)
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
                // A start in flight when the journal was written is found
                // out (the same id is re-sent only if never claimed).
                for i in 0..s.vms.len() {
                    if matches!(s.vms[i].phase, Phase::Starting | Phase::FindingOut) {
                        s.vms[i].phase = Phase::FindingOut;
                        out.push(Action::FindOut {
                            vm: s.vms[i].vm.clone(),
                            cmd: s.command_id(i),
                        });
                    }
                }
            }
            Event::Answered { vm, answer } => {
                let i = s.index(&vm)?;
                let phase = s.vms[i].phase.clone();
                if !matches!(phase, Phase::Starting | Phase::FindingOut) {
                    return Err(Invalid(format!("{vm}: start answer while {phase:?}")));
                }
                match answer {
                    Answer::Done(m) => {
                        s.vms[i].phase = Phase::Done(VmOutcome::Started(m));
                        out.push(Action::Unrecord { vm: vm.clone() });
                    }
                    Answer::Failed(m) => s.vms[i].phase = Phase::Done(VmOutcome::NotStarted(m)),
                    Answer::Unknown(m) => match &s.stopping {
                        Some(reason) if phase == Phase::FindingOut => {
                            s.vms[i].phase =
                                Phase::Done(VmOutcome::Unknown(format!("{m}; {reason}")));
                        }
                        _ => {
                            if phase == Phase::Starting {
                                out.push(Action::Note {
                                    vm: Some(vm.clone()),
                                    ok: None,
                                    message: format!(
                                        "{vm}: outcome of the start unknown ({m}); finding out"
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
                    match (&t.phase, t.found) {
                        // Nothing to start: what the inventory said stands.
                        (Phase::Waiting, Found::Running) => {
                            t.phase = Phase::Done(VmOutcome::AlreadyRunning);
                            out.push(Action::Unrecord { vm: t.vm.clone() });
                        }
                        (Phase::Waiting, Found::Gone) => t.phase = Phase::Done(VmOutcome::Gone),
                        (Phase::Waiting, Found::ShutOff) => {
                            t.phase = Phase::Done(VmOutcome::Skipped(reason.clone()))
                        }
                        // No answer is coming that the wait would change.
                        (Phase::FindingOut, _) => {
                            t.phase = Phase::Done(VmOutcome::Unknown(format!("{reason}")))
                        }
                        _ => {}
                    }
                }
                s.stopping = Some(reason);
            }
        }
        s.schedule(&mut out);
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
        if s.vms.iter().all(|t| matches!(t.phase, Phase::Done(_))) {
            s.finished = true;
            out.push(s.finish());
        }
        if s != *self {
            out.insert(0, Action::Journal);
        }
        Ok((s, out))
    }

    /// One VM at a time: the next waiting one is settled from what the
    /// inventory said, or started.
    fn schedule(&mut self, out: &mut Vec<Action>) {
        if self.stopping.is_some() {
            return;
        }
        loop {
            let busy = self
                .vms
                .iter()
                .any(|t| matches!(t.phase, Phase::Starting | Phase::FindingOut));
            if busy {
                return;
            }
            let Some(i) = self.vms.iter().position(|t| t.phase == Phase::Waiting) else {
                return;
            };
            let vm = self.vms[i].vm.clone();
            match self.vms[i].found {
                Found::Running => {
                    self.vms[i].phase = Phase::Done(VmOutcome::AlreadyRunning);
                    out.push(Action::Unrecord { vm });
                }
                Found::Gone => self.vms[i].phase = Phase::Done(VmOutcome::Gone),
                Found::ShutOff => {
                    self.vms[i].phase = Phase::Starting;
                    out.push(Action::SendStart {
                        vm,
                        cmd: self.command_id(i),
                    });
                }
            }
        }
    }

    fn finish(&self) -> Action {
        let done = self.outcomes().filter(|(_, o)| o.done()).count();
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
        let summary = match (self.which, not.is_empty()) {
            (Which::Enable, true) => {
                format!("{node} enabled; {done} VMs that maintenance stopped were started")
            }
            (Which::Enable, false) => format!(
                "{node} enabled, but {} VMs did not start ({}); they stay recorded",
                not.len(),
                not.join(", ")
            ),
            (Which::StartStopped, _) => {
                format!("{node}: {done} started, {} failed", not.len())
            }
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

    fn job(vms: &[(&str, bool, Found)]) -> Enable {
        let vms: Vec<(String, bool, Found)> = vms
            .iter()
            .map(|(n, v, f)| (n.to_string(), *v, *f))
            .collect();
        Enable::new("j1", "n1", Which::Enable, &vms)
    }

    fn starts(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SendStart { vm, .. } => Some(vm.clone()),
                _ => None,
            })
            .collect()
    }

    fn answer(s: &Enable, vm: &str, a: Answer) -> Output {
        s.step(Event::Answered {
            vm: vm.into(),
            answer: a,
        })
        .unwrap()
    }

    fn ending(out: &[Action]) -> Option<Ending> {
        out.iter().find_map(|a| match a {
            Action::Finish { ending, .. } => Some(*ending),
            _ => None,
        })
    }

    #[test]
    fn starts_one_at_a_time_vfws_first_and_unrecords_only_after_done() {
        let s = job(&[
            ("b", false, Found::ShutOff),
            ("cs1-vfw", true, Found::ShutOff),
            ("a", false, Found::ShutOff),
        ]);
        let (s, out) = s.step(Event::Resume).unwrap();
        assert_eq!(out[0], Action::Journal);
        assert_eq!(starts(&out), ["cs1-vfw"]);
        assert!(out.contains(&Action::SendStart {
            vm: "cs1-vfw".into(),
            cmd: "j1-start0".into()
        }));
        assert!(!out.iter().any(|a| matches!(a, Action::Unrecord { .. })));
        let (s, out) = answer(&s, "cs1-vfw", Answer::Done("started".into()));
        assert!(out.contains(&Action::Unrecord {
            vm: "cs1-vfw".into()
        }));
        assert_eq!(starts(&out), ["a"]);
        let (s, out) = answer(&s, "a", Answer::Done("started".into()));
        assert_eq!(starts(&out), ["b"]);
        let (s, out) = answer(&s, "b", Answer::Done("started".into()));
        assert!(s.finished);
        assert_eq!(ending(&out), Some(Ending::Succeeded));
    }

    #[test]
    fn an_unknown_start_is_found_out_and_keeps_the_record() {
        let s = job(&[("a", false, Found::ShutOff), ("b", false, Found::ShutOff)]);
        let (s, _) = s.step(Event::Resume).unwrap();
        let (s, out) = answer(&s, "a", Answer::Unknown("no answer in 120 s".into()));
        assert!(out.contains(&Action::FindOut {
            vm: "a".into(),
            cmd: "j1-start0".into()
        }));
        assert!(!out.iter().any(|a| matches!(a, Action::Unrecord { .. })));
        // Nothing else starts while the first is unknown.
        assert!(starts(&out).is_empty());
        let (s, out) = answer(&s, "a", Answer::Unknown("node unreachable".into()));
        assert!(out.contains(&Action::FindOut {
            vm: "a".into(),
            cmd: "j1-start0".into()
        }));
        let (_, out) = answer(&s, "a", Answer::Done("started".into()));
        assert!(out.contains(&Action::Unrecord { vm: "a".into() }));
        assert_eq!(starts(&out), ["b"]);
    }

    #[test]
    fn a_failed_start_keeps_the_record_and_the_job_fails_naming_it() {
        let s = job(&[("a", false, Found::ShutOff)]);
        let (s, _) = s.step(Event::Resume).unwrap();
        let (s, out) = answer(&s, "a", Answer::Failed("libvirt: no memory".into()));
        assert!(!out.iter().any(|a| matches!(a, Action::Unrecord { .. })));
        assert!(s.finished);
        assert_eq!(ending(&out), Some(Ending::Failed));
        let summary = out.iter().find_map(|a| match a {
            Action::Finish { summary, .. } => Some(summary.clone()),
            _ => None,
        });
        assert!(summary.unwrap().contains("did not start (a)"));
    }

    #[test]
    fn an_abort_starts_nothing_new_and_ends_an_unknown_wait_recorded() {
        let s = job(&[("a", false, Found::ShutOff), ("b", false, Found::ShutOff)]);
        let (s, _) = s.step(Event::Resume).unwrap();
        let (s, _) = answer(&s, "a", Answer::Unknown("timeout".into()));
        let (s, out) = s
            .step(Event::Stop(StopReason::Abort("alice".into())))
            .unwrap();
        assert!(starts(&out).is_empty());
        assert!(!out.iter().any(|a| matches!(a, Action::Unrecord { .. })));
        assert!(matches!(s.vms[0].phase, Phase::Done(VmOutcome::Unknown(_))));
        assert!(matches!(s.vms[1].phase, Phase::Done(VmOutcome::Skipped(_))));
        assert_eq!(ending(&out), Some(Ending::Aborted));
    }

    #[test]
    fn a_deadline_lets_the_start_in_flight_answer_then_fails() {
        let s = job(&[("a", false, Found::ShutOff), ("b", false, Found::ShutOff)]);
        let (s, _) = s.step(Event::Resume).unwrap();
        let (s, out) = s.step(Event::Stop(StopReason::Deadline)).unwrap();
        assert!(!s.finished && ending(&out).is_none());
        let (s, out) = answer(&s, "a", Answer::Done("started".into()));
        assert!(out.contains(&Action::Unrecord { vm: "a".into() }));
        assert!(starts(&out).is_empty());
        assert!(s.finished);
        assert_eq!(ending(&out), Some(Ending::Failed));
    }

    #[test]
    fn running_vms_are_already_running_and_gone_ones_not_done() {
        let s = job(&[("up", false, Found::Running), ("ghost", false, Found::Gone)]);
        let (s, out) = s.step(Event::Resume).unwrap();
        assert!(starts(&out).is_empty());
        // Known to run: its record goes. Gone: the record stays.
        assert_eq!(
            out.iter()
                .filter(|a| matches!(a, Action::Unrecord { .. }))
                .collect::<Vec<_>>(),
            [&Action::Unrecord { vm: "up".into() }]
        );
        assert!(s.finished);
        assert_eq!(ending(&out), Some(Ending::Failed));
        let details: Vec<String> = s.outcomes().map(|(vm, o)| o.detail(vm, "n1")).collect();
        assert!(details.contains(&"ghost is no longer defined on n1; nothing started".into()));
        assert!(details.contains(&"up already running".into()));
    }

    #[test]
    fn resume_finds_out_the_start_in_flight_and_a_finished_job_repeats_its_end() {
        let s = job(&[("a", false, Found::ShutOff)]);
        let (s, _) = s.step(Event::Resume).unwrap();
        // The coordinator restarts from this journaled state.
        let (s, out) = s.step(Event::Resume).unwrap();
        assert!(out.contains(&Action::FindOut {
            vm: "a".into(),
            cmd: "j1-start0".into()
        }));
        assert!(starts(&out).is_empty(), "never re-run blindly");
        let (s, _) = answer(&s, "a", Answer::Done("started".into()));
        assert!(s.finished);
        // Died after journaling the end, before finishing the job record.
        let (same, out) = s.step(Event::Resume).unwrap();
        assert_eq!(same, s);
        assert_eq!(out.len(), 1);
        assert_eq!(ending(&out), Some(Ending::Succeeded));
    }

    #[test]
    fn duplicates_late_answers_and_strangers_are_refused() {
        let s = job(&[("a", false, Found::ShutOff), ("b", false, Found::ShutOff)]);
        let (s, _) = s.step(Event::Resume).unwrap();
        assert!(s
            .step(Event::Answered {
                vm: "b".into(),
                answer: Answer::Done("x".into())
            })
            .is_err());
        let (s, _) = answer(&s, "a", Answer::Done("started".into()));
        assert!(s
            .step(Event::Answered {
                vm: "a".into(),
                answer: Answer::Done("again".into())
            })
            .is_err());
        assert!(s
            .step(Event::Answered {
                vm: "zz".into(),
                answer: Answer::Done("x".into())
            })
            .is_err());
    }

    #[test]
    fn a_stop_settles_waiting_vms_from_the_inventory_without_starting_any() {
        let s = job(&[
            ("a", false, Found::ShutOff),
            ("b", false, Found::ShutOff),
            ("up", false, Found::Running),
        ]);
        let (s, _) = s.step(Event::Resume).unwrap();
        let (s, out) = s.step(Event::Stop(StopReason::Deadline)).unwrap();
        assert!(starts(&out).is_empty());
        assert!(out.contains(&Action::Unrecord { vm: "up".into() }));
        let outcome = |vm: &str| s.vms.iter().find(|t| t.vm == vm).unwrap().phase.clone();
        assert_eq!(outcome("up"), Phase::Done(VmOutcome::AlreadyRunning));
        assert_eq!(
            outcome("b"),
            Phase::Done(VmOutcome::Skipped(StopReason::Deadline))
        );
    }

    #[test]
    fn an_empty_enable_succeeds_with_nothing_to_start() {
        let (s, out) = job(&[]).step(Event::Resume).unwrap();
        assert!(s.finished);
        assert_eq!(ending(&out), Some(Ending::Succeeded));
    }

    #[test]
    fn the_machine_survives_its_journal() {
        let s = job(&[("cs1-vfw", true, Found::ShutOff), ("a", false, Found::Gone)]);
        let (s, _) = s.step(Event::Resume).unwrap();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(serde_json::from_value::<Enable>(json).unwrap(), s);
    }
}
