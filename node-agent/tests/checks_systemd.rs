//! The systemd check against a stand-in `systemctl` found first on PATH.
//! Its own test binary (one test) because it changes PATH for the process.

#[allow(dead_code)]
use nodemaint_agent::checks;

use checks::{run_checks, CheckConfig, CheckKind};

/// `systemctl is-active UNIT` prints the state kept in `UNIT.state`
/// (default "inactive", exit 3 like systemd); `systemctl start UNIT` makes
/// it active unless `UNIT.broken` exists.
const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
dir=$(dirname "$0")
case "$1" in
is-active)
    state=$(cat "$dir/$2.state" 2>/dev/null || echo inactive)
    echo "$state"
    [ "$state" = active ] ;;
start)
    if [ -e "$dir/$2.broken" ]; then
        echo "Job for $2.service failed because the control process exited with error code." >&2
        exit 1
    fi
    echo active > "$dir/$2.state" ;;
*)
    exit 2 ;;
esac
"#;

fn unit_check(unit: &str) -> CheckConfig {
    CheckConfig {
        name: unit.into(),
        kind: CheckKind::Systemd { unit: unit.into() },
        start: Some(format!("systemctl start {unit}")),
        timeout_s: 5,
    }
}

#[test]
fn systemd_units_are_checked_and_started() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("systemctl");
    std::fs::write(&script, FAKE_SYSTEMCTL).unwrap();
    let mut perms = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).unwrap();
    std::fs::write(dir.path().join("sshd.state"), "active\n").unwrap();
    std::fs::write(dir.path().join("broken.state"), "failed\n").unwrap();
    std::fs::write(dir.path().join("broken.broken"), "").unwrap();
    // Before any runtime thread exists; this binary has only this test.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![dir.path().to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    std::env::set_var("PATH", std::env::join_paths(dirs).unwrap());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let checks = vec![
            unit_check("sshd"),
            unit_check("libvirtd"),
            unit_check("broken"),
        ];
        let rows = |r: &nodemaint_proto::pb::CheckReport| {
            r.services
                .iter()
                .map(|s| (s.service.clone(), s.ok, s.state.clone(), s.start_attempted))
                .collect::<Vec<_>>()
        };
        let r = run_checks(&checks, false).await;
        assert!(!r.all_ok);
        assert_eq!(
            rows(&r),
            vec![
                ("sshd".to_string(), true, "active".to_string(), false),
                ("libvirtd".to_string(), false, "inactive".to_string(), false),
                ("broken".to_string(), false, "failed".to_string(), false),
            ]
        );
        let r = run_checks(&checks, true).await;
        assert!(!r.all_ok);
        assert_eq!(
            rows(&r),
            vec![
                ("sshd".to_string(), true, "active".to_string(), false),
                ("libvirtd".to_string(), true, "active".to_string(), true),
                ("broken".to_string(), false, "failed".to_string(), true),
            ]
        );
        let d = &r.services[2].detail;
        assert!(
            d.contains("systemctl start broken") && d.contains("exit 1"),
            "{d}"
        );
        assert!(d.contains("control process exited with error code"), "{d}");
    });
}
