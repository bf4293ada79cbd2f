//! Lab suite: rolling maintenance over real QEMU/KVM nodes with
//! `deploy/lab reboot` (a faithful power cycle) as the reboot hook, the
//! stand-in `ovs`/`ays` services checked after each reboot, and a
//! coordinator SIGKILLed mid-rolling.

use nodemaint_tests::lab::{step, Lab};
use nodemaint_tests::{job_of, stderr, stdout, wait_for};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

fn boot_ids(lab: &Lab) -> BTreeMap<String, String> {
    lab.cli_json("viewer", &["node", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().into(),
                n["boot_id"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn statuses(lab: &Lab) -> BTreeMap<String, String> {
    lab.cli_json("viewer", &["node", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().into(),
                n["status"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn all_running_once(lab: &Lab, all: &[String]) {
    let placed = lab.assert_each_vm_once(all);
    for (vm, (node, state)) in placed {
        assert_eq!(state, "running", "{vm} on {node}");
    }
}

#[test]
fn lab_rolling_suite() {
    let Some(lab) = Lab::up("rolling", 3, 3, 2, 2, &[]) else {
        return;
    };
    let all = lab.vm_names();

    step("a rolling maintenance reboots every node once and ends with all ENABLED");
    let before = boot_ids(&lab);
    let out = lab.cli(
        "operator",
        &[
            "rolling",
            "start",
            "--all",
            "--hook",
            "reboot",
            "--checks-must-pass",
            "--yes",
            "--output",
            "json",
        ],
    );
    assert!(out.status.success(), "{}\n{}", stderr(&out), stdout(&out));
    let job = job_of(&out);
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    let after = boot_ids(&lab);
    for (node, boot) in &before {
        assert_ne!(&after[node], boot, "{node} kept its boot id");
    }
    assert!(statuses(&lab).values().all(|s| s == "ENABLED"));
    assert_eq!(
        lab.hooks_per_node(&job)
            .values()
            .copied()
            .collect::<Vec<_>>(),
        [1, 1, 1]
    );
    all_running_once(&lab, &all);
    lab.wait_consistent();

    step("a node whose ovs service cannot start stops the rolling, with a clear report");
    lab.lab_ok(&["service", "node2", "break", "ovs-workers"]);
    let out = lab.cli(
        "operator",
        &[
            "rolling",
            "start",
            "--all",
            "--hook",
            "reboot",
            "--checks-must-pass",
            "--yes",
            "--output",
            "json",
        ],
    );
    assert!(!out.status.success());
    let job = job_of(&out);
    assert_eq!(job["state"], "FAILED", "{job}");
    let outcome = job["outcome"].as_str().unwrap();
    assert!(
        outcome.contains("node2")
            && outcome.contains("checks failed")
            && outcome.contains("ovs-workers"),
        "{outcome}"
    );
    assert_eq!(statuses(&lab)["node2"], "MAINTENANCE");
    assert!(
        lab.domains("node2").is_empty(),
        "node2 was drained before its reboot"
    );
    all_running_once(&lab, &all);
    lab.lab_ok(&["service", "node2", "fix", "ovs-workers"]);
    let out = lab.cli("operator", &["node", "check", "node2", "--start-failed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(lab
        .cli("operator", &["node", "enable", "node2"])
        .status
        .success());
    lab.wait_consistent();

    step("a coordinator SIGKILLed mid-rolling resumes where its journal says");
    let before = boot_ids(&lab);
    let id = lab.start_rolling(&["--all"], "reboot");
    // Kill once the first node is past its drain.
    wait_for(
        Duration::from_secs(120),
        "a node to reach its reboot",
        || {
            let j = lab.cli_json("viewer", &["rolling", "show", &id]);
            j["rolling"]["progress"]
                .as_object()
                .unwrap()
                .values()
                .any(|p| p == "rebooting" || p == "rebooted" || p == "checked")
        },
    );
    lab.lab_ok(&["coordinator", "kill"]);
    lab.assert_none_lost_or_doubled(&all);
    lab.lab_ok(&["coordinator", "start"]);
    wait_for(
        Duration::from_secs(480),
        "the resumed rolling to end",
        || {
            let out = lab.cli("viewer", &["rolling", "show", &id, "--output", "json"]);
            serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|j| j["state"] != "RUNNING")
        },
    );
    let job = lab.cli_json("viewer", &["rolling", "show", &id]);
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    assert_eq!(
        lab.hooks_per_node(&job)
            .values()
            .copied()
            .collect::<Vec<_>>(),
        [1, 1, 1],
        "no node rebooted twice or skipped"
    );
    let after = boot_ids(&lab);
    for (node, boot) in &before {
        assert_ne!(&after[node], boot, "{node} was skipped");
    }
    assert!(statuses(&lab).values().all(|s| s == "ENABLED"));
    all_running_once(&lab, &all);
}
