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

/// The engine ends a stopped job with "stopped: deadline passed"; the
/// operator is told which deadline, as its stop request recorded it
/// ("deadline of 3 s expired").
pub(crate) fn name_the_deadline(
    c: &crate::server::Coordinator,
    job: &str,
    summary: String,
) -> String {
    match c.stops.reason(job) {
        Some(r) if r.starts_with("deadline") => summary.replacen("deadline passed", &r, 1),
        _ => summary,
    }
}
