//! The coordinator's Prometheus metrics (`coordinator serve
//! --metrics-listen ADDR` serves them on `GET /metrics`).
//!
//! Jobs by state and heartbeat ages are computed at scrape time from the
//! jobs bucket and the registry, so they are right after a restart and
//! agree between replicas; command and migration figures are counted by
//! this process as its jobs send commands (see README "Metrics").

use crate::server::Coordinator;
use nodemaint_proto::metrics::{Desc, Registry, LATENCY_BUCKETS, MIGRATION_BUCKETS};
use nodemaint_proto::pb;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

pub static JOBS: Desc = Desc::gauge(
    "nodemaint_jobs",
    "Jobs recorded in the jobs bucket, by kind and state.",
);
pub static MIGRATIONS_IN_FLIGHT: Desc = Desc::gauge(
    "nodemaint_migrations_in_flight",
    "Live migrations this coordinator has sent and not yet seen finish.",
);
pub static MIGRATION_SECONDS: Desc = Desc::histogram(
    "nodemaint_migration_duration_seconds",
    "Time from sending a migrate command to its result, by result (ok, failed).",
    MIGRATION_BUCKETS,
);
pub static MIGRATED_BYTES: Desc = Desc::counter(
    "nodemaint_migrated_bytes_total",
    "Memory bytes transferred by successful live migrations (from the agents' progress reports).",
);
pub static COMMAND_SECONDS: Desc = Desc::histogram(
    "nodemaint_command_duration_seconds",
    "Time from sending an agent command to its result, by action and result (ok, failed).",
    LATENCY_BUCKETS,
);
pub static HEARTBEAT_AGE: Desc = Desc::gauge(
    "nodemaint_node_heartbeat_age_seconds",
    "Seconds since the node's last heartbeat, by node.",
);
pub static NODE_REACHABLE: Desc = Desc::gauge(
    "nodemaint_node_reachable",
    "1 when the node heartbeats in time (missed fewer than three), else 0, by node.",
);
pub static LEADER: Desc = Desc::gauge(
    "nodemaint_leader",
    "1 while this coordinator holds the leader lease, else 0.",
);

pub static FOREIGN_REPLIES: Desc = Desc::counter(
    "nodemaint_api_foreign_reply_refused_total",
    "API requests refused unanswered because their reply subject is not the caller's own inbox.",
);

const JOB_STATES: [&str; 5] = ["RUNNING", "PAUSED", "SUCCEEDED", "FAILED", "ABORTED"];

/// This process's registry.
pub fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| {
        let r = Registry::new();
        r.describe(&[
            &JOBS,
            &MIGRATION_SECONDS,
            &COMMAND_SECONDS,
            &HEARTBEAT_AGE,
            &NODE_REACHABLE,
        ]);
        r.zero(&MIGRATIONS_IN_FLIGHT);
        r.zero(&MIGRATED_BYTES);
        r.zero(&LEADER);
        r.zero(&FOREIGN_REPLIES);
        r
    })
}

/// Bytes processed so far per migrate command id (its last progress report).
fn progress_bytes() -> &'static Mutex<HashMap<String, u64>> {
    static P: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    P.get_or_init(Default::default)
}

/// Notes a progress event of a command this coordinator awaits.
pub fn progress(ev: &pb::Event) {
    if let Some(pb::event::Body::Progress(p)) = &ev.body {
        let mut m = progress_bytes().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = m.get_mut(&p.command_id) {
            *b = (*b).max(p.bytes_processed);
        }
    }
}

/// Times one agent command from send to result; a migration also counts as
/// in flight until its result (or until the wait is dropped).
pub struct CommandTimer {
    action: &'static str,
    cmd_id: String,
    started: Instant,
    finished: bool,
}

impl CommandTimer {
    pub fn start(action: &'static str, cmd_id: &str) -> CommandTimer {
        if action == "migrate" {
            registry().add(&MIGRATIONS_IN_FLIGHT, &[], 1.0);
            progress_bytes()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(cmd_id.to_string(), 0);
        }
        CommandTimer {
            action,
            cmd_id: cmd_id.to_string(),
            started: Instant::now(),
            finished: false,
        }
    }

    pub fn finish(mut self, r: &pb::CommandResult) {
        self.finished = true;
        let secs = self.started.elapsed().as_secs_f64();
        let result = if r.ok { "ok" } else { "failed" };
        let reg = registry();
        reg.observe(
            &COMMAND_SECONDS,
            &[("action", self.action), ("result", result)],
            secs,
        );
        if self.action == "migrate" {
            reg.observe(&MIGRATION_SECONDS, &[("result", result)], secs);
            let bytes = self.take_bytes();
            if r.ok {
                reg.add(&MIGRATED_BYTES, &[], bytes as f64);
            }
        }
    }

    fn take_bytes(&self) -> u64 {
        progress_bytes()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.cmd_id)
            .unwrap_or(0)
    }
}

impl Drop for CommandTimer {
    fn drop(&mut self) {
        if self.action == "migrate" {
            registry().add(&MIGRATIONS_IN_FLIGHT, &[], -1.0);
            if !self.finished {
                self.take_bytes();
            }
        }
    }
}

/// Jobs by kind and state: every state of every kind seen, zeros included,
/// so a gauge drops to 0 instead of vanishing.
pub fn jobs_by_state<'a>(
    jobs: impl Iterator<Item = (&'a str, &'static str)>,
) -> Vec<(Vec<(&'static str, String)>, f64)> {
    let mut counts: BTreeMap<(String, &'static str), f64> = BTreeMap::new();
    for (kind, state) in jobs {
        for s in JOB_STATES {
            counts.entry((kind.to_string(), s)).or_insert(0.0);
        }
        *counts.entry((kind.to_string(), state)).or_insert(0.0) += 1.0;
    }
    counts
        .into_iter()
        .map(|((kind, state), n)| (vec![("kind", kind), ("state", state.to_string())], n))
        .collect()
}

fn state_word(s: crate::jobs::JobState) -> &'static str {
    use crate::jobs::JobState::*;
    match s {
        Running => "RUNNING",
        Paused => "PAUSED",
        Succeeded => "SUCCEEDED",
        Failed => "FAILED",
        Aborted => "ABORTED",
    }
}

/// Refreshes the scrape-time values and renders everything.
pub async fn render(c: &Coordinator) -> String {
    let reg = registry();
    let jobs = c.jobs.list(0).jobs;
    reg.replace(
        &JOBS,
        jobs_by_state(jobs.iter().map(|j| (j.kind(), state_word(j.state)))),
    );
    let now = nodemaint_proto::now_ms();
    let nodes = c.registry.all();
    let age = |last: i64| {
        if last > 0 {
            (now - last).max(0) as f64 / 1000.0
        } else {
            f64::INFINITY
        }
    };
    reg.replace(
        &HEARTBEAT_AGE,
        nodes
            .iter()
            .map(|n| (vec![("node", n.name.clone())], age(n.last_seen_ms)))
            .collect(),
    );
    reg.replace(
        &NODE_REACHABLE,
        nodes
            .iter()
            .map(|n| {
                let up = if n.reachable_at(now) { 1.0 } else { 0.0 };
                (vec![("node", n.name.clone())], up)
            })
            .collect(),
    );
    let leader = c.leader.load(std::sync::atomic::Ordering::Relaxed);
    reg.set(&LEADER, &[], if leader { 1.0 } else { 0.0 });
    reg.render()
}

/// Binds `addr` (so a busy port fails the start) and serves `/metrics`.
pub async fn listen(c: Arc<Coordinator>, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics: cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    tokio::spawn(async move {
        let render = move || {
            let c = c.clone();
            async move { render(&c).await }
        };
        if let Err(e) = nodemaint_proto::metrics::serve(listener, render).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_by_state_lists_every_state_of_each_kind() {
        let jobs = [
            ("vm.stop", "SUCCEEDED"),
            ("vm.stop", "SUCCEEDED"),
            ("maintenance.start", "RUNNING"),
        ];
        let out = jobs_by_state(jobs.into_iter());
        assert_eq!(out.len(), 10);
        let get = |k: &str, s: &str| {
            out.iter()
                .find(|(l, _)| l[0].1 == k && l[1].1 == s)
                .map(|(_, v)| *v)
        };
        assert_eq!(get("vm.stop", "SUCCEEDED"), Some(2.0));
        assert_eq!(get("vm.stop", "FAILED"), Some(0.0));
        assert_eq!(get("maintenance.start", "RUNNING"), Some(1.0));
    }

    #[test]
    fn a_migration_is_in_flight_until_its_result_and_counts_its_bytes() {
        let reg = registry();
        let before = reg.value(&MIGRATED_BYTES, &[]).unwrap();
        let t = CommandTimer::start("migrate", "c-1");
        assert!(reg.value(&MIGRATIONS_IN_FLIGHT, &[]).unwrap() >= 1.0);
        let ev = |bytes| pb::Event {
            body: Some(pb::event::Body::Progress(pb::Progress {
                command_id: "c-1".into(),
                bytes_processed: bytes,
                ..Default::default()
            })),
            ..Default::default()
        };
        progress(&ev(100));
        progress(&ev(300));
        t.finish(&pb::CommandResult {
            ok: true,
            ..Default::default()
        });
        assert_eq!(reg.value(&MIGRATED_BYTES, &[]).unwrap() - before, 300.0);
        let text = reg.render();
        assert!(text.contains("nodemaint_migration_duration_seconds_count{result=\"ok\"}"));
        assert!(text.contains(
            "nodemaint_command_duration_seconds_count{action=\"migrate\",result=\"ok\"}"
        ));
    }
}
