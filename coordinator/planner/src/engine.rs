//! The placement engine shared by every request.
//!
//! # How a placement problem is solved
//!
//! A *problem* is a list of VMs to place (the VMs of a drained node, of a
//! rolling group, or one new VM) and a set of *excluded* nodes (the nodes
//! being emptied). Candidates are the other nodes that are ENABLED and
//! reachable. A VM fits a candidate when the node's free memory and free vCPUs
//! (capacity × ratio − everything reserved, shut-off VMs included) cover it
//! and no VM of its anti-affinity group is already there.
//!
//! 1. **Index** ([`Index`], O(nodes + VMs)): per-node capacity and current
//!    reservations, computed once per call. Nothing later loops over all VMs.
//! 2. **Greedy**: VMs in a fixed order (VFWs first, then largest memory, then
//!    most vCPUs, then name), each to the candidate with the smallest key
//!    `(other-cloudspace VFWs on the node [VFWs only], memory utilisation after
//!    the placement, node name)`. One scan of the candidates per VM: a drain of
//!    a 20-VM node in a 10,000-node fleet is 200,000 cheap comparisons.
//!    Utilisations are compared exactly as fractions (`a/b < c/d` ⇔
//!    `a·d < c·b` in `u128`), so no float rounding can make two runs differ.
//! 3. If that leaves VMs unplaced, cheaper-to-satisfy variants are tried:
//!    greedy without the (soft) VFW spreading, then *best fit* (tightest node
//!    first, which packs better than balancing), then a depth-first search
//!    over all assignments bounded by a work budget. The search is complete
//!    for small problems, which is what makes "the planner says infeasible"
//!    trustworthy on small fleets (see `tests/exhaustive.rs`).
//! 4. **Balance** (drains only): local search that relocates or swaps the
//!    placed user VMs while that lowers the highest destination utilisation.
//!    VFWs are left where spreading put them.
//!
//! If every attempt fails, the reasons come from the first greedy pass: for
//! each VM left over, the binding constraint with its numbers, evaluated
//! against the fleet as it stands after the other VMs were placed.
//!
//! Determinism: no hash map is ever iterated (they are lookup tables only),
//! ties are broken by node name, and the VM order is total.

use crate::error::PlanError;
use crate::model::{Fleet, VmKind};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FxHash (rustc's hasher): much faster than SipHash on short names, and we
/// never iterate these maps, so its ordering cannot leak into plans.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Cap {
    pub mem: u64,
    pub vcpu: u64,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Usage {
    pub mem: u64,
    pub vcpu: u64,
    pub vfws: u32,
}

/// Read-only facts about a fleet, computed once per call in O(nodes + VMs).
pub(crate) struct Index<'a> {
    pub fleet: &'a Fleet,
    pub by_name: FxMap<&'a str, u32>,
    pub cap: Vec<Cap>,
    pub eligible: Vec<bool>,
    /// Position of the node in name order: the final tie-break.
    pub rank: Vec<u32>,
    pub base: Vec<Usage>,
    pub vm_node: Vec<u32>,
    /// VMs with an anti-affinity group or VFWs with a cloudspace: the only
    /// ones the [`Catalog`] needs to look at.
    pub tagged: Vec<u32>,
}

impl<'a> Index<'a> {
    pub fn new(fleet: &'a Fleet) -> Result<Self, PlanError> {
        let n = fleet.nodes.len();
        let mut by_name: FxMap<&str, u32> = FxMap::default();
        by_name.reserve(n);
        let mut cap = Vec::with_capacity(n);
        let mut eligible = Vec::with_capacity(n);
        for (i, node) in fleet.nodes.iter().enumerate() {
            if by_name.insert(node.name.as_str(), i as u32).is_some() {
                return Err(PlanError::InvalidFleet(format!(
                    "node {:?} is listed twice",
                    node.name
                )));
            }
            for (what, r) in [
                ("mem_ratio", node.mem_ratio),
                ("vcpu_ratio", node.vcpu_ratio),
            ] {
                if !(r.is_finite() && r > 0.0) {
                    return Err(PlanError::InvalidFleet(format!(
                        "node {:?}: {what} must be a positive number, got {r}",
                        node.name
                    )));
                }
            }
            cap.push(Cap {
                mem: node.mem_capacity(),
                vcpu: node.vcpu_capacity(),
            });
            eligible.push(node.accepts_vms());
        }
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            fleet.nodes[a as usize]
                .name
                .cmp(&fleet.nodes[b as usize].name)
        });
        let mut rank = vec![0u32; n];
        for (r, &i) in order.iter().enumerate() {
            rank[i as usize] = r as u32;
        }
        let mut base = vec![Usage::default(); n];
        let mut vm_node = Vec::with_capacity(fleet.vms.len());
        let mut tagged = Vec::new();
        // Exports usually list a node's VMs together: check the previous
        // VM's node before hashing.
        let mut last: Option<(&str, u32)> = None;
        for (vi, vm) in fleet.vms.iter().enumerate() {
            let i = match last {
                Some((name, i)) if name == vm.node => i,
                _ => {
                    let Some(&i) = by_name.get(vm.node.as_str()) else {
                        return Err(PlanError::InvalidFleet(format!(
                            "VM {:?} is on unknown node {:?}",
                            vm.name, vm.node
                        )));
                    };
                    last = Some((vm.node.as_str(), i));
                    i
                }
            };
            if vm.anti_affinity.is_some() || (vm.kind == VmKind::Vfw && vm.cloudspace.is_some()) {
                tagged.push(vi as u32);
            }
            let u = &mut base[i as usize];
            u.mem += vm.mem_mib;
            u.vcpu += u64::from(vm.vcpus);
            if vm.kind == VmKind::Vfw {
                u.vfws += 1;
            }
            vm_node.push(i);
        }
        Ok(Index {
            fleet,
            by_name,
            cap,
            eligible,
            rank,
            base,
            vm_node,
            tagged,
        })
    }

    /// Indices of the VMs on node `n`, in fleet order.
    pub fn vms_on(&self, n: u32) -> impl Iterator<Item = usize> + '_ {
        self.vm_node
            .iter()
            .enumerate()
            .filter(move |(_, &vn)| vn == n)
            .map(|(i, _)| i)
    }

    pub fn node(&self, name: &str) -> Result<u32, PlanError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| PlanError::UnknownNode(name.to_string()))
    }

    pub fn name(&self, n: u32) -> &'a str {
        &self.fleet.nodes[n as usize].name
    }
}

/// Where the members of anti-affinity groups and the VFWs of cloudspaces are.
/// Lists are sorted node indices with multiplicity.
#[derive(Default)]
pub(crate) struct Catalog<'a> {
    pub groups: FxMap<&'a str, Vec<u32>>,
    pub vfw_cs: FxMap<&'a str, Vec<u32>>,
}

impl<'a> Catalog<'a> {
    /// Catalog restricted to the given groups and cloudspaces (a drain only
    /// cares about those of its own VMs), or everything when `only` is None.
    pub fn build(idx: &Index<'a>, only: Option<(&[&'a str], &[&'a str])>) -> Self {
        let mut cat = Catalog::default();
        if let Some((groups, css)) = only {
            for g in groups {
                cat.groups.insert(g, Vec::new());
            }
            for c in css {
                cat.vfw_cs.insert(c, Vec::new());
            }
            if groups.is_empty() && css.is_empty() {
                return cat;
            }
        }
        let all = only.is_none();
        for &i in &idx.tagged {
            let vm = &idx.fleet.vms[i as usize];
            let node = idx.vm_node[i as usize];
            if let Some(g) = vm.anti_affinity.as_deref() {
                if all {
                    cat.groups.entry(g).or_default().push(node);
                } else if let Some(v) = cat.groups.get_mut(g) {
                    v.push(node);
                }
            }
            if vm.kind == VmKind::Vfw {
                if let Some(c) = vm.cloudspace.as_deref() {
                    if all {
                        cat.vfw_cs.entry(c).or_default().push(node);
                    } else if let Some(v) = cat.vfw_cs.get_mut(c) {
                        v.push(node);
                    }
                }
            }
        }
        for v in cat.groups.values_mut().chain(cat.vfw_cs.values_mut()) {
            v.sort_unstable();
        }
        cat
    }
}

/// One VM to place.
#[derive(Clone, Debug)]
pub(crate) struct Req<'a> {
    pub name: &'a str,
    pub mem: u64,
    pub vcpu: u64,
    pub vfw: bool,
    pub group: Option<&'a str>,
    pub cs: Option<&'a str>,
}

impl<'a> Req<'a> {
    pub fn of(vm: &'a crate::model::Vm) -> Self {
        Req {
            name: &vm.name,
            mem: vm.mem_mib,
            vcpu: u64::from(vm.vcpus),
            vfw: vm.kind == VmKind::Vfw,
            group: vm.anti_affinity.as_deref(),
            cs: vm.cloudspace.as_deref(),
        }
    }
}

/// The fixed placement order: VFWs, then larger memory, then more vCPUs, then
/// name (then input position, so the order is total even with equal names).
pub(crate) fn placement_order(reqs: &[Req]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..reqs.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&reqs[a], &reqs[b]);
        y.vfw
            .cmp(&x.vfw)
            .then(y.mem.cmp(&x.mem))
            .then(y.vcpu.cmp(&x.vcpu))
            .then(x.name.cmp(y.name))
            .then(a.cmp(&b))
    });
    order
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// Least memory utilisation after placement (the default: balance).
    Balanced,
    /// Least free memory after placement (packs tighter; a fallback).
    BestFit,
}

/// Mutable placement state: reservations plus where group members and VFWs
/// of the problem's groups/cloudspaces are.
#[derive(Clone)]
pub(crate) struct State {
    pub usage: Vec<Usage>,
    groups: Vec<Vec<u32>>,
    css: Vec<Vec<u32>>,
}

/// A placement problem: `reqs` (in placement order) onto `candidates`.
pub(crate) struct Problem<'i, 'a> {
    pub idx: &'i Index<'a>,
    pub reqs: Vec<Req<'a>>,
    req_group: Vec<Option<u32>>,
    req_cs: Vec<Option<u32>>,
    pub candidates: Vec<u32>,
    /// Base utilisation of each candidate (32.32 fixed point, rounded
    /// down), ascending.
    cand_base: Vec<u64>,
    pristine: State,
    /// Work budget (candidate evaluations) for the exhaustive fallback.
    pub search_budget: u64,
}

/// Result of solving: a node per request, or the unplaced requests.
pub(crate) type Solution = Result<Vec<u32>, Vec<(usize, String)>>;

impl<'i, 'a> Problem<'i, 'a> {
    /// `reqs` are sorted into placement order here; `excluded` nodes are
    /// never destinations (they hold the VMs being moved, which is why their
    /// group/VFW entries in the catalog never matter).
    pub fn new(
        idx: &'i Index<'a>,
        cat: &Catalog<'a>,
        reqs: Vec<Req<'a>>,
        excluded: &[u32],
    ) -> Self {
        let order = placement_order(&reqs);
        let reqs: Vec<Req> = order.into_iter().map(|i| reqs[i].clone()).collect();
        let mut gnames: Vec<&str> = Vec::new();
        let mut cnames: Vec<&str> = Vec::new();
        let mut req_group = Vec::with_capacity(reqs.len());
        let mut req_cs = Vec::with_capacity(reqs.len());
        for r in &reqs {
            req_group.push(r.group.map(|g| intern(&mut gnames, g)));
            req_cs.push(if r.vfw {
                r.cs.map(|c| intern(&mut cnames, c))
            } else {
                None
            });
        }
        let groups = gnames
            .iter()
            .map(|g| cat.groups.get(g).cloned().unwrap_or_default())
            .collect();
        let css = cnames
            .iter()
            .map(|c| cat.vfw_cs.get(c).cloned().unwrap_or_default())
            .collect();
        let mut is_excluded = vec![false; idx.cap.len()];
        for &e in excluded {
            is_excluded[e as usize] = true;
        }
        let candidates: Vec<u32> = (0..idx.cap.len() as u32)
            .filter(|&n| idx.eligible[n as usize] && !is_excluded[n as usize])
            .collect();
        let mut p = Problem {
            idx,
            reqs,
            req_group,
            req_cs,
            candidates: Vec::new(),
            cand_base: Vec::new(),
            pristine: State {
                usage: idx.base.clone(),
                groups,
                css,
            },
            search_budget: 2_000_000,
        };
        p.set_candidates(candidates);
        p
    }

    /// Replace the candidate nodes (a subset of eligible, non-excluded
    /// nodes; used by the rolling planner to try the roomiest nodes first).
    /// Kept sorted by utilisation before the problem (`base`), which is a
    /// lower bound of any later utilisation: placements only add to it.
    /// [`Problem::choose`] uses that to stop scanning early.
    pub fn set_candidates(&mut self, mut c: Vec<u32>) {
        let idx = self.idx;
        // Sort key: base utilisation in 32.32 fixed point, rounded down
        // (integer keys sort several times faster than exact fractions).
        let fixed = |n: u32| -> u64 {
            let (u, cap) = (idx.base[n as usize].mem, idx.cap[n as usize].mem.max(1));
            ((u128::from(u) << 32) / u128::from(cap)).min(u128::from(u64::MAX)) as u64
        };
        c.sort_unstable_by_key(|&n| (fixed(n), idx.rank[n as usize]));
        self.cand_base = c.iter().map(|&n| fixed(n)).collect();
        self.candidates = c;
    }

    pub fn fresh(&self) -> State {
        self.pristine.clone()
    }

    fn fits(&self, st: &State, r: usize, n: u32) -> bool {
        let q = &self.reqs[r];
        let c = self.idx.cap[n as usize];
        let u = st.usage[n as usize];
        c.mem.saturating_sub(u.mem) >= q.mem
            && c.vcpu.saturating_sub(u.vcpu) >= q.vcpu
            && match self.req_group[r] {
                Some(g) => st.groups[g as usize].binary_search(&n).is_err(),
                None => true,
            }
    }

    /// VFWs of other cloudspaces on `n` (the soft spreading penalty).
    fn vfw_penalty(&self, st: &State, r: usize, n: u32) -> u32 {
        if !self.reqs[r].vfw {
            return 0;
        }
        let same = match self.req_cs[r] {
            Some(c) => count(&st.css[c as usize], n),
            None => 0,
        };
        st.usage[n as usize].vfws.saturating_sub(same)
    }

    fn key(&self, st: &State, r: usize, n: u32, soft: bool, mode: Mode) -> Key {
        let q = &self.reqs[r];
        let c = self.idx.cap[n as usize];
        let u = st.usage[n as usize];
        let (num, den) = match mode {
            Mode::Balanced => (u.mem + q.mem, c.mem.max(1)),
            Mode::BestFit => (c.mem.saturating_sub(u.mem + q.mem), 1),
        };
        Key {
            soft: if soft { self.vfw_penalty(st, r, n) } else { 0 },
            num,
            den,
            rank: self.idx.rank[n as usize],
        }
    }

    /// Best candidate for request `r`, if any fits.
    pub fn choose(&self, st: &State, r: usize, soft: bool, mode: Mode) -> Option<u32> {
        let mut best: Option<(Key, u32)> = None;
        for (i, &n) in self.candidates.iter().enumerate() {
            // Early stop (balanced mode): every later candidate's utilisation
            // after placement is at least its base utilisation, which is at
            // least this one's; once that reaches the best found (with no
            // spreading penalty), nothing later can win.
            // The key is rounded down, so stop only when strictly above.
            if let (Mode::Balanced, Some((b, _))) = (mode, &best) {
                if b.soft == 0 && frac_cmp(self.cand_base[i], 1 << 32, b.num, b.den).is_gt() {
                    break;
                }
            }
            if !self.fits(st, r, n) {
                continue;
            }
            let k = self.key(st, r, n, soft, mode);
            if best.as_ref().is_none_or(|(b, _)| k < *b) {
                best = Some((k, n));
            }
        }
        best.map(|(_, n)| n)
    }

    /// Every candidate that fits `r`, best first.
    pub fn ranked(&self, st: &State, r: usize, soft: bool) -> Vec<u32> {
        let mut v: Vec<(Key, u32)> = self
            .candidates
            .iter()
            .filter(|&&n| self.fits(st, r, n))
            .map(|&n| (self.key(st, r, n, soft, Mode::Balanced), n))
            .collect();
        v.sort_by_key(|a| a.0);
        v.into_iter().map(|(_, n)| n).collect()
    }

    pub fn place(&self, st: &mut State, r: usize, n: u32) {
        let q = &self.reqs[r];
        let u = &mut st.usage[n as usize];
        u.mem += q.mem;
        u.vcpu += q.vcpu;
        if q.vfw {
            u.vfws += 1;
        }
        if let Some(g) = self.req_group[r] {
            insert_sorted(&mut st.groups[g as usize], n);
        }
        if let Some(c) = self.req_cs[r] {
            insert_sorted(&mut st.css[c as usize], n);
        }
    }

    pub fn unplace(&self, st: &mut State, r: usize, n: u32) {
        let q = &self.reqs[r];
        let u = &mut st.usage[n as usize];
        u.mem -= q.mem;
        u.vcpu -= q.vcpu;
        if q.vfw {
            u.vfws -= 1;
        }
        if let Some(g) = self.req_group[r] {
            remove_sorted(&mut st.groups[g as usize], n);
        }
        if let Some(c) = self.req_cs[r] {
            remove_sorted(&mut st.css[c as usize], n);
        }
    }

    /// One greedy pass. Continues past failures so that every VM that does
    /// not fit is reported, each with the reason at the time it failed.
    fn greedy(
        &self,
        soft: bool,
        mode: Mode,
        explain: bool,
    ) -> (State, Vec<Option<u32>>, Vec<(usize, String)>) {
        let mut st = self.fresh();
        let mut assign = vec![None; self.reqs.len()];
        let mut failed = Vec::new();
        for (r, slot) in assign.iter_mut().enumerate() {
            match self.choose(&st, r, soft, mode) {
                Some(n) => {
                    self.place(&mut st, r, n);
                    *slot = Some(n);
                }
                None => failed.push((
                    r,
                    if explain {
                        self.explain(&st, r)
                    } else {
                        String::new()
                    },
                )),
            }
        }
        (st, assign, failed)
    }

    /// Solve: greedy, fallbacks, then bounded exhaustive search. With
    /// `balance`, a successful assignment is then improved by local search.
    pub fn solve(&self, balance: bool) -> Solution {
        let has_vfw = self.reqs.iter().any(|r| r.vfw);
        let (st, assign, failed) = self.greedy(true, Mode::Balanced, true);
        if failed.is_empty() {
            return Ok(self.finish(st, assign, balance));
        }
        let mut fallbacks = Vec::new();
        if has_vfw {
            fallbacks.push((false, Mode::Balanced));
        }
        fallbacks.push((false, Mode::BestFit));
        for (soft, mode) in fallbacks {
            let (st2, a2, f2) = self.greedy(soft, mode, false);
            if f2.is_empty() {
                return Ok(self.finish(st2, a2, balance));
            }
        }
        if let Some((st3, a3)) = self.search() {
            return Ok(self.finish(st3, a3.into_iter().map(Some).collect(), balance));
        }
        Err(failed)
    }

    fn finish(&self, mut st: State, assign: Vec<Option<u32>>, balance: bool) -> Vec<u32> {
        let mut a: Vec<u32> = assign.into_iter().map(|n| n.expect("all placed")).collect();
        if balance {
            self.balance(&mut st, &mut a);
        }
        a
    }

    /// Depth-first search over all assignments (candidates best first),
    /// bounded by `search_budget` candidate evaluations.
    fn search(&self) -> Option<(State, Vec<u32>)> {
        let mut st = self.fresh();
        let mut assign = Vec::with_capacity(self.reqs.len());
        let mut budget = self.search_budget;
        let total_free: u64 = self
            .candidates
            .iter()
            .map(|&n| {
                self.idx.cap[n as usize]
                    .mem
                    .saturating_sub(st.usage[n as usize].mem)
            })
            .sum();
        let need: u64 = self.reqs.iter().map(|q| q.mem).sum();
        if need > total_free {
            return None;
        }
        if self.dfs(&mut st, &mut assign, &mut budget) {
            Some((st, assign))
        } else {
            None
        }
    }

    fn dfs(&self, st: &mut State, assign: &mut Vec<u32>, budget: &mut u64) -> bool {
        let r = assign.len();
        if r == self.reqs.len() {
            return true;
        }
        let cost = self.candidates.len() as u64;
        if *budget < cost {
            return false;
        }
        *budget -= cost;
        for n in self.ranked(st, r, false) {
            self.place(st, r, n);
            assign.push(n);
            if self.dfs(st, assign, budget) {
                return true;
            }
            assign.pop();
            self.unplace(st, r, n);
            if *budget == 0 {
                return false;
            }
        }
        false
    }

    fn util_gt(&self, st: &State, a: u32, b: u32) -> Ordering {
        let (ua, ca) = (
            st.usage[a as usize].mem,
            self.idx.cap[a as usize].mem.max(1),
        );
        let (ub, cb) = (
            st.usage[b as usize].mem,
            self.idx.cap[b as usize].mem.max(1),
        );
        frac_cmp(ua, ca, ub, cb)
    }

    /// Local search lowering the highest destination memory utilisation:
    /// move a user VM off the most utilised destination, or swap it with a
    /// smaller placed user VM, when both affected nodes end below the old
    /// maximum. Each step strictly decreases (max, number of nodes at max),
    /// so it terminates; the step cap bounds the time anyway.
    fn balance(&self, st: &mut State, a: &mut [u32]) {
        let steps = 4 * a.len() + 16;
        for _ in 0..steps {
            // The most utilised destination (ties: highest rank, any fixed rule).
            let mut top: Option<u32> = None;
            for &n in a.iter() {
                top = match top {
                    None => Some(n),
                    Some(t) => match self.util_gt(st, n, t) {
                        Ordering::Greater => Some(n),
                        Ordering::Equal
                            if self.idx.rank[n as usize] > self.idx.rank[t as usize] =>
                        {
                            Some(n)
                        }
                        _ => Some(t),
                    },
                };
            }
            let Some(top) = top else { return };
            let (tu, tc) = (
                st.usage[top as usize].mem,
                self.idx.cap[top as usize].mem.max(1),
            );
            let below_top = |st: &State, n: u32| {
                frac_cmp(
                    st.usage[n as usize].mem,
                    self.idx.cap[n as usize].mem.max(1),
                    tu,
                    tc,
                )
                .is_lt()
            };
            let on_top: Vec<usize> = (0..a.len())
                .filter(|&r| a[r] == top && !self.reqs[r].vfw)
                .collect();
            let mut improved = false;
            // Relocation.
            for &r in &on_top {
                self.unplace(st, r, top);
                if let Some(n) = self.choose(st, r, false, Mode::Balanced) {
                    if n != top {
                        self.place(st, r, n);
                        if below_top(st, n) {
                            a[r] = n;
                            improved = true;
                            break;
                        }
                        self.unplace(st, r, n);
                    }
                }
                self.place(st, r, top);
            }
            // Swap with a smaller user VM placed elsewhere.
            if !improved {
                'outer: for &r in &on_top {
                    for s in 0..a.len() {
                        let n = a[s];
                        if n == top || self.reqs[s].vfw || self.reqs[s].mem >= self.reqs[r].mem {
                            continue;
                        }
                        self.unplace(st, r, top);
                        self.unplace(st, s, n);
                        if self.fits(st, r, n) {
                            self.place(st, r, n);
                            if self.fits(st, s, top) {
                                self.place(st, s, top);
                                if below_top(st, n) && below_top(st, top) {
                                    a[r] = n;
                                    a[s] = top;
                                    improved = true;
                                    break 'outer;
                                }
                                self.unplace(st, s, top);
                            }
                            self.unplace(st, r, n);
                        }
                        self.place(st, s, n);
                        self.place(st, r, top);
                    }
                }
            }
            if !improved {
                return;
            }
        }
    }

    /// Why request `r` fits no candidate in state `st`: the binding
    /// constraint, with numbers.
    pub fn explain(&self, st: &State, r: usize) -> String {
        let q = &self.reqs[r];
        if self.candidates.is_empty() {
            return "no destination: no other node is ENABLED and reachable".to_string();
        }
        let free_mem = |n: u32| {
            self.idx.cap[n as usize]
                .mem
                .saturating_sub(st.usage[n as usize].mem)
        };
        let free_cpu = |n: u32| {
            self.idx.cap[n as usize]
                .vcpu
                .saturating_sub(st.usage[n as usize].vcpu)
        };
        // Largest free memory (ties: name order).
        let best_mem = *self
            .candidates
            .iter()
            .max_by(|&&a, &&b| {
                free_mem(a)
                    .cmp(&free_mem(b))
                    .then(self.idx.rank[b as usize].cmp(&self.idx.rank[a as usize]))
            })
            .expect("non-empty");
        if free_mem(best_mem) < q.mem {
            return format!(
                "needs {} MiB, largest free memory on an eligible node is {} MiB ({})",
                q.mem,
                free_mem(best_mem),
                self.idx.name(best_mem)
            );
        }
        let roomy: Vec<u32> = self
            .candidates
            .iter()
            .copied()
            .filter(|&n| free_mem(n) >= q.mem)
            .collect();
        let best_cpu = *roomy
            .iter()
            .max_by(|&&a, &&b| {
                free_cpu(a)
                    .cmp(&free_cpu(b))
                    .then(self.idx.rank[b as usize].cmp(&self.idx.rank[a as usize]))
            })
            .expect("non-empty");
        if free_cpu(best_cpu) < q.vcpu {
            return format!(
                "needs {} MiB and {} vCPUs; of the {} eligible node(s) with {} MiB free, the most free vCPUs is {} ({})",
                q.mem,
                q.vcpu,
                roomy.len(),
                q.mem,
                free_cpu(best_cpu),
                self.idx.name(best_cpu)
            );
        }
        let fitting: Vec<&str> = roomy
            .iter()
            .copied()
            .filter(|&n| free_cpu(n) >= q.vcpu)
            .map(|n| self.idx.name(n))
            .collect();
        let g = q.group.unwrap_or("?");
        let mut shown: Vec<&str> = fitting.iter().take(3).copied().collect();
        shown.sort_unstable();
        format!(
            "anti-affinity group {g:?}: all {} eligible node(s) with room ({}{}) already host a member",
            fitting.len(),
            shown.join(", "),
            if fitting.len() > 3 { ", …" } else { "" }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    soft: u32,
    num: u64,
    den: u64,
    rank: u32,
}

impl Ord for Key {
    fn cmp(&self, o: &Self) -> Ordering {
        self.soft
            .cmp(&o.soft)
            .then_with(|| frac_cmp(self.num, self.den, o.num, o.den))
            .then(self.rank.cmp(&o.rank))
    }
}
impl PartialOrd for Key {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// Exact comparison of `a/b` with `c/d` (b, d > 0).
pub(crate) fn frac_cmp(a: u64, b: u64, c: u64, d: u64) -> Ordering {
    (u128::from(a) * u128::from(d)).cmp(&(u128::from(c) * u128::from(b)))
}

fn intern<'a>(names: &mut Vec<&'a str>, s: &'a str) -> u32 {
    match names.iter().position(|&x| x == s) {
        Some(i) => i as u32,
        None => {
            names.push(s);
            (names.len() - 1) as u32
        }
    }
}

fn count(v: &[u32], n: u32) -> u32 {
    let lo = v.partition_point(|&x| x < n);
    let hi = v.partition_point(|&x| x <= n);
    (hi - lo) as u32
}

fn insert_sorted(v: &mut Vec<u32>, n: u32) {
    let i = v.partition_point(|&x| x < n);
    v.insert(i, n);
}

fn remove_sorted(v: &mut Vec<u32>, n: u32) {
    if let Ok(i) = v.binary_search(&n) {
        v.remove(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Node, Vm};

    fn fleet(caps: &[u64], vms: &[u64]) -> Fleet {
        let mut f = Fleet::default();
        f.nodes.push(Node::new("src", 1000, 64));
        for (i, &c) in caps.iter().enumerate() {
            f.nodes.push(Node::new(format!("n{i}"), c, 64));
        }
        for (i, &m) in vms.iter().enumerate() {
            f.vms.push(Vm::new(format!("v{i}"), "src", m, 1));
        }
        f
    }

    #[test]
    fn search_finds_what_greedy_misses() {
        // Balanced and best-fit greedy both fail on {7,7,4,4,4} into
        // 14 + 12 (only {7,7} + {4,4,4} works); the search succeeds.
        let f = fleet(&[14, 12], &[7, 7, 4, 4, 4]);
        let idx = Index::new(&f).unwrap();
        let cat = Catalog::default();
        let reqs = f.vms.iter().map(Req::of).collect();
        let p = Problem::new(&idx, &cat, reqs, &[0]);
        assert!(!p.greedy(false, Mode::Balanced, false).2.is_empty());
        assert!(!p.greedy(false, Mode::BestFit, false).2.is_empty());
        let (st, a) = p.search().expect("an assignment exists");
        assert_eq!(a.len(), 5);
        assert_eq!((st.usage[1].mem, st.usage[2].mem), (14, 12));
        // The public entry point agrees.
        assert!(p.solve(true).is_ok());
    }

    #[test]
    fn search_budget_bounds_work() {
        let f = fleet(&[14, 12], &[7, 7, 4, 4, 4]);
        let idx = Index::new(&f).unwrap();
        let cat = Catalog::default();
        let reqs = f.vms.iter().map(Req::of).collect();
        let mut p = Problem::new(&idx, &cat, reqs, &[0]);
        p.search_budget = 3;
        assert!(p.search().is_none());
    }

    #[test]
    fn fractions_compare_exactly() {
        assert_eq!(frac_cmp(1, 3, 2, 6), Ordering::Equal);
        assert_eq!(frac_cmp(u64::MAX, u64::MAX - 1, 1, 1), Ordering::Greater);
    }
}
