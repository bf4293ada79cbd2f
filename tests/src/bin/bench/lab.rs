//! The benchmark lab (`deploy/lab` with its own prefix, subnet and NATS port) and `virsh domjobinfo`.

use crate::*;

pub const LAB_DIR: &str = "/run/nm-bench";
pub const LAB_PREFIX: &str = "nmb";
pub const LAB_SUBNET: &str = "10.78.0";
pub const LAB_NATS_PORT: u16 = 4322;

/// A lab brought up by `deploy/lab up` and taken down (same environment)
/// when dropped, whatever happened in between.
pub struct Lab {
    pub env: Vec<(String, String)>,
    pub nats_url: String,
}

impl Lab {
    pub fn command(&self) -> std::process::Command {
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

    pub fn up(
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

    pub fn addr(&self, i: usize) -> String {
        format!("{LAB_SUBNET}.{}", 10 + i)
    }

    pub fn uri(&self, i: usize) -> String {
        format!("qemu+tcp://{}/system", self.addr(i))
    }

    pub fn lab_virt_type(&self) -> String {
        std::fs::read_to_string(Path::new(LAB_DIR).join("lab.env"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VIRT_TYPE=").map(str::to_string))
            })
            .unwrap_or_else(|| "?".into())
    }

    /// Raw virsh live migration with the seed's flags.
    pub fn migrate_cmd(&self, vm: &str, from: usize, to: usize) -> tokio::process::Command {
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
    pub async fn jobinfo(&self, vm: &str, i: usize) -> Option<JobInfo> {
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
    pub async fn domstate(&self, vm: &str, i: usize) -> Option<String> {
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
pub struct JobInfo {
    pub elapsed_ms: f64,
    pub data_mib: f64,
    pub bandwidth_mibs: f64,
    pub downtime_ms: f64,
}

impl JobInfo {
    pub fn parse(s: &str) -> Option<JobInfo> {
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
