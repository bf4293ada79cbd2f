//! nodemaint node-agent: runs on every node, executes libvirt operations
//! (start, stop, define, migrate) and hooks for the coordinator, and reports
//! heartbeats, inventory, progress and results as events.

pub mod agent;
pub mod checks;
pub mod config;
pub mod converge;
pub mod hook;
pub mod hypervisor;
pub mod metrics;
pub mod recovery;
