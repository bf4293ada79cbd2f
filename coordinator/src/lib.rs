//! nodemaint coordinator: the node registry, the planner-driven jobs, the
//! request/reply API, and the operator CLI's client side.
//!
//! Grouped by concern: `engine` decides (pure state machines, simulated
//! under faults), `driver` performs (NATS, KV, agents), `api` answers
//! requests (pre-flight checks included), `cli` and `portal` are the two
//! operator front ends. Beneath them, three parts that know nothing of each
//! other or of the groups above: `registry` (nodes), `jobs` (the job store)
//! and `link` (commands to agents and their results); `server` composes
//! them into the `Coordinator`. Imports only go down this list, never in
//! a loop: api → driver → engine → jobs → registry.

pub mod api;
pub mod cli;
pub mod config;
pub mod driver;
pub mod engine;
pub mod fleet;
pub mod jobs;
pub mod lease;
pub mod link;
pub mod logs;
pub mod metrics;
pub mod natsauth;
pub mod portal;
pub mod refusal;
pub mod registry;
pub mod server;
