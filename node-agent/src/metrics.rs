//! The agent's Prometheus metrics (config `metrics_listen = "ADDR"` serves
//! them on `GET /metrics`). Every series carries a `node` label, so one
//! process hosting several agents (`sim-fleet`) exposes them all.

use nodemaint_proto::metrics::{Desc, Registry, LATENCY_BUCKETS, MIGRATION_BUCKETS};
use nodemaint_proto::pb::{self, agent_command::Kind as Cmd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub static COMMAND_SECONDS: Desc = Desc::histogram(
    "nodemaint_agent_command_duration_seconds",
    "Time the agent took to execute a command, by node, action and result (ok, failed).",
    LATENCY_BUCKETS,
);
pub static MIGRATIONS_IN_FLIGHT: Desc = Desc::gauge(
    "nodemaint_agent_migrations_in_flight",
    "Outgoing live migrations running on this node, by node.",
);
pub static MIGRATION_SECONDS: Desc = Desc::histogram(
    "nodemaint_agent_migration_duration_seconds",
    "Duration of outgoing live migrations, by node and result (ok, failed).",
    MIGRATION_BUCKETS,
);
pub static MIGRATED_BYTES: Desc = Desc::counter(
    "nodemaint_agent_migrated_bytes_total",
    "Memory bytes sent by successful outgoing live migrations, by node.",
);
pub static MIGRATION_DOWNTIME: Desc = Desc::histogram(
    "nodemaint_agent_migration_downtime_seconds",
    "Guest downtime (pause at switch-over) of successful outgoing live migrations, as libvirt measured it, by node.",
    DOWNTIME_BUCKETS,
);
pub static MIGRATION_ESCALATIONS: Desc = Desc::counter(
    "nodemaint_agent_migration_escalations_total",
    "Steps taken to make live migrations converge, by node and step (downtime, post_copy, report).",
);
/// Downtime buckets: QEMU's default allowed downtime is 0.3 s.
const DOWNTIME_BUCKETS: &[f64] = &[0.01, 0.03, 0.1, 0.3, 0.6, 1.0, 2.0, 5.0];
pub static CHECK_RUNS: Desc = Desc::counter(
    "nodemaint_agent_check_runs_total",
    "Service check runs, by node and check.",
);
pub static CHECK_FAILURES: Desc = Desc::counter(
    "nodemaint_agent_check_failures_total",
    "Service check runs with at least one failed service, by node and check.",
);
pub static CHECK_OK: Desc = Desc::gauge(
    "nodemaint_agent_check_ok",
    "1 when the check's last run found every service up, 0 when one failed, by node and check.",
);
pub static CHECK_LAST_RUN: Desc = Desc::gauge(
    "nodemaint_agent_check_last_run_timestamp_seconds",
    "When the check last ran (Unix seconds), by node and check.",
);

/// This process's registry.
pub fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| {
        let r = Registry::new();
        r.describe(&[
            &COMMAND_SECONDS,
            &MIGRATIONS_IN_FLIGHT,
            &MIGRATION_SECONDS,
            &MIGRATED_BYTES,
            &MIGRATION_DOWNTIME,
            &MIGRATION_ESCALATIONS,
            &CHECK_RUNS,
            &CHECK_FAILURES,
            &CHECK_OK,
            &CHECK_LAST_RUN,
        ]);
        nodemaint_proto::metrics::set_build_info(&r, crate::agent::VERSION);
        r
    })
}

/// Zeroes the node's counters and gauges (those of each configured check
/// too), so they read 0 before the first command instead of being absent
/// (`increase(...)` then sees the first failure).
pub fn init_node(node: &str, checks: &[crate::checks::CheckConfig]) {
    let r = registry();
    r.add(&MIGRATIONS_IN_FLIGHT, &[("node", node)], 0.0);
    r.add(&MIGRATED_BYTES, &[("node", node)], 0.0);
    for c in checks {
        r.add(&CHECK_RUNS, &[("node", node), ("check", &c.name)], 0.0);
        r.add(&CHECK_FAILURES, &[("node", node), ("check", &c.name)], 0.0);
    }
}

/// The `action` label of a command kind (the coordinator uses the same words).
pub fn action(kind: Option<&Cmd>) -> &'static str {
    kind.map(Cmd::action).unwrap_or("none")
}

fn result_word(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "failed"
    }
}

/// A command finished after `took`.
pub fn command_done(node: &str, action: &str, ok: bool, took: Duration) {
    registry().observe(
        &COMMAND_SECONDS,
        &[
            ("node", node),
            ("action", action),
            ("result", result_word(ok)),
        ],
        took.as_secs_f64(),
    );
}

/// Counts an outgoing migration as in flight until `finish` or drop.
pub struct MigrationTimer {
    node: String,
    started: Instant,
}

impl MigrationTimer {
    pub fn start(node: &str) -> MigrationTimer {
        registry().add(&MIGRATIONS_IN_FLIGHT, &[("node", node)], 1.0);
        MigrationTimer {
            node: node.to_string(),
            started: Instant::now(),
        }
    }

    /// An escalation step (`downtime`, `post_copy`, `report`).
    pub fn escalated(&self, step: &str) {
        registry().add(
            &MIGRATION_ESCALATIONS,
            &[("node", self.node.as_str()), ("step", step)],
            1.0,
        );
    }

    /// The migration ended; `bytes` is what its last progress sample said
    /// was transferred, `downtime_ms` what libvirt measured.
    pub fn finish(self, ok: bool, bytes: u64, downtime_ms: Option<u64>) {
        let r = registry();
        let node = self.node.as_str();
        if let Some(ms) = downtime_ms {
            r.observe(&MIGRATION_DOWNTIME, &[("node", node)], ms as f64 / 1000.0);
        }
        r.observe(
            &MIGRATION_SECONDS,
            &[("node", node), ("result", result_word(ok))],
            self.started.elapsed().as_secs_f64(),
        );
        if ok {
            r.add(&MIGRATED_BYTES, &[("node", node)], bytes as f64);
        }
    }
}

impl Drop for MigrationTimer {
    fn drop(&mut self) {
        registry().add(&MIGRATIONS_IN_FLIGHT, &[("node", &self.node)], -1.0);
    }
}

/// Counts the runs and failures of each check in a report (a check with
/// several failed services is one failure).
pub fn checks_done(node: &str, report: &pb::CheckReport) {
    let r = registry();
    let mut checks: Vec<(&str, bool)> = Vec::new();
    for s in &report.services {
        match checks.iter_mut().find(|(c, _)| *c == s.check) {
            Some((_, failed)) => *failed |= !s.ok,
            None => checks.push((&s.check, !s.ok)),
        }
    }
    let now = nodemaint_proto::now_ms() as f64 / 1000.0;
    for (check, failed) in checks {
        r.add(&CHECK_RUNS, &[("node", node), ("check", check)], 1.0);
        // The last result, so an alert can tell "failing now" from
        // "failed once" (the counter) without a time window.
        r.set(
            &CHECK_OK,
            &[("node", node), ("check", check)],
            if failed { 0.0 } else { 1.0 },
        );
        r.set(&CHECK_LAST_RUN, &[("node", node), ("check", check)], now);
        r.add(
            &CHECK_FAILURES,
            &[("node", node), ("check", check)],
            if failed { 1.0 } else { 0.0 },
        );
    }
}

/// Binds `addr` (so a busy port fails the start) and serves `/metrics`.
pub async fn listen(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics: cannot listen on {addr}: {e}"))?;
    // The bound address (port 0 picks one): what the tests read to scrape.
    let bound = listener.local_addr()?;
    tracing::info!("Prometheus metrics on http://{bound}/metrics");
    tokio::spawn(async move {
        let render = || async { registry().render() };
        if let Err(e) = nodemaint_proto::metrics::serve(listener, render).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(check: &str, ok: bool) -> pb::ServiceStatus {
        pb::ServiceStatus {
            check: check.into(),
            service: format!("{check}-svc"),
            ok,
            ..Default::default()
        }
    }

    #[test]
    fn a_check_with_failed_services_counts_one_failure() {
        let report = pb::CheckReport {
            services: vec![svc("ovs", false), svc("ovs", false), svc("ssh", true)],
            all_ok: false,
        };
        checks_done("t-node", &report);
        let r = registry();
        let get = |d, c| r.value(d, &[("node", "t-node"), ("check", c)]);
        assert_eq!(get(&CHECK_RUNS, "ovs"), Some(1.0));
        assert_eq!(get(&CHECK_FAILURES, "ovs"), Some(1.0));
        assert_eq!(get(&CHECK_RUNS, "ssh"), Some(1.0));
        assert_eq!(get(&CHECK_FAILURES, "ssh"), Some(0.0));
        assert_eq!(get(&CHECK_OK, "ovs"), Some(0.0));
        assert_eq!(get(&CHECK_OK, "ssh"), Some(1.0));
        let ran = get(&CHECK_LAST_RUN, "ovs").unwrap();
        let now = nodemaint_proto::now_ms() as f64 / 1000.0;
        assert!(ran <= now && now - ran < 60.0, "{ran} vs {now}");
        // A later run that passes clears the failure; the counter keeps it.
        checks_done(
            "t-node",
            &pb::CheckReport {
                services: vec![svc("ovs", true)],
                all_ok: true,
            },
        );
        assert_eq!(get(&CHECK_OK, "ovs"), Some(1.0));
        assert_eq!(get(&CHECK_FAILURES, "ovs"), Some(1.0));
        assert!(r.render().contains(&format!(
            "nodemaint_build_info{{version=\"{}\",git=",
            crate::agent::VERSION
        )));
    }

    #[test]
    fn a_migration_is_in_flight_until_it_finishes() {
        init_node("m-node", &[]);
        let r = registry();
        let t = MigrationTimer::start("m-node");
        assert_eq!(
            r.value(&MIGRATIONS_IN_FLIGHT, &[("node", "m-node")]),
            Some(1.0)
        );
        t.finish(true, 4096, Some(250));
        assert_eq!(
            r.value(&MIGRATIONS_IN_FLIGHT, &[("node", "m-node")]),
            Some(0.0)
        );
        assert_eq!(
            r.value(&MIGRATED_BYTES, &[("node", "m-node")]),
            Some(4096.0)
        );
    }
}
