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
            .env(INSECURE.0, INSECURE.1)
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
    // It listened to heartbeats while standing by (they are not stored, so
    // there is nothing to replay): its first answers know node1 is alive.
    let nodes = f.cli_json("bob", &["node", "list"]);
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "node1" && n["reachable"] == true),
        "{nodes}"
    );
    let out = f.cli("alice", &["vm", "start", "vm1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let jobs = f.cli_json("bob", &["job", "list"]);
    assert_eq!(
        jobs.as_array().unwrap().len(),
        2,
        "the new leader sees the old jobs and adds its own"
    );
}

/// The lease's revision (each renewal changes it) and its holder.
fn lease_now(rt: &tokio::runtime::Runtime, url: &str) -> (u64, String) {
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let kv = js
            .get_key_value(nodemaint_proto::subjects::Subjects::default().leader_bucket())
            .await
            .unwrap();
        let e = kv.entry("coordinator").await.unwrap().expect("a lease");
        let v: serde_json::Value = serde_json::from_slice(&e.value).unwrap();
        (e.revision, v["holder"].as_str().unwrap().to_string())
    })
}

/// Before, a standby compared its own wall clock with the leader's expiry
/// time: one whose clock ran ahead took a healthy leader's lease at once,
/// and two coordinators acted. Now a lease expires only when its revision
/// stops changing for a TTL, measured on the standby's own clock.
#[test]
fn a_standby_whose_clock_runs_ahead_does_not_take_a_renewed_lease() {
    let Some(faketime) = which("faketime") else {
        assert!(
            !in_ci(),
            "faketime is missing (deploy/setup.sh --for test installs it)"
        );
        eprintln!("skipped: faketime is not installed");
        return;
    };
    let mut f = Fleet::start();
    f.add_agent("node1", &[Dom::user("vm1", "cs1")]);
    f.wait_registered();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_, leader) = lease_now(&rt, &f.nats.url);

    let standby = Proc::spawn(
        "standby coordinator, clock 1 h ahead",
        Command::new(faketime)
            .args(["-f", "+1h"])
            .arg(bin("coordinator"))
            .args(["serve", "--config"])
            .env(INSECURE.0, INSECURE.1)
            .arg(&f.config)
            .env("NATS_URL", &f.nats.url)
            .env("RUST_LOG", "info"),
        f.dir.path().join("standby.log"),
    );
    wait_for(Duration::from_secs(30), "the standby to stand by", || {
        standby.log_text().contains("standing by")
    });
    // Two TTLs' worth of renewals (every TTL/4) while the standby watches.
    let (from, _) = lease_now(&rt, &f.nats.url);
    wait_for(Duration::from_secs(60), "eight renewals", || {
        lease_now(&rt, &f.nats.url).0 >= from + 8
    });
    let (_, holder) = lease_now(&rt, &f.nats.url);
    assert_eq!(holder, leader, "the standby took a healthy leader's lease");
    assert!(
        !standby.log_text().contains("holding the leader lease"),
        "{}",
        standby.log_text()
    );

    // When the leader really stops, the skewed standby takes over.
    f.coordinator.take().unwrap().kill();
    wait_for(Duration::from_secs(60), "the standby to take over", || {
        standby.log_text().contains("holding the leader lease")
    });
    assert!(f.cli("bob", &["node", "list"]).status.success());
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|f| f.is_file())
    })
}
