//! Deterministic simulation of rolling maintenance under faults.
//!
//! One seed decides the fleet (2 to 8 nodes, a few VMs each, groups of at
//! most `max_unavailable`), the faults and every delay. The world is
//! simulated: node status and holder, boot ids, the VMs running on each
//! node unrecorded or recorded as stopped by maintenance, child jobs
//! (drains and enables, durable), the agents' durable command queues and
//! results by command id, the job journal, the operator. The engine is the
//! real one; the driver is modelled action by action as
//! `crate::driver::rolling` performs it.
//!
//! Faults: drains that fail, end partial, or miss a VM that lands on the
//! node mid-drain; hooks that fail, whose answers are lost or come too
//! late (the coordinator's wait expires and the node reboots later); nodes
//! that come back slowly or never; checks and enables that fail; lost and
//! duplicated answers; the coordinator crashing at any step or between two
//! acts of a step, its journal write failing; a leader change (the new
//! leader resumes from the journal; whatever the old one awaited is void);
//! pause and resume, abort and a deadline at random times; in
//! `--wait-for-continue` mode the operator reboots and continues late.
//!
//! Invariants after every step: never more than `max_unavailable` nodes
//! out; no hook (or operator reboot) while the node holds a running VM
//! that maintenance has not recorded; each node's hook runs at most once.
//! At the end: the job finished, and its report matches the world.
//!
//! Not modelled: the planner (groups are chunks), VM placement on the
//! other nodes, NATS and KV internals, real time.
//!
//! A failing seed reproduces with `bench sim --job rolling --seed N`.

use super::rolling::{Action, Command, Event, Hook, Inspection, Phase, Progress, Rolling};
use super::sim::{Failure, Rng, Stats};
use super::{Answer, Ending, StopReason};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// The faults of one run (per mille per opportunity).
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub crash: u64,
    pub crash_between_acts: u64,
    pub journal_fail: u64,
    pub drain_fails: u64,
    pub vm_lands: u64,
    pub drain_misses_lander: u64,
    pub hook_fails: u64,
    pub lose_command: u64,
    pub slow_command: u64,
    pub lose_answer: u64,
    pub duplicate_answer: u64,
    pub slow_boot: u64,
    pub never_back: u64,
    pub checks_fail: u64,
    pub enable_fails: u64,
    pub pause_at: Option<(u64, u64)>,
    pub abort_at: Option<u64>,
    pub deadline_at: Option<u64>,
    pub leader_change_at: Option<u64>,
}

impl Faults {
    fn from_seed(rng: &mut Rng) -> Faults {
        let mut p = |max: u64| if rng.chance(500) { rng.below(max) } else { 0 };
        let mut f = Faults {
            crash: p(60),
            crash_between_acts: p(60),
            journal_fail: p(40),
            drain_fails: p(150),
            vm_lands: p(300),
            drain_misses_lander: p(800),
            hook_fails: p(80),
            lose_command: p(200),
            slow_command: p(300),
            lose_answer: p(300),
            duplicate_answer: p(300),
            slow_boot: p(400),
            never_back: p(60),
            checks_fail: p(200),
            enable_fails: p(60),
            ..Default::default()
        };
        if rng.chance(200) {
            let a = rng.below(400);
            f.pause_at = Some((a, a + 1 + rng.below(300)));
        }
        if rng.chance(100) {
            f.abort_at = Some(rng.below(800));
        }
        if rng.chance(100) {
            f.deadline_at = Some(rng.below(1500));
        }
        if rng.chance(200) {
            f.leader_change_at = Some(rng.below(800));
        }
        f
    }
}

/// The coordinator's wait for a command's answer, in ticks.
const WAIT: u64 = 30;
/// The reboot timeout, in ticks.
const REBOOT_TIMEOUT: u64 = 400;
const MAX_EVENTS: usize = 300_000;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    // Coordinator side, void once the coordinator restarted (`epoch`).
    AwaitChild {
        epoch: u32,
        node: String,
        child: String,
    },
    Inspected {
        epoch: u32,
        node: String,
    },
    WaitExpired {
        epoch: u32,
        node: String,
        cmd: String,
    },
    Answer {
        epoch: u32,
        node: String,
        cmd: String,
        answer: Answer,
    },
    FoundOut {
        epoch: u32,
        node: String,
        cmd: String,
        what: SimCmd,
    },
    BootPoll {
        epoch: u32,
        node: String,
        before: u64,
        deadline: Option<u64>,
    },
    VerifyPoll {
        epoch: u32,
        node: String,
        tries: u32,
    },
    OperatorPoll {
        epoch: u32,
    },
    Restarted {
        epoch: u32,
    },
    // World side: durable.
    ChildEnds {
        child: String,
    },
    VmLands {
        node: String,
        vm: String,
    },
    Deliver {
        node: String,
        cmd: String,
        what: SimCmd,
        reply_epoch: u32,
    },
    NodeDown {
        node: String,
        back_at: Option<u64>,
    },
    NodeUp {
        node: String,
    },
    OperatorReboot {
        node: String,
    },
    Pause,
    Unpause,
    Abort,
    Deadline,
    LeaderChange,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SimCmd {
    Hook,
    Checks,
}

#[derive(Clone, Debug, Default)]
struct SimNode {
    maintenance: bool,
    holder: Option<String>,
    boot: u64,
    up: bool,
    unrecorded: BTreeSet<String>,
    recorded: BTreeSet<String>,
    hooks: u32,
    operator_rebooted: bool,
    /// Commands waiting in its durable queue while it is down.
    queued: Vec<Pending>,
}

#[derive(Clone, Debug)]
struct Child {
    node: String,
    drain: bool,
    result: Option<Result<(), String>>,
    stop: bool,
}

struct World {
    rng: Rng,
    faults: Faults,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Pending)>>,
    nodes: BTreeMap<String, SimNode>,
    children: BTreeMap<String, Child>,
    results: BTreeMap<String, Answer>,
    executions: BTreeMap<String, u32>,
    waiting: BTreeSet<String>,
    /// Durable operator intent (the job record): paused, stop reason,
    /// continued nodes.
    paused: bool,
    stop: Option<StopReason>,
    continued: BTreeSet<String>,
    stop_fed: bool,
    journal: Rolling,
    engine: Option<Rolling>,
    epoch: u32,
    finished: Option<(Rolling, Ending)>,
    violations: Vec<String>,
    stats: Stats,
    trace: Vec<String>,
}

/// Runs one seed to the end; `Err` names the broken invariant.
pub fn run(seed: u64) -> Result<Stats, Failure> {
    let mut rng = Rng::new(seed ^ 0x5011_1e55);
    let faults = Faults::from_seed(&mut rng);
    let n = 2 + rng.below(7) as usize;
    let k = 1 + rng.below(3) as usize;
    let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
    let groups: Vec<Vec<String>> = names.chunks(k).map(<[String]>::to_vec).collect();
    let hook = if rng.chance(200) {
        Hook::Continue
    } else {
        Hook::Named("reboot".into())
    };
    let checks_must_pass = rng.chance(500);
    let mut nodes = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let vms = (0..rng.below(4)).map(|v| format!("vm{i}-{v}")).collect();
        nodes.insert(
            name.clone(),
            SimNode {
                boot: 1,
                up: true,
                unrecorded: vms,
                ..Default::default()
            },
        );
    }
    let job = Rolling::new(
        "r",
        &groups,
        k,
        hook,
        checks_must_pass,
        REBOOT_TIMEOUT,
        Some(1500),
    );
    let mut w = World {
        rng,
        faults,
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        nodes,
        children: BTreeMap::new(),
        results: BTreeMap::new(),
        executions: BTreeMap::new(),
        waiting: BTreeSet::new(),
        paused: false,
        stop: None,
        continued: BTreeSet::new(),
        stop_fed: false,
        journal: job.clone(),
        engine: Some(job),
        epoch: 0,
        finished: None,
        violations: Vec::new(),
        stats: Stats::default(),
        trace: Vec::new(),
    };
    let f = w.faults.clone();
    if let Some((a, b)) = f.pause_at {
        w.at(a, Pending::Pause);
        w.at(b, Pending::Unpause);
    }
    if let Some(t) = f.abort_at {
        w.at(t, Pending::Abort);
    }
    if let Some(t) = f.deadline_at {
        w.at(t, Pending::Deadline);
    }
    if let Some(t) = f.leader_change_at {
        w.at(t, Pending::LeaderChange);
    }
    let fail = |w: &World, message: String| Failure {
        job: "rolling",
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
        if w.finished.is_some() && w.only_coordinator_polls_left() {
            break;
        }
    }
    let Some((done, ending)) = w.finished.clone() else {
        return Err(fail(&w, "the rolling never finished".into()));
    };
    w.check_report(&done, ending).map_err(|m| fail(&w, m))?;
    Ok(w.stats)
}

impl World {
    fn at(&mut self, t: u64, p: Pending) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, p)));
    }

    fn log(&mut self, line: String) {
        self.trace.push(format!("t={} {line}", self.now));
    }

    fn only_coordinator_polls_left(&self) -> bool {
        self.queue.iter().all(|Reverse((_, _, p))| {
            matches!(
                p,
                Pending::OperatorPoll { .. }
                    | Pending::BootPoll { .. }
                    | Pending::Pause
                    | Pending::Unpause
                    | Pending::Abort
                    | Pending::Deadline
                    | Pending::LeaderChange
            )
        })
    }

    /// The coordinator (re)starts: the driver's start, its operator poll,
    /// the stop signal re-armed from the job record.
    fn start(&mut self) {
        self.stop_fed = false;
        let epoch = self.epoch;
        self.at(self.now + 1, Pending::OperatorPoll { epoch });
        self.feed(Event::Start);
        if let Some(r) = self.stop.clone() {
            self.feed_stop(r);
        }
    }

    fn feed_stop(&mut self, r: StopReason) {
        if !self.stop_fed && self.engine.is_some() {
            self.stop_fed = true;
            self.feed(Event::Stop(r));
        }
    }

    fn feed(&mut self, event: Event) {
        let Some(engine) = &self.engine else { return };
        if engine.finished {
            return;
        }
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
            return self.crash(false);
        }
        let mut first = true;
        for a in actions {
            if !first && self.rng.chance(self.faults.crash_between_acts) {
                self.log("coordinator crashes between two acts".into());
                return self.crash(false);
            }
            first = false;
            if !self.perform(&next, a) {
                return;
            }
        }
        self.engine = Some(next);
    }

    fn crash(&mut self, leader_change: bool) {
        self.stats.crashes += 1;
        self.stats.faults += 1;
        self.log(if leader_change {
            "leader change: another coordinator takes over".into()
        } else {
            "coordinator crashes".into()
        });
        self.engine = None;
        self.waiting.clear();
        self.epoch += 1;
        let epoch = self.epoch;
        let t = self.now + 1 + self.rng.below(30);
        self.at(t, Pending::Restarted { epoch });
    }

    fn delay(&mut self) -> u64 {
        1 + self.rng.below(5)
    }

    /// One action as the driver performs it; false when the coordinator
    /// died doing it.
    fn perform(&mut self, next: &Rolling, a: Action) -> bool {
        let epoch = self.epoch;
        match a {
            Action::Journal => {
                if self.rng.chance(self.faults.journal_fail) {
                    self.log("journal write fails".into());
                    self.crash(false);
                    return false;
                }
                self.journal = next.clone();
            }
            Action::Drain { nodes } => {
                for (node, child) in nodes {
                    if !self.children.contains_key(&child) {
                        // Take the node (already taken by this child counts),
                        // then create the child: a crash may fall between.
                        let n = self.nodes.get_mut(&node).expect("node");
                        let taken = n.holder.as_deref() == Some(&child) && n.maintenance;
                        if !taken {
                            if n.holder.is_some() || n.maintenance {
                                let t = self.now + 1;
                                self.at(
                                    t,
                                    Pending::AwaitChild {
                                        epoch,
                                        node,
                                        child: format!("refused:{child}"),
                                    },
                                );
                                continue;
                            }
                            n.maintenance = true;
                            n.holder = Some(child.clone());
                        }
                        if self.rng.chance(self.faults.crash_between_acts) {
                            self.log(format!("crash after taking {node} for {child}"));
                            self.crash(false);
                            return false;
                        }
                        self.launch_drain(&node, &child);
                    }
                    let t = self.now + self.delay();
                    self.at(t, Pending::AwaitChild { epoch, node, child });
                }
            }
            Action::Inspect { node } => {
                let t = self.now + self.delay();
                self.at(t, Pending::Inspected { epoch, node });
            }
            Action::Send { node, cmd, what } => {
                let what = sim_cmd(&what);
                if what == SimCmd::Hook {
                    self.boot_poll(&node, next, None);
                }
                self.waiting.insert(cmd.clone());
                self.send(&node, &cmd, what, epoch);
                let t = self.now + WAIT;
                self.at(t, Pending::WaitExpired { epoch, node, cmd });
            }
            Action::FindOut { node, cmd, what } => {
                let what = sim_cmd(&what);
                if what == SimCmd::Hook {
                    self.boot_poll(&node, next, None);
                }
                let t = self.now + self.delay();
                self.at(
                    t,
                    Pending::FoundOut {
                        epoch,
                        node,
                        cmd,
                        what,
                    },
                );
            }
            Action::WaitBack { node, .. } => {
                let deadline = Some(self.now + REBOOT_TIMEOUT);
                self.boot_poll(&node, next, deadline);
            }
            Action::Enable { node, child } => {
                if !self.children.contains_key(&child) {
                    let n = self.nodes.get_mut(&node).expect("node");
                    let taken = n.holder.as_deref() == Some(&child);
                    if !taken {
                        if n.holder.is_some() || !n.maintenance {
                            let t = self.now + 1;
                            let child = format!("refused:{child}");
                            self.at(t, Pending::AwaitChild { epoch, node, child });
                            return true;
                        }
                        n.holder = Some(child.clone());
                    }
                    if self.rng.chance(self.faults.crash_between_acts) {
                        self.log(format!("crash after taking {node} for {child}"));
                        self.crash(false);
                        return false;
                    }
                    self.children.insert(
                        child.clone(),
                        Child {
                            node: node.clone(),
                            drain: false,
                            result: None,
                            stop: false,
                        },
                    );
                    let t = self.now + 5 + self.rng.below(20);
                    self.at(
                        t,
                        Pending::ChildEnds {
                            child: child.clone(),
                        },
                    );
                }
                let t = self.now + self.delay();
                self.at(t, Pending::AwaitChild { epoch, node, child });
            }
            Action::Verify { node } => {
                let t = self.now + self.delay();
                self.at(
                    t,
                    Pending::VerifyPoll {
                        epoch,
                        node,
                        tries: 0,
                    },
                );
            }
            Action::Note { .. } => {}
            Action::Finish { ending, summary } => {
                self.log(format!("finished {ending:?}: {summary}"));
                self.finished = Some((next.clone(), ending));
            }
        }
        true
    }

    fn boot_poll(&mut self, node: &str, m: &Rolling, deadline: Option<u64>) {
        let before = m
            .nodes
            .iter()
            .find(|t| t.node == node)
            .and_then(|t| t.boot_before.as_deref())
            .and_then(|b| b.parse().ok())
            .unwrap_or(0);
        let t = self.now + 5;
        self.at(
            t,
            Pending::BootPoll {
                epoch: self.epoch,
                node: node.into(),
                before,
                deadline,
            },
        );
    }

    fn launch_drain(&mut self, node: &str, child: &str) {
        self.children.insert(
            child.into(),
            Child {
                node: node.into(),
                drain: true,
                result: None,
                stop: false,
            },
        );
        let took = 10 + self.rng.below(60);
        if self.rng.chance(self.faults.vm_lands) {
            // Created or moved there just before the mark.
            let at = self.now + self.rng.below(took);
            let vm = format!("lander-{node}-{}", self.now);
            self.at(
                at,
                Pending::VmLands {
                    node: node.into(),
                    vm,
                },
            );
        }
        let t = self.now + took;
        self.at(
            t,
            Pending::ChildEnds {
                child: child.into(),
            },
        );
    }

    /// Puts a command on the node's durable queue (or loses it).
    fn send(&mut self, node: &str, cmd: &str, what: SimCmd, reply_epoch: u32) {
        if self.rng.chance(self.faults.lose_command) {
            self.stats.faults += 1;
            return self.log(format!("command {cmd} lost"));
        }
        let delay = if self.rng.chance(self.faults.slow_command) {
            WAIT + self.rng.below(100)
        } else {
            1 + self.rng.below(WAIT / 2)
        };
        let p = Pending::Deliver {
            node: node.into(),
            cmd: cmd.into(),
            what,
            reply_epoch,
        };
        self.at(self.now + delay, p);
    }

    fn answer(&mut self, node: &str, cmd: &str, answer: Answer, epoch: u32) {
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
                epoch,
                node: node.into(),
                cmd: cmd.into(),
                answer: answer.clone(),
            };
            self.at(t, p);
        }
    }

    /// A reboot: the hook's, or the operator's in continue mode.
    fn reboot(&mut self, node: &str) {
        let n = &self.nodes[node];
        if !n.unrecorded.is_empty() {
            let v = format!(
                "{node} rebooted while running unrecorded VMs {:?}",
                n.unrecorded
            );
            self.violations.push(v);
        }
        let back_at = if self.rng.chance(self.faults.never_back) {
            self.stats.faults += 1;
            None
        } else if self.rng.chance(self.faults.slow_boot) {
            Some(self.now + REBOOT_TIMEOUT / 2 + self.rng.below(REBOOT_TIMEOUT))
        } else {
            Some(self.now + 5 + self.rng.below(40))
        };
        let t = self.now + 1;
        self.at(
            t,
            Pending::NodeDown {
                node: node.into(),
                back_at,
            },
        );
    }

    fn live(&self, epoch: u32) -> bool {
        epoch == self.epoch && self.engine.is_some()
    }

    fn handle(&mut self, p: Pending) {
        match p {
            Pending::Restarted { epoch } if epoch == self.epoch => {
                self.log("coordinator restarts from its journal".into());
                self.engine = Some(self.journal.clone());
                if self.journal.finished {
                    let ending = match self.journal.finish() {
                        Action::Finish { ending, .. } => ending,
                        _ => unreachable!("finish is a Finish"),
                    };
                    self.finished = Some((self.journal.clone(), ending));
                } else {
                    self.start();
                }
            }
            Pending::LeaderChange if self.engine.is_some() => self.crash(true),
            Pending::Pause => self.paused = true,
            Pending::Unpause => self.paused = false,
            Pending::Abort | Pending::Deadline
                if self.stop.is_none() && self.finished.is_none() =>
            {
                let r = if matches!(p, Pending::Abort) {
                    StopReason::Abort("aborted by the operator".into())
                } else {
                    StopReason::Deadline
                };
                self.log(format!("stop requested: {r:?}"));
                self.stop = Some(r.clone());
                // Its drains in flight are stopped too.
                for c in self.children.values_mut() {
                    if c.drain && c.result.is_none() {
                        c.stop = true;
                    }
                }
                self.feed_stop(r);
            }
            Pending::OperatorPoll { epoch } if self.live(epoch) => {
                let m = self.engine.clone().expect("live");
                if self.paused && !m.paused {
                    self.feed(Event::Pause);
                } else if !self.paused && m.paused {
                    self.feed(Event::Unpause);
                }
                for t in &m.nodes {
                    if t.phase == Phase::AwaitingContinue {
                        if self.continued.contains(&t.node) {
                            self.feed(Event::Continued {
                                node: t.node.clone(),
                            });
                        } else if !self.nodes[&t.node].operator_rebooted {
                            // The operator reboots it, then continues.
                            self.nodes.get_mut(&t.node).expect("node").operator_rebooted = true;
                            let at = self.now + 1 + self.rng.below(60);
                            let node = t.node.clone();
                            self.at(at, Pending::OperatorReboot { node });
                        }
                    }
                }
                if self.live(epoch) {
                    let t = self.now + 10;
                    self.at(t, Pending::OperatorPoll { epoch });
                }
            }
            Pending::OperatorReboot { node } => {
                self.reboot(&node);
                self.continued.insert(node);
            }
            Pending::AwaitChild { epoch, node, child } if self.live(epoch) => {
                if let Some(name) = child.strip_prefix("refused:") {
                    let why = format!("node {node} is held; {name} not launched");
                    let e = if name.contains("-drain-") {
                        Event::DrainEnded {
                            node,
                            result: Err(why),
                        }
                    } else {
                        Event::EnableEnded {
                            node,
                            result: Err(why),
                        }
                    };
                    return self.feed(e);
                }
                match self.children.get(&child).and_then(|c| c.result.clone()) {
                    Some(result) => {
                        let e = if self.children[&child].drain {
                            Event::DrainEnded { node, result }
                        } else {
                            Event::EnableEnded { node, result }
                        };
                        self.feed(e);
                    }
                    None => {
                        let t = self.now + 5;
                        self.at(t, Pending::AwaitChild { epoch, node, child });
                    }
                }
            }
            Pending::ChildEnds { child } => self.child_ends(&child),
            Pending::VmLands { node, vm } => {
                let drain_running = self
                    .children
                    .values()
                    .any(|c| c.drain && c.node == node && c.result.is_none());
                if drain_running {
                    self.stats.faults += 1;
                    self.log(format!("{vm} lands on {node} mid-drain"));
                    self.nodes
                        .get_mut(&node)
                        .expect("node")
                        .unrecorded
                        .insert(vm);
                }
            }
            Pending::Inspected { epoch, node } if self.live(epoch) => {
                let n = &self.nodes[&node];
                let result = if !n.up {
                    Inspection::Unknown("no fresh inventory".into())
                } else if n.unrecorded.is_empty() {
                    Inspection::Empty {
                        boot_id: n.boot.to_string(),
                    }
                } else {
                    Inspection::Holds(n.unrecorded.iter().cloned().collect())
                };
                self.feed(Event::Inspected { node, result });
            }
            Pending::WaitExpired { epoch, node, cmd }
                if self.live(epoch) && self.waiting.remove(&cmd) =>
            {
                let answer = Answer::Unknown(format!("no answer within {WAIT} ticks"));
                self.feed(Event::Answered { node, cmd, answer });
            }
            Pending::Answer {
                epoch,
                node,
                cmd,
                answer,
            } if self.live(epoch) => {
                self.waiting.remove(&cmd);
                self.feed(Event::Answered { node, cmd, answer });
            }
            Pending::FoundOut {
                epoch,
                node,
                cmd,
                what,
            } if self.live(epoch) => {
                let answer = if !self.nodes[&node].up {
                    Answer::Unknown("node unreachable".into())
                } else if let Some(a) = self.results.get(&cmd) {
                    a.clone()
                } else {
                    self.send(&node, &cmd, what, epoch);
                    Answer::Unknown("not executed yet; sent again".into())
                };
                self.feed(Event::Answered { node, cmd, answer });
            }
            Pending::BootPoll {
                epoch,
                node,
                before,
                deadline,
            } if self.live(epoch) => {
                let n = &self.nodes[&node];
                if n.up && n.boot != before {
                    self.feed(Event::Back { node });
                } else if deadline.is_some_and(|d| self.now > d) {
                    let why = format!(
                        "did not come back with a new boot id within {REBOOT_TIMEOUT} ticks"
                    );
                    self.feed(Event::NotBack { node, why });
                } else {
                    // Polls end when the engine moved on (refused events).
                    let still = self.engine.as_ref().is_some_and(|m| {
                        m.nodes.iter().any(|t| {
                            t.node == node && matches!(t.phase, Phase::Hook | Phase::WaitingBack)
                        })
                    });
                    if still {
                        let t = self.now + 5;
                        self.at(
                            t,
                            Pending::BootPoll {
                                epoch,
                                node,
                                before,
                                deadline,
                            },
                        );
                    }
                }
            }
            Pending::VerifyPoll { epoch, node, tries } if self.live(epoch) => {
                let n = &self.nodes[&node];
                if !n.maintenance && n.up {
                    self.feed(Event::Verified {
                        node,
                        result: Ok(()),
                    });
                } else if tries > 10 {
                    let e = Event::Verified {
                        node,
                        result: Err("not ENABLED and reachable after enable".into()),
                    };
                    self.feed(e);
                } else {
                    let t = self.now + 3;
                    let p = Pending::VerifyPoll {
                        epoch,
                        node,
                        tries: tries + 1,
                    };
                    self.at(t, p);
                }
            }
            Pending::Deliver {
                node,
                cmd,
                what,
                reply_epoch,
            } => {
                if !self.nodes[&node].up {
                    // The durable queue keeps it until the agent is back.
                    let p = Pending::Deliver {
                        node: node.clone(),
                        cmd,
                        what,
                        reply_epoch,
                    };
                    self.nodes.get_mut(&node).expect("node").queued.push(p);
                    return;
                }
                let answer = match self.results.get(&cmd) {
                    Some(a) => a.clone(),
                    None => {
                        *self.executions.entry(cmd.clone()).or_default() += 1;
                        let a = match what {
                            SimCmd::Hook if self.rng.chance(self.faults.hook_fails) => {
                                self.stats.faults += 1;
                                Answer::Failed("hook exited 1".into())
                            }
                            SimCmd::Hook => {
                                self.nodes.get_mut(&node).expect("node").hooks += 1;
                                self.reboot(&node);
                                Answer::Done("rebooting".into())
                            }
                            SimCmd::Checks if self.rng.chance(self.faults.checks_fail) => {
                                self.stats.faults += 1;
                                Answer::Failed("ovs-workers: failed".into())
                            }
                            SimCmd::Checks => Answer::Done("all checks pass".into()),
                        };
                        self.log(format!("agent on {node} executes {cmd}: {a:?}"));
                        self.results.insert(cmd.clone(), a.clone());
                        a
                    }
                };
                self.answer(&node, &cmd, answer, reply_epoch);
            }
            Pending::NodeDown { node, back_at } => {
                let n = self.nodes.get_mut(&node).expect("node");
                n.up = false;
                // The VMs recorded as stopped stay defined, shut off.
                if let Some(t) = back_at {
                    self.at(t, Pending::NodeUp { node });
                }
            }
            Pending::NodeUp { node } => {
                let n = self.nodes.get_mut(&node).expect("node");
                n.up = true;
                n.boot += 1;
                for p in std::mem::take(&mut n.queued) {
                    let t = self.now + 1 + self.rng.below(5);
                    self.at(t, p);
                }
            }
            _ => {}
        }
    }

    fn child_ends(&mut self, id: &str) {
        let Some(c) = self.children.get(id).cloned() else {
            return;
        };
        let result = if c.drain {
            let n = self.nodes.get_mut(&c.node).expect("node");
            if c.stop {
                // Stopped: some moved, some not; the node keeps the rest.
                let keep = n.unrecorded.iter().next().cloned();
                n.unrecorded.retain(|v| Some(v) == keep.as_ref());
                n.holder = None;
                Err("stopped; partly drained".to_string())
            } else if self.rng.chance(self.faults.drain_fails) {
                self.stats.faults += 1;
                let moved: Vec<String> = n.unrecorded.iter().skip(1).cloned().collect();
                for v in moved {
                    n.unrecorded.remove(&v);
                }
                n.holder = None;
                Err("partly drained: 1 VM not moved".to_string())
            } else {
                // Moved all it planned; a lander it may miss (the bug
                // the inventory check before the hook catches).
                let landers: Vec<String> = n
                    .unrecorded
                    .iter()
                    .filter(|v| v.starts_with("lander"))
                    .cloned()
                    .collect();
                // The stop fallback: a VM that could not move is stopped
                // and recorded (enable restarts it).
                let stopped = n
                    .unrecorded
                    .iter()
                    .find(|v| !v.starts_with("lander"))
                    .cloned()
                    .filter(|_| self.rng.chance(150));
                n.recorded.extend(stopped);
                n.unrecorded.retain(|v| v.starts_with("lander"));
                n.holder = None;
                if landers.is_empty() || self.rng.chance(self.faults.drain_misses_lander) {
                    Ok(())
                } else {
                    Err(format!("{} arrived during the drain", landers.join(", ")))
                }
            }
        } else {
            let n = self.nodes.get_mut(&c.node).expect("node");
            n.holder = None;
            if self.rng.chance(self.faults.enable_fails) || !n.up {
                self.stats.faults += 1;
                Err("enable failed: node unreachable".to_string())
            } else {
                n.maintenance = false;
                // Enable restarts what maintenance recorded.
                let recorded = std::mem::take(&mut n.recorded);
                n.unrecorded.extend(recorded);
                Ok(())
            }
        };
        self.log(format!("child {id} ends: {result:?}"));
        self.children.get_mut(id).expect("child").result = Some(result);
    }

    /// Invariants after every step.
    fn check(&self) -> Result<(), String> {
        if let Some(v) = self.violations.first() {
            return Err(v.clone());
        }
        let k = self.journal.max_unavailable;
        let out: Vec<&String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.maintenance)
            .map(|(name, _)| name)
            .collect();
        if out.len() > k {
            return Err(format!(
                "{} nodes out ({out:?}), max_unavailable {k}",
                out.len()
            ));
        }
        if let Some(m) = &self.engine {
            if m.out() > k {
                return Err(format!("the engine has {} nodes out, max {k}", m.out()));
            }
        }
        if let Some((node, n)) = self.nodes.iter().find(|(_, n)| n.hooks > 1) {
            return Err(format!("{node}'s hook ran {} times", n.hooks));
        }
        if let Some((cmd, n)) = self.executions.iter().find(|(_, n)| **n > 1) {
            return Err(format!("command {cmd} executed {n} times"));
        }
        Ok(())
    }

    /// The report says what happened.
    fn check_report(&self, done: &Rolling, ending: Ending) -> Result<(), String> {
        let all_done = done.nodes.iter().all(|t| t.phase == Phase::Done);
        if (ending == Ending::Succeeded) != all_done {
            return Err(format!("ended {ending:?} with nodes {:?}", done.nodes));
        }
        if ending == Ending::Aborted && !matches!(self.stop, Some(StopReason::Abort(_))) {
            return Err("aborted without an abort".into());
        }
        for t in &done.nodes {
            let n = &self.nodes[&t.node];
            let rebooted = n.hooks > 0 || n.operator_rebooted;
            match &t.phase {
                Phase::Done => {
                    if n.maintenance || !rebooted || n.boot < 2 {
                        return Err(format!("{} reported done but {n:?}", t.node));
                    }
                    if !n.recorded.is_empty() {
                        return Err(format!("{} done with VMs left stopped", t.node));
                    }
                }
                Phase::Failed { at, .. } | Phase::Stopped { at, .. } => {
                    if *at <= Progress::Drained && rebooted {
                        return Err(format!(
                            "{} reported at {} but it was rebooted",
                            t.node,
                            at.as_str()
                        ));
                    }
                }
                Phase::Waiting => {
                    if n.maintenance || rebooted {
                        return Err(format!("{} reported not started but {n:?}", t.node));
                    }
                }
                p => {
                    return Err(format!(
                        "{} unfinished ({p:?}) in a finished rolling",
                        t.node
                    ))
                }
            }
        }
        Ok(())
    }
}

fn sim_cmd(c: &Command) -> SimCmd {
    match c {
        Command::Hook(_) => SimCmd::Hook,
        Command::Checks => SimCmd::Checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_seeds_keep_every_rolling_invariant() {
        match crate::engine::sim::run_many(run, 0, 10_000) {
            Ok(s) => {
                assert!(
                    s.crashes > 100 && s.faults > 10_000,
                    "faults too rare: {s:?}"
                );
                assert!(
                    s.refused > 0,
                    "no late event ever reached the engine: {s:?}"
                );
            }
            Err(f) => panic!("{f}"),
        }
    }

    /// Seed 17114: a node that never came back kept a command in its queue
    /// (a simulator bug: the queue was polled forever, so the run never
    /// ended); the queue is now held until the node is back.
    #[test]
    fn regression_seed_of_a_queue_for_a_node_that_never_returns() {
        if let Err(f) = run(17114) {
            panic!("{f}");
        }
    }

    /// Seeds that break the policies this engine replaced (checked by
    /// reverting each in the engine): seed 14, the reboot hook run over a
    /// VM that landed mid-drain when the drain's success was trusted
    /// without a fresh inventory; seed 2, a resumed rolling sending its
    /// hook again under a new command id (the node rebooted twice); seed 0,
    /// the next group started before the current one was back (four nodes
    /// out with `max_unavailable` 2).
    #[test]
    fn regression_seeds_of_the_replaced_policies() {
        for seed in [14, 2, 0] {
            if let Err(f) = run(seed) {
                panic!("{f}");
            }
        }
    }

    #[test]
    fn a_seed_is_its_own_reproduction() {
        assert_eq!(run(7).unwrap(), run(7).unwrap());
    }
}
