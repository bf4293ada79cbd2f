//! The units and packages as shipped: every systemd unit passes
//! `systemd-analyze verify` against a root holding what the packages install
//! (so a unit pointing at a path the package does not fill fails), the
//! coordinator runs as the package's own user (not `DynamicUser=`, whose
//! uid no credentials file can be owned by), and every packaged file exists.
//! The `.deb`s themselves are built by `deploy/package.sh` (cargo-deb).

use nodemaint_tests::{bin, lab, stderr};
use std::path::{Path, PathBuf};
use std::process::Command;

const UNITS: [&str; 3] = [
    "nodemaint-coordinator.service",
    "nodemaint-agent.service",
    "nats-server.service",
];

/// `systemd-analyze`, or None (with the reason printed) outside CI.
fn systemd_analyze() -> Option<PathBuf> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("systemd-analyze".into());
    }
    let why = "systemd-analyze not found (apt-get install systemd)";
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    eprintln!("skipped: {why}");
    None
}

/// A copy of `from` (units: the test edits them) at `to`.
fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("{from:?} -> {to:?}: {e}"));
}

/// A binary at `to`: a hard link where it can (debug binaries are large),
/// else a copy. Never for a file the test edits: that would edit the source.
fn link(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    if std::fs::hard_link(from, to).is_err() {
        copy(from, to);
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let meta = std::fs::symlink_metadata(&src).unwrap();
        if meta.is_symlink() {
            // Unit aliases: relative links stay valid inside the root.
            let target = std::fs::read_link(&src).unwrap();
            let _ = std::os::unix::fs::symlink(target, dst);
        } else if meta.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// A root with the system's units (for targets and dependencies), the
/// shipped units, and each binary where the packages (or, for nats-server,
/// deploy/setup.sh) put it.
fn root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let system = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_dir())
        .expect("the system's unit directory");
    copy_tree(system, &r.join("usr/lib/systemd/system"));
    for unit in UNITS {
        copy(
            &lab::repo().join("deploy/systemd").join(unit),
            &r.join("etc/systemd/system").join(unit),
        );
    }
    link(&bin("coordinator"), &r.join("usr/bin/coordinator"));
    link(&bin("node-agent"), &r.join("usr/bin/node-agent"));
    link(&which("nats-server"), &r.join("usr/local/bin/nats-server"));
    link(&which("kill"), &r.join("bin/kill"));
    root
}

/// The executable `name` on PATH (a file, not a shell builtin).
fn which(name: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .unwrap_or_else(|| panic!("{name} not found on PATH"))
}

fn verify(tool: &Path, root: &Path, unit: &str) -> std::process::Output {
    Command::new(tool)
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(root.join("etc/systemd/system").join(unit))
        .output()
        .unwrap()
}

#[test]
fn every_shipped_unit_verifies_against_what_the_packages_install() {
    let Some(tool) = systemd_analyze() else {
        return;
    };
    let root = root();
    for unit in UNITS {
        let out = verify(&tool, root.path(), unit);
        assert!(out.status.success(), "{unit}: {}", stderr(&out));
        // Warnings too (an unknown key, a missing dependency) fail.
        assert_eq!(stderr(&out).trim(), "", "{unit}");
    }

    // The check bites: the unit as it was (a binary under /usr/local/bin,
    // where no package puts it) fails.
    let unit = root
        .path()
        .join("etc/systemd/system/nodemaint-coordinator.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(
        &unit,
        text.replace("/usr/bin/coordinator", "/usr/local/bin/coordinator"),
    )
    .unwrap();
    let out = verify(&tool, root.path(), "nodemaint-coordinator.service");
    let shipped =
        std::fs::read_to_string(lab::repo().join("deploy/systemd/nodemaint-coordinator.service"))
            .unwrap();
    assert!(
        shipped.contains("ExecStart=/usr/bin/coordinator "),
        "{shipped}"
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/usr/local/bin/coordinator"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_coordinator_runs_as_the_user_its_package_creates() {
    let repo = lab::repo();
    let unit =
        std::fs::read_to_string(repo.join("deploy/systemd/nodemaint-coordinator.service")).unwrap();
    let directives: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert!(directives.contains(&"User=nodemaint"), "{unit}");
    assert!(
        !directives.iter().any(|l| l.starts_with("DynamicUser=")),
        "{unit}"
    );
    let postinst =
        std::fs::read_to_string(repo.join("deploy/debian/coordinator/postinst")).unwrap();
    assert!(
        postinst.contains("adduser --system --group") && postinst.contains("nodemaint"),
        "{postinst}"
    );
    // The packaged config names credentials the service user owns.
    let cfg = std::fs::read_to_string(repo.join("deploy/etc/coordinator.toml")).unwrap();
    assert!(cfg.contains("nats_creds = \"/etc/nodemaint/"), "{cfg}");
}

/// Every file a package lists exists (generated ones are made by
/// deploy/package.sh from the binaries: their generators are tested with the
/// CLI), and the packaged example configs load through the binaries' loaders.
#[test]
fn every_packaged_file_exists_and_the_packaged_configs_load() {
    let repo = lab::repo();
    for (package, dir) in [
        ("nodemaint-coordinator", "coordinator"),
        ("nodemaint-agent", "node-agent"),
    ] {
        let manifest: toml::Value =
            toml::from_str(&std::fs::read_to_string(repo.join(dir).join("Cargo.toml")).unwrap())
                .unwrap();
        let deb = &manifest["package"]["metadata"]["deb"];
        assert_eq!(deb["name"].as_str(), Some(package));
        let assets = deb["assets"].as_array().unwrap();
        assert!(!assets.is_empty());
        for a in assets {
            let src = a[0].as_str().unwrap();
            if src.starts_with("target/") || src.starts_with("../target/") {
                continue; // built or generated by deploy/package.sh
            }
            let path = repo.join(dir).join(src.trim_end_matches('*'));
            assert!(path.exists(), "{package}: {src} does not exist");
        }
        let scripts = deb
            .get("maintainer-scripts")
            .and_then(|s| s.as_str())
            .map(|s| repo.join(dir).join(s));
        if let Some(s) = scripts {
            assert!(s.join("postinst").exists(), "{s:?}");
        }
        let units = deb["systemd-units"]["unit-scripts"].as_str().unwrap();
        let name = deb["systemd-units"]["unit-name"].as_str().unwrap();
        assert!(
            repo.join(dir)
                .join(units)
                .join(format!("{name}.service"))
                .exists(),
            "{package}: unit {name}"
        );
    }
    nodemaint_coordinator::config::CoordinatorConfig::load(
        &repo.join("deploy/etc/coordinator.toml"),
    )
    .unwrap();
    nodemaint_agent::config::AgentConfig::load(&repo.join("deploy/etc/agent.toml")).unwrap();
}
