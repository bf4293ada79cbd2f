//! Two coordinators on one NATS: only the lease holder answers and acts; when
//! it dies, the standby takes over and finishes the fleet's work.

use nodemaint_tests::*;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn only_the_lease_holder_acts_and_a_standby_takes_over() {
    let mut f = Fleet::start();
    f.add_agent("node1", &[Dom::user("vm1", "cs1")]);
    f.wait_registered();

    let standby = Proc::spawn(
        "standby coordinator",
        Command::new(bin("coordinator"))
            .args(["serve", "--config"])
            .arg(&f.config)
            .env("NATS_URL", &f.nats.url)
            .env("RUST_LOG", "info"),
        f.dir.path().join("standby.log"),
    );
    wait_for(Duration::from_secs(10), "the standby to stand by", || {
        standby.log_text().contains("standing by")
    });
    assert!(!standby.log_text().contains("coordinator serving"));

    // Requests are answered (by the leader) and executed once.
    let out = f.cli("alice", &["vm", "stop", "vm1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        f.cli_json("bob", &["job", "list"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The leader dies; within the lease's TTL the standby serves.
    f.coordinator.take().unwrap().kill();
    let t = Instant::now();
    wait_for(Duration::from_secs(20), "the standby to take over", || {
        f.cli("bob", &["node", "list"]).status.success()
    });
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    assert!(standby.log_text().contains("holding the leader lease"));
    let out = f.cli("alice", &["vm", "start", "vm1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let jobs = f.cli_json("bob", &["job", "list"]);
    assert_eq!(
        jobs.as_array().unwrap().len(),
        2,
        "the new leader sees the old jobs and adds its own"
    );
}
