//! Agent configuration: a TOML file, overridden by flags and environment.
//!
//! ```toml
//! node = "node1"                         # this node's name (a subject token)
//! nats_url = "nats://10.77.0.1:4222"    # or a list: "nats://a:4222,nats://b:4222"
//! libvirt_uri = "qemu:///system"         # any libvirt URI, e.g. test:///abs/node.xml
//! address = "10.77.0.11"                 # how other nodes reach this one (migrations)
//! heartbeat_interval_ms = 2000
//! boot_id_file = "/proc/sys/kernel/random/boot_id"
//!
//! [[checks]]                             # post-reboot checks, see `checks`
//! name = "ovs"
//! type = "ovs_services"
//! command = "ovs monitor services"
//! start = "ovs start services"
//!
//! [hooks]                                # what `rolling start --hook NAME` runs here
//! reboot = "systemctl reboot"            # (sh -c, as the agent's user)
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub node: String,
    #[serde(default = "default_nats_url")]
    pub nats_url: String,
    /// NATS credentials file of this node, mode 0600: nodemaint's own
    /// (gen-auth's creds/NODE.creds) or a NATS .creds file. Flags and their
    /// environment variables (`--creds`, `--nkey`, `NODEMAINT_CREDS`) win.
    #[serde(default)]
    pub nats_creds: Option<PathBuf>,
    /// Instead of `nats_creds`: a file holding this node's nkey seed
    /// (gen-auth's creds/NODE.nk).
    #[serde(default)]
    pub nats_nkey: Option<PathBuf>,
    /// CA of the NATS servers' TLS certificates (`--ca`/`NATS_CA` win).
    #[serde(default)]
    pub nats_ca: Option<PathBuf>,
    /// Login and TLS of the command line and environment (not a key of
    /// the file): they win over it.
    #[serde(skip)]
    pub nats_flags: nodemaint_proto::bus::Security,
    #[serde(default = "default_libvirt_uri")]
    pub libvirt_uri: String,
    /// Address other nodes use for migration to this node. Without it the
    /// node can still run commands but cannot be a migration destination.
    #[serde(default)]
    pub address: Option<String>,
    /// libvirt URI other nodes use to migrate here; defaults to
    /// `qemu+tcp://<address>/system`.
    #[serde(default)]
    pub migration_libvirt_uri: Option<String>,
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// How often the domain list is polled for changes; it is published
    /// only when it changed (the heartbeat carries its generation, so a
    /// coordinator that missed one re-reads the last from the stream).
    #[serde(default = "default_inventory_poll_ms")]
    pub inventory_poll_ms: u64,
    /// The list is published in full at least this often even unchanged, so
    /// the events stream (whose events expire after 7 days) always holds
    /// every node's current list.
    #[serde(default = "default_inventory_resync_ms")]
    pub inventory_resync_ms: u64,
    #[serde(default = "default_boot_id_file")]
    pub boot_id_file: PathBuf,
    #[serde(default = "default_prefix")]
    pub subject_prefix: String,
    /// Graceful shutdown timeout when a stop command gives none.
    #[serde(default = "default_stop_timeout")]
    pub stop_graceful_timeout_s: u32,
    /// Migration timeout when a command gives none.
    #[serde(default = "default_migration_timeout")]
    pub migration_timeout_s: u32,
    /// Abort a migration whose remaining data made no new low for this long,
    /// when a command gives none.
    #[serde(default = "default_progress_timeout")]
    pub migration_progress_timeout_s: u32,
    /// Local working directory (logs of hooks); optional.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Domain XML template for VMs created from a spec (see
    /// `hypervisor::template`); the built-in minimal guest when absent.
    #[serde(default)]
    pub guest_template: Option<PathBuf>,
    /// Post-reboot service checks (see `checks`), run by `node check`.
    #[serde(default)]
    pub checks: Vec<crate::checks::CheckConfig>,
    /// The hooks the coordinator may ask for by name (`RunHook`), e.g.
    /// `reboot = "systemctl reboot"`: the coordinator never sends a
    /// command line, so no API user can run one of their own here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hooks: BTreeMap<String, String>,
    /// Also open libvirt's `test:` and the simulated `sim:` URIs as
    /// migration destinations and probes (the fast tests, `sim-fleet`);
    /// otherwise only `qemu+tcp`, `qemu+tls` and `qemu+ssh` to a plain address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test_drivers: bool,
    /// Commands executed at the same time (migrations, stops, …).
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_commands: usize,
    /// Serve Prometheus metrics on http://ADDR/metrics; off when unset.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Unused: the coordinator creates the streams and buckets (with its own
    /// `nats_replicas`), and agents wait for them. Accepted so that existing
    /// agent configs keep loading.
    #[serde(default = "default_replicas")]
    pub nats_replicas: usize,
}

fn default_progress_timeout() -> u32 {
    150
}
fn default_replicas() -> usize {
    1
}
fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_libvirt_uri() -> String {
    "qemu:///system".into()
}
fn default_heartbeat_ms() -> u64 {
    2000
}
fn default_inventory_poll_ms() -> u64 {
    1000
}
fn default_inventory_resync_ms() -> u64 {
    3_600_000
}
fn default_boot_id_file() -> PathBuf {
    "/proc/sys/kernel/random/boot_id".into()
}
fn default_prefix() -> String {
    nodemaint_proto::subjects::DEFAULT_PREFIX.into()
}
fn default_stop_timeout() -> u32 {
    60
}
fn default_migration_timeout() -> u32 {
    600
}
fn default_max_concurrent() -> usize {
    4
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
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl AgentConfig {
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// This config as the TOML [`AgentConfig::load`] reads, every setting
    /// spelled out (unset optional ones left out): what the test harness,
    /// the lab and `sim-fleet` write instead of a copy of the schema.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("an agent config is representable in TOML")
    }

    /// A config with defaults for everything but the node name.
    pub fn for_node(node: &str) -> Self {
        toml::from_str(&format!("node = {node:?}")).expect("defaults parse")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        nodemaint_proto::subjects::validate_token(&self.node)
            .map_err(|e| ConfigError::Invalid(format!("node: {e}")))?;
        if self.heartbeat_interval_ms < 100 {
            return Err(ConfigError::Invalid(
                "heartbeat_interval_ms must be at least 100".into(),
            ));
        }
        if self.inventory_resync_ms < self.inventory_poll_ms {
            return Err(ConfigError::Invalid(format!(
                "inventory_resync_ms ({}) must be at least inventory_poll_ms ({})",
                self.inventory_resync_ms, self.inventory_poll_ms
            )));
        }
        crate::checks::validate(&self.checks)
            .map_err(|e| ConfigError::Invalid(format!("checks: {e}")))?;
        for (name, command) in &self.hooks {
            nodemaint_proto::guard::validate_hook_name(name)
                .map_err(|e| ConfigError::Invalid(format!("hooks: {e}")))?;
            if command.trim().is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "hooks: {name} has an empty command"
                )));
            }
        }
        if self.max_concurrent_commands == 0 {
            return Err(ConfigError::Invalid(
                "max_concurrent_commands must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// NATS login and TLS: the flags', else this config's. The principal
    /// is the node (an nkey does not name it).
    pub fn nats_security(&self) -> nodemaint_proto::bus::Security {
        self.nats_flags.clone().or(nodemaint_proto::bus::Security {
            creds: self.nats_creds.clone(),
            nkey: self.nats_nkey.clone(),
            user: Some(self.node.clone()),
            ca: self.nats_ca.clone(),
            ..Default::default()
        })
    }

    pub fn migration_uri(&self) -> String {
        match (&self.migration_libvirt_uri, &self.address) {
            (Some(uri), _) => uri.clone(),
            (None, Some(addr)) => format!("qemu+tcp://{addr}/system"),
            (None, None) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in() {
        let c = AgentConfig::for_node("n1");
        assert_eq!(c.libvirt_uri, "qemu:///system");
        assert_eq!(c.heartbeat_interval_ms, 2000);
        assert_eq!(c.migration_uri(), "");
        c.validate().unwrap();
    }

    #[test]
    fn address_gives_migration_uri() {
        let c = AgentConfig::from_toml("node='a'\naddress='10.0.0.2'", Path::new("x")).unwrap();
        assert_eq!(c.migration_uri(), "qemu+tcp://10.0.0.2/system");
    }

    #[test]
    fn unknown_keys_and_bad_names_are_named() {
        let err = AgentConfig::from_toml("node='a'\nheartbeat=1", Path::new("a.toml")).unwrap_err();
        assert!(err.to_string().contains("heartbeat"), "{err}");
        let c = AgentConfig::for_node("a.b");
        assert!(c.validate().unwrap_err().to_string().contains("a.b"));
    }

    #[test]
    fn rendered_configs_load_back_unchanged() {
        let plain = AgentConfig::for_node("node1").to_toml();
        assert!(
            !plain.contains("nats_creds"),
            "unset options are left out: {plain}"
        );
        let mut c = AgentConfig::from_toml(
            "node='node1'\n[[checks]]\nname='ovs'\ntype='ovs_services'\ncommand='ovs monitor services'\n\
             start='ovs start services'\n\
             [[checks]]\nname='ays'\ntype='ays_status'\ncommand='ays status'\ntimeout_s=5\n\
             [[checks]]\nname='mnt'\ntype='command'\ncommand='mountpoint -q /mnt'\n\
             [[checks]]\nname='libvirtd'\ntype='systemd'\nunit='libvirtd'\n\
             [[checks]]\nname='ssh'\ntype='tcp'\nport=22\n",
            Path::new("checks.toml"),
        )
        .unwrap();
        assert_eq!(c.checks.len(), 5);
        c.nats_creds = Some("/etc/nodemaint/node1.creds".into());
        c.address = Some("10.0.0.11".into());
        c.metrics_listen = Some("127.0.0.1:9100".parse().unwrap());
        c.hooks.insert("reboot".into(), "systemctl reboot".into());
        for cfg in [AgentConfig::for_node("node1"), c] {
            let text = cfg.to_toml();
            let back = AgentConfig::from_toml(&text, Path::new("rendered.toml"))
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            back.validate().unwrap();
            assert_eq!(back.to_toml(), text);
            assert_eq!(back.checks, cfg.checks);
            assert_eq!(back.hooks, cfg.hooks);
        }
    }

    #[test]
    fn hook_names_are_checked() {
        let c = AgentConfig::from_toml(
            "node='a'\n[hooks]\nreboot='systemctl reboot'\n'Bad Name'='x'\n",
            Path::new("a.toml"),
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("hooks") && e.contains("Bad Name"), "{e}");
        let c =
            AgentConfig::from_toml("node='a'\n[hooks]\nreboot=' '\n", Path::new("a.toml")).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("empty"));
    }
}
