//! `bench sim`: the job engine's deterministic simulation of faults.

use crate::*;

pub fn bench_sim(a: &Args) -> Result<Report> {
    use nodemaint_coordinator::engine::{sim, sim_drain, sim_enable, sim_rolling, sim_single};
    type Run = fn(u64) -> std::result::Result<sim::Stats, sim::Failure>;
    a.known(&["seeds", "first", "seed", "job"])?;
    let job: String = a.get("job", "stop-all".to_string())?;
    let run: Run = match job.as_str() {
        "stop-all" => sim::run,
        "enable" => sim_enable::run,
        "single" => sim_single::run,
        "drain" => sim_drain::run,
        "rolling" => sim_rolling::run,
        other => bail!("unknown --job {other:?}: stop-all, enable, single, drain or rolling"),
    };
    if let Some(seed) = a.opt::<u64>("seed")? {
        let stats = run(seed).map_err(|f| anyhow!("{f}"))?;
        return Ok(Report {
            markdown: format!("{job} seed {seed}: every invariant held ({stats:?})\n"),
            json: json!({"bench": "sim", "job": job, "seed": seed, "events": stats.events,
                "faults": stats.faults, "crashes": stats.crashes, "ok": true}),
        });
    }
    let seeds: u64 = a.get("seeds", 1_000_000)?;
    let first: u64 = a.get("first", 0)?;
    let started = Instant::now();
    let stats = sim::run_many(run, first, seeds).map_err(|f| anyhow!("{f}"))?;
    let t = secs(started.elapsed());
    let per = |n: usize| n as f64 / seeds.max(1) as f64;
    let md = format!(
        "## Job engine under simulated faults (bench sim --job {job})\n\n{seeds} seeds from \
         {first}: every invariant held. {:.0} seeds/s ({t:.1} s); per seed {:.1} events, {:.1} \
         faults, {:.2} coordinator crashes, {:.2} refused (late or duplicated) events.\n",
        seeds as f64 / t,
        per(stats.events),
        per(stats.faults),
        per(stats.crashes),
        per(stats.refused)
    );
    Ok(Report {
        markdown: md,
        json: json!({"bench": "sim", "job": job, "seeds": seeds, "first": first, "time_s": t,
            "seeds_per_s": seeds as f64 / t, "events": stats.events, "faults": stats.faults,
            "crashes": stats.crashes, "refused": stats.refused, "machine": machine()}),
    })
}
