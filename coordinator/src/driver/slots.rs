//! Fleet-wide migration slots: per source node, per destination node and
//! global limits that hold across every job running at the same time, with
//! maintenance migrations served before manual moves.
//!
//! A migration takes its three slots at once or waits; it never holds a
//! global slot while waiting for a busy node (which would idle the fleet
//! behind one slow destination). Waiters are served in priority order, then
//! arrival order; one that does not fit yet lets later ones that do fit go
//! first (their nodes are free, so nothing it needs is taken from it except
//! global slots, which it would not get while its nodes are busy anyway).

use crate::engine::concurrency::Meter;
use nodemaint_proto::pb::{self, event::Body};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Lower serves first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Maintenance = 0,
    Manual = 1,
}

/// The pure bookkeeping: slots in use against the limits.
#[derive(Debug, Default)]
pub struct Ledger {
    pub limits: (usize, usize, usize),
    global: usize,
    out: HashMap<String, usize>,
    inb: HashMap<String, usize>,
    /// Per-source limits that replace `limits.0` (adaptive drains).
    source_limit: HashMap<String, usize>,
}

impl Ledger {
    /// Limits: per source, per destination, global (each at least 1).
    pub fn new(per_source: usize, per_destination: usize, global: usize) -> Self {
        Ledger {
            limits: (per_source.max(1), per_destination.max(1), global.max(1)),
            ..Default::default()
        }
    }

    pub fn fits(&self, from: &str, to: &str) -> bool {
        self.global < self.limits.2
            && self.out.get(from).copied().unwrap_or(0)
                < self
                    .source_limit
                    .get(from)
                    .copied()
                    .unwrap_or(self.limits.0)
            && self.inb.get(to).copied().unwrap_or(0) < self.limits.1
    }

    pub fn take(&mut self, from: &str, to: &str) {
        self.global += 1;
        *self.out.entry(from.to_string()).or_default() += 1;
        *self.inb.entry(to.to_string()).or_default() += 1;
    }

    pub fn release(&mut self, from: &str, to: &str) {
        self.global = self.global.saturating_sub(1);
        for (map, key) in [(&mut self.out, from), (&mut self.inb, to)] {
            if let Some(n) = map.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
    }

    pub fn in_use(&self) -> usize {
        self.global
    }
}

struct Waiter {
    from: String,
    to: String,
    tx: oneshot::Sender<()>,
}

#[derive(Default)]
struct State {
    ledger: Ledger,
    waiting: BTreeMap<(Priority, u64), Waiter>,
    seq: u64,
    /// Throughput meters of the sources under adaptive drains.
    meters: HashMap<String, Meter>,
}

impl State {
    /// Grants every waiter that fits, in order. A waiter whose receiver is
    /// gone (its job was aborted while waiting) is dropped without a grant.
    fn grant(&mut self) {
        let keys: Vec<(Priority, u64)> = self.waiting.keys().copied().collect();
        for key in keys {
            let w = &self.waiting[&key];
            if w.tx.is_closed() {
                self.waiting.remove(&key);
                continue;
            }
            if !self.ledger.fits(&w.from, &w.to) {
                continue;
            }
            let w = self.waiting.remove(&key).expect("present");
            self.ledger.take(&w.from, &w.to);
            if w.tx.send(()).is_err() {
                self.ledger.release(&w.from, &w.to);
            }
        }
    }
}

/// Migration slots shared by all jobs of this coordinator (only the leader
/// runs jobs, so one process sees every migration).
#[derive(Clone)]
pub struct MigrationSlots(Arc<Mutex<State>>);

/// Holds one migration's slots; dropping it frees them for the next waiter.
pub struct SlotGuard {
    slots: MigrationSlots,
    from: String,
    to: String,
    /// Whether the slots were granted (only then are they released).
    held: bool,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let mut s = self.slots.0.lock().unwrap();
        s.ledger.release(&self.from, &self.to);
        s.grant();
    }
}

impl MigrationSlots {
    pub fn new(limits: crate::config::Limits) -> Self {
        MigrationSlots(Arc::new(Mutex::new(State {
            ledger: Ledger::new(limits.per_source, limits.per_destination, limits.global),
            ..Default::default()
        })))
    }

    /// Waits for an outbound slot on `from`, an inbound slot on `to` and a
    /// fleet slot, all at once. Cancel-safe: dropping the future gives up
    /// its place (or the slots, if they were just granted).
    pub async fn acquire(&self, from: &str, to: &str, priority: Priority) -> SlotGuard {
        let rx = {
            let mut s = self.0.lock().unwrap();
            let (tx, rx) = oneshot::channel();
            s.seq += 1;
            let key = (priority, s.seq);
            s.waiting.insert(
                key,
                Waiter {
                    from: from.into(),
                    to: to.into(),
                    tx,
                },
            );
            s.grant();
            rx
        };
        let mut pending = PendingGrant {
            guard: Some(SlotGuard {
                slots: self.clone(),
                from: from.into(),
                to: to.into(),
                held: false,
            }),
            rx,
        };
        (&mut pending.rx)
            .await
            .expect("grants are never dropped unsent");
        let mut guard = pending.guard.take().expect("taken once");
        guard.held = true;
        guard
    }

    /// Migrations holding slots now.
    pub fn in_use(&self) -> usize {
        self.0.lock().unwrap().ledger.in_use()
    }

    /// Puts `source` under its drain's pacing until the guard is dropped:
    /// its outbound limit becomes `limit` (`--max-parallel`, or an adaptive
    /// drain's ceiling, below which the drain paces itself) and, when
    /// `metered` (adaptive drains), its migrations' bytes are metered. One
    /// drain per source at a time (the node is held by it).
    pub fn pace(&self, source: &str, limit: usize, metered: bool) -> PaceGuard {
        let mut s = self.0.lock().unwrap();
        s.ledger.source_limit.insert(source.into(), limit.max(1));
        if metered {
            s.meters.insert(source.into(), Meter::default());
        }
        s.grant();
        PaceGuard {
            slots: self.clone(),
            source: source.into(),
        }
    }

    /// Feeds a progress event of a command sent to `source` into its
    /// meter (when it has one).
    pub fn observe(&self, source: &str, ev: &pb::Event) {
        let Some(Body::Progress(p)) = &ev.body else {
            return;
        };
        if let Some(m) = self.0.lock().unwrap().meters.get_mut(source) {
            let escalation = (p.step == "escalating").then(|| format!("{}: {}", p.vm, p.message));
            m.progress(&p.command_id, p.bytes_processed, escalation);
        }
    }

    /// The command `id` sent to `source` ended with this result.
    pub fn ended(&self, source: &str, id: &str, r: &pb::CommandResult) {
        if let Some(m) = self.0.lock().unwrap().meters.get_mut(source) {
            m.ended(id, r.migrated_bytes);
        }
    }

    /// What `source`'s meter measured since the last take.
    pub fn take_meter(&self, source: &str) -> (u64, Option<String>) {
        let mut s = self.0.lock().unwrap();
        s.meters
            .get_mut(source)
            .map(Meter::take)
            .unwrap_or_default()
    }
}

/// A drain's hold on its source's limit and meter.
pub struct PaceGuard {
    slots: MigrationSlots,
    source: String,
}

impl Drop for PaceGuard {
    fn drop(&mut self) {
        let mut s = self.slots.0.lock().unwrap();
        s.ledger.source_limit.remove(&self.source);
        s.meters.remove(&self.source);
        s.grant();
    }
}

/// While waiting: if dropped, either the waiter is still queued (its closed
/// receiver makes `grant` skip it) or the slots were granted and must be
/// released.
struct PendingGrant {
    guard: Option<SlotGuard>,
    rx: oneshot::Receiver<()>,
}

impl Drop for PendingGrant {
    fn drop(&mut self) {
        if let Some(mut g) = self.guard.take() {
            // After close() no grant can arrive; one that already did is
            // released by dropping the guard as held.
            self.rx.close();
            g.held = self.rx.try_recv().is_ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn slots(src: usize, dst: usize, global: usize) -> MigrationSlots {
        MigrationSlots::new(crate::config::Limits {
            per_source: src,
            per_destination: dst,
            global,
        })
    }

    #[test]
    fn ledger_enforces_every_limit() {
        let mut l = Ledger::new(1, 2, 2);
        assert!(l.fits("a", "b"));
        l.take("a", "b");
        assert!(!l.fits("a", "c"), "per source");
        assert!(l.fits("c", "b"));
        l.take("c", "b");
        assert!(!l.fits("d", "e"), "global");
        l.release("a", "b");
        assert!(l.fits("a", "e"));
        assert_eq!(l.in_use(), 1);
    }

    #[test]
    fn an_adaptive_source_has_its_own_outbound_limit_and_meter() {
        let s = slots(1, 5, 5);
        let guard = s.pace("a", 3, true);
        {
            let mut st = s.0.lock().unwrap();
            for to in ["x", "y", "z"] {
                assert!(st.ledger.fits("a", to));
                st.ledger.take("a", to);
            }
            assert!(!st.ledger.fits("a", "w"), "3 is a's limit");
            assert!(st.ledger.fits("b", "w"));
            st.ledger.take("b", "w");
            assert!(!st.ledger.fits("b", "v"), "b keeps the configured 1");
        }
        let progress = |id: &str, bytes: u64, step: &str| pb::Event {
            body: Some(Body::Progress(pb::Progress {
                command_id: id.into(),
                bytes_processed: bytes,
                step: step.into(),
                vm: "vm1".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        s.observe("a", &progress("c1", 100, "migrating"));
        s.observe("b", &progress("c2", 100, "migrating"));
        s.observe("a", &progress("c1", 250, "escalating"));
        let result = pb::CommandResult {
            migrated_bytes: 300,
            ..Default::default()
        };
        s.ended("a", "c1", &result);
        let (bytes, stalled) = s.take_meter("a");
        assert_eq!(bytes, 300);
        assert!(stalled.is_some_and(|w| w.starts_with("vm1")));
        assert_eq!(s.take_meter("b"), (0, None), "b is not metered");
        drop(guard);
        let st = s.0.lock().unwrap();
        assert!(!st.ledger.fits("a", "w"), "back to the configured 1");
        assert!(st.meters.is_empty());
    }

    #[tokio::test]
    async fn a_busy_destination_does_not_hold_a_global_slot() {
        let s = slots(2, 1, 2);
        let _g1 = s.acquire("a", "x", Priority::Maintenance).await;
        // b→x waits for x; it must not take the second global slot meanwhile.
        let s2 = s.clone();
        let waiting =
            tokio::spawn(async move { s2.acquire("b", "x", Priority::Maintenance).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let g3 = tokio::time::timeout(
            Duration::from_millis(200),
            s.acquire("c", "y", Priority::Manual),
        )
        .await;
        assert!(g3.is_ok(), "c→y should get the free global slot");
        assert!(!waiting.is_finished());
        drop(_g1);
        drop(g3);
        let g2 = tokio::time::timeout(Duration::from_secs(1), waiting).await;
        assert!(g2.is_ok());
    }

    #[tokio::test]
    async fn maintenance_is_served_before_manual() {
        let s = slots(5, 5, 1);
        let first = s.acquire("a", "b", Priority::Manual).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, prio) in [
            ("manual", Priority::Manual),
            ("maintenance", Priority::Maintenance),
        ] {
            let (s, order) = (s.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _g = s.acquire("c", "d", prio).await;
                order.lock().unwrap().push(name);
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["maintenance", "manual"]);
    }

    #[tokio::test]
    async fn an_abandoned_wait_frees_its_place() {
        let s = slots(1, 1, 1);
        let g = s.acquire("a", "b", Priority::Maintenance).await;
        let abandoned = tokio::time::timeout(
            Duration::from_millis(30),
            s.acquire("a", "b", Priority::Maintenance),
        )
        .await;
        assert!(abandoned.is_err());
        drop(g);
        assert_eq!(s.in_use(), 0);
        let _g = tokio::time::timeout(
            Duration::from_secs(1),
            s.acquire("a", "b", Priority::Manual),
        )
        .await
        .expect("slots were freed");
        assert_eq!(s.in_use(), 1);
    }
}
