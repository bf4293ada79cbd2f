//! The domain model: what the coordinator stores in its KV buckets and what
//! the CLI prints with `--output json`. Wire types convert into these at the
//! edges, so nothing else handles raw protobuf enums (`i32`s).

use crate::pb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A VM's kind: the planner's type (user VM or a cloudspace's VFW).
pub use nodemaint_planner::VmKind;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VmState {
    Running,
    #[default]
    Shutoff,
    Paused,
    Migrating,
    Crashed,
    Other,
}

/// A node's status: the planner's type, so the registry and the planner
/// share one.
pub use nodemaint_planner::NodeStatus;

/// One VM (libvirt domain).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Vm {
    pub uuid: String,
    pub name: String,
    pub kind: VmKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudspace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_affinity: Option<String>,
    pub state: VmState,
    pub vcpus: u32,
    pub memory_mib: u64,
    #[serde(default)]
    pub persistent: bool,
    /// Why it cannot live-migrate, if it can't.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_migratable: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// A node (stack) as the coordinator keeps it in the `nodes` KV bucket.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub status: NodeStatus,
    pub address: String,
    pub libvirt_uri: String,
    pub capacity: Capacity,
    pub boot_id: String,
    pub agent_version: String,
    pub boot_time_ms: i64,
    pub last_seen_ms: i64,
    pub heartbeat_interval_ms: u32,
    /// The wire-contract version the agent speaks (0: older than the field).
    #[serde(default)]
    pub protocol_version: u32,
    pub inventory_generation: u64,
    pub domains: Vec<Vm>,
    /// The job holding this node (maintenance, enable), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_job: Option<String>,
    /// VMs that maintenance stopped, by name → job id; `enable` restarts
    /// exactly these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stopped_by: BTreeMap<String, String>,
    /// VMs a job is putting on this node (a move's destination, a create),
    /// by name → job id, claimed before the command is sent and kept until
    /// the job ends. Entering maintenance and claiming are compare-and-sets
    /// of this same record, so a node never goes into maintenance while a
    /// VM may still land on it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inbound: BTreeMap<String, String>,
    /// When `status` last changed (ms since the epoch; 0 = not recorded,
    /// a record older than the field): "in maintenance since" for alerts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub status_since_ms: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl NodeRecord {
    /// A node is unreachable when it missed three heartbeats (at least 3 s).
    pub fn reachable_at(&self, now_ms: i64) -> bool {
        let grace = (self.heartbeat_interval_ms.max(1000) as i64) * 3;
        self.last_seen_ms > 0 && now_ms - self.last_seen_ms <= grace
    }

    pub fn vms_running(&self) -> usize {
        self.domains
            .iter()
            .filter(|d| d.state == VmState::Running)
            .count()
    }

    /// VMs that run here (or are paused or migrating) without a record
    /// that maintenance stopped them: what a drained node must not have.
    pub fn running_unrecorded(&self) -> Vec<String> {
        self.domains
            .iter()
            .filter(|d| {
                matches!(
                    d.state,
                    VmState::Running | VmState::Paused | VmState::Migrating
                ) && !self.stopped_by.contains_key(&d.name)
            })
            .map(|d| d.name.clone())
            .collect()
    }

    /// Claims `vm` as landing here for `job`; refused unless the node takes
    /// VMs (ENABLED).
    pub fn claim_inbound(&mut self, vm: &str, job: &str) -> Result<(), String> {
        if self.status != NodeStatus::Enabled {
            let status = format!("{:?}", self.status).to_uppercase();
            return Err(format!(
                "node {} is {status}: no VM may land on it",
                self.name
            ));
        }
        self.inbound.insert(vm.to_string(), job.to_string());
        Ok(())
    }

    /// Memory reserved by every defined VM, running or not.
    pub fn memory_used_mib(&self) -> u64 {
        self.domains.iter().map(|d| d.memory_mib).sum()
    }

    pub fn summary(&self, now_ms: i64) -> pb::NodeSummary {
        pb::NodeSummary {
            name: self.name.clone(),
            status: pb::NodeStatus::from(self.status) as i32,
            reachable: self.reachable_at(now_ms),
            address: self.address.clone(),
            capacity: Some(pb::HostCapacity {
                vcpus: self.capacity.vcpus,
                memory_mib: self.capacity.memory_mib,
            }),
            vms_running: self.vms_running() as u32,
            vms_total: self.domains.len() as u32,
            memory_used_mib: self.memory_used_mib(),
            last_seen_ms: self.last_seen_ms,
            boot_id: self.boot_id.clone(),
            agent_version: self.agent_version.clone(),
            current_job: self.current_job.clone().unwrap_or_default(),
            boot_time_ms: self.boot_time_ms,
        }
    }
}

/// Node summary as printed by the CLI (`node list --output json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub status: NodeStatus,
    pub reachable: bool,
    pub address: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub memory_used_mib: u64,
    pub vms_running: u32,
    pub vms_total: u32,
    pub last_seen_ms: i64,
    pub boot_id: String,
    pub boot_time_ms: i64,
    pub agent_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_job: Option<String>,
}

impl From<&pb::NodeSummary> for NodeView {
    fn from(s: &pb::NodeSummary) -> Self {
        let cap = s.capacity.unwrap_or_default();
        NodeView {
            name: s.name.clone(),
            status: s.status().into(),
            reachable: s.reachable,
            address: s.address.clone(),
            vcpus: cap.vcpus,
            memory_mib: cap.memory_mib,
            memory_used_mib: s.memory_used_mib,
            vms_running: s.vms_running,
            vms_total: s.vms_total,
            last_seen_ms: s.last_seen_ms,
            boot_id: s.boot_id.clone(),
            boot_time_ms: s.boot_time_ms,
            agent_version: s.agent_version.clone(),
            current_job: (!s.current_job.is_empty()).then(|| s.current_job.clone()),
        }
    }
}

/// A VM with its node, as printed by `vm list --output json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmView {
    pub node: String,
    #[serde(flatten)]
    pub vm: Vm,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
}

/// A cloudspace's firewall and where it runs (`vfw list --output json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VfwView {
    pub cloudspace: String,
    pub node: String,
    pub name: String,
    pub state: VmState,
    pub node_reachable: bool,
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl From<pb::VmKind> for VmKind {
    fn from(k: pb::VmKind) -> Self {
        match k {
            pb::VmKind::Vfw => VmKind::Vfw,
            _ => VmKind::User,
        }
    }
}

impl From<VmKind> for pb::VmKind {
    fn from(k: VmKind) -> Self {
        match k {
            VmKind::User => pb::VmKind::User,
            VmKind::Vfw => pb::VmKind::Vfw,
        }
    }
}

impl From<pb::VmState> for VmState {
    fn from(s: pb::VmState) -> Self {
        match s {
            pb::VmState::Running => VmState::Running,
            pb::VmState::Shutoff => VmState::Shutoff,
            pb::VmState::Paused => VmState::Paused,
            pb::VmState::Migrating => VmState::Migrating,
            pb::VmState::Crashed => VmState::Crashed,
            pb::VmState::Other | pb::VmState::Unspecified => VmState::Other,
        }
    }
}

impl From<VmState> for pb::VmState {
    fn from(s: VmState) -> Self {
        match s {
            VmState::Running => pb::VmState::Running,
            VmState::Shutoff => pb::VmState::Shutoff,
            VmState::Paused => pb::VmState::Paused,
            VmState::Migrating => pb::VmState::Migrating,
            VmState::Crashed => pb::VmState::Crashed,
            VmState::Other => pb::VmState::Other,
        }
    }
}

impl From<pb::NodeStatus> for NodeStatus {
    fn from(s: pb::NodeStatus) -> Self {
        match s {
            pb::NodeStatus::Maintenance => NodeStatus::Maintenance,
            pb::NodeStatus::Error => NodeStatus::Error,
            pb::NodeStatus::Decommissioned => NodeStatus::Decommissioned,
            pb::NodeStatus::Enabled | pb::NodeStatus::Unspecified => NodeStatus::Enabled,
        }
    }
}

impl From<NodeStatus> for pb::NodeStatus {
    fn from(s: NodeStatus) -> Self {
        match s {
            NodeStatus::Enabled => pb::NodeStatus::Enabled,
            NodeStatus::Maintenance => pb::NodeStatus::Maintenance,
            NodeStatus::Error => pb::NodeStatus::Error,
            NodeStatus::Decommissioned => pb::NodeStatus::Decommissioned,
        }
    }
}

impl From<&pb::Domain> for Vm {
    fn from(d: &pb::Domain) -> Self {
        Vm {
            uuid: d.uuid.clone(),
            name: d.name.clone(),
            kind: d.kind().into(),
            cloudspace: opt(&d.cloudspace),
            anti_affinity: opt(&d.anti_affinity),
            state: d.state().into(),
            vcpus: d.vcpus,
            memory_mib: d.memory_mib,
            persistent: d.persistent,
            not_migratable: opt(&d.not_migratable),
        }
    }
}

impl From<&Vm> for pb::Domain {
    fn from(v: &Vm) -> Self {
        pb::Domain {
            uuid: v.uuid.clone(),
            name: v.name.clone(),
            kind: pb::VmKind::from(v.kind) as i32,
            cloudspace: v.cloudspace.clone().unwrap_or_default(),
            anti_affinity: v.anti_affinity.clone().unwrap_or_default(),
            state: pb::VmState::from(v.state) as i32,
            vcpus: v.vcpus,
            memory_mib: v.memory_mib,
            persistent: v.persistent,
            not_migratable: v.not_migratable.clone().unwrap_or_default(),
        }
    }
}

/// How far a live migration may go to converge (issue 17 §1): the
/// coordinator's `[migration.converge]`, carried by each migrate command.
/// See `node-agent/src/converge.rs` for the ladder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvergePolicy {
    /// Allowed downtime steps in ms; the first is set when the migration
    /// starts, the last is the ceiling. Empty: QEMU's 300 ms, never raised.
    #[serde(default = "default_downtime_steps")]
    pub downtime_steps_ms: Vec<u32>,
    /// Memory passes to wait after a step before judging it.
    #[serde(default = "default_passes_per_step")]
    pub passes_per_step: u32,
    /// QEMU throttles the guest's vCPUs when passes stop shrinking.
    #[serde(default = "default_true")]
    pub auto_converge: bool,
    /// Switch to post-copy past the ceiling. Off by default: a destination
    /// or link failure during post-copy loses the guest.
    #[serde(default)]
    pub post_copy: bool,
}

fn default_downtime_steps() -> Vec<u32> {
    vec![300, 600, 1200, 2000]
}
fn default_passes_per_step() -> u32 {
    2
}
fn default_true() -> bool {
    true
}

impl Default for ConvergePolicy {
    fn default() -> Self {
        ConvergePolicy {
            downtime_steps_ms: default_downtime_steps(),
            passes_per_step: default_passes_per_step(),
            auto_converge: true,
            post_copy: false,
        }
    }
}

impl ConvergePolicy {
    pub fn to_pb(&self) -> pb::ConvergePolicy {
        pb::ConvergePolicy {
            downtime_steps_ms: self.downtime_steps_ms.clone(),
            passes_per_step: self.passes_per_step,
            auto_converge: self.auto_converge,
            post_copy: self.post_copy,
        }
    }

    pub fn from_pb(p: &pb::ConvergePolicy) -> Self {
        ConvergePolicy {
            downtime_steps_ms: p.downtime_steps_ms.clone(),
            passes_per_step: p.passes_per_step,
            auto_converge: p.auto_converge,
            post_copy: p.post_copy,
        }
    }

    /// The policy with a request's changes: another ceiling (steps above it
    /// dropped, the ceiling added), post-copy permitted, auto-converge off.
    pub fn with_request(&self, r: Option<&pb::ConvergeRequest>) -> Self {
        let mut p = self.clone();
        let Some(r) = r else { return p };
        if r.max_downtime_ms > 0 {
            p.downtime_steps_ms.retain(|&ms| ms < r.max_downtime_ms);
            p.downtime_steps_ms.push(r.max_downtime_ms);
        }
        p.post_copy |= r.post_copy;
        p.auto_converge &= !r.no_auto_converge;
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_enabled_node_can_be_claimed_as_a_destination() {
        let mut n = NodeRecord {
            name: "n1".into(),
            ..Default::default()
        };
        n.claim_inbound("vm1", "job1").unwrap();
        assert_eq!(n.inbound["vm1"], "job1");
        n.status = NodeStatus::Maintenance;
        let err = n.claim_inbound("vm2", "job2").unwrap_err();
        assert_eq!(err, "node n1 is MAINTENANCE: no VM may land on it");
        assert!(
            !n.inbound.contains_key("vm2"),
            "a refused claim leaves no trace"
        );
    }

    #[test]
    fn domain_roundtrips_through_the_model() {
        let vm = Vm {
            uuid: "u".into(),
            name: "cs1-vfw".into(),
            kind: VmKind::Vfw,
            cloudspace: Some("cs1".into()),
            anti_affinity: None,
            state: VmState::Running,
            vcpus: 1,
            memory_mib: 64,
            persistent: true,
            not_migratable: Some("has a host device".into()),
        };
        assert_eq!(Vm::from(&pb::Domain::from(&vm)), vm);
    }

    #[test]
    fn json_uses_operator_words() {
        let v = serde_json::to_value(VmKind::Vfw).unwrap();
        assert_eq!(v, "VFW");
        let s = serde_json::to_value(NodeStatus::Maintenance).unwrap();
        assert_eq!(s, "MAINTENANCE");
    }

    #[test]
    fn reachability_follows_heartbeats() {
        let n = NodeRecord {
            last_seen_ms: 10_000,
            heartbeat_interval_ms: 1000,
            ..Default::default()
        };
        assert!(n.reachable_at(12_000));
        assert!(!n.reachable_at(13_001));
        assert!(!NodeRecord::default().reachable_at(1));
    }
}
