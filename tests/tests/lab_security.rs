//! Lab suite: the secured bus on real QEMU/KVM nodes (`deploy/lab up
//! --secure`: TLS with the lab CA, one nkey with subject permissions per
//! principal). A live-migration drain, a power cycle (the agent reconnects
//! with its own credentials), a coordinator crash and restart, and enable
//! all work, each job recorded under the authenticated operator, and the
//! NATS server refuses nothing but the viewer's change. The lab runs with
//! `--libvirt-tls` too: the drain's migrations go over `qemu+tls` with the
//! lab's libvirt CA (server and client certificates checked by libvirt).

use nodemaint_tests::lab::{step, Lab};
use nodemaint_tests::{ok, stderr, stdout, wait_for};
use std::time::Duration;

#[test]
fn lab_security_suite() {
    let Some(lab) = Lab::up(
        "security",
        8,
        2,
        2,
        1,
        &[("LAB_SECURE", "1"), ("LAB_LIBVIRT_TLS", "1")],
    ) else {
        return;
    };
    let all = lab.vm_names();
    let lab_dir = lab.secure_dir().unwrap().parent().unwrap().to_path_buf();
    let nats_log = || std::fs::read_to_string(lab_dir.join("nats.log")).unwrap_or_default();

    step("the viewer may not start a maintenance: the server refuses the publish");
    let out = lab.cli(
        "viewer",
        &["maintenance", "start", "node1", "--mode", "move"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refused") && stderr(&out).contains("Level2 or Level3"),
        "{}",
        stderr(&out)
    );
    assert!(nats_log().contains("nodemaint.v1.api.viewer.change.maintenance.start"));

    step("without credentials nobody gets in");
    let out = std::process::Command::new(nodemaint_tests::bin("coordinator"))
        .args(["node", "list"])
        .env("NATS_URL", &lab.nats_url)
        .env_remove("NATS_CREDS")
        .env_remove("NODEMAINT_CREDS")
        .env_remove("NATS_CA")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", stdout(&out));

    step("the operator drains node1 live over the secured bus");
    let on_node1 = lab
        .assert_each_vm_once(&all)
        .values()
        .filter(|(node, state)| node == "node1" && state == "running")
        .count();
    assert!(on_node1 > 0);
    ok(&lab.cli(
        "operator",
        &["maintenance", "start", "node1", "--mode", "move"],
    ));
    let placed = lab.assert_each_vm_once(&all);
    assert!(
        placed
            .values()
            .all(|(node, state)| node == "node2" && state == "running"),
        "{placed:?}"
    );
    // Over libvirt's TLS transport, from the coordinator's [migration]
    // template: node1's libvirtd opened node2's with its client certificate.
    let agent_log = std::fs::read_to_string(lab_dir.join("node1/agent.log")).unwrap();
    let tls_moves = agent_log
        .lines()
        .filter(|l| l.contains("migrating") && l.contains("libvirt=qemu+tls://"))
        .count();
    assert_eq!(tls_moves, on_node1, "{agent_log}");

    step("power cycle node1: its agent comes back on its own credentials");
    let before = lab.cli_json("viewer", &["node", "show", "node1"])["node"]["boot_id"]
        .as_str()
        .unwrap()
        .to_string();
    lab.lab_ok(&["reboot", "node1"]);
    ok(&lab.cli(
        "viewer",
        &[
            "node",
            "wait-rebooted",
            "node1",
            "--timeout",
            "180",
            "--boot-id",
            &before,
        ],
    ));

    step("the coordinator crashes and restarts on its credentials; admin enables node1");
    lab.lab_ok(&["coordinator", "kill"]);
    lab.lab_ok(&["coordinator", "start"]);
    wait_for(Duration::from_secs(90), "coordinator back", || {
        lab.cli("viewer", &["node", "list"]).status.success()
    });
    ok(&lab.cli("admin", &["node", "enable", "node1"]));
    lab.assert_each_vm_once(&all);

    step("each job names its authenticated operator; nothing else was refused");
    let jobs = lab.cli_json("viewer", &["job", "list"]);
    let users: Vec<(String, String)> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["kind"].as_str().unwrap().to_string(),
                j["user"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        users.contains(&("maintenance.start".into(), "operator".into())),
        "{users:?}"
    );
    assert!(
        users.contains(&("node.enable".into(), "admin".into())),
        "{users:?}"
    );
    let refused: Vec<String> = nats_log()
        .lines()
        .filter(|l| l.contains("Violation"))
        .map(str::to_string)
        .collect();
    assert_eq!(refused.len(), 1, "{refused:#?}");
}
