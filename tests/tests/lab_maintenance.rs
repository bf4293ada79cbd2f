//! Lab suite: maintenance mode end to end on real QEMU/KVM nodes, with the
//! architecture's invariants checked against each libvirtd after every step.

use nodemaint_tests::lab::{resumed, step, Lab};
use nodemaint_tests::{job_of, ok, stderr, wait_for};
use std::time::Duration;

#[test]
fn lab_maintenance_suite() {
    // One outbound migration at a time, so a drain lasts long enough to
    // kill the coordinator in the middle of it.
    let Some(lab) = Lab::up("maintenance", 2, 4, 2, 2, &[("LAB_PER_SOURCE", "1")]) else {
        return;
    };
    let mut all = lab.vm_names();

    step("a tenant shuts off a VM on node1; move mode empties node1, VFWs first");
    lab.lab_ok(&["virsh", "node1", "destroy", "node1-vm2"]);
    lab.wait_consistent();
    let out = lab.cli(
        "viewer",
        &["maintenance", "start", "node1", "--mode", "move"],
    );
    assert!(
        stderr(&out).contains("Level2 or Level3"),
        "{}",
        stderr(&out)
    );
    assert_eq!(lab.status("node1"), "ENABLED");
    let out = lab.cli(
        "operator",
        &[
            "maintenance",
            "start",
            "node1",
            "--mode",
            "move",
            // Adaptive pacing on real migrations: metered from their
            // progress, changed only with a reason in the journal.
            "--concurrency",
            "adaptive",
            "--output",
            "json",
        ],
    );
    ok(&out);
    let job = job_of(&out);
    let first = job["commands"][0]["vm"].as_str().unwrap();
    assert!(first.ends_with("-vfw"), "VFW moved first: {job}");
    assert_eq!(job["params"]["adaptive"], true, "{job}");
    let steps = job["steps"].as_array().unwrap();
    assert!(
        steps[0]["message"].as_str().unwrap().contains("(adaptive)"),
        "{job}"
    );
    for st in steps {
        let msg = st["message"].as_str().unwrap_or("");
        if msg.starts_with("concurrency ") {
            assert!(msg.contains(": "), "a change names its reason: {msg}");
        }
    }
    assert!(
        lab.domains("node1").is_empty(),
        "node1 empty: {:?}",
        lab.domains("node1")
    );
    let placed = lab.assert_each_vm_once(&all);
    assert_eq!(placed["cs1-vfw"].1, "running", "the VFW keeps running");
    assert_eq!(
        placed["node1-vm2"].1, "shut off",
        "the tenant's VM moved, still shut off"
    );
    assert_eq!(lab.status("node1"), "MAINTENANCE");
    lab.wait_consistent();

    step("no new VM lands on a node in maintenance, nor is moved there");
    for i in 0..3 {
        let name = format!("new{i}");
        ok(&lab.cli(
            "operator",
            &[
                "vm",
                "create",
                "--name",
                &name,
                "--memory",
                "64",
                "--cloudspace",
                "cs2",
            ],
        ));
        all.push(name);
    }
    all.sort();
    let placed = lab.assert_each_vm_once(&all);
    for i in 0..3 {
        let (node, state) = &placed[&format!("new{i}")];
        assert_ne!(node, "node1");
        assert_eq!(state, "running");
    }
    let out = lab.cli("operator", &["vm", "move", "node2-vm1", "--to", "node1"]);
    assert!(
        !out.status.success() && stderr(&out).contains("MAINTENANCE"),
        "{}",
        stderr(&out)
    );
    lab.wait_consistent();

    step("enable node1");
    ok(&lab.cli("operator", &["node", "enable", "node1"]));
    assert_eq!(lab.status("node1"), "ENABLED");

    step("stop mode: refused without the acknowledgement, naming the cloudspace");
    let vfw_node = lab
        .cli_json("viewer", &["vfw", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["cloudspace"] == "cs2")
        .unwrap()["node"]
        .as_str()
        .unwrap()
        .to_string();
    let before = lab.placements();
    let out = lab.cli(
        "operator",
        &["maintenance", "start", &vfw_node, "--mode", "stop"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cs2") && stderr(&out).contains("--ack-vfw-downtime"),
        "{}",
        stderr(&out)
    );
    assert_eq!(lab.placements(), before);
    assert_eq!(lab.status(&vfw_node), "ENABLED");

    step("stop mode with the acknowledgement stops everything and records exactly that");
    // A tenant's own shut-off VM on that node must not be restarted later.
    let tenant_vm = lab
        .domains(&vfw_node)
        .into_iter()
        .find(|(n, s)| !n.ends_with("-vfw") && s == "running")
        .unwrap()
        .0;
    lab.lab_ok(&["virsh", &vfw_node, "destroy", &tenant_vm]);
    lab.wait_consistent();
    let running_before: Vec<String> = lab
        .domains(&vfw_node)
        .into_iter()
        .filter(|(_, s)| s == "running")
        .map(|(n, _)| n)
        .collect();
    assert!(running_before.contains(&"cs2-vfw".to_string()));
    ok(&lab.cli(
        "admin",
        &[
            "maintenance",
            "start",
            &vfw_node,
            "--mode",
            "stop",
            "--ack-vfw-downtime",
        ],
    ));
    assert!(
        lab.domains(&vfw_node).values().all(|s| s == "shut off"),
        "{:?}",
        lab.domains(&vfw_node)
    );
    lab.assert_each_vm_once(&all);
    lab.wait_consistent();
    let vms = lab.cli_json("viewer", &["vm", "list", "--node", &vfw_node]);
    let mut recorded: Vec<String> = vms
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["stopped_by"].is_string())
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    recorded.sort();
    let mut expected = running_before.clone();
    expected.sort();
    assert_eq!(
        recorded, expected,
        "exactly the VMs maintenance stopped are recorded"
    );

    step("enable restarts exactly the recorded VMs, VFW first, not the tenant's");
    let out = lab.cli(
        "operator",
        &["node", "enable", &vfw_node, "--output", "json"],
    );
    ok(&out);
    let job = job_of(&out);
    let starts: Vec<&str> = job["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["vm"].as_str().unwrap())
        .collect();
    assert_eq!(starts[0], "cs2-vfw", "{starts:?}");
    let doms = lab.domains(&vfw_node);
    for vm in &running_before {
        assert_eq!(doms[vm], "running", "{vm} restarted");
    }
    assert_eq!(doms[&tenant_vm], "shut off", "the tenant's VM stays off");
    lab.wait_consistent();

    step("node start-stopped starts the remaining shut-off VMs");
    let shut: Vec<String> = lab
        .domains(&vfw_node)
        .into_iter()
        .filter(|(_, s)| s == "shut off")
        .map(|(n, _)| n)
        .collect();
    assert!(shut.contains(&tenant_vm), "{shut:?}");
    let out = lab.cli_json("viewer", &["node", "start-stopped", &vfw_node, "--dry-run"]);
    assert_eq!(out["would_start"], serde_json::json!(shut));
    ok(&lab.cli("operator", &["node", "start-stopped", &vfw_node]));
    assert!(
        lab.domains(&vfw_node).values().all(|s| s == "running"),
        "{:?}",
        lab.domains(&vfw_node)
    );
    lab.wait_consistent();

    step("a coordinator killed during a drain resumes it without losing a VM");
    let target = "node4";
    let before: Vec<String> = lab.domains(target).into_keys().collect();
    assert!(before.len() >= 2, "{before:?}");
    // Slow each migration down (8 MiB/s: ~8 s for a 64 MiB guest), so the
    // kill below lands while the next VM is still on its way, also on a
    // busy machine where noticing the first move takes a while.
    for vm in &before {
        lab.lab_ok(&["virsh", target, "migrate-setspeed", vm, "8"]);
    }
    ok(&lab.cli(
        "operator",
        &["maintenance", "start", target, "--mode", "move", "--detach"],
    ));
    // Kill it as soon as the first VM has moved, while others remain.
    wait_for(
        Duration::from_secs(90),
        "the first VM to leave node4",
        || lab.domains(target).len() < before.len(),
    );
    lab.lab_ok(&["coordinator", "kill"]);
    let left = lab.domains(target).len();
    assert!(left > 0, "killed too late to test anything");
    lab.assert_none_lost_or_doubled(&all);
    lab.lab_ok(&["coordinator", "start"]);
    wait_for(
        Duration::from_secs(240),
        "the resumed drain to empty node4",
        || lab.domains(target).is_empty(),
    );
    let jobs = lab.cli_json("viewer", &["job", "list"]);
    let drain = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == "maintenance.start" && j["node"] == target)
        .unwrap()
        .clone();
    let id = drain["id"].as_str().unwrap();
    wait_for(Duration::from_secs(120), "the resumed job to end", || {
        lab.cli_json("viewer", &["job", "show", id])["state"] != "RUNNING"
    });
    let job = lab.cli_json("viewer", &["job", "show", id]);
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    assert!(resumed(&job), "{job}");
    lab.assert_each_vm_once(&all);
    assert_eq!(lab.status(target), "MAINTENANCE");
}
