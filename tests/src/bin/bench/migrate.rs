//! `bench migrate` (issue 4): one VM, raw `virsh migrate` against `coordinator vm move`.

use crate::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Method {
    Virsh,
    Nodemaint,
}

#[derive(Default, Clone, Debug)]
pub struct MoveSample {
    pub wall_s: f64,
    /// libvirt's incoming job on the destination (domjobinfo --completed).
    pub libvirt_ms: Option<f64>,
    pub libvirt_bw: Option<f64>,
    /// nodemaint only: CLI start -> job created (coordinator clock).
    pub to_job_ms: Option<f64>,
    /// nodemaint only: CLI start -> the agent's result event arrives here.
    pub to_result_ms: Option<f64>,
    /// nodemaint only: the agent's own duration of the command.
    pub agent_ms: Option<f64>,
    /// nodemaint only: job created -> agent result published (same clock).
    pub job_to_result_ms: Option<f64>,
    /// nodemaint only: result event -> CLI exit.
    pub result_to_exit_ms: Option<f64>,
    /// Time after the CLI/virsh exit until the coordinator shows the VM on the destination.
    pub view_lag_ms: f64,
}

pub async fn move_once(
    lab: &Lab,
    api: &Api,
    rec: &Recorder,
    method: Method,
    vm: &str,
    from: usize,
    to: usize,
) -> Result<MoveSample> {
    let mut s = MoveSample::default();
    match method {
        Method::Virsh => {
            let (d, _) = checked("virsh migrate", lab.migrate_cmd(vm, from, to)).await?;
            s.wall_s = secs(d);
        }
        Method::Nodemaint => {
            let wall0 = nodemaint_proto::now_ms();
            let t0 = Instant::now();
            let out = cli(
                &lab.nats_url,
                "operator",
                &["vm", "move", vm, "--to", &format!("node{to}")],
            )
            .output()
            .await?;
            let d = t0.elapsed();
            let t_exit = Instant::now();
            if !out.status.success() {
                bail!("coordinator vm move failed: {}", text(&out).trim());
            }
            s.wall_s = secs(d);
            if let Some(id) = job_id_of(&text(&out)) {
                if let Some(seen) = rec.find(|e| is_result(e, &id)) {
                    s.to_result_ms = Some(ms(seen.at.saturating_duration_since(t0)));
                    s.result_to_exit_ms = Some(ms(t_exit.saturating_duration_since(seen.at)));
                    if let Some(Body::Result(r)) = &seen.ev.body {
                        s.agent_ms = Some(r.duration_ms as f64);
                    }
                    if let Ok(job) = api.job(&id).await {
                        if let Some(c) = job["created_ms"].as_i64() {
                            s.to_job_ms = Some((c - wall0) as f64);
                            s.job_to_result_ms = Some((seen.ev.ts_ms - c) as f64);
                        }
                    }
                }
            }
        }
    }
    if let Some(j) = lab.jobinfo(vm, to).await {
        s.libvirt_ms = Some(j.elapsed_ms);
        s.libvirt_bw = Some(j.bandwidth_mibs);
    }
    // libvirt's own view: running on the destination, gone from the source.
    let dst = lab.domstate(vm, to).await;
    let src = lab.domstate(vm, from).await;
    if dst.as_deref() != Some("running") || src.is_some() {
        bail!("after the move {vm} is {dst:?} on node{to} and {src:?} on node{from}");
    }
    let want = BTreeMap::from([(vm.to_string(), format!("node{to}"))]);
    let lag = api
        .wait_view(
            "the coordinator to see the move",
            Duration::from_secs(30),
            |_, v| placed(v, &want),
        )
        .await?;
    s.view_lag_ms = ms(lag);
    Ok(s)
}

pub fn opt_col(v: &[MoveSample], f: impl Fn(&MoveSample) -> Option<f64>) -> Vec<f64> {
    v.iter().filter_map(f).collect()
}

pub async fn bench_migrate(a: &Args) -> Result<Report> {
    a.known(&["runs"])?;
    let runs: usize = a.get("runs", 10)?;
    let lab = Lab::up(2, 1, 1, &[])?;
    let api = Api::connect(&lab.nats_url, "operator").await?;
    let vm = "node1-vm1";
    let want = BTreeMap::from([(vm.to_string(), "node1".to_string())]);
    api.wait_view(
        "the lab's agents to register",
        Duration::from_secs(60),
        |n, v| n.len() == 2 && n.iter().all(|x| x.reachable) && placed(v, &want),
    )
    .await?;
    let rec = Recorder::start(
        &api.nats,
        &[api.s.events_filter(None, Some(EventKind::Result))],
    )
    .await?;
    // One warm-up move with each method (not counted), then ABBA order.
    let mut plan = vec![(Method::Virsh, false), (Method::Nodemaint, false)];
    for r in 0..runs {
        if r % 2 == 0 {
            plan.extend([(Method::Virsh, true), (Method::Nodemaint, true)]);
        } else {
            plan.extend([(Method::Nodemaint, true), (Method::Virsh, true)]);
        }
    }
    let mut at = 1;
    let mut virsh_s = Vec::new();
    let mut nm_s = Vec::new();
    for (i, (m, counted)) in plan.into_iter().enumerate() {
        let to = 3 - at;
        let s = move_once(&lab, &api, &rec, m, vm, at, to).await?;
        log(format!(
            "move {i:>2} {m:?} node{at}->node{to}: {:.3} s{}",
            s.wall_s,
            if counted { "" } else { " (warm-up)" }
        ));
        at = to;
        if counted {
            match m {
                Method::Virsh => virsh_s.push(s),
                Method::Nodemaint => nm_s.push(s),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let virt = lab.lab_virt_type();
    drop(lab);

    let wall = |v: &[MoveSample]| v.iter().map(|s| s.wall_s).collect::<Vec<_>>();
    let (vw, nw) = (wall(&virsh_s), wall(&nm_s));
    let ratio_med = median(&nw) / median(&vw);
    let ratio_p90 = pct(&nw, 90.0) / pct(&vw, 90.0);
    let row = |name: &str, v: &[MoveSample]| {
        let w = wall(v);
        let lv = opt_col(v, |s| s.libvirt_ms);
        let bw = opt_col(v, |s| s.libvirt_bw);
        vec![
            name.to_string(),
            w.len().to_string(),
            format!("{:.3}", median(&w)),
            format!("{:.3}", pct(&w, 90.0)),
            format!("{:.3}", min(&w)),
            format!("{:.3}", max(&w)),
            format!("{:.0}", median(&lv)),
            format!("{:.0}", median(&bw)),
        ]
    };
    let mut md = format!(
        "### `bench migrate` (issue 4): one {virt} guest of 64 MiB moved node1 <-> node2, {runs} runs per method, interleaved ABBA\n\n"
    );
    md.push_str(&table(
        &[
            "method",
            "n",
            "median s",
            "p90 s",
            "min s",
            "max s",
            "libvirt job ms (median)",
            "libvirt MiB/s (median)",
        ],
        &[
            row("raw `virsh migrate`", &virsh_s),
            row("`coordinator vm move`", &nm_s),
        ],
    ));
    md.push_str(&format!(
        "\n**ratio nodemaint/virsh: median {ratio_med:.3}, p90 {ratio_p90:.3}** (goal ≤ 1.15: {})\n\n",
        if ratio_med <= 1.15 { "met" } else { "missed" }
    ));
    let b = |f: fn(&MoveSample) -> Option<f64>| median(&opt_col(&nm_s, f));
    let breakdown = [
        (
            "CLI start → job created (CLI start-up, connect, API accept)",
            b(|s| s.to_job_ms),
        ),
        (
            "job created → agent result published (coordinator + agent)",
            b(|s| s.job_to_result_ms),
        ),
        (
            "  of which the agent's own command duration",
            b(|s| s.agent_ms),
        ),
        (
            "CLI start → agent result event received here",
            b(|s| s.to_result_ms),
        ),
        (
            "agent result → CLI exit (job end, CLI's event consumer)",
            b(|s| s.result_to_exit_ms),
        ),
    ];
    md.push_str("`coordinator vm move` breakdown (medians, ms):\n\n");
    md.push_str(&table(
        &["segment", "ms"],
        &breakdown
            .iter()
            .map(|(k, v)| vec![k.to_string(), format!("{v:.0}")])
            .collect::<Vec<_>>(),
    ));
    md.push_str(&format!(
        "\nAfter the command exits, the coordinator's view shows the VM on the destination after a median {:.0} ms (virsh) / {:.0} ms (vm move).\n",
        median(&virsh_s.iter().map(|s| s.view_lag_ms).collect::<Vec<_>>()),
        median(&nm_s.iter().map(|s| s.view_lag_ms).collect::<Vec<_>>()),
    ));
    let sj = |v: &[MoveSample]| {
        v.iter()
            .map(|s| {
                json!({
                    "wall_s": s.wall_s, "libvirt_ms": s.libvirt_ms, "libvirt_mibs": s.libvirt_bw,
                    "to_job_ms": s.to_job_ms, "to_result_ms": s.to_result_ms, "agent_ms": s.agent_ms,
                    "job_to_result_ms": s.job_to_result_ms, "result_to_exit_ms": s.result_to_exit_ms,
                    "view_lag_ms": s.view_lag_ms,
                })
            })
            .collect::<Vec<_>>()
    };
    Ok(Report {
        markdown: md,
        json: json!({
            "benchmark": "migrate",
            "machine": machine(),
            "virt_type": virt,
            "runs": runs,
            "virsh": { "median_s": median(&vw), "p90_s": pct(&vw, 90.0), "samples": sj(&virsh_s) },
            "nodemaint": { "median_s": median(&nw), "p90_s": pct(&nw, 90.0), "samples": sj(&nm_s) },
            "ratio_median": ratio_med,
            "ratio_p90": ratio_p90,
            "goal": 1.15,
        }),
    })
}
