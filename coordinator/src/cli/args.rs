//! The command line's arguments: every command, its options and their
//! help texts (clap), and the parsers of their values.

use super::*;

/// nodemaint coordinator: maintenance mode for libvirt/KVM clouds.
///
/// Runs the coordinator daemon (`serve`) and is the operators' CLI: list
/// nodes (stacks), VMs and virtual firewalls (VFWs), start, stop and move
/// VMs, plan drains and rolling maintenance, follow the event stream.
///
/// Examples:
///   coordinator serve --config deploy/coordinator.toml
///   coordinator node list
///   coordinator vfw list --output json
///   coordinator vm move cs1-vm1 --to node2
///   coordinator events --since 10m --follow
#[derive(Parser, Debug)]
#[command(
    name = "coordinator",
    version,
    verbatim_doc_comment,
    propagate_version = true,
    after_help = super::exit::help()
)]
pub struct Cli {
    /// NATS server URL, or every member of a cluster, comma-separated
    /// [default: the context's, else nats://127.0.0.1:4222].
    #[arg(long, alias = "server", global = true, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Output format: human tables or JSON (one document, or JSON lines for streams).
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Operator name sent with requests, and the NATS user (also NATS_USER);
    /// fleet changes need group Level2 or Level3. Credentials that name their
    /// user must name this one.
    #[arg(long, global = true, env = "NODEMAINT_USER")]
    pub user: Option<String>,
    /// NATS password of --user (user/password authentication).
    #[arg(long, global = true, env = "NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// A NATS .creds file (user JWT and seed), as the `nats` CLI reads it.
    #[arg(long, global = true, env = "NATS_CREDS", value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// A file holding this operator's nkey seed (gen-auth writes creds/NAME.nk).
    #[arg(long, global = true, env = "NATS_NKEY", value_name = "FILE")]
    pub nkey: Option<PathBuf>,
    /// nodemaint's own credentials file (creds/NAME.creds of gen-auth; mode 0600).
    #[arg(long, global = true, env = "NODEMAINT_CREDS", value_name = "FILE")]
    pub nodemaint_creds: Option<PathBuf>,
    /// NATS context (`nats context ls`) giving the URL and login; flags win
    /// over it. Without one, the context `nats context select` chose.
    #[arg(long, global = true, env = "NATS_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// CA certificate of the NATS servers (turns TLS on).
    #[arg(long, alias = "tlsca", global = true, env = "NATS_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate for TLS (with --tlskey).
    #[arg(long, global = true, env = "NATS_CERT", value_name = "FILE")]
    pub tlscert: Option<PathBuf>,
    /// Client key for TLS (with --tlscert).
    #[arg(long, global = true, env = "NATS_KEY", value_name = "FILE")]
    pub tlskey: Option<PathBuf>,
    /// Idempotency key of a changing request: a repeat with the same id
    /// (a script retrying after a timeout) gets the first request's job.
    #[arg(long, global = true, env = "NODEMAINT_REQUEST_ID", value_name = "ID")]
    pub request_id: Option<String>,
    /// Tables without their header line (for scripts: `node list --no-headers | cut -d' ' -f1`).
    #[arg(long, global = true)]
    pub no_headers: bool,
    /// Subject prefix of this installation.
    #[arg(
        long,
        global = true,
        env = "NODEMAINT_PREFIX",
        default_value = "nodemaint"
    )]
    pub prefix: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the coordinator daemon: node registry, API, jobs.
    #[command(
        after_long_help = "Examples:\n  coordinator serve --config /etc/nodemaint/coordinator.toml\n  coordinator serve --config coordinator.toml --http 127.0.0.1:8080 --metrics-listen 127.0.0.1:9464"
    )]
    Serve {
        /// Coordinator config (TOML): users and groups, migration limits.
        #[arg(long, short, env = "NODEMAINT_CONFIG")]
        config: Option<PathBuf>,
        /// Also serve the operator web portal on this address (e.g. 127.0.0.1:8080).
        #[arg(long, value_name = "ADDR", env = "NODEMAINT_HTTP")]
        http: Option<std::net::SocketAddr>,
        /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9464); off when unset.
        #[arg(long, value_name = "ADDR", env = "NODEMAINT_METRICS_LISTEN")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Log lines as text or as JSON objects (with the job id and node of job lines).
        #[arg(long, value_enum, default_value = "text", env = "NODEMAINT_LOG_FORMAT")]
        log_format: crate::logs::LogFormat,
        /// Run without NATS credentials and TLS (a lab or test bus). Without
        /// it, serve refuses to start unsecured; with it, every start logs a
        /// warning.
        #[arg(long, env = "NODEMAINT_INSECURE", value_parser = clap::builder::FalseyValueParser::new())]
        insecure: bool,
    },
    /// Print an argon2 hash of the password read from standard input, for
    /// `password_hash` of a user in the coordinator config (portal login).
    #[command(
        after_long_help = "Example:\n  read -rs PW && printf '%s\\n' \"$PW\" | coordinator hash-password"
    )]
    HashPassword,
    /// Nodes (stacks): list, show.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Virtual machines: list, start, stop, move.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Virtual firewalls (one system VM per cloudspace).
    #[command(subcommand)]
    Vfw(VfwCmd),
    /// Replay, then optionally follow, the event stream.
    #[command(
        after_long_help = "Examples:\n  coordinator events --since 1h30m --kind job --follow\n  coordinator events --since all --node node2 --output json"
    )]
    Events(EventsArgs),
    /// What-if plans; nothing is changed.
    #[command(subcommand)]
    Plan(PlanCmd),
    /// The live fleet as a fleet file (for `plan --fleet`).
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// Jobs: every start, stop, move and maintenance, with its journal.
    #[command(subcommand)]
    Job(JobCmd),
    /// Put a node in maintenance (move all VMs away, or stop them all).
    #[command(subcommand)]
    Maintenance(MaintenanceCmd),
    /// Rolling maintenance across many nodes: drain, reboot, check, enable, next.
    #[command(subcommand)]
    Rolling(RollingCmd),
    /// Print the shell completion script of SHELL on standard output.
    ///
    /// Examples:
    ///   coordinator completions bash > /etc/bash_completion.d/coordinator
    ///   coordinator completions zsh > "${fpath[1]}/_coordinator"
    ///   coordinator completions fish > ~/.config/fish/completions/coordinator.fish
    #[command(verbatim_doc_comment)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write one man page per command into DIR (coordinator.1,
    /// coordinator-node-list.1, ...), for packages.
    ///
    /// Example:
    ///   coordinator man --out target/man && man -l target/man/coordinator-maintenance-start.1
    #[command(verbatim_doc_comment)]
    Man {
        /// The directory to write the pages into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum RollingCmd {
    /// Start a rolling maintenance over NODES (or --all).
    ///
    /// Groups of at most --max-unavailable nodes, whose VMs the rest of the
    /// fleet can absorb, go through: maintenance with move → the reboot hook
    /// (a hook named in each node's agent config, [hooks]) or an operator's
    /// `rolling continue` → wait for a new boot id → service checks (failed
    /// services started once) → enable → verify; then the next group.
    ///
    /// Examples:
    ///   coordinator rolling start --all --yes             # the agents' hook "reboot"
    ///   coordinator rolling start --all --hook upgrade --yes
    ///   coordinator rolling start node1 node2 --wait-for-continue --checks-must-pass
    #[command(verbatim_doc_comment)]
    Start {
        /// The nodes to roll (or --all).
        #[arg(required_unless_present = "all")]
        nodes: Vec<String>,
        #[arg(long, conflicts_with = "nodes")]
        all: bool,
        #[arg(long, default_value_t = 1)]
        max_unavailable: u32,
        /// The hook each node's agent runs, by name: its command line is in
        /// the agent's config (`[hooks] reboot = "systemctl reboot"`).
        #[arg(long, default_value = "reboot", conflicts_with = "wait_for_continue")]
        hook: String,
        /// Removed: a command line is no longer sent to the agents (see --hook).
        #[arg(long, hide = true)]
        reboot_command: Option<String>,
        /// Instead of a hook, wait for `rolling continue JOB NODE`.
        #[arg(long)]
        wait_for_continue: bool,
        /// Stop the rolling if a node's post-reboot checks fail.
        #[arg(long)]
        checks_must_pass: bool,
        /// How long to wait for a node to come back with a new boot id
        /// (e.g. 15m; a bare number is seconds).
        #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_secs)]
        reboot_timeout: u32,
        /// Fail the whole rolling after this long (e.g. 4h, 1h30m); its
        /// drains in flight stop as with an abort.
        #[arg(long, value_name = "DURATION", value_parser = parse_secs)]
        deadline: Option<u32>,
        /// Don't ask for confirmation.
        #[arg(long, short)]
        yes: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Progress of a rolling maintenance: each node's phase and the journal.
    #[command(after_long_help = "Example:\n  coordinator rolling show JOB_ID")]
    Show { id: String },
    /// Pause at the next phase boundary.
    #[command(after_long_help = "Example:\n  coordinator rolling pause JOB_ID")]
    Pause { id: String },
    /// Resume a paused rolling maintenance.
    #[command(after_long_help = "Example:\n  coordinator rolling resume JOB_ID")]
    Resume { id: String },
    /// Stop at the next phase boundary; nodes already down stay in maintenance.
    #[command(after_long_help = "Example:\n  coordinator rolling abort JOB_ID")]
    Abort { id: String },
    /// Tell a --wait-for-continue rolling that NODE's reboot is done.
    #[command(after_long_help = "Example:\n  coordinator rolling continue JOB_ID node2")]
    Continue { id: String, node: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Live-migrate every VM (VFWs first) to nodes the planner picks. Preferred.
    Move,
    /// Stop every VM, VFWs included; `node enable` restarts exactly these.
    Stop,
    /// Cordon: only mark NODE unschedulable; nothing is moved or stopped.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FallbackArg {
    /// The drain fails for that VM, with a report (default).
    Fail,
    /// Stop it and record it; `node enable` restarts it on this node.
    Stop,
    /// Stop it, move its definition to the planned node, start it there.
    Cold,
}

impl FallbackArg {
    pub fn wire(self) -> i32 {
        let f = match self {
            FallbackArg::Fail => pb::Fallback::Fail,
            FallbackArg::Stop => pb::Fallback::Stop,
            FallbackArg::Cold => pb::Fallback::Cold,
        };
        f as i32
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConcurrencyArg {
    /// Keep --max-parallel (or the configured per-node limit) in flight.
    Fixed,
    /// Start there; add a migration while the drain's throughput rises,
    /// back off when it falls or a migration stops converging (each change
    /// is a job step with its reason).
    Adaptive,
}

/// How a drain goes (maintenance start and retry).
#[derive(Args, Debug, Clone)]
pub struct DrainArgs {
    /// Accept that the cloudspaces whose VFW runs on NODE lose their
    /// firewall (stop mode; a VFW taking the stop or cold fallback).
    #[arg(long)]
    pub ack_vfw_downtime: bool,
    /// Concurrent outbound migrations from NODE (default: the configured per-node limit).
    #[arg(long, default_value_t = 0)]
    pub max_parallel: u32,
    /// Give up after this long (e.g. 30m, 1h30m): nothing new starts,
    /// migrations in flight are cancelled, the report says where every VM is.
    #[arg(long, value_name = "DURATION", value_parser = parse_secs)]
    pub deadline: Option<u32>,
    /// What to do with a VM that cannot live-migrate (its migration failed
    /// twice, or it is marked not migratable). VFWs take stop or cold only
    /// with --ack-vfw-downtime.
    #[arg(long, value_enum, default_value_t = FallbackArg::Fail)]
    pub fallback: FallbackArg,
    /// Bandwidth cap of each migration, MiB/s (default: unlimited).
    #[arg(long, value_name = "MIBS", default_value_t = 0)]
    pub max_speed: u64,
    /// How many migrations run at once (default: the coordinator's
    /// `[drain] concurrency`, fixed unless changed).
    #[arg(long, value_enum)]
    pub concurrency: Option<ConcurrencyArg>,
    #[command(flatten)]
    pub converge: ConvergeArgs,
}

impl DrainArgs {
    pub fn concurrency_wire(&self) -> i32 {
        (match self.concurrency {
            None => pb::Concurrency::Configured,
            Some(ConcurrencyArg::Fixed) => pb::Concurrency::Fixed,
            Some(ConcurrencyArg::Adaptive) => pb::Concurrency::Adaptive,
        }) as i32
    }
}

/// What a live migration that does not converge may do (the coordinator's
/// `[migration.converge]` by default): raise the allowed downtime in steps
/// to a ceiling; let QEMU throttle the guest (auto-converge); post-copy.
#[derive(Args, Debug, Clone, Default)]
pub struct ConvergeArgs {
    /// Ceiling of the allowed downtime (pause at switch-over) the migration
    /// may raise to when it does not converge, e.g. 500ms or 2s (default:
    /// the configured ceiling, 2s unless changed).
    #[arg(long, value_name = "DURATION", value_parser = parse_millis)]
    pub max_downtime: Option<u32>,
    /// Permit post-copy past the ceiling: switch over at once and fetch the
    /// remaining memory on demand. A failure of the destination or the link
    /// during post-copy loses the guest.
    #[arg(long)]
    pub post_copy: bool,
    /// Do not let QEMU throttle the guest's vCPUs (auto-converge).
    #[arg(long)]
    pub no_auto_converge: bool,
}

impl ConvergeArgs {
    pub fn wire(&self) -> Option<pb::ConvergeRequest> {
        let r = pb::ConvergeRequest {
            max_downtime_ms: self.max_downtime.unwrap_or(0),
            post_copy: self.post_copy,
            no_auto_converge: self.no_auto_converge,
        };
        (r != pb::ConvergeRequest::default()).then_some(r)
    }
}

#[derive(Subcommand, Debug)]
pub enum MaintenanceCmd {
    /// Mark NODE unschedulable (MAINTENANCE) at once, then empty it.
    ///
    /// Pre-flight first (every time; --dry-run shows it and stops there):
    /// the plan fits with the configured headroom, the agents involved answer
    /// and speak this protocol version, NODE's libvirt reaches every
    /// destination's, the nodes-in-maintenance limit holds, and no other job
    /// touches these VMs. A failed check refuses the start and changes nothing.
    ///
    /// --mode move: migrates VFWs first, then the largest VMs first, starting
    /// the next as soon as one ends (--max-parallel at once, or --concurrency
    /// adaptive), within the fleet-wide migration slots; a failed move is
    /// retried once on another node, then --fallback applies. --mode stop: stops every VM; refused while VFWs run
    /// on the node unless --ack-vfw-downtime is given. --mode none: cordon.
    ///
    /// Examples:
    ///   coordinator maintenance start node2 --mode move --dry-run
    ///   coordinator maintenance start node2 --mode move --deadline 30m --fallback stop
    ///   coordinator maintenance start node2 --mode stop --ack-vfw-downtime
    ///   coordinator maintenance start node2 --mode none
    ///   coordinator job abort JOB_ID
    #[command(verbatim_doc_comment)]
    Start {
        node: String,
        #[arg(long, value_enum)]
        mode: ModeArg,
        /// Only run the pre-flight checks and show the plan (exit 3 if a check fails).
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        drain: DrainArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Continue the drain of NODE (in maintenance) with just the VMs it left
    /// behind; moved VMs are not touched, VMs maintenance stopped stay stopped.
    ///
    /// Example:
    ///   coordinator maintenance retry node2 --fallback cold
    #[command(verbatim_doc_comment)]
    Retry {
        node: String,
        #[command(flatten)]
        drain: DrainArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Every node with status, reachability, VMs and memory.
    #[command(
        after_long_help = "Examples:\n  coordinator node list\n  coordinator node list --columns node,status,job --no-headers\n  coordinator node list --output json"
    )]
    List {
        #[command(flatten)]
        columns: ColumnArgs,
    },
    /// One node's details and its VMs, VFWs marked as such.
    #[command(after_long_help = "Example:\n  coordinator node show node2")]
    Show { node: String },
    /// End maintenance: the node takes VMs again and the VMs maintenance
    /// stopped are started on it, VFWs first.
    #[command(after_long_help = "Example:\n  coordinator node enable node2")]
    Enable {
        node: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Run NODE's post-reboot service checks (storage, agent services,
    /// systemd units, ports) and show every service; exit 1 if any failed.
    #[command(after_long_help = "Example:\n  coordinator node check node2 --start-failed")]
    Check {
        node: String,
        /// Run the start command of each failed check once, then check again.
        #[arg(long)]
        start_failed: bool,
    },
    /// Wait until NODE's agent is back with a different boot id (it rebooted).
    #[command(after_long_help = "Example:\n  coordinator node wait-rebooted node2 --timeout 15m")]
    WaitRebooted {
        node: String,
        /// Give up after this long (e.g. 10m; a bare number is seconds).
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_secs)]
        timeout: u32,
        /// The boot id before the reboot (default: the current one).
        #[arg(long)]
        boot_id: Option<String>,
    },
    /// Start every shut-off VM of NODE, VFWs first (the seed's `virsh start` loop).
    #[command(after_long_help = "Example:\n  coordinator node start-stopped node2 --dry-run")]
    StartStopped {
        node: String,
        /// Only list what would be started.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    User,
    Vfw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Running,
    Shutoff,
    Paused,
    Crashed,
}

#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// VMs across the fleet, optionally filtered.
    #[command(
        after_long_help = "Example:\n  coordinator vm list --node node2 --kind user --state running"
    )]
    List {
        #[command(flatten)]
        columns: ColumnArgs,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        cloudspace: Option<String>,
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        #[arg(long, value_enum)]
        state: Option<StateArg>,
    },
    /// Start a shut-off VM on its node.
    #[command(after_long_help = "Example:\n  coordinator vm start web-1")]
    Start {
        vm: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop a VM: graceful shutdown, then destroy after the timeout.
    #[command(after_long_help = "Example:\n  coordinator vm stop web-1 --timeout 2m")]
    Stop {
        vm: String,
        /// How long to wait for a graceful shutdown before destroying
        /// (e.g. 90s, 5m; a bare number is seconds, as before).
        #[arg(long, value_name = "DURATION", value_parser = parse_secs)]
        timeout: Option<u32>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Live-migrate a VM (VFWs too) to another node.
    #[command(
        after_long_help = "Example:\n  coordinator vm move web-1 --to node3 --timeout 10m --max-speed 200"
    )]
    Move {
        vm: String,
        /// Destination node.
        #[arg(long)]
        to: String,
        /// Abort the migration after this long (e.g. 10m; a bare number is
        /// seconds, as before); the VM stays on its node.
        #[arg(long, value_name = "DURATION", value_parser = parse_secs)]
        timeout: Option<u32>,
        /// Cap the migration bandwidth (MiB/s).
        #[arg(long)]
        max_speed: Option<u64>,
        #[command(flatten)]
        converge: ConvergeArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Create a VM; the scheduler picks the node (never one in maintenance).
    #[command(
        after_long_help = "Examples:\n  coordinator vm create --name web-2 --memory 2048 --vcpus 2 --cloudspace cs7\n  coordinator vm create --name cs7-vfw --memory 512 --cloudspace cs7 --vfw"
    )]
    Create {
        #[arg(long)]
        name: String,
        /// Memory in MiB.
        #[arg(long)]
        memory: u64,
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        #[arg(long)]
        cloudspace: Option<String>,
        /// Create the cloudspace's virtual firewall (system VM).
        #[arg(long)]
        vfw: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// Which columns a list's table shows.
#[derive(Args, Debug, Clone, Default)]
pub struct ColumnArgs {
    /// Only these columns, in this order, by header name in lower case,
    /// words joined by `_` (e.g. `node,status,last_seen`).
    #[arg(long, value_name = "COL,...", value_delimiter = ',')]
    pub columns: Vec<String>,
}

#[derive(Args, Debug, Clone, Copy)]
pub struct WaitArgs {
    /// Return once the request is accepted; follow it with `job watch ID`.
    #[arg(long)]
    pub detach: bool,
}

#[derive(Subcommand, Debug)]
pub enum VfwCmd {
    /// Every cloudspace's firewall and where it runs.
    #[command(
        after_long_help = "Examples:\n  coordinator vfw list --output json\n  coordinator vfw list --columns cloudspace,node"
    )]
    List {
        #[command(flatten)]
        columns: ColumnArgs,
    },
    /// Move a cloudspace's VFW to another node (the portal's "Move VFW").
    #[command(
        after_long_help = "Examples:\n  coordinator vfw move cs7                 # the planner picks the node\n  coordinator vfw move cs7 --to node3"
    )]
    Move {
        cloudspace: String,
        /// Destination node; the planner picks the best one when omitted.
        #[arg(long)]
        to: Option<String>,
        /// Abort the migration after this long (e.g. 10m; a bare number is
        /// seconds, as before); the VFW stays on its node.
        #[arg(long, value_name = "DURATION", value_parser = parse_secs)]
        timeout: Option<u32>,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Only this node's events ("coordinator" for job events).
    #[arg(long, value_parser = parse_node)]
    pub node: Option<String>,
    /// Only this kind: inventory, progress, result, checks, job, error
    /// (heartbeats are not stored: subscribe to `<prefix>.v1.events.<node>.heartbeat`).
    #[arg(long, value_parser = parse_event_kind)]
    pub kind: Option<EventKind>,
    /// Start this far back (30s, 10m, 1h30m, 2d) or `all`.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_since)]
    pub since: Since,
    /// Keep following new events after the replay.
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Subcommand, Debug)]
pub enum PlanCmd {
    /// Where the VMs of NODE would go if it were drained, in which waves.
    #[command(
        after_long_help = "Examples:\n  coordinator plan drain node2\n  coordinator fleet export > fleet.json && coordinator plan drain node2 --fleet fleet.json"
    )]
    Drain {
        node: String,
        /// Plan against a fleet file instead of the live fleet.
        #[arg(long)]
        fleet: Option<PathBuf>,
        /// Concurrent outbound migrations from NODE.
        #[arg(long, default_value_t = 0)]
        max_parallel: u32,
    },
    /// In which groups NODES can be taken down for rolling maintenance.
    #[command(after_long_help = "Example:\n  coordinator plan rolling --all --max-unavailable 2")]
    Rolling {
        /// The nodes to roll (or --all).
        #[arg(required_unless_present = "all")]
        nodes: Vec<String>,
        /// All nodes of the fleet.
        #[arg(long, conflicts_with = "nodes")]
        all: bool,
        /// Nodes down at the same time.
        #[arg(long, default_value_t = 1)]
        max_unavailable: u32,
        #[arg(long)]
        fleet: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum FleetCmd {
    /// Print the live fleet as a fleet file (JSON).
    #[command(after_long_help = "Example:\n  coordinator fleet export > fleet.json")]
    Export,
}

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    /// Recent jobs, newest first.
    ///
    /// Example: `coordinator job list --limit 20 --output json`
    List {
        #[command(flatten)]
        columns: ColumnArgs,
        /// How many of the newest jobs (finished ones are deleted after the
        /// coordinator's `job_retention_s`, 30 days by default).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
    },
    /// A job with its journal.
    #[command(after_long_help = "Example:\n  coordinator job show JOB_ID --output json")]
    Show { id: String },
    /// Follow a running job until it ends.
    #[command(after_long_help = "Example:\n  coordinator job watch JOB_ID")]
    Watch { id: String },
    /// Stop a running job cleanly: nothing new starts, migrations in flight
    /// are cancelled (or finish if past the point of no return), the report
    /// says where every VM is. A node in maintenance stays in maintenance.
    #[command(
        after_long_help = "Examples:\n  coordinator job abort JOB_ID\n  coordinator job abort JOB_ID --detach"
    )]
    Abort {
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// `events --kind`: checked before anything is sent (a usage error).
fn parse_event_kind(s: &str) -> Result<EventKind, String> {
    let stored = || {
        EventKind::ALL
            .into_iter()
            .filter(|k| k.is_stored())
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match EventKind::parse(s) {
        Some(k) if k.is_stored() => Ok(k),
        Some(k) => Err(format!(
            "{} events are not stored (live only): subscribe to <prefix>.v1.events.<node>.{} on NATS; stored kinds: {}",
            k.as_str(),
            k.as_str(),
            stored()
        )),
        None => Err(format!("unknown event kind; kinds: {}", stored())),
    }
}

/// `events --node`: a node name is one subject token.
fn parse_node(s: &str) -> Result<String, String> {
    nodemaint_proto::subjects::validate_token(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

/// `--since`: how far back the replay starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// The whole stream.
    All,
    /// This long ago.
    Back(Duration),
}

/// `--since`: a duration (see [`parse_duration`]) or `all`.
pub fn parse_since(s: &str) -> Result<Since, String> {
    if s.trim() == "all" {
        return Ok(Since::All);
    }
    parse_duration(s).map(Since::Back).map_err(|e| {
        if e.starts_with("too long") {
            e
        } else {
            format!("{e}, or `all`")
        }
    })
}

/// The longest duration any option takes: ten years.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// Every duration option: humantime's units (`90s`, `1h30m`, `2d`, `1h 30m`,
/// `500ms`), or a bare number of seconds (`90`, what `--timeout` always
/// took); at most [`MAX_DURATION`] (`3650d`). Overflowing or malformed
/// values are errors, never a panic; clap names the option and the value.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        // Bare seconds; longer than u64 is too long as well.
        s.parse::<u64>()
            .map(Duration::from_secs)
            .unwrap_or(Duration::MAX)
    } else {
        match humantime::parse_duration(s) {
            Ok(d) => d,
            Err(humantime::DurationError::NumberOverflow) => Duration::MAX,
            Err(e) => return Err(format!("{e}; use e.g. 90s, 10m, 1h30m or 2d")),
        }
    };
    if d > MAX_DURATION {
        return Err("too long (at most 3650d)".into());
    }
    Ok(d)
}

/// `--max-downtime`: a positive duration in whole milliseconds, at most a minute.
pub fn parse_millis(s: &str) -> Result<u32, String> {
    let d = parse_duration(s)?;
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err("give whole milliseconds (e.g. 500ms or 2s)".into());
    }
    match d.as_millis() {
        0 => Err("must be positive".into()),
        ms @ 1..=60_000 => Ok(ms as u32),
        _ => Err("too long for a downtime (at most 60s)".into()),
    }
}

/// `--timeout`, `--deadline`, `--reboot-timeout`: a positive duration in
/// whole seconds (the wire carries seconds; 0 there means "the default").
pub fn parse_secs(s: &str) -> Result<u32, String> {
    let d = parse_duration(s)?;
    if d.subsec_nanos() != 0 {
        return Err("give whole seconds (e.g. 90s or 2m)".into());
    }
    match u32::try_from(d.as_secs()) {
        Ok(0) => Err("must be positive".into()),
        Ok(n) => Ok(n),
        // Unreachable while MAX_DURATION < u32::MAX seconds; still an error.
        Err(_) => Err("too long (at most 3650d)".into()),
    }
}
