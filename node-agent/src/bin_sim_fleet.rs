//! `sim-fleet`: N node-agents in one process on the in-memory hypervisor,
//! each with its own NATS connection, consumer and heartbeats, so the
//! coordinator cannot tell them from real ones. For scale tests and what-if
//! rolling maintenance.
//!
//!   sim-fleet --nodes 200 --vms-per-node 10 --nats-url nats://127.0.0.1:4222
//!
//! The reboot hook `sim-reboot` power-cycles a node: its VMs shut off, a new
//! boot id, after `--reboot-secs` (scaled).

use clap::Parser;
use nodemaint_agent::agent::HookHandler;
use nodemaint_agent::config::AgentConfig;
use nodemaint_agent::hypervisor::sim::{SimWorld, SCHEME};
use nodemaint_proto::model::{Capacity, Vm, VmKind, VmState};
use nodemaint_proto::pb;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Run a simulated fleet of node-agents against a real NATS server"
)]
struct Args {
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// A NATS .creds file every simulated agent connects with.
    #[arg(long, env = "NATS_CREDS")]
    creds: Option<std::path::PathBuf>,
    /// nodemaint's own credentials file (mode 0600) every simulated agent connects with.
    #[arg(long, env = "NODEMAINT_CREDS")]
    nodemaint_creds: Option<std::path::PathBuf>,
    /// CA certificate of the NATS servers (turns TLS on).
    #[arg(long, env = "NATS_CA")]
    ca: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    #[arg(long, default_value_t = 5)]
    vms_per_node: usize,
    /// Cloudspaces; each gets one VFW, spread round-robin over the nodes.
    #[arg(long, default_value_t = 3)]
    cloudspaces: usize,
    /// Node memory in MiB.
    #[arg(long, default_value_t = 65536)]
    node_memory_mib: u64,
    #[arg(long, default_value_t = 32)]
    node_vcpus: u32,
    /// Memory of each VM in MiB.
    #[arg(long, default_value_t = 2048)]
    vm_memory_mib: u64,
    /// Migration bandwidth in MiB/s: a migration takes memory ÷ bandwidth.
    #[arg(long, default_value_t = 1024)]
    bandwidth_mibs: u64,
    /// Simulated seconds per real second are 1/time_scale (0.01 = 100× faster).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Duration of a simulated reboot (before scaling).
    #[arg(long, default_value_t = 60.0)]
    reboot_secs: f64,
    #[arg(long, default_value_t = 2000)]
    heartbeat_interval_ms: u64,
    /// Node name prefix: nodes are PREFIX0001, PREFIX0002, …
    #[arg(long, default_value = "sim")]
    prefix: String,
    #[arg(long, env = "NODEMAINT_PREFIX", default_value = "nodemaint")]
    subject_prefix: String,
    /// Check every 50 ms that each VM exists on exactly one node and none is
    /// lost; violations are printed as `INVARIANT VIOLATION: …` on stderr.
    #[arg(long)]
    check_invariants: bool,
    /// Where boot-id files live.
    #[arg(long, default_value = "/tmp/nodemaint-sim")]
    state_dir: PathBuf,
    /// Serve every simulated agent's Prometheus metrics (label `node`) on
    /// http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let a = Args::parse();
    std::fs::create_dir_all(&a.state_dir)?;
    if let Some(addr) = a.metrics_listen {
        nodemaint_agent::metrics::listen(addr).await?;
    }
    let world = SimWorld::new(a.bandwidth_mibs, a.time_scale);
    let names: Vec<String> = (1..=a.nodes)
        .map(|i| format!("{}{i:04}", a.prefix))
        .collect();
    for (i, node) in names.iter().enumerate() {
        for j in 0..a.vms_per_node {
            let cs = format!("cs{}", (i * a.vms_per_node + j) % a.cloudspaces.max(1) + 1);
            world.add_vm(
                node,
                sim_vm(&format!("{node}-vm{j}"), VmKind::User, &cs, a.vm_memory_mib),
            );
        }
    }
    for c in 0..a.cloudspaces {
        let node = &names[c % names.len()];
        let cs = format!("cs{}", c + 1);
        world.add_vm(node, sim_vm(&format!("{cs}-vfw"), VmKind::Vfw, &cs, 512));
    }
    let mut tasks = Vec::new();
    for node in &names {
        let boot = a.state_dir.join(format!("{node}.boot_id"));
        std::fs::write(&boot, uuid::Uuid::new_v4().to_string())?;
        let mut cfg = AgentConfig::for_node(node);
        cfg.nats_url = a.nats_url.clone();
        cfg.nats_creds = a.nodemaint_creds.clone();
        cfg.nats_flags.nats_creds = a.creds.clone();
        cfg.nats_ca = a.ca.clone();
        cfg.libvirt_uri = format!("{SCHEME}{node}");
        cfg.address = Some(node.clone());
        cfg.migration_libvirt_uri = Some(format!("{SCHEME}{node}"));
        cfg.test_drivers = true;
        cfg.heartbeat_interval_ms = a.heartbeat_interval_ms;
        cfg.inventory_poll_ms = 1000;
        cfg.boot_id_file = boot.clone();
        cfg.subject_prefix = a.subject_prefix.clone();
        // `rolling start --hook reboot` power-cycles the simulated node.
        cfg.hooks.insert("reboot".into(), "sim-reboot".into());
        let hv = Arc::new(world.node(
            node,
            Capacity {
                vcpus: a.node_vcpus,
                memory_mib: a.node_memory_mib,
            },
        ));
        let hooks = reboot_hook(
            world.clone(),
            node.clone(),
            boot,
            a.reboot_secs * a.time_scale,
        );
        tasks.push(tokio::spawn(async move {
            let name = cfg.node.clone();
            if let Err(e) =
                nodemaint_agent::agent::run_with(cfg, hv, Some(hooks), std::future::pending()).await
            {
                eprintln!("sim-fleet: agent {name}: {e:#}");
            }
        }));
    }
    eprintln!(
        "sim-fleet: {} agents running against {}",
        names.len(),
        a.nats_url
    );
    if a.check_invariants {
        tokio::spawn(check_invariants(world.clone()));
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// Invariants 1 and 2 on the simulated hypervisors' own state (the truth,
/// not the coordinator's view): every VM on exactly one node, none lost.
async fn check_invariants(world: SimWorld) {
    let expected = world.placements().len();
    let mut checks: u64 = 0;
    loop {
        let placements = world.placements();
        let mut names: Vec<&str> = placements.iter().map(|(_, v)| v.name.as_str()).collect();
        names.sort();
        let total = names.len();
        names.dedup();
        if names.len() != total {
            eprintln!(
                "INVARIANT VIOLATION: a VM is on two nodes ({total} placements, {} VMs)",
                names.len()
            );
        }
        if names.len() != expected {
            eprintln!(
                "INVARIANT VIOLATION: {} VMs, expected {expected}",
                names.len()
            );
        }
        checks += 1;
        if checks == 1 || checks.is_multiple_of(100) {
            eprintln!("sim-fleet: invariants held over {checks} checks ({expected} VMs)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sim_vm(name: &str, kind: VmKind, cs: &str, memory_mib: u64) -> Vm {
    Vm {
        uuid: format!("sim-{name}"),
        name: name.to_string(),
        kind,
        cloudspace: Some(cs.to_string()),
        anti_affinity: None,
        state: VmState::Running,
        vcpus: 1,
        memory_mib,
        persistent: true,
        not_migratable: None,
    }
}

/// `sim-reboot`: every VM of the node shuts off, the boot id changes.
fn reboot_hook(world: SimWorld, node: String, boot: PathBuf, secs: f64) -> HookHandler {
    Arc::new(move |_name: &str, command: &str| {
        if command.trim() != "sim-reboot" {
            return None;
        }
        std::thread::sleep(Duration::from_secs_f64(secs.max(0.0)));
        world.power_cycle(&node);
        let _ = std::fs::write(&boot, uuid::Uuid::new_v4().to_string());
        Some(pb::CommandResult {
            ok: true,
            message: format!("{node} power-cycled (simulated)"),
            ..Default::default()
        })
    })
}
