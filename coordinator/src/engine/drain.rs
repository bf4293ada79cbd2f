//! Move all (maintenance `--mode move`) as a state machine.
//!
//! The planner's plan is followed wave by wave (VFWs first; the fleet-wide
//! migration slots are the driver's). A live migration that fails is tried
//! once more on another destination (the driver asks the planner and feeds
//! the answer back as [`Event::Alternative`]); then the fallback applies:
//! `fail` leaves the VM, `stop` records it on the node and stops it, `cold`
//! does that, records it on the destination too, moves the shut-off VM and
//! starts it there (the source's record goes only once the destination has
//! the VM). A VFW gets a fallback only with `ack_vfw_downtime`.
//!
//! An unknown outcome is found out, never taken as a failure; only the
//! agent's own failed answer drops a record. An abort or a deadline starts
//! nothing new and cancels the live migrations in flight.
//!
//! Drained means empty: the job ends only after a fresh inventory of the
//! node ([`Action::CheckEmpty`]); a running VM there that maintenance did
//! not record (one that arrived during the drain) makes the drain partial.

use super::{Answer, Ending, Invalid, StopReason};
use serde::{Deserialize, Serialize};

pub use crate::jobs::Fallback;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub job: String,
    pub node: String,
    pub fallback: Fallback,
    pub ack_vfw_downtime: bool,
    pub vms: Vec<VmTask>,
    #[serde(default)]
    pub stopping: Option<StopReason>,
    #[serde(default)]
    pub check: Check,
    #[serde(default)]
    pub finished: bool,
    /// At most this many VMs between their first command and their end at
    /// once (the fleet-wide slots limit them too); an adaptive drain's
    /// driver changes it ([`Event::Concurrency`]).
    #[serde(default = "unlimited")]
    pub concurrency: u32,
}

fn unlimited() -> u32 {
    u32::MAX
}

/// A VM that may start once there is room: waiting, and a VFW or no VFW
/// still pending (VFWs first).
fn startable(t: &VmTask, vfws_pending: bool) -> bool {
    t.phase == Phase::Waiting && (t.plan.vfw || !vfws_pending)
}

/// One planned move (the planner's `Move`, plus whether the VM runs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Planned {
    pub vm: String,
    pub to: String,
    pub wave: u32,
    pub vfw: bool,
    pub running: bool,
    /// Why it cannot live-migrate (straight to the fallback).
    pub not_migratable: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmTask {
    pub plan: Planned,
    pub phase: Phase,
    /// What went wrong so far, for the report.
    #[serde(default)]
    pub failures: Vec<String>,
}

/// A command of one VM; its id follows from the job, the VM's index and
/// the step, so a resent command is the same command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Live migration to `to`; attempt 0 to the planned node, 1 elsewhere.
    Live { to: String, attempt: u8 },
    /// Stop on the node (fallbacks stop and cold).
    Stop,
    /// Move the shut-off VM to the planned destination.
    Cold,
    /// Start it there.
    Start,
}

/// Which node's `stopped_by` is being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    Source,
    Dest,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Waiting,
    /// The command is out (`finding_out`: its outcome was unknown).
    Command {
        step: Step,
        finding_out: bool,
    },
    /// A live migration failed; the planner is asked for another node.
    SeekingAlternative,
    /// A `stopped_by` record is being written.
    Recording(Side),
    Done(VmOutcome),
}

/// What became of one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmOutcome {
    /// Live-migrated (or, shut off, moved) to this node.
    Moved { to: String },
    /// Cold fallback: stopped, moved, started there.
    ColdMoved { to: String, why: String },
    /// Stop fallback: stopped and recorded on the node.
    Stopped { why: String },
    /// Still where it was (why).
    NotMoved(String),
    /// The fallback's record could not be written: not stopped, still runs.
    NotRecorded(String),
    /// The agent says the fallback's stop failed: still runs, not recorded.
    StopFailed(String),
    /// Cold fallback: stopped and recorded on the node, not moved.
    StoppedNotMoved(String),
    /// Cold fallback: moved, shut off and recorded on `to`, not started.
    ColdNotStarted { to: String, why: String },
    /// Not attempted (the job was stopped first).
    Skipped(StopReason),
    /// The job ended before a command's outcome was known.
    Unknown(String),
}

impl VmOutcome {
    pub fn done(&self) -> bool {
        matches!(
            self,
            VmOutcome::Moved { .. } | VmOutcome::ColdMoved { .. } | VmOutcome::Stopped { .. }
        )
    }

    /// Where the VM went, when it left the node.
    pub fn moved_to(&self) -> Option<&str> {
        match self {
            VmOutcome::Moved { to } | VmOutcome::ColdMoved { to, .. } => Some(to),
            _ => None,
        }
    }

    pub fn detail(&self, vm: &str, node: &str) -> String {
        match self {
            VmOutcome::Moved { to } => format!("moved to {to}"),
            VmOutcome::ColdMoved { to, why } => {
                format!("moved to {to} (cold: stopped, moved, started; {why})")
            }
            VmOutcome::Stopped { why } => format!(
                "stopped and recorded on {node} (fallback: {why}); `node enable {node}` restarts it"
            ),
            VmOutcome::NotMoved(why) => format!("not moved: {why}; still on {node}"),
            VmOutcome::NotRecorded(why) => format!(
                "not moved: {why}; not stopped either: cannot record it as stopped by maintenance; \
                 still running on {node}"
            ),
            VmOutcome::StopFailed(why) => {
                format!("not moved: {why}; the stop fallback failed too; still running on {node}")
            }
            VmOutcome::StoppedNotMoved(why) => format!(
                "not moved: {why}; stopped and recorded on {node}: `node enable {node}` restarts it"
            ),
            VmOutcome::ColdNotStarted { to, why } => format!(
                "cold-moved to {to} but not started there ({why}): shut off and recorded on {to}, \
                 `node enable {to}` starts it"
            ),
            VmOutcome::Skipped(r) => format!("not moved ({r}); still on {node}"),
            VmOutcome::Unknown(m) => format!(
                "outcome unknown ({m}); {vm} stays recorded wherever maintenance stopped it"
            ),
        }
    }
}

/// The final inventory check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Check {
    #[default]
    NotYet,
    /// Asked (how many times so far).
    Asking(u8),
    /// Running VMs the node holds unrecorded that the plan did not know
    /// (or, `Err`, why that could not be found out).
    Done(Result<Vec<String>, String>),
}

/// How often a failing inventory check is asked again before the drain
/// ends partial ("could not confirm the node is empty").
const CHECK_ATTEMPTS: u8 = 3;

/// What the drain asks its driver to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Persist the new state before anything else.
    Journal,
    /// Migrate `vm` from the node to `to` under this command id (`live`
    /// false: the VM is shut off, a cold move).
    Migrate {
        vm: String,
        to: String,
        cmd: String,
        live: bool,
    },
    /// Cancel the live migration of `vm` on the node (the stop reason).
    Cancel {
        vm: String,
        reason: String,
    },
    /// Ask the planner for another destination, not one of `exclude`.
    FindAlternative {
        vm: String,
        exclude: Vec<String>,
    },
    /// Record `vm` in `node`'s `stopped_by`.
    Record {
        vm: String,
        node: String,
    },
    /// Drop that record.
    Unrecord {
        vm: String,
        node: String,
    },
    /// Stop `vm` on the node.
    SendStop {
        vm: String,
        cmd: String,
    },
    /// Start `vm` on `node`.
    SendStart {
        vm: String,
        node: String,
        cmd: String,
    },
    /// Find out what became of a command (the agent's results bucket,
    /// re-sending the same id if never claimed); answered with
    /// [`Event::Answered`] or, when the job's journal has no such command
    /// (so it was never sent), [`Event::NeverSent`].
    FindOut {
        vm: String,
        cmd: String,
    },
    /// Ask the node for a fresh inventory; answered with
    /// [`Event::Inventory`].
    CheckEmpty,
    Note {
        vm: Option<String>,
        ok: Option<bool>,
        message: String,
    },
    Finish {
        ending: Ending,
        summary: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Start, or resume from the journaled state after a restart.
    Resume,
    Answered {
        vm: String,
        cmd: String,
        answer: Answer,
    },
    /// The command was never sent (not in the job's command journal).
    NeverSent {
        vm: String,
        cmd: String,
    },
    Alternative {
        vm: String,
        to: Option<String>,
    },
    Recorded {
        vm: String,
        node: String,
        result: Result<(), String>,
    },
    /// The running VMs on the node that maintenance did not record, from a
    /// fresh inventory (or why there is none).
    Inventory(Result<Vec<String>, String>),
    Stop(StopReason),
    /// The adaptive driver's new limit of VMs in flight (at least 1).
    Concurrency(u32),
}

pub type Output = (Drain, Vec<Action>);

impl Drain {
    pub fn new(
        job: &str,
        node: &str,
        fallback: Fallback,
        ack_vfw_downtime: bool,
        moves: Vec<Planned>,
    ) -> Drain {
        let mut vms: Vec<VmTask> = moves
            .into_iter()
            .map(|plan| VmTask {
                plan,
                phase: Phase::Waiting,
                failures: Vec::new(),
            })
            .collect();
        // VFWs first within a wave (the planner puts them in earlier
        // waves); otherwise the planner's order (largest first), kept by
        // the stable sort.
        vms.sort_by_key(|t| (t.plan.wave, !t.plan.vfw));
        Drain {
            job: job.into(),
            node: node.into(),
            fallback,
            ack_vfw_downtime,
            vms,
            stopping: None,
            check: Check::NotYet,
            finished: false,
            concurrency: unlimited(),
        }
    }

    /// The same, at most `n` VMs in flight at once.
    pub fn with_concurrency(mut self, n: u32) -> Drain {
        self.concurrency = n.max(1);
        self
    }

    /// VMs that wait only for the concurrency limit (not for the VFWs).
    pub fn held_back(&self) -> usize {
        if self.stopping.is_some() {
            return 0;
        }
        let vfws_pending = self.vfws_pending();
        self.vms
            .iter()
            .filter(|t| startable(t, vfws_pending))
            .count()
    }

    /// VMs started and not ended.
    pub fn in_flight(&self) -> usize {
        self.vms
            .iter()
            .filter(|t| !matches!(t.phase, Phase::Waiting | Phase::Done(_)))
            .count()
    }

    fn vfws_pending(&self) -> bool {
        self.vms
            .iter()
            .any(|t| t.plan.vfw && !matches!(t.phase, Phase::Done(_)))
    }

    /// The command id of a step of the VM at `index`.
    pub fn command_id(&self, index: usize, step: &Step) -> String {
        let j = &self.job;
        match step {
            Step::Live { attempt: 0, .. } => format!("{j}-move{index}"),
            Step::Live { .. } => format!("{j}-retry{index}"),
            Step::Stop => format!("{j}-stop{index}"),
            Step::Cold => format!("{j}-cold{index}"),
            Step::Start => format!("{j}-start{index}"),
        }
    }

    fn index(&self, vm: &str) -> Result<usize, Invalid> {
        self.vms
            .iter()
            .position(|t| t.plan.vm == vm)
            .ok_or_else(|| Invalid(format!("{vm} is not part of this job")))
    }

    /// The action that sends the command of `step` for the VM at `i`.
    fn send(&self, i: usize, step: &Step) -> Action {
        let (vm, cmd) = (self.vms[i].plan.vm.clone(), self.command_id(i, step));
        match step {
            Step::Live { to, .. } => Action::Migrate {
                vm,
                to: to.clone(),
                cmd,
                live: true,
            },
            Step::Cold => Action::Migrate {
                vm,
                to: self.vms[i].plan.to.clone(),
                cmd,
                live: false,
            },
            Step::Stop => Action::SendStop { vm, cmd },
            Step::Start => Action::SendStart {
                vm,
                node: self.vms[i].plan.to.clone(),
                cmd,
            },
        }
    }

    fn failures(&self, i: usize) -> String {
        self.vms[i].failures.join("; ")
    }

    fn done(&mut self, i: usize, outcome: VmOutcome) {
        self.vms[i].phase = Phase::Done(outcome);
    }

    /// Pure: the next state and what to do, or why the event is refused.
    pub fn step(&self, event: Event) -> Result<Output, Invalid> {
        if self.finished {
            return Err(Invalid(format!("job finished; {event:?} ignored")));
        }
        let mut s = self.clone();
        let mut out = Vec::new();
        match event {
            Event::Resume => s.resume(&mut out),
            Event::Answered { vm, cmd, answer } => {
                let i = s.index(&vm)?;
                let step = s.current(i, &cmd)?;
                s.answered(i, step, answer, &mut out);
            }
            Event::NeverSent { vm, cmd } => {
                let i = s.index(&vm)?;
                let step = s.current(i, &cmd)?;
                if !matches!(
                    s.vms[i].phase,
                    Phase::Command {
                        finding_out: true,
                        ..
                    }
                ) {
                    return Err(Invalid(format!("{vm}: not finding out {cmd}")));
                }
                s.never_sent(i, step, &mut out);
            }
            Event::Alternative { vm, to } => {
                let i = s.index(&vm)?;
                if s.vms[i].phase != Phase::SeekingAlternative {
                    return Err(Invalid(format!(
                        "{vm}: alternative while {:?}",
                        s.vms[i].phase
                    )));
                }
                match (to, &s.stopping) {
                    (_, Some(r)) => {
                        let why = format!("{} ({r})", s.failures(i));
                        s.done(i, VmOutcome::NotMoved(why));
                    }
                    (Some(to), None) => {
                        out.push(Action::Note {
                            vm: Some(vm.clone()),
                            ok: Some(false),
                            message: format!(
                                "{vm} failed to move to {}; retrying on {to}",
                                s.vms[i].plan.to
                            ),
                        });
                        let step = Step::Live { to, attempt: 1 };
                        out.push(s.send(i, &step));
                        s.vms[i].phase = Phase::Command {
                            step,
                            finding_out: false,
                        };
                    }
                    (None, None) => {
                        s.vms[i].failures.push("no other node can take it".into());
                        s.fallback(i, &mut out);
                    }
                }
            }
            Event::Recorded { vm, node, result } => {
                let i = s.index(&vm)?;
                let side = match s.vms[i].phase {
                    Phase::Recording(side) => side,
                    ref p => return Err(Invalid(format!("{vm}: record answer while {p:?}"))),
                };
                let expected = match side {
                    Side::Source => &s.node,
                    Side::Dest => &s.vms[i].plan.to,
                };
                if *expected != node {
                    return Err(Invalid(format!("{vm}: record answer from {node}")));
                }
                s.recorded(i, side, result, &mut out);
            }
            Event::Inventory(answer) => {
                let Check::Asking(n) = s.check else {
                    return Err(Invalid(format!("inventory while {:?}", s.check)));
                };
                s.check = match answer {
                    Err(_) if n < CHECK_ATTEMPTS && s.stopping.is_none() => {
                        out.push(Action::CheckEmpty);
                        Check::Asking(n + 1)
                    }
                    Err(e) => Check::Done(Err(e)),
                    Ok(running) => {
                        // VMs this job already reports as not done are
                        // known; any other is a stray.
                        let strays = running
                            .into_iter()
                            .filter(|vm| !s.outcomes().any(|(v, o)| v == vm.as_str() && !o.done()))
                            .collect();
                        Check::Done(Ok(strays))
                    }
                };
            }
            Event::Concurrency(n) => s.concurrency = n.max(1),
            Event::Stop(reason) => {
                if s.stopping.is_some() {
                    return Err(Invalid("already stopping".into()));
                }
                for i in 0..s.vms.len() {
                    match s.vms[i].phase.clone() {
                        Phase::Waiting => s.done(i, VmOutcome::Skipped(reason.clone())),
                        Phase::SeekingAlternative => {
                            let why = format!("{} ({reason})", s.failures(i));
                            s.done(i, VmOutcome::NotMoved(why));
                        }
                        // No answer is coming that the wait would change.
                        Phase::Command {
                            step,
                            finding_out: true,
                        } => {
                            let cmd = s.command_id(i, &step);
                            s.done(i, VmOutcome::Unknown(format!("{cmd}: {reason}")));
                        }
                        Phase::Command {
                            step: Step::Live { .. },
                            finding_out: false,
                        } => out.push(Action::Cancel {
                            vm: s.vms[i].plan.vm.clone(),
                            reason: reason.to_string(),
                        }),
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
                let vm = &after.plan.vm;
                out.push(Action::Note {
                    vm: Some(vm.clone()),
                    ok: Some(o.done()),
                    message: format!("{vm}: {}", o.detail(vm, &s.node)),
                });
            }
        }
        s.schedule(&mut out);
        if let Check::Done(_) = s.check {
            s.finished = true;
            out.push(s.finish());
        }
        if s != *self {
            out.insert(0, Action::Journal);
        }
        Ok((s, out))
    }

    /// The step of the VM's command `cmd`, if that is the one out.
    fn current(&self, i: usize, cmd: &str) -> Result<Step, Invalid> {
        match &self.vms[i].phase {
            Phase::Command { step, .. } if self.command_id(i, step) == cmd => Ok(step.clone()),
            p => Err(Invalid(format!(
                "{}: answer to {cmd} while {p:?}",
                self.vms[i].plan.vm
            ))),
        }
    }

    fn resume(&mut self, out: &mut Vec<Action>) {
        // What was in flight when the journal was written: do it again
        // (records and planner questions are idempotent; a command is
        // found out, never re-run blindly).
        for i in 0..self.vms.len() {
            let vm = self.vms[i].plan.vm.clone();
            match self.vms[i].phase.clone() {
                Phase::Recording(side) => {
                    let node = match side {
                        Side::Source => self.node.clone(),
                        Side::Dest => self.vms[i].plan.to.clone(),
                    };
                    out.push(Action::Record { vm, node });
                }
                Phase::SeekingAlternative => out.push(self.alternative(i)),
                Phase::Command { step, .. } => {
                    if let (Step::Live { .. }, Some(r)) = (&step, &self.stopping) {
                        out.push(Action::Cancel {
                            vm: vm.clone(),
                            reason: r.to_string(),
                        });
                    }
                    let cmd = self.command_id(i, &step);
                    self.vms[i].phase = Phase::Command {
                        step,
                        finding_out: true,
                    };
                    out.push(Action::FindOut { vm, cmd });
                }
                _ => {}
            }
        }
        if let Check::Asking(_) = self.check {
            out.push(Action::CheckEmpty);
        }
    }

    fn alternative(&self, i: usize) -> Action {
        let mut exclude = vec![self.node.clone(), self.vms[i].plan.to.clone()];
        exclude.dedup();
        Action::FindAlternative {
            vm: self.vms[i].plan.vm.clone(),
            exclude,
        }
    }

    fn answered(&mut self, i: usize, step: Step, answer: Answer, out: &mut Vec<Action>) {
        let vm = self.vms[i].plan.vm.clone();
        let (node, to) = (self.node.clone(), self.vms[i].plan.to.clone());
        let finding_out = matches!(
            self.vms[i].phase,
            Phase::Command {
                finding_out: true,
                ..
            }
        );
        let failed = match answer {
            Answer::Unknown(m) => {
                let cmd = self.command_id(i, &step);
                if let (Some(r), true) = (&self.stopping, finding_out) {
                    return self.done(i, VmOutcome::Unknown(format!("{cmd}: {m}; {r}")));
                }
                if !finding_out {
                    out.push(Action::Note {
                        vm: Some(vm.clone()),
                        ok: None,
                        message: format!("{vm}: outcome of {cmd} unknown ({m}); finding out"),
                    });
                }
                self.vms[i].phase = Phase::Command {
                    step,
                    finding_out: true,
                };
                return out.push(Action::FindOut { vm, cmd });
            }
            Answer::Done(_) => {
                match step {
                    Step::Live { to, .. } => self.done(i, VmOutcome::Moved { to }),
                    Step::Stop if self.fallback == Fallback::Stop => {
                        let why = self.failures(i);
                        self.done(i, VmOutcome::Stopped { why });
                    }
                    Step::Stop => match &self.stopping {
                        Some(r) => {
                            let why = format!("{}; cold move not started ({r})", self.failures(i));
                            self.done(i, VmOutcome::StoppedNotMoved(why));
                        }
                        None => {
                            // Recorded on the destination before it gets the
                            // VM: it is never anywhere unrecorded.
                            self.vms[i].phase = Phase::Recording(Side::Dest);
                            out.push(Action::Record { vm, node: to });
                        }
                    },
                    Step::Cold => {
                        // The destination has it (recorded there): the
                        // source's record goes.
                        out.push(Action::Unrecord { vm, node });
                        match &self.stopping {
                            Some(r) => {
                                let why = format!("not started ({r})");
                                self.done(i, VmOutcome::ColdNotStarted { to, why });
                            }
                            None => {
                                let step = Step::Start;
                                out.push(self.send(i, &step));
                                self.vms[i].phase = Phase::Command {
                                    step,
                                    finding_out: false,
                                };
                            }
                        }
                    }
                    Step::Start => {
                        out.push(Action::Unrecord {
                            vm,
                            node: to.clone(),
                        });
                        let why = self.failures(i);
                        self.done(i, VmOutcome::ColdMoved { to, why });
                    }
                }
                return;
            }
            Answer::Failed(m) => m,
        };
        // The agent says it did not happen.
        match step {
            Step::Live { to, attempt } => {
                self.vms[i].failures.push(format!("to {to}: {failed}"));
                if let Some(r) = &self.stopping {
                    let why = format!("{} ({r})", self.failures(i));
                    self.done(i, VmOutcome::NotMoved(why));
                } else if attempt == 0 {
                    self.vms[i].phase = Phase::SeekingAlternative;
                    out.push(self.alternative(i));
                } else {
                    self.fallback(i, out);
                }
            }
            Step::Stop => {
                out.push(Action::Unrecord { vm, node });
                let why = format!("{}; stop: {failed}", self.failures(i));
                self.done(i, VmOutcome::StopFailed(why));
            }
            Step::Cold => {
                out.push(Action::Unrecord {
                    vm,
                    node: to.clone(),
                });
                let why = format!("{}; cold move to {to} failed: {failed}", self.failures(i));
                self.done(i, VmOutcome::StoppedNotMoved(why));
            }
            Step::Start => self.done(i, VmOutcome::ColdNotStarted { to, why: failed }),
        }
    }

    /// A command that was never sent: send it now, or (stopping) not at
    /// all.
    fn never_sent(&mut self, i: usize, step: Step, out: &mut Vec<Action>) {
        let vm = self.vms[i].plan.vm.clone();
        let Some(r) = self.stopping.clone() else {
            out.push(self.send(i, &step));
            self.vms[i].phase = Phase::Command {
                step,
                finding_out: false,
            };
            return;
        };
        let (node, to) = (self.node.clone(), self.vms[i].plan.to.clone());
        let why = format!("{}; not sent ({r})", self.failures(i));
        match step {
            Step::Live { .. } => self.done(i, VmOutcome::NotMoved(why)),
            Step::Stop => {
                out.push(Action::Unrecord { vm, node });
                self.done(i, VmOutcome::NotMoved(why));
            }
            Step::Cold => {
                out.push(Action::Unrecord { vm, node: to });
                self.done(i, VmOutcome::StoppedNotMoved(why));
            }
            Step::Start => self.done(i, VmOutcome::ColdNotStarted { to, why }),
        }
    }

    fn recorded(
        &mut self,
        i: usize,
        side: Side,
        result: Result<(), String>,
        out: &mut Vec<Action>,
    ) {
        let vm = self.vms[i].plan.vm.clone();
        let stopping = self.stopping.clone();
        match (side, result, stopping) {
            (Side::Source, Err(e), _) => {
                let why = format!("{} ({e})", self.failures(i));
                self.done(i, VmOutcome::NotRecorded(why));
            }
            (Side::Source, Ok(()), Some(r)) => {
                // Recorded but never stopped: the record goes again.
                out.push(Action::Unrecord {
                    vm,
                    node: self.node.clone(),
                });
                let why = format!("{}; no fallback ({r})", self.failures(i));
                self.done(i, VmOutcome::NotMoved(why));
            }
            (Side::Source, Ok(()), None) => {
                let step = Step::Stop;
                out.push(Action::Note {
                    vm: Some(vm.clone()),
                    ok: None,
                    message: format!("stopping {vm} ({} fallback)", self.fallback.as_str()),
                });
                out.push(self.send(i, &step));
                self.vms[i].phase = Phase::Command {
                    step,
                    finding_out: false,
                };
            }
            (Side::Dest, Err(e), _) => {
                let why = format!(
                    "{}; cold move not done: cannot record it on {} ({e})",
                    self.failures(i),
                    self.vms[i].plan.to
                );
                self.done(i, VmOutcome::StoppedNotMoved(why));
            }
            (Side::Dest, Ok(()), Some(r)) => {
                out.push(Action::Unrecord {
                    vm,
                    node: self.vms[i].plan.to.clone(),
                });
                let why = format!("{}; cold move not started ({r})", self.failures(i));
                self.done(i, VmOutcome::StoppedNotMoved(why));
            }
            (Side::Dest, Ok(()), None) => {
                let step = Step::Cold;
                out.push(self.send(i, &step));
                self.vms[i].phase = Phase::Command {
                    step,
                    finding_out: false,
                };
            }
        }
    }

    /// After the live attempts: the fallback, if it applies.
    fn fallback(&mut self, i: usize, out: &mut Vec<Action>) {
        let failed = self.failures(i);
        let p = self.vms[i].plan.clone();
        let outcome = if let Some(r) = &self.stopping {
            VmOutcome::NotMoved(format!("{failed}; no fallback ({r})"))
        } else if !p.running {
            // A shut-off VM gains nothing from a fallback; it does not keep
            // the node from being empty.
            VmOutcome::NotMoved(format!("{failed}; it is shut off"))
        } else if self.fallback == Fallback::Fail {
            VmOutcome::NotMoved(format!(
                "{failed}; `--fallback stop` or `--fallback cold` would handle it"
            ))
        } else if p.vfw && !self.ack_vfw_downtime {
            VmOutcome::NotMoved(format!(
                "{failed}; it is a VFW, and the {} fallback takes its cloudspace's network \
                 down: not done without --ack-vfw-downtime",
                self.fallback.as_str()
            ))
        } else {
            self.vms[i].phase = Phase::Recording(Side::Source);
            return out.push(Action::Record {
                vm: p.vm,
                node: self.node.clone(),
            });
        };
        self.done(i, outcome);
    }

    /// Starts waiting VMs in plan order (VFWs first, then by decreasing
    /// memory: the longest first) while fewer than `concurrency` are in
    /// flight; user VMs start once every VFW ended. No barrier between the
    /// planner's waves: a VM starts as soon as one ends. Once every VM
    /// ended, asks for the inventory check.
    fn schedule(&mut self, out: &mut Vec<Action>) {
        if self.vms.iter().all(|t| matches!(t.phase, Phase::Done(_))) {
            if self.check == Check::NotYet {
                self.check = Check::Asking(1);
                out.push(Action::CheckEmpty);
            }
            return;
        }
        if self.stopping.is_some() {
            return;
        }
        let vfws_pending = self.vfws_pending();
        let mut in_flight = self.in_flight();
        let mut ended_at_once = false;
        for i in 0..self.vms.len() {
            if in_flight >= self.concurrency as usize {
                break;
            }
            if !startable(&self.vms[i], vfws_pending) {
                continue;
            }
            match self.vms[i].plan.not_migratable.clone() {
                Some(why) => {
                    self.vms[i]
                        .failures
                        .push(format!("it cannot live-migrate ({why})"));
                    self.fallback(i, out);
                }
                None => {
                    let step = Step::Live {
                        to: self.vms[i].plan.to.clone(),
                        attempt: 0,
                    };
                    out.push(self.send(i, &step));
                    self.vms[i].phase = Phase::Command {
                        step,
                        finding_out: false,
                    };
                }
            }
            match self.vms[i].phase {
                Phase::Done(_) => ended_at_once = true,
                _ => in_flight += 1,
            }
        }
        // A fallback that ended a VM at once (or the last VFW) frees room.
        if ended_at_once {
            self.schedule(out);
        }
    }

    /// Running VMs the final check found on the node that the job does not
    /// account for.
    pub fn strays(&self) -> &[String] {
        match &self.check {
            Check::Done(Ok(s)) => s,
            _ => &[],
        }
    }

    /// The job's ending and summary, from the state.
    pub fn finish(&self) -> Action {
        let node = &self.node;
        let done = self.outcomes().filter(|(_, o)| o.done()).count();
        let mut not: Vec<&str> = self
            .outcomes()
            .filter(|(_, o)| !o.done())
            .map(|(vm, _)| vm)
            .collect();
        not.extend(self.strays().iter().map(String::as_str));
        let unconfirmed = match &self.check {
            Check::Done(Err(e)) => Some(e.clone()),
            _ => None,
        };
        let ending = match &self.stopping {
            Some(StopReason::Abort(_)) => Ending::Aborted,
            Some(StopReason::Deadline) => Ending::Failed,
            None if !not.is_empty() || unconfirmed.is_some() => Ending::Failed,
            None => Ending::Succeeded,
        };
        let mut summary = if not.is_empty() && unconfirmed.is_none() {
            format!("{node} drained: {done} VMs moved or handled; the node is in maintenance")
        } else {
            format!(
                "{node} partly drained: {done} done, {} not ({}); the node stays in \
                 maintenance; `maintenance retry {node}` continues with what is left",
                not.len(),
                not.join(", ")
            )
        };
        if let Some(e) = unconfirmed {
            summary = format!("{summary}; could not confirm that {node} is empty: {e}");
        }
        if let Some(r) = &self.stopping {
            summary = format!("stopped: {r}. {summary}");
        }
        Action::Finish { ending, summary }
    }

    /// Each VM that ended, with its outcome.
    pub fn outcomes(&self) -> impl Iterator<Item = (&str, &VmOutcome)> {
        self.vms.iter().filter_map(|t| match &t.phase {
            Phase::Done(o) => Some((t.plan.vm.as_str(), o)),
            _ => None,
        })
    }

    /// The report: each VM's outcome, then each stray (`Err`).
    pub fn report(&self) -> Vec<(String, Result<String, String>)> {
        let mut lines: Vec<(String, Result<String, String>)> = self
            .outcomes()
            .map(|(vm, o)| {
                let d = o.detail(vm, &self.node);
                (vm.to_string(), if o.done() { Ok(d) } else { Err(d) })
            })
            .collect();
        for vm in self.strays() {
            lines.push((
                vm.clone(),
                Err(format!(
                    "{vm} is running on {}: it arrived during the drain; `maintenance retry {}` \
                     moves it",
                    self.node, self.node
                )),
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(vm: &str, to: &str, wave: u32) -> Planned {
        Planned {
            vm: vm.into(),
            to: to.into(),
            wave,
            vfw: vm.ends_with("-vfw"),
            running: true,
            not_migratable: None,
        }
    }

    fn drain(fallback: Fallback, moves: Vec<Planned>) -> Drain {
        Drain::new("j1", "n1", fallback, false, moves)
    }

    fn go(s: &Drain, e: Event) -> (Drain, Vec<Action>) {
        s.step(e).unwrap()
    }

    fn answer(vm: &str, cmd: &str, a: Answer) -> Event {
        Event::Answered {
            vm: vm.into(),
            cmd: cmd.into(),
            answer: a,
        }
    }

    fn done(m: &str) -> Answer {
        Answer::Done(m.into())
    }

    fn failed(m: &str) -> Answer {
        Answer::Failed(m.into())
    }

    fn migrations(out: &[Action]) -> Vec<(String, String)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Migrate { vm, to, .. } => Some((vm.clone(), to.clone())),
                _ => None,
            })
            .collect()
    }

    fn finish(out: &[Action]) -> Option<Ending> {
        out.iter().find_map(|a| match a {
            Action::Finish { ending, .. } => Some(*ending),
            _ => None,
        })
    }

    /// Runs the final check with this inventory answer.
    fn checked(s: &Drain, out: &[Action], running: &[&str]) -> (Drain, Vec<Action>) {
        assert!(out.contains(&Action::CheckEmpty), "{out:?}");
        let running = running.iter().map(|v| v.to_string()).collect();
        go(s, Event::Inventory(Ok(running)))
    }

    #[test]
    fn moves_wave_by_wave_vfws_first_and_ends_after_a_clean_check() {
        let s = drain(
            Fallback::Fail,
            vec![planned("a", "n2", 1), planned("cs1-vfw", "n3", 0)],
        );
        let (s, out) = go(&s, Event::Resume);
        assert_eq!(out[0], Action::Journal);
        assert_eq!(migrations(&out), [("cs1-vfw".into(), "n3".into())]);
        let (s, out) = go(&s, answer("cs1-vfw", "j1-move0", done("ok")));
        assert_eq!(migrations(&out), [("a".into(), "n2".into())]);
        assert!(!out.contains(&Action::CheckEmpty));
        let (s, out) = go(&s, answer("a", "j1-move1", done("ok")));
        let (s, out) = checked(&s, &out, &[]);
        assert_eq!(finish(&out), Some(Ending::Succeeded));
        assert!(s.finished);
        assert!(s.report().iter().all(|(_, r)| r.is_ok()));
        assert_eq!(
            s.report()[1],
            ("a".to_string(), Ok("moved to n2".to_string()))
        );
    }

    #[test]
    fn vms_start_as_others_end_within_the_concurrency_and_the_driver_can_change_it() {
        let mut moves = vec![planned("cs1-vfw", "n2", 0), planned("cs2-vfw", "n3", 0)];
        for (i, vm) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            moves.push(planned(vm, "n2", 1 + i as u32 / 2));
        }
        let s = drain(Fallback::Fail, moves).with_concurrency(3);
        let (s, out) = go(&s, Event::Resume);
        // VFWs first: users wait for them even with room to spare.
        assert_eq!(migrations(&out).len(), 2, "{out:?}");
        assert_eq!((s.in_flight(), s.held_back()), (2, 0));
        let (s, out) = go(&s, answer("cs1-vfw", "j1-move0", done("ok")));
        assert!(migrations(&out).is_empty());
        let (s, out) = go(&s, answer("cs2-vfw", "j1-move1", done("ok")));
        let vms = |out: &[Action]| migrations(out).into_iter().map(|m| m.0).collect::<Vec<_>>();
        assert_eq!(vms(&out), ["a", "b", "c"], "plan order, up to the limit");
        assert_eq!((s.in_flight(), s.held_back()), (3, 2));
        // No barrier between waves: c (wave 2) ran beside a and b (wave 1),
        // and d starts as soon as one ends.
        let (s, out) = go(&s, answer("b", "j1-move3", done("ok")));
        assert_eq!(vms(&out), ["d"]);
        // Raised: one more at once; lowered: nothing new until below it.
        let (s, out) = go(&s, Event::Concurrency(4));
        assert_eq!(out[0], Action::Journal);
        assert_eq!(vms(&out), ["e"]);
        let (s, _) = go(&s, Event::Concurrency(1));
        let (s, out) = go(&s, answer("a", "j1-move2", done("ok")));
        assert!(vms(&out).is_empty());
        assert_eq!(s.concurrency, 1);
        // Zero is taken as one: a drain never stalls on its own limit.
        let (s, _) = go(&s, Event::Concurrency(0));
        assert_eq!(s.concurrency, 1);
    }

    #[test]
    fn a_failed_migration_is_retried_once_elsewhere_then_the_fallback_decides() {
        let s = drain(Fallback::Fail, vec![planned("a", "n2", 0)]);
        let (s, _) = go(&s, Event::Resume);
        let (s, out) = go(&s, answer("a", "j1-move0", failed("refused")));
        assert!(out.contains(&Action::FindAlternative {
            vm: "a".into(),
            exclude: vec!["n1".into(), "n2".into()]
        }));
        let (s, out) = go(
            &s,
            Event::Alternative {
                vm: "a".into(),
                to: Some("n3".into()),
            },
        );
        assert!(out.contains(&Action::Migrate {
            vm: "a".into(),
            to: "n3".into(),
            cmd: "j1-retry0".into(),
            live: true
        }));
        // A late answer of the first attempt changes nothing.
        assert!(s.step(answer("a", "j1-move0", done("late"))).is_err());
        let (s, out) = go(&s, answer("a", "j1-retry0", failed("refused")));
        assert!(migrations(&out).is_empty());
        let (s, out) = checked(&s, &out, &["a"]);
        assert_eq!(finish(&out), Some(Ending::Failed));
        // The VM is reported once (not also as a stray).
        let report = s.report();
        assert_eq!(report.len(), 1);
        let detail = report[0].1.clone().unwrap_err();
        assert!(
            detail.contains("to n2: refused; to n3: refused"),
            "{detail}"
        );
        assert!(detail.contains("--fallback stop"), "{detail}");
    }

    #[test]
    fn stop_fallback_records_before_stopping_and_keeps_the_record() {
        let s = drain(Fallback::Stop, vec![planned("a", "n2", 0)]);
        let (s, _) = go(&s, Event::Resume);
        let (s, _) = go(&s, answer("a", "j1-move0", failed("x")));
        let (s, out) = go(
            &s,
            Event::Alternative {
                vm: "a".into(),
                to: None,
            },
        );
        assert!(out.contains(&Action::Record {
            vm: "a".into(),
            node: "n1".into()
        }));
        assert!(!out.iter().any(|a| matches!(a, Action::SendStop { .. })));
        let (s, out) = go(
            &s,
            Event::Recorded {
                vm: "a".into(),
                node: "n1".into(),
                result: Ok(()),
            },
        );
        assert!(out.contains(&Action::SendStop {
            vm: "a".into(),
            cmd: "j1-stop0".into()
        }));
        let (s, out) = go(&s, answer("a", "j1-stop0", done("shut off")));
        assert!(!out.iter().any(|a| matches!(a, Action::Unrecord { .. })));
        let (s, out) = checked(&s, &out, &[]);
        assert_eq!(finish(&out), Some(Ending::Succeeded));
        assert!(matches!(
            s.vms[0].phase,
            Phase::Done(VmOutcome::Stopped { .. })
        ));
    }

    #[test]
    fn an_unknown_stop_is_found_out_and_only_the_agents_failure_drops_the_record() {
        let mut p = planned("a", "n2", 0);
        p.not_migratable = Some("host device".into());
        let s = drain(Fallback::Stop, vec![p]);
        let (s, out) = go(&s, Event::Resume);
        assert!(
            migrations(&out).is_empty(),
            "not migratable: no live attempt"
        );
        let (s, _) = go(
            &s,
            Event::Recorded {
                vm: "a".into(),
                node: "n1".into(),
                result: Ok(()),
            },
        );
        let (s, out) = go(
            &s,
            answer("a", "j1-stop0", Answer::Unknown("no answer".into())),
        );
        assert!(out.contains(&Action::FindOut {
            vm: "a".into(),
            cmd: "j1-stop0".into()
        }));
        assert!(!out.iter().any(|a| matches!(a, Action::Unrecord { .. })));
        let (s, out) = go(&s, answer("a", "j1-stop0", failed("busy")));
        assert!(out.contains(&Action::Unrecord {
            vm: "a".into(),
            node: "n1".into()
        }));
        let (_, out) = checked(&s, &out, &["a"]);
        assert_eq!(finish(&out), Some(Ending::Failed));
    }

    #[test]
    fn cold_move_records_on_the_destination_before_forgetting_the_source() {
        let mut p = planned("a", "n2", 0);
        p.not_migratable = Some("host device".into());
        let s = drain(Fallback::Cold, vec![p]);
        let (s, _) = go(&s, Event::Resume);
        let rec = |node: &str| Event::Recorded {
            vm: "a".into(),
            node: node.into(),
            result: Ok(()),
        };
        let (s, _) = go(&s, rec("n1"));
        let (s, out) = go(&s, answer("a", "j1-stop0", done("off")));
        assert!(out.contains(&Action::Record {
            vm: "a".into(),
            node: "n2".into()
        }));
        assert!(
            migrations(&out).is_empty(),
            "not moved before recorded there"
        );
        let (s, out) = go(&s, rec("n2"));
        assert!(out.contains(&Action::Migrate {
            vm: "a".into(),
            to: "n2".into(),
            cmd: "j1-cold0".into(),
            live: false
        }));
        let (s, out) = go(&s, answer("a", "j1-cold0", done("moved")));
        let unrecord = out
            .iter()
            .position(|a| {
                *a == Action::Unrecord {
                    vm: "a".into(),
                    node: "n1".into(),
                }
            })
            .expect("the source's record goes once the destination has it");
        let start = out
            .iter()
            .position(|a| matches!(a, Action::SendStart { node, .. } if node == "n2"))
            .unwrap();
        assert!(unrecord < start);
        let (s, out) = go(&s, answer("a", "j1-start0", done("running")));
        assert!(out.contains(&Action::Unrecord {
            vm: "a".into(),
            node: "n2".into()
        }));
        let (s, out) = checked(&s, &out, &[]);
        assert_eq!(finish(&out), Some(Ending::Succeeded));
        assert_eq!(s.outcomes().next().unwrap().1.moved_to(), Some("n2"));
    }

    #[test]
    fn a_failed_cold_move_leaves_the_vm_stopped_and_recorded_on_the_source() {
        let mut p = planned("a", "n2", 0);
        p.not_migratable = Some("x".into());
        let s = drain(Fallback::Cold, vec![p]);
        let (s, _) = go(&s, Event::Resume);
        let rec = |node: &str| Event::Recorded {
            vm: "a".into(),
            node: node.into(),
            result: Ok(()),
        };
        let (s, _) = go(&s, rec("n1"));
        let (s, _) = go(&s, answer("a", "j1-stop0", done("off")));
        let (s, _) = go(&s, rec("n2"));
        let (s, out) = go(&s, answer("a", "j1-cold0", failed("disk")));
        assert!(out.contains(&Action::Unrecord {
            vm: "a".into(),
            node: "n2".into()
        }));
        assert!(!out.contains(&Action::Unrecord {
            vm: "a".into(),
            node: "n1".into()
        }));
        assert!(matches!(
            s.vms[0].phase,
            Phase::Done(VmOutcome::StoppedNotMoved(_))
        ));
    }

    #[test]
    fn a_vfw_gets_a_fallback_only_with_the_acknowledgement() {
        let mut p = planned("cs1-vfw", "n2", 0);
        p.not_migratable = Some("x".into());
        let s = drain(Fallback::Stop, vec![p.clone()]);
        let (s, out) = go(&s, Event::Resume);
        assert!(!out.iter().any(|a| matches!(a, Action::Record { .. })));
        let detail = s.report()[0].1.clone().unwrap_err();
        assert!(detail.contains("--ack-vfw-downtime"), "{detail}");
        let s = Drain::new("j1", "n1", Fallback::Stop, true, vec![p]);
        let (_, out) = go(&s, Event::Resume);
        assert!(out.iter().any(|a| matches!(a, Action::Record { .. })));
    }

    #[test]
    fn a_shut_off_vm_that_cannot_move_gets_no_fallback() {
        let mut p = planned("off", "n2", 0);
        p.running = false;
        let s = drain(Fallback::Stop, vec![p]);
        let (s, _) = go(&s, Event::Resume);
        let (s, _) = go(&s, answer("off", "j1-move0", failed("x")));
        let (s, out) = go(
            &s,
            Event::Alternative {
                vm: "off".into(),
                to: None,
            },
        );
        assert!(!out.iter().any(|a| matches!(a, Action::Record { .. })));
        assert!(matches!(
            s.vms[0].phase,
            Phase::Done(VmOutcome::NotMoved(_))
        ));
    }

    #[test]
    fn a_stop_starts_nothing_new_and_cancels_live_migrations() {
        let s = drain(
            Fallback::Stop,
            vec![planned("a", "n2", 0), planned("b", "n2", 1)],
        )
        .with_concurrency(1);
        let (s, _) = go(&s, Event::Resume);
        let (s, out) = go(&s, Event::Stop(StopReason::Abort("alice".into())));
        assert!(out.contains(&Action::Cancel {
            vm: "a".into(),
            reason: "aborted: alice".into()
        }));
        assert!(matches!(s.vms[1].phase, Phase::Done(VmOutcome::Skipped(_))));
        // Cancelled: still on the node; no retry, no fallback.
        let (s, out) = go(&s, answer("a", "j1-move0", failed("cancelled")));
        assert!(!out
            .iter()
            .any(|a| matches!(a, Action::FindAlternative { .. } | Action::Record { .. })));
        let (_, out) = checked(&s, &out, &["a", "b"]);
        assert_eq!(finish(&out), Some(Ending::Aborted));
        // A deadline ends FAILED.
        let s = drain(Fallback::Fail, vec![planned("a", "n2", 0)]);
        let (s, _) = go(&s, Event::Stop(StopReason::Deadline));
        let (s, out) = go(&s, Event::Resume);
        let (_, out) = checked(&s, &out, &["a"]);
        assert_eq!(finish(&out), Some(Ending::Failed));
    }

    #[test]
    fn a_migration_past_the_point_of_no_return_counts_as_moved() {
        let s = drain(Fallback::Fail, vec![planned("a", "n2", 0)]);
        let (s, _) = go(&s, Event::Resume);
        let (s, _) = go(&s, Event::Stop(StopReason::Deadline));
        let (s, out) = go(&s, answer("a", "j1-move0", done("ok")));
        let (s, _) = checked(&s, &out, &[]);
        assert_eq!(s.outcomes().next().unwrap().1.moved_to(), Some("n2"));
    }

    #[test]
    fn an_unknown_migration_is_found_out_never_failed() {
        let s = drain(Fallback::Stop, vec![planned("a", "n2", 0)]);
        let (s, _) = go(&s, Event::Resume);
        let (s, out) = go(
            &s,
            answer("a", "j1-move0", Answer::Unknown("timeout".into())),
        );
        assert!(out.contains(&Action::FindOut {
            vm: "a".into(),
            cmd: "j1-move0".into()
        }));
        assert!(!out
            .iter()
            .any(|a| matches!(a, Action::FindAlternative { .. } | Action::Record { .. })));
        let (s, out) = go(
            &s,
            answer("a", "j1-move0", Answer::Unknown("unreachable".into())),
        );
        assert!(out.contains(&Action::FindOut {
            vm: "a".into(),
            cmd: "j1-move0".into()
        }));
        // It completed later.
        let (s, out) = go(&s, answer("a", "j1-move0", done("ok")));
        let (_, out) = checked(&s, &out, &[]);
        assert_eq!(finish(&out), Some(Ending::Succeeded));
    }

    #[test]
    fn resume_finds_out_in_flight_commands_and_resends_never_sent_ones() {
        let s = drain(Fallback::Fail, vec![planned("a", "n2", 0)]);
        let (s, _) = go(&s, Event::Resume);
        // Restart from this journaled state.
        let (s, out) = go(&s, Event::Resume);
        assert!(out.contains(&Action::FindOut {
            vm: "a".into(),
            cmd: "j1-move0".into()
        }));
        let (s, out) = go(
            &s,
            Event::NeverSent {
                vm: "a".into(),
                cmd: "j1-move0".into(),
            },
        );
        assert!(out.contains(&Action::Migrate {
            vm: "a".into(),
            to: "n2".into(),
            cmd: "j1-move0".into(),
            live: true
        }));
        // Not sent and the job stopped meanwhile: not moved, nothing sent.
        let (s, _) = go(&s, Event::Resume);
        let (s, _) = go(&s, Event::Stop(StopReason::Deadline));
        assert!(matches!(s.vms[0].phase, Phase::Done(VmOutcome::Unknown(_))));
    }

    #[test]
    fn a_resumed_job_with_nothing_done_does_not_succeed_without_acting() {
        let s = drain(Fallback::Fail, vec![planned("a", "n2", 0)]);
        // Crash before the first journal: resumed from the same new state.
        let (_, out) = go(&s, Event::Resume);
        assert_eq!(migrations(&out).len(), 1);
        assert!(finish(&out).is_none());
    }

    #[test]
    fn a_vm_that_arrived_during_the_drain_makes_it_partial() {
        let s = drain(Fallback::Fail, vec![planned("a", "n2", 0)]);
        let (s, _) = go(&s, Event::Resume);
        let (s, out) = go(&s, answer("a", "j1-move0", done("ok")));
        let (s, out) = checked(&s, &out, &["newcomer"]);
        assert_eq!(finish(&out), Some(Ending::Failed));
        let Some(Action::Finish { summary, .. }) = out.last() else {
            panic!("{out:?}")
        };
        assert!(summary.contains("partly drained"), "{summary}");
        let report = s.report();
        assert_eq!(report[1].0, "newcomer");
        assert!(report[1]
            .1
            .as_ref()
            .unwrap_err()
            .contains("arrived during the drain"));
        // An empty plan checks too.
        let s = drain(Fallback::Fail, vec![]);
        let (s, out) = go(&s, Event::Resume);
        let (_, out) = checked(&s, &out, &["newcomer"]);
        assert_eq!(finish(&out), Some(Ending::Failed));
    }

    #[test]
    fn an_inventory_that_cannot_be_had_is_asked_again_then_the_drain_is_partial() {
        let s = drain(Fallback::Fail, vec![]);
        let (mut s, _) = go(&s, Event::Resume);
        for _ in 1..CHECK_ATTEMPTS {
            let (next, out) = go(&s, Event::Inventory(Err("stale".into())));
            assert!(out.contains(&Action::CheckEmpty));
            s = next;
        }
        let (_, out) = go(&s, Event::Inventory(Err("stale".into())));
        assert_eq!(finish(&out), Some(Ending::Failed));
    }

    #[test]
    fn duplicates_and_strangers_are_refused_without_change() {
        let s = drain(Fallback::Fail, vec![planned("a", "n2", 0)]);
        let (s, _) = go(&s, Event::Resume);
        let (s, _) = go(&s, answer("a", "j1-move0", done("ok")));
        assert!(s.step(answer("a", "j1-move0", done("ok"))).is_err());
        assert!(s.step(answer("zz", "j1-move0", done("ok"))).is_err());
        assert!(s
            .step(Event::Alternative {
                vm: "a".into(),
                to: None
            })
            .is_err());
        let (s, _) = go(&s, Event::Inventory(Ok(vec![])));
        assert!(s.step(Event::Resume).is_err());
    }

    #[test]
    fn the_machine_survives_its_journal() {
        let s = drain(Fallback::Cold, vec![planned("a", "n2", 0)]);
        let (s, _) = go(&s, Event::Resume);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(serde_json::from_value::<Drain>(json).unwrap(), s);
    }
}
