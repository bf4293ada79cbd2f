//! Deterministic simulation of the job engine under faults.
//!
//! One seed decides everything: the node's VMs, which faults happen and
//! when, and every delay. The world is simulated (a clock, the command
//! queue to the agent, the agent and its hypervisor, the `stopped_by`
//! records, the job journal); the engine is the real one. Faults: the
//! coordinator crashes at any step and resumes from its journal; a journal
//! write fails; a record write fails; commands are lost, delayed past the
//! coordinator's wait (they time out and complete later) or duplicated;
//! answers are lost, duplicated or arrive late; the node is partitioned
//! and healed; a stop fails; an operator aborts. After every step the
//! invariants are checked; at the end the partition heals, every queued
//! command runs, `enable` restarts what is recorded, and every VM must run.
//!
//! Not modelled: several nodes and migrations (stop-all only), the agent's
//! own at-most-once logic (the simulated agent keeps its results by id, as
//! the real one does in its bucket), NATS and KV internals, real time.
//!
//! A failing seed reproduces with `bench sim --seed N` (the failure names
//! the seed, the step and a trace).

use super::stop_all::{Event, Phase, StopAll, VmOutcome};
use super::{Action, Answer, StopReason};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// The planner's SplitMix64, seeded per run, with the two draws the
/// simulation needs.
#[derive(Clone, Debug)]
pub struct Rng(nodemaint_planner::synth::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(nodemaint_planner::synth::SplitMix64(
            seed ^ 0x9e37_79b9_7f4a_7c15,
        ))
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n.max(1)
    }

    /// True with probability `per_mille`/1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// The faults of one run, chosen by its seed (per mille per opportunity).
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub crash: u64,
    pub journal_fail: u64,
    pub record_fail: u64,
    pub lose_command: u64,
    pub slow_command: u64,
    pub lose_answer: u64,
    pub duplicate_answer: u64,
    pub stop_fails: u64,
    /// The node is cut off between these times.
    pub partition: Option<(u64, u64)>,
    /// An operator aborts at this time.
    pub abort_at: Option<u64>,
}

impl Faults {
    pub fn from_seed(rng: &mut Rng) -> Faults {
        let mut p = |max: u64| if rng.chance(500) { rng.below(max) } else { 0 };
        let mut f = Faults {
            crash: p(60),
            journal_fail: p(40),
            record_fail: p(150),
            lose_command: p(300),
            slow_command: p(400),
            lose_answer: p(300),
            duplicate_answer: p(300),
            stop_fails: p(200),
            ..Default::default()
        };
        if rng.chance(400) {
            let start = rng.below(200);
            f.partition = Some((start, start + 1 + rng.below(400)));
        }
        if rng.chance(150) {
            f.abort_at = Some(rng.below(300));
        }
        f
    }
}

/// What the coordinator's wait for a command answer is, in ticks.
const WAIT: u64 = 20;
/// A run that has not finished after this many events is stuck.
const MAX_EVENTS: usize = 200_000;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    /// Coordinator side, void if the coordinator restarted since (`epoch`).
    RecordWritten {
        epoch: u32,
        vm: String,
        result: Result<(), String>,
    },
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
    Abort,
    /// Agent side: durable, survives coordinator restarts.
    Deliver {
        vm: String,
        cmd: String,
        reply_epoch: u32,
    },
}

/// Figures of a passing run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: usize,
    pub faults: usize,
    pub crashes: usize,
    pub refused: usize,
}

/// A broken invariant: everything needed to reproduce it.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The simulated job (`bench sim --job JOB`).
    pub job: &'static str,
    pub seed: u64,
    pub event: usize,
    pub message: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} broke an invariant at event {}: {}",
            self.seed, self.event, self.message
        )?;
        writeln!(
            f,
            "reproduce: bench sim --job {} --seed {}",
            self.job, self.seed
        )?;
        for line in self.trace.iter().rev().take(30).rev() {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

struct World {
    rng: Rng,
    faults: Faults,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Pending)>>,
    running: BTreeMap<String, bool>,
    records: BTreeSet<String>,
    /// The agent's results by command id (and how often each ran).
    results: BTreeMap<String, Answer>,
    executions: BTreeMap<String, u32>,
    /// Open waits for a command's answer (coordinator memory).
    waiting: BTreeSet<String>,
    journal: StopAll,
    engine: Option<StopAll>,
    epoch: u32,
    finished: Option<StopAll>,
    stats: Stats,
    trace: Vec<String>,
}

/// Runs one seed to the end; `Err` names the broken invariant.
pub fn run(seed: u64) -> Result<Stats, Failure> {
    let mut rng = Rng::new(seed);
    let faults = Faults::from_seed(&mut rng);
    let vms: Vec<(String, bool)> = (0..1 + rng.below(8))
        .map(|i| (format!("vm{i}"), i == 0 || rng.chance(150)))
        .collect();
    let parallel = 1 + rng.below(4) as usize;
    let job = StopAll::new("job", "node1", parallel, &vms);
    let mut w = World {
        rng,
        faults,
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        running: vms.iter().map(|(n, _)| (n.clone(), true)).collect(),
        records: BTreeSet::new(),
        results: BTreeMap::new(),
        executions: BTreeMap::new(),
        waiting: BTreeSet::new(),
        journal: job.clone(),
        engine: Some(job),
        epoch: 0,
        finished: None,
        stats: Stats::default(),
        trace: Vec::new(),
    };
    if let Some(t) = w.faults.abort_at {
        w.at(t, Pending::Abort);
    }
    let fail = |w: &World, message: String| Failure {
        job: "stop-all",
        seed,
        event: w.stats.events,
        message,
        trace: w.trace.clone(),
    };
    w.feed(Event::Resume);
    while let Some(Reverse((t, _, p))) = w.queue.pop() {
        w.now = t;
        w.stats.events += 1;
        if w.stats.events > MAX_EVENTS {
            return Err(fail(&w, "no progress (stuck)".into()));
        }
        w.handle(p);
        w.check().map_err(|m| fail(&w, m))?;
    }
    let Some(done) = w.finished.clone() else {
        return Err(fail(&w, "the job never finished".into()));
    };
    w.check_report(&done).map_err(|m| fail(&w, m))?;
    // Enable: restart exactly what is recorded; then no VM may be down.
    for vm in std::mem::take(&mut w.records) {
        w.running.insert(vm, true);
    }
    if let Some((vm, _)) = w.running.iter().find(|(_, up)| !**up) {
        return Err(fail(&w, format!("{vm} is shut off after enable: lost")));
    }
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

    /// Steps the engine (if the coordinator is up) and performs the actions.
    fn feed(&mut self, event: Event) {
        let Some(engine) = &self.engine else { return };
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
            // Dies before anything of this step is written.
            return self.crash();
        }
        for a in actions {
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

    /// One action; false when the coordinator died doing it.
    fn perform(&mut self, next: &StopAll, a: Action) -> bool {
        let epoch = self.epoch;
        let delay = 1 + self.rng.below(5);
        let t = self.now + delay;
        match a {
            Action::Journal => {
                if self.rng.chance(self.faults.journal_fail) {
                    // Journal before act: nothing after it happens; the
                    // driver gives up the step (a restart resumes).
                    self.log("journal write fails".into());
                    self.crash();
                    return false;
                }
                self.journal = next.clone();
            }
            Action::Record { vm } => {
                let result = if self.rng.chance(self.faults.record_fail) {
                    self.stats.faults += 1;
                    Err("KV unavailable".to_string())
                } else {
                    self.records.insert(vm.clone());
                    Ok(())
                };
                self.at(t, Pending::RecordWritten { epoch, vm, result });
            }
            Action::Unrecord { vm } => {
                self.records.remove(&vm);
            }
            Action::SendStop { vm, cmd } => {
                self.waiting.insert(cmd.clone());
                self.send(&vm, &cmd, epoch);
                self.at(self.now + WAIT, Pending::WaitExpired { epoch, vm, cmd });
            }
            Action::FindOut { vm, cmd } => {
                self.at(t, Pending::FoundOut { epoch, vm, cmd });
            }
            // Not stop-all's: other machines' sends.
            Action::SendStart { .. } | Action::SendCommand { .. } => {
                self.log(format!("ignored foreign action {a:?}"))
            }
            Action::Note { .. } => {}
            Action::Finish { ending, summary } => {
                self.log(format!("finished {ending:?}: {summary}"));
                self.finished = Some(next.clone());
            }
        }
        true
    }

    /// Puts a command on the agent's durable queue (or loses it).
    fn send(&mut self, vm: &str, cmd: &str, reply_epoch: u32) {
        if self.rng.chance(self.faults.lose_command) {
            self.stats.faults += 1;
            return self.log(format!("command {cmd} lost"));
        }
        let slow = self.rng.chance(self.faults.slow_command);
        let delay = if slow {
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
            Pending::Abort => self.feed(Event::Stop(StopReason::Abort("operator".into()))),
            Pending::Restarted { epoch } if epoch == self.epoch => {
                self.log("coordinator restarts from its journal".into());
                self.engine = Some(self.journal.clone());
                if self.journal.finished {
                    self.finished = Some(self.journal.clone());
                } else {
                    self.feed(Event::Resume);
                }
            }
            Pending::Restarted { .. } => {}
            Pending::RecordWritten { epoch, vm, result } if live(epoch, self) => {
                self.feed(Event::Recorded { vm, result })
            }
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
                // A late or duplicated answer reaches the engine too: it must
                // refuse what does not fit, and the truth is the truth.
                self.waiting.remove(&cmd);
                self.feed(Event::Answered { vm, answer });
            }
            Pending::FoundOut { epoch, vm, cmd } if live(epoch, self) => {
                let answer = if self.cut_off(self.now) {
                    Answer::Unknown("node unreachable".into())
                } else if let Some(a) = self.results.get(&cmd) {
                    a.clone()
                } else {
                    // Never claimed: send the same id again.
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
                    // The durable queue holds it until the node is back.
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
                        let a = if self.rng.chance(self.faults.stop_fails) {
                            self.stats.faults += 1;
                            Answer::Failed("libvirt: domain is busy".into())
                        } else {
                            self.running.insert(vm.clone(), false);
                            Answer::Done("shut off".into())
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
        for (vm, up) in &self.running {
            if !up && !self.records.contains(vm) {
                return Err(format!(
                    "{vm} is shut off but not recorded: enable would not restart it"
                ));
            }
        }
        if let Some((cmd, n)) = self.executions.iter().find(|(_, n)| **n > 1) {
            return Err(format!("command {cmd} executed {n} times"));
        }
        Ok(())
    }

    /// The report says what happened, at the moment the job ended.
    fn check_report(&self, done: &StopAll) -> Result<(), String> {
        for t in &done.vms {
            let Phase::Done(outcome) = &t.phase else {
                return Err(format!("{} has no outcome in a finished job", t.vm));
            };
            let recorded = self.records.contains(&t.vm);
            let ok = match outcome {
                VmOutcome::Stopped(_) => recorded && !self.running[&t.vm],
                VmOutcome::Unknown(_) => recorded,
                VmOutcome::NotStopped(_) | VmOutcome::NotRecorded(_) | VmOutcome::Skipped(_) => {
                    // Not stopped by this job's answers; a stop still queued
                    // at the agent is covered by the record invariant.
                    self.running[&t.vm] || recorded
                }
            };
            if !ok {
                return Err(format!(
                    "{} reported {outcome:?}, but recorded={recorded}, running={}",
                    t.vm, self.running[&t.vm]
                ));
            }
        }
        Ok(())
    }
}

/// Runs `seeds` consecutive seeds from `first` of one job kind's
/// simulation (`run`); the first failure, or the summed figures.
pub fn run_many(
    run: fn(u64) -> Result<Stats, Failure>,
    first: u64,
    seeds: u64,
) -> Result<Stats, Failure> {
    let mut total = Stats::default();
    for seed in first..first + seeds {
        let s = run(seed)?;
        total.events += s.events;
        total.faults += s.faults;
        total.crashes += s.crashes;
        total.refused += s.refused;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_seeds_keep_every_invariant() {
        match run_many(run, 0, 10_000) {
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

    /// Seeds that broke the previous executor's policy (a stop without an
    /// answer in time was unrecorded; the stop completed later, and enable
    /// did not restart the VM): seed 0, a slow stop; seed 42, the same with
    /// two VMs in flight.
    #[test]
    fn regression_seeds_of_the_unrecorded_late_stop() {
        for seed in [0, 42] {
            if let Err(f) = run(seed) {
                panic!("{f}");
            }
        }
    }

    #[test]
    fn a_seed_is_its_own_reproduction() {
        assert_eq!(run(42).unwrap(), run(42).unwrap());
    }
}
