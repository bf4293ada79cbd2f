//! The lab from tests: `deploy/lab up` with a suite-specific directory,
//! prefix, subnet and NATS port, torn down (`deploy/lab down`, by pid) when
//! the guard drops, also when a test panics. Each suite shares one lab.
//!
//! Lab suites need root and KVM (or TCG). Outside CI they skip with a
//! printed reason when they can't run; under `CI=true` they fail instead.
//!
//! A failed lab keeps its evidence: when `lab up` fails, or a suite panics
//! while its lab is up, the lab's logs, configs, state and status are copied
//! (`deploy/lab collect`) to `target/lab-logs/<suite>-<UTC time>/` before
//! the teardown, and the failure names that directory and shows the last
//! lines of the log of every lab process that died (under CI, of every log).

pub mod config;

use crate::{in_ci, wait_for};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn lab_script() -> PathBuf {
    repo().join("deploy/lab")
}

/// Where failed labs leave their evidence: `<target dir>/lab-logs`.
pub fn evidence_root() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("lab-logs")
}

/// Evidence directories kept by this test process, oldest first.
static EVIDENCE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The evidence directories this process kept so far (see [`Lab::keep_evidence`]).
pub fn evidence_kept() -> Vec<PathBuf> {
    EVIDENCE.lock().map(|v| v.clone()).unwrap_or_default()
}

/// `YYYYMMDDTHHMMSSZ` of now, in UTC (the CLI's timestamp, compacted).
fn utc_stamp() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    nodemaint_coordinator::cli::output::fmt_ts(ms)
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('T'),
            '-' | ':' => None,
            c => Some(c),
        })
        .collect()
}

/// A new, empty `<evidence root>/<suite>-<UTC time>[-N]`.
fn new_evidence_dir(suite: &str) -> std::io::Result<PathBuf> {
    let root = evidence_root();
    std::fs::create_dir_all(&root)?;
    let base = format!("{suite}-{}", utc_stamp());
    let mut n = 1;
    loop {
        let dir = if n == 1 {
            root.join(&base)
        } else {
            root.join(format!("{base}-{n}"))
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Why the lab cannot run here, if it can't.
fn missing_requirement() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("lab tests need root".into());
    }
    for tool in [
        "ip",
        "virsh",
        "libvirtd",
        "qemu-system-x86_64",
        "nats-server",
        "unshare",
        "nsenter",
    ] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("lab tests need {tool} (run deploy/setup.sh)"));
        }
    }
    None
}

pub struct Lab {
    pub name: String,
    pub env: Vec<(String, String)>,
    pub nats_url: String,
    pub nodes: usize,
    up: bool,
    /// The evidence of a failure was kept already (once per lab).
    evidence_taken: bool,
}

impl Lab {
    /// Brings up a lab of `nodes` nodes, or `None` when lab tests must skip.
    /// `index` (1..=9) keeps suites' subnets and ports apart.
    pub fn up(
        name: &str,
        index: u8,
        nodes: usize,
        vms_per_node: usize,
        cloudspaces: usize,
        extra_env: &[(&str, &str)],
    ) -> Option<Lab> {
        if let Some(why) = missing_requirement() {
            if in_ci() {
                panic!("lab suite {name} cannot run under CI: {why}");
            }
            eprintln!("SKIPPED lab suite {name}: {why}");
            return None;
        }
        let subnet = format!("10.79.{index}");
        let port = 4400 + u16::from(index);
        let mut env: Vec<(String, String)> = vec![
            ("LAB_DIR".into(), format!("/run/nodemaint-test-{name}")),
            ("LAB_PREFIX".into(), format!("nmt{index}")),
            ("LAB_SUBNET".into(), subnet.clone()),
            ("LAB_NATS_PORT".into(), port.to_string()),
            (
                "LAB_CAPS_CACHE".into(),
                "/var/cache/nodemaint-lab-caps".into(),
            ),
        ];
        // The binaries this test process was built with (CARGO_TARGET_DIR
        // honoured), unless the caller chose others.
        if std::env::var_os("NODEMAINT_BIN_DIR").is_none() {
            let bin_dir = crate::bin("lab-config").parent().unwrap().to_path_buf();
            env.push(("NODEMAINT_BIN_DIR".into(), bin_dir.display().to_string()));
        }
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let lab = Lab {
            name: name.into(),
            env,
            nats_url: format!("nats://{subnet}.1:{port}"),
            nodes,
            up: true,
            evidence_taken: false,
        };
        // A lab left over by a killed run of this suite: take it down first.
        let _ = lab.lab(&["down"]);
        let out = lab.lab(&[
            "up",
            "--nodes",
            &nodes.to_string(),
            "--vms-per-node",
            &vms_per_node.to_string(),
            "--cloudspaces",
            &cloudspaces.to_string(),
        ]);
        if !out.status.success() {
            let mut lab = lab;
            let evidence = lab.keep_evidence("lab up failed");
            panic!(
                "lab up failed:\n{}\n{}\n{evidence}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The lab's client URL(s): one server, or every member of a cluster.
        let status: Value = serde_json::from_slice(&lab.lab(&["status", "--json"]).stdout)
            .expect("lab status --json");
        let mut lab = lab;
        lab.nats_url = status["nats_url"]
            .as_str()
            .expect("nats_url in lab status")
            .to_string();
        lab.wait_consistent();
        Some(lab)
    }

    /// Runs `deploy/lab ARGS` with this lab's environment.
    pub fn lab(&self, args: &[&str]) -> Output {
        self.try_lab(args).expect("run deploy/lab")
    }

    fn try_lab(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new(lab_script())
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
    }

    /// Copies the lab's evidence (`deploy/lab collect`: every log, configs,
    /// state, status, which processes died) to a new
    /// `target/lab-logs/<suite>-<UTC time>/` and returns a report naming it,
    /// with the last lines of the log of every process that died; under CI
    /// also of every other log. Never panics (it runs while one unwinds).
    pub fn keep_evidence(&mut self, why: &str) -> String {
        self.evidence_taken = true;
        let dir = match new_evidence_dir(&self.name) {
            Ok(d) => d,
            Err(e) => {
                return format!(
                    "{why}; cannot keep the lab's evidence under {}: {e}",
                    evidence_root().display()
                )
            }
        };
        if let Ok(mut kept) = EVIDENCE.lock() {
            kept.push(dir.clone());
        }
        let dir_s = dir.to_string_lossy().into_owned();
        let mut args = vec!["collect", dir_s.as_str()];
        if in_ci() {
            args.push("--tails");
        }
        let collected = match self.try_lab(&args) {
            Ok(out) => format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("cannot run deploy/lab collect: {e}\n"),
        };
        format!(
            "=== {why}: lab {} evidence kept in {dir_s}\n{collected}=== end of the lab's evidence ({dir_s})",
            self.name
        )
    }

    pub fn lab_ok(&self, args: &[&str]) -> String {
        let out = self.lab(args);
        assert!(
            out.status.success(),
            "deploy/lab {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn node_names(&self) -> Vec<String> {
        (1..=self.nodes).map(|i| format!("node{i}")).collect()
    }

    /// The coordinator CLI as `user` (lab users: operator Level2, admin
    /// Level3, viewer Level1).
    /// In a secured lab (`LAB_SECURE=1`) with `user`'s own credentials.
    pub fn cli(&self, user: &str, args: &[&str]) -> Output {
        Command::new(crate::bin("coordinator"))
            .args(args)
            .env("NATS_URL", &self.nats_url)
            .env("NODEMAINT_USER", user)
            .env_remove("NATS_CREDS")
            .env_remove("NODEMAINT_CREDS")
            .env_remove("NATS_CA")
            .envs(self.security_env(user))
            .output()
            .expect("run coordinator")
    }

    /// The lab's directory of generated NATS security, when secured.
    pub fn secure_dir(&self) -> Option<PathBuf> {
        let var = |k: &str| {
            self.env
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        (var("LAB_SECURE").as_deref() == Some("1"))
            .then(|| PathBuf::from(var("LAB_DIR").unwrap()).join("secure"))
    }

    /// `NODEMAINT_CREDS` and `NATS_CA` of `principal` in a secured lab.
    pub fn security_env(&self, principal: &str) -> Vec<(&'static str, PathBuf)> {
        match self.secure_dir() {
            Some(d) => vec![
                (
                    "NODEMAINT_CREDS",
                    d.join(format!("auth/creds/{principal}.creds")),
                ),
                ("NATS_CA", d.join("tls/ca.pem")),
            ],
            None => Vec::new(),
        }
    }

    pub fn cli_json(&self, user: &str, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.cli(user, &all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// libvirt's own view of a node: domain name → state (`running`, `shut off`, …).
    /// A node in its power cycle (`lab reboot`, a rolling's reboot hook) has
    /// no libvirtd for a moment: it is asked again until it answers (60 s).
    pub fn domains(&self, node: &str) -> BTreeMap<String, String> {
        let args = ["virsh", node, "list", "--all"];
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut out = self.lab(&args);
        while !out.status.success() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            out = self.lab(&args);
        }
        assert!(
            out.status.success(),
            "deploy/lab {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(2)
            .filter_map(|l| {
                let mut cols = l.split_whitespace();
                let _id = cols.next()?;
                let name = cols.next()?.to_string();
                let state = cols.collect::<Vec<_>>().join(" ");
                Some((name, state))
            })
            .collect()
    }

    /// Every VM as libvirt sees it: name → [(node, state)].
    pub fn placements(&self) -> BTreeMap<String, Vec<(String, String)>> {
        let mut all: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for node in self.node_names() {
            for (vm, state) in self.domains(&node) {
                all.entry(vm).or_default().push((node.clone(), state));
            }
        }
        all
    }

    /// Invariants 1 and 2 on libvirt's own state: each expected VM is
    /// defined on exactly one node (so it runs on at most one).
    pub fn assert_each_vm_once(&self, expected: &[String]) -> BTreeMap<String, (String, String)> {
        let all = self.placements();
        let mut out = BTreeMap::new();
        for vm in expected {
            let places = all
                .get(vm)
                .unwrap_or_else(|| panic!("VM {vm} lost: {all:?}"));
            assert_eq!(
                places.len(),
                1,
                "VM {vm} defined on several nodes: {places:?}"
            );
            out.insert(vm.clone(), places[0].clone());
        }
        assert_eq!(all.len(), expected.len(), "unexpected VMs: {all:?}");
        out
    }

    /// While migrations run: every VM present, running on at most one node
    /// (the incoming copy of a live migration is paused until switch-over).
    pub fn assert_none_lost_or_doubled(&self, expected: &[String]) {
        let all = self.placements();
        for vm in expected {
            let places = all
                .get(vm)
                .unwrap_or_else(|| panic!("VM {vm} lost: {all:?}"));
            let running = places.iter().filter(|(_, s)| s == "running").count();
            assert!(running <= 1, "VM {vm} runs on two nodes: {places:?}");
        }
    }

    pub fn vm_names(&self) -> Vec<String> {
        self.placements().into_keys().collect()
    }

    /// Waits until the coordinator's view of every node matches libvirt's.
    pub fn wait_consistent(&self) {
        wait_for(
            Duration::from_secs(120),
            "coordinator's inventory to match libvirt",
            || {
                let out = self.cli("viewer", &["vm", "list", "--output", "json"]);
                let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else {
                    return false;
                };
                let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
                for vm in v.as_array().into_iter().flatten() {
                    seen.insert(
                        vm["name"].as_str().unwrap_or_default().into(),
                        (
                            vm["node"].as_str().unwrap_or_default().into(),
                            vm["state"].as_str().unwrap_or_default().to_lowercase(),
                        ),
                    );
                }
                let truth: BTreeMap<String, (String, String)> = self
                    .placements()
                    .into_iter()
                    .filter_map(|(vm, p)| (p.len() == 1).then(|| (vm, p[0].clone())))
                    .map(|(vm, (n, s))| (vm, (n, s.replace("shut off", "shutoff"))))
                    .collect();
                seen == truth
            },
        );
    }

    /// `rolling start NODES... --hook HOOK --yes --detach` as operator
    /// (NODES may be `--all`; the lab's agents have the hook `reboot`);
    /// returns the job id.
    pub fn start_rolling(&self, nodes: &[&str], hook: &str) -> String {
        let mut args = vec!["rolling", "start"];
        args.extend(nodes);
        args.extend(["--hook", hook, "--yes", "--detach"]);
        let out = self.cli("operator", &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Reboot hooks a rolling job sent per node: each node's commands are
    /// journaled in its `rolling.node` child job.
    pub fn hooks_per_node(&self, job: &Value) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for (node, children) in job["rolling"]["children"].as_object().unwrap() {
            let node_job = self.cli_json(
                "viewer",
                &["job", "show", children["node"].as_str().unwrap()],
            );
            let hooks = node_job["commands"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["action"] == "hook")
                .count();
            m.insert(node.clone(), hooks);
        }
        m
    }

    /// A node's status as the coordinator shows it (`ENABLED`, `MAINTENANCE`, …).
    pub fn status(&self, node: &str) -> String {
        self.cli_json("viewer", &["node", "show", node])["node"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs a job-starting command with `--detach`; returns the job id.
    pub fn detach(&self, user: &str, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.push("--detach");
        self.cli_json(user, &all)["job_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{args:?}: no job id"))
            .to_string()
    }

    pub fn job(&self, id: &str) -> Value {
        self.cli_json("viewer", &["job", "show", id])
    }

    /// Waits (up to `secs`) for a job to end and returns it.
    pub fn wait_job(&self, id: &str, secs: u64) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let last = self.job(id);
            if matches!(
                last["state"].as_str(),
                Some("SUCCEEDED" | "FAILED" | "ABORTED")
            ) {
                return last;
            }
            if std::time::Instant::now() > deadline {
                panic!("job {id} did not end within {secs} s: {last:#}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn pid_of_coordinator(&self) -> Option<u32> {
        let dir = &self.env.iter().find(|(k, _)| k == "LAB_DIR").unwrap().1;
        std::fs::read_to_string(Path::new(dir).join("coordinator.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn down(&mut self) {
        if self.up {
            let out = self.lab(&["down"]);
            if !out.status.success() {
                eprintln!("lab down failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            self.up = false;
        }
    }
}

impl Drop for Lab {
    /// Tears the lab down; when the suite is failing (panicking), keeps the
    /// lab's evidence first (once) and prints where it is.
    fn drop(&mut self) {
        if self.up && !self.evidence_taken && std::thread::panicking() {
            eprintln!("{}", self.keep_evidence("the lab suite failed"));
        }
        self.down();
    }
}

/// Whether a job's journal shows it was resumed by a (new) coordinator.
pub fn resumed(job: &Value) -> bool {
    job["steps"].as_array().into_iter().flatten().any(|s| {
        s["message"]
            .as_str()
            .unwrap_or_default()
            .contains("resuming")
    })
}

/// Prints a step name, so a failing suite says how far it got.
pub fn step(name: &str) {
    eprintln!("--- step: {name}");
}
