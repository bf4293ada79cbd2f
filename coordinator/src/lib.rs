//! nodemaint coordinator: the node registry, the planner-driven jobs, the
//! request/reply API, and the operator CLI's client side.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod driver;
pub mod engine;
pub mod executor;
pub mod fleet;
pub mod jobs;
pub mod lease;
pub mod logs;
pub mod metrics;
pub mod natsauth;
pub mod output;
pub mod portal;
pub mod preflight;
pub mod registry;
pub mod rolling;
pub mod server;
pub mod slots;
