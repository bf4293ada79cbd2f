//! The lab's agent and coordinator configs, built from the binaries' own
//! config structs: `deploy/lab` writes them with `lab-config agent …` and
//! `lab-config coordinator …` (tests/src/bin/lab-config.rs), so a renamed or
//! new setting cannot drift from a copy of the schema in the script.

use nodemaint_agent::checks::{CheckConfig, CheckKind};
use nodemaint_agent::config::AgentConfig;
use nodemaint_coordinator::config::{CoordinatorConfig, User};
use std::path::PathBuf;

/// One lab node's agent.
#[derive(clap::Args, Clone, Debug)]
pub struct LabAgent {
    /// Node name (`nodeI`).
    #[arg(long)]
    pub node: String,
    /// Every NATS member, comma-separated.
    #[arg(long)]
    pub nats_url: String,
    #[arg(long, default_value_t = 1)]
    pub nats_replicas: usize,
    /// The node's address on the lab bridge (migrations reach it there).
    #[arg(long)]
    pub address: String,
    /// The node's lab directory (`$LAB_DIR/nodeI`): its boot id, the
    /// agent's state.
    #[arg(long)]
    pub node_dir: PathBuf,
    /// The lab directory (its guest template).
    #[arg(long)]
    pub lab_dir: PathBuf,
    /// The node's NATS credentials (`up --secure`).
    #[arg(long)]
    pub nats_creds: Option<PathBuf>,
    /// The NATS servers' CA (`up --secure`).
    #[arg(long)]
    pub nats_ca: Option<PathBuf>,
    /// The `deploy/lab` script: the node's `reboot` hook is its
    /// `reboot NODE`.
    #[arg(long)]
    pub lab_script: PathBuf,
}

/// The lab's coordinator; a limit not given keeps the coordinator's default.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LabCoordinator {
    #[arg(long, default_value_t = 1)]
    pub nats_replicas: usize,
    #[arg(long)]
    pub lease_ttl_s: Option<u64>,
    #[arg(long)]
    pub per_source: Option<usize>,
    #[arg(long)]
    pub per_destination: Option<usize>,
    #[arg(long)]
    pub global: Option<usize>,
    #[arg(long)]
    pub progress_timeout_s: Option<u32>,
    /// Migrations and probes over `qemu+tls` (`up --libvirt-tls`).
    #[arg(long)]
    pub libvirt_tls: bool,
}

/// The agent config of a lab node: quick heartbeats and polls, short
/// stop and migration timeouts for the lab's tiny guests, the lab's guest
/// template for `vm create`, and post-reboot checks against the node's
/// stand-in services (deploy/lab.d/ovs, deploy/lab.d/ays), and the hook
/// `reboot` (`deploy/lab reboot NODE`, which rolling maintenance runs).
pub fn agent_config(a: &LabAgent) -> AgentConfig {
    let mut cfg = AgentConfig::for_node(&a.node);
    cfg.nats_url = a.nats_url.clone();
    cfg.nats_replicas = a.nats_replicas;
    cfg.nats_creds = a.nats_creds.clone();
    cfg.nats_ca = a.nats_ca.clone();
    cfg.libvirt_uri = "qemu:///system".into();
    cfg.address = Some(a.address.clone());
    cfg.heartbeat_interval_ms = 1000;
    cfg.inventory_poll_ms = 500;
    cfg.boot_id_file = a.node_dir.join("boot_id");
    cfg.state_dir = Some(a.node_dir.join("agent"));
    cfg.guest_template = Some(a.lab_dir.join("guest-template.xml"));
    cfg.stop_graceful_timeout_s = 10;
    cfg.migration_timeout_s = 120;
    cfg.hooks.insert(
        "reboot".into(),
        format!("{} reboot {}", a.lab_script.display(), a.node),
    );
    let check = |name: &str, kind: CheckKind, start: &str| CheckConfig {
        name: name.into(),
        kind,
        start: Some(start.into()),
        timeout_s: 10,
    };
    cfg.checks = vec![
        check(
            "ovs",
            CheckKind::OvsServices {
                command: "ovs monitor services".into(),
            },
            "ovs start services",
        ),
        check(
            "ays",
            CheckKind::AysStatus {
                command: "ays status".into(),
            },
            "ays start",
        ),
    ];
    cfg
}

/// The lab's coordinator config: operator (Level2), admin (Level3) and
/// viewer (Level1), the lab's NATS replicas, lease and migration limits.
pub fn coordinator_config(c: &LabCoordinator) -> CoordinatorConfig {
    let mut cfg = CoordinatorConfig::default();
    for (name, group) in [
        ("operator", "Level2"),
        ("admin", "Level3"),
        ("viewer", "Level1"),
    ] {
        let user = User {
            groups: vec![group.into()],
            password_hash: None,
        };
        cfg.users.insert(name.into(), user);
    }
    cfg.nats_replicas = c.nats_replicas;
    if let Some(ttl) = c.lease_ttl_s {
        cfg.lease_ttl_s = ttl;
    }
    if let Some(n) = c.per_source {
        cfg.limits.per_source = n;
    }
    if let Some(n) = c.per_destination {
        cfg.limits.per_destination = n;
    }
    if let Some(n) = c.global {
        cfg.limits.global = n;
    }
    if let Some(s) = c.progress_timeout_s {
        cfg.migration.progress_timeout_s = s;
    }
    if c.libvirt_tls {
        cfg.migration.libvirt_uri = "qemu+tls://{address}/system".into();
    }
    cfg
}

/// `rendered` with the top-level settings of `extra` (TOML) added or
/// replaced, unchecked: `LAB_AGENT_CONFIG_EXTRA` may be deliberately wrong
/// (the agent, not the lab, must refuse it; see the lab_evidence suite).
pub fn with_extra(rendered: &str, extra: &str) -> Result<String, String> {
    if extra.trim().is_empty() {
        return Ok(rendered.to_string());
    }
    let mut doc: toml::Table = rendered
        .parse()
        .map_err(|e| format!("rendered config: {e}"))?;
    let extra: toml::Table = extra
        .parse()
        .map_err(|e| format!("extra settings are not TOML: {e}"))?;
    doc.extend(extra);
    toml::to_string(&doc).map_err(|e| e.to_string())
}
