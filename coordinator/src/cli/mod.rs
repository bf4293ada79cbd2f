//! The `coordinator` command line: the daemon (`serve`) and the operator
//! commands, each a thin client of the API.

pub(crate) mod args;
pub mod client;
mod commands;
pub mod context;
pub mod exit;
pub mod generate;
pub mod output;
mod progress;

pub use args::*;
use commands::*;

use clap::{Args, Parser, Subcommand, ValueEnum};
use client::Client;
use nodemaint_planner as planner;
use nodemaint_proto::model::{NodeView, Vm, VmView};
use nodemaint_proto::pb::{self, api_reply::Kind as Reply, api_request::Kind as Req, event::Body};
use nodemaint_proto::subjects::EventKind;
use output::{ago, fmt_ts, mib};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// A command's result; a failure's exit code is [`exit::of`] it.
pub type CliResult = Result<(), anyhow::Error>;

/// The default server when neither flags, environment nor a context name one.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// The login and TLS files of the flags (and their environment variables).
fn flag_security(cli: &Cli) -> nodemaint_proto::bus::Security {
    let nats_user = std::env::var("NATS_USER").ok().filter(|u| !u.is_empty());
    nodemaint_proto::bus::Security {
        creds: cli.nodemaint_creds.clone(),
        nats_creds: cli.creds.clone(),
        nkey: cli.nkey.clone(),
        user: cli.user.clone().or(nats_user),
        password: cli.password.clone(),
        ca: cli.ca.clone(),
        cert: cli.tlscert.clone(),
        key: cli.tlskey.clone(),
    }
}

/// Where and how the CLI connects: flags and environment, else the NATS
/// context's settings, else the default URL.
pub fn connection(cli: &Cli) -> anyhow::Result<(String, nodemaint_proto::bus::Security)> {
    let ctx = context::load(cli.context.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    let flags = flag_security(cli);
    let url = cli
        .nats_url
        .clone()
        .or_else(|| ctx.as_ref().and_then(|c| c.url()))
        .unwrap_or_else(|| DEFAULT_NATS_URL.to_string());
    let sec = match &ctx {
        Some(c) => flags.or(c.security()),
        None => flags,
    };
    Ok((url, sec))
}

pub async fn run(cli: Cli) -> CliResult {
    if let Command::Serve {
        config,
        http,
        metrics_listen,
        insecure,
        ..
    } = &cli.command
    {
        return serve(&cli, config.clone(), *http, *metrics_listen, *insecure).await;
    }
    match &cli.command {
        Command::Completions { shell } => return generate::print_completions(*shell),
        Command::Man { out } => {
            let pages = generate::man_pages(out)
                .map_err(|e| anyhow::anyhow!("man pages into {}: {e}", out.display()))?;
            eprintln!("{} man pages written to {}", pages.len(), out.display());
            return Ok(());
        }
        _ => {}
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
    let (url, sec) = connection(&cli)?;
    let mut client = Client::connect(&url, &cli.prefix, sec.user.as_deref(), &sec).await?;
    client.request_id.clone_from(&cli.request_id);
    match &cli.command {
        Command::Serve { .. }
        | Command::HashPassword
        | Command::Completions { .. }
        | Command::Man { .. } => unreachable!(),
        Command::Node(NodeCmd::List { columns }) => node_list(&cli, &client, columns).await,
        Command::Node(NodeCmd::Show { node }) => node_show(&cli, &client, node).await,
        Command::Vm(VmCmd::List {
            columns,
            node,
            cloudspace,
            kind,
            state,
        }) => vm_list(&cli, &client, columns, node, cloudspace, *kind, *state).await,
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
            converge,
            wait,
        }) => {
            let req = Req::MoveVm(pb::MoveVm {
                vm: vm.clone(),
                to_node: to.clone(),
                timeout_s: timeout.unwrap_or(0),
                max_speed_mibs: max_speed.unwrap_or(0),
                converge: converge.wire(),
            });
            run_op(&cli, &client, req, *wait).await
        }
        Command::Vfw(VfwCmd::List { columns }) => vfw_list(&cli, &client, columns).await,
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
                converge: drain.converge.wire(),
                concurrency: drain.concurrency_wire(),
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
                converge: drain.converge.wire(),
                concurrency: drain.concurrency_wire(),
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
                        return Err(exit::usage("name the nodes to roll, or give --all"));
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
        Command::Job(JobCmd::List { columns, limit }) => {
            job_list(&cli, &client, columns, *limit).await
        }
        Command::Job(JobCmd::Show { id }) => job_show(&cli, &client, id).await,
        Command::Job(JobCmd::Watch { id }) => job_watch(&cli, &client, id).await,
    }
}

async fn serve(
    cli: &Cli,
    config: Option<PathBuf>,
    http: Option<std::net::SocketAddr>,
    metrics_listen: Option<std::net::SocketAddr>,
    insecure: bool,
) -> CliResult {
    let mut cfg = match config {
        Some(p) => crate::config::CoordinatorConfig::load(&p)?,
        None => crate::config::CoordinatorConfig::default(),
    };
    // The global flag (or NATS_URL) wins over the file when given.
    if let Some(url) = &cli.nats_url {
        cfg.nats_url = url.clone();
    }
    if cli.prefix != nodemaint_proto::subjects::DEFAULT_PREFIX {
        cfg.subject_prefix = cli.prefix.clone();
    }
    if let Some(name) = &cli.context {
        // A daemon's identity is its config's, not an operator's context.
        tracing::warn!(
            context = %name,
            "serve ignores NATS contexts (--context, NATS_CONTEXT): its NATS settings come \
             from its config, the environment and its flags"
        );
    }
    // The daemon's principal is not the operator's: NODEMAINT_USER (a
    // CLI setting) does not name it; NATS_USER or `nats_user` does.
    cfg.nats_flags = nodemaint_proto::bus::Security {
        user: None,
        ..flag_security(cli)
    };
    if let Some(warning) = cfg
        .nats_security()
        .require(insecure, "the coordinator")
        .map_err(|e| anyhow::anyhow!(e))?
    {
        tracing::warn!("{warning}");
    }
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
        // A bad TLS certificate or key fails the start too.
        let portal = crate::portal::start(coord.clone(), listener).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_humantime_units_and_bare_seconds() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(secs("90"), Ok(90));
        assert_eq!(secs("90s"), Ok(90));
        assert_eq!(secs("10m"), Ok(600));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(secs("1h 30m"), Ok(5400));
        assert_eq!(secs("2d"), Ok(172_800));
        assert_eq!(secs("1.5h"), Ok(5400));
        assert_eq!(secs("3650d"), Ok(3650 * 86_400));
        assert_eq!(parse_since("all"), Ok(Since::All));
        assert_eq!(
            parse_since("2h"),
            Ok(Since::Back(Duration::from_secs(7200)))
        );
        for bad in ["", "ten", "5y2", "1h-", "-5s", "s", "1 fortnight"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        // Huge values are refused, not overflowed (they panicked before).
        for huge in [
            "999999999999999999d",
            "5000000d",
            "18446744073709551615s",
            "18446744073709551616",
            "99999999999999999999999d",
            "3651d",
            "11y",
        ] {
            let e = parse_duration(huge).unwrap_err();
            assert!(e.contains("too long"), "{huge}: {e}");
        }
        assert_eq!(parse_secs("2m"), Ok(120));
        assert_eq!(parse_secs("45"), Ok(45));
        assert!(parse_secs("0s").is_err());
        assert!(parse_secs("1500ms").is_err());
    }

    /// Clap's error names the option and the value, and is a usage error.
    #[test]
    fn bad_durations_name_the_option_and_value() {
        let cases: &[&[&str]] = &[
            &["events", "--since", "999999999999999999d"],
            &["events", "--since", "5000000d"],
            &["vm", "stop", "web-1", "--timeout", "soon"],
            &["vm", "move", "web-1", "--to", "n2", "--timeout", "0"],
            &[
                "maintenance",
                "start",
                "n1",
                "--mode",
                "move",
                "--deadline",
                "1x",
            ],
            &["rolling", "start", "--all", "--reboot-timeout", "4000d"],
            &["node", "wait-rebooted", "n1", "--timeout", "5000000d"],
        ];
        // Nodes or --all: a usage error before anything is sent.
        for args in [
            &["rolling", "start"][..],
            &["plan", "rolling", "--max-unavailable", "2"],
        ] {
            let argv = std::iter::once("coordinator").chain(args.iter().copied());
            let e = Cli::try_parse_from(argv).unwrap_err();
            assert!(e.to_string().contains("<NODES>"), "{args:?}: {e}");
            assert_eq!(e.exit_code(), 2);
        }
        for args in cases {
            let argv = std::iter::once("coordinator").chain(args.iter().copied());
            let e = Cli::try_parse_from(argv).unwrap_err();
            let text = e.to_string();
            let (flag, value) = (args[args.len() - 2], args[args.len() - 1]);
            assert!(
                text.contains(flag) && text.contains(value),
                "{args:?}: {text}"
            );
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
        let ok = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("coordinator").chain(args.iter().copied()))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        };
        match ok(&["vm", "stop", "web-1", "--timeout", "90"]).command {
            Command::Vm(VmCmd::Stop { timeout, .. }) => assert_eq!(timeout, Some(90)),
            c => panic!("{c:?}"),
        }
        match ok(&["rolling", "start", "--all", "--deadline", "1h30m"]).command {
            Command::Rolling(RollingCmd::Start {
                deadline,
                reboot_timeout,
                ..
            }) => {
                assert_eq!(deadline, Some(5400));
                assert_eq!(reboot_timeout, 900, "the default is 15m");
            }
            c => panic!("{c:?}"),
        }
        match ok(&["events"]).command {
            Command::Events(a) => assert_eq!(a.since, Since::Back(Duration::from_secs(3600))),
            c => panic!("{c:?}"),
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any text: an answer, never a panic; an accepted duration is
            /// within the documented maximum.
            #[test]
            fn never_panics(s in "\\PC{0,40}") {
                if let Ok(d) = parse_duration(&s) {
                    prop_assert!(d <= MAX_DURATION);
                }
                let _ = parse_since(&s);
                let _ = parse_secs(&s);
            }

            /// Digits and units in any mix, the shapes overflow comes from.
            #[test]
            fn unit_soup_never_panics(s in "[0-9]{0,25}(ns|us|ms|s|m|h|d|w|M|y)?([0-9]{0,25}(s|m|h|d))?") {
                if let Ok(d) = parse_duration(&s) {
                    prop_assert!(d <= MAX_DURATION);
                }
            }

            /// What humantime prints parses back to the same duration.
            #[test]
            fn round_trips_humantime_output(secs in 0..=MAX_DURATION.as_secs(), nanos in 0u32..1_000_000_000) {
                let d = Duration::new(secs, nanos).min(MAX_DURATION);
                let text = humantime::format_duration(d).to_string();
                prop_assert_eq!(parse_duration(&text), Ok(d), "{}", text);
                let whole = Duration::from_secs(secs.max(1));
                let text = humantime::format_duration(whole).to_string();
                prop_assert_eq!(parse_secs(&text).map(u64::from), Ok(whole.as_secs()), "{}", text);
            }

            /// Beyond the maximum: refused as too long, however it is written.
            #[test]
            fn rejects_beyond_the_maximum(extra in 1..=u64::MAX - MAX_DURATION.as_secs()) {
                let secs = MAX_DURATION.as_secs() + extra;
                let text = humantime::format_duration(Duration::from_secs(secs)).to_string();
                for s in [text, secs.to_string(), format!("{secs}s")] {
                    let e = parse_duration(&s).unwrap_err();
                    prop_assert!(e.contains("too long"), "{}: {}", s, e);
                }
            }
        }
    }

    /// Every command an operator runs shows an example in its `--help`.
    #[test]
    fn every_leaf_command_has_an_example() {
        fn leaves(cmd: &mut clap::Command, path: String, missing: &mut Vec<String>, n: &mut usize) {
            let subs: Vec<String> = cmd
                .get_subcommands()
                .map(|s| s.get_name().to_string())
                .filter(|s| s != "help")
                .collect();
            if subs.is_empty() {
                *n += 1;
                if !cmd.render_long_help().to_string().contains("Example") {
                    missing.push(path);
                }
                return;
            }
            for name in subs {
                let sub = cmd.find_subcommand_mut(&name).unwrap();
                leaves(sub, format!("{path} {name}"), missing, n);
            }
        }
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        cmd.build();
        let (mut missing, mut n) = (Vec::new(), 0);
        leaves(&mut cmd, "coordinator".into(), &mut missing, &mut n);
        assert!(n > 30, "only {n} leaf commands?");
        assert!(missing.is_empty(), "no example in --help of: {missing:?}");
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
