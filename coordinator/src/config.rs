//! Coordinator configuration (TOML); the packaged example is `deploy/etc/coordinator.toml`:
//!
//! ```toml
//! nats_url = "nats://127.0.0.1:4222"   # or a list: "nats://a:4222,nats://b:4222"
//! nats_replicas = 1                     # 3 on a 3-node JetStream cluster
//! lease_ttl_s = 6                       # 15 on a cluster (outlasts a stream leader election)
//! job_retention_s = 2592000             # finished jobs are deleted after 30 days
//! [users.alice]
//! groups = ["Level2"]
//! [users.bob]
//! groups = ["Level1"]
//! [limits]
//! per_source = 2       # outbound migrations per node
//! per_destination = 2  # inbound migrations per node
//! global = 5           # migrations in the whole fleet
//! [migration]
//! timeout_per_gib_s = 800  # completion timeout per GiB of VM memory
//! timeout_floor_s = 60     # never less than this
//! progress_timeout_s = 150 # abort when no progress for this long
//! libvirt_uri = "qemu+tcp://{address}/system"  # where a destination's libvirt is reached
//! migrate_uri = "tcp://{address}"              # and its hypervisor's migration stream
//! addresses = { node1 = "10.0.0.11" }          # win over the address a node reports
//! [preflight]
//! max_nodes_in_maintenance = 2  # 0 = no limit
//! headroom_percent = 10         # capacity to keep free after a drain
//! [portal]                     # `serve --http`; every key optional
//! header_timeout_s = 10        # a request's headers must arrive within this
//! body_timeout_s = 30          # and its body within this
//! max_connections = 256        # more wait in the listen queue
//! session_idle_s = 28800       # a session ends after 8 h without a request
//! session_lifetime_s = 43200   # and 12 h after login in any case
//! login_failures_per_user = 5  # failed logins per window before 429
//! login_failures_per_address = 20
//! login_window_s = 300
//! secure_cookies = false       # true behind a TLS-terminating proxy
//! tls_cert = "/etc/nodemaint/portal.crt"  # serve HTTPS (PEM chain and key)
//! tls_key = "/etc/nodemaint/portal.key"
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Groups allowed to change the fleet (maintenance, enable, move, start…).
pub const OPERATOR_GROUPS: [&str; 2] = ["Level2", "Level3"];

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    #[serde(default = "default_nats_url")]
    pub nats_url: String,
    #[serde(default = "default_prefix")]
    pub subject_prefix: String,
    /// NATS credentials file, mode 0600: nodemaint's own (gen-auth's
    /// creds/NAME.creds) or a NATS .creds file. The environment
    /// (`NODEMAINT_CREDS`, `NATS_CREDS`, `NATS_NKEY`, …) and flags win.
    #[serde(default)]
    pub nats_creds: Option<PathBuf>,
    /// Instead of `nats_creds`: a file holding the coordinator's nkey seed
    /// (gen-auth's creds/NAME.nk).
    #[serde(default)]
    pub nats_nkey: Option<PathBuf>,
    /// The coordinator's NATS principal (gen-auth's `--coordinator`), which
    /// an nkey does not name; default `coordinator`.
    #[serde(default)]
    pub nats_user: Option<String>,
    /// CA of the NATS servers' TLS certificates (`NATS_CA` wins).
    #[serde(default)]
    pub nats_ca: Option<PathBuf>,
    /// Login and TLS given on `serve`'s command line: they win over the
    /// environment and this file.
    #[serde(skip)]
    pub nats_flags: nodemaint_proto::bus::Security,
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    #[serde(default)]
    pub limits: Limits,
    /// How a drain paces its migrations (`[drain]`).
    #[serde(default)]
    pub drain: DrainPacing,
    /// Default graceful stop timeout of stop commands.
    #[serde(default = "default_stop_timeout")]
    pub stop_graceful_timeout_s: u32,
    #[serde(default)]
    pub migration: MigrationTimeouts,
    #[serde(default)]
    pub preflight: Preflight,
    /// Copies of each stream and KV bucket the coordinator creates: 1 on a
    /// single server, 3 on a 3-node JetStream cluster.
    #[serde(default = "one")]
    pub nats_replicas: usize,
    /// Leader lease TTL: a standby takes over this long after the leader
    /// died. On a JetStream cluster it must outlast a stream leader election
    /// (up to ~10 s after a server dies, during which no replica can renew
    /// the lease): 15 there; 6 on a single server.
    #[serde(default = "six")]
    pub lease_ttl_s: u64,
    /// A finished job's record is deleted this long after it ended (its
    /// events stay in the events stream, whose own limits apply).
    #[serde(default = "thirty_days")]
    pub job_retention_s: u64,
    /// The operator portal's server, session and login settings.
    #[serde(default)]
    pub portal: PortalConfig,
}

/// The operator portal (`serve --http`): what a slow or hostile client may
/// hold, how long a session lives, how many wrong passwords are tried, TLS.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PortalConfig {
    /// A connection whose request headers are not complete within this is
    /// closed (also an idle keep-alive connection).
    #[serde(default = "ten")]
    pub header_timeout_s: u64,
    /// A request body not complete within this is answered 408 and the
    /// connection closed.
    #[serde(default = "thirty")]
    pub body_timeout_s: u64,
    /// Connections served at once; further ones wait in the listen queue
    /// until one ends (live pages hold one each).
    #[serde(default = "max_connections")]
    pub max_connections: usize,
    /// A session ends after this long without a request…
    #[serde(default = "eight_hours")]
    pub session_idle_s: u64,
    /// …and this long after its login, however active.
    #[serde(default = "twelve_hours")]
    pub session_lifetime_s: u64,
    /// Failed logins of one user name within `login_window_s` after which
    /// further attempts are answered 429 without checking the password.
    #[serde(default = "five")]
    pub login_failures_per_user: u32,
    /// The same per client address (IPv6: per /64).
    #[serde(default = "twenty")]
    pub login_failures_per_address: u32,
    #[serde(default = "five_minutes")]
    pub login_window_s: u64,
    /// Mark cookies `Secure` although the portal serves plain HTTP: behind
    /// a proxy that terminates TLS. Always on with `tls_cert`.
    #[serde(default)]
    pub secure_cookies: bool,
    /// PEM certificate chain and private key: the portal serves HTTPS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl Default for PortalConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

fn ten() -> u64 {
    10
}
fn thirty() -> u64 {
    30
}
fn max_connections() -> usize {
    256
}
fn eight_hours() -> u64 {
    8 * 3600
}
fn twelve_hours() -> u64 {
    12 * 3600
}
fn five() -> u32 {
    5
}
fn twenty() -> u32 {
    20
}
fn five_minutes() -> u64 {
    300
}

/// Migrations: timeouts (completion scaled by memory, Nova's and
/// KubeVirt's completion timeout per GiB, and a progress timeout,
/// KubeVirt's 150 s), and where a destination is reached. The URIs come from
/// here, never from the node: a node reports only its address, which must be
/// a plain host (see [`nodemaint_proto::guard`]), and `addresses` pins it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationTimeouts {
    #[serde(default = "default_per_gib")]
    pub timeout_per_gib_s: u32,
    #[serde(default = "default_floor")]
    pub timeout_floor_s: u32,
    #[serde(default = "default_progress")]
    pub progress_timeout_s: u32,
    /// Template of a destination's libvirt URI (`{address}`, `{node}`):
    /// what the source's libvirt opens to migrate, and what pre-flight probes.
    #[serde(default = "default_libvirt_uri")]
    pub libvirt_uri: String,
    /// Template of the hypervisor's migration stream URI.
    #[serde(default = "default_migrate_uri")]
    pub migrate_uri: String,
    /// Node addresses that win over the ones nodes report in heartbeats.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub addresses: BTreeMap<String, String>,
    /// Test fleets only (the fast tests on libvirt's `test:` driver and
    /// `sim-fleet`'s `sim:`): a node's reported libvirt URI of one of these
    /// two drivers, which open no connection and run nothing, is used as
    /// it is (a test-driver node's URI names its own XML file).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test_drivers: bool,
    /// Escalation of live migrations that do not converge; requests may
    /// lower the ceiling, permit post-copy or turn auto-converge off.
    #[serde(default)]
    pub converge: nodemaint_proto::model::ConvergePolicy,
}

impl Default for MigrationTimeouts {
    fn default() -> Self {
        MigrationTimeouts {
            timeout_per_gib_s: default_per_gib(),
            timeout_floor_s: default_floor(),
            progress_timeout_s: default_progress(),
            libvirt_uri: default_libvirt_uri(),
            migrate_uri: default_migrate_uri(),
            addresses: BTreeMap::new(),
            test_drivers: false,
            converge: Default::default(),
        }
    }
}

fn default_libvirt_uri() -> String {
    "qemu+tcp://{address}/system".into()
}
fn default_migrate_uri() -> String {
    "tcp://{address}".into()
}

impl MigrationTimeouts {
    /// The templates and addresses are usable: each renders to an allowed
    /// URI (checked with a sample node), each pinned address is plain.
    pub fn validate(&self) -> Result<(), String> {
        use nodemaint_proto::guard;
        for t in [&self.libvirt_uri, &self.migrate_uri] {
            if !t.contains("{address}") && !t.contains("{node}") {
                return Err(format!(
                    "migration template {t:?} names no {{address}} or {{node}}"
                ));
            }
        }
        let sample = |t: &str| guard::render(t, "node1", "192.0.2.1");
        guard::check_libvirt_uri(&sample(&self.libvirt_uri), self.test_drivers)
            .map_err(|e| format!("migration.libvirt_uri {:?}: {e}", self.libvirt_uri))?;
        guard::check_migrate_uri(&sample(&self.migrate_uri))
            .map_err(|e| format!("migration.migrate_uri {:?}: {e}", self.migrate_uri))?;
        for (node, addr) in &self.addresses {
            nodemaint_proto::subjects::validate_token(node)
                .map_err(|e| format!("migration.addresses: {e}"))?;
            guard::validate_address(addr)
                .map_err(|e| format!("migration.addresses.{node}: {e}"))?;
        }
        Ok(())
    }

    /// Where `node` is reached for migrations and probes: (libvirt URI,
    /// migration URI) from the templates, over its pinned address or else
    /// the one it reports, both checked; `Err` says why not. The libvirt
    /// URI the node reports is used only with `test_drivers`, and only when
    /// it is a `test:` or `sim:` one.
    pub fn destination(
        &self,
        node: &str,
        reported: &str,
        reported_uri: &str,
    ) -> Result<(String, String), String> {
        use nodemaint_proto::guard;
        let address = self
            .addresses
            .get(node)
            .map(String::as_str)
            .unwrap_or(reported);
        if address.is_empty() {
            return Err(format!(
                "node {node} has no migration address (set `address` in its agent config, \
                 or migration.addresses in the coordinator's)"
            ));
        }
        nodemaint_proto::subjects::validate_token(node).map_err(|e| e.to_string())?;
        guard::validate_address(address).map_err(|e| format!("node {node}: {e}"))?;
        let test_uri = self.test_drivers
            && guard::TEST_DRIVERS
                .iter()
                .any(|d| reported_uri.starts_with(&format!("{d}:")));
        let libvirt = if test_uri {
            reported_uri.to_string()
        } else {
            guard::render(&self.libvirt_uri, node, address)
        };
        let migrate = guard::render(&self.migrate_uri, node, address);
        guard::check_libvirt_uri(&libvirt, self.test_drivers)
            .and_then(|()| guard::check_migrate_uri(&migrate))
            .map_err(|e| format!("node {node}: {e}"))?;
        Ok((libvirt, migrate))
    }

    /// The completion timeout of a VM of `memory_mib`.
    pub fn completion_s(&self, memory_mib: u64) -> u32 {
        let scaled = (memory_mib * u64::from(self.timeout_per_gib_s)).div_ceil(1024);
        (scaled.min(u64::from(u32::MAX)) as u32).max(self.timeout_floor_s.max(1))
    }
}

/// Checks every maintenance start must pass (and `--dry-run` shows).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Preflight {
    /// Nodes allowed in maintenance at once, this one included (0 = no limit).
    #[serde(default)]
    pub max_nodes_in_maintenance: usize,
    /// Percent of every destination's memory to keep free after the plan.
    #[serde(default)]
    pub headroom_percent: u32,
}

fn one() -> usize {
    1
}
fn six() -> u64 {
    6
}
fn thirty_days() -> u64 {
    30 * 24 * 3600
}
fn default_per_gib() -> u32 {
    800
}
fn default_floor() -> u32 {
    60
}
fn default_progress() -> u32 {
    150
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    #[serde(default)]
    pub groups: Vec<String>,
    /// argon2 hash for the web portal; the CLI trusts NATS authentication.
    #[serde(default)]
    pub password_hash: Option<String>,
}

/// Migration concurrency limits: the planner's type (`[limits]`).
pub use nodemaint_planner::Limits;

/// `[drain]`: how many migrations a drain keeps in flight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainPacing {
    /// `fixed` (the per-source limit) or `adaptive` (start there, add one
    /// while the drain's throughput rises, back off when it falls or a
    /// migration stops converging); a request may choose either.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// The most an adaptive drain goes to (0: the global limit); the
    /// per-destination and global limits still hold.
    #[serde(default)]
    pub adaptive_max: usize,
    /// An adaptive drain measures its throughput over windows this long.
    #[serde(default = "default_adaptive_window_ms")]
    pub adaptive_window_ms: u64,
}

fn default_adaptive_window_ms() -> u64 {
    2000
}

impl Default for DrainPacing {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    #[default]
    Fixed,
    Adaptive,
}

impl DrainPacing {
    /// Whether a drain requested with `r` is adaptive.
    pub fn adaptive(&self, r: nodemaint_proto::pb::Concurrency) -> bool {
        use nodemaint_proto::pb::Concurrency as C;
        match r {
            C::Configured => self.concurrency == Concurrency::Adaptive,
            C::Fixed => false,
            C::Adaptive => true,
        }
    }

    /// The adaptive ceiling under `limits`.
    pub fn max(&self, limits: &Limits) -> usize {
        match self.adaptive_max {
            0 => limits.global,
            n => n.min(limits.global),
        }
        .max(1)
    }
}

fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_prefix() -> String {
    nodemaint_proto::subjects::DEFAULT_PREFIX.into()
}
fn default_stop_timeout() -> u32 {
    60
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl CoordinatorConfig {
    /// NATS login and TLS: the flags', else the environment's, else the
    /// config's; the principal is named `nats_user` (else `coordinator`)
    /// when the secret does not name it.
    pub fn nats_security(&self) -> nodemaint_proto::bus::Security {
        let config = nodemaint_proto::bus::Security {
            creds: self.nats_creds.clone(),
            nkey: self.nats_nkey.clone(),
            user: Some(
                self.nats_user
                    .clone()
                    .unwrap_or_else(|| "coordinator".into()),
            ),
            ca: self.nats_ca.clone(),
            ..Default::default()
        };
        self.nats_flags
            .clone()
            .or(nodemaint_proto::bus::Security::from_env())
            .or(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// This config as the TOML [`CoordinatorConfig::load`] reads, every
    /// setting spelled out (unset optional ones left out): what the test
    /// harness and the lab write instead of a copy of the schema.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a coordinator config is representable in TOML")
    }

    /// Parses a config file's text; `path` only names it in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let parse = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let cfg: Self = toml::from_str(text).map_err(|e| parse(e.to_string()))?;
        cfg.migration.validate().map_err(parse)?;
        Ok(cfg)
    }

    /// `Ok` when `user` may change the fleet; otherwise the refusal text.
    pub fn authorize_change(&self, user: &str, action: &str) -> Result<(), String> {
        let groups = self.users.get(user).map(|u| u.groups.as_slice());
        match groups {
            Some(g) if g.iter().any(|g| OPERATOR_GROUPS.contains(&g.as_str())) => Ok(()),
            Some(g) => {
                Err(format!(
                "user {user:?} (groups: {}) may not {action}: group Level2 or Level3 is required",
                if g.is_empty() { "none".to_string() } else { g.join(", ") }
            ))
            }
            None => Err(format!(
                "unknown user {user:?} may not {action}: group Level2 or Level3 is required \
                 (users and groups are configured in the coordinator's config)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CoordinatorConfig {
        toml::from_str(
            r#"
            [users.alice]
            groups = ["Level2"]
            [users.carol]
            groups = ["Level3", "admins"]
            [users.bob]
            groups = ["Level1"]
            "#,
        )
        .unwrap()
    }

    #[test]
    fn level2_and_level3_may_change() {
        assert!(cfg().authorize_change("alice", "x").is_ok());
        assert!(cfg().authorize_change("carol", "x").is_ok());
    }

    #[test]
    fn others_are_told_which_group_is_needed() {
        let e = cfg().authorize_change("bob", "enable node1").unwrap_err();
        assert!(
            e.contains("Level1") && e.contains("Level2 or Level3"),
            "{e}"
        );
        let e = cfg().authorize_change("mallory", "move vm").unwrap_err();
        assert!(e.contains("unknown user"), "{e}");
    }

    #[test]
    fn defaults() {
        let c = CoordinatorConfig::default();
        assert_eq!(c.limits.global, 5);
        assert!(c.users.is_empty());
        assert_eq!(c.preflight.max_nodes_in_maintenance, 0);
    }

    #[test]
    fn limits_are_the_planners_with_defaults_per_field() {
        let c: CoordinatorConfig = toml::from_str("[limits]\nglobal = 3\n").unwrap();
        let want = nodemaint_planner::Limits {
            global: 3,
            ..Default::default()
        };
        assert_eq!(c.limits, want);
        assert_eq!((c.limits.per_source, c.limits.per_destination), (2, 2));
        let typo = toml::from_str::<CoordinatorConfig>("[limits]\nglobl = 3\n");
        assert!(typo.is_err(), "an unknown key is refused");
    }

    #[test]
    fn drain_pacing_is_fixed_unless_configured_or_requested() {
        use nodemaint_proto::pb::Concurrency as C;
        let d = CoordinatorConfig::default().drain;
        assert!(!d.adaptive(C::Configured) && d.adaptive(C::Adaptive));
        assert_eq!(d.adaptive_window_ms, 2000);
        let c: CoordinatorConfig = toml::from_str(
            "[limits]\nglobal = 4\n[drain]\nconcurrency = \"adaptive\"\nadaptive_max = 9\n",
        )
        .unwrap();
        assert!(c.drain.adaptive(C::Configured) && !c.drain.adaptive(C::Fixed));
        assert_eq!(c.drain.max(&c.limits), 4, "the global limit caps it");
        let bad = toml::from_str::<CoordinatorConfig>("[drain]\nconcurrency = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("fixed") && bad.contains("adaptive"), "{bad}");
    }

    #[test]
    fn migration_timeout_scales_with_memory_above_a_floor() {
        let t = MigrationTimeouts {
            timeout_per_gib_s: 800,
            timeout_floor_s: 60,
            progress_timeout_s: 150,
            ..Default::default()
        };
        assert_eq!(t.completion_s(64), 60); // 50 s scaled: the floor wins
        assert_eq!(t.completion_s(4096), 3200);
        assert_eq!(t.completion_s(1536), 1200);
    }

    #[test]
    fn rendered_configs_load_back_unchanged() {
        let mut c = cfg();
        c.users.get_mut("alice").unwrap().password_hash = Some("$argon2id$v=19$x".into());
        c.nats_creds = Some("/etc/nodemaint/coordinator.creds".into());
        c.limits.global = 9;
        c.migration.progress_timeout_s = 30;
        c.preflight.headroom_percent = 10;
        c.nats_replicas = 3;
        for cfg in [CoordinatorConfig::default(), c] {
            let text = cfg.to_toml();
            let back = CoordinatorConfig::from_toml(&text, Path::new("rendered.toml"))
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(back.to_toml(), text);
        }
        let text = CoordinatorConfig::default().to_toml();
        assert!(
            !text.contains("nats_creds"),
            "unset options are left out: {text}"
        );
    }

    #[test]
    fn destinations_come_from_the_templates_over_a_plain_address() {
        let mut m = MigrationTimeouts::default();
        assert_eq!(
            m.destination("n2", "10.0.0.2", "qemu+ext:///system?command=/bin/sh")
                .unwrap(),
            ("qemu+tcp://10.0.0.2/system".into(), "tcp://10.0.0.2".into())
        );
        // What a compromised node reports as its address is not used.
        for evil in [
            "x/system?command=/bin/touch",
            "10.0.0.2/system?socket=/tmp/s",
            "-oProxyCommand=id",
            "10.0.0.2 extra",
        ] {
            let e = m.destination("n2", evil, "").unwrap_err();
            assert!(e.contains("invalid address"), "{evil}: {e}");
        }
        assert!(m
            .destination("n2", "", "")
            .unwrap_err()
            .contains("no migration address"));
        // A pinned address wins over the reported one.
        m.addresses.insert("n2".into(), "10.9.9.2".into());
        assert_eq!(
            m.destination("n2", "x/system?command=/bin/touch", "")
                .unwrap()
                .0,
            "qemu+tcp://10.9.9.2/system"
        );
        // Test drivers only when allowed: a template of one, or the URI a
        // node reports when it is a test-driver one.
        let sim = "sim://n2";
        assert_eq!(
            m.destination("n2", "n2", sim).unwrap().0,
            "qemu+tcp://10.9.9.2/system"
        );
        m.test_drivers = true;
        assert_eq!(m.destination("n2", "n2", sim).unwrap().0, sim);
        let evil = "qemu+ext:///system?command=/bin/sh";
        assert_eq!(
            m.destination("n2", "n2", evil).unwrap().0,
            "qemu+tcp://10.9.9.2/system"
        );
        m.test_drivers = false;
        m.libvirt_uri = "sim://{node}".into();
        assert!(m.validate().unwrap_err().contains("sim"));
        m.test_drivers = true;
        m.validate().unwrap();
    }

    #[test]
    fn unsafe_migration_templates_are_refused_when_the_config_loads() {
        for (text, needle) in [
            (
                "[migration]\nlibvirt_uri = 'qemu+ext://{address}/system?command=/bin/sh'",
                "refused",
            ),
            (
                "[migration]\nlibvirt_uri = 'qemu+tcp://{address}/system?socket=/x'",
                "refused",
            ),
            (
                "[migration]\nlibvirt_uri = 'qemu+unix://{address}/system'",
                "qemu+unix",
            ),
            ("[migration]\nlibvirt_uri = 'test:///default'", "names no"),
            ("[migration]\nmigrate_uri = 'unix://{address}'", "unix"),
            (
                "[migration]\naddresses = { n1 = 'h/system?command=x' }",
                "invalid address",
            ),
        ] {
            let e = CoordinatorConfig::from_toml(text, Path::new("c.toml")).unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
        let ok = "[migration]\nlibvirt_uri = 'qemu+ssh://root@{address}/system'\n\
                  addresses = { n1 = '10.0.0.1' }";
        let c = CoordinatorConfig::from_toml(ok, Path::new("c.toml")).unwrap();
        assert_eq!(
            CoordinatorConfig::from_toml(&c.to_toml(), Path::new("c.toml"))
                .unwrap()
                .to_toml(),
            c.to_toml()
        );
    }
}
