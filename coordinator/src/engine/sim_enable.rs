//! Deterministic simulation of enable / start-stopped
//! ([`super::enable`]) under faults, in the manner of [`super::sim`].
//!
//! One seed decides the node's VMs (recorded by maintenance and shut off,
//! shut off by a tenant, recorded but already running, recorded but no
//! longer defined), the job (enable or start-stopped), the faults and every
//! delay. Faults: the coordinator crashes before a step, between two of its
//! actions, or when a journal write fails, and resumes from its journal
//! (from the registry when nothing was journaled yet); commands are lost,
//! or delayed past the coordinator's wait and complete later; answers are
//! lost, duplicated or late; a record write fails; the node is partitioned
//! and healed; a start fails; an operator aborts; the deadline passes.
//!
//! Checked after every step: no command executes twice; a VM maintenance
//! recorded is recorded or running; enable never starts a VM it was not
//! asked to (a tenant's shut-off VM); no user VM starts before a VFW of
//! the job. At the end: the report matches the world, and without an
//! abort, a deadline or a failing start, enable restarted every VM
//! maintenance recorded.
//!
//! A failing seed reproduces with `bench sim --job enable --seed N`.

use super::enable::{Enable, Event, Found, Phase, VmOutcome, Which};
use super::sim::{Failure, Rng, Stats};
use super::{Action, Answer, Ending, StopReason};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// Per mille per opportunity, chosen by the seed.
#[derive(Clone, Debug, Default)]
struct Faults {
    crash: u64,
    journal_fail: u64,
    unrecord_fail: u64,
    lose_command: u64,
    slow_command: u64,
    lose_answer: u64,
    duplicate_answer: u64,
    start_fails: u64,
    partition: Option<(u64, u64)>,
    stop_at: Option<(u64, StopReason)>,
}

impl Faults {
    fn from_seed(rng: &mut Rng) -> Faults {
        let mut p = |max: u64| if rng.chance(500) { rng.below(max) } else { 0 };
        let mut f = Faults {
            crash: p(60),
            journal_fail: p(40),
            unrecord_fail: p(150),
            lose_command: p(300),
            slow_command: p(400),
            lose_answer: p(300),
            duplicate_answer: p(300),
            start_fails: p(200),
            ..Default::default()
        };
        if rng.chance(400) {
            let start = rng.below(200);
            f.partition = Some((start, start + 1 + rng.below(400)));
        }
        if rng.chance(150) {
            let reason = if rng.chance(500) {
                StopReason::Deadline
            } else {
                StopReason::Abort("operator".into())
            };
            f.stop_at = Some((rng.below(300), reason));
        }
        f
    }
}

const WAIT: u64 = 20;
const MAX_EVENTS: usize = 200_000;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    WaitExpired {
        epoch: u32,
        vm: String,
        cmd: String,
    },
    Answer {
        epoch: u32,
        vm: String,
        cmd: String,
        answer: Answer,
    },
    FoundOut {
        epoch: u32,
        vm: String,
        cmd: String,
    },
    Restarted {
        epoch: u32,
    },
    /// An operator's abort, or the deadline (`true`).
    Stop {
        deadline: bool,
    },
    /// Agent side: durable, survives coordinator restarts.
    Deliver {
        vm: String,
        cmd: String,
        reply_epoch: u32,
    },
}

/// A VM of the simulated node.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Vm {
    vfw: bool,
    defined: bool,
    running: bool,
}

struct World {
    rng: Rng,
    faults: Faults,
    which: Which,
    policy: Policy,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Pending)>>,
    vms: BTreeMap<String, Vm>,
    records: BTreeSet<String>,
    /// What maintenance recorded before the job began.
    recorded_before: BTreeSet<String>,
    /// The VMs the job was asked to start (fixed when it is created).
    asked: Option<BTreeSet<String>>,
    results: BTreeMap<String, Answer>,
    executions: BTreeMap<String, u32>,
    /// VMs whose start executed, in order.
    started: Vec<String>,
    waiting: BTreeSet<String>,
    journal: Option<Enable>,
    engine: Option<Enable>,
    epoch: u32,
    finished: Option<(Enable, Ending)>,
    stats: Stats,
    trace: Vec<String>,
}

/// Who decides: the engine, or the policy of the executor it replaced
/// (kept to show that the simulation finds what that one got wrong).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Engine,
    /// The old `start_vms`: a start without an answer in time was a
    /// failure (reported "not started" although it could land later).
    OldExecutor,
}

/// Runs one seed to the end; `Err` names the broken invariant.
pub fn run(seed: u64) -> Result<Stats, Failure> {
    run_with(seed, Policy::Engine)
}

/// [`run`] with the given decision policy.
pub fn run_with(seed: u64, policy: Policy) -> Result<Stats, Failure> {
    let mut rng = Rng::new(seed);
    let faults = Faults::from_seed(&mut rng);
    let which = if rng.chance(300) {
        Which::StartStopped
    } else {
        Which::Enable
    };
    let mut vms = BTreeMap::new();
    let mut records = BTreeSet::new();
    for i in 0..1 + rng.below(7) {
        let name = format!("vm{i}");
        let vfw = i == 0 || rng.chance(200);
        let mut vm = Vm {
            vfw,
            defined: true,
            running: false,
        };
        match rng.below(10) {
            // A tenant's shut-off VM: enable must leave it alone.
            0 | 1 => {}
            // Recorded, but running again (started by hand).
            2 => {
                vm.running = true;
                records.insert(name.clone());
            }
            // Recorded, but no longer defined here.
            3 => {
                vm.defined = false;
                records.insert(name.clone());
            }
            // Running, not recorded.
            4 => vm.running = true,
            // Stopped by maintenance and recorded.
            _ => {
                records.insert(name.clone());
            }
        }
        vms.insert(name, vm);
    }
    let mut w = World {
        rng,
        faults,
        which,
        policy,
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        vms,
        recorded_before: records.clone(),
        records,
        asked: None,
        results: BTreeMap::new(),
        executions: BTreeMap::new(),
        started: Vec::new(),
        waiting: BTreeSet::new(),
        journal: None,
        engine: None,
        epoch: 0,
        finished: None,
        stats: Stats::default(),
        trace: Vec::new(),
    };
    if let Some((t, reason)) = w.faults.stop_at.clone() {
        let deadline = reason == StopReason::Deadline;
        w.at(t, Pending::Stop { deadline });
    }
    let fail = |w: &World, message: String| Failure {
        job: "enable",
        seed,
        event: w.stats.events,
        message,
        trace: w.trace.clone(),
    };
    w.start();
    while let Some(Reverse((t, _, p))) = w.queue.pop() {
        w.now = t;
        w.stats.events += 1;
        if w.stats.events > MAX_EVENTS {
            return Err(fail(&w, "no progress (stuck)".into()));
        }
        w.handle(p);
        w.check().map_err(|m| fail(&w, m))?;
    }
    w.check_end().map_err(|m| fail(&w, m))?;
    Ok(w.stats)
}

impl World {
    fn at(&mut self, t: u64, p: Pending) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, p)));
    }

    fn cut_off(&self, t: u64) -> bool {
        self.faults.partition.is_some_and(|(a, b)| t >= a && t < b)
    }

    fn log(&mut self, line: String) {
        self.trace.push(format!("t={} {line}", self.now));
    }

    /// The driver's start: the journaled machine, or a new one from the
    /// registry (what the inventory and the records say now).
    fn start(&mut self) {
        let machine = match &self.journal {
            Some(m) => m.clone(),
            None => {
                let list: Vec<(String, bool, Found)> = self
                    .vms
                    .iter()
                    .filter(|(name, vm)| match self.which {
                        Which::Enable => self.records.contains(*name),
                        Which::StartStopped => vm.defined && !vm.running,
                    })
                    .map(|(name, vm)| {
                        let found = match (vm.defined, vm.running) {
                            (false, _) => Found::Gone,
                            (true, true) => Found::Running,
                            (true, false) => Found::ShutOff,
                        };
                        (name.clone(), vm.vfw, found)
                    })
                    .collect();
                if self.asked.is_none() {
                    self.asked = Some(list.iter().map(|(n, _, _)| n.clone()).collect());
                }
                Enable::new("job", "node1", self.which, &list)
            }
        };
        self.engine = Some(machine);
        self.feed(Event::Resume);
    }

    fn feed(&mut self, event: Event) {
        let Some(engine) = &self.engine else { return };
        let event = match (self.policy, event) {
            (
                Policy::OldExecutor,
                Event::Answered {
                    vm,
                    answer: Answer::Unknown(m),
                },
            ) if engine
                .vms
                .iter()
                .any(|t| t.vm == vm && t.phase == Phase::Starting) =>
            {
                Event::Answered {
                    vm,
                    answer: Answer::Failed(m),
                }
            }
            (_, e) => e,
        };
        let stepped = engine.step(event.clone());
        self.log(format!("event {event:?}"));
        let (next, actions) = match stepped {
            Ok(x) => x,
            Err(e) => {
                self.stats.refused += 1;
                return self.log(format!("refused: {e}"));
            }
        };
        if self.rng.chance(self.faults.crash) {
            return self.crash();
        }
        for (i, a) in actions.into_iter().enumerate() {
            // Dies between two actions of a step (the journal is written).
            if i > 0 && self.rng.chance(self.faults.crash / 2) {
                return self.crash();
            }
            if !self.perform(&next, a) {
                return;
            }
        }
        self.engine = Some(next);
    }

    fn crash(&mut self) {
        self.stats.crashes += 1;
        self.stats.faults += 1;
        self.log("coordinator crashes".into());
        self.engine = None;
        self.waiting.clear();
        self.epoch += 1;
        let epoch = self.epoch;
        let t = self.now + 1 + self.rng.below(30);
        self.at(t, Pending::Restarted { epoch });
    }

    fn perform(&mut self, next: &Enable, a: Action) -> bool {
        let epoch = self.epoch;
        let t = self.now + 1 + self.rng.below(5);
        match a {
            Action::Journal => {
                if self.rng.chance(self.faults.journal_fail) {
                    self.log("journal write fails".into());
                    self.crash();
                    return false;
                }
                self.journal = Some(next.clone());
            }
            Action::Unrecord { vm } => {
                if self.rng.chance(self.faults.unrecord_fail) {
                    // Left behind: harmless (a running VM's stale record).
                    self.stats.faults += 1;
                    self.log(format!("unrecord of {vm} fails"));
                } else {
                    self.records.remove(&vm);
                }
            }
            Action::SendStart { vm, cmd } => {
                self.waiting.insert(cmd.clone());
                self.send(&vm, &cmd, epoch);
                self.at(self.now + WAIT, Pending::WaitExpired { epoch, vm, cmd });
            }
            Action::FindOut { vm, cmd } => self.at(t, Pending::FoundOut { epoch, vm, cmd }),
            Action::Note { .. } => {}
            Action::Finish { ending, summary } => {
                self.log(format!("finished {ending:?}: {summary}"));
                self.finished = Some((next.clone(), ending));
            }
            other => self.log(format!("not an enable action: {other:?}")),
        }
        true
    }

    fn send(&mut self, vm: &str, cmd: &str, reply_epoch: u32) {
        if self.rng.chance(self.faults.lose_command) {
            self.stats.faults += 1;
            return self.log(format!("command {cmd} lost"));
        }
        let delay = if self.rng.chance(self.faults.slow_command) {
            self.stats.faults += 1;
            WAIT + self.rng.below(100)
        } else {
            1 + self.rng.below(WAIT / 2)
        };
        let p = Pending::Deliver {
            vm: vm.into(),
            cmd: cmd.into(),
            reply_epoch,
        };
        self.at(self.now + delay, p);
    }

    fn handle(&mut self, p: Pending) {
        let live = |e: u32, w: &World| e == w.epoch && w.engine.is_some();
        match p {
            Pending::Stop { deadline } => {
                let reason = match deadline {
                    true => StopReason::Deadline,
                    false => StopReason::Abort("operator".into()),
                };
                self.feed(Event::Stop(reason))
            }
            Pending::Restarted { epoch } if epoch == self.epoch => {
                self.log("coordinator restarts from its journal".into());
                self.start();
            }
            Pending::Restarted { .. } => {}
            Pending::WaitExpired { epoch, vm, cmd }
                if live(epoch, self) && self.waiting.remove(&cmd) =>
            {
                let answer = Answer::Unknown(format!("no answer within {WAIT} ticks"));
                self.feed(Event::Answered { vm, answer });
            }
            Pending::Answer {
                epoch,
                vm,
                cmd,
                answer,
            } if live(epoch, self) => {
                self.waiting.remove(&cmd);
                self.feed(Event::Answered { vm, answer });
            }
            Pending::FoundOut { epoch, vm, cmd } if live(epoch, self) => {
                let answer = if self.cut_off(self.now) {
                    Answer::Unknown("node unreachable".into())
                } else if let Some(a) = self.results.get(&cmd) {
                    a.clone()
                } else {
                    self.send(&vm, &cmd, epoch);
                    Answer::Unknown("not executed yet; sent again".into())
                };
                self.feed(Event::Answered { vm, answer });
            }
            Pending::Deliver {
                vm,
                cmd,
                reply_epoch,
            } => {
                if let Some((_, end)) = self.faults.partition.filter(|_| self.cut_off(self.now)) {
                    let p = Pending::Deliver {
                        vm,
                        cmd,
                        reply_epoch,
                    };
                    return self.at(end, p);
                }
                let answer = match self.results.get(&cmd) {
                    Some(a) => a.clone(),
                    None => {
                        *self.executions.entry(cmd.clone()).or_default() += 1;
                        let state = self.vms.get(&vm).cloned();
                        let a = match state {
                            Some(v) if !v.defined => Answer::Failed(format!("no domain {vm}")),
                            Some(v) if v.running => {
                                Answer::Failed(format!("{vm} is already running"))
                            }
                            None => Answer::Failed(format!("no domain {vm}")),
                            Some(_) if self.rng.chance(self.faults.start_fails) => {
                                self.stats.faults += 1;
                                Answer::Failed("libvirt: not enough memory".into())
                            }
                            Some(_) => {
                                self.vms.get_mut(&vm).expect("present").running = true;
                                self.started.push(vm.clone());
                                Answer::Done(format!("{vm} started"))
                            }
                        };
                        self.log(format!("agent executes {cmd} ({vm}): {a:?}"));
                        self.results.insert(cmd.clone(), a.clone());
                        a
                    }
                };
                let copies = if self.rng.chance(self.faults.lose_answer) {
                    0
                } else if self.rng.chance(self.faults.duplicate_answer) {
                    2
                } else {
                    1
                };
                if copies != 1 {
                    self.stats.faults += 1;
                }
                for _ in 0..copies {
                    let t = self.now + 1 + self.rng.below(WAIT);
                    let p = Pending::Answer {
                        epoch: reply_epoch,
                        vm: vm.clone(),
                        cmd: cmd.clone(),
                        answer: answer.clone(),
                    };
                    self.at(t, p);
                }
            }
            _ => {}
        }
    }

    /// Invariants after every step.
    fn check(&self) -> Result<(), String> {
        if let Some((cmd, n)) = self.executions.iter().find(|(_, n)| **n > 1) {
            return Err(format!("command {cmd} executed {n} times"));
        }
        for vm in &self.recorded_before {
            if !self.records.contains(vm) && !self.vms[vm].running {
                return Err(format!(
                    "{vm}'s record went while it is not running: enable would not restart it"
                ));
            }
        }
        let asked = self.asked.clone().unwrap_or_default();
        if let Some(vm) = self.started.iter().find(|vm| !asked.contains(*vm)) {
            return Err(format!("{vm} was started, but the job was not asked to"));
        }
        if let Some(user) = self.started.iter().position(|vm| !self.vms[vm].vfw) {
            if let Some(vfw) = self.started[user..].iter().find(|vm| self.vms[*vm].vfw) {
                return Err(format!(
                    "VFW {vfw} started after user VM {}",
                    self.started[user]
                ));
            }
        }
        Ok(())
    }

    /// The report says what happened, and enable did its job.
    fn check_end(&self) -> Result<(), String> {
        let Some((done, ending)) = &self.finished else {
            return Err("the job never finished".into());
        };
        let mut all_done = true;
        for t in &done.vms {
            let Phase::Done(outcome) = &t.phase else {
                return Err(format!("{} has no outcome in a finished job", t.vm));
            };
            all_done &= outcome.done();
            let vm = &self.vms[&t.vm];
            let was_recorded = self.recorded_before.contains(&t.vm);
            let recorded = self.records.contains(&t.vm);
            let ok = match outcome {
                VmOutcome::Started(_) | VmOutcome::AlreadyRunning => vm.running,
                VmOutcome::NotStarted(_) => !vm.running && (recorded || !was_recorded),
                VmOutcome::Gone => !vm.defined,
                VmOutcome::Skipped(_) => {
                    !vm.running && !self.started.contains(&t.vm) && (recorded || !was_recorded)
                }
                VmOutcome::Unknown(_) => recorded || !was_recorded,
            };
            if !ok {
                return Err(format!(
                    "{} reported {outcome:?}, but {vm:?}, recorded={recorded}",
                    t.vm
                ));
            }
        }
        let expected = match (&done.stopping, all_done) {
            (Some(StopReason::Abort(_)), _) => Ending::Aborted,
            (_, true) => Ending::Succeeded,
            (_, false) => Ending::Failed,
        };
        if *ending != expected {
            return Err(format!("ended {ending:?} with all_done={all_done}"));
        }
        // Enable's promise: without a stop or a failing start, every VM
        // maintenance recorded (and still defined) runs.
        if self.which == Which::Enable
            && self.faults.stop_at.is_none()
            && !self
                .results
                .values()
                .any(|a| matches!(a, Answer::Failed(_)))
        {
            for vm in &self.recorded_before {
                let v = &self.vms[vm];
                if v.defined && !v.running {
                    return Err(format!("{vm} was recorded, but enable did not restart it"));
                }
            }
            if *ending != Ending::Succeeded
                && self.recorded_before.iter().all(|vm| self.vms[vm].defined)
            {
                return Err(format!("ended {ending:?} with every recorded VM running"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_seeds_keep_every_invariant() {
        match crate::engine::sim::run_many(run, 0, 10_000) {
            Ok(s) => {
                assert!(
                    s.crashes > 100 && s.faults > 10_000,
                    "faults too rare: {s:?}"
                );
                assert!(s.refused > 0, "no duplicate ever reached the engine: {s:?}");
            }
            Err(f) => panic!("{f}"),
        }
    }

    /// The executor this engine replaced took a start without an answer
    /// in time for a failure: seed 0 has such a start land later, and the
    /// job reported the running VM "not started" (its record left behind).
    #[test]
    fn regression_seed_of_the_unknown_start_taken_for_a_failure() {
        let old = run_with(0, Policy::OldExecutor).expect_err("the old policy fails seed 0");
        assert!(old.message.contains("reported NotStarted"), "{old}");
        if let Err(f) = run(0) {
            panic!("{f}");
        }
    }

    #[test]
    fn a_seed_is_its_own_reproduction() {
        assert_eq!(run(7).unwrap(), run(7).unwrap());
    }
}
