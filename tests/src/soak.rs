//! The soak (`bench soak --minutes N`, not in CI): on one lab (3-node NATS
//! cluster, two coordinators), drain and enable the nodes in turn for N
//! minutes, injecting a random fault from the list into each drain while a
//! migration is in flight, and checking the invariants after every step
//! against each libvirtd (`faults`). Reports cycles, faults by type, VMs
//! lost and every invariant violation.

use crate::faults::{self, wait_until};
use crate::lab::Lab;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The faults the soak draws from.
pub const FAULTS: [&str; 6] = [
    "none",
    "source-agent-kill",
    "destination-agent-kill",
    "leader-coordinator-kill",
    "nats-server-kill",
    "node-network-cut",
];

pub struct Config {
    pub minutes: f64,
    pub seed: u64,
    pub nodes: usize,
    pub vms_per_node: usize,
    /// Lab index (subnet 10.79.INDEX, NATS port 4400+INDEX).
    pub index: u8,
}

#[derive(Default)]
pub struct Report {
    pub cycles: usize,
    pub faults: BTreeMap<String, usize>,
    pub drains_succeeded: usize,
    pub drains_failed: usize,
    pub vms_lost: usize,
    pub violations: Vec<String>,
    pub commands_executed: usize,
    pub drain_seconds: Vec<f64>,
    pub minutes: f64,
    pub vms: usize,
}

impl Report {
    pub fn json(&self) -> Value {
        json!({
            "minutes": self.minutes,
            "cycles": self.cycles,
            "vms": self.vms,
            "faults": self.faults,
            "drains_succeeded": self.drains_succeeded,
            "drains_failed": self.drains_failed,
            "vms_lost": self.vms_lost,
            "invariant_violations": self.violations.len(),
            "violations": self.violations,
            "commands_executed": self.commands_executed,
            "drain_seconds": self.drain_seconds,
        })
    }
}

/// A small deterministic generator (xorshift), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Brings every process back and every link up (after a fault, or after a
/// cycle that went wrong half-way).
fn heal(lab: &Lab) {
    for node in lab.node_names() {
        let _ = lab.lab(&["net", "restore", &node]);
        let _ = lab.lab(&["agent", "start", &node]);
    }
    for i in 1..=3 {
        let _ = lab.lab(&["nats", "start", &i.to_string()]);
    }
    let _ = lab.lab(&["coordinator", "start"]);
}

fn consistent(lab: &Lab) -> bool {
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lab.wait_consistent()));
    ok.is_ok()
}

pub fn run(cfg: &Config) -> Result<Report, String> {
    let lab = Lab::up(
        "soak",
        cfg.index,
        cfg.nodes,
        cfg.vms_per_node,
        2,
        &[("LAB_NATS_CLUSTER", "3"), ("LAB_COORDINATORS", "2")],
    )
    .ok_or("the lab cannot run here (see the SKIPPED line)")?;
    let all = lab.vm_names();
    let mut rep = Report {
        vms: all.len(),
        ..Default::default()
    };
    let mut rng = Rng(cfg.seed.max(1));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(cfg.minutes * 60.0);
    let nodes = lab.node_names();
    while Instant::now() < deadline {
        let node = nodes[rep.cycles % nodes.len()].clone();
        let fault = FAULTS[rng.below(FAULTS.len())];
        let cycle = rep.cycles + 1;
        let mut injected = fault;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            one_cycle(&lab, &all, &node, fault, &mut injected, &mut rep)
        }));
        let err = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(p) => Some(
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into()),
            ),
        };
        if let Some(e) = err {
            eprintln!("soak cycle {cycle} ({fault} on {node}): VIOLATION {e}");
            rep.violations
                .push(format!("cycle {cycle} ({fault} on {node}): {e}"));
            heal(&lab);
            // The drain may still run: enable once it has ended.
            wait_until(Duration::from_secs(240), || {
                faults::enable(&lab, &node).is_ok()
            });
        }
        // VMs lost: counted at rest, after every cycle.
        match faults::placements(&lab) {
            Ok(p) => {
                let lost = all.iter().filter(|vm| !p.contains_key(*vm)).count();
                if lost > 0 {
                    rep.violations
                        .push(format!("cycle {cycle}: {lost} VMs lost: {p:?}"));
                }
                rep.vms_lost = rep.vms_lost.max(lost);
            }
            Err(e) => rep.violations.push(format!("cycle {cycle}: {e}")),
        }
        *rep.faults.entry(injected.to_string()).or_default() += 1;
        rep.cycles += 1;
        eprintln!(
            "soak: cycle {} done ({fault} on {node}), {:.1} min, {} violations",
            rep.cycles,
            start.elapsed().as_secs_f64() / 60.0,
            rep.violations.len()
        );
    }
    rep.commands_executed = faults::check_no_double_execution(&lab).unwrap_or_else(|e| {
        rep.violations.push(e);
        0
    });
    rep.minutes = start.elapsed().as_secs_f64() / 60.0;
    Ok(rep)
}

/// Drain `node` with `fault` injected while a migration is in flight, heal,
/// check everything, enable.
fn one_cycle(
    lab: &Lab,
    all: &[String],
    node: &str,
    fault: &'static str,
    injected: &mut &'static str,
    rep: &mut Report,
) -> Result<(), String> {
    let held: Vec<String> = faults::domains(lab, node)?.into_keys().collect();
    faults::throttle(lab, node, 16);
    let began = Instant::now();
    let id = faults::start_drain(lab, node)?;
    let mut moving = None;
    wait_until(Duration::from_secs(30), || {
        moving = faults::incoming(lab)
            .into_iter()
            .find(|(vm, _)| held.contains(vm));
        moving.is_some()
    });
    let dest = moving.map(|(_, d)| d);
    match (fault, dest.as_deref()) {
        ("none", _) => {}
        ("source-agent-kill", _) => {
            ok(lab, &["agent", "kill", node])?;
        }
        ("destination-agent-kill", Some(d)) => {
            ok(lab, &["agent", "kill", d])?;
        }
        ("leader-coordinator-kill", _) => {
            ok(lab, &["coordinator", "kill", "--leader"])?;
        }
        ("nats-server-kill", _) => {
            let i = (rep.cycles % 3 + 1).to_string();
            ok(lab, &["nats", "kill", &i])?;
        }
        ("node-network-cut", _) => {
            ok(lab, &["net", "cut", node])?;
        }
        // Nothing in flight to hit (the drain was quick): no fault.
        _ => *injected = "none",
    }
    // While the fault lasts: none lost, none running twice.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        faults::check_vms(lab, all, false)?;
        std::thread::sleep(Duration::from_millis(300));
    }
    heal(lab);
    let job = faults::wait_job_end(lab, &id, Duration::from_secs(240))?;
    rep.drain_seconds.push(began.elapsed().as_secs_f64());
    if !consistent(lab) {
        return Err("the coordinator's inventory never matched libvirt".into());
    }
    let placed = faults::check_vms(lab, all, true)?;
    faults::check_drain_report(&job, node, &held, &placed)?;
    faults::check_no_double_execution(lab)?;
    if job["state"] == "SUCCEEDED" {
        rep.drains_succeeded += 1;
    } else {
        rep.drains_failed += 1;
        eprintln!(
            "soak: drain of {node} ended {}: {}",
            job["state"], job["outcome"]
        );
    }
    let enabled = wait_until(Duration::from_secs(30), || {
        faults::enable(lab, node).is_ok()
    });
    if !enabled {
        return Err(format!("node enable {node} kept failing"));
    }
    Ok(())
}

fn ok(lab: &Lab, args: &[&str]) -> Result<(), String> {
    let out = lab.lab(args);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "deploy/lab {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
