//! Pre-flight probes (can the source's libvirt reach each destination's?),
//! cached and single-flight per source node. A dry run is a read: a Level1
//! user repeating it must not make a node open libvirt connections at will.
//! At most one probe per source runs at a time, and a successful answer is
//! reused for `FRESH` by every pre-flight that needs no other destination.

use crate::server::Coordinator;
use nodemaint_planner as planner;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a successful probe answers for.
pub const FRESH: Duration = Duration::from_secs(30);

type Results = Vec<(String, Result<(), String>)>;

/// One source node's last clean answer, locked while a probe runs.
type Slot = Arc<tokio::sync::Mutex<Option<(Instant, Results)>>>;

#[derive(Default)]
pub struct Probes {
    per_source: Mutex<HashMap<String, Slot>>,
}

impl Probes {
    /// Each destination of `plan` with whether `source` reaches it.
    pub async fn probe(&self, c: &Coordinator, source: &str, plan: &planner::DrainPlan) -> Results {
        let slot = self
            .per_source
            .lock()
            .unwrap()
            .entry(source.to_string())
            .or_default()
            .clone();
        // Held across the probe: a second pre-flight waits for the first
        // one's answer instead of sending its own.
        let mut cached = slot.lock().await;
        let mut wanted: Vec<&str> = plan.moves.iter().map(|m| m.to.as_str()).collect();
        wanted.sort_unstable();
        wanted.dedup();
        if let Some((at, results)) = cached.as_ref() {
            let covered = wanted.iter().all(|d| results.iter().any(|(n, _)| n == d));
            if at.elapsed() < FRESH && covered {
                return results
                    .iter()
                    .filter(|(n, _)| wanted.contains(&n.as_str()))
                    .cloned()
                    .collect();
            }
        }
        let results = c.probe_destinations(source, plan).await;
        // Only a clean answer is kept: an operator fixing a destination
        // wants the next dry run to look again.
        *cached = results
            .iter()
            .all(|(_, r)| r.is_ok())
            .then(|| (Instant::now(), results.clone()));
        results
    }
}
