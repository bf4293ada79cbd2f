//! Fault injection on the lab and the invariant checks that follow every
//! fault (shared by the `lab_faults` suite and `bench soak`).
//!
//! Every check asks each node's own libvirtd (inside the node, over its
//! unix socket, so a node cut off the network still answers) and returns
//! the violations it found as an error, so the soak can count them and the
//! suite can fail on them.

use crate::lab::Lab;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub type Placements = BTreeMap<String, Vec<(String, String)>>;

pub fn lab_dir(lab: &Lab) -> PathBuf {
    PathBuf::from(
        &lab.env
            .iter()
            .find(|(k, _)| k == "LAB_DIR")
            .expect("LAB_DIR")
            .1,
    )
}

/// Polls `f` every 100 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One node's domains as its libvirtd reports them locally: name → state.
/// A node in its power cycle (`lab reboot`) has no libvirtd for a moment:
/// it is asked again until it answers (60 s).
pub fn domains(lab: &Lab, node: &str) -> Result<BTreeMap<String, String>, String> {
    let list = || {
        lab.lab(&[
            "exec",
            node,
            "virsh",
            "-q",
            "-c",
            "qemu:///system",
            "list",
            "--all",
        ])
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = list();
    while !out.status.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        out = list();
    }
    if !out.status.success() {
        return Err(format!(
            "cannot list {node}'s domains: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let _id = cols.next()?;
            let name = cols.next()?.to_string();
            Some((name, cols.collect::<Vec<_>>().join(" ")))
        })
        .collect())
}

/// Every VM as the libvirtds see it: name → [(node, state)].
pub fn placements(lab: &Lab) -> Result<Placements, String> {
    let mut all = Placements::new();
    for node in lab.node_names() {
        for (vm, state) in domains(lab, &node)? {
            all.entry(vm).or_default().push((node.clone(), state));
        }
    }
    Ok(all)
}

/// Invariants 1 and 2. While migrations may run: every VM present, running
/// on at most one node (an incoming copy is paused until switch-over). At
/// rest: each VM defined on exactly one node, running or shut off.
pub fn check_vms(lab: &Lab, expected: &[String], at_rest: bool) -> Result<Placements, String> {
    let all = placements(lab)?;
    let mut bad = Vec::new();
    for vm in expected {
        let Some(places) = all.get(vm) else {
            bad.push(format!("{vm} LOST (on no node)"));
            continue;
        };
        let running = places.iter().filter(|(_, s)| s == "running").count();
        if running > 1 && runs_twice(lab, vm, places) {
            bad.push(format!("{vm} RUNS TWICE: {places:?}"));
        }
        if at_rest && (places.len() != 1 || !matches!(places[0].1.as_str(), "running" | "shut off"))
        {
            bad.push(format!("{vm} not settled on one node: {places:?}"));
        }
    }
    for vm in all.keys() {
        if !expected.contains(vm) {
            bad.push(format!("unexpected VM {vm}: {:?}", all[vm]));
        }
    }
    if bad.is_empty() {
        Ok(all)
    } else {
        Err(bad.join("; "))
    }
}

/// The nodes are listed one after another, so a live migration's switch-over
/// between two listings looks like a VM running on both (running on the
/// source when it was listed, on the destination when that was), and on a
/// busy machine the source's qemu may take a while to go after the switch.
/// A real double run lasts: look again at just those nodes, in the other
/// order, every 300 ms for 5 s; it runs twice only if every look says so
/// (the first look that says otherwise ends the check).
fn runs_twice(lab: &Lab, vm: &str, places: &[(String, String)]) -> bool {
    let nodes: Vec<&String> = places
        .iter()
        .filter(|(_, s)| s == "running")
        .map(|(n, _)| n)
        .collect();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(300));
        let running = nodes
            .iter()
            .rev()
            .filter(|n| {
                domains(lab, n)
                    .ok()
                    .and_then(|d| d.get(vm).cloned())
                    .is_some_and(|s| s == "running")
            })
            .count();
        if running <= 1 {
            return false;
        }
    }
    true
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Invariant 5 from the agents' own logs (appended across restarts): each
/// command id is executed at most once. Returns how many executions the
/// logs show in all.
pub fn check_no_double_execution(lab: &Lab) -> Result<usize, String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for node in lab.node_names() {
        let log = lab_dir(lab).join(&node).join("agent.log");
        let text = strip_ansi(&std::fs::read_to_string(&log).unwrap_or_default());
        for line in text.lines().filter(|l| l.contains("executing command")) {
            if let Some(id) = line.split_whitespace().find_map(|w| w.strip_prefix("id=")) {
                *seen.entry(format!("{node}.{id}")).or_default() += 1;
            }
        }
    }
    let twice: Vec<String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| format!("command {id} executed {n} times"))
        .collect();
    if twice.is_empty() {
        Ok(seen.len())
    } else {
        Err(twice.join("; "))
    }
}

/// The job's report is exact: each VM reported moved is on that node, each
/// VM reported not moved is still on `source`, and together they are every
/// VM the node held (`held`).
pub fn check_drain_report(
    job: &Value,
    source: &str,
    held: &[String],
    placed: &Placements,
) -> Result<(), String> {
    let mut bad = Vec::new();
    let lines = |k: &str| -> Vec<(String, String)> {
        job["report"][k]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                (
                    l["vm"].as_str().unwrap_or_default().to_string(),
                    l["detail"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let node_of = |vm: &str| placed.get(vm).and_then(|p| p.first()).map(|p| p.0.clone());
    let mut reported = Vec::new();
    for (vm, detail) in lines("done") {
        match detail.strip_prefix("moved to ") {
            Some(to) if node_of(&vm).as_deref() == Some(to) => {}
            _ => bad.push(format!(
                "report says {vm}: {detail:?}, libvirt has it on {:?}",
                node_of(&vm)
            )),
        }
        reported.push(vm);
    }
    for (vm, detail) in lines("not_done") {
        if node_of(&vm).as_deref() != Some(source) {
            bad.push(format!(
                "report says {vm} not moved ({detail}), libvirt has it on {:?}",
                node_of(&vm)
            ));
        }
        reported.push(vm);
    }
    reported.sort();
    let mut want = held.to_vec();
    want.sort();
    if reported != want {
        bad.push(format!(
            "report covers {reported:?}, the node held {want:?}"
        ));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

/// Slows every migration out of `node` down to `mibs` MiB/s (per domain;
/// the setting stays with the domain on this node).
pub fn throttle(lab: &Lab, node: &str, mibs: u32) {
    for vm in domains(lab, node).unwrap_or_default().into_keys() {
        let _ = lab.lab(&["virsh", node, "migrate-setspeed", &vm, &mibs.to_string()]);
    }
}

/// Migrations in flight: (vm, destination) for each paused incoming copy.
pub fn incoming(lab: &Lab) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for node in lab.node_names() {
        for (vm, state) in domains(lab, &node).unwrap_or_default() {
            if state == "paused" {
                out.push((vm, node.clone()));
            }
        }
    }
    out
}

/// Starts a move-mode drain of `node` in the background; returns the job id.
pub fn start_drain(lab: &Lab, node: &str) -> Result<String, String> {
    let out = lab.cli(
        "operator",
        &["maintenance", "start", node, "--mode", "move", "--detach"],
    );
    if !out.status.success() {
        return Err(format!(
            "maintenance start {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The job as `job show` reports it (None while the API does not answer,
/// e.g. between a leader's death and the standby's takeover).
pub fn job(lab: &Lab, id: &str) -> Option<Value> {
    let out = lab.cli("viewer", &["job", "show", id, "--output", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Waits for the job to leave RUNNING; returns it.
pub fn wait_job_end(lab: &Lab, id: &str, timeout: Duration) -> Result<Value, String> {
    let mut last = None;
    let ended = wait_until(timeout, || {
        last = job(lab, id);
        last.as_ref()
            .is_some_and(|j| j["state"] != "RUNNING" && j["state"] != "PAUSED")
    });
    match (ended, last) {
        (true, Some(j)) => Ok(j),
        (_, last) => Err(format!(
            "job {id} did not end within {timeout:?}; last seen: {}",
            last.map(|j| j["state"].to_string()).unwrap_or_default()
        )),
    }
}

/// `node enable NODE`, waiting for the job.
pub fn enable(lab: &Lab, node: &str) -> Result<(), String> {
    let out = lab.cli("operator", &["node", "enable", node]);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "node enable {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Whether the coordinator reports `node` reachable (None: no answer).
pub fn reachable(lab: &Lab, node: &str) -> Option<bool> {
    let out = lab.cli("viewer", &["node", "list", "--output", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["reachable"].as_bool())
}
