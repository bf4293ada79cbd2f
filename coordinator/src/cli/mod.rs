//! The `coordinator` command line: the daemon (`serve`) and the operator
//! commands, each a thin client of the API.

pub mod client;
pub mod output;

use async_nats::jetstream::consumer::DeliverPolicy;
use clap::{Args, Parser, Subcommand, ValueEnum};
use client::{Client, ClientError};
use futures::StreamExt;
use nodemaint_planner as planner;
use nodemaint_proto::model::{NodeView, Vm, VmView};
use nodemaint_proto::pb::{self, api_reply::Kind as Reply, api_request::Kind as Req, event::Body};
use nodemaint_proto::subjects::EventKind;
use output::{ago, fmt_ts, mib, table};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

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
#[command(version, verbatim_doc_comment, propagate_version = true)]
pub struct Cli {
    /// NATS server URL, or every member of a cluster, comma-separated.
    #[arg(
        long,
        global = true,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Output format: human tables or JSON (one document, or JSON lines for streams).
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Operator name sent with requests; fleet changes need group Level2 or Level3.
    /// With --creds the credentials' user is used (and must match if given).
    #[arg(long, global = true, env = "NODEMAINT_USER")]
    pub user: Option<String>,
    /// NATS credentials file of this operator (mode 0600; see deploy/nats/gen-auth).
    #[arg(long, global = true, env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// CA certificate of the NATS servers (turns TLS on).
    #[arg(long, global = true, env = "NATS_CA")]
    pub ca: Option<PathBuf>,
    /// Idempotency key of a changing request: a repeat with the same id
    /// (a script retrying after a timeout) gets the first request's job.
    #[arg(long, global = true, env = "NODEMAINT_REQUEST_ID", value_name = "ID")]
    pub request_id: Option<String>,
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
    },
    /// Print an argon2 hash of the password read from standard input, for
    /// `password_hash` of a user in the coordinator config (portal login).
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
}

#[derive(Subcommand, Debug)]
pub enum RollingCmd {
    /// Start a rolling maintenance over NODES (or --all).
    ///
    /// Groups of at most --max-unavailable nodes, whose VMs the rest of the
    /// fleet can absorb, go through: maintenance with move → the reboot hook
    /// (a command each node's agent runs; {node} is replaced) or an operator's
    /// `rolling continue` → wait for a new boot id → service checks (failed
    /// services started once) → enable → verify; then the next group.
    ///
    /// Examples:
    ///   coordinator rolling start --all --reboot-command 'systemctl reboot' --yes
    ///   coordinator rolling start node1 node2 --wait-for-continue --checks-must-pass
    #[command(verbatim_doc_comment)]
    Start {
        nodes: Vec<String>,
        #[arg(long, conflicts_with = "nodes")]
        all: bool,
        #[arg(long, default_value_t = 1)]
        max_unavailable: u32,
        /// Reboot/upgrade command run by each node's agent.
        #[arg(long, conflicts_with = "wait_for_continue")]
        reboot_command: Option<String>,
        /// Instead of a command, wait for `rolling continue JOB NODE`.
        #[arg(long)]
        wait_for_continue: bool,
        /// Stop the rolling if a node's post-reboot checks fail.
        #[arg(long)]
        checks_must_pass: bool,
        /// Seconds to wait for a node to come back with a new boot id.
        #[arg(long, default_value_t = 900)]
        reboot_timeout: u32,
        /// Fail the whole rolling after this long (e.g. 4h); its drains in
        /// flight stop as with an abort.
        #[arg(long, value_name = "DURATION", value_parser = parse_deadline)]
        deadline: Option<u32>,
        /// Don't ask for confirmation.
        #[arg(long, short)]
        yes: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Progress of a rolling maintenance: each node's phase and the journal.
    Show { id: String },
    /// Pause at the next phase boundary.
    Pause { id: String },
    /// Resume a paused rolling maintenance.
    Resume { id: String },
    /// Stop at the next phase boundary; nodes already down stay in maintenance.
    Abort { id: String },
    /// Tell a --wait-for-continue rolling that NODE's reboot is done.
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
    fn wire(self) -> i32 {
        let f = match self {
            FallbackArg::Fail => pb::Fallback::Fail,
            FallbackArg::Stop => pb::Fallback::Stop,
            FallbackArg::Cold => pb::Fallback::Cold,
        };
        f as i32
    }
}

/// How a drain goes (maintenance start and retry).
#[derive(Args, Debug, Clone)]
pub struct DrainArgs {
    /// Accept that the cloudspaces whose VFW runs on NODE lose their
    /// firewall (stop mode; a VFW taking the stop or cold fallback).
    #[arg(long)]
    ack_vfw_downtime: bool,
    /// Concurrent outbound migrations from NODE (default: the configured per-node limit).
    #[arg(long, default_value_t = 0)]
    max_parallel: u32,
    /// Give up after this long (e.g. 30m): nothing new starts, migrations
    /// in flight are cancelled, the report says where every VM is.
    #[arg(long, value_name = "DURATION", value_parser = parse_deadline)]
    deadline: Option<u32>,
    /// What to do with a VM that cannot live-migrate (its migration failed
    /// twice, or it is marked not migratable). VFWs take stop or cold only
    /// with --ack-vfw-downtime.
    #[arg(long, value_enum, default_value_t = FallbackArg::Fail)]
    fallback: FallbackArg,
    /// Bandwidth cap of each migration, MiB/s (default: unlimited).
    #[arg(long, value_name = "MIBS", default_value_t = 0)]
    max_speed: u64,
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
    /// --mode move: migrates in waves (VFWs first) within the fleet-wide
    /// migration slots; a failed move is retried once on another node, then
    /// --fallback applies. --mode stop: stops every VM; refused while VFWs run
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
        /// Only run the pre-flight checks and show the plan (exit 1 if a check fails).
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
    List,
    /// One node's details and its VMs, VFWs marked as such.
    Show { node: String },
    /// End maintenance: the node takes VMs again and the VMs maintenance
    /// stopped are started on it, VFWs first.
    Enable {
        node: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Run NODE's post-reboot service checks (storage, agent services,
    /// systemd units, ports) and show every service; exit 1 if any failed.
    Check {
        node: String,
        /// Run the start command of each failed check once, then check again.
        #[arg(long)]
        start_failed: bool,
    },
    /// Wait until NODE's agent is back with a different boot id (it rebooted).
    WaitRebooted {
        node: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// The boot id before the reboot (default: the current one).
        #[arg(long)]
        boot_id: Option<String>,
    },
    /// Start every shut-off VM of NODE, VFWs first (the seed's `virsh start` loop).
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
    List {
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
    Start {
        vm: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop a VM: graceful shutdown, then destroy after the timeout.
    Stop {
        vm: String,
        /// Seconds to wait for a graceful shutdown before destroying.
        #[arg(long)]
        timeout: Option<u32>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Live-migrate a VM (VFWs too) to another node.
    Move {
        vm: String,
        /// Destination node.
        #[arg(long)]
        to: String,
        /// Abort the migration after this many seconds; the VM stays on its node.
        #[arg(long)]
        timeout: Option<u32>,
        /// Cap the migration bandwidth (MiB/s).
        #[arg(long)]
        max_speed: Option<u64>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Create a VM; the scheduler picks the node (never one in maintenance).
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

#[derive(Args, Debug, Clone, Copy)]
pub struct WaitArgs {
    /// Return once the request is accepted; follow it with `job watch ID`.
    #[arg(long)]
    pub detach: bool,
}

#[derive(Subcommand, Debug)]
pub enum VfwCmd {
    /// Every cloudspace's firewall and where it runs.
    List,
    /// Move a cloudspace's VFW to another node (the portal's "Move VFW").
    Move {
        cloudspace: String,
        /// Destination node; the planner picks the best one when omitted.
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        timeout: Option<u32>,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Only this node's events ("coordinator" for job events).
    #[arg(long)]
    pub node: Option<String>,
    /// Only this kind: heartbeat, inventory, progress, result, checks, job, error.
    #[arg(long)]
    pub kind: Option<String>,
    /// Start this far back (30s, 10m, 2h, 1d) or `all`.
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// Keep following new events after the replay.
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Subcommand, Debug)]
pub enum PlanCmd {
    /// Where the VMs of NODE would go if it were drained, in which waves.
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
    Rolling {
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
    Export,
}

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    /// Recent jobs, newest first.
    List,
    /// A job with its journal.
    Show { id: String },
    /// Follow a running job until it ends.
    Watch { id: String },
    /// Stop a running job cleanly: nothing new starts, migrations in flight
    /// are cancelled (or finish if past the point of no return), the report
    /// says where every VM is. A node in maintenance stays in maintenance.
    Abort {
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// A failure with its exit code: 1 for refusals and failures.
pub type CliResult = Result<(), anyhow::Error>;

fn security(cli: &Cli) -> nodemaint_proto::bus::Security {
    nodemaint_proto::bus::Security {
        creds: cli.creds.clone(),
        ca: cli.ca.clone(),
    }
}

pub async fn run(cli: Cli) -> CliResult {
    if let Command::Serve {
        config,
        http,
        metrics_listen,
        ..
    } = &cli.command
    {
        return serve(&cli, config.clone(), *http, *metrics_listen).await;
    }
    if let Command::HashPassword = &cli.command {
        let mut pw = String::new();
        std::io::stdin().read_line(&mut pw)?;
        let pw = pw.trim_end_matches(['\n', '\r']);
        anyhow::ensure!(!pw.is_empty(), "give the password on standard input");
        println!("{}", crate::portal::hash_password(pw)?);
        return Ok(());
    }
    // Plans against a file need no coordinator.
    if let Command::Plan(p) = &cli.command {
        if let Some(out) = plan_from_file(p)? {
            return print_plan(&cli, p, &out);
        }
    }
    let mut client = Client::connect(
        &cli.nats_url,
        &cli.prefix,
        cli.user.as_deref(),
        &security(&cli),
    )
    .await?;
    client.request_id.clone_from(&cli.request_id);
    match &cli.command {
        Command::Serve { .. } | Command::HashPassword => unreachable!(),
        Command::Node(NodeCmd::List) => node_list(&cli, &client).await,
        Command::Node(NodeCmd::Show { node }) => node_show(&cli, &client, node).await,
        Command::Vm(VmCmd::List {
            node,
            cloudspace,
            kind,
            state,
        }) => vm_list(&cli, &client, node, cloudspace, *kind, *state).await,
        Command::Vm(VmCmd::Start { vm, wait }) => {
            let req = Req::StartVm(pb::VmAction {
                vm: vm.clone(),
                graceful_timeout_s: 0,
            });
            run_op(&cli, &client, req, *wait).await
        }
        Command::Vm(VmCmd::Stop { vm, timeout, wait }) => {
            let req = Req::StopVm(pb::VmAction {
                vm: vm.clone(),
                graceful_timeout_s: timeout.unwrap_or(0),
            });
            run_op(&cli, &client, req, *wait).await
        }
        Command::Vm(VmCmd::Move {
            vm,
            to,
            timeout,
            max_speed,
            wait,
        }) => {
            let req = Req::MoveVm(pb::MoveVm {
                vm: vm.clone(),
                to_node: to.clone(),
                timeout_s: timeout.unwrap_or(0),
                max_speed_mibs: max_speed.unwrap_or(0),
            });
            run_op(&cli, &client, req, *wait).await
        }
        Command::Vfw(VfwCmd::List) => vfw_list(&cli, &client).await,
        Command::Vfw(VfwCmd::Move {
            cloudspace,
            to,
            timeout,
            wait,
        }) => {
            let req = Req::MoveVfw(pb::MoveVfw {
                cloudspace: cloudspace.clone(),
                to_node: to.clone().unwrap_or_default(),
                timeout_s: timeout.unwrap_or(0),
            });
            run_op(&cli, &client, req, *wait).await
        }
        Command::Vm(VmCmd::Create {
            name,
            memory,
            vcpus,
            cloudspace,
            vfw,
            wait,
        }) => {
            let req = Req::CreateVm(pb::CreateVm {
                name: name.clone(),
                memory_mib: *memory,
                vcpus: *vcpus,
                cloudspace: cloudspace.clone().unwrap_or_default(),
                vfw: *vfw,
            });
            run_op(&cli, &client, req, *wait).await
        }
        Command::Node(NodeCmd::Check { node, start_failed }) => {
            let req = Req::CheckNode(pb::CheckNode {
                node: node.clone(),
                start_failed: *start_failed,
            });
            run_op(&cli, &client, req, WaitArgs { detach: false }).await
        }
        Command::Node(NodeCmd::WaitRebooted {
            node,
            timeout,
            boot_id,
        }) => wait_rebooted(&cli, &client, node, *timeout, boot_id.clone()).await,
        Command::Node(NodeCmd::Enable { node, wait }) => {
            run_op(
                &cli,
                &client,
                Req::EnableNode(pb::EnableNode { node: node.clone() }),
                *wait,
            )
            .await
        }
        Command::Node(NodeCmd::StartStopped {
            node,
            dry_run: true,
            ..
        }) => {
            let req = Req::StartStopped(pb::StartStopped {
                node: node.clone(),
                dry_run: true,
            });
            let doc = json_reply(client.call(req).await?)?;
            let v: serde_json::Value = serde_json::from_str(&doc)?;
            if cli.output == Output::Json {
                return print_json(&v);
            }
            let names: Vec<&str> = v["would_start"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str())
                .collect();
            println!(
                "would start on {node}: {}",
                if names.is_empty() {
                    "nothing".to_string()
                } else {
                    names.join(", ")
                }
            );
            Ok(())
        }
        Command::Node(NodeCmd::StartStopped {
            node,
            dry_run: false,
            wait,
        }) => {
            let req = Req::StartStopped(pb::StartStopped {
                node: node.clone(),
                dry_run: false,
            });
            run_op(&cli, &client, req, *wait).await
        }
        Command::Maintenance(MaintenanceCmd::Start {
            node,
            mode,
            dry_run,
            drain,
            wait,
        }) => {
            use pb::start_maintenance::Mode;
            let req = Req::StartMaintenance(pb::StartMaintenance {
                node: node.clone(),
                mode: match mode {
                    ModeArg::Move => Mode::Move,
                    ModeArg::Stop => Mode::Stop,
                    ModeArg::None => Mode::None,
                } as i32,
                ack_vfw_downtime: drain.ack_vfw_downtime,
                max_parallel: drain.max_parallel,
                deadline_s: drain.deadline.unwrap_or(0),
                fallback: drain.fallback.wire(),
                dry_run: *dry_run,
                max_speed_mibs: drain.max_speed,
            });
            if *dry_run {
                let doc = json_reply(client.call(req).await?)?;
                return print_preflight(&cli, &doc);
            }
            run_op(&cli, &client, req, *wait).await
        }
        Command::Maintenance(MaintenanceCmd::Retry { node, drain, wait }) => {
            let req = Req::RetryMaintenance(pb::RetryMaintenance {
                node: node.clone(),
                max_parallel: drain.max_parallel,
                deadline_s: drain.deadline.unwrap_or(0),
                fallback: drain.fallback.wire(),
                ack_vfw_downtime: drain.ack_vfw_downtime,
                max_speed_mibs: drain.max_speed,
            });
            run_op(&cli, &client, req, *wait).await
        }
        Command::Job(JobCmd::Abort { id, wait }) => {
            let req = Req::AbortJob(pb::AbortJob { job_id: id.clone() });
            let Reply::Accepted(acc) = client.call(req).await? else {
                anyhow::bail!("unexpected reply");
            };
            if cli.output == Output::Table {
                eprintln!("{}", acc.message);
            }
            if wait.detach {
                if cli.output == Output::Json {
                    println!(
                        "{}",
                        serde_json::json!({ "accepted": true, "job_id": acc.op_id, "message": acc.message })
                    );
                }
                return Ok(());
            }
            job_watch(&cli, &client, id).await
        }
        Command::Events(a) => events(&cli, &client, a).await,
        Command::Plan(p) => {
            let req = match p {
                PlanCmd::Drain {
                    node, max_parallel, ..
                } => Req::PlanDrain(pb::PlanDrain {
                    node: node.clone(),
                    max_parallel: *max_parallel,
                }),
                PlanCmd::Rolling {
                    nodes,
                    all,
                    max_unavailable,
                    ..
                } => {
                    if nodes.is_empty() && !all {
                        anyhow::bail!("name the nodes to roll, or give --all");
                    }
                    Req::PlanRolling(pb::PlanRolling {
                        nodes: nodes.clone(),
                        max_unavailable: *max_unavailable,
                    })
                }
            };
            let doc = json_reply(client.call(req).await?)?;
            print_plan(&cli, p, &doc)
        }
        Command::Fleet(FleetCmd::Export) => {
            let doc = json_reply(client.call(Req::ExportFleet(pb::ExportFleet {})).await?)?;
            let v: serde_json::Value = serde_json::from_str(&doc)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Command::Rolling(r) => rolling(&cli, &client, r).await,
        Command::Job(JobCmd::List) => job_list(&cli, &client).await,
        Command::Job(JobCmd::Show { id }) => job_show(&cli, &client, id).await,
        Command::Job(JobCmd::Watch { id }) => job_watch(&cli, &client, id).await,
    }
}

async fn serve(
    cli: &Cli,
    config: Option<PathBuf>,
    http: Option<std::net::SocketAddr>,
    metrics_listen: Option<std::net::SocketAddr>,
) -> CliResult {
    let mut cfg = match config {
        Some(p) => crate::config::CoordinatorConfig::load(&p)?,
        None => crate::config::CoordinatorConfig::default(),
    };
    // The global flag (or NATS_URL) wins over the file when given explicitly.
    if std::env::var("NATS_URL").is_ok() || std::env::args().any(|a| a.starts_with("--nats-url")) {
        cfg.nats_url = cli.nats_url.clone();
    }
    if cli.prefix != nodemaint_proto::subjects::DEFAULT_PREFIX {
        cfg.subject_prefix = cli.prefix.clone();
    }
    let sec = security(cli);
    cfg.nats_creds = sec.creds.or(cfg.nats_creds);
    cfg.nats_ca = sec.ca.or(cfg.nats_ca);
    if cfg.users.is_empty() {
        tracing::warn!("no users configured: every fleet change will be refused");
    }
    let coord = crate::server::Coordinator::start(cfg).await?;
    if let Some(addr) = metrics_listen {
        crate::metrics::listen(coord.clone(), addr).await?;
    }
    if let Some(addr) = http {
        // Bound here so that a busy port fails the start instead of a log line.
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("portal: cannot listen on {addr}: {e}"))?;
        let portal = crate::portal::serve_on(coord.clone(), listener);
        tokio::spawn(async move {
            if let Err(e) = portal.await {
                tracing::error!(error = %e, "operator portal stopped");
            }
        });
    }
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    };
    coord.serve(shutdown).await
}

fn json_reply(r: Reply) -> anyhow::Result<String> {
    match r {
        Reply::Json(s) => Ok(s),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> CliResult {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn node_list(cli: &Cli, c: &Client) -> CliResult {
    let Reply::Nodes(list) = c.call(Req::ListNodes(pb::ListNodes {})).await? else {
        anyhow::bail!("unexpected reply");
    };
    let views: Vec<NodeView> = list.nodes.iter().map(NodeView::from).collect();
    if cli.output == Output::Json {
        return print_json(&views);
    }
    let now = nodemaint_proto::now_ms();
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                format!("{:?}", n.status).to_uppercase(),
                if n.reachable {
                    "yes".into()
                } else {
                    "NO".into()
                },
                format!("{}/{}", n.vms_running, n.vms_total),
                format!("{} / {}", mib(n.memory_used_mib), mib(n.memory_mib)),
                ago(n.last_seen_ms, now),
                n.current_job
                    .as_deref()
                    .map(output::short)
                    .unwrap_or("-")
                    .to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "NODE",
                "STATUS",
                "REACHABLE",
                "VMS RUN/TOTAL",
                "MEMORY USED/TOTAL",
                "LAST SEEN",
                "JOB"
            ],
            &rows
        )
    );
    if rows.is_empty() {
        eprintln!(
            "(no node has registered yet; are the agents running against {}?)",
            cli.nats_url
        );
    }
    Ok(())
}

fn vm_rows(vms: &[VmView], with_node: bool) -> Vec<Vec<String>> {
    vms.iter()
        .map(|v| {
            let mut row = vec![v.vm.name.clone()];
            if with_node {
                row.push(v.node.clone());
            }
            row.extend([
                format!("{:?}", v.vm.kind).to_uppercase(),
                v.vm.cloudspace.clone().unwrap_or_else(|| "-".into()),
                format!("{:?}", v.vm.state).to_uppercase(),
                v.vm.vcpus.to_string(),
                mib(v.vm.memory_mib),
                v.stopped_by
                    .as_deref()
                    .map(|j| format!("stopped by job {}", output::short(j)))
                    .unwrap_or_default(),
            ]);
            row
        })
        .collect()
}

async fn node_show(cli: &Cli, c: &Client, node: &str) -> CliResult {
    let Reply::Node(d) = c
        .call(Req::ShowNode(pb::ShowNode { node: node.into() }))
        .await?
    else {
        anyhow::bail!("unexpected reply");
    };
    let summary = d.summary.clone().unwrap_or_default();
    let view = NodeView::from(&summary);
    let vms: Vec<VmView> = d
        .domains
        .iter()
        .map(|dom| VmView {
            node: view.name.clone(),
            vm: Vm::from(dom),
            stopped_by: None,
        })
        .collect();
    if cli.output == Output::Json {
        return print_json(
            &serde_json::json!({ "node": view, "libvirt_uri": d.libvirt_uri, "vms": vms }),
        );
    }
    let now = nodemaint_proto::now_ms();
    println!("Node:        {}", view.name);
    println!("Status:      {:?}", view.status);
    println!(
        "Reachable:   {} (last seen {})",
        if view.reachable { "yes" } else { "NO" },
        ago(view.last_seen_ms, now)
    );
    println!("Address:     {}  libvirt: {}", view.address, d.libvirt_uri);
    println!(
        "Capacity:    {} vCPUs, {}",
        view.vcpus,
        mib(view.memory_mib)
    );
    println!(
        "Memory used: {} by {} VMs ({} running)",
        mib(view.memory_used_mib),
        view.vms_total,
        view.vms_running
    );
    println!(
        "Boot:        id {} at {}",
        view.boot_id,
        fmt_ts(view.boot_time_ms)
    );
    println!("Agent:       {}", view.agent_version);
    if let Some(j) = &view.current_job {
        println!("Job:         {j}");
    }
    let (sys, user): (Vec<VmView>, Vec<VmView>) = vms
        .into_iter()
        .partition(|v| v.vm.kind == nodemaint_proto::model::VmKind::Vfw);
    let headers = [
        "VM",
        "KIND",
        "CLOUDSPACE",
        "STATE",
        "VCPUS",
        "MEMORY",
        "NOTE",
    ];
    println!("\nUser VMs ({}):", user.len());
    print!("{}", table(&headers, &vm_rows(&user, false)));
    println!("\nSystem VMs — virtual firewalls ({}):", sys.len());
    print!("{}", table(&headers, &vm_rows(&sys, false)));
    Ok(())
}

async fn vm_list(
    cli: &Cli,
    c: &Client,
    node: &Option<String>,
    cloudspace: &Option<String>,
    kind: Option<KindArg>,
    state: Option<StateArg>,
) -> CliResult {
    let req = pb::ListVms {
        node: node.clone().unwrap_or_default(),
        cloudspace: cloudspace.clone().unwrap_or_default(),
        kind: match kind {
            None => pb::VmKind::Unspecified,
            Some(KindArg::User) => pb::VmKind::User,
            Some(KindArg::Vfw) => pb::VmKind::Vfw,
        } as i32,
        state: match state {
            None => pb::VmState::Unspecified,
            Some(StateArg::Running) => pb::VmState::Running,
            Some(StateArg::Shutoff) => pb::VmState::Shutoff,
            Some(StateArg::Paused) => pb::VmState::Paused,
            Some(StateArg::Crashed) => pb::VmState::Crashed,
        } as i32,
    };
    let Reply::Vms(list) = c.call(Req::ListVms(req)).await? else {
        anyhow::bail!("unexpected reply");
    };
    let vms: Vec<VmView> = list
        .vms
        .iter()
        .map(|e| VmView {
            node: e.node.clone(),
            vm: e.domain.as_ref().map(Vm::from).unwrap_or_default(),
            stopped_by: (!e.stopped_by.is_empty()).then(|| e.stopped_by.clone()),
        })
        .collect();
    if cli.output == Output::Json {
        return print_json(&vms);
    }
    print!(
        "{}",
        table(
            &[
                "VM",
                "NODE",
                "KIND",
                "CLOUDSPACE",
                "STATE",
                "VCPUS",
                "MEMORY",
                "NOTE"
            ],
            &vm_rows(&vms, true)
        )
    );
    Ok(())
}

async fn vfw_list(cli: &Cli, c: &Client) -> CliResult {
    let Reply::Vfws(list) = c.call(Req::ListVfws(pb::ListVfws {})).await? else {
        anyhow::bail!("unexpected reply");
    };
    let views: Vec<nodemaint_proto::model::VfwView> = list
        .vfws
        .iter()
        .map(|v| {
            let d = v.domain.as_ref().map(Vm::from).unwrap_or_default();
            nodemaint_proto::model::VfwView {
                cloudspace: v.cloudspace.clone(),
                node: v.node.clone(),
                name: d.name,
                state: d.state,
                node_reachable: v.node_reachable,
            }
        })
        .collect();
    if cli.output == Output::Json {
        return print_json(&views);
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            if v.node.is_empty() {
                vec![
                    v.cloudspace.clone(),
                    "-".into(),
                    "MISSING: no node reports this VFW".into(),
                    "-".into(),
                ]
            } else {
                vec![
                    v.cloudspace.clone(),
                    v.name.clone(),
                    format!("{:?}", v.state).to_uppercase(),
                    format!(
                        "{}{}",
                        v.node,
                        if v.node_reachable {
                            ""
                        } else {
                            " (unreachable)"
                        }
                    ),
                ]
            }
        })
        .collect();
    print!("{}", table(&["CLOUDSPACE", "VFW", "STATE", "NODE"], &rows));
    Ok(())
}

/// Sends a fleet-changing request, then follows its job to the end with a
/// progress line per VM (JSON lines with `--output json`). Fails (exit 1)
/// when the job fails.
async fn run_op(cli: &Cli, c: &Client, req: Req, wait: WaitArgs) -> CliResult {
    let Reply::Accepted(acc) = c.call(req).await? else {
        anyhow::bail!("unexpected reply");
    };
    if cli.output == Output::Json {
        println!(
            "{}",
            serde_json::json!({ "accepted": true, "job_id": acc.op_id, "message": acc.message })
        );
    } else {
        eprintln!("{}", acc.message);
    }
    if wait.detach {
        if cli.output == Output::Table {
            println!("{}", acc.op_id);
        }
        return Ok(());
    }
    follow_job(cli, c, &acc.op_id, acc.events_from_seq).await
}

async fn follow_job(cli: &Cli, c: &Client, job_id: &str, from_seq: u64) -> CliResult {
    let json = cli.output == Output::Json;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut bar_open = false;
    let end = c
        .watch_op(job_id, from_seq, |ev| {
            if json {
                println!("{}", output::event_json(0, ev));
                return;
            }
            match &ev.body {
                Some(Body::Progress(p)) => {
                    let line = format!(
                        "{:<20} {} {}/{} moved",
                        p.vm,
                        output::bar(p.percent),
                        mib(p.bytes_processed >> 20),
                        mib((p.bytes_processed + p.bytes_remaining) >> 20)
                    );
                    if tty {
                        eprint!("\r{line}\x1b[K");
                        bar_open = true;
                    } else {
                        eprintln!("{line}");
                    }
                }
                Some(Body::Checks(report)) => {
                    if bar_open {
                        eprintln!();
                        bar_open = false;
                    }
                    let rows: Vec<Vec<String>> = report
                        .services
                        .iter()
                        .map(|s| {
                            vec![
                                s.check.clone(),
                                s.service.clone(),
                                if s.ok { "ok".into() } else { "FAILED".into() },
                                s.state.clone(),
                                if s.start_attempted {
                                    "started".into()
                                } else {
                                    String::new()
                                },
                                s.detail.lines().next().unwrap_or("").to_string(),
                            ]
                        })
                        .collect();
                    println!("Service checks on {}:", ev.node);
                    print!(
                        "{}",
                        table(
                            &["CHECK", "SERVICE", "RESULT", "STATE", "ACTION", "DETAIL"],
                            &rows
                        )
                    );
                }
                Some(Body::Job(j)) => {
                    if bar_open {
                        eprintln!();
                        bar_open = false;
                    }
                    if !j.terminal {
                        eprintln!("{} {}", fmt_ts(ev.ts_ms), j.message);
                    }
                }
                _ => {}
            }
            let _ = std::io::stderr().flush();
        })
        .await?;
    if bar_open {
        eprintln!();
    }
    // The job's end report: what was done and what was not.
    let job = fetch_job(c, job_id).await.ok();
    if json {
        if let Some(job) = &job {
            println!("{}", serde_json::json!({ "job": job }));
        }
    } else {
        if let Some(r) = job.as_ref().and_then(|j| j.report.as_ref()) {
            for l in &r.done {
                println!("  done      {}: {}", l.vm, l.detail);
            }
            for l in &r.not_done {
                println!("  NOT DONE  {}: {}", l.vm, l.detail);
            }
        }
        println!("{}: {}", end.state, end.message);
    }
    if end.ok {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "job {job_id} {}: {}",
            end.state.to_lowercase(),
            end.message
        ))
    }
}

fn parse_since(s: &str) -> anyhow::Result<Option<Duration>> {
    if s == "all" {
        return Ok(None);
    }
    parse_duration(s)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("--since {s:?}: {e}, or `all`"))
}

/// `90`, `90s`, `10m`, `2h`, `1d`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| "use a number with s, m, h or d (e.g. 10m)".to_string())?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("unknown unit {unit:?} (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

/// `--deadline`: a positive duration, in whole seconds.
fn parse_deadline(s: &str) -> Result<u32, String> {
    let d = parse_duration(s)?;
    match u32::try_from(d.as_secs()) {
        Ok(0) => Err("the deadline must be positive".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("deadline too long".into()),
    }
}

/// The `--dry-run` report: each check, then the plan; exit 1 on a failed check.
fn print_preflight(cli: &Cli, doc: &str) -> CliResult {
    let v: serde_json::Value = serde_json::from_str(doc)?;
    let ok = v["ok"].as_bool().unwrap_or(false);
    if cli.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "pre-flight of maintenance {} --mode {}:",
            v["node"].as_str().unwrap_or("?"),
            v["mode"].as_str().unwrap_or("?")
        );
        for c in v["checks"].as_array().into_iter().flatten() {
            println!(
                "  {} {:<20} {}",
                if c["ok"].as_bool() == Some(true) {
                    "ok  "
                } else {
                    "FAIL"
                },
                c["name"].as_str().unwrap_or(""),
                c["detail"].as_str().unwrap_or("")
            );
        }
        if let Some(moves) = v["plan"]["moves"].as_array() {
            println!("plan: {} moves", moves.len());
            for m in moves {
                println!(
                    "  wave {} {:<24} {} -> {}{}",
                    m["wave"],
                    m["vm"].as_str().unwrap_or(""),
                    m["from"].as_str().unwrap_or(""),
                    m["to"].as_str().unwrap_or(""),
                    m["not_migratable"]
                        .as_str()
                        .map(|w| format!("  (cannot live-migrate: {w})"))
                        .unwrap_or_default()
                );
            }
        }
        println!(
            "{}",
            if ok {
                "would start: every check passed (nothing was changed)"
            } else {
                "would be refused (nothing was changed)"
            }
        );
    }
    if ok {
        Ok(())
    } else {
        anyhow::bail!("pre-flight failed")
    }
}

async fn events(cli: &Cli, c: &Client, a: &EventsArgs) -> CliResult {
    let kind = match &a.kind {
        Some(k) => Some(EventKind::parse(k).ok_or_else(|| {
            anyhow::anyhow!(
                "unknown event kind {k:?}; kinds: {}",
                EventKind::ALL.map(|k| k.as_str()).join(", ")
            )
        })?),
        None => None,
    };
    if let Some(n) = &a.node {
        nodemaint_proto::subjects::validate_token(n)?;
    }
    let deliver = match parse_since(&a.since)? {
        None => DeliverPolicy::All,
        Some(d) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::now_utc() - d,
        },
    };
    let filter = c.subjects.events_filter(a.node.as_deref(), kind);
    let mut msgs = c.event_stream(vec![filter], deliver).await?;
    // Without --follow, stop when the replay has caught up (nothing
    // pending), or when nothing arrives for a moment (no matching events).
    let idle = (!a.follow).then_some(Duration::from_millis(1500));
    let mut caught_up = false;
    loop {
        if caught_up {
            break;
        }
        let next = match idle {
            Some(d) => tokio::time::timeout(d, msgs.next()).await.ok().flatten(),
            None => msgs.next().await,
        };
        let Some(msg) = next else { break };
        let msg = msg.map_err(|e| ClientError::Other(format!("event stream error: {e}")))?;
        let (seq, pending) = msg
            .info()
            .map(|i| (i.stream_sequence, i.pending))
            .unwrap_or((0, 1));
        let line = match nodemaint_proto::decode::<pb::Event>(&msg.payload) {
            Ok(ev) if cli.output == Output::Json => Some(output::event_json(seq, &ev).to_string()),
            Ok(ev) => Some(output::event_line(&ev)),
            Err(e) => {
                eprintln!("(seq {seq}: {e})");
                None
            }
        };
        // A reader that went away (`| head`) ends the stream quietly.
        if let Some(line) = line {
            if writeln!(std::io::stdout(), "{line}").is_err() {
                return Ok(());
            }
        }
        if pending == 0 && !a.follow {
            caught_up = true;
        }
    }
    Ok(())
}

/// Computes a plan locally when `--fleet FILE` is given.
fn plan_from_file(p: &PlanCmd) -> anyhow::Result<Option<String>> {
    let (file, doc) = match p {
        PlanCmd::Drain {
            node,
            fleet: Some(f),
            max_parallel,
        } => {
            let fleet = read_fleet(f)?;
            let limits = crate::fleet::limits(&crate::config::Limits::default(), *max_parallel);
            let r =
                planner::drain_report(&fleet, node, &limits).map_err(|e| anyhow::anyhow!("{e}"))?;
            (f, serde_json::to_string(&r)?)
        }
        PlanCmd::Rolling {
            nodes,
            all,
            max_unavailable,
            fleet: Some(f),
        } => {
            let fleet = read_fleet(f)?;
            if nodes.is_empty() && !all {
                anyhow::bail!("name the nodes to roll, or give --all");
            }
            let nodes: Vec<String> = if *all {
                fleet.nodes.iter().map(|n| n.name.clone()).collect()
            } else {
                nodes.clone()
            };
            let r = planner::plan_rolling(&fleet, &nodes, (*max_unavailable).max(1) as usize)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            (f, serde_json::to_string(&r)?)
        }
        _ => return Ok(None),
    };
    let _ = file;
    Ok(Some(doc))
}

fn read_fleet(path: &PathBuf) -> anyhow::Result<planner::Fleet> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read fleet file {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("invalid fleet file {}: {e}", path.display()))
}

fn print_plan(cli: &Cli, p: &PlanCmd, doc: &str) -> CliResult {
    let v: serde_json::Value = serde_json::from_str(doc)?;
    if cli.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        match p {
            PlanCmd::Drain { node, .. } => {
                let r: planner::DrainReport = serde_json::from_value(v.clone())?;
                let rows: Vec<Vec<String>> = r
                    .moves
                    .iter()
                    .map(|m| {
                        vec![
                            m.wave.to_string(),
                            m.vm.clone(),
                            m.kind.to_string(),
                            m.from.clone(),
                            m.to.clone(),
                        ]
                    })
                    .collect();
                println!("Drain plan for {node}: {} moves", rows.len());
                print!("{}", table(&["WAVE", "VM", "KIND", "FROM", "TO"], &rows));
                if !r.unplaced.is_empty() {
                    println!(
                        "\nCannot place {} VMs, nothing would be moved:",
                        r.unplaced.len()
                    );
                    for u in &r.unplaced {
                        println!("  {}: {}", u.vm, u.reason);
                    }
                }
            }
            PlanCmd::Rolling { .. } => {
                let r: planner::RollingPlan = serde_json::from_value(v.clone())?;
                for (i, g) in r.groups.iter().enumerate() {
                    println!("group {}: {}", i + 1, g.join(", "));
                }
                for u in &r.undrainable {
                    println!("cannot be drained: {}: {}", u.node, u.reason);
                }
            }
        }
    }
    // An infeasible plan is a failure for scripts too.
    let unplaced = v
        .get("unplaced")
        .and_then(|u| u.as_array())
        .map(|a| !a.is_empty())
        .unwrap_or(false);
    let undrainable = v
        .get("undrainable")
        .and_then(|u| u.as_array())
        .map(|a| !a.is_empty())
        .unwrap_or(false);
    if unplaced || undrainable {
        anyhow::bail!("the plan is infeasible (see above)");
    }
    Ok(())
}

async fn job_list(cli: &Cli, c: &Client) -> CliResult {
    let doc = json_reply(c.call(Req::ListJobs(pb::ListJobs {})).await?)?;
    let jobs: Vec<crate::jobs::Job> = serde_json::from_str(&doc)?;
    if cli.output == Output::Json {
        return print_json(&jobs);
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.kind().to_string(),
                format!("{:?}", j.state).to_uppercase(),
                j.node.clone().unwrap_or_else(|| "-".into()),
                j.user.clone(),
                fmt_ts(j.created_ms),
                j.outcome.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["JOB", "KIND", "STATE", "NODE", "USER", "CREATED", "OUTCOME"],
            &rows
        )
    );
    Ok(())
}

/// A job record with its journal, as the API returns it.
async fn fetch_job(c: &Client, id: &str) -> anyhow::Result<crate::jobs::Job> {
    let doc = json_reply(
        c.call(Req::ShowJob(pb::ShowJob { job_id: id.into() }))
            .await?,
    )?;
    Ok(serde_json::from_str(&doc)?)
}

async fn job_show(cli: &Cli, c: &Client, id: &str) -> CliResult {
    let job = fetch_job(c, id).await?;
    if cli.output == Output::Json {
        return print_json(&job);
    }
    println!("Job:     {} ({})", job.id, job.kind());
    println!("State:   {:?}", job.state);
    println!("User:    {}", job.user);
    println!("Node:    {}", job.node.as_deref().unwrap_or("-"));
    println!("Created: {}", fmt_ts(job.created_ms));
    println!(
        "Params:  {}",
        serde_json::to_value(&job.spec)
            .map(|v| v["params"].to_string())
            .unwrap_or_default()
    );
    println!("Journal:");
    for s in &job.steps {
        let mark = match s.ok {
            Some(true) => "ok  ",
            Some(false) => "FAIL",
            None => "    ",
        };
        println!("  {} {mark} {}", fmt_ts(s.ts_ms), s.message);
    }
    if let Some(o) = &job.outcome {
        println!("Outcome: {o}");
    }
    if let Some(r) = &job.report {
        println!("Done ({}):", r.done.len());
        for l in &r.done {
            println!("  {}: {}", l.vm, l.detail);
        }
        println!("Not done ({}):", r.not_done.len());
        for l in &r.not_done {
            println!("  {}: {}", l.vm, l.detail);
        }
    }
    Ok(())
}

async fn job_watch(cli: &Cli, c: &Client, id: &str) -> CliResult {
    let job = fetch_job(c, id).await?;
    if job.state.is_terminal() {
        return job_show(cli, c, id).await;
    }
    follow_job(cli, c, id, 0).await
}

async fn wait_rebooted(
    cli: &Cli,
    c: &Client,
    node: &str,
    timeout: u64,
    before: Option<String>,
) -> CliResult {
    let first = node_summary(c, node).await?;
    let before = before.unwrap_or(first.boot_id.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout);
    let mut was_down = false;
    loop {
        let s = node_summary(c, node).await?;
        was_down |= !s.reachable;
        if s.reachable && !s.boot_id.is_empty() && s.boot_id != before {
            if cli.output == Output::Json {
                println!(
                    "{}",
                    serde_json::json!({ "node": node, "rebooted": true, "old_boot_id": before, "boot_id": s.boot_id })
                );
            } else {
                println!("{node} is back with boot id {} (was {before})", s.boot_id);
            }
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "{node} did not come back with a new boot id within {timeout} s ({})",
                if was_down {
                    "it went down"
                } else {
                    "it never went down"
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn node_summary(c: &Client, node: &str) -> anyhow::Result<pb::NodeSummary> {
    match c
        .call(Req::ShowNode(pb::ShowNode {
            node: node.to_string(),
        }))
        .await?
    {
        Reply::Node(d) => Ok(d.summary.unwrap_or_default()),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
}

async fn rolling(cli: &Cli, c: &Client, r: &RollingCmd) -> CliResult {
    use pb::control_rolling::Action;
    let control = |id: &String, action: Action, node: &str| {
        Req::ControlRolling(pb::ControlRolling {
            job_id: id.clone(),
            action: action as i32,
            node: node.to_string(),
        })
    };
    let req = match r {
        RollingCmd::Start {
            nodes,
            all,
            max_unavailable,
            reboot_command,
            wait_for_continue,
            checks_must_pass,
            reboot_timeout,
            deadline,
            yes,
            wait,
        } => {
            if nodes.is_empty() && !all {
                anyhow::bail!("name the nodes to roll, or give --all");
            }
            // Show the order first; ask unless --yes.
            let plan = json_reply(
                c.call(Req::PlanRolling(pb::PlanRolling {
                    nodes: nodes.clone(),
                    max_unavailable: *max_unavailable,
                }))
                .await?,
            )?;
            let plan: planner::RollingPlan = serde_json::from_str(&plan)?;
            if !yes {
                eprintln!("Rolling maintenance, {} groups:", plan.groups.len());
                for (i, g) in plan.groups.iter().enumerate() {
                    eprintln!("  {}: {}", i + 1, g.join(", "));
                }
                if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                    anyhow::bail!("not a terminal: add --yes to start without confirmation");
                }
                eprint!("Proceed? [y/N] ");
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    anyhow::bail!("cancelled; nothing was changed");
                }
            }
            let req = Req::StartRolling(pb::StartRolling {
                nodes: nodes.clone(),
                max_unavailable: *max_unavailable,
                reboot_command: reboot_command.clone().unwrap_or_default(),
                wait_for_continue: *wait_for_continue,
                checks_must_pass: *checks_must_pass,
                reboot_timeout_s: *reboot_timeout,
                deadline_s: deadline.unwrap_or(0),
            });
            return run_op(cli, c, req, *wait).await;
        }
        RollingCmd::Show { id } => return rolling_show(cli, c, id).await,
        RollingCmd::Pause { id } => control(id, Action::Pause, ""),
        RollingCmd::Resume { id } => control(id, Action::Resume, ""),
        RollingCmd::Abort { id } => control(id, Action::Abort, ""),
        RollingCmd::Continue { id, node } => control(id, Action::Continue, node),
    };
    let Reply::Accepted(acc) = c.call(req).await? else {
        anyhow::bail!("unexpected reply");
    };
    if cli.output == Output::Json {
        println!(
            "{}",
            serde_json::json!({ "ok": true, "job_id": acc.op_id, "message": acc.message })
        );
    } else {
        println!("{}", acc.message);
    }
    Ok(())
}

async fn rolling_show(cli: &Cli, c: &Client, id: &str) -> CliResult {
    let job = fetch_job(c, id).await?;
    if cli.output == Output::Json {
        return print_json(&job);
    }
    println!(
        "Rolling maintenance {} ({:?}), started by {}",
        job.id, job.state, job.user
    );
    let groups = match &job.spec {
        crate::jobs::JobSpec::Rolling(r) => r.groups.clone(),
        _ => Vec::new(),
    };
    let rolling = job.rolling.clone().unwrap_or_default();
    let mut rows = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        for n in g {
            rows.push(vec![
                (i + 1).to_string(),
                n.clone(),
                rolling.phase(n).to_string(),
            ]);
        }
    }
    print!("{}", table(&["GROUP", "NODE", "PHASE"], &rows));
    if let Some(last) = job.steps.last() {
        println!("Last step: {} {}", fmt_ts(last.ts_ms), last.message);
    }
    if let Some(o) = &job.outcome {
        println!("Outcome: {o}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_parses_units() {
        assert_eq!(parse_since("10m").unwrap(), Some(Duration::from_secs(600)));
        assert_eq!(parse_since("2h").unwrap(), Some(Duration::from_secs(7200)));
        assert_eq!(parse_since("all").unwrap(), None);
        assert!(parse_since("ten").is_err());
        assert!(parse_since("5y")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
