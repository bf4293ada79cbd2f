//! The operator commands: each asks the API (or the event stream) and
//! renders the answer as a table or JSON.

use super::*;

pub(super) fn json_reply(r: Reply) -> anyhow::Result<String> {
    match r {
        Reply::Json(s) => Ok(s),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
}

pub(super) fn print_json<T: serde::Serialize>(v: &T) -> CliResult {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

impl Cli {
    /// A table as this invocation asks for it (`--no-headers`).
    pub(super) fn table(&self, headers: &[&str], rows: &[Vec<String>]) -> String {
        let all: Vec<usize> = (0..headers.len()).collect();
        output::table_of(headers, rows, &all, !self.no_headers)
    }

    /// A list's table: `--columns` (checked by [`columns`]) and `--no-headers`.
    pub(super) fn list_table(
        &self,
        headers: &[&str],
        rows: &[Vec<String>],
        cols: &[usize],
    ) -> String {
        output::table_of(headers, rows, cols, !self.no_headers)
    }
}

/// The `--columns` of a list, checked before anything is asked (exit 2).
pub(super) fn columns(headers: &[&str], args: &ColumnArgs) -> anyhow::Result<Vec<usize>> {
    output::select_columns(headers, &args.columns).map_err(exit::usage)
}

const NODE_HEADERS: [&str; 7] = [
    "NODE",
    "STATUS",
    "REACHABLE",
    "VMS RUN/TOTAL",
    "MEMORY USED/TOTAL",
    "LAST SEEN",
    "JOB",
];

pub(super) async fn node_list(cli: &Cli, c: &Client, columns: &ColumnArgs) -> CliResult {
    let cols = self::columns(&NODE_HEADERS, columns)?;
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
    print!("{}", cli.list_table(&NODE_HEADERS, &rows, &cols));
    if rows.is_empty() {
        eprintln!(
            "(no node has registered yet; are the agents running against {}?)",
            c.url
        );
    }
    Ok(())
}

pub(super) fn vm_rows(vms: &[VmView], with_node: bool) -> Vec<Vec<String>> {
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

pub(super) async fn node_show(cli: &Cli, c: &Client, node: &str) -> CliResult {
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
    print!("{}", cli.table(&headers, &vm_rows(&user, false)));
    println!("\nSystem VMs — virtual firewalls ({}):", sys.len());
    print!("{}", cli.table(&headers, &vm_rows(&sys, false)));
    Ok(())
}

const VM_HEADERS: [&str; 8] = [
    "VM",
    "NODE",
    "KIND",
    "CLOUDSPACE",
    "STATE",
    "VCPUS",
    "MEMORY",
    "NOTE",
];

pub(super) async fn vm_list(
    cli: &Cli,
    c: &Client,
    columns: &ColumnArgs,
    node: &Option<String>,
    cloudspace: &Option<String>,
    kind: Option<KindArg>,
    state: Option<StateArg>,
) -> CliResult {
    let cols = self::columns(&VM_HEADERS, columns)?;
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
        cli.list_table(&VM_HEADERS, &vm_rows(&vms, true), &cols)
    );
    Ok(())
}

const VFW_HEADERS: [&str; 4] = ["CLOUDSPACE", "VFW", "STATE", "NODE"];

pub(super) async fn vfw_list(cli: &Cli, c: &Client, columns: &ColumnArgs) -> CliResult {
    let cols = self::columns(&VFW_HEADERS, columns)?;
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
    print!("{}", cli.list_table(&VFW_HEADERS, &rows, &cols));
    Ok(())
}

/// Sends a fleet-changing request, then follows its job to the end with a
/// progress line per VM (JSON lines with `--output json`). Fails when the
/// job fails (exit 1, or 5 when its deadline stopped it).
pub(super) async fn run_op(cli: &Cli, c: &Client, req: Req, wait: WaitArgs) -> CliResult {
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

/// A check report as a table on standard output.
fn print_checks(cli: &Cli, node: &str, report: &pb::CheckReport) {
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
    println!("Service checks on {node}:");
    print!(
        "{}",
        cli.table(
            &["CHECK", "SERVICE", "RESULT", "STATE", "ACTION", "DETAIL"],
            &rows
        )
    );
}

pub(super) async fn follow_job(cli: &Cli, c: &Client, job_id: &str, from_seq: u64) -> CliResult {
    let json = cli.output == Output::Json;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // On a terminal, live bars; otherwise the plain lines scripts read.
    let mut bars =
        (tty && !json).then(|| super::progress::Bars::new(indicatif::ProgressDrawTarget::stderr()));
    let mut bar_open = false;
    let end = c
        .watch_op(job_id, from_seq, |ev| {
            if json {
                println!("{}", output::event_json(0, ev));
                return;
            }
            if let Some(b) = bars.as_mut() {
                match &ev.body {
                    Some(Body::Checks(report)) => {
                        b.suspend(|| print_checks(cli, &ev.node, report));
                    }
                    _ => b.on_event(ev),
                }
                return;
            }
            match &ev.body {
                Some(Body::Progress(p)) if p.step == "escalating" => {
                    if bar_open {
                        eprintln!();
                        bar_open = false;
                    }
                    eprintln!("{:<20} {}", p.vm, p.message);
                }
                Some(Body::Progress(p)) => {
                    let line = format!(
                        "{:<20} {} {}/{} moved  {}",
                        p.vm,
                        output::bar(p.percent),
                        mib(p.bytes_processed >> 20),
                        mib((p.bytes_processed + p.bytes_remaining) >> 20),
                        output::migration_note(p)
                    );
                    let line = line.trim_end();
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
                    print_checks(cli, &ev.node, report);
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
    if let Some(b) = bars {
        b.finish();
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
        Err(exit::job_failed(
            job.as_ref().is_some_and(|j| j.deadline_expired()),
            format!("job {job_id} {}: {}", end.state.to_lowercase(), end.message),
        ))
    }
}

/// The `--dry-run` report: each check, then the plan; refused (exit 3) on a
/// failed check, as the start would be.
pub(super) fn print_preflight(cli: &Cli, doc: &str) -> CliResult {
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
        Err(exit::refused("pre-flight failed"))
    }
}

pub(super) async fn events(cli: &Cli, c: &Client, a: &EventsArgs) -> CliResult {
    let kind = a.kind;
    let since_ms = match a.since {
        Since::All => 0,
        // At most MAX_DURATION (ten years): the millis fit an i64.
        Since::Back(d) => (nodemaint_proto::now_ms() - d.as_millis() as i64).max(1),
    };
    let mut req = pb::ReadEvents {
        filters: vec![pb::EventFilter {
            node: a.node.clone().unwrap_or_default(),
            kind: kind.map(|k| k.as_str().to_string()).unwrap_or_default(),
        }],
        since_ms,
        // Without --follow, stop when the replay has caught up.
        wait_ms: if a.follow { 5_000 } else { 0 },
        ..Default::default()
    };
    loop {
        let page = c.read_events(req.clone()).await?;
        req.start_seq = page.next_seq;
        for stored in page.events {
            let seq = stored.seq;
            let line = match nodemaint_proto::decode::<pb::Event>(&stored.event) {
                Ok(ev) if cli.output == Output::Json => {
                    Some(output::event_json(seq, &ev).to_string())
                }
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
        }
        if page.pending == 0 && !a.follow {
            return Ok(());
        }
    }
}

/// Computes a plan locally when `--fleet FILE` is given.
pub(super) fn plan_from_file(p: &PlanCmd) -> anyhow::Result<Option<String>> {
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

pub(super) fn read_fleet(path: &PathBuf) -> anyhow::Result<planner::Fleet> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read fleet file {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("invalid fleet file {}: {e}", path.display()))
}

pub(super) fn print_plan(cli: &Cli, p: &PlanCmd, doc: &str) -> CliResult {
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
                print!(
                    "{}",
                    cli.table(&["WAVE", "VM", "KIND", "FROM", "TO"], &rows)
                );
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
        return Err(exit::refused("the plan is infeasible (see above)"));
    }
    Ok(())
}

const JOB_HEADERS: [&str; 7] = ["JOB", "KIND", "STATE", "NODE", "USER", "CREATED", "OUTCOME"];

pub(super) async fn job_list(cli: &Cli, c: &Client, columns: &ColumnArgs, limit: u32) -> CliResult {
    let cols = self::columns(&JOB_HEADERS, columns)?;
    let Reply::Jobs(list) = c.call(Req::ListJobs(pb::ListJobs { limit })).await? else {
        anyhow::bail!("unexpected reply to ListJobs");
    };
    let total = list.total;
    let jobs = list
        .jobs
        .into_iter()
        .map(crate::jobs::Job::try_from)
        .collect::<Result<Vec<_>, _>>()?;
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
    print!("{}", cli.list_table(&JOB_HEADERS, &rows, &cols));
    if total > rows.len() as u64 {
        eprintln!(
            "the newest {} of {total} jobs; `--limit N` shows more",
            rows.len()
        );
    }
    Ok(())
}

/// A job record with its journal, as the API returns it.
pub(super) async fn fetch_job(c: &Client, id: &str) -> anyhow::Result<crate::jobs::Job> {
    match c
        .call(Req::ShowJob(pb::ShowJob { job_id: id.into() }))
        .await?
    {
        Reply::Job(job) => Ok(job.try_into()?),
        other => anyhow::bail!("unexpected reply to ShowJob: {other:?}"),
    }
}

pub(super) async fn job_show(cli: &Cli, c: &Client, id: &str) -> CliResult {
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

pub(super) async fn job_watch(cli: &Cli, c: &Client, id: &str) -> CliResult {
    let job = fetch_job(c, id).await?;
    if job.state.is_terminal() {
        return job_show(cli, c, id).await;
    }
    follow_job(cli, c, id, 0).await
}

pub(super) async fn wait_rebooted(
    cli: &Cli,
    c: &Client,
    node: &str,
    timeout: u32,
    before: Option<String>,
) -> CliResult {
    let first = node_summary(c, node).await?;
    let before = before.unwrap_or(first.boot_id.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout.into());
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
            return Err(exit::timed_out(format!(
                "{node} did not come back with a new boot id within {timeout} s ({})",
                if was_down {
                    "it went down"
                } else {
                    "it never went down"
                }
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(super) async fn node_summary(c: &Client, node: &str) -> anyhow::Result<pb::NodeSummary> {
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

pub(super) async fn rolling(cli: &Cli, c: &Client, r: &RollingCmd) -> CliResult {
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
            hook,
            reboot_command,
            wait_for_continue,
            checks_must_pass,
            reboot_timeout,
            deadline,
            yes,
            wait,
        } => {
            if reboot_command.is_some() {
                return Err(exit::usage(
                    "--reboot-command was removed: the agents run only hooks named in their \
                     own config ([hooks] reboot = \"systemctl reboot\"); give --hook NAME \
                     (default: reboot)",
                ));
            }
            if nodes.is_empty() && !all {
                return Err(exit::usage("name the nodes to roll, or give --all"));
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
                    return Err(exit::usage(
                        "not a terminal: add --yes to start without confirmation",
                    ));
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
                hook: if *wait_for_continue {
                    String::new()
                } else {
                    hook.clone()
                },
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

pub(super) async fn rolling_show(cli: &Cli, c: &Client, id: &str) -> CliResult {
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
    print!("{}", cli.table(&["GROUP", "NODE", "PHASE"], &rows));
    if let Some(last) = job.steps.last() {
        println!("Last step: {} {}", fmt_ts(last.ts_ms), last.message);
    }
    if let Some(o) = &job.outcome {
        println!("Outcome: {o}");
    }
    Ok(())
}
