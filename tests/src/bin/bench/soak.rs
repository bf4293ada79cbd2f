//! `bench soak`: drain/enable cycles under random faults on a 3-node NATS cluster.

use crate::*;

pub async fn bench_soak(a: &Args) -> Result<Report> {
    a.known(&["minutes", "seed", "nodes", "vms-per-node"])?;
    let cfg = nodemaint_tests::soak::Config {
        minutes: a.get("minutes", 10.0)?,
        seed: a.get("seed", 1)?,
        nodes: a.get("nodes", 4)?,
        vms_per_node: a.get("vms-per-node", 2)?,
        index: 9,
    };
    if cfg.nodes < 3 {
        bail!("--nodes must be at least 3 (drains need two destinations)");
    }
    let r = tokio::task::spawn_blocking(move || nodemaint_tests::soak::run(&cfg))
        .await?
        .map_err(|e| anyhow!(e))?;
    let durations = &r.drain_seconds;
    let mut md = format!(
        "## Soak: drain/enable cycles with random faults\n\n{} cycles in {:.1} min over {} VMs; drains: {} succeeded, {} failed (each with an exact report); **VMs lost: {}**; **invariant violations: {}**; {} agent commands executed, none twice.\n\n",
        r.cycles,
        r.minutes,
        r.vms,
        r.drains_succeeded,
        r.drains_failed,
        r.vms_lost,
        r.violations.len(),
        r.commands_executed,
    );
    let rows: Vec<Vec<String>> = r
        .faults
        .iter()
        .map(|(f, n)| vec![f.clone(), n.to_string()])
        .collect();
    md.push_str(&table(&["fault", "injected"], &rows));
    if !durations.is_empty() {
        md.push_str(&format!(
            "\nDrain duration (s): median {:.1}, p90 {:.1}, max {:.1}.\n",
            median(durations),
            pct(durations, 90.0),
            max(durations)
        ));
    }
    for v in &r.violations {
        md.push_str(&format!("\n- VIOLATION: {v}"));
    }
    Ok(Report {
        markdown: md,
        json: r.json(),
    })
}
