//! `node-agent`: the per-node daemon. See `node-agent --help`.

use clap::Parser;
use nodemaint_agent::config::AgentConfig;
use nodemaint_agent::hypervisor::libvirt::LibvirtHypervisor;
use std::path::PathBuf;
use std::sync::Arc;

/// nodemaint node-agent: executes maintenance commands on this node's libvirt
/// and reports heartbeats, inventory and progress over NATS.
///
/// Settings come from the TOML file given with --config; flags and
/// environment variables override it. Example:
///
///   node-agent --config /etc/nodemaint/agent.toml
///
///   node-agent --node node1 --nats-url nats://10.0.0.1:4222 --libvirt-uri test:///default
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// Agent config file (TOML).
    #[arg(long, short, env = "NODEMAINT_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// This node's name, as the coordinator and operators know it.
    #[arg(long, env = "NODEMAINT_NODE")]
    node: Option<String>,
    /// NATS server URL, or every member of a cluster, comma-separated.
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
    /// A NATS .creds file (user JWT and seed) of this node.
    #[arg(long, env = "NATS_CREDS", value_name = "FILE")]
    creds: Option<PathBuf>,
    /// nodemaint's own credentials file of this node (gen-auth's creds/NODE.creds, mode 0600).
    #[arg(long, env = "NODEMAINT_CREDS", value_name = "FILE")]
    nodemaint_creds: Option<PathBuf>,
    /// A file holding this node's nkey seed (gen-auth's creds/NODE.nk).
    #[arg(long, env = "NATS_NKEY", value_name = "FILE")]
    nkey: Option<PathBuf>,
    /// CA certificate of the NATS servers (turns TLS on).
    #[arg(long, env = "NATS_CA")]
    ca: Option<PathBuf>,
    /// libvirt URI of this node's hypervisor (qemu:///system, test:///default, …).
    #[arg(long, env = "NODEMAINT_LIBVIRT_URI")]
    libvirt_uri: Option<String>,
    /// Address other nodes use to migrate VMs to this node.
    #[arg(long, env = "NODEMAINT_ADDRESS")]
    address: Option<String>,
    /// Heartbeat interval in milliseconds.
    #[arg(long, env = "NODEMAINT_HEARTBEAT_MS")]
    heartbeat_interval_ms: Option<u64>,
    /// File holding the boot id (default: the kernel's).
    #[arg(long, env = "NODEMAINT_BOOT_ID_FILE")]
    boot_id_file: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics (config: metrics_listen).
    #[arg(long, value_name = "ADDR", env = "NODEMAINT_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Run without NATS credentials and TLS (a lab or test bus). Without it
    /// the agent refuses to start unsecured; with it, every start logs a
    /// warning.
    #[arg(long, env = "NODEMAINT_INSECURE", value_parser = clap::builder::FalseyValueParser::new())]
    insecure: bool,
    /// Log lines as text or as JSON objects (command lines carry job_id and node).
    #[arg(long, value_name = "text|json", default_value = "text", env = "NODEMAINT_LOG_FORMAT",
          value_parser = ["text", "json"])]
    log_format: String,
    /// Print the manual page (roff) and exit; packages install it as node-agent(1).
    #[arg(long, hide = true)]
    man_page: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.man_page {
        let cmd = <Args as clap::CommandFactory>::command().name("node-agent");
        return match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("node-agent: error: cannot write the manual page: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if args.log_format == "json" {
        fmt.json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        fmt.init();
    }
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node-agent: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = match (&args.config, &args.node) {
        (Some(path), _) => AgentConfig::load(path)?,
        (None, Some(node)) => AgentConfig::for_node(node),
        (None, None) => anyhow::bail!("give --config FILE or --node NAME (see --help)"),
    };
    if let Some(v) = args.node {
        cfg.node = v;
    }
    if let Some(v) = args.nats_url {
        cfg.nats_url = v;
    }
    // Login from flags or their environment variables wins over the file's.
    cfg.nats_flags = nodemaint_proto::bus::Security {
        creds: args.nodemaint_creds,
        nats_creds: args.creds,
        nkey: args.nkey,
        ..nodemaint_proto::bus::Security::from_env()
    };
    if let Some(v) = args.ca {
        cfg.nats_ca = Some(v);
    }
    if let Some(v) = args.libvirt_uri {
        cfg.libvirt_uri = v;
    }
    if let Some(v) = args.address {
        cfg.address = Some(v);
    }
    if let Some(v) = args.heartbeat_interval_ms {
        cfg.heartbeat_interval_ms = v;
    }
    if let Some(v) = args.boot_id_file {
        cfg.boot_id_file = v;
    }
    if let Some(v) = args.metrics_listen {
        cfg.metrics_listen = Some(v);
    }
    cfg.validate()?;
    let sec = cfg.nats_security();
    let who = format!("the agent of {}", cfg.node);
    if let Some(warning) = sec
        .require(args.insecure, &who)
        .map_err(|e| anyhow::anyhow!(e))?
    {
        tracing::warn!("{warning}");
    }
    let uri = cfg.libvirt_uri.clone();
    let hv = tokio::task::spawn_blocking(move || LibvirtHypervisor::open(&uri)).await??;
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    };
    nodemaint_agent::agent::run(cfg, Arc::new(hv), shutdown).await
}
