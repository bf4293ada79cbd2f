//! `planner-bench`: speed and quality figures for the planner.
//!
//! ```text
//! cargo run --release -p nodemaint-planner --bin planner-bench [-- --json] [--quick] [--rolling-only] [--reference-all]
//! ```
//!
//! Fleets are generated deterministically (`synth::fleet`, SplitMix64), so
//! every figure is reproducible. The drain baseline is a naive first-fit
//! drain (first node in name order with room, hard constraints only),
//! measured in the same run on the same fleets.
//!
//! Rolling plans at scale: K = 1, 5, n/10 and unlimited (n) on 1,000 and
//! 10,000 nodes (20 VMs per node), at 60 % and 85 % memory. The baseline is
//! the planner before incremental group checks (`plan_rolling_reference`),
//! in the same run where it is affordable: always on 200 nodes / 4,000 VMs,
//! on 1,000 nodes for K = 1 and 5 (and n/10 at 60 %); `--reference-all` runs
//! it everywhere on 1,000 nodes (several minutes per case at large K).

use nodemaint_planner::synth::{self, exhaustive_drain, max_dest_util, Frac, Spec};
use nodemaint_planner::*;
use serde::Serialize;
use std::time::Instant;

#[derive(Serialize, Default)]
struct Report {
    drain_10k: Vec<DrainRow>,
    rolling: Vec<RollingRow>,
    quality: QualityRow,
    peak_rss_mib: f64,
}

#[derive(Serialize)]
struct DrainRow {
    util: f64,
    nodes: usize,
    vms: usize,
    drained_vms_avg: f64,
    planner_ms_median: f64,
    planner_ms_max: f64,
    first_fit_ms_median: f64,
    runs: usize,
}

#[derive(Serialize)]
struct RollingRow {
    k: usize,
    /// "1", "5", "n/10" or "n" (unlimited).
    k_label: &'static str,
    util: f64,
    nodes: usize,
    vms: usize,
    /// Median of the runs.
    ms: f64,
    runs: usize,
    groups: usize,
    /// max(ceil(drainable / K), ceil(planned capacity / spare capacity)).
    lower_bound: usize,
    undrainable: usize,
    stats: RollingStats,
    reference_ms: Option<f64>,
    reference_groups: Option<usize>,
    goal_ms: Option<f64>,
}

#[derive(Serialize, Default)]
struct QualityRow {
    instances: usize,
    planner_mean: f64,
    planner_p95: f64,
    planner_max: f64,
    planner_within_5pct: f64,
    first_fit_mean: f64,
    first_fit_max: f64,
    planner_infeasible_but_optimum_exists: usize,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Naive baseline: each VM (largest first) to the first node in name order
/// with room, ENABLED, reachable, anti-affinity respected.
fn first_fit(fleet: &Fleet, node: &str) -> Option<Vec<Move>> {
    use std::collections::HashMap;
    let mut used: HashMap<&str, (u64, u64)> = HashMap::new();
    let mut groups: HashMap<(&str, &str), ()> = HashMap::new();
    for v in &fleet.vms {
        let e = used.entry(v.node.as_str()).or_default();
        e.0 += v.mem_mib;
        e.1 += u64::from(v.vcpus);
        if let Some(g) = &v.anti_affinity {
            groups.insert((v.node.as_str(), g.as_str()), ());
        }
    }
    let mut order: Vec<&Node> = fleet
        .nodes
        .iter()
        .filter(|n| n.name != node && n.accepts_vms())
        .collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    let mut vms: Vec<&Vm> = fleet.vms.iter().filter(|v| v.node == node).collect();
    vms.sort_by_key(|v| std::cmp::Reverse(v.mem_mib));
    let mut moves = Vec::new();
    for v in vms {
        let n = order.iter().find(|n| {
            let u = used.get(n.name.as_str()).copied().unwrap_or_default();
            u.0 + v.mem_mib <= n.mem_capacity()
                && u.1 + u64::from(v.vcpus) <= n.vcpu_capacity()
                && v.anti_affinity
                    .as_deref()
                    .is_none_or(|g| !groups.contains_key(&(n.name.as_str(), g)))
        })?;
        let e = used.entry(n.name.as_str()).or_default();
        e.0 += v.mem_mib;
        e.1 += u64::from(v.vcpus);
        if let Some(g) = &v.anti_affinity {
            groups.insert((n.name.as_str(), g.as_str()), ());
        }
        moves.push(Move {
            vm: v.name.clone(),
            from: node.into(),
            to: n.name.clone(),
            wave: 0,
            kind: v.kind,
            not_migratable: None,
        });
    }
    Some(moves)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn drain_bench(util: f64, nodes: usize, vms: usize, runs: usize) -> DrainRow {
    let fleet = synth::fleet(&Spec::new(nodes, vms, util, 42));
    let limits = Limits::default();
    let (mut t_plan, mut t_ff, mut drained) = (Vec::new(), Vec::new(), 0usize);
    for r in 0..runs {
        let node = synth::node_name((r * 7919) % nodes);
        let t = Instant::now();
        let res = plan_drain(&fleet, &node, &limits);
        t_plan.push(ms(t));
        let plan = res.expect("a 10k-node fleet has room for one node's VMs");
        drained += plan.moves.len();
        let t = Instant::now();
        let _ = first_fit(&fleet, &node);
        t_ff.push(ms(t));
    }
    let max = t_plan.iter().copied().fold(0.0, f64::max);
    DrainRow {
        util,
        nodes,
        vms: fleet.vms.len(),
        drained_vms_avg: drained as f64 / runs as f64,
        planner_ms_median: median(&mut t_plan),
        planner_ms_max: max,
        first_fit_ms_median: median(&mut t_ff),
        runs,
    }
}

/// The rolling plan of every node of a generated fleet, timed (median of
/// `runs`), and the reference planner on the same fleet when `reference`.
fn rolling_bench(
    fleet: &Fleet,
    util: f64,
    (k, k_label): (usize, &'static str),
    reference: bool,
    goal_ms: Option<f64>,
) -> RollingRow {
    let all: Vec<String> = fleet.nodes.iter().map(|n| n.name.clone()).collect();
    let runs = 3;
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let out = plan_rolling_stats(fleet, &all, k).expect("valid request");
        times.push(ms(t));
        last = Some(out);
    }
    let (plan, stats) = last.expect("ran");
    let (reference_ms, reference_groups) = if reference {
        let t = Instant::now();
        let r = plan_rolling_reference(fleet, &all, k).expect("valid request");
        (Some(ms(t)), Some(r.groups.len()))
    } else {
        (None, None)
    };
    let planned: Vec<&Node> = fleet
        .nodes
        .iter()
        .filter(|n| !plan.undrainable.iter().any(|u| u.node == n.name))
        .collect();
    let used: u64 = fleet.vms.iter().map(|v| v.mem_mib).sum();
    let cap: u64 = fleet
        .nodes
        .iter()
        .filter(|n| n.accepts_vms())
        .map(|n| n.mem_capacity())
        .sum();
    let planned_cap: u64 = planned.iter().map(|n| n.mem_capacity()).sum();
    // A group's VMs fit in the others' spare memory only if the group's
    // capacity is at most the fleet's spare capacity.
    let by_capacity = planned_cap.div_ceil(cap.saturating_sub(used).max(1)) as usize;
    RollingRow {
        k,
        k_label,
        util,
        nodes: all.len(),
        vms: fleet.vms.len(),
        ms: median(&mut times),
        runs,
        groups: plan.groups.len(),
        lower_bound: planned.len().div_ceil(k).max(by_capacity),
        undrainable: plan.undrainable.len(),
        stats,
        reference_ms,
        reference_groups,
        goal_ms,
    }
}

fn rolling_at_scale(quick: bool, reference_all: bool) -> Vec<RollingRow> {
    let mut rows = Vec::new();
    let mut sizes = vec![(200, 4000, None), (1000, 20_000, Some(1000.0))];
    if !quick {
        sizes.push((10_000, 200_000, Some(10_000.0)));
    }
    for (nodes, vms, goal) in sizes {
        for util in [0.6, 0.85] {
            let fleet = synth::fleet(&Spec::new(nodes, vms, util, 7));
            for (k, label) in [(1, "1"), (5, "5"), (nodes / 10, "n/10"), (nodes, "n")] {
                let reference = match nodes {
                    200 => true,
                    1000 => reference_all || k <= 5 || (label == "n/10" && util < 0.7),
                    _ => false,
                };
                rows.push(rolling_bench(&fleet, util, (k, label), reference, goal));
            }
        }
    }
    rows
}

fn ratio(a: Frac, b: Frac) -> f64 {
    (a.0 as f64 / a.1 as f64) / (b.0 as f64 / b.1 as f64)
}

/// Highest destination utilisation after the drain vs the exhaustive
/// optimum, on small fleets (3–8 nodes, ≤ 8 VMs on the drained node).
fn quality_bench(instances: usize) -> QualityRow {
    let limits = Limits::default();
    let (mut p, mut ff) = (Vec::new(), Vec::new());
    let mut misses = 0;
    let mut seed = 1000u64;
    while p.len() < instances {
        seed += 1;
        let mut rng = synth::SplitMix64(seed);
        let nodes = 3 + rng.below(6) as usize;
        let util = 0.4 + 0.3 * (rng.below(100) as f64 / 100.0);
        let mut spec = Spec::new(nodes, nodes * 4, util, seed);
        spec.vfw_frac = 0.0; // spreading is a soft goal the optimum ignores
        let fleet = synth::fleet(&spec);
        let node = synth::node_name(0);
        let k = fleet.vms.iter().filter(|v| v.node == node).count();
        if !(2..=8).contains(&k) {
            continue;
        }
        let Some(opt) = exhaustive_drain(&fleet, &node) else {
            continue;
        };
        match plan_drain(&fleet, &node, &limits) {
            Ok(plan) => p.push(ratio(
                max_dest_util(&fleet, &plan.moves).expect("non-empty"),
                opt,
            )),
            Err(_) => {
                misses += 1;
                continue;
            }
        }
        ff.push(first_fit(&fleet, &node).map_or(f64::NAN, |m| {
            ratio(max_dest_util(&fleet, &m).expect("non-empty"), opt)
        }));
    }
    let n = p.len() as f64;
    let within = p.iter().filter(|&&r| r <= 1.05 + 1e-12).count() as f64 / n;
    let mean = p.iter().sum::<f64>() / n;
    let max = p.iter().copied().fold(0.0, f64::max);
    let ff_ok: Vec<f64> = ff.iter().copied().filter(|r| r.is_finite()).collect();
    let mut sorted = p.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    QualityRow {
        instances: p.len(),
        planner_mean: mean,
        planner_p95: sorted[(sorted.len() * 95 / 100).min(sorted.len() - 1)],
        planner_max: max,
        planner_within_5pct: within,
        first_fit_mean: ff_ok.iter().sum::<f64>() / ff_ok.len() as f64,
        first_fit_max: ff_ok.iter().copied().fold(0.0, f64::max),
        planner_infeasible_but_optimum_exists: misses,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let quick = args.iter().any(|a| a == "--quick");
    let (big_nodes, big_vms, runs, q) = if quick {
        (1000, 20_000, 5, 100)
    } else {
        (10_000, 200_000, 15, 1000)
    };
    let rolling_only = args.iter().any(|a| a == "--rolling-only");
    let reference_all = args.iter().any(|a| a == "--reference-all");
    let mut rep = Report::default();
    if !rolling_only {
        for util in [0.6, 0.85] {
            rep.drain_10k
                .push(drain_bench(util, big_nodes, big_vms, runs));
        }
    }
    rep.rolling = rolling_at_scale(quick, reference_all);
    if !rolling_only {
        rep.quality = quality_bench(q);
    }
    rep.peak_rss_mib = peak_rss_mib();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rep).expect("serialisable")
        );
        return;
    }
    println!("| benchmark | fleet | result | goal |");
    println!("| --- | --- | --- | --- |");
    for d in &rep.drain_10k {
        println!(
            "| drain one node (median of {}, max) | {} nodes / {} VMs, {:.0}% mem | {:.2} ms (max {:.2} ms; {:.1} VMs moved; naive first-fit {:.2} ms, ×{:.2}) | < 50 ms |",
            d.runs,
            d.nodes,
            d.vms,
            d.util * 100.0,
            d.planner_ms_median,
            d.planner_ms_max,
            d.drained_vms_avg,
            d.first_fit_ms_median,
            d.planner_ms_median / d.first_fit_ms_median
        );
    }
    if !rolling_only {
        print_quality(&rep.quality);
    }
    println!(
        "| peak RSS (VmHWM), whole run | incl. the {} VM fleets | {:.0} MiB | < 500 MiB |",
        big_vms, rep.peak_rss_mib
    );
    println!("\nRolling plans (`plan_rolling` of every node; median of 3 runs; reference = the planner before incremental checks, one run):\n");
    println!("| fleet | mem | K | time | groups (lower bound) | reference time | reference groups | time ÷ reference | goal | trials: quick-rejected / incremental / rebuilt / full engine / rejected |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &rep.rolling {
        let fmt_ms = |t: f64| {
            if t >= 1000.0 {
                format!("{:.2} s", t / 1000.0)
            } else {
                format!("{t:.1} ms")
            }
        };
        let s = &r.stats;
        println!(
            "| {} nodes / {} VMs | {:.0}% | {} ({}) | {} | {} ({}){} | {} | {} | {} | {} | {} / {} / {} / {} / {} |",
            r.nodes,
            r.vms,
            r.util * 100.0,
            r.k_label,
            r.k,
            fmt_ms(r.ms),
            r.groups,
            r.lower_bound,
            if r.undrainable > 0 { format!(", {} undrainable", r.undrainable) } else { String::new() },
            r.reference_ms.map_or("not run".into(), fmt_ms),
            r.reference_groups.map_or("-".into(), |g| g.to_string()),
            r.reference_ms.map_or("-".into(), |t| format!("{:.4}", r.ms / t)),
            r.goal_ms.map_or("-".into(), |g| format!("< {}", fmt_ms(g))),
            s.quick_rejects,
            s.incremental,
            s.rebuilt,
            s.full,
            s.rejected
        );
    }
}

fn print_quality(qr: &QualityRow) {
    println!(
        "| max dest. mem. utilisation / optimum | {} small fleets (3–8 nodes, ≤ 8 VMs) | mean {:.4}, p95 {:.4}, max {:.4}; {:.1}% ≤ 1.05 (first-fit: mean {:.3}, max {:.3}); missed feasible: {} | ≤ 1.05 |",
        qr.instances,
        qr.planner_mean,
        qr.planner_p95,
        qr.planner_max,
        qr.planner_within_5pct * 100.0,
        qr.first_fit_mean,
        qr.first_fit_max,
        qr.planner_infeasible_but_optimum_exists
    );
}
