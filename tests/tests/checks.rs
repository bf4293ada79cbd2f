//! Post-reboot service checks through coordinator → agent → real processes
//! (a stand-in `ovs` whose services can be stopped), and reboot detection
//! by boot id.

use nodemaint_agent::checks::{CheckConfig, CheckKind};
use nodemaint_tests::*;
use serde_json::Value;
use std::time::Duration;

fn json_lines(out: &std::process::Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn checks_report(lines: &[Value]) -> Value {
    lines
        .iter()
        .find(|l| l["kind"] == "checks")
        .expect("a checks event")
        .clone()
}

#[test]
fn node_check_reports_failures_and_start_failed_fixes_them() {
    let mut f = Fleet::start();
    let ovs = fake_ovs(f.dir.path(), &["ovs-arakoon-voldrv"]);
    let ovs = ovs.display().to_string();
    let check = CheckConfig {
        name: "ovs".into(),
        kind: CheckKind::OvsServices {
            command: format!("{ovs} monitor services"),
        },
        start: Some(format!("{ovs} start services")),
        timeout_s: 5,
    };
    f.agent_edits.insert(
        "node1".into(),
        Box::new(move |c| c.checks = vec![check.clone()]),
    );
    f.add_agent("node1", &[Dom::user("vm1", "cs1")]);
    f.wait_registered();

    // Read-only check: allowed for Level1, exits 1 and names the failed service.
    let out = f.cli("bob", &["node", "check", "node1", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "a failed job: {}", stderr(&out));
    let report = checks_report(&json_lines(&out));
    let services = report["body"]["services"].as_array().unwrap();
    assert_eq!(services.len(), 3);
    let failed: Vec<&Value> = services.iter().filter(|s| s["ok"] == false).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["service"], "ovs-arakoon-voldrv");
    let table = stdout(&f.cli("bob", &["node", "check", "node1"]));
    assert!(
        table.contains("ovs-arakoon-voldrv") && table.contains("FAILED"),
        "{table}"
    );

    // Starting failed services changes the node: Level2 or Level3 only.
    let out = f.cli("bob", &["node", "check", "node1", "--start-failed"]);
    assert!(
        stderr(&out).contains("Level2 or Level3"),
        "{}",
        stderr(&out)
    );

    let out = f.cli(
        "alice",
        &[
            "node",
            "check",
            "node1",
            "--start-failed",
            "--output",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = checks_report(&json_lines(&out));
    assert_eq!(report["body"]["all_ok"], true);
    // And it stays fixed.
    assert!(f.cli("bob", &["node", "check", "node1"]).status.success());
}

#[test]
fn wait_rebooted_sees_a_new_boot_id() {
    let mut f = Fleet::start();
    f.add_agent("node1", &[Dom::user("vm1", "cs1")]);
    f.wait_registered();
    // No reboot: times out with a clear message.
    let out = f.cli(
        "bob",
        &["node", "wait-rebooted", "node1", "--timeout", "2s"],
    );
    assert_eq!(out.status.code(), Some(5), "a timeout: {}", stderr(&out));
    assert!(
        stderr(&out).contains("did not come back with a new boot id"),
        "{}",
        stderr(&out)
    );

    // Reboot: the agent stops, the boot id changes, the agent returns.
    f.stop_agent("node1");
    std::fs::write(f.dir.path().join("node1.boot_id"), "boot-node1-2\n").unwrap();
    let url = f.nats.url.clone();
    let dir = f.dir.path().to_path_buf();
    let waiter = std::thread::spawn(move || {
        cli_in(
            &url,
            &dir,
            "bob",
            &[
                "node",
                "wait-rebooted",
                "node1",
                "--boot-id",
                "boot-node1-1",
                "--timeout",
                "30",
            ],
        )
    });
    std::thread::sleep(Duration::from_secs(1));
    f.start_agent("node1");
    let out = waiter.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("boot-node1-2"), "{}", stdout(&out));
}
