//! `run_checks` end to end with real processes: stand-in `ovs` and `ays`
//! scripts whose services can be started, hanging commands, exit codes,
//! TCP ports and systemd units.

// Until the module is wired into the library, compile it here directly.
#[allow(dead_code)]
use nodemaint_agent::checks;

use checks::{run_checks, CheckConfig, CheckKind};
use nodemaint_proto::pb;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A stand-in `ovs` (OpenvStorage) command: `monitor services` prints the
/// Upstart-style list from a state file, `start services` starts
/// ovs-arakoon-voldrv (or fails when the file `start-fails` exists).
const FAKE_OVS: &str = r#"#!/bin/sh
dir=$(dirname "$0")
state=$(cat "$dir/ovs.state" 2>/dev/null || echo down)
case "$1 $2" in
"monitor services")
    echo "Running processes:"
    echo "ovs-workers start/running, process 2745"
    echo "ovs-watcher-framework start/running, process 1854"
    [ "$state" = up ] && echo "ovs-arakoon-voldrv start/running, process 4242"
    echo
    echo "Non-running processes:"
    [ "$state" = up ] || echo "ovs-arakoon-voldrv stop/waiting"
    exit 0 ;;
"start services")
    if [ -e "$dir/start-fails" ]; then
        echo "starting ovs-arakoon-voldrv"
        echo "ovs-arakoon-voldrv: cannot open /mnt/db: No such device" >&2
        exit 4
    fi
    echo up > "$dir/ovs.state"
    echo "started ovs-arakoon-voldrv"
    exit 0 ;;
*)
    echo "usage: ovs monitor services | ovs start services" >&2
    exit 2 ;;
esac
"#;

/// A stand-in `ays` (JumpScale) command: `status` prints the table with
/// mongodb HALTED until `start` ran.
const FAKE_AYS: &str = r#"#!/bin/sh
dir=$(dirname "$0")
state=$(cat "$dir/ays.state" 2>/dev/null || echo HALTED)
case "$1" in
status)
    echo "DOMAIN     NAME                 Instance   Prio Status   Ports"
    echo "======================================================================"
    echo
    echo "jumpscale  redis                 system       1 RUNNING  9999"
    printf 'jumpscale  mongodb               main         2 %-8s 27017\n' "$state"
    echo "openvcloud vncproxy              main        10 RUNNING  8091" ;;
start)
    echo RUNNING > "$dir/ays.state" ;;
esac
"#;

struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ovs"), FAKE_OVS).unwrap();
        std::fs::write(dir.path().join("ays"), FAKE_AYS).unwrap();
        Fake { dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// The command line running stand-in `tool` (via `sh SCRIPT`, so that
    /// a freshly written script cannot hit ETXTBSY under parallel tests).
    fn cmd(&self, tool: &str, args: &str) -> String {
        format!("sh '{}' {args}", self.path(tool).display())
    }
    fn ovs_check(&self, start: bool) -> CheckConfig {
        CheckConfig {
            name: "ovs".into(),
            kind: CheckKind::OvsServices {
                command: self.cmd("ovs", "monitor services"),
            },
            start: start.then(|| self.cmd("ovs", "start services")),
            timeout_s: 10,
        }
    }
    fn ays_check(&self) -> CheckConfig {
        CheckConfig {
            name: "ays".into(),
            kind: CheckKind::AysStatus {
                command: self.cmd("ays", "status"),
            },
            start: Some(self.cmd("ays", "start")),
            timeout_s: 10,
        }
    }
}

fn command_check(name: &str, command: &str, timeout_s: u64) -> CheckConfig {
    CheckConfig {
        name: name.into(),
        kind: CheckKind::Command {
            command: command.into(),
        },
        start: None,
        timeout_s,
    }
}

fn summary(r: &pb::CheckReport) -> Vec<(String, String, bool, String, bool)> {
    r.services
        .iter()
        .map(|s| {
            (
                s.check.clone(),
                s.service.clone(),
                s.ok,
                s.state.clone(),
                s.start_attempted,
            )
        })
        .collect()
}

fn row(
    check: &str,
    service: &str,
    ok: bool,
    state: &str,
    started: bool,
) -> (String, String, bool, String, bool) {
    (check.into(), service.into(), ok, state.into(), started)
}

#[tokio::test]
async fn failed_ovs_and_ays_services_are_reported_then_started() {
    let fake = Fake::new();
    let checks = vec![fake.ovs_check(true), fake.ays_check()];

    let r = run_checks(&checks, false).await;
    assert!(!r.all_ok);
    assert_eq!(
        summary(&r),
        vec![
            row("ovs", "ovs-workers", true, "start/running", false),
            row("ovs", "ovs-watcher-framework", true, "start/running", false),
            row("ovs", "ovs-arakoon-voldrv", false, "stop/waiting", false),
            row("ays", "jumpscale/redis/system", true, "RUNNING", false),
            row("ays", "jumpscale/mongodb/main", false, "HALTED", false),
            row("ays", "openvcloud/vncproxy/main", true, "RUNNING", false),
        ]
    );
    // Without --start-failed nothing was started.
    assert!(!fake.path("ovs.state").exists());
    assert!(!fake.path("ays.state").exists());
    // Deterministic: the same state gives the same report.
    assert_eq!(run_checks(&checks, false).await, r);

    let r = run_checks(&checks, true).await;
    assert!(r.all_ok, "{r:#?}");
    assert_eq!(
        summary(&r),
        vec![
            row("ovs", "ovs-workers", true, "start/running", true),
            row("ovs", "ovs-watcher-framework", true, "start/running", true),
            row("ovs", "ovs-arakoon-voldrv", true, "start/running", true),
            row("ays", "jumpscale/redis/system", true, "RUNNING", true),
            row("ays", "jumpscale/mongodb/main", true, "RUNNING", true),
            row("ays", "openvcloud/vncproxy/main", true, "RUNNING", true),
        ]
    );
    assert_eq!(r.services[2].detail, "process 4242");

    // Now everything runs: --start-failed starts nothing and marks nothing.
    let r = run_checks(&checks, true).await;
    assert!(r.all_ok);
    assert!(r.services.iter().all(|s| !s.start_attempted), "{r:#?}");
}

#[tokio::test]
async fn a_failing_start_command_is_reported_in_the_detail() {
    let fake = Fake::new();
    std::fs::write(fake.path("start-fails"), "").unwrap();
    let r = run_checks(&[fake.ovs_check(true)], true).await;
    assert!(!r.all_ok);
    assert!(r.services.iter().all(|s| s.start_attempted), "{r:#?}");
    let failed: Vec<_> = r.services.iter().filter(|s| !s.ok).collect();
    assert_eq!(failed.len(), 1, "{r:#?}");
    let d = &failed[0].detail;
    assert_eq!(failed[0].service, "ovs-arakoon-voldrv");
    assert_eq!(failed[0].state, "stop/waiting");
    assert!(d.contains("start services"), "{d}");
    assert!(d.contains("exit 4"), "{d}");
    assert!(d.contains("cannot open /mnt/db: No such device"), "{d}");
    // The start failed, so the re-checked services that are ok say so too.
    let ok = r.services.iter().find(|s| s.ok).unwrap();
    assert!(ok.detail.contains("exit 4"), "{}", ok.detail);
}

#[tokio::test]
async fn a_check_without_start_command_is_only_rechecked_never_started() {
    let fake = Fake::new();
    let r = run_checks(&[fake.ovs_check(false)], true).await;
    assert!(!r.all_ok);
    assert!(r.services.iter().all(|s| !s.start_attempted));
    assert!(!fake.path("ovs.state").exists());
}

#[tokio::test]
async fn a_passing_check_does_not_run_its_start_command() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let mut check = command_check("ok", "true", 5);
    check.start = Some(format!("touch '{}'", marker.display()));
    let r = run_checks(&[check], true).await;
    assert!(r.all_ok);
    assert!(!r.services[0].start_attempted);
    assert!(!marker.exists());
}

#[tokio::test]
async fn a_command_check_is_started_and_rechecked() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("up");
    let mut check = command_check("flag", &format!("test -e '{}'", flag.display()), 5);
    check.start = Some(format!("touch '{}'", flag.display()));
    let r = run_checks(std::slice::from_ref(&check), false).await;
    assert_eq!(
        summary(&r),
        vec![row("flag", "flag", false, "exit 1", false)]
    );
    let r = run_checks(&[check], true).await;
    assert_eq!(summary(&r), vec![row("flag", "flag", true, "exit 0", true)]);
    assert!(r.all_ok);
}

#[tokio::test]
async fn garbage_output_is_one_unparseable_service() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/garbage.txt");
    let checks = vec![
        CheckConfig {
            name: "ovs".into(),
            kind: CheckKind::OvsServices {
                command: format!("cat '{fixture}'"),
            },
            start: None,
            timeout_s: 5,
        },
        CheckConfig {
            name: "ays".into(),
            kind: CheckKind::AysStatus {
                command: "no-such-ays-command-xyz status".into(),
            },
            start: None,
            timeout_s: 5,
        },
    ];
    let r = run_checks(&checks, false).await;
    assert!(!r.all_ok);
    assert_eq!(
        summary(&r),
        vec![
            row("ovs", "ovs", false, "unparseable", false),
            row("ays", "ays", false, "unparseable", false),
        ]
    );
    assert!(
        r.services[0]
            .detail
            .contains("Traceback (most recent call last):"),
        "{}",
        r.services[0].detail
    );
    // Nothing on stdout: the first line of stderr is quoted instead.
    let d = &r.services[1].detail;
    assert!(d.contains("exit 127") && d.contains("not found"), "{d}");
}

#[tokio::test]
async fn a_hanging_check_times_out_and_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    // Two hanging checks run concurrently; the one leaves a grandchild that
    // must die with its process group.
    let checks = vec![
        command_check("sleepy", "sleep 30", 1),
        command_check(
            "forker",
            &format!("sleep 30 & echo $! > '{}'; wait", pidfile.display()),
            1,
        ),
        command_check("fine", "echo fine", 5),
    ];
    let t0 = Instant::now();
    let r = run_checks(&checks, false).await;
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert!(took >= Duration::from_millis(900), "took {took:?}");
    assert_eq!(
        summary(&r),
        vec![
            row("sleepy", "sleepy", false, "timeout", false),
            row("forker", "forker", false, "timeout", false),
            row("fine", "fine", true, "exit 0", false),
        ]
    );
    assert!(
        r.services[0].detail.contains("within 1 s"),
        "{}",
        r.services[0].detail
    );
    assert_eq!(r.services[2].detail, "fine");
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert!(gone(pid.trim()), "grandchild {pid} still alive");
}

/// True when the process is gone or a zombie (killed, not yet reaped by
/// the container's init).
fn gone(pid: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let stat = std::fs::read_to_string(Path::new("/proc").join(pid).join("stat"));
        let dead = match stat {
            Err(_) => true,
            Ok(s) => s
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X"),
        };
        if dead || Instant::now() > deadline {
            return dead;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_hanging_start_command_times_out() {
    let mut check = command_check("never", "false", 1);
    check.start = Some("echo starting; sleep 30".into());
    let t0 = Instant::now();
    let r = run_checks(&[check], true).await;
    assert!(
        t0.elapsed() < Duration::from_millis(3000),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(
        summary(&r),
        vec![row("never", "never", false, "exit 1", true)]
    );
    let d = &r.services[0].detail;
    assert!(
        d.contains("did not finish within 1 s") && d.contains("starting"),
        "{d}"
    );
}

#[tokio::test]
async fn exit_codes_and_output_tail() {
    let checks = vec![
        command_check("zero", "exit 0", 5),
        command_check("three", "echo out; echo boom >&2; exit 3", 5),
        command_check("signalled", "kill -9 $$", 5),
    ];
    let r = run_checks(&checks, false).await;
    assert!(!r.all_ok);
    assert_eq!(
        summary(&r),
        vec![
            row("zero", "zero", true, "exit 0", false),
            row("three", "three", false, "exit 3", false),
            row("signalled", "signalled", false, "signal 9", false),
        ]
    );
    assert_eq!(r.services[1].detail, "out\nboom");
}

#[tokio::test]
async fn a_background_process_holding_the_output_does_not_block() {
    let t0 = Instant::now();
    let r = run_checks(
        &[command_check("daemon", "sleep 5 & echo spawned", 10)],
        false,
    )
    .await;
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(
        summary(&r),
        vec![row("daemon", "daemon", true, "exit 0", false)]
    );
    assert_eq!(r.services[0].detail, "spawned");
}

#[tokio::test]
async fn tcp_open_and_closed_ports() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let tcp = |name: &str, port: u16| CheckConfig {
        name: name.into(),
        kind: CheckKind::Tcp {
            host: "127.0.0.1".into(),
            port,
        },
        start: None,
        timeout_s: 2,
    };
    let r = run_checks(&[tcp("open", open), tcp("closed", closed)], false).await;
    assert!(!r.all_ok);
    assert_eq!(
        summary(&r),
        vec![
            row("open", &format!("127.0.0.1:{open}"), true, "open", false),
            row(
                "closed",
                &format!("127.0.0.1:{closed}"),
                false,
                "refused",
                false
            ),
        ]
    );
    assert!(
        r.services[1].detail.contains("refused"),
        "{}",
        r.services[1].detail
    );
    drop(listener);
}

#[tokio::test]
async fn systemd_without_a_running_systemd_is_a_clear_failure() {
    let check = CheckConfig {
        name: "libvirtd".into(),
        kind: CheckKind::Systemd {
            unit: "libvirtd".into(),
        },
        start: None,
        timeout_s: 5,
    };
    let r = run_checks(&[check], false).await;
    let s = &r.services[0];
    assert_eq!(
        (s.check.as_str(), s.service.as_str()),
        ("libvirtd", "libvirtd")
    );
    if Path::new("/run/systemd/system").exists() {
        // A host booted with systemd: the real answer, whatever it is.
        assert!(!s.state.is_empty());
        assert_eq!(s.ok, s.state == "active");
        return;
    }
    assert!(!r.all_ok && !s.ok);
    let has_systemctl = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("systemctl").exists()))
        .unwrap_or(false);
    if has_systemctl {
        // Installed but not PID 1 (this container): it prints no state.
        assert_eq!(s.state, "unknown", "{s:?}");
        assert!(s.detail.contains("systemctl is-active libvirtd"), "{s:?}");
        assert!(s.detail.contains("exit "), "{s:?}");
    } else {
        assert_eq!(s.state, "error", "{s:?}");
        assert!(s.detail.contains("cannot run"), "{s:?}");
    }
}

#[tokio::test]
async fn no_checks_is_vacuously_ok() {
    let r = run_checks(&[], true).await;
    assert!(r.all_ok);
    assert!(r.services.is_empty());
}
