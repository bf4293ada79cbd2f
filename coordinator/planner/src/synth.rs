//! Synthetic fleets and an exhaustive reference solver, for the tests and
//! `planner-bench`. Not part of the coordinator's API.
//!
//! Everything is deterministic: fleets come from a seeded SplitMix64, so a
//! benchmark figure can be reproduced from its seed.

use crate::model::{Fleet, Node, NodeStatus, Vm, VmKind};

/// SplitMix64: tiny, fast, good enough for generating test fleets.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// What fleet to generate.
#[derive(Clone, Debug)]
pub struct Spec {
    pub nodes: usize,
    pub vms: usize,
    /// Target memory utilisation (reserved / capacity) of the fleet.
    pub util: f64,
    /// Fraction of VMs that are VFWs (each of its own cloudspace).
    pub vfw_frac: f64,
    /// Fraction of user VMs in anti-affinity pairs.
    pub aa_frac: f64,
    pub seed: u64,
}

impl Spec {
    pub fn new(nodes: usize, vms: usize, util: f64, seed: u64) -> Self {
        Spec {
            nodes,
            vms,
            util,
            vfw_frac: 0.05,
            aa_frac: 0.1,
            seed,
        }
    }
}

/// Node names sort like their indices: `node00042`.
pub fn node_name(i: usize) -> String {
    format!("node{i:05}")
}

/// A heterogeneous fleet: node capacities weighted 1:2:3:4, VM sizes
/// 1–16 GiB (VFWs 512 MiB), total memory ≈ `util` × capacity. Each VM goes
/// to the roomier of two random nodes (so utilisation varies a little, as
/// in a real fleet), never beyond capacity, never next to a member of its
/// anti-affinity group. VMs that find no room are dropped, so `vms` may be
/// slightly smaller than asked for very high `util`.
pub fn fleet(spec: &Spec) -> Fleet {
    let mut rng = SplitMix64(spec.seed);
    const SIZES: [u64; 5] = [1024, 2048, 4096, 8192, 16384];
    const WEIGHTS: [u64; 5] = [3, 4, 5, 3, 1];
    let mut vms: Vec<Vm> = Vec::with_capacity(spec.vms);
    let mut aa_open: Option<(String, usize)> = None;
    let mut groups = 0usize;
    for i in 0..spec.vms {
        let mut vm = if rng.chance(spec.vfw_frac) {
            Vm {
                kind: VmKind::Vfw,
                cloudspace: Some(format!("cs{i}")),
                ..Vm::new(format!("vfw{i:06}"), "", 512, 1)
            }
        } else {
            let mut pick = rng.below(WEIGHTS.iter().sum());
            let mut k = 0;
            while pick >= WEIGHTS[k] {
                pick -= WEIGHTS[k];
                k += 1;
            }
            let mem = SIZES[k];
            let mut v = Vm::new(format!("vm{i:06}"), "", mem, (mem / 2048).max(1) as u32);
            v.cloudspace = Some(format!("cs{}", rng.below(spec.vms as u64 / 10 + 1)));
            v
        };
        if vm.kind == VmKind::User {
            if let Some((g, left)) = aa_open.take() {
                vm.anti_affinity = Some(g.clone());
                if left > 1 {
                    aa_open = Some((g, left - 1));
                }
            } else if rng.chance(spec.aa_frac / 2.5) {
                let g = format!("aa{groups}");
                groups += 1;
                vm.anti_affinity = Some(g.clone());
                aa_open = Some((g, 1 + rng.below(2) as usize));
            }
        }
        vms.push(vm);
    }
    let total: u64 = vms.iter().map(|v| v.mem_mib).sum();
    let weights: Vec<u64> = (0..spec.nodes).map(|_| 1 + rng.below(4)).collect();
    let wsum: u64 = weights.iter().sum();
    let per_weight = (total as f64 / spec.util.max(0.01) / wsum as f64).ceil() as u64;
    let mut nodes: Vec<Node> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            // Round up to 1 GiB; vCPUs: one core per 4 GiB, at least 8.
            let mem = (w * per_weight).div_ceil(1024).max(17) * 1024;
            Node::new(node_name(i), mem, ((mem / 4096) as u32).max(8))
        })
        .collect();
    let mut used = vec![0u64; nodes.len()];
    let mut used_cpu = vec![0u64; nodes.len()];
    let mut group_nodes: std::collections::HashMap<String, Vec<usize>> = Default::default();
    let mut kept = Vec::with_capacity(vms.len());
    for mut vm in vms {
        let ok = |n: usize,
                  used: &[u64],
                  used_cpu: &[u64],
                  gn: &std::collections::HashMap<String, Vec<usize>>| {
            used[n] + vm.mem_mib <= nodes[n].mem_capacity()
                && used_cpu[n] + u64::from(vm.vcpus) <= nodes[n].vcpu_capacity()
                && vm
                    .anti_affinity
                    .as_ref()
                    .is_none_or(|g| gn.get(g).is_none_or(|v| !v.contains(&n)))
        };
        let room = |n: usize, used: &[u64]| nodes[n].mem_capacity() as i64 - used[n] as i64;
        let mut chosen = None;
        for _ in 0..64 {
            let a = rng.below(nodes.len() as u64) as usize;
            let b = rng.below(nodes.len() as u64) as usize;
            let n = if room(a, &used) >= room(b, &used) {
                a
            } else {
                b
            };
            if ok(n, &used, &used_cpu, &group_nodes) {
                chosen = Some(n);
                break;
            }
        }
        let Some(n) = chosen else { continue };
        used[n] += vm.mem_mib;
        used_cpu[n] += u64::from(vm.vcpus);
        if let Some(g) = &vm.anti_affinity {
            group_nodes.entry(g.clone()).or_default().push(n);
        }
        vm.node = nodes[n].name.clone();
        kept.push(vm);
    }
    for n in &mut nodes {
        n.status = NodeStatus::Enabled;
    }
    Fleet { nodes, vms: kept }
}

/// Memory utilisation of a node as an exact fraction `(reserved, capacity)`.
pub type Frac = (u64, u64);

fn lt(a: Frac, b: Frac) -> bool {
    u128::from(a.0) * u128::from(b.1) < u128::from(b.0) * u128::from(a.1)
}

/// Highest memory utilisation among the nodes that receive at least one VM
/// of `moves`, after applying them (None for an empty plan).
pub fn max_dest_util(fleet: &Fleet, moves: &[crate::model::Move]) -> Option<Frac> {
    let mut best: Option<Frac> = None;
    for d in moves.iter().map(|m| m.to.as_str()) {
        let n = fleet.nodes.iter().find(|n| n.name == d)?;
        let used: u64 = fleet
            .vms
            .iter()
            .filter(|v| {
                moves
                    .iter()
                    .find(|m| m.vm == v.name)
                    .map_or(v.node.as_str(), |m| m.to.as_str())
                    == d
            })
            .map(|v| v.mem_mib)
            .sum();
        let f = (used, n.mem_capacity().max(1));
        if best.is_none_or(|b| lt(b, f)) {
            best = Some(f);
        }
    }
    best
}

/// Exhaustive drain of `node` under the hard constraints (capacity with
/// ratios, ENABLED + reachable destinations, anti-affinity). Returns None
/// when no assignment exists, else the least achievable highest destination
/// utilisation (`(0, 1)` for an empty node). Branch and bound; exponential,
/// meant for ≤ 8 nodes and ≤ 8 VMs.
pub fn exhaustive_drain(fleet: &Fleet, node: &str) -> Option<Frac> {
    let cand: Vec<usize> = (0..fleet.nodes.len())
        .filter(|&i| fleet.nodes[i].name != node && fleet.nodes[i].accepts_vms())
        .collect();
    let mut vms: Vec<&Vm> = fleet.vms.iter().filter(|v| v.node == node).collect();
    vms.sort_by_key(|v| std::cmp::Reverse(v.mem_mib));
    if vms.is_empty() {
        return Some((0, 1));
    }
    let mut mem: Vec<u64> = vec![0; fleet.nodes.len()];
    let mut cpu: Vec<u64> = vec![0; fleet.nodes.len()];
    let mut groups: Vec<Vec<&str>> = vec![Vec::new(); fleet.nodes.len()];
    for v in &fleet.vms {
        let i = fleet.nodes.iter().position(|n| n.name == v.node)?;
        mem[i] += v.mem_mib;
        cpu[i] += u64::from(v.vcpus);
        if let Some(g) = &v.anti_affinity {
            groups[i].push(g);
        }
    }
    struct S<'a> {
        fleet: &'a Fleet,
        cand: Vec<usize>,
        vms: Vec<&'a Vm>,
        mem: Vec<u64>,
        cpu: Vec<u64>,
        groups: Vec<Vec<&'a str>>,
        best: Option<Frac>,
    }
    fn rec(s: &mut S, k: usize, cur: Option<Frac>) {
        if let (Some(b), Some(c)) = (s.best, cur) {
            if !lt(c, b) {
                return; // cannot improve
            }
        }
        if k == s.vms.len() {
            s.best = cur;
            return;
        }
        let v = s.vms[k];
        for ci in 0..s.cand.len() {
            let n = s.cand[ci];
            let node = &s.fleet.nodes[n];
            if s.mem[n] + v.mem_mib > node.mem_capacity()
                || s.cpu[n] + u64::from(v.vcpus) > node.vcpu_capacity()
                || v.anti_affinity
                    .as_deref()
                    .is_some_and(|g| s.groups[n].contains(&g))
            {
                continue;
            }
            s.mem[n] += v.mem_mib;
            s.cpu[n] += u64::from(v.vcpus);
            if let Some(g) = v.anti_affinity.as_deref() {
                s.groups[n].push(g);
            }
            let f = (s.mem[n], node.mem_capacity().max(1));
            let next = match cur {
                Some(c) if !lt(c, f) => Some(c),
                _ => Some(f),
            };
            rec(s, k + 1, next);
            if v.anti_affinity.is_some() {
                s.groups[n].pop();
            }
            s.mem[n] -= v.mem_mib;
            s.cpu[n] -= u64::from(v.vcpus);
        }
    }
    let mut s = S {
        fleet,
        cand,
        vms,
        mem,
        cpu,
        groups,
        best: None,
    };
    rec(&mut s, 0, None);
    s.best
}
