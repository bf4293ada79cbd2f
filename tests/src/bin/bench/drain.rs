//! `bench drain` (issue 6): Put in Maintenance (Move All) against the seed's loop.

use crate::*;

pub struct DrainRun {
    pub method: &'static str,
    pub wall_s: f64,
    /// CPUs busy on average during the run (all processes).
    pub cpus: f64,
    /// The same in the 2 s before it, nothing migrating (guests, agents,
    /// whatever else the machine runs).
    pub cpus_idle: f64,
    /// Per-migration libvirt stats on the destination.
    pub libvirt: Vec<JobInfo>,
    /// Sequential loop only: wall time of each virsh migrate.
    pub each_s: Vec<f64>,
    /// nodemaint only: journal analysis.
    pub analysis: Option<Value>,
}

/// CPUs busy over 2 s with nothing migrating: what the run's figure is
/// measured against.
async fn idle_cpus() -> f64 {
    let before = cpu_jiffies();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cpus_busy(before, cpu_jiffies())
}

/// Moves every VM in `vms` back to node1 with virsh (one sequential stream
/// per source node, sources in parallel) and waits until the coordinator
/// sees them all there.
pub async fn gather(lab: &Lab, api: &Api, vms: &[String]) -> Result<()> {
    let view = api.vms().await?;
    let mut by_node: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (node, d) in &view {
        if vms.contains(&d.name) && node != "node1" {
            let i: usize = node.trim_start_matches("node").parse()?;
            by_node.entry(i).or_default().push(d.name.clone());
        }
    }
    let tasks = by_node.into_iter().map(|(i, names)| async move {
        for n in names {
            checked("virsh migrate (back)", lab.migrate_cmd(&n, i, 1)).await?;
        }
        Ok::<_, anyhow::Error>(())
    });
    for r in futures::future::join_all(tasks).await {
        r?;
    }
    let want: BTreeMap<String, String> = vms.iter().map(|v| (v.clone(), "node1".into())).collect();
    api.wait_view("all VMs back on node1", Duration::from_secs(60), |n, v| {
        placed(v, &want) && n.iter().all(|x| x.reachable && x.current_job.is_empty())
    })
    .await?;
    Ok(())
}

/// Journal analysis of a drain job: per-VM migration intervals from the
/// "moving X" / "migration of X … ended" steps, concurrency, the adaptive
/// limit's changes and where time goes.
pub fn analyse_drain(job: &Value, cli_start_ms: i64, cli_end_ms: i64) -> Value {
    let created = job["created_ms"].as_i64().unwrap_or(0);
    let ended = job["updated_ms"].as_i64().unwrap_or(0);
    let mut start: BTreeMap<String, i64> = BTreeMap::new();
    let mut end: BTreeMap<String, i64> = BTreeMap::new();
    let mut changes = Vec::new();
    for st in job["steps"].as_array().into_iter().flatten() {
        let msg = st["message"].as_str().unwrap_or("");
        let ts = st["ts_ms"].as_i64().unwrap_or(0);
        let vm = st["vm"].as_str().unwrap_or("").to_string();
        if msg.starts_with("moving ") {
            start.insert(vm, ts);
        } else if msg.starts_with("migration of ") && msg.contains(" ended: ") {
            end.insert(vm, ts);
        } else if msg.starts_with("concurrency ") {
            changes.push(json!({"at_ms": ts - created, "change": msg}));
        }
    }
    // Most migrations in flight at once (interval sweep).
    let mut marks: Vec<(i64, i32)> = Vec::new();
    for (vm, s) in &start {
        if let Some(e) = end.get(vm) {
            marks.push((*s, 1));
            marks.push((*e, -1));
        }
    }
    marks.sort();
    let (mut now, mut peak) = (0, 0);
    for (_, d) in marks {
        now += d;
        peak = peak.max(now);
    }
    let durs: Vec<f64> = start
        .iter()
        .filter_map(|(vm, s)| end.get(vm).map(|e| (e - s) as f64))
        .collect();
    let first = start.values().min().copied().unwrap_or(created);
    let last = end.values().max().copied().unwrap_or(ended);
    let span = (last - first) as f64;
    json!({
        "cli_start_to_job_created_ms": created - cli_start_ms,
        "job_created_to_first_migration_ms": first - created,
        "migrations_span_ms": span,
        "last_migration_to_job_end_ms": ended - last,
        "job_end_to_cli_exit_ms": cli_end_ms - ended,
        "migrations": durs.len(),
        "migration_ms_median": median(&durs),
        "migration_ms_sum": durs.iter().sum::<f64>(),
        "mean_concurrency": if span > 0.0 { durs.iter().sum::<f64>() / span } else { 0.0 },
        "max_concurrency": peak,
        "concurrency_changes": changes,
    })
}

pub async fn drain_nodemaint(
    lab: &Lab,
    api: &Api,
    vms: &[String],
    adaptive: bool,
) -> Result<DrainRun> {
    let cpus_idle = idle_cpus().await;
    let wall0 = nodemaint_proto::now_ms();
    let cpu0 = cpu_jiffies();
    let t0 = Instant::now();
    let concurrency = if adaptive { "adaptive" } else { "fixed" };
    let out = cli(
        &lab.nats_url,
        "operator",
        &[
            "maintenance",
            "start",
            "node1",
            "--mode",
            "move",
            "--concurrency",
            concurrency,
        ],
    )
    .output()
    .await?;
    let wall = t0.elapsed();
    let cpus = cpus_busy(cpu0, cpu_jiffies());
    let wall1 = nodemaint_proto::now_ms();
    if !out.status.success() {
        bail!("maintenance start failed: {}", text(&out).trim());
    }
    let id = job_id_of(&text(&out)).ok_or_else(|| anyhow!("no job id in the CLI's output"))?;
    let job = api.job(&id).await?;
    let analysis = analyse_drain(&job, wall0, wall1);
    // Where each VM went, libvirt's stats there.
    let view = api.vms().await?;
    let mut libvirt = Vec::new();
    for (node, d) in &view {
        if vms.contains(&d.name) {
            let i: usize = node.trim_start_matches("node").parse()?;
            if i == 1 {
                bail!("{} is still on node1 after the drain", d.name);
            }
            if let Some(j) = lab.jobinfo(&d.name, i).await {
                libvirt.push(j);
            }
        }
    }
    let (en, _) = checked(
        "node enable",
        cli(&lab.nats_url, "operator", &["node", "enable", "node1"]),
    )
    .await?;
    log(format!(
        "nodemaint drain ({concurrency}): {:.2} s, {cpus:.2} CPUs busy ({cpus_idle:.2} before it), peak {} at once (node enable {:.2} s)",
        secs(wall),
        analysis["max_concurrency"],
        secs(en)
    ));
    gather(lab, api, vms).await?;
    Ok(DrainRun {
        method: if adaptive { "adaptive" } else { "nodemaint" },
        wall_s: secs(wall),
        cpus,
        cpus_idle,
        libvirt,
        each_s: Vec::new(),
        analysis: Some(analysis),
    })
}

/// The seed's way: a sequential shell loop of `virsh migrate` over node1's
/// domains, destinations round-robin over node2..node4.
pub async fn drain_seed(lab: &Lab, api: &Api, vms: &[String], nodes: usize) -> Result<DrainRun> {
    let dests: Vec<String> = (2..=nodes).map(|i| lab.addr(i)).collect();
    let script = format!(
        r#"set -e
src={src}
dests=({dests})
i=0
for d in $(virsh -c "$src" list --name); do
  D=${{dests[$((i % ${{#dests[@]}}))]}}; i=$((i + 1))
  echo "mig $d $D $EPOCHREALTIME"
  virsh -c "$src" migrate --live --p2p --persistent --undefinesource "$d" "qemu+tcp://$D/system" --migrateuri "tcp://$D" >/dev/null
done
echo "end - - $EPOCHREALTIME"
"#,
        src = lab.uri(1),
        dests = dests.join(" ")
    );
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c").arg(&script).kill_on_drop(true);
    let cpus_idle = idle_cpus().await;
    let cpu0 = cpu_jiffies();
    let (wall, stdout) = checked("the sequential virsh loop", cmd).await?;
    let cpus = cpus_busy(cpu0, cpu_jiffies());
    let mut marks: Vec<(String, String, f64)> = Vec::new();
    for l in stdout.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 4 {
            marks.push((f[1].into(), f[2].into(), f[3].parse().unwrap_or(0.0)));
        }
    }
    let each_s: Vec<f64> = marks.windows(2).map(|w| w[1].2 - w[0].2).collect();
    let mut libvirt = Vec::new();
    for (vm, addr, _) in marks.iter().filter(|m| m.0 != "-") {
        let i = (2..=nodes)
            .find(|i| &lab.addr(*i) == addr)
            .ok_or_else(|| anyhow!("unknown destination {addr}"))?;
        if let Some(j) = lab.jobinfo(vm, i).await {
            libvirt.push(j);
        }
    }
    log(format!(
        "sequential virsh loop: {:.2} s, {cpus:.2} CPUs busy ({cpus_idle:.2} before it)",
        secs(wall)
    ));
    gather(lab, api, vms).await?;
    Ok(DrainRun {
        method: "seed loop",
        wall_s: secs(wall),
        cpus,
        cpus_idle,
        libvirt,
        each_s,
        analysis: None,
    })
}

pub async fn bench_drain(a: &Args) -> Result<Report> {
    a.known(&[
        "vms",
        "rounds",
        "per-source",
        "per-destination",
        "global",
        "dirty",
    ])?;
    let nvms: usize = a.get("vms", 12)?;
    let rounds: usize = a.get("rounds", 2)?;
    let nodes = 4;
    let mut env: Vec<(&str, String)> = Vec::new();
    for (flag, var) in [
        ("per-source", "LAB_PER_SOURCE"),
        ("per-destination", "LAB_PER_DESTINATION"),
        ("global", "LAB_GLOBAL_MIGRATIONS"),
    ] {
        if let Some(v) = a.opt::<usize>(flag)? {
            env.push((var, v.to_string()));
        }
    }
    // Guests that keep writing (MiB/s[:working set MiB]): the lab's `up
    // --dirty`; every guest here is a copy of the first, so all of them.
    let dirty = a.opt::<String>("dirty")?;
    if let Some(d) = &dirty {
        env.push(("LAB_DIRTY", d.clone()));
    }
    let limit = |var: &str, default: usize| {
        env.iter()
            .find(|(k, _)| *k == var)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(default)
    };
    let (per_source, per_dest, global) = (
        limit("LAB_PER_SOURCE", 2),
        limit("LAB_PER_DESTINATION", 2),
        limit("LAB_GLOBAL_MIGRATIONS", 5),
    );
    anyhow::ensure!(nvms >= 1, "--vms must be at least 1");
    // node1 holds cs1's VFW (the lab puts it there); the rest are user VMs.
    let lab = Lab::up(nodes, 0, 1, &env)?;
    let api = Api::connect(&lab.nats_url, "operator").await?;
    let vfw = "cs1-vfw".to_string();
    let w1 = BTreeMap::from([(vfw.clone(), "node1".to_string())]);
    api.wait_view(
        "the lab's agents to register",
        Duration::from_secs(60),
        |n, v| n.len() == nodes && n.iter().all(|x| x.reachable) && placed(v, &w1),
    )
    .await?;
    // More user VMs on node1: the VFW's definition, renamed, kind user.
    let (_, xml) = checked(
        "virsh dumpxml",
        virsh(&lab.uri(1), &["dumpxml", "--inactive", &vfw]),
    )
    .await?;
    let tmp = tempfile::tempdir()?;
    let mut vms = vec![vfw.clone()];
    for j in 1..nvms {
        let name = format!("node1-vm{j}");
        let x: String = xml
            .lines()
            .filter(|l| !l.trim_start().starts_with("<uuid>"))
            .map(|l| {
                l.replace(
                    &format!("<name>{vfw}</name>"),
                    &format!("<name>{name}</name>"),
                )
                .replace("kind=\"vfw\"", "kind=\"user\"")
                .replace("kind='vfw'", "kind='user'")
            })
            .collect::<Vec<_>>()
            .join("\n");
        let f = tmp.path().join(format!("{name}.xml"));
        std::fs::write(&f, x)?;
        checked(
            "virsh define",
            virsh(&lab.uri(1), &["define", f.to_str().expect("utf-8 path")]),
        )
        .await?;
        vms.push(name);
    }
    let starts = vms[1..]
        .iter()
        .map(|n| checked("virsh start", virsh(&lab.uri(1), &["start", n])));
    for r in futures::future::join_all(starts).await {
        r?;
    }
    let want: BTreeMap<String, String> = vms.iter().map(|v| (v.clone(), "node1".into())).collect();
    api.wait_view("node1 to hold every VM", Duration::from_secs(60), |_, v| {
        placed(v, &want)
    })
    .await?;
    let mem_mib: Vec<f64> = api
        .vms()
        .await?
        .iter()
        .filter(|(_, d)| vms.contains(&d.name))
        .map(|(_, d)| d.memory_mib as f64)
        .collect();
    let sum_mem: f64 = mem_mib.iter().sum();
    log(format!(
        "node1 holds {} VMs ({} MiB); limits per_source={per_source} per_destination={per_dest} global={global}",
        vms.len(),
        sum_mem
    ));
    let mut results = Vec::new();
    // Each round runs the three methods, the order rotated round by round
    // (so none always runs first, on a cold cache, or last).
    for r in 0..rounds {
        for k in 0..3 {
            let run = match (r + k) % 3 {
                0 => drain_nodemaint(&lab, &api, &vms, false).await?,
                1 => drain_nodemaint(&lab, &api, &vms, true).await?,
                _ => drain_seed(&lab, &api, &vms, nodes).await?,
            };
            results.push(run);
        }
    }
    let virt = lab.lab_virt_type();
    drop(lab);

    let nm: Vec<&DrainRun> = results.iter().filter(|r| r.method == "nodemaint").collect();
    let ad: Vec<&DrainRun> = results.iter().filter(|r| r.method == "adaptive").collect();
    let seed: Vec<&DrainRun> = results.iter().filter(|r| r.method == "seed loop").collect();
    let nm_w: Vec<f64> = nm.iter().map(|r| r.wall_s).collect();
    let ad_w: Vec<f64> = ad.iter().map(|r| r.wall_s).collect();
    let seed_w: Vec<f64> = seed.iter().map(|r| r.wall_s).collect();
    let ratio = median(&nm_w) / median(&seed_w);
    let ratio_ad = median(&ad_w) / median(&seed_w);
    // What the migrations themselves cost: busy during the run less busy
    // just before it.
    let cpus_of =
        |rs: &[&DrainRun]| median(&rs.iter().map(|r| r.cpus - r.cpus_idle).collect::<Vec<_>>());
    let (cpu_nm, cpu_ad, cpu_seed) = (cpus_of(&nm), cpus_of(&ad), cpus_of(&seed));
    let cpu_idle = median(&results.iter().map(|r| r.cpus_idle).collect::<Vec<_>>());
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // CPU-seconds one migration costs the machine (the loop runs one at a
    // time): the drain's CPU bound is their sum over the CPUs there are.
    let cpu_s_each = cpu_seed * median(&seed_w) / vms.len() as f64;
    let bound_cpu = cpu_s_each * vms.len() as f64 / ncpu;
    // Bandwidth from the sequential loop's single migrations (no contention).
    let each: Vec<f64> = seed.iter().flat_map(|r| r.each_s.clone()).collect();
    let t_one = median(&each);
    let mem_one = median(&mem_mib);
    let bw_wall = mem_one / t_one;
    let lv_seq: Vec<f64> = seed
        .iter()
        .flat_map(|r| r.libvirt.iter().map(|j| j.bandwidth_mibs))
        .collect();
    let bw_lv = median(&lv_seq);
    let bound_wall = sum_mem / bw_wall;
    let bound_lv = sum_mem / bw_lv;
    let parallel = per_source
        .min(global)
        .min(per_dest * (nodes - 1))
        .min(vms.len()) as f64;
    let bound_par = bound_wall / parallel;
    let lv_nm: Vec<f64> = nm
        .iter()
        .flat_map(|r| r.libvirt.iter().map(|j| j.elapsed_ms))
        .collect();
    let lv_seq_ms: Vec<f64> = seed
        .iter()
        .flat_map(|r| r.libvirt.iter().map(|j| j.elapsed_ms))
        .collect();
    let lv_nm_bw: Vec<f64> = nm
        .iter()
        .flat_map(|r| r.libvirt.iter().map(|j| j.bandwidth_mibs))
        .collect();

    let mut md = format!(
        "### `bench drain` (issues 6, 17 §4): node1 of a 4-node lab holds {} {virt} guests (1 VFW + {} user VMs, {sum_mem:.0} MiB{}); limits per_source={per_source}, per_destination={per_dest}, global={global} (the adaptive ceiling); {rounds} rounds, the three methods' order rotated\n\n",
        vms.len(),
        vms.len() - 1,
        dirty
            .as_deref()
            .map(|d| format!(", each writing {d} MiB/s[:MiB]"))
            .unwrap_or_default()
    );
    let rows: Vec<Vec<String>> = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let peak = r
                .analysis
                .as_ref()
                .map(|a| a["max_concurrency"].to_string())
                .unwrap_or_else(|| "1".into());
            vec![
                (i + 1).to_string(),
                match r.method {
                    "nodemaint" => {
                        "`maintenance start node1 --mode move --concurrency fixed`".into()
                    }
                    "adaptive" => {
                        "`maintenance start node1 --mode move --concurrency adaptive`".into()
                    }
                    _ => "sequential `virsh migrate` loop (seed)".to_string(),
                },
                format!("{:.2}", r.wall_s),
                peak,
                format!("{:.2} ({:.2})", r.cpus, r.cpus_idle),
                format!(
                    "{:.0}",
                    median(&r.libvirt.iter().map(|j| j.elapsed_ms).collect::<Vec<_>>())
                ),
            ]
        })
        .collect();
    md.push_str(&table(
        &[
            "#",
            "method",
            "wall s",
            "most migrations at once",
            "CPUs busy (in the 2 s before)",
            "libvirt job ms (median per VM)",
        ],
        &rows,
    ));
    md.push_str(&format!(
        "\n**drain ÷ sequential virsh loop (medians): fixed {ratio:.3}, adaptive {ratio_ad:.3}** (issue 6's goal ≤ 0.4: fixed {}, adaptive {})\n\n",
        if ratio <= 0.4 { "met" } else { "missed" },
        if ratio_ad <= 0.4 { "met" } else { "missed" },
    ));
    md.push_str(&format!(
        "CPUs the migrations kept busy (during the run less the 2 s before it, medians; {ncpu} CPUs, {cpu_idle:.2} busy before the runs): sequential loop {cpu_seed:.2}, fixed drain {cpu_nm:.2}, adaptive drain {cpu_ad:.2}. One migration costs {cpu_s_each:.2} CPU-seconds (loop CPUs × loop wall ÷ VMs), so the CPU bound of the drain is {bound_cpu:.2} s ({} VMs × {cpu_s_each:.2} s ÷ {ncpu} CPUs); the adaptive drain took {:.2}× that bound.\n\n",
        vms.len(),
        median(&ad_w) / bound_cpu,
    ));
    for (i, r) in ad.iter().enumerate() {
        if let Some(an) = &r.analysis {
            let changes: Vec<String> = an["concurrency_changes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    format!(
                        "at {} ms: {}",
                        c["at_ms"],
                        c["change"].as_str().unwrap_or("")
                    )
                })
                .collect();
            md.push_str(&format!(
                "adaptive drain {}: peak {} at once; {}\n\n",
                i + 1,
                an["max_concurrency"],
                if changes.is_empty() {
                    "no change of the limit".to_string()
                } else {
                    changes.join("; ")
                }
            ));
        }
    }
    md.push_str(&table(
        &["lower bound", "value s", "nodemaint drain ÷ bound"],
        &[
            vec![
                format!("Σ memory ÷ single-stream libvirt bandwidth ({bw_lv:.0} MiB/s, domjobinfo of the loop's migrations)"),
                format!("{bound_lv:.2}"),
                format!("{:.2}", median(&nm_w) / bound_lv),
            ],
            vec![
                format!("Σ memory ÷ wall bandwidth of one raw virsh migration ({mem_one:.0} MiB in {t_one:.3} s = {bw_wall:.0} MiB/s)"),
                format!("{bound_wall:.2}"),
                format!("{:.2}", median(&nm_w) / bound_wall),
            ],
            vec![
                format!("the same ÷ effective parallelism {parallel} (per-source limit)"),
                format!("{bound_par:.2}"),
                format!("{:.2}", median(&nm_w) / bound_par),
            ],
        ],
    ));
    md.push_str(&format!(
        "\nlibvirt's migration job per VM (domjobinfo on the destination, medians): sequential loop {:.0} ms at {:.0} MiB/s; nodemaint drain {:.0} ms at {:.0} MiB/s (concurrent migrations share 2 CPUs).\n",
        median(&lv_seq_ms), bw_lv, median(&lv_nm), median(&lv_nm_bw)
    ));
    for (i, r) in nm.iter().enumerate() {
        if let Some(an) = &r.analysis {
            md.push_str(&format!(
                "\nfixed drain {} journal: CLI start → job created {} ms; job created → first migration {} ms; migrations span {:.0} ms ({} migrations, median {:.0} ms each, mean concurrency {:.2}); last migration → job end {} ms; job end → CLI exit {} ms.\n",
                i + 1,
                an["cli_start_to_job_created_ms"],
                an["job_created_to_first_migration_ms"],
                an["migrations_span_ms"].as_f64().unwrap_or(0.0),
                an["migrations"],
                an["migration_ms_median"].as_f64().unwrap_or(0.0),
                an["mean_concurrency"].as_f64().unwrap_or(0.0),
                an["last_migration_to_job_end_ms"],
                an["job_end_to_cli_exit_ms"],
            ));
        }
    }
    Ok(Report {
        markdown: md,
        json: json!({
            "benchmark": "drain",
            "machine": machine(),
            "virt_type": virt,
            "vms": vms.len(),
            "memory_mib_total": sum_mem,
            "limits": {"per_source": per_source, "per_destination": per_dest, "global": global},
            "dirty": dirty,
            "runs": results.iter().map(|r| json!({
                "method": r.method, "wall_s": r.wall_s, "cpus": r.cpus, "cpus_idle": r.cpus_idle, "each_s": r.each_s,
                "libvirt_ms": r.libvirt.iter().map(|j| j.elapsed_ms).collect::<Vec<_>>(),
                "libvirt_mibs": r.libvirt.iter().map(|j| j.bandwidth_mibs).collect::<Vec<_>>(),
                "libvirt_data_mib": r.libvirt.iter().map(|j| j.data_mib).collect::<Vec<_>>(),
                "libvirt_downtime_ms": r.libvirt.iter().map(|j| j.downtime_ms).collect::<Vec<_>>(),
                "analysis": r.analysis,
            })).collect::<Vec<_>>(),
            "nodemaint_median_s": median(&nm_w),
            "adaptive_median_s": median(&ad_w),
            "seed_median_s": median(&seed_w),
            "ratio": ratio,
            "ratio_adaptive": ratio_ad,
            "cpus_busy": {"seed": cpu_seed, "fixed": cpu_nm, "adaptive": cpu_ad, "idle": cpu_idle, "machine": ncpu},
            "cpu_s_per_migration": cpu_s_each,
            "bound_cpu_s": bound_cpu,
            "goal": 0.4,
            "bandwidth": {"libvirt_single_stream_mibs": bw_lv, "wall_single_migration_mibs": bw_wall, "single_migration_s": t_one},
            "bounds_s": {"libvirt_bandwidth": bound_lv, "wall_bandwidth": bound_wall, "wall_bandwidth_parallel": bound_par, "parallelism": parallel},
        }),
    })
}
