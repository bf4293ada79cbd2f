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

/// A port free when asked. Released at once, so another process can take it
/// before ours binds it: prefer letting the process bind port 0 (or -1 for
/// nats-server) and report its port; where ports must be known before the
/// start (a NATS cluster's routes), start through [`retry_on_taken_ports`].
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A process exited at start because a port chosen for it was taken
/// meanwhile (its log says "address already in use").
#[derive(Debug)]
pub struct PortTaken {
    pub name: String,
    pub log: String,
}

/// Waits until `ready` holds for processes just started. One that exits
/// first ends the wait: with [`PortTaken`] when its log says a port was
/// taken (see [`retry_on_taken_ports`]), else with a panic showing its log,
/// instead of waiting out the timeout for something that cannot come.
pub fn wait_started(
    procs: &mut [Proc],
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut(&[Proc]) -> bool,
) -> Result<(), PortTaken> {
    let deadline = Instant::now() + timeout;
    loop {
        for p in procs.iter_mut() {
            if !p.is_running() {
                let log = p.log_text();
                if log.contains("address already in use") {
                    return Err(PortTaken {
                        name: p.name.clone(),
                        log,
                    });
                }
                panic!("{} exited while waiting for {what}:\n{log}", p.name);
            }
        }
        if ready(procs) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| format!("--- {}:\n{}", p.name, p.log_text()))
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `start(attempt)` (1, 2, 3) until it does not fail with
/// [`PortTaken`]: for processes that must know ports before they start
/// (members of a NATS cluster route to each other's pre-chosen ports).
/// `start` chooses new ports each time ([`free_port`]) and kills what it
/// started when it fails (dropping its [`Proc`]s does).
pub fn retry_on_taken_ports<T>(
    what: &str,
    mut start: impl FnMut(u32) -> Result<T, PortTaken>,
) -> T {
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        match start(attempt) {
            Ok(t) => return t,
            Err(PortTaken { name, log }) if attempt < ATTEMPTS => {
                let line = log
                    .lines()
                    .find(|l| l.contains("address already in use"))
                    .unwrap_or_default();
                eprintln!("{what}: {name} found a port taken, trying new ports: {line}");
            }
            Err(PortTaken { name, log }) => {
                panic!("{what}: a port was taken {ATTEMPTS} times; {name}'s log:\n{log}")
            }
        }
    }
    unreachable!()
}

/// The ports a nats-server bound, from the file `--ports_file_dir DIR`
/// makes it write once it listens (`<exe>_<pid>.ports`, JSON lists of
/// URLs). With `-1` for a port the server picks a free one itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NatsPorts {
    pub client: u16,
    pub monitoring: Option<u16>,
    pub cluster: Option<u16>,
}

impl NatsPorts {
    /// The ports file of the server `pid` in `dir`, once written whole
    /// (`None` before, or while only part of it is written).
    pub fn read(dir: &Path, pid: u32) -> Option<NatsPorts> {
        let suffix = format!("_{pid}.ports");
        let file = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))?;
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(file.path()).ok()?).ok()?;
        let port = |key: &str| -> Option<u16> {
            let url = v[key].as_array()?.first()?.as_str()?;
            url.rsplit_once(':')?.1.trim_end_matches('/').parse().ok()
        };
        Some(NatsPorts {
            client: port("nats")?,
            monitoring: port("monitoring"),
            cluster: port("cluster"),
        })
    }
}

/// `dir/{stem}-N.{ext}` for the first N not in use (a restarted server's
/// log does not overwrite the first one's).
fn unused_path(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    (1..)
        .map(|n| dir.join(format!("{stem}-{n}.{ext}")))
        .find(|p| !p.exists())
        .unwrap()
}

/// Starts nats-server with `args` and waits for its ports file.
fn spawn_nats(dir: &Path, args: &[&str]) -> Result<(Proc, NatsPorts), PortTaken> {
    let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
    // A directory of its own: a killed server leaves its file behind.
    let ports_dir = tempfile::Builder::new()
        .prefix("nats-ports")
        .tempdir_in(dir)
        .unwrap()
        .keep();
    let mut proc = Proc::spawn(
        "nats-server",
        Command::new(&bin)
            .args(args)
            .arg("--ports_file_dir")
            .arg(&ports_dir),
        unused_path(dir, "nats", "log"),
    );
    let pid = proc.pid();
    let mut ports = None;
    wait_started(
        std::slice::from_mut(&mut proc),
        Duration::from_secs(60),
        "nats-server to listen",
        |_| {
            ports = NatsPorts::read(&ports_dir, pid);
            ports.is_some()
        },
    )?;
    Ok((proc, ports.unwrap()))
}

/// A real nats-server with JetStream in a temporary store.
pub struct Nats {
    pub proc: Proc,
    pub port: u16,
    pub url: String,
    pub dir: PathBuf,
}

impl Nats {
    /// On a client port the server picks (`-p -1`), read from its ports
    /// file: no other process can take it between choosing and binding.
    pub fn start(dir: &Path) -> Nats {
        Self::try_start_on(dir, -1).unwrap_or_else(|t| panic!("{}: {}", t.name, t.log))
    }

    /// On `port` (`-1`: one of the server's choosing); [`PortTaken`] when
    /// it is taken.
    pub fn try_start_on(dir: &Path, port: i32) -> Result<Nats, PortTaken> {
        let store = dir.join("jetstream");
        std::fs::create_dir_all(&store).unwrap();
        let port = port.to_string();
        let (proc, ports) = spawn_nats(
            dir,
            &[
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &port,
                "-sd",
                store.to_str().unwrap(),
            ],
        )?;
        Ok(Nats {
            proc,
            port: ports.client,
            url: format!("nats://127.0.0.1:{}", ports.client),
            dir: dir.to_path_buf(),
        })
    }

    /// Kills the server (SIGKILL: no clean shutdown) and starts it again on
    /// the same port (the clients reconnect there) and JetStream store
    /// (default path only).
    pub fn restart(&mut self) {
        self.proc.kill();
        let port = self.port;
        *self = Nats::try_start_on(&self.dir.clone(), port.into()).unwrap_or_else(|t| {
            panic!(
                "nats-server: its port {port} was taken while it restarted:\n{}",
                t.log
            )
        });
    }
}

impl Nats {
    /// A nats-server on a port of its choosing with JetStream and `extra`
    /// appended to its config file (e.g. `include auth.conf`); the default
    /// path ([`Nats::start`]) takes no config file.
    pub fn start_with_config(dir: &Path, extra: &str) -> Nats {
        let store = dir.join("jetstream");
        std::fs::create_dir_all(&store).unwrap();
        let conf = unused_path(dir, "nats", "conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:-1\"\njetstream {{ store_dir: \"{}\" }}\n{extra}\n",
                store.display()
            ),
        )
        .unwrap();
        let (proc, ports) = spawn_nats(dir, &["-c", conf.to_str().unwrap()])
            .unwrap_or_else(|t| panic!("{}: {}", t.name, t.log));
        Nats {
            proc,
            port: ports.client,
            url: format!("nats://127.0.0.1:{}", ports.client),
            dir: dir.to_path_buf(),
        }
    }
}

/// Waits until a process's log yields something (`find`); panics with the
/// log if the process exits first or on timeout.
pub fn wait_for_log<T>(
    p: &mut Proc,
    timeout: Duration,
    what: &str,
    mut find: impl FnMut(&str) -> Option<T>,
) -> T {
    let mut found = None;
    wait_started(std::slice::from_mut(p), timeout, what, |ps| {
        found = find(&ps[0].log_text());
        found.is_some()
    })
    .unwrap_or_else(|t| panic!("{}: {}", t.name, t.log));
    found.unwrap()
}

/// The address in the first log line saying `"{what} on SCHEME://ADDR/..."`
/// (text or JSON logs): our daemons log where they listen, so the tests can
/// have them bind port 0.
pub fn logged_addr(log: &str, what: &str) -> Option<std::net::SocketAddr> {
    let marker = format!("{what} on ");
    log.lines().find_map(|l| {
        let rest = &l[l.find(&marker)? + marker.len()..];
        let url = rest.split(|c: char| c.is_whitespace() || c == '"').next()?;
        let host_port = url.split_once("://").map_or(url, |(_, r)| r);
        host_port.split('/').next()?.parse().ok()
    })
}

/// Waits for `p` to log that it listens (see [`logged_addr`]).
pub fn wait_listening(p: &mut Proc, what: &str) -> std::net::SocketAddr {
    wait_for_log(
        p,
        Duration::from_secs(30),
        &format!("{what} to listen"),
        |log| logged_addr(log, what),
    )
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
    /// also serving the operator portal (`serve --http`) on a port it
    /// picks (port 0; its log names the bound address).
    /// Returns the fleet and the portal's base URL (`http://127.0.0.1:PORT`).
    pub fn start_with_portal() -> (Fleet, String) {
        let mut f = Fleet::start_bare();
        let log = f.dir.path().join("coordinator.log");
        let mut p = Proc::spawn(
            "coordinator",
            Command::new(bin("coordinator"))
                .args(["serve", "--config"])
                .arg(&f.config)
                .args(["--http", "127.0.0.1:0"])
                .env("NATS_URL", &f.nats.url)
                .envs(f.insecure_env())
                .env("RUST_LOG", "info"),
            log,
        );
        let addr = wait_listening(&mut p, "operator portal");
        f.coordinator = Some(p);
        wait_for(Duration::from_secs(20), "coordinator to answer", || {
            f.cli("alice", &["node", "list"]).status.success()
        });
        (f, format!("http://{addr}"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    /// A port taken between choosing and binding (what `free_port` alone
    /// let happen, failing CI once) no longer fails a start.
    #[test]
    fn a_start_survives_a_port_taken_before_the_server_binds_it() {
        let dir = tempfile::tempdir().unwrap();
        let sub = |name: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = held.local_addr().unwrap().port();

        // What happened before: told to use a port someone took, the server
        // exits at start.
        let taken = Nats::try_start_on(&sub("old"), busy.into())
            .err()
            .expect("a start on a held port fails");
        assert!(
            taken.log.contains("address already in use"),
            "{}",
            taken.log
        );

        // Pre-chosen ports (a cluster's): the start is retried on new ones.
        let mut tried = Vec::new();
        let nats = retry_on_taken_ports("test server", |attempt| {
            let port = if attempt == 1 { busy } else { free_port() };
            tried.push(port);
            Nats::try_start_on(&sub(&format!("retry-{attempt}")), port.into())
        });
        assert_eq!(tried.len(), 2, "{tried:?}");
        assert_eq!(nats.port, tried[1]);
        assert!(TcpStream::connect(("127.0.0.1", nats.port)).is_ok());

        // Nats::start: the server picks its port and reports it.
        for n in [
            Nats::start(&sub("random")),
            Nats::start_with_config(&sub("config"), ""),
        ] {
            assert_ne!(n.port, busy);
            assert_eq!(n.url, format!("nats://127.0.0.1:{}", n.port));
            assert!(TcpStream::connect(("127.0.0.1", n.port)).is_ok());
        }
        drop(held);
    }

    /// A restarted server comes back on its port (clients reconnect there).
    #[test]
    fn a_restarted_server_keeps_its_port() {
        let dir = tempfile::tempdir().unwrap();
        let mut nats = Nats::start(dir.path());
        let port = nats.port;
        let first = nats.proc.pid();
        nats.restart();
        assert_ne!(nats.proc.pid(), first);
        assert_eq!(nats.port, port);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    }

    #[test]
    fn logged_addresses_are_read_from_text_and_json_logs() {
        let text = "2026-12-01T03:40:00Z  INFO nodemaint_coordinator::portal::listen: \
                    operator portal on http://127.0.0.1:41234/\n";
        assert_eq!(
            logged_addr(text, "operator portal"),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        let json =
            r#"{"fields":{"message":"Prometheus metrics on http://127.0.0.1:9100/metrics"}}"#;
        assert_eq!(
            logged_addr(json, "Prometheus metrics"),
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(logged_addr(text, "Prometheus metrics"), None);
    }
}
