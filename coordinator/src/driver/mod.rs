//! The I/O half of the job engine: performs the pure machines' actions
//! (`crate::engine`) against the registry, the job journal and the agents,
//! and runs the jobs not yet expressed as machines.

pub mod drain;
pub mod enable;
pub mod executor;
pub mod rolling;
pub mod single;
pub mod slots;
pub mod stop_all;
