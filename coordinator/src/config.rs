//! Coordinator configuration (TOML), e.g. `deploy/coordinator.toml`:
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
    /// NATS credentials file (mode 0600; `NATS_CREDS` wins).
    #[serde(default)]
    pub nats_creds: Option<PathBuf>,
    /// CA of the NATS servers' TLS certificates (`NATS_CA` wins).
    #[serde(default)]
    pub nats_ca: Option<PathBuf>,
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    #[serde(default)]
    pub limits: Limits,
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

/// Migration timeouts: completion scaled by memory (Nova's and KubeVirt's
/// completion timeout per GiB) and a progress timeout (KubeVirt's 150 s).
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationTimeouts {
    #[serde(default = "default_per_gib")]
    pub timeout_per_gib_s: u32,
    #[serde(default = "default_floor")]
    pub timeout_floor_s: u32,
    #[serde(default = "default_progress")]
    pub progress_timeout_s: u32,
}

impl Default for MigrationTimeouts {
    fn default() -> Self {
        MigrationTimeouts {
            timeout_per_gib_s: default_per_gib(),
            timeout_floor_s: default_floor(),
            progress_timeout_s: default_progress(),
        }
    }
}

impl MigrationTimeouts {
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
    /// NATS credentials and CA: the environment's, else the config's.
    pub fn nats_security(&self) -> nodemaint_proto::bus::Security {
        nodemaint_proto::bus::Security::from_env().or(nodemaint_proto::bus::Security {
            creds: self.nats_creds.clone(),
            ca: self.nats_ca.clone(),
        })
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
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
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
    fn migration_timeout_scales_with_memory_above_a_floor() {
        let t = MigrationTimeouts {
            timeout_per_gib_s: 800,
            timeout_floor_s: 60,
            progress_timeout_s: 150,
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
}
