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
//! bench drain [--vms 12] [--rounds 2] [--per-source N] [--per-destination N] [--global N]
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
//! `target/debug` holds: debug builds).

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

// ------------------------------------------------------------------ args

const USAGE: &str = "usage: bench migrate|drain|latency|rolling|fuzz|soak|sim [options] [--json]
  migrate  [--runs 10]
  drain    [--vms 12] [--rounds 2] [--per-source N] [--per-destination N] [--global N]
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

// ------------------------------------------------------------------ stats

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

fn median(v: &[f64]) -> f64 {
    let s = sorted(v);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile.
fn pct(v: &[f64], p: f64) -> f64 {
    let s = sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n", headers.join(" | "));
    s.push_str(&format!(
        "|{}\n",
        headers.iter().map(|_| "---|").collect::<Vec<_>>().join("")
    ));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

/// Tiny xorshift PRNG (no extra dependency); seeded from the clock.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(42);
        Rng(seed | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "build": "debug (target/debug, unoptimized)",
        "commit": commit(),
        "date_utc": utc_now(),
    })
}

/// HEAD of the repository, `+dirty` with uncommitted changes.
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(repo_dir())
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    format!("{head}{}", if dirty { "+dirty" } else { "" })
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

// ------------------------------------------------------------------ processes

fn bin_dir() -> PathBuf {
    bin("coordinator")
        .parent()
        .expect("target dir")
        .to_path_buf()
}

fn repo_dir() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    p.canonicalize().unwrap_or(p)
}

/// The `coordinator` CLI against `url` as `user`.
fn cli(url: &str, user: &str, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin("coordinator"));
    c.args(args)
        .env("NATS_URL", url)
        .env("NODEMAINT_USER", user)
        .env_remove("NODEMAINT_PREFIX")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

fn virsh(uri: &str, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("virsh");
    c.arg("-c")
        .arg(uri)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Runs a command to its end; its wall time and output.
async fn timed(mut cmd: tokio::process::Command) -> Result<(Duration, std::process::Output)> {
    let t0 = Instant::now();
    let out = cmd.output().await.context("cannot run command")?;
    Ok((t0.elapsed(), out))
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn checked(what: &str, cmd: tokio::process::Command) -> Result<(Duration, String)> {
    let (d, out) = timed(cmd).await?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, text(&out).trim());
    }
    Ok((d, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The job id in the CLI's "… accepted as job ID" line.
fn job_id_of(output: &str) -> Option<String> {
    let i = output.find("accepted as job ")?;
    output[i + "accepted as job ".len()..]
        .split_whitespace()
        .next()
        .map(str::to_string)
}

// ------------------------------------------------------------------ the lab

const LAB_DIR: &str = "/run/nm-bench";
const LAB_PREFIX: &str = "nmb";
const LAB_SUBNET: &str = "10.78.0";
const LAB_NATS_PORT: u16 = 4322;

/// A lab brought up by `deploy/lab up` and taken down (same environment)
/// when dropped, whatever happened in between.
struct Lab {
    env: Vec<(String, String)>,
    nats_url: String,
}

impl Lab {
    fn command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(repo_dir().join("deploy/lab"));
        c.env("LAB_DIR", LAB_DIR)
            .env("LAB_PREFIX", LAB_PREFIX)
            .env("LAB_SUBNET", LAB_SUBNET)
            .env("LAB_NATS_PORT", LAB_NATS_PORT.to_string())
            .env("NODEMAINT_BIN_DIR", bin_dir())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    fn up(
        nodes: usize,
        vms_per_node: usize,
        cloudspaces: usize,
        env: &[(&str, String)],
    ) -> Result<Lab> {
        let lab = Lab {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            nats_url: format!("nats://{LAB_SUBNET}.1:{LAB_NATS_PORT}"),
        };
        if Path::new(LAB_DIR).join("lab.env").exists() {
            log(format!(
                "a lab exists in {LAB_DIR} (left over?); taking it down first"
            ));
            let out = lab.command().arg("down").output()?;
            eprint!("{}", text(&out));
        }
        log(format!(
            "lab up --nodes {nodes} --vms-per-node {vms_per_node} --cloudspaces {cloudspaces} {}",
            env.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        // From here on `lab` is the guard: a half-failed up is taken down too.
        let out = lab
            .command()
            .args([
                "up",
                "--nodes",
                &nodes.to_string(),
                "--vms-per-node",
                &vms_per_node.to_string(),
                "--cloudspaces",
                &cloudspaces.to_string(),
            ])
            .output()
            .context("cannot run deploy/lab")?;
        eprint!("{}", text(&out));
        if !out.status.success() {
            bail!("deploy/lab up failed ({})", out.status);
        }
        Ok(lab)
    }

    fn addr(&self, i: usize) -> String {
        format!("{LAB_SUBNET}.{}", 10 + i)
    }

    fn uri(&self, i: usize) -> String {
        format!("qemu+tcp://{}/system", self.addr(i))
    }

    fn lab_virt_type(&self) -> String {
        std::fs::read_to_string(Path::new(LAB_DIR).join("lab.env"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VIRT_TYPE=").map(str::to_string))
            })
            .unwrap_or_else(|| "?".into())
    }

    /// Raw virsh live migration with the seed's flags.
    fn migrate_cmd(&self, vm: &str, from: usize, to: usize) -> tokio::process::Command {
        virsh(
            &self.uri(from),
            &[
                "migrate",
                "--live",
                "--p2p",
                "--persistent",
                "--undefinesource",
                vm,
                &self.uri(to),
                "--migrateuri",
                &format!("tcp://{}", self.addr(to)),
            ],
        )
    }

    /// libvirt's own record of the last completed job of `vm` on node `i`.
    async fn jobinfo(&self, vm: &str, i: usize) -> Option<JobInfo> {
        let out = virsh(&self.uri(i), &["domjobinfo", "--completed", vm])
            .output()
            .await
            .ok()?;
        out.status
            .success()
            .then(|| JobInfo::parse(&String::from_utf8_lossy(&out.stdout)))
            .flatten()
    }

    /// Whether libvirt on node `i` has `vm` running / defined at all.
    async fn domstate(&self, vm: &str, i: usize) -> Option<String> {
        let out = virsh(&self.uri(i), &["domstate", vm]).output().await.ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        log("deploy/lab down");
        match self.command().arg("down").output() {
            Ok(out) if out.status.success() => eprint!("{}", text(&out)),
            Ok(out) => eprintln!(
                "bench: WARNING: lab down failed ({}): {}\n  clean up with: LAB_DIR={LAB_DIR} deploy/lab down",
                out.status,
                text(&out)
            ),
            Err(e) => eprintln!(
                "bench: WARNING: cannot run lab down: {e}; clean up with: LAB_DIR={LAB_DIR} deploy/lab down"
            ),
        }
    }
}

/// `virsh domjobinfo --completed` figures.
#[derive(Clone, Debug, Default)]
struct JobInfo {
    elapsed_ms: f64,
    data_mib: f64,
    bandwidth_mibs: f64,
    downtime_ms: f64,
}

impl JobInfo {
    fn parse(s: &str) -> Option<JobInfo> {
        let mut kv = HashMap::new();
        for l in s.lines() {
            if let Some((k, v)) = l.split_once(':') {
                kv.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        let num = |k: &str| -> Option<f64> {
            kv.get(k)?
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
        };
        let mib = |k: &str| -> Option<f64> {
            let v = kv.get(k)?;
            let mut it = v.split_whitespace();
            let n: f64 = it.next()?.parse().ok()?;
            let unit = it.next().unwrap_or("B");
            let unit = unit.trim_end_matches("/s");
            Some(match unit {
                "B" => n / 1048576.0,
                "KiB" => n / 1024.0,
                "MiB" => n,
                "GiB" => n * 1024.0,
                _ => n,
            })
        };
        Some(JobInfo {
            elapsed_ms: num("Time elapsed")?,
            data_mib: mib("Data processed").unwrap_or(0.0),
            bandwidth_mibs: mib("Memory bandwidth").unwrap_or(0.0),
            downtime_ms: num("Total downtime").unwrap_or(0.0),
        })
    }
}

// ------------------------------------------------------------------ API client

/// The coordinator's request/reply API, spoken directly (no CLI process).
struct Api {
    nats: async_nats::Client,
    user: String,
    s: Subjects,
}

impl Api {
    async fn connect(url: &str, user: &str) -> Result<Api> {
        // Replies come only into the caller's own inbox prefix.
        let nats = async_nats::ConnectOptions::new()
            .custom_inbox_prefix(nodemaint_proto::subjects::inbox_prefix(user))
            .connect(url)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        Ok(Api {
            nats,
            user: user.into(),
            s: Subjects::default(),
        })
    }

    /// One request; an error reply is the inner `Err`.
    async fn call(&self, kind: Req) -> Result<std::result::Result<Reply, pb::Error>> {
        let req = pb::ApiRequest {
            user: self.user.clone(),
            kind: Some(kind),
            ..Default::default()
        };
        let method = req.method().expect("kind set");
        let msg = tokio::time::timeout(
            Duration::from_secs(20),
            self.nats.request(
                self.s.api(&self.user, req.is_mutating(), method),
                req.encode_to_vec().into(),
            ),
        )
        .await
        .map_err(|_| anyhow!("{method}: no reply within 20 s"))?
        .with_context(|| format!("request {method}"))?;
        let reply: pb::ApiReply = nodemaint_proto::decode(&msg.payload)?;
        match reply.kind {
            Some(Reply::Error(e)) => Ok(Err(e)),
            Some(k) => Ok(Ok(k)),
            None => bail!("{method}: empty reply"),
        }
    }

    async fn ok(&self, kind: Req) -> Result<Reply> {
        self.call(kind).await?.map_err(|e| anyhow!("{e}"))
    }

    async fn json(&self, kind: Req) -> Result<Value> {
        match self.ok(kind).await? {
            Reply::Json(s) => Ok(serde_json::from_str(&s)?),
            other => bail!("expected a JSON reply, got {other:?}"),
        }
    }

    async fn job(&self, id: &str) -> Result<Value> {
        match self
            .ok(Req::ShowJob(pb::ShowJob { job_id: id.into() }))
            .await?
        {
            Reply::Job(j) => Ok(serde_json::to_value(nodemaint_proto::job::Job::try_from(
                j,
            )?)?),
            other => bail!("expected a job, got {other:?}"),
        }
    }

    async fn nodes(&self) -> Result<Vec<pb::NodeSummary>> {
        match self.ok(Req::ListNodes(pb::ListNodes {})).await? {
            Reply::Nodes(n) => Ok(n.nodes),
            other => bail!("expected nodes, got {other:?}"),
        }
    }

    /// Every VM: (node, domain).
    async fn vms(&self) -> Result<Vec<(String, pb::Domain)>> {
        match self.ok(Req::ListVms(pb::ListVms::default())).await? {
            Reply::Vms(v) => Ok(v
                .vms
                .into_iter()
                .filter_map(|e| Some((e.node, e.domain?)))
                .collect()),
            other => bail!("expected VMs, got {other:?}"),
        }
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.nodes().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the coordinator did not answer within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `ok(nodes, vms)` holds on the coordinator's view.
    async fn wait_view(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&[pb::NodeSummary], &[(String, pb::Domain)]) -> bool,
    ) -> Result<Duration> {
        let t0 = Instant::now();
        loop {
            if let (Ok(n), Ok(v)) = (self.nodes().await, self.vms().await) {
                if ok(&n, &v) {
                    return Ok(t0.elapsed());
                }
            }
            if t0.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn running(d: &pb::Domain) -> bool {
    d.state == pb::VmState::Running as i32
}

/// Whether every VM in `want` (name -> node) is running there and nowhere else.
fn placed(vms: &[(String, pb::Domain)], want: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(vm, node)| {
        let at: Vec<_> = vms.iter().filter(|(_, d)| &d.name == vm).collect();
        at.len() == 1 && &at[0].0 == node && running(&at[0].1)
    })
}

// ------------------------------------------------------------------ event recorder

#[derive(Clone)]
struct Seen {
    at: Instant,
    ev: pb::Event,
}

/// Records events (arrival instant + event) from core subscriptions.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Recorder {
    async fn start(nats: &async_nats::Client, subjects: &[String]) -> Result<Recorder> {
        let r = Recorder::default();
        for s in subjects {
            let mut sub = nats.subscribe(s.clone()).await?;
            let r2 = r.clone();
            tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    let at = Instant::now();
                    // Agent commands (a core subscription sees what the
                    // coordinator publishes into the commands stream) are
                    // recorded as body-less events of node CMD_SEEN.
                    if m.subject.contains(".agent.") {
                        if let Ok(c) = nodemaint_proto::decode::<pb::AgentCommand>(&m.payload) {
                            let ev = pb::Event {
                                node: CMD_SEEN.into(),
                                ts_ms: nodemaint_proto::now_ms(),
                                op_id: c.op_id,
                                body: None,
                            };
                            r2.seen.lock().unwrap().push(Seen { at, ev });
                            r2.notify.notify_waiters();
                        }
                        continue;
                    }
                    if let Ok(ev) = nodemaint_proto::decode::<pb::Event>(&m.payload) {
                        r2.seen.lock().unwrap().push(Seen { at, ev });
                        r2.notify.notify_waiters();
                    }
                }
            });
        }
        nats.flush().await?;
        Ok(r)
    }

    fn find(&self, f: impl Fn(&pb::Event) -> bool) -> Option<Seen> {
        self.seen.lock().unwrap().iter().find(|s| f(&s.ev)).cloned()
    }

    fn all(&self, f: impl Fn(&pb::Event) -> bool) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| f(&s.ev))
            .cloned()
            .collect()
    }

    async fn wait(&self, f: impl Fn(&pb::Event) -> bool, timeout: Duration) -> Option<Seen> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.find(&f) {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            // The arrival instant is taken by the subscriber, so this wait's
            // granularity does not affect the measurement.
            let _ = tokio::time::timeout(Duration::from_millis(5), self.notify.notified()).await;
        }
    }
}

/// Node name of recorded agent commands (see [`Recorder::start`]).
const CMD_SEEN: &str = "<command>";

fn is_command(ev: &pb::Event, op: &str) -> bool {
    ev.op_id == op && ev.node == CMD_SEEN
}

fn is_result(ev: &pb::Event, op: &str) -> bool {
    ev.op_id == op && matches!(ev.body, Some(Body::Result(_)))
}

fn is_terminal_job(ev: &pb::Event, op: &str) -> bool {
    ev.op_id == op && matches!(&ev.body, Some(Body::Job(j)) if j.terminal)
}

// ------------------------------------------------------------------ migrate (issue 4)

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Virsh,
    Nodemaint,
}

#[derive(Default, Clone, Debug)]
struct MoveSample {
    wall_s: f64,
    /// libvirt's incoming job on the destination (domjobinfo --completed).
    libvirt_ms: Option<f64>,
    libvirt_bw: Option<f64>,
    /// nodemaint only: CLI start -> job created (coordinator clock).
    to_job_ms: Option<f64>,
    /// nodemaint only: CLI start -> the agent's result event arrives here.
    to_result_ms: Option<f64>,
    /// nodemaint only: the agent's own duration of the command.
    agent_ms: Option<f64>,
    /// nodemaint only: job created -> agent result published (same clock).
    job_to_result_ms: Option<f64>,
    /// nodemaint only: result event -> CLI exit.
    result_to_exit_ms: Option<f64>,
    /// Time after the CLI/virsh exit until the coordinator shows the VM on the destination.
    view_lag_ms: f64,
}

async fn move_once(
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

fn opt_col(v: &[MoveSample], f: impl Fn(&MoveSample) -> Option<f64>) -> Vec<f64> {
    v.iter().filter_map(f).collect()
}

async fn bench_migrate(a: &Args) -> Result<Report> {
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

// ------------------------------------------------------------------ drain (issue 6)

struct DrainRun {
    method: &'static str,
    wall_s: f64,
    /// Per-migration libvirt stats on the destination.
    libvirt: Vec<JobInfo>,
    /// Sequential loop only: wall time of each virsh migrate.
    each_s: Vec<f64>,
    /// nodemaint only: journal analysis.
    analysis: Option<Value>,
}

/// Moves every VM in `vms` back to node1 with virsh (one sequential stream
/// per source node, sources in parallel) and waits until the coordinator
/// sees them all there.
async fn gather(lab: &Lab, api: &Api, vms: &[String]) -> Result<()> {
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
/// "moving X" / "moved X" steps, waves, concurrency and where time goes.
fn analyse_drain(job: &Value, plan: &Value, cli_start_ms: i64, cli_end_ms: i64) -> Value {
    let created = job["created_ms"].as_i64().unwrap_or(0);
    let ended = job["updated_ms"].as_i64().unwrap_or(0);
    let mut start: BTreeMap<String, i64> = BTreeMap::new();
    let mut end: BTreeMap<String, i64> = BTreeMap::new();
    for st in job["steps"].as_array().into_iter().flatten() {
        let msg = st["message"].as_str().unwrap_or("");
        let ts = st["ts_ms"].as_i64().unwrap_or(0);
        let vm = st["vm"].as_str().unwrap_or("").to_string();
        if msg.starts_with("moving ") {
            start.insert(vm, ts);
        } else if msg.starts_with("moved ") {
            end.insert(vm, ts);
        }
    }
    let wave_of: HashMap<String, u64> = plan["moves"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["vm"].as_str().unwrap_or("").to_string(),
                m["wave"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let durs: Vec<f64> = start
        .iter()
        .filter_map(|(vm, s)| end.get(vm).map(|e| (e - s) as f64))
        .collect();
    let first = start.values().min().copied().unwrap_or(created);
    let last = end.values().max().copied().unwrap_or(ended);
    let span = (last - first) as f64;
    let mut waves: BTreeMap<u64, (i64, i64, f64)> = BTreeMap::new();
    for (vm, s) in &start {
        let Some(e) = end.get(vm) else { continue };
        let w = wave_of.get(vm).copied().unwrap_or(0);
        let x = waves.entry(w).or_insert((i64::MAX, 0, 0.0));
        x.0 = x.0.min(*s);
        x.1 = x.1.max(*e);
        x.2 = x.2.max((e - s) as f64);
    }
    let mut barrier_ms = 0.0;
    let mut prev_end: Option<i64> = None;
    let mut wave_rows = Vec::new();
    for (w, (s, e, longest)) in &waves {
        let gap = prev_end.map(|p| (s - p) as f64).unwrap_or(0.0);
        barrier_ms += gap;
        prev_end = Some(*e);
        wave_rows.push(json!({"wave": w, "start_ms": s - created, "span_ms": e - s, "longest_ms": longest, "gap_before_ms": gap}));
    }
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
        "waves": wave_rows,
        "gaps_between_waves_ms": barrier_ms,
    })
}

async fn drain_nodemaint(lab: &Lab, api: &Api, vms: &[String]) -> Result<DrainRun> {
    let plan = api
        .json(Req::PlanDrain(pb::PlanDrain {
            node: "node1".into(),
            max_parallel: 0,
        }))
        .await?;
    let wall0 = nodemaint_proto::now_ms();
    let t0 = Instant::now();
    let out = cli(
        &lab.nats_url,
        "operator",
        &["maintenance", "start", "node1", "--mode", "move"],
    )
    .output()
    .await?;
    let wall = t0.elapsed();
    let wall1 = nodemaint_proto::now_ms();
    if !out.status.success() {
        bail!("maintenance start failed: {}", text(&out).trim());
    }
    let id = job_id_of(&text(&out)).ok_or_else(|| anyhow!("no job id in the CLI's output"))?;
    let job = api.job(&id).await?;
    let analysis = analyse_drain(&job, &plan, wall0, wall1);
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
        "nodemaint drain: {:.2} s (node enable {:.2} s)",
        secs(wall),
        secs(en)
    ));
    gather(lab, api, vms).await?;
    Ok(DrainRun {
        method: "nodemaint",
        wall_s: secs(wall),
        libvirt,
        each_s: Vec::new(),
        analysis: Some(analysis),
    })
}

/// The seed's way: a sequential shell loop of `virsh migrate` over node1's
/// domains, destinations round-robin over node2..node4.
async fn drain_seed(lab: &Lab, api: &Api, vms: &[String], nodes: usize) -> Result<DrainRun> {
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
    let (wall, stdout) = checked("the sequential virsh loop", cmd).await?;
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
    log(format!("sequential virsh loop: {:.2} s", secs(wall)));
    gather(lab, api, vms).await?;
    Ok(DrainRun {
        method: "seed loop",
        wall_s: secs(wall),
        libvirt,
        each_s,
        analysis: None,
    })
}

async fn bench_drain(a: &Args) -> Result<Report> {
    a.known(&["vms", "rounds", "per-source", "per-destination", "global"])?;
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
    for r in 0..rounds {
        let order: [bool; 2] = if r % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for nodemaint in order {
            let run = if nodemaint {
                drain_nodemaint(&lab, &api, &vms).await?
            } else {
                drain_seed(&lab, &api, &vms, nodes).await?
            };
            results.push(run);
        }
    }
    let virt = lab.lab_virt_type();
    drop(lab);

    let nm: Vec<&DrainRun> = results.iter().filter(|r| r.method == "nodemaint").collect();
    let seed: Vec<&DrainRun> = results.iter().filter(|r| r.method != "nodemaint").collect();
    let nm_w: Vec<f64> = nm.iter().map(|r| r.wall_s).collect();
    let seed_w: Vec<f64> = seed.iter().map(|r| r.wall_s).collect();
    let ratio = median(&nm_w) / median(&seed_w);
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
        "### `bench drain` (issue 6): node1 of a 4-node lab holds {} {virt} guests (1 VFW + {} user VMs, {sum_mem:.0} MiB); limits per_source={per_source}, per_destination={per_dest}, global={global}; {rounds} rounds (ABBA)\n\n",
        vms.len(),
        vms.len() - 1
    );
    let rows: Vec<Vec<String>> = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            vec![
                (i + 1).to_string(),
                if r.method == "nodemaint" {
                    "`coordinator maintenance start node1 --mode move`".into()
                } else {
                    "sequential `virsh migrate` loop (seed)".into()
                },
                format!("{:.2}", r.wall_s),
                format!(
                    "{:.0}",
                    median(&r.libvirt.iter().map(|j| j.elapsed_ms).collect::<Vec<_>>())
                ),
            ]
        })
        .collect();
    md.push_str(&table(
        &["#", "method", "wall s", "libvirt job ms (median per VM)"],
        &rows,
    ));
    md.push_str(&format!(
        "\n**ratio nodemaint/seed loop (medians): {ratio:.3}** (goal ≤ 0.4: {})\n\n",
        if ratio <= 0.4 { "met" } else { "missed" }
    ));
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
                "\nnodemaint drain {} journal: CLI start → job created {} ms; job created → first migration {} ms; migrations span {:.0} ms ({} migrations, median {:.0} ms each, mean concurrency {:.2}); gaps between waves {:.0} ms total; last migration → job end {} ms; job end → CLI exit {} ms.\n",
                i + 1,
                an["cli_start_to_job_created_ms"],
                an["job_created_to_first_migration_ms"],
                an["migrations_span_ms"].as_f64().unwrap_or(0.0),
                an["migrations"],
                an["migration_ms_median"].as_f64().unwrap_or(0.0),
                an["mean_concurrency"].as_f64().unwrap_or(0.0),
                an["gaps_between_waves_ms"].as_f64().unwrap_or(0.0),
                an["last_migration_to_job_end_ms"],
                an["job_end_to_cli_exit_ms"],
            ));
            let wrows: Vec<Vec<String>> = an["waves"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| {
                    vec![
                        w["wave"].to_string(),
                        w["start_ms"].to_string(),
                        w["span_ms"].to_string(),
                        format!("{:.0}", w["longest_ms"].as_f64().unwrap_or(0.0)),
                        format!("{:.0}", w["gap_before_ms"].as_f64().unwrap_or(0.0)),
                    ]
                })
                .collect();
            md.push('\n');
            md.push_str(&table(
                &[
                    "wave",
                    "starts at ms (after job created)",
                    "span ms",
                    "longest migration ms",
                    "gap before ms",
                ],
                &wrows,
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
            "runs": results.iter().map(|r| json!({
                "method": r.method, "wall_s": r.wall_s, "each_s": r.each_s,
                "libvirt_ms": r.libvirt.iter().map(|j| j.elapsed_ms).collect::<Vec<_>>(),
                "libvirt_mibs": r.libvirt.iter().map(|j| j.bandwidth_mibs).collect::<Vec<_>>(),
                "libvirt_data_mib": r.libvirt.iter().map(|j| j.data_mib).collect::<Vec<_>>(),
                "libvirt_downtime_ms": r.libvirt.iter().map(|j| j.downtime_ms).collect::<Vec<_>>(),
                "analysis": r.analysis,
            })).collect::<Vec<_>>(),
            "nodemaint_median_s": median(&nm_w),
            "seed_median_s": median(&seed_w),
            "ratio": ratio,
            "goal": 0.4,
            "bandwidth": {"libvirt_single_stream_mibs": bw_lv, "wall_single_migration_mibs": bw_wall, "single_migration_s": t_one},
            "bounds_s": {"libvirt_bandwidth": bound_lv, "wall_bandwidth": bound_wall, "wall_bandwidth_parallel": bound_par, "parallelism": parallel},
        }),
    })
}

// ------------------------------------------------------------------ sim fleet helpers

/// nats-server + `coordinator serve` with a `bench` user (Level2), in a
/// temporary directory; everything killed on drop.
struct SimStack {
    // Dropped in this order: agents, coordinator, nats-server, directory.
    sim: Option<Proc>,
    _coordinator: Proc,
    nats: Nats,
    dir: tempfile::TempDir,
}

impl SimStack {
    /// `edit` changes the coordinator's config (user `bench`, defaults).
    async fn start(edit: impl FnOnce(&mut CoordinatorConfig)) -> Result<(SimStack, Api)> {
        let dir = tempfile::tempdir()?;
        let nats = Nats::start(dir.path());
        let cfg = dir.path().join("coordinator.toml");
        let mut config = CoordinatorConfig::default();
        let bench = User {
            groups: vec!["Level2".into()],
            password_hash: None,
        };
        config.users.insert("bench".into(), bench);
        // sim-fleet's agents: their `sim:` URIs are the migration targets.
        config.migration.test_drivers = true;
        edit(&mut config);
        write_coordinator_config(&cfg, &config);
        let coordinator = Proc::spawn(
            "coordinator",
            std::process::Command::new(bin("coordinator"))
                .args(["serve", "--config"])
                .env(INSECURE.0, INSECURE.1)
                .arg(&cfg)
                .env("NATS_URL", &nats.url)
                .env_remove("RUST_LOG")
                .env_remove("NODEMAINT_PREFIX"),
            dir.path().join("coordinator.log"),
        );
        let api = Api::connect(&nats.url, "bench").await?;
        api.wait_ready(Duration::from_secs(30)).await?;
        Ok((
            SimStack {
                sim: None,
                _coordinator: coordinator,
                nats,
                dir,
            },
            api,
        ))
    }

    fn start_fleet(&mut self, args: &[String]) {
        let state = self.dir.path().join("sim");
        let p = Proc::spawn(
            "sim-fleet",
            std::process::Command::new(bin("sim-fleet"))
                .args(args)
                .arg("--nats-url")
                .arg(&self.nats.url)
                .arg("--state-dir")
                .arg(&state)
                .env_remove("RUST_LOG")
                .env_remove("NODEMAINT_PREFIX"),
            self.dir.path().join("sim-fleet.log"),
        );
        self.sim = Some(p);
    }

    fn sim_log(&self) -> String {
        self.sim.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }
}

// ------------------------------------------------------------------ latency (issue 7)

/// One operation, ms from the API request (floor: its own round trip).
#[derive(Clone, Copy)]
struct LatSample {
    floor: f64,
    accept: f64,
    /// The agent command seen on the bus (accept + the executor's journaling).
    command: f64,
    /// The agent's CommandResult event received: the command→ack latency.
    result: f64,
    job_end: f64,
    /// The agent's own command duration (execute only).
    agent: f64,
}

struct LatencyResult {
    agents: usize,
    register_s: f64,
    samples: Vec<LatSample>,
    refused_retries: usize,
}

impl LatencyResult {
    fn col(&self, f: impl Fn(&LatSample) -> f64) -> Vec<f64> {
        self.samples
            .iter()
            .map(f)
            .filter(|v| v.is_finite())
            .collect()
    }
}

async fn latency_at(agents: usize, ops: usize) -> Result<LatencyResult> {
    let (mut stack, api) = SimStack::start(|_| {}).await?;
    log(format!("latency: starting sim-fleet with {agents} agents"));
    let t0 = Instant::now();
    stack.start_fleet(&[
        "--nodes".into(),
        agents.to_string(),
        "--vms-per-node".into(),
        "1".into(),
        "--heartbeat-interval-ms".into(),
        "5000".into(),
    ]);
    api.wait_view(
        &format!("{agents} agents to register"),
        Duration::from_secs(300),
        |n, _| n.len() == agents && n.iter().all(|x| x.reachable && x.vms_total >= 1),
    )
    .await?;
    let register_s = secs(t0.elapsed());
    log(format!(
        "latency: {agents} agents registered in {register_s:.1} s"
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The floor: a trivial responder on its own connection, same server.
    let responder = async_nats::connect(&stack.nats.url).await?;
    let mut echo = responder.subscribe("bench.echo").await?;
    responder.flush().await?;
    let r2 = responder.clone();
    let echo_task = tokio::spawn(async move {
        while let Some(m) = echo.next().await {
            if let Some(reply) = m.reply {
                let _ = r2.publish(reply, m.payload).await;
            }
        }
    });
    let rec = Recorder::start(
        &api.nats,
        &[
            api.s.events_filter(None, Some(EventKind::Result)),
            api.s
                .events_filter(Some(COORDINATOR_NODE), Some(EventKind::Job)),
            api.s.agent_cmd_all(),
        ],
    )
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; 64]);
    let mut rng = Rng::new();
    let mut on = vec![true; agents];
    let mut last_touched: Vec<Option<usize>> = vec![None; agents];
    let cool = 20.min(agents / 2);
    let mut samples = Vec::new();
    let mut retries = 0;
    let warmup = 10;
    let mut i = 0;
    while i < ops + warmup {
        let counted = i >= warmup;
        // Floor sample.
        let t = Instant::now();
        api.nats.request("bench.echo", payload.clone()).await?;
        let f = ms(t.elapsed());
        // A VM of a random node not touched in the last `cool` operations.
        let n = loop {
            let n = rng.below(agents);
            let cooled = match last_touched[n] {
                None => true,
                Some(l) => i - l >= cool,
            };
            if cooled {
                break n;
            }
        };
        let vm = format!("sim{:04}-vm0", n + 1);
        let kind = if on[n] {
            Req::StopVm(pb::VmAction {
                vm: vm.clone(),
                graceful_timeout_s: 0,
            })
        } else {
            Req::StartVm(pb::VmAction {
                vm: vm.clone(),
                graceful_timeout_s: 0,
            })
        };
        let t0 = Instant::now();
        let reply = api.call(kind).await?;
        let t_acc = t0.elapsed();
        let op = match reply {
            Ok(Reply::Accepted(acc)) => acc.op_id,
            Ok(other) => bail!("unexpected reply {other:?}"),
            Err(e) if e.code == pb::error::Code::WrongState as i32 => {
                // The coordinator's view lags the last command; not a sample.
                retries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => bail!("{vm}: {e}"),
        };
        let res = rec
            .wait(|e| is_result(e, &op), Duration::from_secs(30))
            .await
            .ok_or_else(|| anyhow!("no result for {vm} ({op}) within 30 s"))?;
        let end = rec
            .wait(|e| is_terminal_job(e, &op), Duration::from_secs(30))
            .await
            .ok_or_else(|| anyhow!("no job end for {vm} ({op}) within 30 s"))?;
        let cmd = rec.find(|e| is_command(e, &op));
        let mut agent_ms = f64::NAN;
        if let Some(Body::Result(r)) = &res.ev.body {
            if !r.ok {
                bail!("{vm}: command failed: {r:?}");
            }
            agent_ms = r.duration_ms as f64;
        }
        if counted {
            samples.push(LatSample {
                floor: f,
                accept: ms(t_acc),
                command: cmd.map_or(f64::NAN, |c| ms(c.at.saturating_duration_since(t0))),
                result: ms(res.at.saturating_duration_since(t0)),
                job_end: ms(end.at.saturating_duration_since(t0)),
                agent: agent_ms,
            });
        }
        on[n] = !on[n];
        last_touched[n] = Some(i);
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    echo_task.abort();
    if stack.sim_log().contains("sim-fleet: agent") {
        log("WARNING: some simulated agents reported errors (see sim-fleet log)");
    }
    Ok(LatencyResult {
        agents,
        register_s,
        samples,
        refused_retries: retries,
    })
}

async fn bench_latency(a: &Args) -> Result<Report> {
    a.known(&["agents", "ops"])?;
    let agents: Vec<usize> = a
        .get("agents", "200,1000".to_string())?
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<std::result::Result<_, _>>()
        .context("--agents: comma-separated numbers")?;
    let ops: usize = a.get("ops", 200)?;
    let mut res = Vec::new();
    for n in agents {
        res.push(latency_at(n, ops).await?);
    }
    let mut md = format!(
        "### `bench latency` (issue 7): VM stop/start through the API, {ops} sequential operations per fleet size, one nats-server, sim-fleet agents (heartbeat 5 s)\n\n\
         *floor* = raw NATS request/reply to a trivial responder on the same server (interleaved with the operations); \
         *accept* = API request → `Accepted` reply; *ack* = API request → the agent's `CommandResult` event received by the client (the command→ack latency); \
         *job end* = → the job's terminal event.\n\n"
    );
    let p = |v: Vec<f64>| format!("{:.1} / {:.1}", median(&v), pct(&v, 99.0));
    let rows: Vec<Vec<String>> = res
        .iter()
        .map(|r| {
            let floor = r.col(|s| s.floor);
            vec![
                r.agents.to_string(),
                format!("{:.2} / {:.2}", median(&floor), pct(&floor, 99.0)),
                p(r.col(|s| s.accept)),
                p(r.col(|s| s.command)),
                format!("**{}**", p(r.col(|s| s.result))),
                p(r.col(|s| s.job_end)),
                format!("{:.1}×", median(&r.col(|s| s.result)) / median(&floor)),
            ]
        })
        .collect();
    md.push_str(&table(
        &[
            "agents",
            "floor p50 / p99 ms",
            "accept p50 / p99 ms",
            "command on the bus p50 / p99 ms",
            "ack p50 / p99 ms",
            "job end p50 / p99 ms",
            "ack p50 ÷ floor p50",
        ],
        &rows,
    ));
    md.push_str(
        "
Where the ack time goes (per-operation segments, p50 / p99 ms):

",
    );
    let seg_rows: Vec<Vec<String>> = res
        .iter()
        .map(|r| {
            vec![
                r.agents.to_string(),
                p(r.col(|s| s.accept)),
                p(r.col(|s| s.command - s.accept)),
                p(r.col(|s| s.result - s.command)),
                p(r.col(|s| s.agent)),
                p(r.col(|s| s.job_end - s.result)),
            ]
        })
        .collect();
    md.push_str(&table(
        &[
            "agents",
            "request → Accepted (API: stream info, job create, job event)",
            "Accepted → command published (executor: journal CAS, publish + ack)",
            "command → result event (agent: claim KV, execute, record KV, inventory, result)",
            "of which the agent's execute",
            "result → job end event",
        ],
        &seg_rows,
    ));
    for r in &res {
        let ack = r.col(|s| s.result);
        let floor = r.col(|s| s.floor);
        let p99 = pct(&ack, 99.0);
        md.push_str(&format!(
            "\n{} agents: registered in {:.1} s; ack p99 {:.1} ms (goal < 50 ms at 1,000: {}); ack p50 {:.1}× the floor p50 (goal ≤ 2×: {}); mean ack {:.1} ms, max {:.1} ms; {} operations retried after a WRONG_STATE refusal (view lag; not counted).\n",
            r.agents,
            r.register_s,
            p99,
            if p99 < 50.0 { "met" } else { "missed" },
            median(&ack) / median(&floor),
            if median(&ack) <= 2.0 * median(&floor) { "met" } else { "missed" },
            mean(&ack),
            max(&ack),
            r.refused_retries,
        ));
    }
    let stat = |v: &[f64]| json!({"p50": median(v), "p90": pct(v, 90.0), "p99": pct(v, 99.0), "mean": mean(v), "max": max(v), "n": v.len()});
    Ok(Report {
        markdown: md,
        json: json!({
            "benchmark": "latency",
            "machine": machine(),
            "ops": ops,
            "fleets": res.iter().map(|r| json!({
                "agents": r.agents,
                "register_s": r.register_s,
                "floor_ms": stat(&r.col(|s| s.floor)),
                "accept_ms": stat(&r.col(|s| s.accept)),
                "command_ms": stat(&r.col(|s| s.command)),
                "ack_ms": stat(&r.col(|s| s.result)),
                "job_end_ms": stat(&r.col(|s| s.job_end)),
                "agent_execute_ms": stat(&r.col(|s| s.agent)),
                "ack_p50_over_floor_p50": median(&r.col(|s| s.result)) / median(&r.col(|s| s.floor)),
                "refused_retries": r.refused_retries,
            })).collect::<Vec<_>>(),
            "goals": {"ack_p99_ms_at_1000": 50, "ack_p50_over_floor": 2},
        }),
    })
}

// ------------------------------------------------------------------ rolling (issue 7)

async fn bench_rolling(a: &Args) -> Result<Report> {
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
    // rounds, not 2.5. Achievable in principle; not the issue's bound.
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

// ------------------------------------------------------------------ fuzz

/// One caught panic: its message (with location) and the input.
struct Panicked {
    message: String,
    input: String,
}

/// Per decoder: (name, cases, ok, err, panics, first panics, decode time, total time).
struct FuzzRow {
    name: &'static str,
    cases: u64,
    ok: u64,
    err: u64,
    panics: u64,
    examples: Vec<Panicked>,
    decode: Duration,
    total: Duration,
}

fn bench_sim(a: &Args) -> Result<Report> {
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

async fn bench_fuzz(a: &Args) -> Result<Report> {
    a.known(&["cases", "seed", "decoder"])?;
    let cases: u64 = a.get("cases", 100_000)?;
    let seed: u64 = a.get("seed", 1)?;
    let filter: Option<String> = a.opt("decoder")?;
    let rows =
        tokio::task::spawn_blocking(move || fuzz_all(cases, seed, filter.as_deref())).await??;
    let panics_total: u64 = rows.iter().map(|r| r.panics).sum();
    let mut md = format!(
        "## Decoders on arbitrary input (bench fuzz)\n\n{cases} generated inputs per decoder \
         (seed {seed}): random bytes, structure-aware (protobuf wire with random fields and \
         nesting; TOML/JSON from the format's keys and extreme values; check output from its \
         tokens) and mutated valid seeds. A panic is caught and counted; there must be none.\n\n"
    );
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.to_string(),
                r.cases.to_string(),
                r.ok.to_string(),
                r.err.to_string(),
                r.panics.to_string(),
                format!("{:.1}", secs(r.total)),
                format!("{:.1}", secs(r.decode) * 1e6 / r.cases.max(1) as f64),
            ]
        })
        .collect();
    md.push_str(&table(
        &[
            "decoder",
            "cases",
            "Ok",
            "Err",
            "panics",
            "time (s)",
            "decode µs/case",
        ],
        &table_rows,
    ));
    md.push_str(&format!("\npanics in total: {panics_total}\n"));
    for r in rows.iter().filter(|r| r.panics > 0) {
        md.push_str(&format!(
            "\n### {}: {} panics; first ones\n",
            r.name, r.panics
        ));
        for p in &r.examples {
            md.push_str(&format!("- {}\n  input: {}\n", p.message, p.input));
        }
    }
    let json_rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "decoder": r.name, "cases": r.cases, "ok": r.ok, "err": r.err,
                "panics": r.panics, "time_s": secs(r.total), "decode_s": secs(r.decode),
                "panic_examples": r.examples.iter()
                    .map(|p| json!({"message": p.message, "input": p.input}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Report {
        markdown: md,
        json: json!({
            "bench": "fuzz", "cases_per_decoder": cases, "seed": seed,
            "decoders": json_rows, "panics_total": panics_total, "machine": machine(),
        }),
    })
}

fn fuzz_all(cases: u64, seed: u64, filter: Option<&str>) -> Result<Vec<FuzzRow>> {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    use std::cell::RefCell;

    thread_local! {
        static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
    }
    // Quiet, but remember the message and location of the last panic.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        LAST_PANIC.with(|p| *p.borrow_mut() = info.to_string());
    }));
    let mut rows = Vec::new();
    for dec in nodemaint_tests::fuzz::decoders() {
        if filter.is_some_and(|f| !dec.name.contains(f)) {
            continue;
        }
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &key),
        );
        let strategy = (dec.input)();
        let mut row = FuzzRow {
            name: dec.name,
            cases,
            ok: 0,
            err: 0,
            panics: 0,
            examples: Vec::new(),
            decode: Duration::ZERO,
            total: Duration::ZERO,
        };
        let t0 = Instant::now();
        for _ in 0..cases {
            let input = strategy
                .new_tree(&mut runner)
                .map_err(|e| anyhow!("{}: cannot generate an input: {e}", dec.name))?
                .current();
            let t = Instant::now();
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (dec.run)(&input)));
            row.decode += t.elapsed();
            match res {
                Ok(Ok(())) => row.ok += 1,
                Ok(Err(_)) => row.err += 1,
                Err(_) => {
                    row.panics += 1;
                    if row.examples.len() < 3 {
                        row.examples.push(Panicked {
                            message: LAST_PANIC.with(|p| p.borrow().clone()),
                            input: nodemaint_tests::fuzz::show_input(&input),
                        });
                    }
                }
            }
        }
        row.total = t0.elapsed();
        log(format!(
            "fuzz {}: {} cases, {} ok, {} err, {} panics, {:.1} s",
            row.name,
            row.cases,
            row.ok,
            row.err,
            row.panics,
            secs(row.total)
        ));
        rows.push(row);
    }
    std::panic::set_hook(default_hook);
    if rows.is_empty() {
        bail!("no decoder matches {:?}", filter.unwrap_or(""));
    }
    Ok(rows)
}

// ------------------------------------------------------------------ soak

async fn bench_soak(a: &Args) -> Result<Report> {
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
