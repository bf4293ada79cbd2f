//! Adaptive drain concurrency (issue 17 §4): how many migrations one drain
//! keeps in flight, found by measuring instead of fixed in the config.
//!
//! Hill climbing on the drain's aggregate throughput (bytes all of its
//! migrations copied, per second). It starts at the fixed limit. After each
//! window in which the limit was binding (VMs waited for it), the window's
//! throughput is compared with the one measured one step lower:
//! - clearly higher: one more migration at once;
//! - clearly lower, or no better (the extra stream bought nothing but
//!   longer migrations): back one step, which becomes a ceiling for
//!   [`HOLD`] windows; then it may probe again (other drains end, links
//!   free up);
//! - not binding (nothing waits): no change, as nothing can be learnt.
//!
//! A VM that stops converging (its agent escalated) backs off one step at
//! once: streams sharing a link each get less bandwidth than a busy VM
//! dirties. Pure: the driver feeds windows and performs the changes.

use std::collections::{BTreeMap, HashMap};

/// Windows a backed-off level stays the ceiling.
pub const HOLD: u32 = 5;

/// A relative change smaller than this is noise.
pub const GAIN: f64 = 0.10;

/// What the driver measured over one window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Window {
    /// Bytes the drain's migrations copied in the window.
    pub bytes: u64,
    pub secs: f64,
    /// VMs waited for the limit during the window (at its end).
    pub binding: bool,
    /// A migration escalated (it was not converging): why.
    pub stalled: Option<String>,
}

/// A change of the limit, with its reason for the job's journal.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Controller {
    limit: u32,
    max: u32,
    /// Throughput measured at each level (bytes/s, smoothed).
    at: BTreeMap<u32, f64>,
    /// A level found no better than the one below: (ceiling, windows left).
    ceiling: Option<(u32, u32)>,
}

fn mibs(bps: f64) -> String {
    format!("{:.0} MiB/s", bps / f64::from(1 << 20))
}

impl Controller {
    /// Starts at `start` (the fixed limit), never above `max`.
    pub fn new(start: u32, max: u32) -> Self {
        let max = max.max(1);
        Controller {
            limit: start.clamp(1, max),
            max,
            at: BTreeMap::new(),
            ceiling: None,
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    fn set(&mut self, to: u32, reason: String) -> Option<Change> {
        let from = self.limit;
        self.limit = to;
        Some(Change { from, to, reason })
    }

    /// Back one step; that level is the ceiling for a while, and what was
    /// measured above it is forgotten (it is re-measured on the next probe).
    fn back_off(&mut self, reason: String) -> Option<Change> {
        if self.limit <= 1 {
            return None;
        }
        let to = self.limit - 1;
        self.ceiling = Some((to, HOLD));
        self.at.retain(|l, _| *l <= to);
        self.set(to, reason)
    }

    /// Decides after one window: a change, or none.
    pub fn window(&mut self, w: &Window) -> Option<Change> {
        if let Some(why) = &w.stalled {
            return self.back_off(format!("a migration stopped converging ({why})"));
        }
        if let Some((c, left)) = self.ceiling {
            self.ceiling = (left > 1).then_some((c, left - 1));
        }
        // Nothing measured (no migration sent a byte's worth of news): no
        // evidence either way.
        if !w.binding || w.secs <= 0.0 || w.bytes == 0 {
            return None;
        }
        let now = w.bytes as f64 / w.secs;
        let tp = match self.at.get(&self.limit) {
            Some(prev) => (prev + now) / 2.0,
            None => now,
        };
        self.at.insert(self.limit, tp);
        let n = self.limit;
        let can_up = n < self.max && self.ceiling.is_none_or(|(c, _)| n < c);
        match self.at.get(&(n - 1)).copied() {
            None if can_up => self.set(n + 1, format!("probing: {} with {n} at once", mibs(tp))),
            Some(lower) if tp >= lower * (1.0 + GAIN) => can_up
                .then(|| {
                    format!(
                        "throughput rose to {} with {n} at once (from {} with {})",
                        mibs(tp),
                        mibs(lower),
                        n - 1
                    )
                })
                .and_then(|r| self.set(n + 1, r)),
            Some(lower) => self.back_off(format!(
                "{} with {n} at once is no better than {} with {}",
                mibs(tp),
                mibs(lower),
                n - 1
            )),
            None => None,
        }
    }
}

/// Bytes copied by the migrations out of one source, from their progress
/// samples and results (each carries the migration's total so far).
#[derive(Debug, Default)]
pub struct Meter {
    bytes: u64,
    last: HashMap<String, u64>,
    stalled: Option<String>,
}

impl Meter {
    /// A progress sample of command `cmd`: `processed` bytes so far;
    /// `escalation` is the agent's reason when it escalated.
    pub fn progress(&mut self, cmd: &str, processed: u64, escalation: Option<String>) {
        let last = self.last.entry(cmd.to_string()).or_default();
        self.bytes += processed.saturating_sub(*last);
        *last = (*last).max(processed);
        if let Some(why) = escalation {
            self.stalled.get_or_insert(why);
        }
    }

    /// The command ended having copied `total` bytes (0: unknown).
    pub fn ended(&mut self, cmd: &str, total: u64) {
        let last = self.last.remove(cmd).unwrap_or(0);
        self.bytes += total.saturating_sub(last);
    }

    /// What was measured since the last take: (bytes, a stall's reason).
    pub fn take(&mut self) -> (u64, Option<String>) {
        (std::mem::take(&mut self.bytes), self.stalled.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn w(mibs: u64) -> Window {
        Window {
            bytes: mibs * MIB,
            secs: 1.0,
            binding: true,
            stalled: None,
        }
    }

    #[test]
    fn climbs_while_throughput_rises_and_settles_where_it_stops() {
        let mut c = Controller::new(2, 8);
        // Throughput by level: rises to 4, flat at 5.
        let tp = |n: u32| [0, 50, 90, 130, 160, 162, 150, 140, 130][n as usize];
        for _ in 0..12 {
            let n = c.limit();
            c.window(&w(tp(n)));
        }
        assert_eq!(c.limit(), 4, "{c:?}");
    }

    #[test]
    fn backs_off_when_throughput_falls_and_probes_again_after_the_hold() {
        let mut c = Controller::new(3, 8);
        assert_eq!(c.window(&w(100)).map(|c| c.to), Some(4), "probe");
        let ch = c.window(&w(60)).expect("back off");
        assert_eq!((ch.from, ch.to), (4, 3));
        assert!(ch.reason.contains("no better"), "{}", ch.reason);
        for _ in 0..HOLD - 1 {
            assert_eq!(c.window(&w(100)), None, "held at the ceiling");
        }
        // The hold is over: 4 is measured again (it may have improved).
        assert_eq!(c.window(&w(100)).map(|c| c.to), Some(4));
    }

    #[test]
    fn a_stall_backs_off_at_once_and_nothing_is_learnt_when_not_binding() {
        let mut c = Controller::new(3, 8);
        let idle = Window {
            binding: false,
            ..w(10)
        };
        assert_eq!(c.window(&idle), None);
        assert_eq!(c.window(&w(0)), None, "no bytes, no evidence");
        assert_eq!(c.limit(), 3);
        let stall = Window {
            stalled: Some("vm7 dirties 80 MiB/s".into()),
            ..w(100)
        };
        let ch = c.window(&stall).expect("back off");
        assert_eq!(ch.to, 2);
        assert!(ch.reason.contains("vm7"), "{}", ch.reason);
        // Never below one.
        let mut one = Controller::new(1, 4);
        assert_eq!(one.window(&stall), None);
        assert_eq!(one.limit(), 1);
    }

    #[test]
    fn never_above_the_maximum() {
        let mut c = Controller::new(5, 3);
        assert_eq!(c.limit(), 3);
        let mut t = 100;
        for _ in 0..5 {
            t *= 2;
            c.window(&w(t));
        }
        assert_eq!(c.limit(), 3);
    }

    #[test]
    fn the_meter_counts_each_byte_once() {
        let mut m = Meter::default();
        m.progress("a", 10, None);
        m.progress("a", 30, None);
        m.progress("b", 5, None);
        // A repeated or older sample adds nothing.
        m.progress("a", 30, None);
        m.progress("a", 20, None);
        assert_eq!(m.take(), (35, None));
        m.ended("a", 50);
        m.ended("c", 7);
        m.progress("b", 6, Some("b: downtime 300 → 600 ms".into()));
        let (bytes, stalled) = m.take();
        assert_eq!(bytes, 20 + 7 + 1);
        assert!(stalled.is_some());
        assert_eq!(m.take(), (0, None));
    }
}
