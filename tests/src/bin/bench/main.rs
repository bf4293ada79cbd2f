//! `bench`: nodemaint's benchmarks (issues 4, 6 and 7).
//!
//! These are measurements, not tests: every figure is compared with a
//! baseline measured in the same run and reported as a ratio; nothing
//! asserts a timing. Each subcommand starts what it needs and stops all of
//! it again (processes killed by pid on drop, the lab taken down by a drop
//! guard, also on error, panic or Ctrl-C).
//!
//! ```text
//! bench migrate [--runs 10]
//!     2-node lab; the same VM moves node1 <-> node2 alternately with raw
//!     `virsh migrate --live --p2p --persistent --undefinesource` and with
//!     `coordinator vm move`, interleaved (ABBA); medians, p90, ratio.
//! bench drain [--vms 12] [--rounds 2] [--per-source N] [--per-destination N] [--global N] [--dirty MIBS[:WSS]]
//!     4-node lab, node1 holding VMS VMs (its cloudspace's VFW + user VMs):
//!     `coordinator maintenance start node1 --mode move` against the seed's
//!     sequential `virsh migrate` shell loop; bounds from measured bandwidth.
//! bench latency [--agents 200,1000] [--ops 200]
//!     nats-server + coordinator + sim-fleet: API request -> Accepted ->
//!     the agent's CommandResult, against a raw NATS request/reply floor.
//! bench rolling [--nodes 20] [--k 2] [--vms-per-node 4] [--vm-memory-mib 2048]
//!               [--bandwidth-mibs 1024] [--time-scale 0.5] [--reboot-secs 6]
//!               [--heartbeat-ms 1000]
//!     sim-fleet rolling maintenance against its lower bound.
//! bench soak [--minutes 10] [--seed 1] [--nodes 4] [--vms-per-node 2]
//!     lab (index 9: 10.79.9.0/24, NATS 4409..) on a 3-node NATS cluster with
//!     two coordinators: drain/enable cycles over the nodes, each drain hit by
//!     a random fault (agent, coordinator, NATS server kill, node cut off)
//!     while a migration is in flight; invariants checked against libvirt.
//! bench fuzz [--cases 100000] [--seed 1] [--decoder SUBSTRING]
//!     every decoder of wire and file input (tests/src/fuzz.rs) on CASES
//!     generated inputs each (random, structure-aware, mutated seeds):
//!     Ok / Err counts, panics (caught, reported with their input; exit 1
//!     when any), time. Deterministic for a seed; no processes.
//! bench sim [--job stop-all|enable|single|drain|rolling] [--seeds 1000000] [--first 0] [--seed N]
//!     the job engine's deterministic simulation of faults of one job kind
//!     (coordinator/src/engine/sim*.rs) over SEEDS consecutive seeds, or the
//!     one seed N with its trace: seeds/s, events and faults per seed; exit 1
//!     naming the first seed that breaks an invariant. No processes.
//! Common: --json   JSON document on stdout (the markdown then goes to stderr).
//! ```
//!
//! The lab subcommands need root, KVM (or TCG) and `deploy/lab`; they use
//! LAB_DIR=/run/nm-bench LAB_PREFIX=nmb LAB_SUBNET=10.78.0 LAB_NATS_PORT=4322
//! so they do not collide with a developer's lab. Build the binaries first:
//! `cargo build --workspace --bins` (the figures are for whatever profile
//! `target/debug` holds: debug builds), or release builds with
//! `NODEMAINT_BIN_DIR=$CARGO_TARGET_DIR/release` (the report names the build).
//!
//! One module per benchmark; `stats` holds the shared statistics and run
//! metadata, `procs`, `lab`, `api`, `recorder` and `fleet` what they share.

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use nodemaint_coordinator::config::{CoordinatorConfig, User};
use nodemaint_proto::pb::{self, api_reply::Kind as Reply, api_request::Kind as Req, event::Body};
use nodemaint_proto::subjects::{EventKind, Subjects, COORDINATOR_NODE};
use nodemaint_proto::Message as _;
use nodemaint_tests::{bin, write_coordinator_config, Nats, Proc, INSECURE};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod api;
mod drain;
mod fleet;
mod fuzz;
mod lab;
mod latency;
mod migrate;
mod procs;
mod recorder;
mod rolling;
mod sim;
mod soak;
mod stats;

use api::*;
use drain::*;
use fleet::*;
use fuzz::*;
use lab::*;
use latency::*;
use migrate::*;
use procs::*;
use recorder::*;
use rolling::*;
use sim::bench_sim;
use soak::*;
use stats::*;

const USAGE: &str = "usage: bench migrate|drain|latency|rolling|fuzz|soak|sim [options] [--json]
  migrate  [--runs 10]
  drain    [--vms 12] [--rounds 2] [--per-source N] [--per-destination N] [--global N] [--dirty MIBS[:WSS]]
  latency  [--agents 200,1000] [--ops 200]
  rolling  [--nodes 20] [--k 2] [--vms-per-node 4] [--vm-memory-mib 2048] [--bandwidth-mibs 1024]
           [--time-scale 0.5] [--reboot-secs 6] [--heartbeat-ms 1000]
  fuzz     [--cases 100000] [--seed 1] [--decoder SUBSTRING]
  soak     [--minutes 10] [--seed 1] [--nodes 4] [--vms-per-node 2]";

struct Args {
    sub: String,
    flags: HashMap<String, String>,
    json: bool,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut it = std::env::args().skip(1);
        let sub = it.next().ok_or_else(|| anyhow!("{USAGE}"))?;
        if sub == "-h" || sub == "--help" || sub == "help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let mut flags = HashMap::new();
        let mut json = false;
        while let Some(a) = it.next() {
            if a == "--json" {
                json = true;
                continue;
            }
            let Some(name) = a.strip_prefix("--") else {
                bail!("unexpected argument {a:?}\n{USAGE}");
            };
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => (
                    name.to_string(),
                    it.next().ok_or_else(|| anyhow!("--{name} needs a value"))?,
                ),
            };
            flags.insert(name, value);
        }
        Ok(Args { sub, flags, json })
    }

    fn known(&self, names: &[&str]) -> Result<()> {
        for k in self.flags.keys() {
            if !names.contains(&k.as_str()) {
                bail!("bench {}: unknown option --{k}\n{USAGE}", self.sub);
            }
        }
        Ok(())
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.flags.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| anyhow!("--{name}: cannot parse {v:?}")),
        }
    }

    fn opt<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>> {
        self.flags
            .get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| anyhow!("--{name}: cannot parse {v:?}"))
            })
            .transpose()
    }
}

/// What a subcommand hands back: a markdown section and the same as JSON.
struct Report {
    markdown: String,
    json: Value,
}

fn main() {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let res = rt.block_on(async {
        // Dropping the benchmark's future on a signal drops its guards (lab
        // down, processes killed) before we exit.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            r = run(&args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (SIGINT); cleaned up")),
            _ = term.recv() => Err(anyhow!("terminated (SIGTERM); cleaned up")),
        }
    });
    match res {
        Ok(report) => {
            if args.json {
                eprintln!("{}", report.markdown);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report.json).expect("json")
                );
            } else {
                println!("{}", report.markdown);
            }
            // A decoder that panicked is a failure, reported above.
            if report.json["panics_total"].as_u64().unwrap_or(0) > 0 {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("bench {}: error: {e:#}", args.sub);
            std::process::exit(1);
        }
    }
}

async fn run(a: &Args) -> Result<Report> {
    let load_before = loadavg();
    let t0 = Instant::now();
    let mut r = match a.sub.as_str() {
        "migrate" => bench_migrate(a).await,
        "drain" => bench_drain(a).await,
        "latency" => bench_latency(a).await,
        "rolling" => bench_rolling(a).await,
        "soak" => bench_soak(a).await,
        "fuzz" => bench_fuzz(a).await,
        "sim" => bench_sim(a),
        other => bail!("unknown benchmark {other:?}\n{USAGE}"),
    }?;
    let load_after = loadavg();
    let m = machine();
    r.markdown.push_str(&format!(
        "\n_{} · {} CPUs ({}), {} GiB · nodemaint binaries: {} at {} · load average (1/5/15 min) before {load_before}, after {load_after} · bench took {:.0} s_\n",
        m["date_utc"].as_str().unwrap_or(""),
        m["cpus"],
        m["cpu"].as_str().unwrap_or(""),
        m["memory_gib"],
        m["build"].as_str().unwrap_or(""),
        m["commit"].as_str().unwrap_or(""),
        secs(t0.elapsed()),
    ));
    r.json["loadavg_before"] = load_before.into();
    r.json["loadavg_after"] = load_after.into();
    r.json["bench_s"] = secs(t0.elapsed()).into();
    Ok(r)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn log(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}
