//! Lab suite: live migration through the agents on real QEMU/KVM nodes
//! (`vm move`, `vfw move`), checked against each node's own libvirtd.

use nodemaint_tests::lab::{step, Lab};
use nodemaint_tests::{stderr, stdout};
use serde_json::Value;

/// A command line's words (none of them has a space).
fn words(line: &str) -> Vec<&str> {
    line.split(' ').collect()
}

fn json_lines(out: &std::process::Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn lab_migration_suite() {
    // Two guests keep writing memory (lab.d/guest.S): node3-vm2 40 MiB/s over
    // an 8 MiB working set, node2-vm2 40 MiB/s over all of its RAM.
    let dirty = [("LAB_DIRTY_VM", "node3-vm2=40:8 node2-vm2=40")];
    let Some(lab) = Lab::up("migration", 1, 3, 2, 2, &dirty) else {
        return;
    };
    let all = lab.vm_names();
    assert_eq!(all.len(), 3 * 2 + 2, "{all:?}");

    step("the coordinator shows what each libvirtd holds, VFWs marked");
    let vfws = lab.cli_json("viewer", &["vfw", "list"]);
    for v in vfws.as_array().unwrap() {
        let node = v["node"].as_str().unwrap();
        let name = v["name"].as_str().unwrap();
        assert_eq!(
            lab.domains(node).get(name).map(String::as_str),
            Some("running"),
            "{v}"
        );
    }

    step("vm move with live progress: the VM runs on the destination only, persistent there");
    let out = lab.cli(
        "operator",
        &[
            "vm",
            "move",
            "node1-vm1",
            "--to",
            "node2",
            "--max-speed",
            "8",
            "--output",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    let percents: Vec<f64> = lines
        .iter()
        .filter(|l| l["kind"] == "progress")
        .map(|l| l["body"]["percent"].as_f64().unwrap())
        .collect();
    assert!(
        percents.len() >= 3,
        "throttled to 8 MiB/s, a 64 MiB guest reports progress several times: {percents:?}"
    );
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "progress in order, increasing: {percents:?}"
    );
    assert_eq!(*percents.last().unwrap(), 100.0);
    let result = lines.iter().find(|l| l["kind"] == "result").unwrap();
    assert_eq!(
        result["body"]["vm_node"], "node2",
        "the result says where the VM runs"
    );
    assert_eq!(
        lab.domains("node2").get("node1-vm1").map(String::as_str),
        Some("running")
    );
    assert!(
        !lab.domains("node1").contains_key("node1-vm1"),
        "undefined on the source"
    );
    let info = lab.lab_ok(&["virsh", "node2", "dominfo", "node1-vm1"]);
    assert!(
        info.lines()
            .any(|l| l.starts_with("Persistent:") && l.ends_with("yes")),
        "{info}"
    );
    lab.assert_each_vm_once(&all);
    lab.wait_consistent();

    step("a move that times out is aborted and leaves the VM running on its source only");
    let out = lab.cli(
        "operator",
        &[
            "vm",
            "move",
            "node2-vm1",
            "--to",
            "node3",
            "--max-speed",
            "2",
            "--timeout",
            "3",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("TIMEOUT") && stderr(&out).contains("still runs on the source"),
        "{}",
        stderr(&out)
    );
    let placed = lab.assert_each_vm_once(&all);
    assert_eq!(
        placed["node2-vm1"],
        ("node2".to_string(), "running".to_string())
    );
    lab.wait_consistent();

    step("refused moves change nothing");
    let before = lab.placements();
    for (args, want) in [
        (
            vec!["vm", "move", "node3-vm1", "--to", "nope"],
            "unknown node",
        ),
        (
            vec!["vm", "move", "node3-vm1", "--to", "node3"],
            "already runs on node3",
        ),
        (vec!["vm", "move", "ghost", "--to", "node1"], "unknown VM"),
    ] {
        let out = lab.cli("operator", &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    let out = lab.cli("viewer", &["vm", "move", "node3-vm1", "--to", "node1"]);
    assert!(
        stderr(&out).contains("Level2 or Level3"),
        "{}",
        stderr(&out)
    );
    assert_eq!(lab.placements(), before);

    step("an agent reopens its libvirt connection when libvirtd restarts");
    let lab_dir = lab
        .env
        .iter()
        .find(|(k, _)| k == "LAB_DIR")
        .unwrap()
        .1
        .clone();
    let agent_pid = std::fs::read_to_string(format!("{lab_dir}/node3/agent.pid")).unwrap();
    lab.lab_ok(&["restart-libvirtd", "node3"]);
    let vm = lab
        .domains("node3")
        .into_iter()
        .find(|(_, s)| s == "running")
        .unwrap()
        .0;
    let out = lab.cli("operator", &["vm", "stop", &vm, "--timeout", "5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lab.domains("node3")[&vm], "shut off");
    let out = lab.cli("operator", &["vm", "start", &vm]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lab.domains("node3")[&vm], "running");
    assert_eq!(
        std::fs::read_to_string(format!("{lab_dir}/node3/agent.pid")).unwrap(),
        agent_pid,
        "same agent process"
    );
    let log = std::fs::read_to_string(format!("{lab_dir}/node3/agent.log")).unwrap();
    assert!(log.contains("libvirt connection lost, reopening"), "{log}");
    lab.wait_consistent();

    step("vfw move puts a cloudspace's firewall on the chosen node");
    let vfws = lab.cli_json("viewer", &["vfw", "list"]);
    let cs1 = vfws
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["cloudspace"] == "cs1")
        .unwrap()
        .clone();
    let from = cs1["node"].as_str().unwrap();
    let to = if from == "node3" { "node1" } else { "node3" };
    let out = lab.cli("admin", &["vfw", "move", "cs1", "--to", to]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        lab.domains(to).get("cs1-vfw").map(String::as_str),
        Some("running")
    );
    lab.assert_each_vm_once(&all);
    lab.wait_consistent();

    step("a guest whose hot memory needs more than 300 ms of downtime does not converge without escalation");
    // 8 MiB re-dirtied every pass at <= 16 MiB/s needs >= 500 ms at switch-over.
    let out = lab.cli(
        "operator",
        &words("vm move node3-vm2 --to node1 --max-speed 16 --max-downtime 300ms --no-auto-converge --timeout 15s"),
    );
    assert!(
        !out.status.success(),
        "converged without escalation?\n{}",
        stdout(&out)
    );
    assert_eq!(
        lab.domains("node3").get("node3-vm2").map(String::as_str),
        Some("running"),
        "a migration that did not converge leaves the VM where it was"
    );
    assert!(!lab.domains("node1").contains_key("node3-vm2"));
    lab.wait_consistent();

    step("with the default policy the agent raises the allowed downtime and it converges, downtime measured");
    let out = lab.cli(
        "operator",
        &words("vm move node3-vm2 --to node1 --max-speed 16 --output json"),
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let lines = json_lines(&out);
    let escalations: Vec<&str> = lines
        .iter()
        .filter(|l| l["kind"] == "progress" && l["body"]["step"] == "escalating")
        .filter_map(|l| l["body"]["message"].as_str())
        .collect();
    assert!(
        escalations
            .iter()
            .any(|m| m.contains("allowed downtime raised to")),
        "{escalations:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["kind"] == "progress" && l["body"]["eta_s"].is_number()),
        "progress carries an ETA once the migration converges"
    );
    let result = lines.iter().find(|l| l["kind"] == "result").unwrap();
    let message = result["body"]["message"].as_str().unwrap();
    assert!(
        message.contains("(downtime "),
        "libvirt's measured downtime: {message}"
    );
    assert_eq!(
        lab.domains("node1").get("node3-vm2").map(String::as_str),
        Some("running")
    );
    assert!(!lab.domains("node3").contains_key("node3-vm2"));

    step("a guest dirtying all its memory faster than the link copies converges by post-copy when permitted");
    let from = lab.assert_each_vm_once(&all)["node2-vm2"].0.clone();
    let to = if from == "node1" { "node3" } else { "node1" };
    let out = lab.cli(
        "operator",
        &words(&format!(
            "vm move node2-vm2 --to {to} --max-speed 16 --post-copy --output json"
        )),
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        json_lines(&out)
            .iter()
            .any(|l| l["body"]["step"] == "escalating"
                && l["body"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("switching to post-copy"))),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        lab.domains(to).get("node2-vm2").map(String::as_str),
        Some("running")
    );
    lab.assert_each_vm_once(&all);
    lab.wait_consistent();
}
