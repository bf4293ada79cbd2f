//! `bench rolling` (issue 7): rolling maintenance of a simulated fleet.

use crate::*;

pub async fn bench_rolling(a: &Args) -> Result<Report> {
    a.known(&[
        "nodes",
        "k",
        "vms-per-node",
        "vm-memory-mib",
        "bandwidth-mibs",
        "time-scale",
        "reboot-secs",
        "heartbeat-ms",
    ])?;
    let nodes: usize = a.get("nodes", 20)?;
    let k: usize = a.get("k", 2)?;
    let vpn: usize = a.get("vms-per-node", 4)?;
    let vm_mem: u64 = a.get("vm-memory-mib", 2048)?;
    let bw: u64 = a.get("bandwidth-mibs", 1024)?;
    let scale: f64 = a.get("time-scale", 0.5)?;
    let reboot_secs: f64 = a.get("reboot-secs", 6.0)?;
    let hb: u64 = a.get("heartbeat-ms", 1000)?;
    let (per_source, per_dest, global) = (2usize, 2usize, 5usize);
    let (mut stack, api) = SimStack::start(|c| {
        c.limits.per_source = per_source;
        c.limits.per_destination = per_dest;
        c.limits.global = global;
    })
    .await?;
    stack.start_fleet(&[
        "--nodes".into(),
        nodes.to_string(),
        "--vms-per-node".into(),
        vpn.to_string(),
        "--cloudspaces".into(),
        "0".into(),
        "--vm-memory-mib".into(),
        vm_mem.to_string(),
        "--bandwidth-mibs".into(),
        bw.to_string(),
        "--time-scale".into(),
        scale.to_string(),
        "--reboot-secs".into(),
        reboot_secs.to_string(),
        "--heartbeat-interval-ms".into(),
        hb.to_string(),
        "--check-invariants".into(),
    ]);
    api.wait_view(
        &format!("{nodes} agents to register"),
        Duration::from_secs(120),
        |n, _| n.len() == nodes && n.iter().all(|x| x.reachable && x.vms_total as usize == vpn),
    )
    .await?;
    let before = api.vms().await?;
    let mem_of: HashMap<String, f64> = before
        .iter()
        .map(|(_, d)| (d.name.clone(), d.memory_mib as f64))
        .collect();
    let initial: HashMap<String, Vec<String>> =
        before.iter().fold(HashMap::new(), |mut m, (n, d)| {
            m.entry(n.clone()).or_default().push(d.name.clone());
            m
        });
    let plan = api
        .json(Req::PlanRolling(pb::PlanRolling {
            nodes: vec![],
            max_unavailable: k as u32,
        }))
        .await?;
    let groups: Vec<Vec<String>> = serde_json::from_value(plan["groups"].clone())?;
    let rec = Recorder::start(
        &api.nats,
        &[api
            .s
            .events_filter(Some(COORDINATOR_NODE), Some(EventKind::Job))],
    )
    .await?;
    log(format!(
        "rolling: {nodes} nodes in {} groups of ≤ {k}; starting",
        groups.len()
    ));
    let t0 = Instant::now();
    let out = cli(
        &stack.nats.url,
        "bench",
        &[
            "rolling",
            "start",
            "--all",
            "--max-unavailable",
            &k.to_string(),
            "--hook",
            "reboot",
            "--yes",
        ],
    )
    .output()
    .await?;
    let wall = secs(t0.elapsed());
    if !out.status.success() {
        bail!("rolling start failed: {}", text(&out).trim());
    }
    log(format!("rolling: done in {wall:.1} s"));
    let id = job_id_of(&text(&out)).ok_or_else(|| anyhow!("no job id in the CLI's output"))?;
    let job = api.job(&id).await?;

    // The bound, with the formula: for each group, the slowest node's
    // drain (Σ its VMs' memory ÷ bandwidth × time_scale ÷ min(per_source,
    // #VMs)) + reboot (reboot_secs × time_scale); summed over groups.
    let t_vm = |mem: f64| mem / bw as f64 * scale;
    let drain_time = |vms: &[String]| {
        if vms.is_empty() {
            return 0.0;
        }
        let s: f64 = vms
            .iter()
            .map(|v| t_vm(mem_of.get(v).copied().unwrap_or(vm_mem as f64)))
            .sum();
        s / per_source.min(vms.len()) as f64
    };
    let reboot = reboot_secs * scale;
    // VMs each node actually had to move (its drain child's migrate commands).
    let mut moved: HashMap<String, Vec<String>> = HashMap::new();
    for n in groups.iter().flatten() {
        if let Some(cid) = job["rolling"]["children"][n.as_str()]["drain"].as_str() {
            let child = api.job(cid).await?;
            let vms: Vec<String> = child["commands"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["action"] == "migrate" && c["ok"] == true)
                .filter_map(|c| c["vm"].as_str().map(str::to_string))
                .collect();
            moved.insert(n.clone(), vms);
        }
    }
    let bound_with = |vms_of: &dyn Fn(&str) -> Vec<String>| -> f64 {
        groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|n| drain_time(&vms_of(n)) + reboot)
                    .fold(0.0, f64::max)
            })
            .sum()
    };
    let bound_actual = bound_with(&|n| moved.get(n).cloned().unwrap_or_default());
    let bound_initial = bound_with(&|n| initial.get(n).cloned().unwrap_or_default());
    let ratio = wall / bound_actual;
    // The same with each node's migrations packed into per_source slots
    // (longest first): whole migrations, so 5 equal VMs on 2 slots take 3
    // rounds, not 2.5. Achievable in principle; not the bound.
    let slotted = |vms: &[String]| {
        let mut t: Vec<f64> = vms
            .iter()
            .map(|v| t_vm(mem_of.get(v).copied().unwrap_or(vm_mem as f64)))
            .collect();
        t.sort_by(|a, b| b.total_cmp(a));
        let mut slots = vec![0.0f64; per_source.max(1)];
        for x in t {
            let i = (0..slots.len())
                .min_by(|a, b| slots[*a].total_cmp(&slots[*b]))
                .expect("a slot");
            slots[i] += x;
        }
        slots.into_iter().fold(0.0, f64::max)
    };
    let bound_slotted: f64 = groups
        .iter()
        .map(|g| {
            g.iter()
                .map(|n| slotted(moved.get(n).map(Vec::as_slice).unwrap_or(&[])) + reboot)
                .fold(0.0, f64::max)
        })
        .sum();

    // Phase timeline from the job events ("node: phase").
    let mut phase_ts: HashMap<(String, String), i64> = HashMap::new();
    for s in rec.all(|e| e.op_id == id) {
        if let Some(Body::Job(j)) = &s.ev.body {
            if let Some((node, phase)) = j.message.split_once(": ") {
                phase_ts.insert((node.to_string(), phase.to_string()), s.ev.ts_ms);
            }
        }
    }
    let group_start: Vec<i64> = job["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["message"].as_str().unwrap_or("").starts_with("group "))
        .filter_map(|s| s["ts_ms"].as_i64())
        .collect();
    let phases = [
        "draining", "drained", "rebooted", "checked", "enabled", "done",
    ];
    let mut rows = Vec::new();
    let mut sums = [0.0f64; 7];
    for (gi, g) in groups.iter().enumerate() {
        let t = |p: &str| {
            g.iter()
                .filter_map(|n| phase_ts.get(&(n.clone(), p.to_string())).copied())
                .max()
        };
        let start = group_start.get(gi).copied().or_else(|| t("draining"));
        let mut cols = vec![
            (gi + 1).to_string(),
            g.join(" "),
            g.iter()
                .map(|n| moved.get(n).map(Vec::len).unwrap_or(0).to_string())
                .collect::<Vec<_>>()
                .join("+"),
        ];
        let ideal_drain = g
            .iter()
            .map(|n| drain_time(moved.get(n).map(Vec::as_slice).unwrap_or(&[])))
            .fold(0.0, f64::max);
        let mut prev = start;
        for (pi, p) in phases.iter().enumerate() {
            let cur = t(p);
            let d = match (prev, cur) {
                (Some(a), Some(b)) => (b - a) as f64 / 1000.0,
                _ => f64::NAN,
            };
            sums[pi] += if d.is_finite() { d } else { 0.0 };
            cols.push(format!("{d:.2}"));
            prev = cur.or(prev);
        }
        let next = group_start
            .get(gi + 1)
            .copied()
            .or_else(|| job["updated_ms"].as_i64());
        let gap = match (prev, next) {
            (Some(a), Some(b)) => (b - a) as f64 / 1000.0,
            _ => f64::NAN,
        };
        sums[6] += if gap.is_finite() { gap } else { 0.0 };
        cols.push(format!("{gap:.2}"));
        cols.push(format!("{:.2}", ideal_drain + reboot));
        rows.push(cols);
    }
    let invariant_violations = stack.sim_log().matches("INVARIANT VIOLATION").count();
    let after = api.nodes().await?;
    let all_enabled = after
        .iter()
        .all(|n| n.status == pb::NodeStatus::Enabled as i32 && n.reachable);
    let vms_after = api.vms().await?;
    let total_after: usize = vms_after.len();

    let mut md = format!(
        "### `bench rolling` (issue 7): sim-fleet of {nodes} nodes × {vpn} VMs of {vm_mem} MiB, bandwidth {bw} MiB/s, time scale {scale}, reboot {reboot_secs} s (→ {reboot:.2} s), heartbeat {hb} ms, K = {k}, limits per_source={per_source} per_destination={per_dest} global={global}\n\n"
    );
    md.push_str(&format!(
        "Lower bound = Σ over the planned groups of max over the group's nodes of (drain + reboot), drain(node) = Σ its VMs' memory ÷ bandwidth × time_scale ÷ min(per_source = {per_source}, #VMs), reboot = reboot_secs × time_scale. One VM migrates in {:.2} s.\n\n",
        t_vm(vm_mem as f64)
    ));
    md.push_str(&table(
        &["", "s"],
        &[
            vec![
                "`coordinator rolling start --all` wall time".into(),
                format!("{wall:.2}"),
            ],
            vec![
                format!(
                    "lower bound, with the VMs each node actually drained ({} groups)",
                    groups.len()
                ),
                format!("{bound_actual:.2}"),
            ],
            vec![
                "lower bound, with the initial placement".into(),
                format!("{bound_initial:.2}"),
            ],
            vec![
                format!("schedule length with whole migrations in {per_source} slots per node (actual VMs)"),
                format!("{bound_slotted:.2}"),
            ],
        ],
    ));
    md.push_str(&format!(
        "\n**ratio wall ÷ bound: {ratio:.3}** (goal ≤ 1.2: {}); ÷ initial-placement bound {:.3}; ÷ slotted schedule {:.3}. After: all nodes ENABLED and reachable: {all_enabled}; {total_after} VMs (expected {}); invariant violations reported by sim-fleet: {invariant_violations}.\n\n",
        if ratio <= 1.2 { "met" } else { "missed" },
        wall / bound_initial,
        wall / bound_slotted,
        nodes * vpn,
    ));
    md.push_str("Per group (s; each phase column = time from the previous phase's last node to this phase's last node; *draining* = group start → drains launched; *rebooted* includes waiting for the new boot id):\n\n");
    md.push_str(&table(
        &[
            "group",
            "nodes",
            "VMs moved",
            "draining",
            "drained",
            "rebooted",
            "checked",
            "enabled",
            "done",
            "→ next group",
            "bound",
        ],
        &rows,
    ));
    md.push_str(&format!(
        "\nTotals over groups (s): launch {:.2}, drain {:.2}, reboot+boot-id {:.2}, checks {:.2}, enable {:.2}, verify {:.2}, between groups {:.2}; bound's drain part {:.2}, reboot part {:.2}.\n",
        sums[0], sums[1], sums[2], sums[3], sums[4], sums[5], sums[6],
        groups.iter().map(|g| g.iter().map(|n| drain_time(moved.get(n).map(Vec::as_slice).unwrap_or(&[]))).fold(0.0, f64::max)).sum::<f64>(),
        reboot * groups.len() as f64,
    ));
    Ok(Report {
        markdown: md,
        json: json!({
            "benchmark": "rolling",
            "machine": machine(),
            "params": {"nodes": nodes, "k": k, "vms_per_node": vpn, "vm_memory_mib": vm_mem, "bandwidth_mibs": bw,
                       "time_scale": scale, "reboot_secs": reboot_secs, "heartbeat_ms": hb,
                       "limits": {"per_source": per_source, "per_destination": per_dest, "global": global}},
            "groups": groups,
            "moved": moved,
            "wall_s": wall,
            "bound_s": bound_actual,
            "bound_initial_s": bound_initial,
            "bound_slotted_s": bound_slotted,
            "ratio": ratio,
            "goal": 1.2,
            "phase_sums_s": {"launch": sums[0], "drain": sums[1], "reboot": sums[2], "checks": sums[3], "enable": sums[4], "verify": sums[5], "between_groups": sums[6]},
            "all_enabled": all_enabled,
            "vms_after": total_after,
            "invariant_violations": invariant_violations,
        }),
    })
}
