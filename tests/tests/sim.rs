//! Rolling maintenance of simulated fleets: real nats-server and
//! coordinator, agents on the in-memory hypervisor (`sim-fleet`), which
//! checks on its own state that no VM is ever lost or on two nodes.

use nodemaint_tests::*;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

fn sim_fleet(f: &Fleet, nodes: usize, vms: usize, heartbeat_ms: u64) -> Proc {
    let dir = f.dir.path().join("sim");
    Proc::spawn(
        "sim-fleet",
        Command::new(bin("sim-fleet")).args([
            "--nats-url",
            &f.nats.url,
            "--nodes",
            &nodes.to_string(),
            "--vms-per-node",
            &vms.to_string(),
            "--cloudspaces",
            &(nodes / 2).max(1).to_string(),
            "--time-scale",
            "0.01",
            "--reboot-secs",
            "60",
            "--heartbeat-interval-ms",
            &heartbeat_ms.to_string(),
            "--check-invariants",
            "--state-dir",
            dir.to_str().unwrap(),
        ]),
        f.dir.path().join("sim-fleet.log"),
    )
}

fn wait_nodes(f: &Fleet, n: usize) {
    wait_for(
        Duration::from_secs(120),
        &format!("{n} simulated nodes"),
        || {
            let out = f.cli("bob", &["node", "list", "--output", "json"]);
            serde_json::from_slice::<Value>(&out.stdout)
                .map(|v| {
                    v.as_array().map(|a| {
                        a.iter()
                            .filter(|n| n["reachable"] == true && n["vms_total"].as_u64() > Some(0))
                            .count()
                    }) == Some(n)
                })
                .unwrap_or(false)
        },
    );
}

fn roll(f: &Fleet, k: usize) -> (Value, Duration) {
    let t = Instant::now();
    let out = f.cli(
        "alice",
        &[
            "rolling",
            "start",
            "--all",
            "--max-unavailable",
            &k.to_string(),
            "--hook",
            "reboot",
            "--yes",
            "--output",
            "json",
        ],
    );
    let elapsed = t.elapsed();
    assert!(
        out.status.success(),
        "rolling failed: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    let job = job_of(&out);
    (job, elapsed)
}

fn check_after(f: &Fleet, sim: &Proc, job: &Value, nodes: usize, vms_total: usize) {
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    let progress = job["rolling"]["progress"].as_object().unwrap();
    assert_eq!(progress.len(), nodes);
    assert!(progress.values().all(|p| p == "done"), "{progress:?}");
    let list = f.cli_json("bob", &["node", "list"]);
    for n in list.as_array().unwrap() {
        assert_eq!(n["status"], "ENABLED", "{n}");
        assert_eq!(n["reachable"], true, "{n}");
        let before = job["rolling"]["boot_before"][n["name"].as_str().unwrap()]
            .as_str()
            .unwrap();
        assert_ne!(
            n["boot_id"].as_str().unwrap(),
            before,
            "{} did not reboot",
            n["name"]
        );
    }
    let vms = f.cli_json("bob", &["vm", "list"]);
    let mut names: Vec<&str> = vms
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names.len(),
        vms_total,
        "VMs lost or duplicated in the registry"
    );
    assert!(
        vms.as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "RUNNING"),
        "drained VMs keep running"
    );
    let log = sim.log_text();
    assert!(!log.contains("INVARIANT VIOLATION"), "{log}");
    assert!(
        log.contains("invariants held"),
        "the invariant checker ran: {log}"
    );
}

#[test]
fn rolling_maintenance_of_a_small_simulated_fleet_with_pause_and_resume() {
    let f = Fleet::start();
    let sim = sim_fleet(&f, 6, 3, 300);
    wait_nodes(&f, 6);
    let (job, _) = roll(&f, 2);
    check_after(&f, &sim, &job, 6, 6 * 3 + 3);
    let groups = job["params"]["groups"].as_array().unwrap();
    assert!(
        groups.iter().all(|g| g.as_array().unwrap().len() <= 2),
        "K respected: {groups:?}"
    );
    // Each node ran its post-reboot checks once.
    let steps: Vec<&str> = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps.iter().filter(|s| s.contains(": checks: ")).count(),
        6,
        "{steps:?}"
    );
}

#[test]
fn rolling_maintenance_of_200_simulated_nodes() {
    let f = Fleet::start();
    let sim = sim_fleet(&f, 200, 3, 1000);
    wait_nodes(&f, 200);
    let (job, elapsed) = roll(&f, 20);
    eprintln!("200-node rolling maintenance took {elapsed:?}");
    check_after(&f, &sim, &job, 200, 200 * 3 + 100);
}

#[test]
fn a_rolling_deadline_fails_the_rolling_loudly_and_loses_nothing() {
    let f = Fleet::start();
    let sim = sim_fleet(&f, 4, 2, 300);
    wait_nodes(&f, 4);
    // The first node drains, then waits for a continue that never comes.
    let t = Instant::now();
    let out = f.cli(
        "alice",
        &[
            "rolling",
            "start",
            "--all",
            "--wait-for-continue",
            "--deadline",
            "4s",
            "--yes",
            "--output",
            "json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(5),
        "an expired deadline: {}",
        stderr(&out)
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "bounded: {:?}",
        t.elapsed()
    );
    let job = job_of(&out);
    assert_eq!(job["state"], "FAILED", "{job}");
    assert!(
        job["outcome"]
            .as_str()
            .unwrap()
            .contains("deadline of 4 s expired"),
        "{job}"
    );
    assert!(
        job["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["message"] == "stop requested: deadline of 4 s expired"),
        "the expiry is in the journal: {job}"
    );
    // The drained node stays in maintenance; every VM still runs once.
    let waiting: Vec<&str> = job["rolling"]["progress"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, p)| *p != "pending")
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(waiting.len(), 1, "{job}");
    let list = f.cli_json("bob", &["node", "show", waiting[0]]);
    assert_eq!(list["node"]["status"], "MAINTENANCE");
    let vms = f.cli_json("bob", &["vm", "list"]);
    let mut names: Vec<&str> = vms
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 4 * 2 + 2);
    assert!(!sim.log_text().contains("INVARIANT VIOLATION"));
}

/// The driver resumes from the engine's journal: a coordinator killed while
/// nodes are mid-way (draining, rebooting, checking) comes back, finds its
/// child jobs and commands by their derived ids, and finishes the rolling
/// with every node rebooted exactly once.
#[test]
fn a_coordinator_killed_mid_rolling_resumes_and_reboots_each_node_once() {
    let mut f = Fleet::start();
    let sim = sim_fleet(&f, 4, 2, 300);
    wait_nodes(&f, 4);
    let out = f.cli(
        "alice",
        &[
            "rolling",
            "start",
            "--all",
            "--max-unavailable",
            "2",
            "--hook",
            "reboot",
            "--yes",
            "--detach",
            "--output",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let accepted: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = accepted["job_id"].as_str().unwrap().to_string();
    let show = |f: &Fleet| f.cli_json("bob", &["rolling", "show", &id]);
    wait_for(Duration::from_secs(120), "a node past pending", || {
        let j = show(&f);
        j["rolling"]["progress"]
            .as_object()
            .is_some_and(|p| p.values().any(|v| v != "pending" && v != "done"))
    });
    assert_eq!(show(&f)["state"], "RUNNING", "killed mid-way");
    f.coordinator.take().unwrap().kill();
    f.start_coordinator();
    wait_for(
        Duration::from_secs(300),
        "the resumed rolling to end",
        || show(&f)["state"] != "RUNNING",
    );
    let job = show(&f);
    check_after(&f, &sim, &job, 4, 4 * 2 + 2);
    assert!(
        job["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["message"] == "resuming rolling maintenance from its journal"),
        "{job}"
    );
    // Each node's hook ran once: one hook command in its node job.
    for (node, children) in job["rolling"]["children"].as_object().unwrap() {
        let node_job = f.cli_json("bob", &["job", "show", children["node"].as_str().unwrap()]);
        let hooks = node_job["commands"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["action"] == "hook")
            .count();
        assert_eq!(hooks, 1, "{node}: {node_job}");
    }
}
