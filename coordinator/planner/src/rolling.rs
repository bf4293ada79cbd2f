//! Rolling maintenance order: which nodes may be down together.
//!
//! A *group* of at most K nodes is valid when, with all of the group's nodes
//! unavailable at once, every VM on them fits on the remaining ENABLED,
//! reachable nodes under every hard constraint (same engine as a drain).
//! Each group is checked against the snapshot as given: we assume the fleet
//! is back to a comparable state between groups (drained VMs may stay where
//! they went, and the maintained node comes back empty).
//!
//! Packing is greedy *first fit decreasing*: nodes sorted by reserved memory,
//! heaviest first (hard-to-place nodes get the emptiest groups), each joins
//! the first open group (fewer than K nodes) with which the group stays
//! valid, else opens a new group. To bound the time, a node tries at most
//! [`MAX_TRIES`] open groups. This is not guaranteed minimal (the problem is
//! bin packing with a placement oracle), but it matches `ceil(n/K)` whenever
//! spare capacity is not the bottleneck.
//!
//! A node that cannot be drained even alone (unreachable, ERROR or
//! DECOMMISSIONED, or its VMs do not fit elsewhere) is reported in
//! `undrainable` with the reason and left out of the groups.

use crate::engine::{Catalog, Index, Problem, Req};
use crate::error::PlanError;
use crate::model::{NodeStatus, RollingPlan, Undrainable};

/// Open groups a node tries before opening a new one.
pub const MAX_TRIES: usize = 16;

/// Exhaustive-search budget when checking a candidate group (a node alone
/// gets the full default budget).
const GROUP_SEARCH_BUDGET: u64 = 200_000;

pub(crate) fn plan(
    idx: &Index,
    nodes: &[String],
    max_unavailable: usize,
) -> Result<RollingPlan, PlanError> {
    if max_unavailable == 0 {
        return Err(PlanError::InvalidRequest(
            "max_unavailable must be at least 1".into(),
        ));
    }
    let fleet = idx.fleet;
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
    let cat = Catalog::build(idx, None);
    let problem = |group: &[u32], budget: u64| {
        let reqs: Vec<Req> = group
            .iter()
            .flat_map(|&n| vms_of[n as usize].iter())
            .map(|&i| Req::of(&fleet.vms[i as usize]))
            .collect();
        let mut p = Problem::new(idx, &cat, reqs, group);
        p.search_budget = budget;
        p
    };

    let mut out = RollingPlan::default();
    let mut drainable = Vec::new();
    for &n in &set {
        let node = &fleet.nodes[n as usize];
        let reason = match node.status {
            NodeStatus::Error | NodeStatus::Decommissioned => {
                Some(format!("node status is {}", node.status))
            }
            _ if !node.reachable => Some("node is unreachable: its VMs cannot be migrated".into()),
            _ => match problem(&[n], 2_000_000).solve(false) {
                Ok(_) => None,
                Err(failed) => {
                    let p = problem(&[n], 0);
                    let shown: Vec<String> = failed
                        .iter()
                        .take(3)
                        .map(|(r, why)| format!("{} ({why})", p.reqs[*r].name))
                        .collect();
                    Some(format!(
                        "even alone, {} of its {} VM(s) cannot be placed elsewhere: {}{}",
                        failed.len(),
                        p.reqs.len(),
                        shown.join("; "),
                        if failed.len() > 3 { "; …" } else { "" }
                    ))
                }
            },
        };
        match reason {
            Some(reason) => out.undrainable.push(Undrainable {
                node: node.name.clone(),
                reason,
            }),
            None => drainable.push(n),
        }
    }

    // Heaviest first; name order among equals.
    drainable.sort_by(|&a, &b| {
        idx.base[b as usize]
            .mem
            .cmp(&idx.base[a as usize].mem)
            .then(idx.rank[a as usize].cmp(&idx.rank[b as usize]))
    });
    let mut groups: Vec<Vec<u32>> = Vec::new();
    let mut open: Vec<usize> = Vec::new(); // indices into `groups`, oldest first
    for n in drainable {
        let mut joined = false;
        if max_unavailable > 1 {
            for (oi, &gi) in open.iter().enumerate().take(MAX_TRIES) {
                let mut trial = groups[gi].clone();
                trial.push(n);
                if quick_reject(idx, &vms_of, fleet, &trial) {
                    continue;
                }
                if problem(&trial, GROUP_SEARCH_BUDGET).solve(false).is_ok() {
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
    out.groups = groups
        .into_iter()
        .map(|mut g| {
            g.sort_unstable_by_key(|&n| idx.rank[n as usize]);
            g.into_iter().map(|n| idx.name(n).to_string()).collect()
        })
        .collect();
    Ok(out)
}

/// Necessary condition, O(nodes): the group's memory must fit in the free
/// memory of the nodes that stay.
fn quick_reject(
    idx: &Index,
    vms_of: &[Vec<u32>],
    fleet: &crate::model::Fleet,
    group: &[u32],
) -> bool {
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
