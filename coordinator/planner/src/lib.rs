//! # nodemaint-planner: where VMs go, in which waves, and in which order
//! nodes can be rolled
//!
//! A pure library: no I/O, no async, no threads, no clock. Every function
//! takes a [`Fleet`] snapshot and a request and returns a plan or a
//! [`PlanError`]; the same input always gives the same output.
//!
//! | request | function |
//! | --- | --- |
//! | drain a node | [`plan_drain`], [`drain_report`] (the `--output json` shape) |
//! | place a new VM | [`place_new`] |
//! | operator moves VM v to node Y | [`validate_move`] |
//! | move the VFW of a cloudspace | [`plan_vfw_move`] |
//! | where else could v go (retry, portal list) | [`feasible_destinations`] |
//! | rolling maintenance order, K down at once | [`plan_rolling`] |
//!
//! ## Constraints
//! *Hard* (never violated): a destination is ENABLED, reachable and not the
//! node being emptied; memory reserved ≤ `mem_mib × mem_ratio` and vCPUs
//! reserved ≤ `vcpus × vcpu_ratio`, counting every VM on the node whatever
//! its state (a shut-off VM can be started at any time); VMs of one
//! anti-affinity group on distinct nodes.
//!
//! *Soft* (preferences for automatic choices): VFWs of different cloudspaces
//! on distinct nodes; the least-loaded node (memory utilisation after the
//! placement, ties by node name). An operator's explicit choice
//! ([`validate_move`], [`plan_vfw_move`] with a destination) is only checked
//! against the hard constraints.
//!
//! ## Never a partial plan
//! If any VM of a drain cannot be placed, the answer is
//! [`PlanError::Infeasible`] listing *every* VM left over with the binding
//! constraint and its numbers. Before giving up the engine tries fallbacks
//! and, on small problems, an exhaustive search (see the `engine` module), so
//! "infeasible" on a small fleet means no assignment exists.
//!
//! ## Cost
//! Each call indexes the fleet in O(nodes + VMs), then does one scan of the
//! candidate nodes per VM to place. A drain in a 10,000-node, 200,000-VM
//! fleet takes a few milliseconds (see `planner-bench`). A rolling plan
//! checks candidate groups incrementally (O(log nodes) per VM placed, see the
//! `rolling` module): under a second for any K on that fleet.

mod engine;
mod error;
mod model;
mod rolling;
#[doc(hidden)]
pub mod synth;
mod verify;
mod waves;

pub use error::PlanError;
pub use model::*;
#[doc(hidden)]
pub use rolling::RollingStats;
pub use rolling::MAX_TRIES as ROLLING_MAX_TRIES;
pub use verify::verify_drain;

use engine::{Catalog, Index, Problem, Req};

fn check_limits(l: &Limits) -> Result<(), PlanError> {
    if l.per_source == 0 || l.per_destination == 0 || l.global == 0 {
        return Err(PlanError::InvalidRequest(format!(
            "concurrency limits must be at least 1 (per_source {}, per_destination {}, global {})",
            l.per_source, l.per_destination, l.global
        )));
    }
    Ok(())
}

/// The catalog of the groups and cloudspaces these requests care about.
fn catalog_for<'a>(idx: &Index<'a>, reqs: &[Req<'a>]) -> Catalog<'a> {
    let mut groups: Vec<&str> = reqs.iter().filter_map(|r| r.group).collect();
    let mut css: Vec<&str> = reqs.iter().filter(|r| r.vfw).filter_map(|r| r.cs).collect();
    groups.sort_unstable();
    groups.dedup();
    css.sort_unstable();
    css.dedup();
    Catalog::build(idx, Some((&groups, &css)))
}

fn source_reachable(fleet: &Fleet, n: usize) -> Result<(), PlanError> {
    let node = &fleet.nodes[n];
    if node.reachable {
        Ok(())
    } else {
        Err(PlanError::NodeNotEligible {
            node: node.name.clone(),
            reason: "source node is unreachable: its VMs cannot be migrated".into(),
        })
    }
}

/// Plan moving every VM off `node` (running and shut off, VFWs included).
///
/// Moves are ordered VFWs first, then by decreasing memory, and grouped into
/// waves that respect `limits`; no user VM is in an earlier wave than a VFW.
pub fn plan_drain(fleet: &Fleet, node: &str, limits: &Limits) -> Result<DrainPlan, PlanError> {
    check_limits(limits)?;
    let idx = Index::new(fleet)?;
    let n = idx.node(node)?;
    source_reachable(fleet, n as usize)?;
    let reqs: Vec<Req> = idx.vms_on(n).map(|i| Req::of(&fleet.vms[i])).collect();
    let cat = catalog_for(&idx, &reqs);
    let prob = Problem::new(&idx, &cat, reqs, &[n]);
    match prob.solve(true) {
        Ok(assign) => {
            let mut moves: Vec<Move> = prob
                .reqs
                .iter()
                .zip(assign)
                .map(|(r, to)| Move {
                    vm: r.name.to_string(),
                    from: node.to_string(),
                    to: idx.name(to).to_string(),
                    wave: 0,
                    kind: if r.vfw { VmKind::Vfw } else { VmKind::User },
                    not_migratable: None,
                })
                .collect();
            // Mark what cannot live-migrate; the executor's fallback decides.
            for m in &mut moves {
                if let Some(v) = fleet.vms.iter().find(|v| v.name == m.vm) {
                    if v.state == VmState::Running {
                        m.not_migratable.clone_from(&v.not_migratable);
                    }
                }
            }
            waves::assign_waves(&mut moves, limits);
            Ok(DrainPlan {
                node: node.to_string(),
                moves,
            })
        }
        Err(failed) => Err(PlanError::Infeasible {
            unplaced: failed
                .into_iter()
                .map(|(r, reason)| Unplaced {
                    vm: prob.reqs[r].name.to_string(),
                    reason,
                })
                .collect(),
        }),
    }
}

/// [`plan_drain`] in the `--output json` shape: an infeasible drain is a
/// report with no moves and every unplaced VM; other errors (unknown node,
/// unreachable source, bad limits or fleet) are still errors.
pub fn drain_report(fleet: &Fleet, node: &str, limits: &Limits) -> Result<DrainReport, PlanError> {
    match plan_drain(fleet, node, limits) {
        Ok(plan) => Ok(DrainReport {
            node: plan.node.clone(),
            feasible: true,
            waves: plan.waves(),
            moves: plan.moves,
            unplaced: Vec::new(),
        }),
        Err(PlanError::Infeasible { unplaced }) => Ok(DrainReport {
            node: node.to_string(),
            feasible: false,
            waves: 0,
            moves: Vec::new(),
            unplaced,
        }),
        Err(e) => Err(e),
    }
}

/// Choose a node for a new VM (`vm.node` is ignored). Same rules as a drain:
/// least-loaded feasible node, VFWs spread, anti-affinity respected.
pub fn place_new(fleet: &Fleet, vm: &Vm) -> Result<String, PlanError> {
    let idx = Index::new(fleet)?;
    if fleet.vms.iter().any(|v| v.name == vm.name) {
        return Err(PlanError::DuplicateVm(vm.name.clone()));
    }
    let reqs = vec![Req::of(vm)];
    let cat = catalog_for(&idx, &reqs);
    let prob = Problem::new(&idx, &cat, reqs, &[]);
    match prob.solve(false) {
        Ok(a) => Ok(idx.name(a[0]).to_string()),
        Err(failed) => Err(PlanError::Infeasible {
            unplaced: failed
                .into_iter()
                .map(|(_, reason)| Unplaced {
                    vm: vm.name.clone(),
                    reason,
                })
                .collect(),
        }),
    }
}

fn find_vm(fleet: &Fleet, vm: &str) -> Result<usize, PlanError> {
    fleet
        .vms
        .iter()
        .position(|v| v.name == vm)
        .ok_or_else(|| PlanError::UnknownVm(vm.to_string()))
}

/// Check an operator's explicit move of `vm` to `dest` against the hard
/// constraints only (VFW spreading is a preference and is not enforced here).
pub fn validate_move(fleet: &Fleet, vm: &str, dest: &str) -> Result<Move, PlanError> {
    let idx = Index::new(fleet)?;
    let vi = find_vm(fleet, vm)?;
    let d = idx.node(dest)? as usize;
    let s = idx.vm_node[vi] as usize;
    let v = &fleet.vms[vi];
    if let (Some(why), VmState::Running) = (&v.not_migratable, v.state) {
        return Err(PlanError::NotMigratable {
            vm: vm.to_string(),
            reason: why.clone(),
        });
    }
    let node = &fleet.nodes[d];
    let not_eligible = |reason: String| PlanError::NodeNotEligible {
        node: dest.to_string(),
        reason,
    };
    if d == s {
        return Err(not_eligible(format!("VM {vm:?} already runs on it")));
    }
    source_reachable(fleet, s)?;
    if node.status != NodeStatus::Enabled {
        return Err(not_eligible(format!(
            "its status is {}; only ENABLED nodes accept VMs",
            node.status
        )));
    }
    if !node.reachable {
        return Err(not_eligible("it is unreachable".into()));
    }
    let (cap, used) = (idx.cap[d], idx.base[d]);
    let reason = if cap.mem.saturating_sub(used.mem) < v.mem_mib {
        Some(format!(
            "needs {} MiB, {dest} has {} MiB free ({} MiB × {} = {} MiB, {} MiB reserved)",
            v.mem_mib,
            cap.mem.saturating_sub(used.mem),
            node.mem_mib,
            node.mem_ratio,
            cap.mem,
            used.mem
        ))
    } else if cap.vcpu.saturating_sub(used.vcpu) < u64::from(v.vcpus) {
        Some(format!(
            "needs {} vCPUs, {dest} has {} free ({} × {} = {}, {} reserved)",
            v.vcpus,
            cap.vcpu.saturating_sub(used.vcpu),
            node.vcpus,
            node.vcpu_ratio,
            cap.vcpu,
            used.vcpu
        ))
    } else if let Some(g) = v.anti_affinity.as_deref() {
        fleet
            .vms
            .iter()
            .zip(&idx.vm_node)
            .find(|(o, &on)| on as usize == d && o.anti_affinity.as_deref() == Some(g))
            .map(|(o, _)| {
                format!(
                    "anti-affinity group {g:?}: {dest} already hosts {:?}",
                    o.name
                )
            })
    } else {
        None
    };
    if let Some(reason) = reason {
        return Err(PlanError::Infeasible {
            unplaced: vec![Unplaced {
                vm: vm.to_string(),
                reason,
            }],
        });
    }
    Ok(Move {
        vm: vm.to_string(),
        from: v.node.clone(),
        to: dest.to_string(),
        wave: 0,
        kind: v.kind,
        not_migratable: None,
    })
}

/// Move the VFW of `cloudspace` to `dest`, or to the best node when `dest`
/// is None. If a cloudspace has several VFWs, the first by name is moved.
pub fn plan_vfw_move(
    fleet: &Fleet,
    cloudspace: &str,
    dest: Option<&str>,
) -> Result<Move, PlanError> {
    let vfw = fleet
        .vms
        .iter()
        .filter(|v| v.kind == VmKind::Vfw && v.cloudspace.as_deref() == Some(cloudspace))
        .min_by(|a, b| a.name.cmp(&b.name))
        .ok_or_else(|| PlanError::UnknownCloudspace(cloudspace.to_string()))?;
    if let Some(dest) = dest {
        return validate_move(fleet, &vfw.name, dest);
    }
    let idx = Index::new(fleet)?;
    let vi = find_vm(fleet, &vfw.name)?;
    let s = idx.vm_node[vi];
    source_reachable(fleet, s as usize)?;
    let reqs = vec![Req::of(vfw)];
    let cat = catalog_for(&idx, &reqs);
    let prob = Problem::new(&idx, &cat, reqs, &[s]);
    let st = prob.fresh();
    match prob.choose(&st, 0, true, engine::Mode::Balanced) {
        Some(n) => Ok(Move {
            vm: vfw.name.clone(),
            from: vfw.node.clone(),
            to: idx.name(n).to_string(),
            wave: 0,
            kind: VmKind::Vfw,
            not_migratable: None,
        }),
        None => Err(PlanError::Infeasible {
            unplaced: vec![Unplaced {
                vm: vfw.name.clone(),
                reason: prob.explain(&st, 0),
            }],
        }),
    }
}

/// Every node `vm` could move to now (hard constraints), best first (VFW
/// spreading, then least loaded, then name). `exclude` removes nodes, e.g.
/// the one a failed migration just tried. Unknown VM or invalid fleet: empty.
pub fn feasible_destinations(fleet: &Fleet, vm: &str, exclude: &[&str]) -> Vec<String> {
    let Ok(idx) = Index::new(fleet) else {
        return Vec::new();
    };
    let Ok(vi) = find_vm(fleet, vm) else {
        return Vec::new();
    };
    let mut excluded = vec![idx.vm_node[vi]];
    excluded.extend(exclude.iter().filter_map(|n| idx.node(n).ok()));
    let reqs = vec![Req::of(&fleet.vms[vi])];
    let cat = catalog_for(&idx, &reqs);
    let prob = Problem::new(&idx, &cat, reqs, &excluded);
    prob.ranked(&prob.fresh(), 0, true)
        .into_iter()
        .map(|n| idx.name(n).to_string())
        .collect()
}

/// Order `nodes` for rolling maintenance with at most `max_unavailable` of
/// them down at once. See the `rolling` module for the packing rule.
pub fn plan_rolling(
    fleet: &Fleet,
    nodes: &[String],
    max_unavailable: usize,
) -> Result<RollingPlan, PlanError> {
    let idx = Index::new(fleet)?;
    rolling::plan(&idx, nodes, max_unavailable)
}

/// [`plan_rolling`] and how its trials were decided (for `planner-bench`).
#[doc(hidden)]
pub fn plan_rolling_stats(
    fleet: &Fleet,
    nodes: &[String],
    max_unavailable: usize,
) -> Result<(RollingPlan, RollingStats), PlanError> {
    let idx = Index::new(fleet)?;
    rolling::plan_with_stats(&idx, nodes, max_unavailable)
}

/// [`plan_rolling`] as it was before incremental group checks: every trial
/// re-places all of the group's VMs. The reference for the tests and the
/// baseline of `planner-bench`; slow on large groups.
#[doc(hidden)]
pub fn plan_rolling_reference(
    fleet: &Fleet,
    nodes: &[String],
    max_unavailable: usize,
) -> Result<RollingPlan, PlanError> {
    let idx = Index::new(fleet)?;
    rolling::plan_reference(&idx, nodes, max_unavailable)
}

/// The reference check of one rolling group: whether every VM of `group`'s
/// nodes can be placed on the other ENABLED, reachable nodes at once (full
/// engine, bounded exhaustive search). For tests.
#[doc(hidden)]
pub fn rolling_group_drainable(fleet: &Fleet, group: &[String]) -> Result<bool, PlanError> {
    let idx = Index::new(fleet)?;
    rolling::group_drainable(&idx, group)
}

#[cfg(test)]
mod unit_tests;
