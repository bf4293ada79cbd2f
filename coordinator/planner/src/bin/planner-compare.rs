//! `planner-compare`: the planner side by side with Ganeti's `hail`
//! (IAllocator `node-evacuate`, shared-storage `rbd` instances) and
//! `hroller` on the same generated fleets. Run through
//! `bench/compare-ganeti.sh`, which installs `ganeti-htools` if needed.
//!
//! ```text
//! planner-compare [--nodes N] [--vms M] [--drains D] [--hail PATH] [--hroller PATH]
//! ```
//!
//! Mapping: node memory → `total_memory` (no reserved memory, memory ratio
//! 1.0), vCPUs → `total_cpus` with the ipolicy `vcpu-ratio` 4.0 (ours is 4.0
//! too), anti-affinity groups → Ganeti exclusion tags (`aa:<group>`, with the
//! cluster tag `htools:iextags:aa`). Ganeti has no notion of VFWs, so their
//! spreading is measured, not requested. `hail` runs with
//! `--no-capacity-checks` (no N+1 reservation: the planner does not keep
//! one either). `hroller` has no K limit, so its group count is compared
//! with ours at K = number of nodes (and shown next to K = 5).
//!
//! Times: the planner's is in-process on a loaded snapshot (plus, for
//! fairness, the time to parse the fleet file); hail's and hroller's are
//! process wall times, which include parsing their JSON input.

use nodemaint_planner::synth::{self, Spec};
use nodemaint_planner::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

struct Args {
    nodes: usize,
    vms: usize,
    drains: usize,
    hail: String,
    hroller: String,
}

fn args() -> Args {
    let mut a = Args {
        nodes: 200,
        vms: 4000,
        drains: 5,
        hail: "/usr/lib/ganeti/iallocators/hail".into(),
        hroller: "hroller".into(),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < v.len() {
        let val = v[i + 1].clone();
        match v[i].as_str() {
            "--nodes" => a.nodes = val.parse().expect("--nodes N"),
            "--vms" => a.vms = val.parse().expect("--vms M"),
            "--drains" => a.drains = val.parse().expect("--drains D"),
            "--hail" => a.hail = val,
            "--hroller" => a.hroller = val,
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    a
}

/// The fleet as an IAllocator request (Ganeti 2.x/3.x "version 2" format).
fn iallocator_input(fleet: &Fleet, request: Value) -> Value {
    let mut used: BTreeMap<&str, u64> = BTreeMap::new();
    for v in &fleet.vms {
        *used.entry(v.node.as_str()).or_default() += v.mem_mib;
    }
    let nodes: serde_json::Map<String, Value> = fleet
        .nodes
        .iter()
        .map(|n| {
            let u = used.get(n.name.as_str()).copied().unwrap_or(0);
            (
                n.name.clone(),
                json!({
                    "total_disk": 10_000_000, "free_disk": 10_000_000,
                    "total_cpus": n.vcpus, "reserved_cpus": 0,
                    "group": "uuid-group-1", "secondary_ip": "192.168.2.1", "primary_ip": "192.168.1.1",
                    "i_pri_up_memory": u, "i_pri_memory": u, "tags": [],
                    "master_candidate": false, "master_capable": false,
                    "free_memory": n.mem_mib.saturating_sub(u), "total_memory": n.mem_mib, "reserved_memory": 0,
                    "ndparams": {"spindle_count": 1, "oob_program": null, "exclusive_storage": false},
                    "free_spindles": 100_000, "total_spindles": 100_000,
                    "drained": n.status != NodeStatus::Enabled, "offline": !n.reachable, "vm_capable": true
                }),
            )
        })
        .collect();
    let instances: serde_json::Map<String, Value> = fleet
        .vms
        .iter()
        .map(|v| {
            let tags: Vec<String> = v.anti_affinity.iter().map(|g| format!("aa:{g}")).collect();
            (
                v.name.clone(),
                json!({
                    "disks": [{"spindles": 1, "mode": "rw", "size": 1024}], "disk_space_total": 1024,
                    "hypervisor": "kvm", "tags": tags,
                    "nics": [{"ip": null, "mac": "aa:00:00:00:00:01", "link": "br0", "mode": "bridged", "bridge": "br0"}],
                    "vcpus": v.vcpus, "spindle_use": 1, "admin_state": "up", "admin_state_source": "admin",
                    "disk_template": "rbd", "memory": v.mem_mib, "nodes": [v.node], "os": "debian"
                }),
            )
        })
        .collect();
    let spec = json!({"nic-count": 1, "disk-size": 1024, "disk-count": 1, "memory-size": 1024, "cpu-count": 1, "spindle-use": 1});
    let min = json!({"nic-count": 1, "disk-size": 128, "disk-count": 1, "memory-size": 128, "cpu-count": 1, "spindle-use": 1});
    let max = json!({"nic-count": 8, "disk-size": 1048576, "disk-count": 16, "memory-size": 1048576, "cpu-count": 64, "spindle-use": 8});
    let templates = json!([
        "rbd",
        "sharedfile",
        "diskless",
        "plain",
        "drbd",
        "file",
        "blockdev"
    ]);
    json!({
        "cluster_tags": ["htools:iextags:aa"],
        "nodegroups": {"uuid-group-1": {
            "ipolicy": {"std": spec, "minmax": [{"min": min, "max": max}], "vcpu-ratio": 4.0,
                        "disk-templates": templates, "spindle-ratio": 32.0},
            "alloc_policy": "preferred", "networks": [], "tags": [], "name": "default"}},
        "ipolicy": {"std": spec, "min": min, "max": max, "vcpu-ratio": 4.0, "disk-templates": templates, "spindle-ratio": 32.0},
        "enabled_hypervisors": ["kvm"],
        "cluster_name": "cluster",
        "instances": instances,
        "version": 2,
        "nodes": nodes,
        "request": request
    })
}

#[derive(Default, Clone)]
struct Outcome {
    placed: usize,
    to_place: usize,
    std_dev: f64,
    vfw_shared: usize,
    ms: f64,
}

/// Metrics after applying `moves` (vm → destination) to the fleet.
fn measure(fleet: &Fleet, drained: &str, moves: &BTreeMap<String, String>) -> (f64, usize) {
    let mut used: BTreeMap<&str, u64> = BTreeMap::new();
    let mut vfws: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &fleet.vms {
        let n = moves.get(&v.name).map_or(v.node.as_str(), |d| d.as_str());
        *used.entry(n).or_default() += v.mem_mib;
        if v.kind == VmKind::Vfw {
            *vfws.entry(n).or_default() += 1;
        }
    }
    let utils: Vec<f64> = fleet
        .nodes
        .iter()
        .filter(|n| n.name != drained && n.accepts_vms())
        .map(|n| used.get(n.name.as_str()).copied().unwrap_or(0) as f64 / n.mem_capacity() as f64)
        .collect();
    let mean = utils.iter().sum::<f64>() / utils.len() as f64;
    let sd = (utils.iter().map(|u| (u - mean).powi(2)).sum::<f64>() / utils.len() as f64).sqrt();
    // Moved VFWs that share their destination with another VFW.
    let shared = fleet
        .vms
        .iter()
        .filter(|v| v.kind == VmKind::Vfw)
        .filter_map(|v| moves.get(&v.name))
        .filter(|d| vfws.get(d.as_str()).copied().unwrap_or(0) > 1)
        .count();
    (sd, shared)
}

fn ours(fleet: &Fleet, node: &str) -> Outcome {
    let to_place = fleet.vms.iter().filter(|v| v.node == node).count();
    let t = Instant::now();
    let res = plan_drain(fleet, node, &Limits::default());
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let moves: BTreeMap<String, String> = match &res {
        Ok(p) => p
            .moves
            .iter()
            .map(|m| (m.vm.clone(), m.to.clone()))
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    let (std_dev, vfw_shared) = measure(fleet, node, &moves);
    Outcome {
        placed: moves.len(),
        to_place,
        std_dev,
        vfw_shared,
        ms,
    }
}

fn hail(a: &Args, fleet: &Fleet, node: &str, dir: &std::path::Path) -> Result<Outcome, String> {
    let insts: Vec<&str> = fleet
        .vms
        .iter()
        .filter(|v| v.node == node)
        .map(|v| v.name.as_str())
        .collect();
    let req = json!({"type": "node-evacuate", "evac_mode": "primary-only", "instances": insts});
    let path = dir.join(format!("hail-{node}.json"));
    std::fs::write(&path, iallocator_input(fleet, req).to_string()).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let out = Command::new(&a.hail)
        .arg("--no-capacity-checks")
        .arg(&path)
        .output()
        .map_err(|e| format!("{}: {e}", a.hail))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("hail output: {e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    if v["success"] != json!(true) {
        return Err(format!("hail: {}", v["info"]));
    }
    // result = [moved [[inst, group, [nodes]]], failed [[inst, reason]], jobs]
    let mut moves = BTreeMap::new();
    for m in v["result"][0].as_array().into_iter().flatten() {
        if let (Some(i), Some(n)) = (m[0].as_str(), m[2][0].as_str()) {
            moves.insert(i.to_string(), n.to_string());
        }
    }
    let (std_dev, vfw_shared) = measure(fleet, node, &moves);
    Ok(Outcome {
        placed: moves.len(),
        to_place: insts.len(),
        std_dev,
        vfw_shared,
        ms,
    })
}

fn hroller_groups(a: &Args, fleet: &Fleet, dir: &std::path::Path) -> Result<(usize, f64), String> {
    let path = dir.join(format!("hroller-{}.json", fleet.vms.len()));
    let req = json!({"type": "node-evacuate", "evac_mode": "primary-only", "instances": []});
    std::fs::write(&path, iallocator_input(fleet, req).to_string()).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let out = Command::new(&a.hroller)
        .args(["--force", "--no-headers", "-I"])
        .arg(&path)
        .output()
        .map_err(|e| format!("{}: {e}", a.hroller))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").trim().to_string();
        return Err(format!("hroller: {last}"));
    }
    let groups = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    Ok((groups, ms))
}

fn main() {
    let a = args();
    let dir = std::env::temp_dir().join(format!("planner-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    println!(
        "Fleets: {} heterogeneous nodes, ~{} VMs (5% VFWs, 10% in anti-affinity groups), {} drains each.\n",
        a.nodes, a.vms, a.drains
    );
    println!("| util | tool | VMs placed | mem-util std-dev after | moved VFWs sharing a node | wall time per drain (median) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let mut rolling_rows = Vec::new();
    for util in [0.60, 0.85] {
        let fleet = synth::fleet(&Spec::new(a.nodes, a.vms, util, 2024));
        let fleet_json = serde_json::to_string(&fleet).expect("serialise");
        let t = Instant::now();
        let reparsed: Fleet = serde_json::from_str(&fleet_json).expect("parse");
        let parse_ms = t.elapsed().as_secs_f64() * 1e3;
        drop(reparsed);
        let picks: Vec<String> = (0..a.drains)
            .map(|i| synth::node_name(i * a.nodes / a.drains))
            .collect();
        let (mut o, mut h) = (Vec::new(), Vec::new());
        for node in &picks {
            o.push(ours(&fleet, node));
            match hail(&a, &fleet, node, &dir) {
                Ok(x) => h.push(x),
                Err(e) => eprintln!("hail failed on {node}: {e}"),
            }
        }
        let row = |name: &str, v: &[Outcome], extra: String| {
            if v.is_empty() {
                println!(
                    "| {:.0}% | {name} | (failed, see stderr) | | | |",
                    util * 100.0
                );
                return;
            }
            let placed: usize = v.iter().map(|x| x.placed).sum();
            let total: usize = v.iter().map(|x| x.to_place).sum();
            let sd = v.iter().map(|x| x.std_dev).sum::<f64>() / v.len() as f64;
            let shared: usize = v.iter().map(|x| x.vfw_shared).sum();
            let mut t: Vec<f64> = v.iter().map(|x| x.ms).collect();
            t.sort_by(|a, b| a.total_cmp(b));
            println!(
                "| {:.0}% | {name} | {placed}/{total} | {sd:.4} | {shared} | {:.1} ms{extra} |",
                util * 100.0,
                t[t.len() / 2]
            );
        };
        row(
            "nodemaint planner",
            &o,
            format!(" (+{parse_ms:.0} ms to parse the fleet file)"),
        );
        row("Ganeti hail", &h, String::new());
        let all: Vec<String> = fleet.nodes.iter().map(|n| n.name.clone()).collect();
        let t = Instant::now();
        let unlimited = plan_rolling(&fleet, &all, all.len()).expect("rolling");
        let t_unl = t.elapsed().as_secs_f64() * 1e3;
        let k5 = plan_rolling(&fleet, &all, 5).expect("rolling");
        let tenth = (all.len() / 10).max(1);
        let t = Instant::now();
        let k10 = plan_rolling(&fleet, &all, tenth).expect("rolling");
        let t_k10 = t.elapsed().as_secs_f64() * 1e3;
        rolling_rows.push((
            util,
            (unlimited.groups.len(), unlimited.undrainable.len(), t_unl),
            (k10.groups.len(), t_k10),
            k5.groups.len(),
            hroller_groups(&a, &fleet, &dir),
        ));
    }
    println!("\n| util | planner groups, K unlimited (undrainable) | planner time, K unlimited | planner groups, K=n/10 (time) | planner groups, K=5 | hroller groups | hroller time |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (util, (g, u, t), (g10, t10), k5, hr) in rolling_rows {
        let (hg, ht) = match hr {
            Ok((g, t)) => (g.to_string(), format!("{t:.0} ms")),
            Err(e) => (format!("failed ({e})"), "-".into()),
        };
        println!(
            "| {:.0}% | {g} ({u}) | {t:.0} ms | {g10} ({t10:.0} ms) | {k5} | {hg} | {ht} |",
            util * 100.0
        );
    }
    if std::env::var_os("PLANNER_COMPARE_KEEP").is_some() {
        eprintln!("inputs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
