//! `lab-config`: prints a lab agent's or the lab coordinator's config,
//! built from the binaries' own config structs (`nodemaint_tests::lab::config`).
//! deploy/lab writes `agent.toml` and `coordinator.toml` with it.
//!
//!   lab-config agent --node node1 --nats-url nats://10.77.0.1:4222 \
//!     --address 10.77.0.11 --node-dir LAB/node1 --lab-dir LAB [--extra TOML]
//!   lab-config coordinator [--nats-replicas 3 --lease-ttl-s 15 --per-source 2 …]

use clap::{Parser, Subcommand};
use nodemaint_tests::lab::config::{agent_config, coordinator_config, with_extra};
use nodemaint_tests::lab::config::{LabAgent, LabCoordinator};

#[derive(Parser)]
#[command(about = "Print the lab's agent or coordinator config (TOML)")]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// A lab node's agent.toml.
    Agent {
        #[command(flatten)]
        agent: LabAgent,
        /// TOML settings added to (or replacing) the top-level ones,
        /// unchecked (`LAB_AGENT_CONFIG_EXTRA`).
        #[arg(long, default_value = "")]
        extra: String,
    },
    /// The lab's coordinator.toml.
    Coordinator(LabCoordinator),
}

fn main() {
    let text = match Args::parse().what {
        What::Agent { agent, extra } => with_extra(&agent_config(&agent).to_toml(), &extra),
        What::Coordinator(c) => Ok(coordinator_config(&c).to_toml()),
    };
    match text {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("lab-config: {e}");
            std::process::exit(2);
        }
    }
}
