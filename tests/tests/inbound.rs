//! Drained means empty: a VM on its way to a node (a create, a move) claims
//! the node before its command is sent, and entering maintenance is refused
//! while a claim is live, in the same compare-and-set that marks the node.
//! Before, a create scheduled just before the mark landed on the node
//! during its drain, and the reboot hook would hard-kill it.

use nodemaint_tests::*;
use std::time::Duration;

fn status(f: &Fleet, node: &str) -> String {
    f.cli_json("bob", &["node", "show", node])["node"]["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_node_receiving_a_vm_cannot_enter_maintenance_until_it_has_landed() {
    let mut f = Fleet::start();
    f.add_agent("node1", &[Dom::user("vm-a", "cs1")]);
    f.add_agent("node2", &[Dom::user("vm-c", "cs2")]);
    f.wait_registered();
    // Only node2 takes new VMs.
    ok(&f.cli(
        "alice",
        &["maintenance", "start", "node1", "--mode", "none"],
    ));

    // Freeze node2's agent, then create: the create is scheduled on node2
    // (still reachable for its 3 s grace) and its command waits in the
    // frozen agent's queue. A slow machine may miss the grace; then thaw,
    // let it be seen again, and retry.
    let mut job = None;
    for attempt in 0..10 {
        f.signal_agent("node2", "-STOP");
        let name = format!("new{attempt}");
        let out = f.cli(
            "alice",
            &[
                "vm", "create", "--name", &name, "--memory", "64", "--detach", "--output", "json",
            ],
        );
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
            job = Some((name, v["job_id"].as_str().unwrap().to_string()));
            break;
        }
        eprintln!(
            "create refused (agent seen too long ago?): {}",
            stderr(&out)
        );
        f.signal_agent("node2", "-CONT");
        f.wait_registered();
    }
    let (name, job) = job.expect("a create accepted while node2's agent is frozen");

    // The create has claimed node2: maintenance is refused, naming the job,
    // and node2 stays ENABLED.
    wait_for(
        Duration::from_secs(60),
        "the create's claim on node2",
        || {
            let show = f.cli_json("bob", &["job", "show", &job]);
            show["commands"].as_array().is_some_and(|c| !c.is_empty())
        },
    );
    let out = f.cli(
        "alice",
        &["maintenance", "start", "node2", "--mode", "none"],
    );
    assert!(
        !out.status.success(),
        "entered maintenance with a VM on its way"
    );
    let err = stderr(&out);
    assert!(
        err.contains(&job) && err.contains(&name),
        "the refusal names the VM and its job: {err}"
    );
    assert_eq!(status(&f, "node2"), "ENABLED");

    // Once the VM has landed (the job ended), maintenance is allowed.
    f.signal_agent("node2", "-CONT");
    wait_for(Duration::from_secs(120), "the create to end", || {
        let show = f.cli_json("bob", &["job", "show", &job]);
        show["state"] != "RUNNING"
    });
    let vms = f.cli_json("bob", &["vm", "list", "--node", "node2"]);
    assert!(
        vms.as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == name.as_str()),
        "{name} landed on node2: {vms}"
    );
    ok(&f.cli(
        "alice",
        &["maintenance", "start", "node2", "--mode", "none"],
    ));
    assert_eq!(status(&f, "node2"), "MAINTENANCE");
}
