//! Exhaustive comparison on small fleets (≤ 4 nodes, ≤ 7 VMs to move): the
//! planner says "infeasible" exactly when brute force finds no assignment.
//! Also, for rolling, a node reported undrainable for capacity reasons must
//! really be undrainable.

use nodemaint_planner::synth::{exhaustive_drain, SplitMix64};
use nodemaint_planner::*;

/// Tight random fleets: capacity is scarce so both outcomes are common.
fn small_fleet(rng: &mut SplitMix64) -> Fleet {
    let n = 2 + rng.below(3) as usize; // 2..=4 nodes
    let mut nodes: Vec<Node> = (0..n)
        .map(|i| Node {
            mem_ratio: if rng.chance(0.2) { 1.5 } else { 1.0 },
            vcpu_ratio: if rng.chance(0.5) { 1.0 } else { 2.0 },
            ..Node::new(
                format!("n{i}"),
                1024 * (2 + rng.below(7)),
                2 + rng.below(5) as u32,
            )
        })
        .collect();
    for node in nodes.iter_mut().skip(1) {
        if rng.chance(0.1) {
            node.status = NodeStatus::Maintenance;
        }
        if rng.chance(0.05) {
            node.reachable = false;
        }
    }
    let k = rng.below(8) as usize; // VMs on n0: 0..=7
    let others = rng.below(5) as usize;
    let mut vms = Vec::new();
    for i in 0..k + others {
        let on = if i < k {
            0
        } else {
            1 + rng.below(n as u64 - 1) as usize
        };
        let mut v = Vm::new(
            format!("v{i}"),
            format!("n{on}"),
            256 * (1 + rng.below(8)),
            1 + rng.below(2) as u32,
        );
        if rng.chance(0.2) {
            v.kind = VmKind::Vfw;
            v.cloudspace = Some(format!("cs{}", rng.below(3)));
        }
        if rng.chance(0.35) {
            v.anti_affinity = Some(format!("g{}", rng.below(2)));
        }
        vms.push(v);
    }
    Fleet { nodes, vms }
}

#[test]
fn planner_agrees_with_brute_force() {
    let mut rng = SplitMix64(0x5eed);
    let (mut feasible, mut infeasible) = (0, 0);
    for case in 0..20_000 {
        let f = small_fleet(&mut rng);
        let brute = exhaustive_drain(&f, "n0");
        match plan_drain(&f, "n0", &Limits::default()) {
            Ok(p) => {
                assert!(
                    brute.is_some(),
                    "case {case}: planner found a plan brute force says is impossible: {f:?}"
                );
                verify_drain(&f, "n0", &Limits::default(), &p.moves)
                    .unwrap_or_else(|e| panic!("case {case}: {e}"));
                feasible += 1;
            }
            Err(PlanError::Infeasible { unplaced }) => {
                assert!(
                    brute.is_none(),
                    "case {case}: planner gave up but an assignment exists: {f:?}\n{unplaced:?}"
                );
                infeasible += 1;
            }
            Err(e) => panic!("case {case}: {e}"),
        }
    }
    // The generator must exercise both sides.
    assert!(
        feasible > 2_000 && infeasible > 2_000,
        "feasible {feasible}, infeasible {infeasible}"
    );
}

#[test]
fn rolling_undrainable_matches_brute_force() {
    let mut rng = SplitMix64(0xfeed);
    for case in 0..3_000 {
        let f = small_fleet(&mut rng);
        let all: Vec<String> = f.nodes.iter().map(|n| n.name.clone()).collect();
        let plan = plan_rolling(&f, &all, 1).unwrap();
        for n in &f.nodes {
            let in_groups = plan.groups.iter().flatten().any(|g| *g == n.name);
            let status_ok =
                n.reachable && matches!(n.status, NodeStatus::Enabled | NodeStatus::Maintenance);
            let drainable = status_ok && exhaustive_drain(&f, &n.name).is_some();
            assert_eq!(
                in_groups, drainable,
                "case {case}, node {}: {plan:?}",
                n.name
            );
        }
    }
}
