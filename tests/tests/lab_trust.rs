//! Lab suite: maintenance operators can trust, on real QEMU/KVM nodes.
//! Pre-flight against unreachable libvirt, cordon, two drains at once within
//! the fleet-wide migration slots (asserted from the journals' timestamps),
//! abort mid-drain, retry, deadline, progress timeout, and the stop and cold
//! fallbacks; every step checked against each node's own libvirtd.

use nodemaint_tests::lab::{step, Lab};
use nodemaint_tests::{ok, stderr, stdout, wait_for};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// One migration as the journal shows it: (start ms, end ms, from, to).
type Interval = (i64, i64, String, String);

/// Migration intervals (start, end, from, to) from a job's journal: the
/// step before the command is sent and the one after its result, both
/// logged while the migration holds its slots.
fn intervals(job: &Value) -> Vec<Interval> {
    let steps = job["steps"].as_array().unwrap();
    let mut open: BTreeMap<String, (i64, String, String)> = BTreeMap::new();
    let mut out = Vec::new();
    for s in steps {
        let msg = s["message"].as_str().unwrap_or("");
        let ts = s["ts_ms"].as_i64().unwrap();
        let words: Vec<&str> = msg.split(' ').collect();
        if let ["moving", vm, "from", a, "to", b] = words[..] {
            open.insert(vm.to_string(), (ts, a.to_string(), b.to_string()));
        } else if let ["migration", "of", vm, "from", ..] = words[..] {
            if msg.contains(" ended: ") {
                let (start, a, b) = open.remove(vm).expect("ended without a start");
                out.push((start, ts, a, b));
            }
        }
    }
    assert!(open.is_empty(), "migrations without an end: {open:?}");
    out
}

/// The most migrations running at once, in total and per source and
/// destination node.
fn peak(all: &[Interval]) -> (usize, usize, usize) {
    let mut peak = (0, 0, 0);
    for (t, _, _, _) in all {
        let live: Vec<_> = all.iter().filter(|(s, e, _, _)| s <= t && t < e).collect();
        let per = |f: &dyn Fn(&Interval) -> &String| {
            let mut m: BTreeMap<&String, usize> = BTreeMap::new();
            for i in &live {
                *m.entry(f(i)).or_default() += 1;
            }
            m.values().copied().max().unwrap_or(0)
        };
        peak.0 = peak.0.max(live.len());
        peak.1 = peak.1.max(per(&|i| &i.2));
        peak.2 = peak.2.max(per(&|i| &i.3));
    }
    peak
}

fn vms_on(lab: &Lab, node: &str) -> Vec<String> {
    lab.domains(node).into_keys().collect()
}

/// Marks a domain not live-migratable in its nodemaint metadata.
fn pin(lab: &Lab, node: &str, vm: &str, cloudspace: &str) {
    lab.lab_ok(&[
        "virsh",
        node,
        "metadata",
        vm,
        "--uri",
        "https://nodemaint.dev/xmlns/vm/1",
        "--key",
        "nodemaint",
        "--set",
        &format!("<vm kind=\"user\" cloudspace=\"{cloudspace}\" migratable=\"no\"/>"),
        "--live",
        "--config",
    ]);
    wait_for(
        Duration::from_secs(60),
        "the pin to reach the inventory",
        || {
            let v = lab.cli_json("viewer", &["vm", "list", "--node", node]);
            v.as_array()
                .unwrap()
                .iter()
                .any(|x| x["name"] == vm && x["not_migratable"].is_string())
        },
    );
}

fn a_user_vm_on(lab: &Lab, node: &str) -> String {
    vms_on(lab, node)
        .into_iter()
        .find(|v| !v.ends_with("-vfw"))
        .unwrap_or_else(|| panic!("no user VM on {node}"))
}

#[test]
fn lab_trust_suite() {
    let Some(lab) = Lab::up(
        "trust",
        4,
        4,
        2,
        2,
        &[
            ("LAB_PER_SOURCE", "2"),
            ("LAB_PER_DESTINATION", "1"),
            ("LAB_GLOBAL_MIGRATIONS", "2"),
            ("LAB_PROGRESS_TIMEOUT_S", "5"),
        ],
    ) else {
        return;
    };
    let mut all = lab.vm_names();

    step("pre-flight: node1's libvirt cannot reach the others → refused, nothing changes");
    lab.lab_ok(&[
        "exec", "node1", "iptables", "-I", "OUTPUT", "-p", "tcp", "--dport", "16509", "-j",
        "REJECT",
    ]);
    let out = lab.cli(
        "operator",
        &[
            "maintenance",
            "start",
            "node1",
            "--mode",
            "move",
            "--dry-run",
        ],
    );
    lab.lab_ok(&[
        "exec", "node1", "iptables", "-D", "OUTPUT", "-p", "tcp", "--dport", "16509", "-j",
        "REJECT",
    ]);
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("FAIL") && stdout(&out).contains("destination libvirt"),
        "{}",
        stdout(&out)
    );
    assert_eq!(lab.status("node1"), "ENABLED");

    step("cordon node1 and node2: nothing moves, nothing new lands there");
    for n in ["node1", "node2"] {
        ok(&lab.cli("operator", &["maintenance", "start", n, "--mode", "none"]));
        assert_eq!(lab.status(n), "MAINTENANCE");
    }
    lab.assert_each_vm_once(&all);
    for i in 0..2 {
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
                "cs1",
            ],
        ));
        all.push(name);
    }
    all.sort();
    let placed = lab.assert_each_vm_once(&all);
    for i in 0..2 {
        let node = &placed[&format!("new{i}")].0;
        assert!(node == "node3" || node == "node4", "new{i} on {node}");
    }

    step("two drains at once (retry of the cordoned nodes) stay within the fleet-wide slots");
    let j1 = lab.detach(
        "operator",
        &["maintenance", "retry", "node1", "--max-speed", "16"],
    );
    let j2 = lab.detach(
        "operator",
        &["maintenance", "retry", "node2", "--max-speed", "16"],
    );
    let (d1, d2) = (lab.wait_job(&j1, 300), lab.wait_job(&j2, 300));
    for d in [&d1, &d2] {
        assert_eq!(d["state"], "SUCCEEDED", "{d}");
    }
    let mut both = intervals(&d1);
    both.extend(intervals(&d2));
    assert!(both.len() >= 4, "{both:?}");
    let (global, per_source, per_dest) = peak(&both);
    assert!(global <= 2, "global limit 2 exceeded: {global} ({both:?})");
    assert!(per_source <= 2, "per-source limit exceeded: {per_source}");
    assert!(
        per_dest <= 1,
        "per-destination limit 1 exceeded: {per_dest} ({both:?})"
    );
    assert!(
        global == 2,
        "the two drains did run at the same time: {both:?}"
    );
    assert!(vms_on(&lab, "node1").is_empty() && vms_on(&lab, "node2").is_empty());
    lab.assert_each_vm_once(&all);
    for n in ["node1", "node2"] {
        ok(&lab.cli("operator", &["node", "enable", n]));
    }

    step("abort mid-drain: the migration in flight is cancelled, nothing new starts, the report is exact");
    let busy = vms_on(&lab, "node3");
    assert!(busy.len() >= 3, "{busy:?}");
    let drain = lab.detach(
        "operator",
        &[
            "maintenance",
            "start",
            "node3",
            "--mode",
            "move",
            "--max-speed",
            "4",
        ],
    );
    wait_for(Duration::from_secs(90), "a migration to be running", || {
        lab.job(&drain)["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["message"].as_str().unwrap_or("").starts_with("moving "))
    });
    // Meanwhile another start touching these VMs' destinations is refused.
    let dest = lab.job(&drain)["params"]["plan"]["moves"][0]["to"]
        .as_str()
        .unwrap()
        .to_string();
    let out = lab.cli(
        "operator",
        &["maintenance", "start", &dest, "--mode", "move", "--dry-run"],
    );
    assert!(
        stdout(&out).contains("no conflicting job") && stdout(&out).contains(&drain),
        "{}",
        stdout(&out)
    );
    std::thread::sleep(Duration::from_secs(2));
    lab.assert_none_lost_or_doubled(&all);
    ok(&lab.cli("admin", &["job", "abort", &drain, "--detach"]));
    let aborted = lab.wait_job(&drain, 180);
    assert_eq!(aborted["state"], "ABORTED", "{aborted}");
    assert!(aborted["outcome"]
        .as_str()
        .unwrap()
        .contains("aborted by admin"));
    let placed = lab.assert_each_vm_once(&all);
    let report = &aborted["report"];
    let not_done: Vec<String> = report["not_done"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let (vm, detail) = (l["vm"].as_str().unwrap(), l["detail"].as_str().unwrap());
            assert_eq!(
                placed[vm],
                ("node3".into(), "running".into()),
                "{vm}: {detail}"
            );
            assert!(detail.contains("[now on node3 (running)]"), "{detail}");
            vm.to_string()
        })
        .collect();
    assert!(!not_done.is_empty(), "{aborted}");
    assert!(
        report["not_done"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["detail"].as_str().unwrap().contains("cancelled")),
        "the migration in flight was cancelled: {report}"
    );
    for l in report["done"].as_array().unwrap() {
        let to = l["detail"]
            .as_str()
            .unwrap()
            .strip_prefix("moved to ")
            .unwrap();
        assert_eq!(placed[l["vm"].as_str().unwrap()].0, to);
    }
    assert_eq!(
        lab.status("node3"),
        "MAINTENANCE",
        "abort leaves the node in maintenance"
    );

    step("retry moves only what the aborted drain left behind");
    let out = lab.cli(
        "operator",
        &["maintenance", "retry", "node3", "--output", "json"],
    );
    ok(&out);
    let retry = lab.job(
        stdout(&out)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| v["job_id"].as_str().map(str::to_string))
            .unwrap()
            .as_str(),
    );
    let mut moved: Vec<String> = retry["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == "migrate" && c["ok"] == true)
        .map(|c| c["vm"].as_str().unwrap().to_string())
        .collect();
    moved.sort();
    let mut expected = not_done.clone();
    expected.sort();
    assert_eq!(moved, expected, "{retry}");
    assert!(vms_on(&lab, "node3").is_empty());
    lab.assert_each_vm_once(&all);
    ok(&lab.cli("operator", &["node", "enable", "node3"]));

    step("a deadline stops a drain loudly and the report says where every VM is");
    let out = lab.cli(
        "operator",
        &[
            "maintenance",
            "start",
            "node4",
            "--mode",
            "move",
            "--max-speed",
            "4",
            "--deadline",
            "3s",
        ],
    );
    assert!(!out.status.success());
    let late = lab.wait_job(
        lab.cli_json("viewer", &["job", "list"])[0]["id"]
            .as_str()
            .unwrap(),
        180,
    );
    assert_eq!(late["state"], "FAILED", "{late}");
    assert!(
        late["outcome"]
            .as_str()
            .unwrap()
            .contains("deadline of 3 s expired"),
        "{late}"
    );
    let placed = lab.assert_each_vm_once(&all);
    for l in late["report"]["not_done"].as_array().unwrap() {
        assert_eq!(placed[l["vm"].as_str().unwrap()].0, "node4");
    }
    ok(&lab.cli("operator", &["maintenance", "retry", "node4"]));
    ok(&lab.cli("operator", &["node", "enable", "node4"]));

    step("a migration that makes no progress is aborted by the progress timeout");
    let victim = a_user_vm_on(&lab, "node1");
    let mv = lab.detach(
        "operator",
        &["vm", "move", &victim, "--to", "node2", "--max-speed", "4"],
    );
    wait_for(
        Duration::from_secs(90),
        "the migration to move data",
        || {
            let out = lab.cli(
                "viewer",
                &[
                    "events", "--since", "1m", "--kind", "progress", "--output", "json",
                ],
            );
            stdout(&out)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|e| {
                    e["op_id"] == mv.as_str() && e["body"]["percent"].as_f64().unwrap_or(0.0) > 5.0
                })
        },
    );
    // The link stalls mid-transfer: established packets are dropped.
    let rule = [
        "exec",
        "node1",
        "iptables",
        "-I",
        "OUTPUT",
        "-p",
        "tcp",
        "--dport",
        "49152:49215",
        "-j",
        "DROP",
    ];
    lab.lab_ok(&rule);
    let stalled = lab.wait_job(&mv, 180);
    let mut undo = rule;
    undo[3] = "-D";
    lab.lab_ok(&undo);
    assert_eq!(stalled["state"], "FAILED", "{stalled}");
    assert!(
        stalled["outcome"]
            .as_str()
            .unwrap()
            .contains("made no progress for 5 s"),
        "{stalled}"
    );
    let placed = lab.assert_each_vm_once(&all);
    assert_eq!(placed[&victim], ("node1".into(), "running".into()));
    lab.wait_consistent();

    step("fallback stop: a pinned VM is stopped and recorded, enable restarts it");
    let pinned = a_user_vm_on(&lab, "node1");
    pin(&lab, "node1", &pinned, "cs1");
    let out = lab.cli(
        "operator",
        &["maintenance", "start", "node1", "--mode", "move"],
    );
    assert!(
        !out.status.success() && stderr(&out).contains("--fallback"),
        "{}",
        stderr(&out)
    );
    assert_eq!(lab.status("node1"), "ENABLED");
    ok(&lab.cli(
        "operator",
        &[
            "maintenance",
            "start",
            "node1",
            "--mode",
            "move",
            "--fallback",
            "stop",
        ],
    ));
    assert_eq!(
        lab.domains("node1").into_iter().collect::<Vec<_>>(),
        [(pinned.clone(), "shut off".to_string())]
    );
    lab.assert_each_vm_once(&all);
    ok(&lab.cli("operator", &["node", "enable", "node1"]));
    assert_eq!(lab.domains("node1")[&pinned], "running");

    step("fallback cold: a pinned VM is stopped, moved and started on the destination");
    let cold = a_user_vm_on(&lab, "node2");
    pin(&lab, "node2", &cold, "cs1");
    let out = lab.cli(
        "operator",
        &[
            "maintenance",
            "start",
            "node2",
            "--mode",
            "move",
            "--fallback",
            "cold",
            "--output",
            "json",
        ],
    );
    ok(&out);
    let placed = lab.assert_each_vm_once(&all);
    assert_ne!(placed[&cold].0, "node2");
    assert_eq!(placed[&cold].1, "running");
    assert!(vms_on(&lab, "node2").is_empty());
    ok(&lab.cli("operator", &["node", "enable", "node2"]));
    lab.wait_consistent();
}
