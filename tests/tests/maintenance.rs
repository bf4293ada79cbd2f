//! Maintenance mode on libvirt's test driver: stop mode and enable, the
//! scheduler, refusals, permissions, and a drain whose migrations fail
//! (the test driver cannot migrate), which must end with a report and
//! every VM still running exactly once. Live migration itself is tested in
//! the lab suites.

use nodemaint_tests::*;
use serde_json::Value;
use std::time::Duration;

fn fleet() -> Fleet {
    let mut f = Fleet::start();
    f.add_agent(
        "node1",
        &[
            Dom::vfw("cs1"),
            Dom::vfw("cs2"),
            Dom::user("vm-a", "cs1"),
            Dom::user("vm-b", "cs2"),
            Dom::user("tenant-off", "cs1").off(),
        ],
    );
    f.add_agent("node2", &[Dom::vfw("cs3"), Dom::user("vm-c", "cs3")]);
    f.add_agent("node3", &[Dom::user("vm-d", "cs3")]);
    f.wait_registered();
    f
}

fn vms(f: &Fleet) -> Vec<Value> {
    f.cli_json("bob", &["vm", "list"])
        .as_array()
        .unwrap()
        .clone()
}

fn vm<'a>(all: &'a [Value], name: &str) -> &'a Value {
    all.iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing"))
}

fn node_status(f: &Fleet, node: &str) -> String {
    f.cli_json("bob", &["node", "show", node])["node"]["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Invariant 1 and 2: every VM appears on exactly one node.
fn assert_each_vm_once(f: &Fleet, expected: usize) {
    let all = vms(f);
    let mut names: Vec<&str> = all.iter().map(|v| v["name"].as_str().unwrap()).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(
        before,
        names.len(),
        "a VM is reported by two nodes: {all:?}"
    );
    assert_eq!(names.len(), expected, "a VM was lost: {names:?}");
}

#[test]
fn stop_mode_needs_acknowledgement_then_stops_records_and_enable_restarts_exactly_those() {
    let f = fleet();

    // Without the acknowledgement: refused, naming the cloudspaces; nothing changes.
    let out = f.cli(
        "alice",
        &["maintenance", "start", "node1", "--mode", "stop"],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cs1, cs2") && err.contains("--ack-vfw-downtime"),
        "{err}"
    );
    assert_eq!(node_status(&f, "node1"), "ENABLED");
    assert_eq!(vm(&vms(&f), "vm-a")["state"], "RUNNING");

    // Level1 may not, even with the acknowledgement.
    let out = f.cli(
        "bob",
        &[
            "maintenance",
            "start",
            "node1",
            "--mode",
            "stop",
            "--ack-vfw-downtime",
        ],
    );
    assert!(
        stderr(&out).contains("Level2 or Level3"),
        "{}",
        stderr(&out)
    );
    assert_eq!(node_status(&f, "node1"), "ENABLED");

    ok(&f.cli(
        "alice",
        &[
            "maintenance",
            "start",
            "node1",
            "--mode",
            "stop",
            "--ack-vfw-downtime",
        ],
    ));
    assert_eq!(node_status(&f, "node1"), "MAINTENANCE");
    wait_for(Duration::from_secs(10), "node1's VMs shut off", || {
        let all = vms(&f);
        ["cs1-vfw", "cs2-vfw", "vm-a", "vm-b"]
            .iter()
            .all(|n| vm(&all, n)["state"] == "SHUTOFF")
    });
    let all = vms(&f);
    for n in ["cs1-vfw", "cs2-vfw", "vm-a", "vm-b"] {
        assert!(
            vm(&all, n)["stopped_by"].is_string(),
            "{n} not recorded: {all:?}"
        );
    }
    assert!(
        vm(&all, "tenant-off")["stopped_by"].is_null(),
        "a tenant's shut-off VM was recorded"
    );
    assert_each_vm_once(&f, 8);

    // Wrong-state requests are refused by name and change nothing.
    let out = f.cli(
        "alice",
        &["maintenance", "start", "node1", "--mode", "move"],
    );
    assert!(
        stderr(&out).contains("already in maintenance"),
        "{}",
        stderr(&out)
    );
    let out = f.cli("alice", &["vm", "start", "vm-a"]);
    assert!(stderr(&out).contains("in maintenance"), "{}", stderr(&out));
    let out = f.cli("alice", &["node", "enable", "node2"]);
    assert!(
        stderr(&out).contains("not in maintenance"),
        "{}",
        stderr(&out)
    );

    // The scheduler never places a new VM on the node in maintenance.
    for i in 0..4 {
        let name = format!("new-{i}");
        ok(&f.cli(
            "alice",
            &[
                "vm",
                "create",
                "--name",
                &name,
                "--memory",
                "128",
                "--cloudspace",
                "cs3",
            ],
        ));
        wait_for(Duration::from_secs(10), "new VM in inventory", || {
            vms(&f).iter().any(|v| v["name"] == name.as_str())
        });
        assert_ne!(vm(&vms(&f), &name)["node"], "node1");
    }

    // Enable restarts exactly the recorded set, VFWs first, not the tenant's VM.
    let out = f.cli("carol", &["node", "enable", "node1", "--output", "json"]);
    ok(&out);
    let job = job_of(&out);
    let starts: Vec<String> = job["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == "start")
        .map(|c| c["vm"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        starts,
        ["cs1-vfw", "cs2-vfw", "vm-a", "vm-b"],
        "VFWs first, exactly the recorded set"
    );
    assert_eq!(job["user"], "carol");
    wait_for(Duration::from_secs(10), "restarted", || {
        let all = vms(&f);
        ["cs1-vfw", "cs2-vfw", "vm-a", "vm-b"]
            .iter()
            .all(|n| vm(&all, n)["state"] == "RUNNING")
    });
    let all = vms(&f);
    assert_eq!(vm(&all, "tenant-off")["state"], "SHUTOFF");
    assert!(
        all.iter().all(|v| v["stopped_by"].is_null()),
        "records cleared: {all:?}"
    );
    assert_eq!(node_status(&f, "node1"), "ENABLED");
}

#[test]
fn an_infeasible_drain_moves_nothing_and_names_the_vms() {
    let mut f = Fleet::start();
    f.add_agent_with(
        "big",
        16384,
        &[
            Dom::user("huge", "cs1").sized(6000),
            Dom::user("large", "cs1").sized(5000),
            Dom::vfw("cs1"),
        ],
    );
    f.add_agent_with("small", 4096, &[Dom::user("s1", "cs2").sized(1024)]);
    f.wait_registered();
    let out = f.cli("alice", &["maintenance", "start", "big", "--mode", "move"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("NO_CAPACITY") && err.contains("huge") && err.contains("large"),
        "{err}"
    );
    assert_eq!(node_status(&f, "big"), "ENABLED");
    assert_eq!(
        f.cli_json("bob", &["job", "list"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // The what-if plan says the same, with a non-zero exit.
    let out = f.cli("bob", &["plan", "drain", "big", "--output", "json"]);
    assert!(!out.status.success());
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["moves"].as_array().unwrap().len(), 0);
    let unplaced: Vec<&str> = plan["unplaced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["vm"].as_str().unwrap())
        .collect();
    assert!(
        unplaced.contains(&"huge") && unplaced.contains(&"large"),
        "{unplaced:?}"
    );
}

#[test]
fn failed_migrations_are_retried_elsewhere_reported_and_lose_nothing() {
    let f = fleet();
    // The test driver refuses migrations: each VM is tried on its planned node
    // and once more on another; the job fails with a report, the node stays
    // in maintenance, and every VM still runs exactly once.
    let out = f.cli(
        "alice",
        &[
            "maintenance",
            "start",
            "node1",
            "--mode",
            "move",
            "--output",
            "json",
        ],
    );
    assert!(!out.status.success(), "{}", stdout(&out));
    let job = job_of(&out);
    assert_eq!(job["state"], "FAILED");
    let not_done: Vec<&str> = job["report"]["not_done"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["vm"].as_str().unwrap())
        .collect();
    assert_eq!(not_done.len(), 5, "{job}");
    let migrations: Vec<&Value> = job["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == "migrate")
        .collect();
    assert_eq!(migrations.len(), 10, "each VM tried twice: {job}");
    for name in ["cs1-vfw", "vm-a"] {
        let dests: Vec<&str> = migrations
            .iter()
            .filter(|c| c["vm"] == name)
            .map(|c| c["to"].as_str().unwrap())
            .collect();
        assert_eq!(dests.len(), 2);
        assert_ne!(dests[0], dests[1], "retry goes to another node");
    }
    // VFWs were moved first.
    assert!(
        migrations[0]["vm"].as_str().unwrap().ends_with("-vfw"),
        "{migrations:?}"
    );
    assert_eq!(node_status(&f, "node1"), "MAINTENANCE");
    let all = vms(&f);
    assert_eq!(vm(&all, "vm-a")["node"], "node1");
    assert_eq!(vm(&all, "vm-a")["state"], "RUNNING");
    assert_each_vm_once(&f, 8);
    // The operator can enable the node again.
    ok(&f.cli("alice", &["node", "enable", "node1"]));
    assert_eq!(node_status(&f, "node1"), "ENABLED");
}

#[test]
fn start_stopped_starts_shut_off_vms_vfws_first() {
    let mut f = Fleet::start();
    f.add_agent(
        "n1",
        &[
            Dom::user("a-user", "cs1").off(),
            Dom::vfw("cs1").off(),
            Dom::user("up", "cs1"),
        ],
    );
    f.wait_registered();
    let v = f.cli_json("bob", &["node", "start-stopped", "n1", "--dry-run"]);
    assert_eq!(v["would_start"], serde_json::json!(["cs1-vfw", "a-user"]));
    // A dry run changes nothing.
    assert_eq!(vm(&vms(&f), "cs1-vfw")["state"], "SHUTOFF");
    let out = f.cli("bob", &["node", "start-stopped", "n1"]);
    assert!(stderr(&out).contains("Level2 or Level3"));
    ok(&f.cli("alice", &["node", "start-stopped", "n1"]));
    wait_for(Duration::from_secs(10), "all running", || {
        vms(&f).iter().all(|v| v["state"] == "RUNNING")
    });
    let out = f.cli("alice", &["vm", "start", "ghost"]);
    assert!(stderr(&out).contains("unknown VM"));
}

#[test]
fn vm_move_refusals_name_the_problem_and_change_nothing() {
    let mut f = Fleet::start();
    f.add_agent_with(
        "a",
        8192,
        &[
            Dom::user("big", "cs1").sized(3000),
            Dom::user("small", "cs1").sized(128),
        ],
    );
    f.add_agent_with("b", 2048, &[Dom::user("b1", "cs2").sized(128)]);
    f.add_agent_with("c", 8192, &[Dom::user("c1", "cs2").sized(128)]);
    f.wait_registered();
    let cases: &[(&[&str], &str)] = &[
        (&["vm", "move", "big", "--to", "b"], "needs 3000 MiB"),
        (
            &["vm", "move", "big", "--to", "nope"],
            "unknown node \"nope\"",
        ),
        (&["vm", "move", "big", "--to", "a"], "already runs on a"),
        (
            &["vm", "move", "ghost", "--to", "b"],
            "unknown VM \"ghost\"",
        ),
    ];
    for (args, want) in cases {
        let out = f.cli("alice", args);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    // A destination in maintenance, and an unreachable one.
    ok(&f.cli("alice", &["maintenance", "start", "c", "--mode", "stop"]));
    let out = f.cli("alice", &["vm", "move", "small", "--to", "c"]);
    assert!(stderr(&out).contains("MAINTENANCE"), "{}", stderr(&out));
    f.stop_agent("b");
    wait_for(Duration::from_secs(10), "b unreachable", || {
        f.cli_json("bob", &["node", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "b" && n["reachable"] == false)
    });
    let out = f.cli("alice", &["vm", "move", "small", "--to", "b"]);
    assert!(stderr(&out).contains("unreachable"), "{}", stderr(&out));
    assert_eq!(
        f.cli_json("bob", &["job", "list"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["kind"] == "vm.move")
            .count(),
        0
    );
    let all = vms(&f);
    assert_eq!(vm(&all, "big")["node"], "a");
    assert_eq!(vm(&all, "small")["node"], "a");
}

/// Drained means empty: a VM that lands on the node after the drain was
/// planned (here the node comes back from an agent restart holding a VM
/// the plan did not know) is found by the drain's final fresh-inventory
/// check, and the drain ends partial, never SUCCEEDED.
#[test]
fn a_vm_that_arrives_during_the_drain_makes_it_partial_not_succeeded() {
    let mut f = Fleet::start();
    f.add_agent("node1", &[]);
    f.add_agent("node2", &[Dom::vfw("cs1")]);
    // `wait_registered` wants VMs on every node; node1 has none.
    wait_for(Duration::from_secs(90), "agents to register", || {
        let v = f.cli_json("alice", &["node", "list"]);
        ["node1", "node2"].iter().all(|n| {
            v.as_array()
                .into_iter()
                .flatten()
                .any(|x| x["name"] == *n && x["reachable"] == true)
        })
    });
    // The agent dies; within its grace of three heartbeats the node is
    // still reachable, so the (empty) drain is planned and started.
    f.stop_agent("node1");
    let (url, dir) = (f.nats.url.clone(), f.dir.path().to_path_buf());
    let drain = std::thread::spawn(move || {
        cli_in(
            &url,
            &dir,
            "alice",
            &[
                "maintenance",
                "start",
                "node1",
                "--mode",
                "move",
                "--output",
                "json",
            ],
        )
    });
    // The drain waits for a fresh inventory; the node comes back with a VM.
    node_xml(
        &f.dir.path().join("node1.xml"),
        8192,
        8,
        &[Dom::user("newcomer", "cs1")],
    );
    f.start_agent("node1");
    let out = drain.join().unwrap();
    assert!(!out.status.success(), "{}", stdout(&out));
    let job = job_of(&out);
    assert_eq!(job["state"], "FAILED", "{job}");
    assert!(
        job["outcome"].as_str().unwrap().contains("partly drained"),
        "{job}"
    );
    let not_done = job["report"]["not_done"].as_array().unwrap();
    assert_eq!(not_done.len(), 1, "{job}");
    assert_eq!(not_done[0]["vm"], "newcomer");
    assert!(
        not_done[0]["detail"]
            .as_str()
            .unwrap()
            .contains("arrived during the drain"),
        "{job}"
    );
    assert_eq!(node_status(&f, "node1"), "MAINTENANCE");
}

/// A dry run is a read: repeating it must not make the node open libvirt
/// connections each time. The pre-flight's probe is single-flight and its
/// clean answer reused for 30 s (before, every dry run sent a probe).
#[test]
fn repeated_dry_runs_probe_once() {
    let mut f = Fleet::start();
    f.add_agent("n1", &[Dom::user("vm-a", "cs1")]);
    f.add_agent("n2", &[Dom::user("vm-b", "cs2")]);
    f.wait_registered();
    for _ in 0..3 {
        let out = f.cli(
            "bob",
            &["maintenance", "start", "n1", "--mode", "move", "--dry-run"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("libvirt"), "{}", stdout(&out));
    }
    let probes = || {
        let out = f.cli(
            "bob",
            &[
                "events", "--node", "n1", "--kind", "result", "--since", "1h", "--output", "json",
            ],
        );
        stdout(&out).matches("reaches 1 libvirt URIs").count()
    };
    wait_for(Duration::from_secs(10), "the probe's result event", || {
        probes() >= 1
    });
    assert_eq!(probes(), 1, "one probe for three dry runs");
}

/// Most migrations in flight at once, from the journal's order of
/// "moving X" and "migration of X … ended" steps.
fn peak_in_flight(job: &Value) -> i32 {
    let (mut now, mut peak) = (0, 0);
    for st in job["steps"].as_array().unwrap() {
        let msg = st["message"].as_str().unwrap_or("");
        if msg.starts_with("moving ") {
            now += 1;
            peak = peak.max(now);
        } else if msg.starts_with("migration of ") && msg.contains(" ended: ") {
            now -= 1;
        }
    }
    peak
}

#[test]
fn a_drain_keeps_its_concurrency_and_an_adaptive_one_is_recorded_as_such() {
    let f = fleet();
    let drain = |extra: &[&str]| {
        let mut args = vec!["maintenance", "start", "node1", "--mode", "move"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--output", "json"]);
        // The test driver refuses migrations: each VM is tried twice.
        let job = job_of(&f.cli("alice", &args));
        assert_eq!(job["state"], "FAILED", "{job}");
        ok(&f.cli("alice", &["node", "enable", "node1"]));
        assert_each_vm_once(&f, 8);
        job
    };
    let fixed = drain(&["--max-parallel", "1"]);
    assert_eq!(peak_in_flight(&fixed), 1, "--max-parallel 1: {fixed}");
    assert!(fixed["steps"][0]["message"]
        .as_str()
        .unwrap()
        .contains("1 at once;"));
    let wide = drain(&["--max-parallel", "3"]);
    assert!(
        peak_in_flight(&wide) > 1,
        "no barrier holds it to one: {wide}"
    );
    assert!(peak_in_flight(&wide) <= 3, "{wide}");
    let adaptive = drain(&["--concurrency", "adaptive"]);
    let plan = adaptive["steps"][0]["message"].as_str().unwrap();
    assert!(plan.contains("at once to start (adaptive)"), "{plan}");
    assert_eq!(adaptive["params"]["adaptive"], true, "{adaptive}");
    assert!(fixed["params"].get("adaptive").is_none(), "{fixed}");
    // A bad value is refused by the CLI, naming the choices.
    let out = f.cli(
        "alice",
        &[
            "maintenance",
            "start",
            "node1",
            "--mode",
            "move",
            "--concurrency",
            "fast",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fixed") && err.contains("adaptive"), "{err}");
    assert_eq!(node_status(&f, "node1"), "ENABLED");
}
