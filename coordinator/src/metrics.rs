//! The coordinator's Prometheus metrics (`coordinator serve
//! --metrics-listen ADDR` serves them on `GET /metrics`).
//!
//! Jobs by state and heartbeat ages are computed at scrape time from the
//! jobs bucket and the registry, so they are right after a restart and
//! agree between replicas; command and migration figures are counted by
//! this process as its jobs send commands (see docs/observability.md).

use crate::server::Coordinator;
use nodemaint_proto::metrics::{Desc, Registry, LATENCY_BUCKETS, MIGRATION_BUCKETS};
use nodemaint_proto::model::{NodeRecord, NodeStatus};
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
pub static LAST_HEARTBEAT: Desc = Desc::gauge(
    "nodemaint_node_last_heartbeat_timestamp_seconds",
    "When the node's last heartbeat was sent (Unix seconds; 0 if never seen), by node.",
);
pub static HEARTBEAT_INTERVAL: Desc = Desc::gauge(
    "nodemaint_node_heartbeat_interval_seconds",
    "The heartbeat interval the node's agent promises, by node.",
);
pub static NODE_STATUS: Desc = Desc::gauge(
    "nodemaint_node_status",
    "1 for the node's current status, 0 for the others, by node and status.",
);
pub static NODE_STATUS_SINCE: Desc = Desc::gauge(
    "nodemaint_node_status_since_timestamp_seconds",
    "When the node entered its current status (Unix seconds), by node and status; absent for records older than the field.",
);
pub static NODE_HELD: Desc = Desc::gauge(
    "nodemaint_node_held_by_job",
    "1 while a job holds the node (maintenance, enable), else 0, by node.",
);
pub static JOB_STARTED: Desc = Desc::gauge(
    "nodemaint_job_started_timestamp_seconds",
    "When each running or paused job was created (Unix seconds), by job_id, kind, state and node.",
);
pub static JOB_UPDATED: Desc = Desc::gauge(
    "nodemaint_job_updated_timestamp_seconds",
    "When each running or paused job's record last changed (Unix seconds), by job_id, kind, state and node.",
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
            &LAST_HEARTBEAT,
            &HEARTBEAT_INTERVAL,
            &NODE_REACHABLE,
            &NODE_STATUS,
            &NODE_STATUS_SINCE,
            &NODE_HELD,
            &JOB_STARTED,
            &JOB_UPDATED,
        ]);
        nodemaint_proto::metrics::set_build_info(&r, env!("CARGO_PKG_VERSION"));
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
            // The result's own count when it has one: it may arrive before
            // the last progress events.
            let bytes = self.take_bytes().max(r.migrated_bytes);
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

/// The `status` label values: every status a node record can have.
const NODE_STATUSES: [(NodeStatus, &str); 4] = [
    (NodeStatus::Enabled, "enabled"),
    (NodeStatus::Maintenance, "maintenance"),
    (NodeStatus::Error, "error"),
    (NodeStatus::Decommissioned, "decommissioned"),
];

fn status_word(s: NodeStatus) -> &'static str {
    NODE_STATUSES
        .iter()
        .find(|(st, _)| *st == s)
        .map(|(_, w)| *w)
        .unwrap_or("unknown")
}

type Series = Vec<(Vec<(&'static str, String)>, f64)>;

/// The per-node gauges computed at scrape time (pure): status (every status
/// of every node, 1 for its own, so `sum by (status)` counts nodes), when
/// it entered it, last heartbeat, promised interval, held by a job.
pub struct NodeGauges {
    pub status: Series,
    pub status_since: Series,
    pub last_heartbeat: Series,
    pub interval: Series,
    pub held: Series,
}

pub fn node_gauges(nodes: &[NodeRecord]) -> NodeGauges {
    let secs = |ms: i64| ms.max(0) as f64 / 1000.0;
    let node = |n: &NodeRecord| vec![("node", n.name.clone())];
    let mut g = NodeGauges {
        status: Vec::new(),
        status_since: Vec::new(),
        last_heartbeat: Vec::new(),
        interval: Vec::new(),
        held: Vec::new(),
    };
    for n in nodes {
        for (st, word) in NODE_STATUSES {
            let v = if n.status == st { 1.0 } else { 0.0 };
            g.status
                .push((vec![("node", n.name.clone()), ("status", word.into())], v));
        }
        if n.status_since_ms > 0 {
            g.status_since.push((
                vec![
                    ("node", n.name.clone()),
                    ("status", status_word(n.status).into()),
                ],
                secs(n.status_since_ms),
            ));
        }
        g.last_heartbeat.push((node(n), secs(n.last_seen_ms)));
        g.interval
            .push((node(n), n.heartbeat_interval_ms as f64 / 1000.0));
        let held = if n.current_job.is_some() { 1.0 } else { 0.0 };
        g.held.push((node(n), held));
    }
    g
}

/// Start and last-change times of the jobs that are not over (pure), for
/// "job stuck" alerts; ended jobs are left out, so the series stay few.
pub fn active_job_times(jobs: &[crate::jobs::Job]) -> (Series, Series) {
    let mut started = Vec::new();
    let mut updated = Vec::new();
    for j in jobs.iter().filter(|j| !j.state.is_terminal()) {
        // `job_id`, not `job`: Prometheus sets `job` to the scrape job's name.
        let labels = vec![
            ("job_id", j.id.clone()),
            ("kind", j.kind().to_string()),
            ("state", state_word(j.state).to_string()),
            ("node", j.node.clone().unwrap_or_default()),
        ];
        started.push((labels.clone(), j.created_ms.max(0) as f64 / 1000.0));
        updated.push((labels, j.updated_ms.max(0) as f64 / 1000.0));
    }
    (started, updated)
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
    let g = node_gauges(&nodes);
    reg.replace(&NODE_STATUS, g.status);
    reg.replace(&NODE_STATUS_SINCE, g.status_since);
    reg.replace(&LAST_HEARTBEAT, g.last_heartbeat);
    reg.replace(&HEARTBEAT_INTERVAL, g.interval);
    reg.replace(&NODE_HELD, g.held);
    let (started, updated) = active_job_times(&jobs);
    reg.replace(&JOB_STARTED, started);
    reg.replace(&JOB_UPDATED, updated);
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
    // The bound address (port 0 picks one): what the tests read to scrape.
    let bound = listener.local_addr()?;
    tracing::info!("Prometheus metrics on http://{bound}/metrics");
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
    fn every_node_lists_every_status_with_one_set() {
        let node = |name: &str, status, since, seen| NodeRecord {
            name: name.into(),
            status,
            status_since_ms: since,
            last_seen_ms: seen,
            heartbeat_interval_ms: 2000,
            current_job: (status == NodeStatus::Maintenance).then(|| "j1".to_string()),
            ..Default::default()
        };
        let nodes = [
            node("n1", NodeStatus::Enabled, 0, 1_700_000_000_500),
            node("n2", NodeStatus::Maintenance, 1_699_999_000_000, 0),
        ];
        let g = node_gauges(&nodes);
        let get = |s: &Series, labels: &[(&str, &str)]| {
            s.iter()
                .find(|(l, _)| {
                    l.len() == labels.len()
                        && l.iter().zip(labels).all(|(a, b)| a.0 == b.0 && a.1 == b.1)
                })
                .map(|(_, v)| *v)
        };
        assert_eq!(g.status.len(), 2 * NODE_STATUSES.len());
        // Summing by status counts the nodes in each.
        for (st, n) in [
            ("enabled", 1.0),
            ("maintenance", 1.0),
            ("error", 0.0),
            ("decommissioned", 0.0),
        ] {
            let sum: f64 = g
                .status
                .iter()
                .filter(|(l, _)| l[1].1 == st)
                .map(|(_, v)| v)
                .sum();
            assert_eq!(sum, n, "{st}");
        }
        assert_eq!(
            get(&g.status, &[("node", "n2"), ("status", "maintenance")]),
            Some(1.0)
        );
        assert_eq!(
            get(&g.status, &[("node", "n2"), ("status", "enabled")]),
            Some(0.0)
        );
        // Only a recorded status change has a "since"; it names the status.
        assert_eq!(g.status_since.len(), 1);
        assert_eq!(
            get(
                &g.status_since,
                &[("node", "n2"), ("status", "maintenance")]
            ),
            Some(1_699_999_000.0)
        );
        assert_eq!(
            get(&g.last_heartbeat, &[("node", "n1")]),
            Some(1_700_000_000.5)
        );
        assert_eq!(get(&g.last_heartbeat, &[("node", "n2")]), Some(0.0));
        assert_eq!(get(&g.interval, &[("node", "n1")]), Some(2.0));
        assert_eq!(get(&g.held, &[("node", "n1")]), Some(0.0));
        assert_eq!(get(&g.held, &[("node", "n2")]), Some(1.0));
    }

    #[test]
    fn only_jobs_that_are_not_over_have_start_and_update_times() {
        use crate::jobs::{Cordon, Job, JobSpec, JobState};
        let job = |state, created, updated| Job {
            state,
            created_ms: created,
            updated_ms: updated,
            ..Job::new(JobSpec::Cordon(Cordon {}), "u", Some("n1"))
        };
        let jobs = [
            job(JobState::Running, 1_000_000, 1_500_000),
            job(JobState::Paused, 2_000_000, 2_000_000),
            job(JobState::Succeeded, 3_000_000, 3_500_000),
            job(JobState::Failed, 3_000_000, 3_500_000),
            job(JobState::Aborted, 3_000_000, 3_500_000),
        ];
        let (started, updated) = active_job_times(&jobs);
        assert_eq!(started.len(), 2);
        assert_eq!(updated.len(), 2);
        let (l, v) = &started[0];
        assert_eq!(l[0], ("job_id", jobs[0].id.clone()));
        assert_eq!(l[1], ("kind", jobs[0].kind().to_string()));
        assert_eq!(l[2], ("state", "RUNNING".to_string()));
        assert_eq!(l[3], ("node", "n1".to_string()));
        assert_eq!(*v, 1000.0);
        assert_eq!(updated[0].1, 1500.0);
        assert_eq!(started[1].0[2].1, "PAUSED");
    }

    #[test]
    fn the_registry_names_its_build() {
        let text = registry().render();
        let line = format!(
            "nodemaint_build_info{{version=\"{}\",git=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION"),
            nodemaint_proto::metrics::GIT_COMMIT
        );
        assert!(text.contains(&line), "{text}");
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
        // A result that arrives before the progress events counts its own bytes.
        let t = CommandTimer::start("migrate", "c-2");
        t.finish(&pb::CommandResult {
            ok: true,
            migrated_bytes: 700,
            ..Default::default()
        });
        assert_eq!(reg.value(&MIGRATED_BYTES, &[]).unwrap() - before, 1000.0);
        let text = reg.render();
        assert!(text.contains("nodemaint_migration_duration_seconds_count{result=\"ok\"}"));
        assert!(text.contains(
            "nodemaint_command_duration_seconds_count{action=\"migrate\",result=\"ok\"}"
        ));
    }
}
