//! The registry seen as a planner fleet snapshot (and as the fleet file of
//! `coordinator fleet export`).

use nodemaint_planner as planner;
use nodemaint_proto::model::{NodeRecord, VmState};

/// Builds the planner's snapshot of the live fleet at `now_ms`.
pub fn snapshot(nodes: &[NodeRecord], now_ms: i64) -> planner::Fleet {
    let mut fleet = planner::Fleet::default();
    for n in nodes {
        let mut node = planner::Node::new(n.name.clone(), n.capacity.memory_mib, n.capacity.vcpus);
        node.status = n.status;
        node.reachable = n.reachable_at(now_ms);
        fleet.nodes.push(node);
        for d in &n.domains {
            let mut vm = planner::Vm::new(d.name.clone(), n.name.clone(), d.memory_mib, d.vcpus);
            vm.kind = d.kind;
            vm.cloudspace = d.cloudspace.clone();
            vm.anti_affinity = d.anti_affinity.clone();
            vm.not_migratable = d.not_migratable.clone();
            vm.state = match d.state {
                VmState::Running | VmState::Migrating => planner::VmState::Running,
                VmState::Shutoff | VmState::Crashed => planner::VmState::Shutoff,
                VmState::Paused => planner::VmState::Paused,
                VmState::Other => planner::VmState::Other,
            };
            fleet.vms.push(vm);
        }
    }
    fleet
}

pub fn limits(l: &crate::config::Limits, max_parallel: u32) -> planner::Limits {
    let mut out = *l;
    if max_parallel > 0 {
        // --max-parallel sets the drained node's outbound concurrency; the
        // fleet-wide limit still caps it.
        out.per_source = (max_parallel as usize).min(out.global).max(1);
    }
    out
}
