//! Independent check of a drain plan against a fleet snapshot.
//!
//! Written without the engine (plain loops over the fleet), so the tests do
//! not grade the planner with its own code. The coordinator can also use it
//! to re-check a plan against a fresh snapshot before executing it.

use crate::model::{Fleet, Limits, Move, VmKind};
use std::collections::{BTreeMap, BTreeSet};

/// Moves in one wave: total, per source, per destination.
type WaveLoad<'a> = (usize, BTreeMap<&'a str, usize>, BTreeMap<&'a str, usize>);

/// Check that `moves` drain `node` of `fleet` under every hard constraint
/// and the wave `limits`. Returns the first violation found.
pub fn verify_drain(
    fleet: &Fleet,
    node: &str,
    limits: &Limits,
    moves: &[Move],
) -> Result<(), String> {
    let nodes: BTreeMap<&str, &crate::model::Node> =
        fleet.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    if !nodes.contains_key(node) {
        return Err(format!("unknown node {node}"));
    }
    // Every VM of the node exactly once, and nothing else.
    let expected: BTreeSet<&str> = fleet
        .vms
        .iter()
        .filter(|v| v.node == node)
        .map(|v| v.name.as_str())
        .collect();
    let mut seen = BTreeSet::new();
    for m in moves {
        if !seen.insert(m.vm.as_str()) {
            return Err(format!("{} moved twice", m.vm));
        }
        if !expected.contains(m.vm.as_str()) {
            return Err(format!("{} is not on {node}", m.vm));
        }
        if m.from != node {
            return Err(format!("{}: from {} instead of {node}", m.vm, m.from));
        }
        let Some(d) = nodes.get(m.to.as_str()) else {
            return Err(format!("{}: unknown destination {}", m.vm, m.to));
        };
        if m.to == node {
            return Err(format!("{}: destination is the drained node", m.vm));
        }
        if !d.accepts_vms() {
            return Err(format!(
                "{}: destination {} is {} / reachable={}",
                m.vm, m.to, d.status, d.reachable
            ));
        }
    }
    if seen.len() != expected.len() {
        let missing: Vec<&&str> = expected.difference(&seen).collect();
        return Err(format!("not moved: {missing:?}"));
    }
    // Final placement.
    let dest: BTreeMap<&str, &str> = moves
        .iter()
        .map(|m| (m.vm.as_str(), m.to.as_str()))
        .collect();
    let final_node = |v: &crate::model::Vm| -> String {
        dest.get(v.name.as_str())
            .map_or(v.node.clone(), |d| d.to_string())
    };
    let mut mem: BTreeMap<String, u64> = BTreeMap::new();
    let mut cpu: BTreeMap<String, u64> = BTreeMap::new();
    for v in &fleet.vms {
        let n = final_node(v);
        *mem.entry(n.clone()).or_default() += v.mem_mib;
        *cpu.entry(n).or_default() += u64::from(v.vcpus);
    }
    let receiving: BTreeSet<&str> = moves.iter().map(|m| m.to.as_str()).collect();
    for r in &receiving {
        let n = nodes[r];
        if mem[*r] > n.mem_capacity() {
            return Err(format!(
                "{r}: {} MiB reserved > capacity {}",
                mem[*r],
                n.mem_capacity()
            ));
        }
        if cpu[*r] > n.vcpu_capacity() {
            return Err(format!(
                "{r}: {} vCPUs reserved > capacity {}",
                cpu[*r],
                n.vcpu_capacity()
            ));
        }
    }
    // Anti-affinity for every moved VM.
    for m in moves {
        let v = fleet
            .vms
            .iter()
            .find(|v| v.name == m.vm)
            .expect("checked above");
        if let Some(g) = &v.anti_affinity {
            if let Some(o) = fleet.vms.iter().find(|o| {
                o.name != v.name && o.anti_affinity.as_ref() == Some(g) && final_node(o) == m.to
            }) {
                return Err(format!(
                    "{} and {} (group {g}) both on {}",
                    v.name, o.name, m.to
                ));
            }
        }
    }
    // Order: VFWs first in the list and in waves; waves sorted; limits.
    if let Some(first_user) = moves.iter().position(|m| m.kind == VmKind::User) {
        if moves[first_user..].iter().any(|m| m.kind == VmKind::Vfw) {
            return Err("a VFW is listed after a user VM".into());
        }
        let max_vfw = moves
            .iter()
            .filter(|m| m.kind == VmKind::Vfw)
            .map(|m| m.wave)
            .max();
        let min_user = moves
            .iter()
            .filter(|m| m.kind == VmKind::User)
            .map(|m| m.wave)
            .min();
        if let (Some(a), Some(b)) = (max_vfw, min_user) {
            if a > b {
                return Err(format!("a VFW in wave {a} after a user VM in wave {b}"));
            }
        }
    }
    for v in &fleet.vms {
        if let Some(m) = moves.iter().find(|m| m.vm == v.name) {
            if m.kind != v.kind {
                return Err(format!(
                    "{}: kind {} in the plan, {} in the fleet",
                    v.name, m.kind, v.kind
                ));
            }
        }
    }
    if moves.windows(2).any(|w| w[0].wave > w[1].wave) {
        return Err("moves not sorted by wave".into());
    }
    let mut per_wave: BTreeMap<u32, WaveLoad> = BTreeMap::new();
    for m in moves {
        let w = per_wave.entry(m.wave).or_default();
        w.0 += 1;
        *w.1.entry(m.from.as_str()).or_default() += 1;
        *w.2.entry(m.to.as_str()).or_default() += 1;
    }
    for (wave, (total, src, dst)) in &per_wave {
        if *total > limits.global
            || src.values().any(|&c| c > limits.per_source)
            || dst.values().any(|&c| c > limits.per_destination)
        {
            return Err(format!("wave {wave} exceeds the limits {limits:?}"));
        }
    }
    // Waves are numbered from 0 without gaps.
    if let Some((&last, _)) = per_wave.iter().next_back() {
        if last as usize + 1 != per_wave.len() {
            return Err("wave numbers have gaps".into());
        }
    }
    Ok(())
}
