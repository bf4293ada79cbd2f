//! Test harness for nodemaint's integration tests: real `nats-server`
//! processes with JetStream on free loopback ports, real `coordinator` and
//! `node-agent` processes on libvirt's test driver (per-node XML fixtures),
//! all killed on drop. Nothing is mocked.
//!
//! The binaries come from the workspace's target directory: build them
//! first (`cargo build --workspace --bins`; `deploy/test.sh` does).

use nodemaint_agent::config::AgentConfig;
use nodemaint_coordinator::config::{CoordinatorConfig, User};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod faults;
pub mod fuzz;
pub mod lab;
pub mod soak;

pub use tempfile::TempDir;

/// Commands sent to an agent straight over the bus, bypassing the
/// coordinator (what a compromised or deposed coordinator could send), and
/// their result events.
pub mod raw {
    use super::Fleet;
    use futures::StreamExt;
    use nodemaint_proto::pb::{self, event::Body};
    use nodemaint_proto::subjects::Subjects;
    use nodemaint_proto::Message as _;
    use std::time::{Duration, Instant};

    pub async fn js_client(f: &Fleet) -> (async_nats::Client, async_nats::jetstream::Context) {
        let c = async_nats::connect(&f.nats.url).await.unwrap();
        (c.clone(), async_nats::jetstream::new(c))
    }

    /// The tests' commands come from a leader newer than the fleet's own
    /// coordinator (whose epoch is a small KV revision).
    pub const EPOCH: u64 = 1 << 40;

    pub fn command(id: &str, kind: pb::agent_command::Kind) -> pb::AgentCommand {
        pb::AgentCommand {
            id: id.into(),
            op_id: format!("op-{id}"),
            requested_by: "test".into(),
            epoch: EPOCH,
            kind: Some(kind),
        }
    }

    pub async fn send(
        js: &async_nats::jetstream::Context,
        node: &str,
        cmd: &pb::AgentCommand,
        msg_id: bool,
    ) {
        let s = Subjects::default();
        let mut h = async_nats::HeaderMap::new();
        if msg_id {
            h.insert("Nats-Msg-Id", cmd.id.as_str());
        }
        js.publish_with_headers(s.agent_cmd(node), h, cmd.encode_to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Next result event for `command_id` on the subscription.
    pub async fn next_result(
        sub: &mut async_nats::Subscriber,
        command_id: &str,
    ) -> pb::CommandResult {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, sub.next())
                .await
                .unwrap_or_else(|_| panic!("no result for {command_id}"))
                .unwrap();
            let ev: pb::Event = nodemaint_proto::decode(&msg.payload).unwrap();
            if let Some(Body::Result(r)) = ev.body {
                if r.command_id == command_id {
                    return r;
                }
            }
        }
    }
}

/// Path of a workspace binary (`coordinator`, `node-agent`): in
/// `$NODEMAINT_BIN_DIR` when set (release builds for the benchmarks), else
/// in the target dir's `debug`.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("NODEMAINT_BIN_DIR").map(PathBuf::from);
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = dir.unwrap_or_else(|| target.join("debug")).join(name);
    assert!(
        path.exists(),
        "{} not built; run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// True under CI, where tests needing root, KVM or the lab must not skip.
/// The environment form of the daemons' `--insecure` flag, for tests that
/// run them on a plain (test) NATS server.
pub const INSECURE: (&str, &str) = ("NODEMAINT_INSECURE", "1");

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).expect("log file");
        let err = file.try_clone().expect("log file");
        let child = cmd
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A real nats-server with JetStream in a temporary store.
pub struct Nats {
    pub proc: Proc,
    pub port: u16,
    pub url: String,
    pub dir: PathBuf,
}

impl Nats {
    pub fn start(dir: &Path) -> Nats {
        Self::start_on(dir, free_port())
    }

    pub fn start_on(dir: &Path, port: u16) -> Nats {
        let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let store = dir.join("jetstream");
        std::fs::create_dir_all(&store).unwrap();
        let proc = Proc::spawn(
            "nats-server",
            Command::new(&bin).args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-sd",
                store.to_str().unwrap(),
            ]),
            dir.join(format!("nats-{port}.log")),
        );
        let url = format!("nats://127.0.0.1:{port}");
        wait_for(Duration::from_secs(60), "nats-server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Nats {
            proc,
            port,
            url,
            dir: dir.to_path_buf(),
        }
    }

    /// Kills the server (SIGKILL: no clean shutdown) and starts it again on
    /// the same port and JetStream store (default path only).
    pub fn restart(&mut self) {
        self.proc.kill();
        *self = Nats::start_on(&self.dir.clone(), self.port);
    }
}

impl Nats {
    /// A nats-server on a free port with JetStream and `extra` appended to
    /// its config file (e.g. `include auth.conf`); the default path
    /// ([`Nats::start`]) takes no config file.
    pub fn start_with_config(dir: &Path, extra: &str) -> Nats {
        let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let port = free_port();
        let store = dir.join("jetstream");
        std::fs::create_dir_all(&store).unwrap();
        let conf = dir.join(format!("nats-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n{extra}\n",
                store.display()
            ),
        )
        .unwrap();
        let proc = Proc::spawn(
            "nats-server",
            Command::new(&bin).arg("-c").arg(&conf),
            dir.join(format!("nats-{port}.log")),
        );
        wait_for(Duration::from_secs(10), "nats-server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Nats {
            proc,
            port,
            url: format!("nats://127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
        }
    }
}

/// NATS security for a test: a lab CA and server certificate
/// (`deploy/nats/gen-tls`), and nkeys with subject permissions
/// (`deploy/nats/gen-auth`) for the coordinator, the agents and the users
/// of a coordinator config.
pub struct Secure {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub creds_dir: PathBuf,
    /// Lines for a server config written into `dir` (as
    /// [`Nats::start_with_config`] does): the auth and TLS includes.
    pub server_conf: String,
}

impl Secure {
    pub fn generate(dir: &Path, coordinator_config: &Path, agents: &[&str]) -> Secure {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let tls = dir.join("tls");
        let auth = dir.join("auth");
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("run generator");
            assert!(
                out.status.success(),
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new(repo.join("deploy/nats/gen-tls"))
            .arg(&tls)
            .arg("127.0.0.1"));
        run(Command::new(repo.join("deploy/nats/gen-auth"))
            .arg("--config")
            .arg(coordinator_config)
            .arg("--agents")
            .arg(agents.join(","))
            .arg("--out")
            .arg(&auth)
            .env("NODEMAINT_BIN_DIR", bin("nats-auth").parent().unwrap()));
        Secure {
            dir: dir.to_path_buf(),
            ca: tls.join("ca.pem"),
            creds_dir: auth.join("creds"),
            // nats-server resolves includes relative to the including
            // file: the server config must be written into `dir`.
            server_conf: "include \"auth/auth.conf\"\ninclude \"tls/tls.conf\"\n".into(),
        }
    }

    /// The credentials file of a principal (user, node or `coordinator`).
    pub fn creds(&self, principal: &str) -> PathBuf {
        self.creds_dir.join(format!("{principal}.creds"))
    }

    /// The nkey seed file of a principal (what `nats --nkey` reads).
    pub fn nkey(&self, principal: &str) -> PathBuf {
        self.creds_dir.join(format!("{principal}.nk"))
    }

    /// `NODEMAINT_CREDS` and `NATS_CA` for a process acting as `principal`.
    pub fn env(&self, principal: &str) -> [(&'static str, PathBuf); 2] {
        [
            ("NODEMAINT_CREDS", self.creds(principal)),
            ("NATS_CA", self.ca.clone()),
        ]
    }
}

/// Polls `f` every 50 ms until it is true; panics naming `what` on timeout.
pub fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A domain in a test-driver node fixture.
#[derive(Clone, Debug)]
pub struct Dom {
    pub name: String,
    pub kind: &'static str,
    pub cloudspace: Option<String>,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub running: bool,
    /// `migratable="no"` in its metadata.
    pub pinned: bool,
}

impl Dom {
    /// Marked not live-migratable (`migratable="no"`).
    pub fn pinned(mut self) -> Dom {
        self.pinned = true;
        self
    }

    pub fn sized(mut self, memory_mib: u64) -> Dom {
        self.memory_mib = memory_mib;
        self
    }

    pub fn user(name: &str, cloudspace: &str) -> Dom {
        Dom {
            name: name.into(),
            kind: "user",
            cloudspace: Some(cloudspace.into()),
            memory_mib: 256,
            vcpus: 1,
            running: true,
            pinned: false,
        }
    }

    pub fn vfw(cloudspace: &str) -> Dom {
        Dom {
            name: format!("{cloudspace}-vfw"),
            kind: "vfw",
            cloudspace: Some(cloudspace.into()),
            memory_mib: 64,
            vcpus: 1,
            running: true,
            pinned: false,
        }
    }

    pub fn off(mut self) -> Dom {
        self.running = false;
        self
    }
}

/// Writes a libvirt test-driver node file (`test:///path`) with the domains.
pub fn node_xml(path: &Path, memory_mib: u64, cpus: u32, doms: &[Dom]) {
    let mut s = format!(
        "<node>\n  <cpu><nodes>1</nodes><sockets>1</sockets><cores>{cpus}</cores><threads>1</threads>\
         <active>{cpus}</active><mhz>2000</mhz><model>x86_64</model></cpu>\n  <memory>{}</memory>\n",
        memory_mib * 1024
    );
    for d in doms {
        let cs = d
            .cloudspace
            .as_ref()
            .map(|c| format!(" cloudspace=\"{c}\""))
            .unwrap_or_default();
        let cs = if d.pinned {
            format!("{cs} migratable=\"no\"")
        } else {
            cs
        };
        s.push_str(&format!(
            "  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>\n\
             \x20   <name>{}</name>\n    <memory unit='MiB'>{}</memory>\n    <vcpu>{}</vcpu>\n\
             \x20   <os><type>hvm</type></os>\n\
             \x20   <metadata><nodemaint:vm xmlns:nodemaint=\"https://nodemaint.dev/xmlns/vm/1\" kind=\"{}\"{cs}/></metadata>\n{}\
             \x20 </domain>\n",
            d.name,
            d.memory_mib,
            d.vcpus,
            d.kind,
            if d.running { "" } else { "    <test:runstate>5</test:runstate>\n" }
        ));
    }
    s.push_str("</node>\n");
    std::fs::write(path, s).unwrap();
}

/// A coordinator and agents on the test driver around one nats-server.
pub struct Fleet {
    pub dir: TempDir,
    pub nats: Nats,
    pub coordinator: Option<Proc>,
    pub agents: Vec<(String, Option<Proc>)>,
    pub config: PathBuf,
    /// Changes to a node's agent config (e.g. its `checks`), applied by
    /// [`Fleet::agent_config`] to the harness's config of that node.
    pub agent_edits: std::collections::HashMap<String, AgentEdit>,
    /// Credentials and TLS of a secured fleet ([`Fleet::start_secure`]).
    pub secure: Option<Secure>,
}

/// A change to one node's agent config ([`Fleet::agent_edits`]).
pub type AgentEdit = Box<dyn Fn(&mut AgentConfig) + Send + Sync>;

/// Users every test fleet knows: alice (Level2), carol (Level3), bob (Level1).
pub fn test_users() -> std::collections::BTreeMap<String, User> {
    [("alice", "Level2"), ("carol", "Level3"), ("bob", "Level1")]
        .into_iter()
        .map(|(name, group)| {
            let user = User {
                groups: vec![group.to_string()],
                password_hash: None,
            };
            (name.to_string(), user)
        })
        .collect()
}

/// The coordinator config of every test fleet: [`test_users`], defaults
/// otherwise.
pub fn coordinator_config() -> CoordinatorConfig {
    let mut cfg = CoordinatorConfig {
        users: test_users(),
        ..CoordinatorConfig::default()
    };
    // The agents run libvirt's test driver (or sim-fleet's): their own
    // `test:`/`sim:` URIs are the migration and probe targets.
    cfg.migration.test_drivers = true;
    cfg
}

/// Writes `cfg` as the coordinator reads it and proves it does: the file
/// loads back through the coordinator's own loader to the same settings.
pub fn write_coordinator_config(path: &Path, cfg: &CoordinatorConfig) {
    let text = cfg.to_toml();
    std::fs::write(path, &text).unwrap();
    let back = CoordinatorConfig::load(path).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        back.to_toml(),
        text,
        "{} does not load back",
        path.display()
    );
}

/// Writes `cfg` as the agent reads it and proves it does: the file loads
/// back through the agent's own loader, passes its validation and has the
/// same settings.
pub fn write_agent_config(path: &Path, cfg: &AgentConfig) {
    let text = cfg.to_toml();
    std::fs::write(path, &text).unwrap();
    let back = AgentConfig::load(path).unwrap_or_else(|e| panic!("{e}\n{text}"));
    back.validate()
        .unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()));
    assert_eq!(
        back.to_toml(),
        text,
        "{} does not load back",
        path.display()
    );
}

/// The agent config of a test-driver node `node` whose files (`NODE.xml`,
/// `NODE.boot_id`) are in `dir`, on the NATS server at `nats_url`, with its
/// own credentials when `secure`.
pub fn test_agent_config(
    dir: &Path,
    node: &str,
    nats_url: &str,
    secure: Option<&Secure>,
) -> AgentConfig {
    // The test driver opens the "migration URI" other agents probe in
    // pre-flight in-process (it cannot migrate, though).
    let uri = format!("test://{}", dir.join(format!("{node}.xml")).display());
    let mut cfg = AgentConfig::for_node(node);
    cfg.nats_url = nats_url.to_string();
    cfg.libvirt_uri = uri.clone();
    cfg.migration_libvirt_uri = Some(uri);
    cfg.address = Some("127.0.0.1".into());
    cfg.test_drivers = true;
    cfg.heartbeat_interval_ms = 300;
    cfg.inventory_poll_ms = 200;
    cfg.boot_id_file = dir.join(format!("{node}.boot_id"));
    if let Some(s) = secure {
        cfg.nats_creds = Some(s.creds(node));
        cfg.nats_ca = Some(s.ca.clone());
    }
    cfg
}

impl Fleet {
    /// Starts nats-server and the coordinator; add agents with `add_agent`.
    pub fn start() -> Fleet {
        Fleet::start_with_config(|_| {})
    }

    /// Like [`Fleet::start`], the coordinator's config changed by `edit`
    /// first.
    pub fn start_with_config(edit: impl FnOnce(&mut CoordinatorConfig)) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let nats = Nats::start(dir.path());
        let config = dir.path().join("coordinator.toml");
        let mut cfg = coordinator_config();
        edit(&mut cfg);
        write_coordinator_config(&config, &cfg);
        let mut f = Fleet {
            dir,
            nats,
            coordinator: None,
            agents: Vec::new(),
            config,
            agent_edits: Default::default(),
            secure: None,
        };
        f.start_coordinator();
        f
    }

    /// Like [`Fleet::start`] on a secured nats-server: TLS with a test CA,
    /// every principal (coordinator, the agents named here, alice, carol,
    /// bob) with its own nkey and subject permissions. The CLI and agents
    /// use their own credentials.
    pub fn start_secure(agents: &[&str]) -> Fleet {
        let mut f = Fleet::secure_without_coordinator(agents);
        f.start_coordinator();
        f
    }

    /// [`Fleet::start_secure`] without starting the coordinator: nothing
    /// has created the streams and buckets yet.
    pub fn secure_without_coordinator(agents: &[&str]) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("coordinator.toml");
        write_coordinator_config(&config, &coordinator_config());
        let secure = Secure::generate(dir.path(), &config, agents);
        let nats = Nats::start_with_config(dir.path(), &secure.server_conf);
        Fleet {
            dir,
            nats,
            coordinator: None,
            agents: Vec::new(),
            config,
            agent_edits: Default::default(),
            secure: Some(secure),
        }
    }

    /// Environment of a process acting as `principal` (empty when not secured).
    fn security_env(&self, principal: &str) -> Vec<(&'static str, PathBuf)> {
        self.secure
            .as_ref()
            .map(|s| s.env(principal).to_vec())
            .unwrap_or_default()
    }

    /// `NODEMAINT_INSECURE=1` (the `--insecure` flag) for a plain fleet's
    /// daemons, which refuse an unsecured bus without it.
    pub fn insecure_env(&self) -> Vec<(&'static str, &'static str)> {
        match self.secure {
            Some(_) => vec![],
            None => vec![(INSECURE.0, INSECURE.1)],
        }
    }

    pub fn start_coordinator(&mut self) {
        let log = self.dir.path().join("coordinator.log");
        let p = Proc::spawn(
            "coordinator",
            Command::new(bin("coordinator"))
                .args(["serve", "--config"])
                .arg(&self.config)
                .env("NATS_URL", &self.nats.url)
                .envs(self.security_env("coordinator"))
                .envs(self.insecure_env())
                .env("RUST_LOG", "info"),
            log,
        );
        self.coordinator = Some(p);
        // Ready when the API answers.
        wait_for(Duration::from_secs(90), "coordinator to answer", || {
            self.cli("alice", &["node", "list"]).status.success()
        });
    }

    /// Writes `<node>.xml` with the domains and starts its agent.
    pub fn add_agent(&mut self, node: &str, doms: &[Dom]) {
        self.add_agent_with(node, 8192, doms)
    }

    /// Like `add_agent`, with the node's memory in MiB.
    pub fn add_agent_with(&mut self, node: &str, memory_mib: u64, doms: &[Dom]) {
        let xml = self.dir.path().join(format!("{node}.xml"));
        node_xml(&xml, memory_mib, 8, doms);
        std::fs::write(
            self.dir.path().join(format!("{node}.boot_id")),
            format!("boot-{node}-1\n"),
        )
        .unwrap();
        self.agents.push((node.to_string(), None));
        self.start_agent(node);
    }

    /// Writes `<node>.toml`, the node's agent config ([`test_agent_config`]
    /// with the node's [`Fleet::agent_edits`]), and returns its path.
    pub fn agent_config(&self, node: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{node}.toml"));
        let mut cfg =
            test_agent_config(self.dir.path(), node, &self.nats.url, self.secure.as_ref());
        if let Some(edit) = self.agent_edits.get(node) {
            edit(&mut cfg);
        }
        write_agent_config(&path, &cfg);
        path
    }

    pub fn start_agent(&mut self, node: &str) {
        let cfg = self.agent_config(node);
        let log = self.dir.path().join(format!("agent-{node}.log"));
        let p = Proc::spawn(
            &format!("agent {node}"),
            Command::new(bin("node-agent"))
                .arg("--config")
                .arg(cfg)
                .envs(self.insecure_env())
                .env("RUST_LOG", "info"),
            log,
        );
        for (n, slot) in &mut self.agents {
            if n == node {
                *slot = Some(p);
                return;
            }
        }
        panic!("unknown agent {node}");
    }

    pub fn stop_agent(&mut self, node: &str) {
        for (n, slot) in &mut self.agents {
            if n == node {
                if let Some(mut p) = slot.take() {
                    p.kill();
                }
            }
        }
    }

    /// Sends `signal` (e.g. `-STOP`, `-CONT`) to the node's running agent:
    /// a frozen agent holds the commands sent to it until it thaws.
    pub fn signal_agent(&mut self, node: &str, signal: &str) {
        let pid = self
            .agents
            .iter()
            .find(|(n, _)| n == node)
            .and_then(|(_, p)| p.as_ref())
            .unwrap_or_else(|| panic!("agent {node} is not running"))
            .pid();
        let st = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill {signal} {pid} failed");
    }

    pub fn agent_log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("agent-{node}.log")))
            .unwrap_or_default()
    }

    pub fn coordinator_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("coordinator.log")).unwrap_or_default()
    }

    /// Runs the CLI as `user` against this fleet (with `user`'s
    /// credentials when secured).
    pub fn cli(&self, user: &str, args: &[&str]) -> Output {
        cli_command(&self.nats.url, self.dir.path(), user)
            .envs(self.security_env(user))
            .args(args)
            .output()
            .expect("run coordinator CLI")
    }

    /// Runs the CLI with `--output json` and parses stdout; panics with the
    /// CLI's stderr when it fails.
    pub fn cli_json(&self, user: &str, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.cli(user, &all);
        assert!(
            out.status.success(),
            "coordinator {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Waits until `node list` shows every started agent's node registered
    /// with its inventory.
    pub fn wait_registered(&self) {
        let want: Vec<String> = self.agents.iter().map(|(n, _)| n.clone()).collect();
        wait_for(Duration::from_secs(90), "agents to register", || {
            let out = self.cli("alice", &["node", "list", "--output", "json"]);
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                return false;
            };
            want.iter().all(|n| {
                v.as_array().into_iter().flatten().any(|x| {
                    x["name"] == n.as_str()
                        && x["reachable"] == true
                        && x["vms_total"].as_u64().unwrap_or(0) > 0
                })
            })
        });
    }
}

/// Settings that keep the caller's `nats` CLI context and login out of a
/// test's CLI: no context selected, a `nats` configuration directory under
/// `dir` (no context there unless the test writes one).
pub fn no_nats_context<'a>(c: &'a mut Command, dir: &Path) -> &'a mut Command {
    c.env("XDG_CONFIG_HOME", dir);
    for k in ["NATS_CONTEXT", "NATS_NKEY", "NATS_USER", "NATS_PASSWORD"] {
        c.env_remove(k);
    }
    c
}

/// The CLI as `user`, without credentials (the caller's environment's
/// NATS settings removed).
pub fn cli_command(url: &str, dir: &Path, user: &str) -> Command {
    let mut c = Command::new(bin("coordinator"));
    c.env("NATS_URL", url)
        .env("NODEMAINT_USER", user)
        .env_remove("NODEMAINT_PREFIX")
        .env_remove("NATS_CREDS")
        .env_remove("NODEMAINT_CREDS")
        .env_remove("NATS_CA")
        .current_dir(dir);
    no_nats_context(&mut c, dir);
    c
}

pub fn cli_in(url: &str, dir: &Path, user: &str, args: &[&str]) -> Output {
    cli_command(url, dir, user)
        .args(args)
        .output()
        .expect("run coordinator CLI")
}

/// A plain (unsecured) connection that calls the API as `user`: its reply
/// inboxes are `_INBOX.<user>.…`, the only ones the coordinator answers.
pub async fn api_client(url: &str, user: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .custom_inbox_prefix(nodemaint_proto::subjects::inbox_prefix(user))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url} as {user}: {e}"))
}

/// Asserts that a command succeeded, showing its stdout and stderr if not.
pub fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

/// The job of a followed operation's `--output json` lines (its last
/// line carries the finished job).
pub fn job_of(out: &Output) -> serde_json::Value {
    stdout(out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["job"].is_object())
        .map(|v| v["job"].clone())
        .unwrap_or_else(|| panic!("no job line: {}\n{}", stdout(out), stderr(out)))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// [`coordinator_config`] with portal passwords: each user's password is
/// `<user>-pw` (alice-pw, carol-pw, bob-pw). The argon2 hashes use a cheap
/// cost (m=1 MiB, t=1) so that debug-build logins are quick; real configs
/// use `coordinator hash-password` (argon2's default cost).
pub fn coordinator_config_with_passwords() -> CoordinatorConfig {
    let mut cfg = coordinator_config();
    for (user, hash) in [
        ("alice", "$argon2id$v=19$m=1024,t=1,p=1$c2FsdC1hbGljZS0xMjM0$XcFHUfCIYBEf4QMzj18+D1SXbteSin4km/hptqyXvo4"),
        ("carol", "$argon2id$v=19$m=1024,t=1,p=1$c2FsdC1jYXJvbC0xMjM0$oQipEyn94wO25RlCRYqBCK6dZpKA3sH/tA7MyhK2bf4"),
        ("bob", "$argon2id$v=19$m=1024,t=1,p=1$c2FsdC1ib2ItMTIzNDU2$TnYoG0q+NsEAUULs/SrZZNStE7vb/8meFb/vElfGotQ"),
    ] {
        cfg.users.get_mut(user).expect("a test user").password_hash = Some(hash.into());
    }
    cfg
}

impl Fleet {
    /// nats-server and a `coordinator.toml` of [`coordinator_config_with_passwords`],
    /// but no coordinator process: for tests that run the coordinator
    /// in-process (the portal's handler tests). Agents started with
    /// `add_agent` need a coordinator answering before `wait_registered`.
    pub fn start_bare() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let nats = Nats::start(dir.path());
        let config = dir.path().join("coordinator.toml");
        write_coordinator_config(&config, &coordinator_config_with_passwords());
        Fleet {
            dir,
            nats,
            coordinator: None,
            agents: Vec::new(),
            config,
            agent_edits: Default::default(),
            secure: None,
        }
    }

    /// Like [`Fleet::start`] with [`coordinator_config_with_passwords`], the coordinator
    /// also serving the operator portal (`serve --http`) on a free port.
    /// Returns the fleet and the portal's base URL (`http://127.0.0.1:PORT`).
    pub fn start_with_portal() -> (Fleet, String) {
        let mut f = Fleet::start_bare();
        let port = free_port();
        let log = f.dir.path().join("coordinator.log");
        let p = Proc::spawn(
            "coordinator",
            Command::new(bin("coordinator"))
                .args(["serve", "--config"])
                .arg(&f.config)
                .args(["--http", &format!("127.0.0.1:{port}")])
                .env("NATS_URL", &f.nats.url)
                .envs(f.insecure_env())
                .env("RUST_LOG", "info"),
            log,
        );
        f.coordinator = Some(p);
        wait_for(Duration::from_secs(20), "coordinator to answer", || {
            f.cli("alice", &["node", "list"]).status.success()
        });
        wait_for(Duration::from_secs(10), "portal to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        (f, format!("http://127.0.0.1:{port}"))
    }
}

/// A stand-in `ovs` command (post-reboot check tests): `monitor services` prints Upstart-style lines
/// from a state file; `start services` starts them all.
pub fn fake_ovs(dir: &std::path::Path, stopped: &[&str]) -> std::path::PathBuf {
    let state = dir.join("ovs.state");
    let mut lines = String::new();
    for svc in ["ovs-workers", "ovs-watcher-framework", "ovs-arakoon-voldrv"] {
        let up = !stopped.contains(&svc);
        lines.push_str(&format!("{svc} {}\n", if up { "up" } else { "down" }));
    }
    std::fs::write(&state, lines).unwrap();
    let script = dir.join("ovs");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
state={state}
case "$1 $2" in
  "monitor services")
    echo "Running processes:"
    n=100; while read svc st; do n=$((n+1)); [ "$st" = up ] && echo "$svc start/running, process $n"; done < "$state"
    echo; echo "Non-running processes:"
    while read svc st; do [ "$st" = down ] && echo "$svc stop/waiting"; done < "$state"
    ;;
  "start services") sed -i 's/ down$/ up/' "$state" ;;
  *) echo "usage: ovs monitor services | ovs start services" >&2; exit 2 ;;
esac
"#,
            state = state.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}
