//! nats-server + coordinator + sim-fleet, shared by `bench latency` and `bench rolling`.

use crate::*;

/// nats-server + `coordinator serve` with a `bench` user (Level2), in a
/// temporary directory; everything killed on drop.
pub struct SimStack {
    // Dropped in this order: agents, coordinator, nats-server, directory.
    pub sim: Option<Proc>,
    pub _coordinator: Proc,
    pub nats: Nats,
    pub dir: tempfile::TempDir,
}

impl SimStack {
    /// `edit` changes the coordinator's config (user `bench`, defaults).
    pub async fn start(edit: impl FnOnce(&mut CoordinatorConfig)) -> Result<(SimStack, Api)> {
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

    pub fn start_fleet(&mut self, args: &[String]) {
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

    pub fn sim_log(&self) -> String {
        self.sim.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }
}
