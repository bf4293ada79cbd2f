//! Rolling maintenance order: which nodes may be down together.
//!
//! A *group* of at most K nodes is valid when, with all of the group's nodes
//! unavailable at once, every VM on them fits on the remaining ENABLED,
//! reachable nodes under every hard constraint (same rules as a drain:
//! memory and vCPUs with their ratios, anti-affinity). Each group is checked
//! against the snapshot as given: we assume the fleet is back to a
//! comparable state between groups (drained VMs may stay where they went,
//! and the maintained node comes back empty).
//!
//! Packing is greedy *first fit decreasing*: nodes sorted by reserved memory,
//! heaviest first (hard-to-place nodes get the emptiest groups), each joins
//! the first open group (fewer than K nodes) with which the group stays
//! valid, else opens a new group. To bound the time, a node tries at most
//! [`MAX_TRIES`] open groups. This is not guaranteed minimal (the problem is
//! bin packing with a placement oracle), but it matches `ceil(n/K)` whenever
//! spare capacity is not the bottleneck.
//!
//! ## Checking a candidate group incrementally
//! Every open group keeps a *witness*: where each of its VMs goes, and the
//! resulting reservations on the other nodes (only the nodes it touched are
//! stored; a group that touched many nodes also keeps them in an ordered set
//! by free memory). Trying node n on a group:
//! 1. necessary condition in O(1): the group's memory and vCPUs, plus n's,
//!    fit in the free memory and vCPUs of the nodes that stay;
//! 2. the group's VMs that the witness put on n are evicted, n joins, and
//!    those VMs plus n's own are placed, largest first, each on the node
//!    where it fits tightest (best fit: a node's free memory stays whole for
//!    as long as possible, so big VMs still fit late). Cost: O(log nodes)
//!    per VM, instead of re-placing every VM of the group;
//! 3. if that fails, the whole group is re-placed largest first (a global
//!    first-fit-decreasing, within a work budget);
//! 4. if that fails too and the group is small, the full placement engine
//!    (greedy, fallbacks, bounded exhaustive search) decides: the check the
//!    planner used before (kept as [`plan_reference`]). On small fleets this
//!    makes the groups identical to the reference's.
//!
//! A failed trial is undone from a log of its operations. Whatever path
//! accepts a node, the witness is a complete placement of the group's VMs,
//! so every group is drainable by construction.
//!
//! A node that cannot be drained even alone (unreachable, ERROR or
//! DECOMMISSIONED, or its VMs do not fit elsewhere) is reported in
//! `undrainable` with the reason and left out of the groups.

use crate::engine::{placement_order, Catalog, FxMap, Index, Problem, Req};
use crate::error::PlanError;
use crate::model::{NodeStatus, RollingPlan, Undrainable};
use std::collections::BTreeSet;

/// Open groups a node tries before opening a new one.
pub const MAX_TRIES: usize = 16;

/// Exhaustive-search budget when checking a candidate group (a node alone
/// gets the full default budget).
const GROUP_SEARCH_BUDGET: u64 = 200_000;
const ALONE_SEARCH_BUDGET: u64 = 2_000_000;

/// A group that touched more nodes than this keeps its own ordered set of
/// candidates (O(log n) per choice); below it, the fleet-wide order plus the
/// few touched nodes is cheaper to keep.
const DENSE_AFTER: usize = 192;

/// Step 4 (the full engine, whose bounded search costs up to
/// [`GROUP_SEARCH_BUDGET`] evaluations whatever the group) only for groups
/// with at most this many VM × candidate pairs, and at most
/// [`FULL_CHECKS`] times per plan: enough for every trial on a small fleet,
/// a bounded cost on a large one.
const FULL_CHECK_MAX_WORK: u64 = 1 << 12;
const FULL_CHECKS: u32 = 256;

/// Step 3 (re-placing a whole group) within this many VM placements per VM
/// of the nodes to plan, or at least [`REBUILD_BUDGET_MIN`].
const REBUILD_BUDGET_PER_VM: u64 = 2;
const REBUILD_BUDGET_MIN: u64 = 50_000;

const NO_GROUP: u32 = u32::MAX;

/// Debug builds check every witness against the fleet on fleets up to this
/// many VMs.
#[cfg(debug_assertions)]
const DEBUG_CHECK_MAX_VMS: usize = 20_000;

/// The nodes to plan (deduplicated, name order) and, for each node, the VMs
/// on it (only for those nodes).
fn prepare(idx: &Index, nodes: &[String]) -> Result<(Vec<u32>, Vec<Vec<u32>>), PlanError> {
    let mut set = Vec::with_capacity(nodes.len());
    for n in nodes {
        set.push(idx.node(n)?);
    }
    set.sort_unstable_by_key(|&n| idx.rank[n as usize]);
    set.dedup();
    let mut in_set = vec![false; idx.cap.len()];
    for &n in &set {
        in_set[n as usize] = true;
    }
    let mut vms_of: Vec<Vec<u32>> = vec![Vec::new(); idx.cap.len()];
    for (i, &n) in idx.vm_node.iter().enumerate() {
        if in_set[n as usize] {
            vms_of[n as usize].push(i as u32);
        }
    }
    Ok((set, vms_of))
}

/// The full check: one placement problem with every VM of the group.
struct Full<'i, 'a> {
    idx: &'i Index<'a>,
    cat: Catalog<'a>,
    vms_of: &'i [Vec<u32>],
}

impl<'i, 'a> Full<'i, 'a> {
    /// The group's VMs in the problem's request order, and the problem.
    fn problem(&self, group: &[u32], budget: u64) -> (Vec<u32>, Problem<'i, 'a>) {
        let fleet = self.idx.fleet;
        let vms: Vec<u32> = group
            .iter()
            .flat_map(|&n| self.vms_of[n as usize].iter().copied())
            .collect();
        let reqs: Vec<Req> = vms
            .iter()
            .map(|&i| Req::of(&fleet.vms[i as usize]))
            .collect();
        let order = placement_order(&reqs);
        let vms = order.iter().map(|&i| vms[i]).collect();
        let mut p = Problem::new(self.idx, &self.cat, reqs, group);
        p.search_budget = budget;
        (vms, p)
    }

    /// Where each VM of the group goes, if the engine finds a placement.
    fn solve(&self, group: &[u32], budget: u64) -> Option<Vec<(u32, u32)>> {
        let (vms, p) = self.problem(group, budget);
        let a = p.solve(false).ok()?;
        Some(vms.into_iter().zip(a).collect())
    }

    /// Why node `n` cannot be drained alone, if it cannot. `fast_ok`: the
    /// incremental check already placed its VMs.
    fn alone(&self, n: u32, fast_ok: bool) -> Result<Option<Vec<(u32, u32)>>, String> {
        let node = &self.idx.fleet.nodes[n as usize];
        match node.status {
            NodeStatus::Error | NodeStatus::Decommissioned => {
                return Err(format!("node status is {}", node.status))
            }
            _ if !node.reachable => {
                return Err("node is unreachable: its VMs cannot be migrated".into())
            }
            _ if fast_ok => return Ok(None),
            _ => {}
        }
        let (vms, p) = self.problem(&[n], ALONE_SEARCH_BUDGET);
        match p.solve(false) {
            Ok(a) => Ok(Some(vms.into_iter().zip(a).collect())),
            Err(failed) => {
                let shown: Vec<String> = failed
                    .iter()
                    .take(3)
                    .map(|(r, why)| format!("{} ({why})", p.reqs[*r].name))
                    .collect();
                Err(format!(
                    "even alone, {} of its {} VM(s) cannot be placed elsewhere: {}{}",
                    failed.len(),
                    p.reqs.len(),
                    shown.join("; "),
                    if failed.len() > 3 { "; …" } else { "" }
                ))
            }
        }
    }
}

fn check_k(max_unavailable: usize) -> Result<(), PlanError> {
    if max_unavailable == 0 {
        return Err(PlanError::InvalidRequest(
            "max_unavailable must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Heaviest first; name order among equals.
fn ffd_order(idx: &Index, drainable: &mut [u32]) {
    drainable.sort_by(|&a, &b| {
        idx.base[b as usize]
            .mem
            .cmp(&idx.base[a as usize].mem)
            .then(idx.rank[a as usize].cmp(&idx.rank[b as usize]))
    });
}

fn named(idx: &Index, groups: Vec<Vec<u32>>) -> Vec<Vec<String>> {
    groups
        .into_iter()
        .map(|mut g| {
            g.sort_unstable_by_key(|&n| idx.rank[n as usize]);
            g.into_iter().map(|n| idx.name(n).to_string()).collect()
        })
        .collect()
}

pub(crate) fn plan(
    idx: &Index,
    nodes: &[String],
    max_unavailable: usize,
) -> Result<RollingPlan, PlanError> {
    plan_with_stats(idx, nodes, max_unavailable).map(|(p, _)| p)
}

/// How the trials of [`plan`] were decided (for the benchmark and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RollingStats {
    /// Trials rejected by the O(1) totals check.
    pub quick_rejects: u64,
    /// Trials accepted by placing only the joining node's and evicted VMs.
    pub incremental: u64,
    /// Trials accepted by re-placing the whole group.
    pub rebuilt: u64,
    /// Trials accepted by the full engine.
    pub full: u64,
    /// Trials rejected after every step that applied.
    pub rejected: u64,
    /// Groups that touched enough nodes to keep their own ordered set.
    pub dense_groups: u64,
}

pub(crate) fn plan_with_stats(
    idx: &Index,
    nodes: &[String],
    max_unavailable: usize,
) -> Result<(RollingPlan, RollingStats), PlanError> {
    plan_inner(idx, nodes, max_unavailable, |_, _| {})
}

/// For tests: the plan and, for every group still open at the end (all of
/// them when K is unlimited), its witness as (VM index, destination node).
#[cfg(test)]
pub(crate) fn plan_with_witnesses(
    idx: &Index,
    nodes: &[String],
    max_unavailable: usize,
) -> (RollingPlan, Vec<Vec<(u32, u32)>>) {
    let mut w = Vec::new();
    let (p, _) = plan_inner(idx, nodes, max_unavailable, |fast, g| {
        w.push(fast.placed(g))
    })
    .expect("valid request");
    (p, w)
}

fn plan_inner(
    idx: &Index,
    nodes: &[String],
    max_unavailable: usize,
    mut at_end: impl FnMut(&Fast, &Group),
) -> Result<(RollingPlan, RollingStats), PlanError> {
    check_k(max_unavailable)?;
    let mut stats = RollingStats::default();
    let (set, vms_of) = prepare(idx, nodes)?;
    let full = Full {
        idx,
        cat: Catalog::build(idx, None),
        vms_of: &vms_of,
    };
    let fast = Fast::new(idx, &vms_of);

    let mut out = RollingPlan::default();
    let mut drainable = Vec::new();
    // Nodes whose VMs only the full engine could place alone: its placement.
    let mut witness: FxMap<u32, Vec<(u32, u32)>> = FxMap::default();
    for &n in &set {
        let fast_ok = idx.fleet.nodes[n as usize].reachable && {
            let mut g = fast.group();
            fast.incremental(&mut g, n)
        };
        match full.alone(n, fast_ok) {
            Ok(w) => {
                if let Some(w) = w {
                    witness.insert(n, w);
                }
                drainable.push(n);
            }
            Err(reason) => out.undrainable.push(Undrainable {
                node: idx.name(n).to_string(),
                reason,
            }),
        }
    }

    ffd_order(idx, &mut drainable);
    let total_vms: u64 = set.iter().map(|&n| vms_of[n as usize].len() as u64).sum();
    let mut budget = Budget {
        rebuild: (REBUILD_BUDGET_PER_VM * total_vms).max(REBUILD_BUDGET_MIN),
        full: FULL_CHECKS,
    };
    let mut groups: Vec<Vec<u32>> = Vec::new();
    let mut states: Vec<Option<Group>> = Vec::new();
    let mut open: Vec<usize> = Vec::new(); // indices into `groups`, oldest first
    for n in drainable {
        let mut joined = false;
        if max_unavailable > 1 {
            for (oi, &gi) in open.iter().enumerate().take(MAX_TRIES) {
                let g = states[gi].as_mut().expect("open groups have a state");
                if fast.try_join(g, n, &full, &mut budget, &mut stats) {
                    groups[gi].push(n);
                    // O(VMs) per join: debug builds on test-sized fleets.
                    #[cfg(debug_assertions)]
                    if idx.fleet.vms.len() <= DEBUG_CHECK_MAX_VMS {
                        fast.check(g).expect("the witness is a valid placement");
                    }
                    if groups[gi].len() == max_unavailable {
                        open.remove(oi);
                        states[gi] = None; // closed: its witness is no longer needed
                    }
                    joined = true;
                    break;
                }
            }
        }
        if !joined {
            if max_unavailable > 1 {
                let mut g = fast.group();
                match witness.get(&n) {
                    Some(w) => fast.adopt(&mut g, n, w),
                    None => assert!(
                        fast.incremental(&mut g, n),
                        "the alone check placed this node's VMs"
                    ),
                }
                states.push(Some(g));
                open.push(groups.len());
            } else {
                states.push(None);
            }
            groups.push(vec![n]);
        }
    }
    for g in states.iter().flatten() {
        at_end(&fast, g);
    }
    out.groups = named(idx, groups);
    Ok((out, stats))
}

struct Budget {
    rebuild: u64,
    full: u32,
}

/// Fleet-wide facts for the incremental checks.
struct Fast<'i, 'a> {
    idx: &'i Index<'a>,
    vms_of: &'i [Vec<u32>],
    /// Anti-affinity group of each VM (interned), or [`NO_GROUP`].
    aa: Vec<u32>,
    /// Per anti-affinity group, the nodes hosting a member (sorted).
    aa_nodes: Vec<Vec<u32>>,
    free_mem: Vec<u64>,
    free_cpu: Vec<u64>,
    /// Eligible nodes by (free memory, name rank), and their free memory.
    order: Vec<u32>,
    order_free: Vec<u64>,
    by_rank: Vec<u32>,
    /// Sums in u128: capacities come from operators' files, and a sum of
    /// u64 values can overflow where each value does not.
    total_free_mem: u128,
    total_free_cpu: u128,
}

/// A group's witness placement. Only touched nodes (members and nodes that
/// received a VM) have a slot.
struct Group {
    members: Vec<u32>,
    need_mem: u128,
    need_cpu: u128,
    /// Free memory and vCPUs of the eligible non-member nodes (before the
    /// group's placements).
    rest_mem: u128,
    rest_cpu: u128,
    slots: Vec<Slot>,
    at: FxMap<u32, u32>,
    aa_used: FxMap<(u32, u32), ()>,
    /// (free memory now, name rank) of every candidate, once the group
    /// touched more than [`DENSE_AFTER`] nodes.
    dense: Option<BTreeSet<(u64, u32)>>,
    log: Vec<Op>,
}

#[derive(Default)]
struct Slot {
    node: u32,
    mem: u64,
    cpu: u64,
    member: bool,
    vms: Vec<u32>,
}

#[derive(Clone, Copy)]
enum Op {
    Place(u32, u32),
    Unplace(u32, u32),
    Join(u32),
}

impl<'i, 'a> Fast<'i, 'a> {
    fn new(idx: &'i Index<'a>, vms_of: &'i [Vec<u32>]) -> Self {
        let fleet = idx.fleet;
        let n = idx.cap.len();
        let mut names: FxMap<&str, u32> = FxMap::default();
        let mut aa = vec![NO_GROUP; fleet.vms.len()];
        let mut aa_nodes: Vec<Vec<u32>> = Vec::new();
        for &i in &idx.tagged {
            if let Some(g) = fleet.vms[i as usize].anti_affinity.as_deref() {
                let next = names.len() as u32;
                let id = *names.entry(g).or_insert(next);
                if id == next {
                    aa_nodes.push(Vec::new());
                }
                aa[i as usize] = id;
                aa_nodes[id as usize].push(idx.vm_node[i as usize]);
            }
        }
        for v in &mut aa_nodes {
            v.sort_unstable();
        }
        let free_mem: Vec<u64> = (0..n)
            .map(|i| idx.cap[i].mem.saturating_sub(idx.base[i].mem))
            .collect();
        let free_cpu: Vec<u64> = (0..n)
            .map(|i| idx.cap[i].vcpu.saturating_sub(idx.base[i].vcpu))
            .collect();
        let mut order: Vec<u32> = (0..n as u32)
            .filter(|&i| idx.eligible[i as usize])
            .collect();
        order.sort_unstable_by_key(|&i| (free_mem[i as usize], idx.rank[i as usize]));
        let order_free = order.iter().map(|&i| free_mem[i as usize]).collect();
        let mut by_rank = vec![0u32; n];
        for i in 0..n {
            by_rank[idx.rank[i] as usize] = i as u32;
        }
        let total_free_mem = order
            .iter()
            .map(|&i| u128::from(free_mem[i as usize]))
            .sum();
        let total_free_cpu = order
            .iter()
            .map(|&i| u128::from(free_cpu[i as usize]))
            .sum();
        Fast {
            idx,
            vms_of,
            aa,
            aa_nodes,
            free_mem,
            free_cpu,
            order,
            order_free,
            by_rank,
            total_free_mem,
            total_free_cpu,
        }
    }

    fn group(&self) -> Group {
        Group {
            members: Vec::new(),
            need_mem: 0,
            need_cpu: 0,
            rest_mem: self.total_free_mem,
            rest_cpu: self.total_free_cpu,
            slots: Vec::new(),
            at: FxMap::default(),
            aa_used: FxMap::default(),
            dense: None,
            log: Vec::new(),
        }
    }

    fn mem(&self, vm: u32) -> u64 {
        self.idx.fleet.vms[vm as usize].mem_mib
    }

    fn cpu(&self, vm: u32) -> u64 {
        u64::from(self.idx.fleet.vms[vm as usize].vcpus)
    }

    fn slot<'g>(&self, g: &'g Group, n: u32) -> Option<&'g Slot> {
        g.at.get(&n).map(|&s| &g.slots[s as usize])
    }

    fn slot_mut<'g>(&self, g: &'g mut Group, n: u32) -> &'g mut Slot {
        let next = g.slots.len() as u32;
        let s = *g.at.entry(n).or_insert(next);
        if s == next {
            g.slots.push(Slot {
                node: n,
                ..Slot::default()
            });
        }
        &mut g.slots[s as usize]
    }

    /// Free memory of candidate `n` after the group's placements.
    fn free_now(&self, g: &Group, n: u32) -> u64 {
        self.free_mem[n as usize] - self.slot(g, n).map_or(0, |s| s.mem)
    }

    /// Whether `vm` fits on `n` for vCPUs and anti-affinity (memory is
    /// checked by the caller's order).
    fn fits_rest(&self, g: &Group, vm: u32, n: u32, slot: Option<&Slot>) -> bool {
        let cpu_used = slot.map_or(0, |s| s.cpu);
        if self.free_cpu[n as usize] - cpu_used < self.cpu(vm) {
            return false;
        }
        let a = self.aa[vm as usize];
        a == NO_GROUP
            || (self.aa_nodes[a as usize].binary_search(&n).is_err()
                && !g.aa_used.contains_key(&(a, n)))
    }

    /// Best fit: the candidate with the least free memory that still fits
    /// `vm` (ties: name order).
    fn choose(&self, g: &Group, vm: u32) -> Option<u32> {
        let q = self.mem(vm);
        let rank = |n: u32| self.idx.rank[n as usize];
        if let Some(set) = &g.dense {
            return set
                .range((q, 0)..)
                .map(|&(_, r)| self.by_rank[r as usize])
                .find(|&n| self.fits_rest(g, vm, n, self.slot(g, n)));
        }
        let mut best: Option<(u64, u32, u32)> = None;
        for s in &g.slots {
            let n = s.node;
            if s.member || !self.idx.eligible[n as usize] {
                continue;
            }
            let free = self.free_mem[n as usize] - s.mem;
            if free < q || !self.fits_rest(g, vm, n, Some(s)) {
                continue;
            }
            let key = (free, rank(n), n);
            if best.is_none_or(|b| key < b) {
                best = Some(key);
            }
        }
        let start = self.order_free.partition_point(|&f| f < q);
        for &n in &self.order[start..] {
            let key = (self.free_mem[n as usize], rank(n), n);
            if best.is_some_and(|b| key > b) {
                break;
            }
            if g.at.contains_key(&n) || !self.fits_rest(g, vm, n, None) {
                continue;
            }
            best = Some(key);
            break;
        }
        best.map(|(_, _, n)| n)
    }

    fn place(&self, g: &mut Group, vm: u32, n: u32) {
        let (m, c, a) = (self.mem(vm), self.cpu(vm), self.aa[vm as usize]);
        let before = self.free_now(g, n);
        let s = self.slot_mut(g, n);
        s.mem += m;
        s.cpu += c;
        s.vms.push(vm);
        if a != NO_GROUP {
            g.aa_used.insert((a, n), ());
        }
        let r = self.idx.rank[n as usize];
        if let Some(set) = &mut g.dense {
            set.remove(&(before, r));
            set.insert((before - m, r));
        }
        g.log.push(Op::Place(vm, n));
    }

    fn unplace(&self, g: &mut Group, vm: u32, n: u32) {
        let (m, c, a) = (self.mem(vm), self.cpu(vm), self.aa[vm as usize]);
        let before = self.free_now(g, n);
        let s = self.slot_mut(g, n);
        s.mem -= m;
        s.cpu -= c;
        let i = s.vms.iter().position(|&v| v == vm).expect("placed here");
        s.vms.swap_remove(i);
        let member = s.member;
        if a != NO_GROUP {
            g.aa_used.remove(&(a, n));
        }
        let r = self.idx.rank[n as usize];
        if let (Some(set), false) = (&mut g.dense, member) {
            set.remove(&(before, r));
            set.insert((before + m, r));
        }
        g.log.push(Op::Unplace(vm, n));
    }

    fn join(&self, g: &mut Group, n: u32) {
        let free = self.free_now(g, n);
        let (m, c) = self.node_need(n);
        self.slot_mut(g, n).member = true;
        g.members.push(n);
        g.need_mem += m;
        g.need_cpu += c;
        if self.idx.eligible[n as usize] {
            g.rest_mem -= u128::from(self.free_mem[n as usize]);
            g.rest_cpu -= u128::from(self.free_cpu[n as usize]);
            if let Some(set) = &mut g.dense {
                set.remove(&(free, self.idx.rank[n as usize]));
            }
        }
        g.log.push(Op::Join(n));
    }

    fn unjoin(&self, g: &mut Group, n: u32) {
        let (m, c) = self.node_need(n);
        assert_eq!(g.members.pop(), Some(n), "joins are undone last first");
        self.slot_mut(g, n).member = false;
        g.need_mem -= m;
        g.need_cpu -= c;
        if self.idx.eligible[n as usize] {
            g.rest_mem += u128::from(self.free_mem[n as usize]);
            g.rest_cpu += u128::from(self.free_cpu[n as usize]);
            let free = self.free_now(g, n);
            if let Some(set) = &mut g.dense {
                set.insert((free, self.idx.rank[n as usize]));
            }
        }
    }

    fn node_need(&self, n: u32) -> (u128, u128) {
        self.vms_of[n as usize].iter().fold((0, 0), |(m, c), &v| {
            (m + u128::from(self.mem(v)), c + u128::from(self.cpu(v)))
        })
    }

    /// Undo the operations logged since `mark`.
    fn undo(&self, g: &mut Group, mark: usize) {
        while g.log.len() > mark {
            match g.log.pop().expect("non-empty") {
                Op::Place(vm, n) => {
                    self.unplace(g, vm, n);
                    g.log.pop();
                }
                Op::Unplace(vm, n) => {
                    self.place(g, vm, n);
                    g.log.pop();
                }
                Op::Join(n) => self.unjoin(g, n),
            }
        }
    }

    /// Switch to the ordered set once the touched nodes make the linear
    /// part of [`Fast::choose`] expensive.
    fn densify(&self, g: &mut Group) {
        if g.dense.is_some() || g.slots.len() <= DENSE_AFTER {
            return;
        }
        let set: BTreeSet<(u64, u32)> = self
            .order
            .iter()
            .filter(|&&n| self.slot(g, n).is_none_or(|s| !s.member))
            .map(|&n| (self.free_now(g, n), self.idx.rank[n as usize]))
            .collect();
        g.dense = Some(set);
    }

    /// Place `vms` largest first; false (nothing undone) if one does not fit.
    fn place_all(&self, g: &mut Group, mut vms: Vec<u32>) -> bool {
        vms.sort_unstable_by(|&a, &b| {
            self.mem(b)
                .cmp(&self.mem(a))
                .then(self.cpu(b).cmp(&self.cpu(a)))
                .then(a.cmp(&b))
        });
        for vm in vms {
            match self.choose(g, vm) {
                Some(d) => self.place(g, vm, d),
                None => return false,
            }
        }
        true
    }

    /// Necessary condition: the totals fit in what the other nodes have free.
    fn quick_reject(&self, g: &Group, n: u32) -> bool {
        let (m, c) = self.node_need(n);
        let (fm, fc) = if self.idx.eligible[n as usize] {
            (
                u128::from(self.free_mem[n as usize]),
                u128::from(self.free_cpu[n as usize]),
            )
        } else {
            (0, 0)
        };
        g.need_mem + m > g.rest_mem - fm || g.need_cpu + c > g.rest_cpu - fc
    }

    /// Step 2: n joins; the VMs the witness put on n and n's own VMs are
    /// placed. Undone on failure.
    fn incremental(&self, g: &mut Group, n: u32) -> bool {
        if self.quick_reject(g, n) {
            return false;
        }
        self.densify(g);
        let evicted: Vec<(u32, u32)> = self
            .slot(g, n)
            .map_or_else(Vec::new, |s| s.vms.iter().map(|&v| (v, n)).collect());
        self.reseat(g, n, evicted)
    }

    /// Debug builds: check a witness against the fleet itself (not the
    /// incremental bookkeeping): each VM of the members placed exactly once,
    /// on an eligible non-member, within capacity, anti-affinity respected.
    #[cfg(debug_assertions)]
    fn check(&self, g: &Group) -> Result<(), String> {
        let fleet = self.idx.fleet;
        let mut want: Vec<u32> = g
            .members
            .iter()
            .flat_map(|&m| self.vms_of[m as usize].iter().copied())
            .collect();
        let mut got: Vec<(u32, u32)> = self.placed(g);
        want.sort_unstable();
        let mut vms: Vec<u32> = got.iter().map(|&(v, _)| v).collect();
        vms.sort_unstable();
        if vms != want {
            return Err(format!("placed {vms:?}, group has {want:?}"));
        }
        got.sort_unstable_by_key(|&(v, d)| (d, v));
        // The snapshot's VMs on each destination, in one pass.
        let mut before: FxMap<u32, Vec<usize>> =
            got.iter().map(|&(_, d)| (d, Vec::new())).collect();
        for (i, n) in self.idx.vm_node.iter().enumerate() {
            if let Some(v) = before.get_mut(n) {
                v.push(i);
            }
        }
        for chunk in got.chunk_by(|a, b| a.1 == b.1) {
            let d = chunk[0].1;
            if !self.idx.eligible[d as usize] || g.members.contains(&d) {
                return Err(format!("{} is not a destination", self.idx.name(d)));
            }
            let on_d = || {
                before[&d]
                    .iter()
                    .copied()
                    .chain(chunk.iter().map(|&(v, _)| v as usize))
            };
            let mem: u64 = on_d().map(|i| fleet.vms[i].mem_mib).sum();
            let cpu: u64 = on_d().map(|i| u64::from(fleet.vms[i].vcpus)).sum();
            let (cap, base) = (self.idx.cap[d as usize], self.idx.base[d as usize]);
            let added: (u64, u64) = chunk
                .iter()
                .fold((0, 0), |(m, c), &(v, _)| (m + self.mem(v), c + self.cpu(v)));
            if (added.0 > 0 && mem > cap.mem.max(base.mem))
                || (added.1 > 0 && cpu > cap.vcpu.max(base.vcpu))
            {
                return Err(format!("{} over capacity", self.idx.name(d)));
            }
            // A placed VM shares d with no other member of its group (the
            // snapshot may already hold two members together: not ours).
            for &(v, _) in chunk {
                let a = fleet.vms[v as usize].anti_affinity.as_deref();
                if a.is_some()
                    && on_d().any(|i| i != v as usize && fleet.vms[i].anti_affinity.as_deref() == a)
                {
                    return Err(format!("anti-affinity broken on {}", self.idx.name(d)));
                }
            }
        }
        Ok(())
    }

    /// Every placed VM of the group, in slot order.
    fn placed(&self, g: &Group) -> Vec<(u32, u32)> {
        g.slots
            .iter()
            .flat_map(|s| s.vms.iter().map(move |&v| (v, s.node)))
            .collect()
    }

    /// Step 3: re-place the whole group with n, largest first.
    fn rebuild(&self, g: &mut Group, n: u32) -> bool {
        let placed = self.placed(g);
        self.reseat(g, n, placed)
    }

    /// Steps 2 and 3 alike: take the `evicted` (VM, node) placements back,
    /// let n join, place those VMs and n's own; kept on success, undone on
    /// failure.
    fn reseat(&self, g: &mut Group, n: u32, evicted: Vec<(u32, u32)>) -> bool {
        g.log.clear();
        for &(vm, d) in &evicted {
            self.unplace(g, vm, d);
        }
        self.join(g, n);
        let mut vms: Vec<u32> = evicted.into_iter().map(|(v, _)| v).collect();
        vms.extend_from_slice(&self.vms_of[n as usize]);
        if self.place_all(g, vms) {
            g.log.clear();
            true
        } else {
            self.undo(g, 0);
            false
        }
    }

    /// n joins with the placement `w` of the whole group (found by the full
    /// engine).
    fn adopt(&self, g: &mut Group, n: u32, w: &[(u32, u32)]) {
        for (vm, d) in self.placed(g) {
            self.unplace(g, vm, d);
        }
        self.join(g, n);
        for &(vm, d) in w {
            self.place(g, vm, d);
        }
        g.log.clear();
        self.densify(g);
    }

    /// Steps 1–4 (see the module documentation).
    fn try_join(
        &self,
        g: &mut Group,
        n: u32,
        full: &Full,
        budget: &mut Budget,
        stats: &mut RollingStats,
    ) -> bool {
        if self.quick_reject(g, n) {
            stats.quick_rejects += 1;
            return false;
        }
        let was_dense = g.dense.is_some();
        let accepted = self.incremental(g, n);
        stats.dense_groups += u64::from(!was_dense && g.dense.is_some());
        if accepted {
            stats.incremental += 1;
            return true;
        }
        let group_vms: u64 = g
            .members
            .iter()
            .chain([&n])
            .map(|&m| self.vms_of[m as usize].len() as u64)
            .sum();
        if budget.rebuild >= group_vms {
            budget.rebuild -= group_vms;
            if self.rebuild(g, n) {
                stats.rebuilt += 1;
                return true;
            }
        }
        let work = group_vms * self.order.len() as u64;
        if work <= FULL_CHECK_MAX_WORK && budget.full > 0 {
            budget.full -= 1;
            let mut trial = g.members.clone();
            trial.push(n);
            if let Some(w) = full.solve(&trial, GROUP_SEARCH_BUDGET) {
                self.adopt(g, n, &w);
                stats.full += 1;
                return true;
            }
        }
        stats.rejected += 1;
        false
    }
}

/// The planner before incremental checks: every trial re-places every VM of
/// the candidate group with the full engine. Kept as the reference for the
/// tests and the benchmark's baseline.
pub(crate) fn plan_reference(
    idx: &Index,
    nodes: &[String],
    max_unavailable: usize,
) -> Result<RollingPlan, PlanError> {
    check_k(max_unavailable)?;
    let (set, vms_of) = prepare(idx, nodes)?;
    let full = Full {
        idx,
        cat: Catalog::build(idx, None),
        vms_of: &vms_of,
    };
    let mut out = RollingPlan::default();
    let mut drainable = Vec::new();
    for &n in &set {
        match full.alone(n, false) {
            Ok(_) => drainable.push(n),
            Err(reason) => out.undrainable.push(Undrainable {
                node: idx.name(n).to_string(),
                reason,
            }),
        }
    }
    ffd_order(idx, &mut drainable);
    let mut groups: Vec<Vec<u32>> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    for n in drainable {
        let mut joined = false;
        if max_unavailable > 1 {
            for (oi, &gi) in open.iter().enumerate().take(MAX_TRIES) {
                let mut trial = groups[gi].clone();
                trial.push(n);
                if reference_quick_reject(idx, &vms_of, &trial) {
                    continue;
                }
                if full.solve(&trial, GROUP_SEARCH_BUDGET).is_some() {
                    groups[gi] = trial;
                    if groups[gi].len() == max_unavailable {
                        open.remove(oi);
                    }
                    joined = true;
                    break;
                }
            }
        }
        if !joined {
            groups.push(vec![n]);
            if max_unavailable > 1 {
                open.push(groups.len() - 1);
            }
        }
    }
    out.groups = named(idx, groups);
    Ok(out)
}

/// The reference's check of one group: can all of its nodes be down at once?
pub(crate) fn group_drainable(idx: &Index, group: &[String]) -> Result<bool, PlanError> {
    let (set, vms_of) = prepare(idx, group)?;
    let full = Full {
        idx,
        cat: Catalog::build(idx, None),
        vms_of: &vms_of,
    };
    if set.iter().any(|&n| !idx.fleet.nodes[n as usize].reachable) {
        return Ok(set.iter().all(|&n| vms_of[n as usize].is_empty()));
    }
    Ok(full.solve(&set, ALONE_SEARCH_BUDGET).is_some())
}

/// Necessary condition, O(nodes): the group's memory must fit in the free
/// memory of the nodes that stay.
fn reference_quick_reject(idx: &Index, vms_of: &[Vec<u32>], group: &[u32]) -> bool {
    let fleet = idx.fleet;
    let need: u64 = group
        .iter()
        .flat_map(|&n| vms_of[n as usize].iter())
        .map(|&i| fleet.vms[i as usize].mem_mib)
        .sum();
    let free: u64 = (0..idx.cap.len())
        .filter(|&n| idx.eligible[n] && !group.contains(&(n as u32)))
        .map(|n| idx.cap[n].mem.saturating_sub(idx.base[n].mem))
        .sum();
    need > free
}
