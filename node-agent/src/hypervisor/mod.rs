//! The narrow interface the agent needs from a hypervisor, and its backends:
//! [`libvirt::LibvirtHypervisor`] (any libvirt URI, production and tests) and
//! [`sim::SimHypervisor`] (in memory, for scale and what-if runs).
//!
//! Every method blocks; the agent calls them on `spawn_blocking`.

pub mod libvirt;
pub mod metadata;
pub mod sim;
pub mod template;

use nodemaint_proto::model::{Capacity, Vm, VmState};
use std::time::Duration;

/// Where and how to migrate a domain.
#[derive(Clone, Debug)]
pub struct MigrateTarget {
    /// Destination libvirt URI for peer-to-peer migration (`qemu+tcp://10.0.0.2/system`).
    pub libvirt_uri: String,
    /// Explicit migration URI with the destination's address (`tcp://10.0.0.2`),
    /// so the destination does not advertise a hostname the source can't resolve.
    pub migrate_uri: String,
    /// Abort the migration job after this long; the VM stays on the source.
    pub timeout: Duration,
    /// Bandwidth cap in MiB/s, 0 for unlimited.
    pub max_speed_mibs: u64,
    /// Abort when the data remaining has not reached a new low for this
    /// long (a migration that does not converge or whose link stalled).
    pub progress_timeout: Duration,
    /// Set (with a reason) to cancel the migration; checked while it runs.
    pub cancel: Cancel,
    /// How far a live migration may go to converge.
    pub policy: crate::converge::Policy,
}

/// A cancellation request shared between the agent and a running migration.
#[derive(Clone, Debug, Default)]
pub struct Cancel(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl Cancel {
    pub fn request(&self, reason: &str) {
        self.0
            .lock()
            .unwrap()
            .get_or_insert_with(|| reason.to_string());
    }

    pub fn requested(&self) -> Option<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A migration progress sample from the domain's job stats.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MigrateProgress {
    pub percent: f64,
    pub bytes_processed: u64,
    pub bytes_remaining: u64,
    /// Memory pass, guest dirty rate and copy rate (bytes/s), when known.
    pub pass: u64,
    pub dirty_rate: u64,
    pub bandwidth: u64,
    /// Expected seconds to the end; `None` while it does not converge.
    pub eta_s: Option<f64>,
    /// An escalation (or what QEMU did on its own) and why.
    pub escalation: Option<Escalation>,
    /// The guest's measured downtime, on the last sample of a live migration.
    pub downtime_ms: Option<u64>,
}

/// One escalation step of a migration: its metric label
/// ([`crate::converge::Action::step`]) and its reason.
#[derive(Clone, Debug, PartialEq)]
pub struct Escalation {
    pub step: &'static str,
    pub reason: String,
}

/// How a stop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    AlreadyOff,
    Graceful,
    /// The guest ignored the ACPI shutdown within the timeout and was destroyed.
    Destroyed,
}

/// Typed hypervisor errors; the agent maps them to wire error codes.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    #[error("domain {0} not found")]
    NotFound(String),
    #[error("{0}")]
    WrongState(String),
    #[error("migration of {vm} aborted after {secs} s timeout; it still runs on the source")]
    Timeout { vm: String, secs: u64 },
    #[error("migration of {vm} made no progress for {secs} s and was aborted; it still runs on the source")]
    NoProgress { vm: String, secs: u64 },
    #[error("migration of {vm} cancelled ({reason}); it still runs on the source")]
    Cancelled { vm: String, reason: String },
    #[error("cannot connect to {uri}: {message}")]
    Connection { uri: String, message: String },
    #[error("libvirt error {code} ({domain}): {message}")]
    Libvirt {
        code: i32,
        domain: i32,
        message: String,
    },
    #[error("{0}")]
    Other(String),
}

/// What the agent asks of a hypervisor. Implementations must be safe to
/// call from several blocking threads at once.
pub trait Hypervisor: Send + Sync + 'static {
    /// Every defined or running domain, with kind and cloudspace from metadata.
    fn list(&self) -> Result<Vec<Vm>, HvError>;
    fn host_capacity(&self) -> Result<Capacity, HvError>;
    fn start(&self, vm: &str) -> Result<(), HvError>;
    /// ACPI shutdown, wait up to `graceful`, then destroy.
    fn stop(&self, vm: &str, graceful: Duration) -> Result<StopOutcome, HvError>;
    /// Define (persistently) from domain XML; returns the domain name.
    fn define(&self, xml: &str) -> Result<String, HvError>;
    /// Whether this host's libvirt can open `uri` (a destination's).
    fn probe(&self, uri: &str) -> Result<(), HvError>;
    /// Live (offline when shut off), peer-to-peer, persistent on the
    /// destination, undefined on the source. `progress` is called about
    /// once a second while it runs.
    fn migrate(
        &self,
        vm: &str,
        target: &MigrateTarget,
        progress: &mut dyn FnMut(MigrateProgress),
    ) -> Result<(), HvError>;
    /// Whether a job (an outgoing migration) still runs on the domain;
    /// false when it is not defined here.
    fn job_running(&self, _vm: &str) -> Result<bool, HvError> {
        Ok(false)
    }
    /// The domain's state on another host's hypervisor (`None`: not defined
    /// there): where a migration cut off by an agent restart ended up.
    fn remote_state(&self, uri: &str, _vm: &str) -> Result<Option<VmState>, HvError> {
        Err(HvError::Other(format!(
            "this hypervisor cannot look at {uri}"
        )))
    }
}
