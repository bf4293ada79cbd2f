//! Rolling maintenance as a state machine.
//!
//! The planner orders the nodes into groups of at most `max_unavailable`;
//! group by group, every node goes through
//!
//! ```text
//! Waiting → Draining → Drained → Inspecting → Hook | AwaitingContinue
//!         → WaitingBack → Back → Checking → Checked → Enabling → Verifying → Done
//! ```
//!
//! A group's drains are launched together (the driver plans them jointly);
//! the next group starts only when every node of the current one is done,
//! so no more than `max_unavailable` nodes are ever out. Rules:
//! - **Drained means empty**: the reboot hook runs only after the drain
//!   ended SUCCEEDED *and* a fresh inventory shows no running VM on the
//!   node that maintenance has not recorded; otherwise the node fails and
//!   stays in maintenance, hook not run.
//! - **An unknown hook outcome is a reboot in progress**: the node's new
//!   boot id is the answer, never "failed so skip".
//! - **A hook is sent once**: its command id is a function of the job, so
//!   a resent hook is the same command (agents execute an id once).
//! - **Journal before act**; resumable from the journal (`Event::Start`).
//! - Pause holds every node at its next phase boundary; a stop (abort or
//!   deadline) ends the waits and starts nothing new, but awaits what is
//!   in flight (a drain, a hook, the checks, an enable).

use super::{Answer, Ending, Invalid, StopReason};
use serde::{Deserialize, Serialize};

/// What reboots a drained node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hook {
    /// A hook the node's agent runs, by name (the command line is in the
    /// agent's config). Journaled as `Command` by older coordinators.
    #[serde(alias = "Command")]
    Named(String),
    /// The operator reboots it and says `rolling continue JOB NODE`.
    Continue,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rolling {
    pub job: String,
    /// Indexes into `nodes`, at most `max_unavailable` per group.
    pub groups: Vec<Vec<usize>>,
    pub max_unavailable: usize,
    pub hook: Hook,
    pub checks_must_pass: bool,
    pub reboot_timeout_s: u64,
    #[serde(default)]
    pub deadline_s: Option<u64>,
    pub nodes: Vec<NodeTask>,
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub stopping: Option<StopReason>,
    #[serde(default)]
    pub finished: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTask {
    pub node: String,
    pub phase: Phase,
    /// The boot id of the inventory that showed the node empty: a
    /// different one means it rebooted.
    #[serde(default)]
    pub boot_before: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Waiting,
    /// Its drain (a child job) is out.
    Draining,
    /// The drain succeeded; waits for a phase boundary.
    Drained,
    /// A fresh inventory is asked for.
    Inspecting,
    /// The reboot hook is out.
    Hook,
    /// Waits for the operator's continue.
    AwaitingContinue,
    /// Waits for a new boot id.
    WaitingBack,
    Back,
    /// The post-reboot checks are out.
    Checking,
    Checked,
    /// Its enable (a child job) is out.
    Enabling,
    /// Waits for the node to show ENABLED and reachable.
    Verifying,
    Done,
    /// The node stays where it is (in maintenance once drained).
    Failed {
        at: Progress,
        why: String,
    },
    Stopped {
        at: Progress,
        reason: StopReason,
    },
}

/// The coarse phase operators see (`rolling.progress`, `rolling show`):
/// the job model's, journaled in the machine too.
pub use crate::jobs::Phase as Progress;

impl Phase {
    pub fn progress(&self) -> Progress {
        match self {
            Phase::Waiting => Progress::Pending,
            Phase::Draining => Progress::Draining,
            Phase::Drained | Phase::Inspecting => Progress::Drained,
            Phase::Hook | Phase::AwaitingContinue | Phase::WaitingBack => Progress::Rebooting,
            Phase::Back | Phase::Checking => Progress::Rebooted,
            Phase::Checked | Phase::Enabling => Progress::Checked,
            Phase::Verifying => Progress::Enabled,
            Phase::Done => Progress::Done,
            Phase::Failed { at, .. } | Phase::Stopped { at, .. } => *at,
        }
    }

    /// Ended (for this rolling).
    pub fn ended(&self) -> bool {
        matches!(
            self,
            Phase::Done | Phase::Failed { .. } | Phase::Stopped { .. }
        )
    }

    /// Between a phase boundary and the next act: where pause holds a node.
    fn resting(&self) -> bool {
        matches!(
            self,
            Phase::Waiting | Phase::Drained | Phase::Back | Phase::Checked
        )
    }

    /// Taken out of service by this rolling (drained or on its way), not yet
    /// back: what `max_unavailable` bounds.
    pub fn out(&self) -> bool {
        match self {
            Phase::Waiting | Phase::Done => false,
            Phase::Failed { at, .. } | Phase::Stopped { at, .. } => *at > Progress::Pending,
            _ => true,
        }
    }
}

/// Which agent command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// The reboot hook, by name.
    Hook(String),
    /// The post-reboot checks (starting failed services).
    Checks,
}

/// What a rolling machine asks its driver to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Persist the new state before anything else.
    Journal,
    /// Put these nodes in maintenance and launch their drains (child jobs
    /// with these ids), planned jointly; a child that exists already is
    /// only awaited. Answered per node by [`Event::DrainEnded`].
    Drain {
        nodes: Vec<(String, String)>,
    },
    /// A fresh inventory of the node: [`Event::Inspected`].
    Inspect {
        node: String,
    },
    /// Send the command with this id: [`Event::Answered`] (or
    /// [`Event::Back`] when the node reboots under its hook).
    Send {
        node: String,
        cmd: String,
        what: Command,
    },
    /// Find out what became of a sent command (results bucket, resend of
    /// the same id if never claimed): [`Event::Answered`] or [`Event::Back`].
    FindOut {
        node: String,
        cmd: String,
        what: Command,
    },
    /// Wait (up to the reboot timeout) for a new boot id: [`Event::Back`]
    /// or [`Event::NotBack`].
    WaitBack {
        node: String,
        before: String,
        timeout_s: u64,
    },
    /// Launch the node's enable (child job with this id; only awaited if
    /// it exists): [`Event::EnableEnded`].
    Enable {
        node: String,
        child: String,
    },
    /// Wait for ENABLED and reachable: [`Event::Verified`].
    Verify {
        node: String,
    },
    /// A line for the job's steps.
    Note {
        node: Option<String>,
        ok: Option<bool>,
        message: String,
    },
    Finish {
        ending: Ending,
        summary: String,
    },
}

/// What a fresh inventory of a drained node showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inspection {
    /// No running VM that maintenance has not recorded; with the boot id.
    Empty { boot_id: String },
    /// These run there unrecorded (they arrived during the drain).
    Holds(Vec<String>),
    /// No fresh inventory (node unreachable): ask again.
    Unknown(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Start, or resume from the journaled state after a restart.
    Start,
    /// The node's drain job ended: `Ok` when it SUCCEEDED, else its outcome.
    DrainEnded {
        node: String,
        result: Result<(), String>,
    },
    Inspected {
        node: String,
        result: Inspection,
    },
    Answered {
        node: String,
        cmd: String,
        answer: Answer,
    },
    Continued {
        node: String,
    },
    /// Reachable with a boot id other than `boot_before`.
    Back {
        node: String,
    },
    NotBack {
        node: String,
        why: String,
    },
    EnableEnded {
        node: String,
        result: Result<(), String>,
    },
    Verified {
        node: String,
        result: Result<(), String>,
    },
    Pause,
    Unpause,
    Stop(StopReason),
}

pub type Output = (Rolling, Vec<Action>);

impl Rolling {
    /// A new rolling over the planner's groups; a group larger than
    /// `max_unavailable` is split (the bound holds whatever the plan says).
    pub fn new(
        job: &str,
        groups: &[Vec<String>],
        max_unavailable: usize,
        hook: Hook,
        checks_must_pass: bool,
        reboot_timeout_s: u64,
        deadline_s: Option<u64>,
    ) -> Rolling {
        let k = max_unavailable.max(1);
        let mut nodes = Vec::new();
        let mut idx_groups = Vec::new();
        for g in groups {
            let mut idx = Vec::new();
            for n in g {
                if nodes.iter().any(|t: &NodeTask| t.node == *n) {
                    continue;
                }
                idx.push(nodes.len());
                nodes.push(NodeTask {
                    node: n.clone(),
                    phase: Phase::Waiting,
                    boot_before: None,
                });
            }
            idx_groups.extend(idx.chunks(k).map(<[usize]>::to_vec));
        }
        Rolling {
            job: job.into(),
            groups: idx_groups,
            max_unavailable: k,
            hook,
            checks_must_pass,
            reboot_timeout_s,
            deadline_s,
            nodes,
            paused: false,
            stopping: None,
            finished: false,
        }
    }

    /// Ids of the node's child jobs and commands: functions of the job, so
    /// a resumed job finds (and never repeats) what it launched or sent.
    pub fn drain_id(&self, i: usize) -> String {
        format!("{}-drain-{i}", self.job)
    }
    pub fn enable_id(&self, i: usize) -> String {
        format!("{}-enable-{i}", self.job)
    }
    pub fn hook_cmd(&self, i: usize) -> String {
        format!("{}-hook-{i}", self.job)
    }
    pub fn checks_cmd(&self, i: usize) -> String {
        format!("{}-checks-{i}", self.job)
    }
    /// The per-node job journaling the node's agent commands.
    pub fn node_job_id(&self, i: usize) -> String {
        format!("{}-node-{i}", self.job)
    }

    pub fn index(&self, node: &str) -> Result<usize, Invalid> {
        self.nodes
            .iter()
            .position(|t| t.node == node)
            .ok_or_else(|| Invalid(format!("{node} is not part of this rolling")))
    }

    /// Nodes out of service now.
    pub fn out(&self) -> usize {
        self.nodes.iter().filter(|t| t.phase.out()).count()
    }

    /// The group being worked on: the first not entirely done.
    pub fn current_group(&self) -> Option<usize> {
        self.groups
            .iter()
            .position(|g| g.iter().any(|&i| self.nodes[i].phase != Phase::Done))
    }

    fn hook_command(&self) -> Command {
        match &self.hook {
            Hook::Named(name) => Command::Hook(name.clone()),
            Hook::Continue => Command::Hook(String::new()),
        }
    }

    fn fail(&mut self, i: usize, why: String) {
        let at = self.nodes[i].phase.progress();
        let why = format!("{}: {why}", self.nodes[i].node);
        self.nodes[i].phase = Phase::Failed { at, why };
    }

    fn expect(&self, i: usize, ok: &[Phase], what: &str) -> Result<(), Invalid> {
        if ok.contains(&self.nodes[i].phase) {
            Ok(())
        } else {
            Err(Invalid(format!(
                "{}: {what} while {:?}",
                self.nodes[i].node, self.nodes[i].phase
            )))
        }
    }

    /// Pure: the next state and what to do, or why the event is refused.
    pub fn step(&self, event: Event) -> Result<Output, Invalid> {
        if self.finished {
            return Err(Invalid(format!("rolling finished; {event:?} ignored")));
        }
        let mut s = self.clone();
        let mut out = Vec::new();
        match event {
            Event::Start => s.resume(&mut out),
            Event::DrainEnded { node, result } => {
                let i = s.index(&node)?;
                s.expect(i, &[Phase::Draining], "drain ended")?;
                match result {
                    Ok(()) => s.nodes[i].phase = Phase::Drained,
                    Err(e) => s.fail(i, format!("drain failed: {e}")),
                }
            }
            Event::Inspected { node, result } => {
                let i = s.index(&node)?;
                s.expect(i, &[Phase::Inspecting], "inventory")?;
                match result {
                    Inspection::Empty { boot_id } => {
                        s.nodes[i].boot_before = Some(boot_id);
                        match s.hook {
                            Hook::Named(_) => {
                                s.nodes[i].phase = Phase::Hook;
                                out.push(Action::Send {
                                    node: node.clone(),
                                    cmd: s.hook_cmd(i),
                                    what: s.hook_command(),
                                });
                            }
                            Hook::Continue => {
                                s.nodes[i].phase = Phase::AwaitingContinue;
                                out.push(Action::Note {
                                    node: Some(node.clone()),
                                    ok: None,
                                    message: format!(
                                        "{node}: waiting for `rolling continue {} {node}`",
                                        s.job
                                    ),
                                });
                            }
                        }
                    }
                    Inspection::Holds(vms) => s.fail(
                        i,
                        format!(
                            "not empty after its drain: {} running there, not recorded by \
                             maintenance (arrived during the drain); the reboot hook was not \
                             run and the node stays in maintenance",
                            vms.join(", ")
                        ),
                    ),
                    Inspection::Unknown(_) => out.push(Action::Inspect { node }),
                }
            }
            Event::Answered { node, cmd, answer } => {
                let i = s.index(&node)?;
                if s.nodes[i].phase == Phase::Hook && cmd == s.hook_cmd(i) {
                    match answer {
                        // A node that reboots under its hook may never
                        // answer: its new boot id will.
                        Answer::Done(_) | Answer::Unknown(_) => s.wait_back(i, &mut out),
                        Answer::Failed(e) => s.fail(i, format!("reboot hook failed: {e}")),
                    }
                } else if s.nodes[i].phase == Phase::Checking && cmd == s.checks_cmd(i) {
                    match answer {
                        Answer::Done(m) => {
                            out.push(Action::Note {
                                node: Some(node.clone()),
                                ok: Some(true),
                                message: format!("{node}: checks: {m}"),
                            });
                            s.nodes[i].phase = Phase::Checked;
                        }
                        Answer::Failed(m) => {
                            out.push(Action::Note {
                                node: Some(node.clone()),
                                ok: Some(false),
                                message: format!("{node}: checks: {m}"),
                            });
                            if s.checks_must_pass {
                                s.fail(
                                    i,
                                    format!(
                                        "post-reboot checks failed ({m}); the node stays in \
                                         maintenance"
                                    ),
                                );
                            } else {
                                s.nodes[i].phase = Phase::Checked;
                            }
                        }
                        Answer::Unknown(_) => out.push(Action::FindOut {
                            node,
                            cmd,
                            what: Command::Checks,
                        }),
                    }
                } else {
                    return Err(Invalid(format!(
                        "{node}: answer to {cmd} while {:?}",
                        s.nodes[i].phase
                    )));
                }
            }
            Event::Continued { node } => {
                let i = s.index(&node)?;
                s.expect(i, &[Phase::AwaitingContinue], "continue")?;
                s.wait_back(i, &mut out);
            }
            Event::Back { node } => {
                let i = s.index(&node)?;
                s.expect(i, &[Phase::Hook, Phase::WaitingBack], "new boot id")?;
                s.nodes[i].phase = Phase::Back;
            }
            Event::NotBack { node, why } => {
                let i = s.index(&node)?;
                s.expect(i, &[Phase::WaitingBack], "not back")?;
                s.fail(i, why);
            }
            Event::EnableEnded { node, result } => {
                let i = s.index(&node)?;
                s.expect(i, &[Phase::Enabling], "enable ended")?;
                match result {
                    Ok(()) => {
                        s.nodes[i].phase = Phase::Verifying;
                        out.push(Action::Verify { node });
                    }
                    Err(e) => s.fail(i, format!("enable failed: {e}")),
                }
            }
            Event::Verified { node, result } => {
                let i = s.index(&node)?;
                s.expect(i, &[Phase::Verifying], "verified")?;
                match result {
                    Ok(()) => s.nodes[i].phase = Phase::Done,
                    Err(e) => s.fail(i, e),
                }
            }
            Event::Pause if !s.paused => s.paused = true,
            Event::Unpause if s.paused => s.paused = false,
            Event::Pause | Event::Unpause => return Err(Invalid("already so".into())),
            Event::Stop(reason) => {
                if s.stopping.is_some() {
                    return Err(Invalid("already stopping".into()));
                }
                s.stopping = Some(reason);
            }
        }
        // Nodes that just failed: a step each.
        for (before, after) in self.nodes.iter().zip(&s.nodes) {
            if let (false, Phase::Failed { why, .. }) = (before.phase.ended(), &after.phase) {
                out.push(Action::Note {
                    node: Some(after.node.clone()),
                    ok: Some(false),
                    message: why.clone(),
                });
            }
        }
        s.schedule(&mut out);
        // Ended when nothing is in flight and nothing more will start (a
        // paused rolling between groups is not ended).
        let idle = s
            .nodes
            .iter()
            .all(|t| t.phase.ended() || t.phase == Phase::Waiting);
        let failed = s
            .nodes
            .iter()
            .any(|t| matches!(t.phase, Phase::Failed { .. }));
        let all_done = s.nodes.iter().all(|t| t.phase == Phase::Done);
        if idle && (s.stopping.is_some() || failed || all_done) {
            s.finished = true;
            out.push(s.finish());
        }
        if s != *self {
            out.insert(0, Action::Journal);
        }
        Ok((s, out))
    }

    fn wait_back(&mut self, i: usize, out: &mut Vec<Action>) {
        if let Some(reason) = self.stopping.clone() {
            // A stop ends the wait before it starts.
            self.nodes[i].phase = Phase::Stopped {
                at: Progress::Rebooting,
                reason,
            };
            return;
        }
        self.nodes[i].phase = Phase::WaitingBack;
        out.push(Action::WaitBack {
            node: self.nodes[i].node.clone(),
            before: self.nodes[i].boot_before.clone().unwrap_or_default(),
            timeout_s: self.reboot_timeout_s,
        });
    }

    /// After a restart: what was in flight is asked for again (child jobs
    /// and commands by their ids, so nothing is done twice).
    fn resume(&mut self, out: &mut Vec<Action>) {
        let mut draining = Vec::new();
        for i in 0..self.nodes.len() {
            let node = self.nodes[i].node.clone();
            match self.nodes[i].phase {
                Phase::Draining => draining.push((node, self.drain_id(i))),
                Phase::Inspecting => out.push(Action::Inspect { node }),
                Phase::Hook => out.push(Action::FindOut {
                    node,
                    cmd: self.hook_cmd(i),
                    what: self.hook_command(),
                }),
                Phase::WaitingBack => {
                    self.wait_back(i, out);
                }
                Phase::Checking => out.push(Action::FindOut {
                    node,
                    cmd: self.checks_cmd(i),
                    what: Command::Checks,
                }),
                Phase::Enabling => out.push(Action::Enable {
                    node,
                    child: self.enable_id(i),
                }),
                Phase::Verifying => out.push(Action::Verify { node }),
                _ => {}
            }
        }
        if !draining.is_empty() {
            out.push(Action::Drain { nodes: draining });
        }
    }

    /// Moves nodes past their phase boundary (unless paused), starts the
    /// next group when the current one is done, and under a stop ends
    /// every wait.
    fn schedule(&mut self, out: &mut Vec<Action>) {
        if let Some(reason) = self.stopping.clone() {
            for t in &mut self.nodes {
                if t.phase.resting()
                    || matches!(
                        t.phase,
                        Phase::Inspecting
                            | Phase::AwaitingContinue
                            | Phase::WaitingBack
                            | Phase::Verifying
                    )
                {
                    let at = t.phase.progress();
                    t.phase = Phase::Stopped {
                        at,
                        reason: reason.clone(),
                    };
                }
            }
            return;
        }
        if self.paused {
            return;
        }
        let Some(g) = self.current_group() else {
            return;
        };
        // A failure anywhere: nothing new starts; the group's other nodes
        // go on to their end.
        let failed = self
            .nodes
            .iter()
            .any(|t| matches!(t.phase, Phase::Failed { .. }));
        for &i in &self.groups[g].clone() {
            let node = self.nodes[i].node.clone();
            match self.nodes[i].phase {
                Phase::Drained => {
                    self.nodes[i].phase = Phase::Inspecting;
                    out.push(Action::Inspect { node });
                }
                Phase::Back => {
                    self.nodes[i].phase = Phase::Checking;
                    out.push(Action::Send {
                        node,
                        cmd: self.checks_cmd(i),
                        what: Command::Checks,
                    });
                }
                Phase::Checked => {
                    self.nodes[i].phase = Phase::Enabling;
                    out.push(Action::Enable {
                        node,
                        child: self.enable_id(i),
                    });
                }
                _ => {}
            }
        }
        let waiting: Vec<usize> = self.groups[g]
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].phase == Phase::Waiting)
            .collect();
        if waiting.is_empty() || failed {
            return;
        }
        // The bound, whatever the journal held: never more out than K.
        let room = self.max_unavailable.saturating_sub(self.out());
        let start: Vec<usize> = waiting.into_iter().take(room).collect();
        if start.is_empty() {
            return;
        }
        let names: Vec<&str> = self.groups[g]
            .iter()
            .map(|&i| self.nodes[i].node.as_str())
            .collect();
        out.push(Action::Note {
            node: None,
            ok: None,
            message: format!(
                "group {}/{}: {}",
                g + 1,
                self.groups.len(),
                names.join(", ")
            ),
        });
        let mut nodes = Vec::new();
        for i in start {
            self.nodes[i].phase = Phase::Draining;
            nodes.push((self.nodes[i].node.clone(), self.drain_id(i)));
        }
        out.push(Action::Drain { nodes });
    }

    /// The reason's words in the job's outcome.
    pub fn reason_text(&self, r: &StopReason) -> String {
        match (r, self.deadline_s) {
            (StopReason::Abort(why), _) => why.clone(),
            (StopReason::Deadline, Some(s)) => format!("deadline of {s} s expired"),
            (StopReason::Deadline, None) => "deadline passed".into(),
        }
    }

    /// The Finish action for this (finished) state; also what a driver
    /// re-performs when the journal says finished but the job is not.
    pub fn finish(&self) -> Action {
        let failures: Vec<&str> = self
            .nodes
            .iter()
            .filter_map(|t| match &t.phase {
                Phase::Failed { why, .. } => Some(why.as_str()),
                _ => None,
            })
            .collect();
        let ending = match (&self.stopping, failures.is_empty()) {
            (Some(StopReason::Abort(_)), _) => Ending::Aborted,
            (Some(StopReason::Deadline), _) | (None, false) => Ending::Failed,
            (None, true) => {
                if self.nodes.iter().all(|t| t.phase == Phase::Done) {
                    Ending::Succeeded
                } else {
                    Ending::Failed
                }
            }
        };
        if ending == Ending::Succeeded {
            return Action::Finish {
                ending,
                summary: format!(
                    "rolling maintenance done: {} nodes in {} groups",
                    self.nodes.len(),
                    self.groups.len()
                ),
            };
        }
        let g = self.current_group().unwrap_or(0);
        let names: Vec<&str> = self
            .groups
            .get(g)
            .into_iter()
            .flatten()
            .map(|&i| self.nodes[i].node.as_str())
            .collect();
        let mut why: Vec<String> = failures.iter().map(|s| s.to_string()).collect();
        if let Some(r) = &self.stopping {
            why.insert(0, self.reason_text(r));
        }
        Action::Finish {
            ending,
            summary: format!(
                "rolling maintenance stopped in group {} ({}): {}",
                g + 1,
                names.join(", "),
                why.join("; ")
            ),
        }
    }

    /// Each node with what became of it: `Ok` when done.
    pub fn report(&self) -> Vec<(String, Result<String, String>)> {
        self.nodes
            .iter()
            .map(|t| {
                let r = match &t.phase {
                    Phase::Done => Ok("drained, rebooted, checked and enabled".to_string()),
                    Phase::Failed { why, .. } => Err(why.clone()),
                    Phase::Stopped { at, reason } => Err(format!(
                        "stopped at {} ({}){}",
                        at.as_str(),
                        self.reason_text(reason),
                        if *at > Progress::Pending {
                            "; the node stays in maintenance"
                        } else {
                            ""
                        }
                    )),
                    Phase::Waiting => Err("not started".to_string()),
                    other => Err(format!("unfinished ({other:?})")),
                };
                (t.node.clone(), r)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(gs: &[&[&str]]) -> Vec<Vec<String>> {
        gs.iter()
            .map(|g| g.iter().map(|n| n.to_string()).collect())
            .collect()
    }

    fn roll(gs: &[&[&str]], k: usize) -> Rolling {
        Rolling::new(
            "r",
            &groups(gs),
            k,
            Hook::Named("reboot".into()),
            true,
            900,
            None,
        )
    }

    fn step(s: &Rolling, e: Event) -> Output {
        let out = s.step(e).unwrap();
        assert!(out.0.out() <= out.0.max_unavailable, "{out:?}");
        out
    }

    /// Drives one node from its drain to the hook.
    fn to_hook(s: Rolling, node: &str) -> Output {
        let (s, _) = step(
            &s,
            Event::DrainEnded {
                node: node.into(),
                result: Ok(()),
            },
        );
        step(
            &s,
            Event::Inspected {
                node: node.into(),
                result: Inspection::Empty {
                    boot_id: "b0".into(),
                },
            },
        )
    }

    fn sends(out: &[Action]) -> Vec<String> {
        out.iter()
            .filter_map(|a| match a {
                Action::Send { cmd, .. } => Some(cmd.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_group_drains_together_and_the_next_waits_for_it() {
        let s = roll(&[&["a", "b"], &["c"]], 2);
        let (s, out) = step(&s, Event::Start);
        assert_eq!(out[0], Action::Journal);
        assert!(out.contains(&Action::Drain {
            nodes: vec![
                ("a".into(), "r-drain-0".into()),
                ("b".into(), "r-drain-1".into())
            ]
        }));
        assert_eq!(s.out(), 2);
        // a goes all the way; c still waits for b.
        let (mut s, _) = to_hook(s, "a");
        for e in [
            Event::Back { node: "a".into() },
            Event::Answered {
                node: "a".into(),
                cmd: "r-checks-0".into(),
                answer: Answer::Done("ok".into()),
            },
            Event::EnableEnded {
                node: "a".into(),
                result: Ok(()),
            },
            Event::Verified {
                node: "a".into(),
                result: Ok(()),
            },
        ] {
            let (n, out) = step(&s, e);
            assert!(!out.iter().any(|a| matches!(a, Action::Drain { .. })));
            s = n;
        }
        assert_eq!(s.nodes[0].phase, Phase::Done);
        assert_eq!(s.nodes[2].phase, Phase::Waiting);
    }

    #[test]
    fn a_group_larger_than_k_is_split() {
        let s = roll(&[&["a", "b", "c"]], 2);
        assert_eq!(s.groups, vec![vec![0, 1], vec![2]]);
        let (s, _) = step(&s, Event::Start);
        assert_eq!(s.out(), 2);
    }

    #[test]
    fn the_hook_runs_only_after_a_succeeded_drain_and_an_empty_inventory() {
        let s = roll(&[&["a"]], 1);
        let (s, _) = step(&s, Event::Start);
        // A drain that did not succeed: no hook, the node fails.
        let (f, out) = step(
            &s,
            Event::DrainEnded {
                node: "a".into(),
                result: Err("1 VM not moved".into()),
            },
        );
        assert!(sends(&out).is_empty());
        assert!(f.finished);
        assert!(matches!(
            out.last(),
            Some(Action::Finish {
                ending: Ending::Failed,
                ..
            })
        ));
        // A succeeded drain: the inventory is asked for first.
        let (s, out) = step(
            &s,
            Event::DrainEnded {
                node: "a".into(),
                result: Ok(()),
            },
        );
        assert!(out.contains(&Action::Inspect { node: "a".into() }));
        assert!(sends(&out).is_empty());
        // A VM that arrived during the drain: no hook, ever.
        let (f, out) = step(
            &s,
            Event::Inspected {
                node: "a".into(),
                result: Inspection::Holds(vec!["late".into()]),
            },
        );
        assert!(sends(&out).is_empty());
        match &f.nodes[0].phase {
            Phase::Failed { why, at } => {
                assert!(
                    why.contains("late") && why.contains("hook was not run"),
                    "{why}"
                );
                assert_eq!(*at, Progress::Drained);
            }
            p => panic!("{p:?}"),
        }
        // No fresh inventory: ask again, no hook.
        let (s2, out) = step(
            &s,
            Event::Inspected {
                node: "a".into(),
                result: Inspection::Unknown("unreachable".into()),
            },
        );
        assert!(sends(&out).is_empty());
        assert!(out.contains(&Action::Inspect { node: "a".into() }));
        assert_eq!(s2.nodes[0].phase, Phase::Inspecting);
        // Empty: the hook, journaled first, with the boot id to compare.
        let (s, out) = step(
            &s,
            Event::Inspected {
                node: "a".into(),
                result: Inspection::Empty {
                    boot_id: "b0".into(),
                },
            },
        );
        assert_eq!(out[0], Action::Journal);
        assert_eq!(
            out[1],
            Action::Send {
                node: "a".into(),
                cmd: "r-hook-0".into(),
                what: Command::Hook("reboot".into())
            }
        );
        assert_eq!(s.nodes[0].boot_before.as_deref(), Some("b0"));
    }

    #[test]
    fn an_unknown_hook_outcome_waits_for_the_node_to_come_back() {
        let s = roll(&[&["a"]], 1);
        let (s, _) = step(&s, Event::Start);
        let (s, _) = to_hook(s, "a");
        let (s, out) = step(
            &s,
            Event::Answered {
                node: "a".into(),
                cmd: "r-hook-0".into(),
                answer: Answer::Unknown("no answer in 660 s".into()),
            },
        );
        assert_eq!(s.nodes[0].phase, Phase::WaitingBack);
        assert!(out.contains(&Action::WaitBack {
            node: "a".into(),
            before: "b0".into(),
            timeout_s: 900
        }));
        assert!(!s.finished);
        let (s, out) = step(&s, Event::Back { node: "a".into() });
        assert_eq!(sends(&out), ["r-checks-0"]);
        assert_eq!(s.nodes[0].phase, Phase::Checking);
        // Only the agent's own failure fails the node.
        let s = roll(&[&["a"]], 1);
        let (s, _) = step(&s, Event::Start);
        let (s, _) = to_hook(s, "a");
        let (s, _) = step(
            &s,
            Event::Answered {
                node: "a".into(),
                cmd: "r-hook-0".into(),
                answer: Answer::Failed("exit 1".into()),
            },
        );
        assert!(matches!(s.nodes[0].phase, Phase::Failed { .. }));
    }

    #[test]
    fn a_node_that_does_not_come_back_fails_and_stays_out() {
        let s = roll(&[&["a"], &["b"]], 1);
        let (s, _) = step(&s, Event::Start);
        let (s, _) = to_hook(s, "a");
        let (s, _) = step(
            &s,
            Event::Answered {
                node: "a".into(),
                cmd: "r-hook-0".into(),
                answer: Answer::Done("ok".into()),
            },
        );
        let (s, out) = step(
            &s,
            Event::NotBack {
                node: "a".into(),
                why: "no new boot id in 900 s".into(),
            },
        );
        assert!(s.finished);
        assert_eq!(s.nodes[1].phase, Phase::Waiting, "b never started");
        assert_eq!(s.out(), 1);
        assert!(!out.iter().any(|a| matches!(a, Action::Drain { .. })));
    }

    #[test]
    fn resume_asks_again_for_what_was_in_flight_and_never_resends_a_new_hook() {
        let s = roll(&[&["a", "b"]], 2);
        let (s, _) = step(&s, Event::Start);
        let (s, _) = to_hook(s, "a");
        // The coordinator restarts from this journal: b's drain is awaited
        // (same child id), a's hook is found out (same command id).
        let (_, out) = step(&s, Event::Start);
        assert!(out.contains(&Action::Drain {
            nodes: vec![("b".into(), "r-drain-1".into())]
        }));
        assert!(out.contains(&Action::FindOut {
            node: "a".into(),
            cmd: "r-hook-0".into(),
            what: Command::Hook("reboot".into())
        }));
        assert!(sends(&out).is_empty());
    }

    #[test]
    fn journal_first_whenever_the_state_changes() {
        let s = roll(&[&["a"]], 1);
        let (s, out) = step(&s, Event::Start);
        assert_eq!(out[0], Action::Journal);
        // A refused event changes nothing and does nothing.
        assert!(s.step(Event::Back { node: "a".into() }).is_err());
        assert!(s
            .step(Event::Answered {
                node: "a".into(),
                cmd: "r-hook-0".into(),
                answer: Answer::Done("late".into()),
            })
            .is_err());
        assert!(s.step(Event::Back { node: "zz".into() }).is_err());
    }

    #[test]
    fn pause_holds_nodes_at_their_boundary_and_resume_releases_them() {
        let s = roll(&[&["a"], &["b"]], 1);
        let (s, _) = step(&s, Event::Start);
        let (s, _) = step(&s, Event::Pause);
        let (s, out) = step(
            &s,
            Event::DrainEnded {
                node: "a".into(),
                result: Ok(()),
            },
        );
        assert_eq!(s.nodes[0].phase, Phase::Drained);
        assert!(!out.iter().any(|a| matches!(a, Action::Inspect { .. })));
        let (s, out) = step(&s, Event::Unpause);
        assert!(out.contains(&Action::Inspect { node: "a".into() }));
        assert!(s.step(Event::Unpause).is_err());
    }

    #[test]
    fn a_pause_between_groups_does_not_end_the_rolling() {
        let s = roll(&[&["a"], &["b"]], 1);
        let (s, _) = step(&s, Event::Pause);
        let (s, out) = step(&s, Event::Start);
        assert!(!s.finished && out.is_empty(), "{out:?}");
        let (s, out) = step(&s, Event::Unpause);
        assert!(out.iter().any(|a| matches!(a, Action::Drain { .. })));
        assert!(!s.finished);
    }

    #[test]
    fn a_stop_ends_the_waits_but_awaits_what_is_in_flight() {
        let s = roll(&[&["a", "b"], &["c"]], 2);
        let (s, _) = step(&s, Event::Start);
        let (s, _) = to_hook(s, "a");
        // a's hook is out, b is draining.
        let (s, out) = step(
            &s,
            Event::Stop(StopReason::Abort("aborted by alice".into())),
        );
        assert!(!s.finished);
        assert_eq!(s.nodes[0].phase, Phase::Hook);
        assert_eq!(s.nodes[1].phase, Phase::Draining);
        assert!(matches!(
            s.nodes[2].phase,
            Phase::Stopped {
                at: Progress::Pending,
                ..
            }
        ));
        assert!(sends(&out).is_empty());
        // The hook answers: a waits no more; b's drain ends: no inspect.
        let (s, out) = step(
            &s,
            Event::Answered {
                node: "a".into(),
                cmd: "r-hook-0".into(),
                answer: Answer::Done("ok".into()),
            },
        );
        assert!(!out.iter().any(|a| matches!(a, Action::WaitBack { .. })));
        assert!(matches!(
            s.nodes[0].phase,
            Phase::Stopped {
                at: Progress::Rebooting,
                ..
            }
        ));
        let (s, out) = step(
            &s,
            Event::DrainEnded {
                node: "b".into(),
                result: Ok(()),
            },
        );
        assert!(!out.iter().any(|a| matches!(a, Action::Inspect { .. })));
        assert!(s.finished);
        match out.last() {
            Some(Action::Finish { ending, summary }) => {
                assert_eq!(*ending, Ending::Aborted);
                assert!(summary.contains("aborted by alice"), "{summary}");
            }
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn a_deadline_fails_the_rolling_and_says_so() {
        let s = Rolling::new(
            "r",
            &groups(&[&["a"], &["b"]]),
            1,
            Hook::Continue,
            false,
            900,
            Some(4),
        );
        let (s, _) = step(&s, Event::Start);
        let (s, _) = step(
            &s,
            Event::DrainEnded {
                node: "a".into(),
                result: Ok(()),
            },
        );
        let (s, out) = step(
            &s,
            Event::Inspected {
                node: "a".into(),
                result: Inspection::Empty {
                    boot_id: "b0".into(),
                },
            },
        );
        assert_eq!(s.nodes[0].phase, Phase::AwaitingContinue);
        assert!(sends(&out).is_empty(), "no hook command in continue mode");
        let (s, out) = step(&s, Event::Stop(StopReason::Deadline));
        assert!(s.finished);
        assert_eq!(s.nodes[0].phase.progress(), Progress::Rebooting);
        assert_eq!(s.nodes[1].phase.progress(), Progress::Pending);
        match out.last() {
            Some(Action::Finish { ending, summary }) => {
                assert_eq!(*ending, Ending::Failed);
                assert!(summary.contains("deadline of 4 s expired"), "{summary}");
            }
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn continue_mode_waits_for_the_operator_then_the_new_boot() {
        let s = Rolling::new("r", &groups(&[&["a"]]), 1, Hook::Continue, false, 900, None);
        let (s, _) = step(&s, Event::Start);
        let (s, _) = to_hook(s, "a");
        assert!(s.step(Event::Back { node: "a".into() }).is_err());
        let (s, out) = step(&s, Event::Continued { node: "a".into() });
        assert!(out.iter().any(|a| matches!(a, Action::WaitBack { .. })));
        let (s, _) = step(&s, Event::Back { node: "a".into() });
        // Checks fail but need not pass: noted, then enabled.
        let (s, out) = step(
            &s,
            Event::Answered {
                node: "a".into(),
                cmd: "r-checks-0".into(),
                answer: Answer::Failed("ovs down".into()),
            },
        );
        assert!(out.contains(&Action::Note {
            node: Some("a".into()),
            ok: Some(false),
            message: "a: checks: ovs down".into()
        }));
        assert!(out.contains(&Action::Enable {
            node: "a".into(),
            child: "r-enable-0".into()
        }));
        let (s, _) = step(
            &s,
            Event::EnableEnded {
                node: "a".into(),
                result: Ok(()),
            },
        );
        let (s, out) = step(
            &s,
            Event::Verified {
                node: "a".into(),
                result: Ok(()),
            },
        );
        assert!(s.finished);
        assert_eq!(
            out.last(),
            Some(&Action::Finish {
                ending: Ending::Succeeded,
                summary: "rolling maintenance done: 1 nodes in 1 groups".into()
            })
        );
    }

    #[test]
    fn failed_checks_that_must_pass_keep_the_node_in_maintenance() {
        let s = roll(&[&["a"]], 1);
        let (s, _) = step(&s, Event::Start);
        let (s, _) = to_hook(s, "a");
        let (s, _) = step(&s, Event::Back { node: "a".into() });
        // Unknown: found out, not failed.
        let (s, out) = step(
            &s,
            Event::Answered {
                node: "a".into(),
                cmd: "r-checks-0".into(),
                answer: Answer::Unknown("timeout".into()),
            },
        );
        assert!(out.iter().any(|a| matches!(a, Action::FindOut { .. })));
        let (s, out) = step(
            &s,
            Event::Answered {
                node: "a".into(),
                cmd: "r-checks-0".into(),
                answer: Answer::Failed("ovs-workers: failed".into()),
            },
        );
        assert!(!out.iter().any(|a| matches!(a, Action::Enable { .. })));
        match out.last() {
            Some(Action::Finish { ending, summary }) => {
                assert_eq!(*ending, Ending::Failed);
                assert!(
                    summary.contains("a: post-reboot checks failed (ovs-workers"),
                    "{summary}"
                );
            }
            a => panic!("{a:?}"),
        }
        assert!(s.out() == 1);
    }

    #[test]
    fn the_journal_roundtrips() {
        let s = roll(&[&["a", "b"]], 2);
        let (s, _) = step(&s, Event::Start);
        let (s, _) = to_hook(s, "a");
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(serde_json::from_value::<Rolling>(v).unwrap(), s);
    }
}
