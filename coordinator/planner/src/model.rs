//! The planner's data model: the fleet snapshot it reads and the plans it
//! writes.
//!
//! These types double as the *fleet file* format (`coordinator fleet export`,
//! `coordinator plan ... --fleet FILE`): every optional field has a serde
//! default so a minimal file only needs names, sizes and placement. Enum
//! values are written in upper case (`"ENABLED"`, `"VFW"`, `"SHUTOFF"`), as
//! the rest of nodemaint does.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A snapshot of the cloud: every node and every VM with its current node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Fleet {
    pub nodes: Vec<Node>,
    pub vms: Vec<Vm>,
}

/// A hypervisor. Capacity is `mem_mib × mem_ratio` MiB and
/// `vcpus × vcpu_ratio` vCPUs (the ratios are the overcommit factors).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub mem_mib: u64,
    pub vcpus: u32,
    #[serde(default)]
    pub status: NodeStatus,
    #[serde(default = "default_true")]
    pub reachable: bool,
    #[serde(default = "default_mem_ratio")]
    pub mem_ratio: f64,
    #[serde(default = "default_vcpu_ratio")]
    pub vcpu_ratio: f64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Node {
    /// A reachable ENABLED node with the default ratios (1.0 memory, 4.0 vCPU).
    pub fn new(name: impl Into<String>, mem_mib: u64, vcpus: u32) -> Self {
        Node {
            name: name.into(),
            mem_mib,
            vcpus,
            status: NodeStatus::Enabled,
            reachable: true,
            mem_ratio: default_mem_ratio(),
            vcpu_ratio: default_vcpu_ratio(),
            labels: BTreeMap::new(),
        }
    }

    /// Memory that may be reserved on this node, in MiB (rounded down).
    pub fn mem_capacity(&self) -> u64 {
        scale(self.mem_mib, self.mem_ratio)
    }

    /// vCPUs that may be reserved on this node (rounded down).
    pub fn vcpu_capacity(&self) -> u64 {
        scale(u64::from(self.vcpus), self.vcpu_ratio)
    }

    /// Whether the node may receive VMs: ENABLED and reachable.
    pub fn accepts_vms(&self) -> bool {
        self.status == NodeStatus::Enabled && self.reachable
    }
}

fn scale(v: u64, ratio: f64) -> u64 {
    // Ratios are validated (finite, > 0) before planning; the cast saturates.
    (v as f64 * ratio).floor() as u64
}

fn default_true() -> bool {
    true
}
fn default_mem_ratio() -> f64 {
    1.0
}
fn default_vcpu_ratio() -> f64 {
    4.0
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum NodeStatus {
    #[default]
    Enabled,
    Maintenance,
    Error,
    Decommissioned,
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeStatus::Enabled => "ENABLED",
            NodeStatus::Maintenance => "MAINTENANCE",
            NodeStatus::Error => "ERROR",
            NodeStatus::Decommissioned => "DECOMMISSIONED",
        })
    }
}

/// A virtual machine. Every VM reserves its memory and vCPUs on its node
/// whatever its state: a shut-off VM may be started at any time.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Vm {
    pub name: String,
    pub node: String,
    pub mem_mib: u64,
    pub vcpus: u32,
    #[serde(default)]
    pub kind: VmKind,
    #[serde(default)]
    pub cloudspace: Option<String>,
    #[serde(default)]
    pub anti_affinity: Option<String>,
    #[serde(default)]
    pub state: VmState,
    /// Why it cannot live-migrate (host device, metadata flag), if it can't.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_migratable: Option<String>,
}

impl Vm {
    /// A running USER VM without cloudspace or anti-affinity group.
    pub fn new(name: impl Into<String>, node: impl Into<String>, mem_mib: u64, vcpus: u32) -> Self {
        Vm {
            name: name.into(),
            node: node.into(),
            mem_mib,
            vcpus,
            kind: VmKind::User,
            cloudspace: None,
            anti_affinity: None,
            state: VmState::Running,
            not_migratable: None,
        }
    }
}

/// `VFW` is a cloudspace's virtual firewall/router: moved first, and VFWs of
/// different cloudspaces are spread over distinct nodes where possible.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum VmKind {
    #[default]
    User,
    Vfw,
}

impl std::fmt::Display for VmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmKind::User => "USER",
            VmKind::Vfw => "VFW",
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum VmState {
    #[default]
    Running,
    Shutoff,
    Paused,
    Other,
}

/// Concurrency limits for the migrations of one plan (also the
/// coordinator config's `[limits]`: a missing field takes its default).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// At most this many migrations leave one node at once.
    pub per_source: usize,
    /// At most this many migrations arrive at one node at once.
    pub per_destination: usize,
    /// At most this many migrations in flight in the whole fleet.
    pub global: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_source: 2,
            per_destination: 2,
            global: 5,
        }
    }
}

/// One migration. Moves with the same `wave` may run concurrently; wave
/// `n + 1` starts once wave `n` is done.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub vm: String,
    pub from: String,
    pub to: String,
    pub wave: u32,
    pub kind: VmKind,
    /// Set when the VM runs and cannot live-migrate: the drain must apply
    /// its fallback (stop, cold move) to it, or fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_migratable: Option<String>,
}

/// Where every VM of `node` goes. Moves are sorted by wave; VFWs come first
/// and no user VM is in an earlier wave than a VFW.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DrainPlan {
    pub node: String,
    pub moves: Vec<Move>,
}

impl DrainPlan {
    /// Number of waves (0 for an empty node).
    pub fn waves(&self) -> u32 {
        self.moves.iter().map(|m| m.wave + 1).max().unwrap_or(0)
    }
}

/// A VM the planner could not place, and why (the constraint and numbers).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Unplaced {
    pub vm: String,
    pub reason: String,
}

/// The `--output json` shape of a drain: either `moves` (feasible, `unplaced`
/// empty) or `unplaced` listing every VM that cannot be placed (`moves`
/// empty). Never a partial plan.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DrainReport {
    pub node: String,
    pub feasible: bool,
    pub waves: u32,
    pub moves: Vec<Move>,
    pub unplaced: Vec<Unplaced>,
}

/// A node of a rolling set that cannot be drained even on its own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Undrainable {
    pub node: String,
    pub reason: String,
}

/// Rolling maintenance order: take the groups down one after the other.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RollingPlan {
    pub groups: Vec<Vec<String>>,
    pub undrainable: Vec<Undrainable>,
}
