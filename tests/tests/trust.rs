//! Maintenance operators can trust, on libvirt's test driver: pre-flight
//! (each failed check refuses, names itself and changes nothing; `--dry-run`
//! shows the checks), cordon (`--mode none`), request-id idempotency, and
//! the refusals of abort and retry. Aborts, deadlines, fallbacks, retries
//! and migration slots with real migrations are in `lab_trust`.

use nodemaint_proto::pb;
use nodemaint_tests::*;
use serde_json::Value;
use std::time::Duration;

fn status(f: &Fleet, node: &str) -> String {
    f.cli_json("bob", &["node", "show", node])["node"]["status"]
        .as_str()
        .unwrap()
        .to_string()
}

fn job_count(f: &Fleet) -> usize {
    f.cli_json("bob", &["job", "list"])
        .as_array()
        .unwrap()
        .len()
}

fn vm_node(f: &Fleet, vm: &str) -> String {
    let all = f.cli_json("bob", &["vm", "list"]);
    all.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == vm)
        .unwrap_or_else(|| panic!("{vm} missing: {all}"))["node"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Asserts a refusal: non-zero exit, every `needles` in stderr, and nothing
/// changed (node status and number of jobs).
fn refused(f: &Fleet, args: &[&str], needles: &[&str], node: &str) {
    let (before_status, before_jobs) = (status(f, node), job_count(f));
    let out = f.cli("alice", args);
    assert!(!out.status.success(), "{args:?} should be refused");
    let err = stderr(&out);
    for n in needles {
        assert!(err.contains(n), "{args:?}: {n:?} not in: {err}");
    }
    assert_eq!(status(f, node), before_status, "{args:?} changed {node}");
    assert_eq!(job_count(f), before_jobs, "{args:?} created a job");
}

#[test]
fn preflight_refuses_naming_the_check_and_changes_nothing() {
    let mut f = Fleet::start_with_config(|c| {
        c.preflight.headroom_percent = 50;
        c.preflight.max_nodes_in_maintenance = 1;
    });
    // vm-a fits on node2 only without the 50% headroom.
    f.add_agent_with("node1", 8192, &[Dom::user("vm-a", "cs1").sized(3000)]);
    f.add_agent_with("node2", 4096, &[Dom::user("vm-e", "cs1").sized(64)]);
    f.add_agent_with("node3", 4096, &[Dom::user("vm-d", "cs1").sized(512)]);
    f.wait_registered();

    // A passing dry run shows every check and the plan, and changes nothing.
    let dry = f.cli_json(
        "bob", // read-only: a Level1 operator may look
        &[
            "maintenance",
            "start",
            "node3",
            "--mode",
            "move",
            "--dry-run",
        ],
    );
    assert_eq!(dry["ok"], true, "{dry}");
    let names: Vec<&str> = dry["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for n in [
        "capacity",
        "agents reachable",
        "protocol version",
        "destination libvirt",
        "maintenance limit",
        "no conflicting job",
        "migratable",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert_eq!(dry["plan"]["moves"][0]["to"], "node2", "{dry}");
    assert_eq!(status(&f, "node3"), "ENABLED");
    assert_eq!(job_count(&f), 0);

    // Capacity with headroom: refused, naming the VM and the headroom.
    refused(
        &f,
        &["maintenance", "start", "node1", "--mode", "move"],
        &[
            "pre-flight refused",
            "capacity",
            "vm-a",
            "50% memory headroom",
        ],
        "node1",
    );
    let out = f.cli(
        "alice",
        &[
            "maintenance",
            "start",
            "node1",
            "--mode",
            "move",
            "--dry-run",
        ],
    );
    assert!(!out.status.success(), "a failing dry run exits non-zero");
    assert!(stdout(&out).contains("FAIL") && stdout(&out).contains("capacity"));

    // Cordon: unschedulable, nothing moved or stopped.
    let out = f.cli(
        "alice",
        &["maintenance", "start", "node3", "--mode", "none"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(status(&f, "node3"), "MAINTENANCE");
    assert_eq!(vm_node(&f, "vm-d"), "node3");
    let vm_d = f.cli_json("bob", &["vm", "list", "--node", "node3"]);
    assert_eq!(vm_d[0]["state"], "RUNNING");
    // ... and no new VM lands there.
    for i in 0..3 {
        let name = format!("new{i}");
        let out = f.cli(
            "alice",
            &["vm", "create", "--name", &name, "--memory", "64"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_ne!(
            vm_node(&f, &name),
            "node3",
            "{name} was placed on a cordoned node"
        );
    }

    // The nodes-in-maintenance limit (1, node3 holds it).
    refused(
        &f,
        &["maintenance", "start", "node2", "--mode", "stop"],
        &["maintenance limit", "the limit is 1", "node3"],
        "node2",
    );

    // Retry is for nodes in maintenance; abort for running jobs.
    refused(
        &f,
        &["maintenance", "retry", "node2"],
        &["node2 is ENABLED"],
        "node2",
    );
    let jobs = f.cli_json("bob", &["job", "list"]);
    let done = jobs[0]["id"].as_str().unwrap().to_string();
    let out = f.cli("alice", &["job", "abort", &done]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already ended"), "{}", stderr(&out));
    let out = f.cli("alice", &["job", "abort", "no-such-job"]);
    assert!(stderr(&out).contains("unknown job"), "{}", stderr(&out));
    let out = f.cli("bob", &["job", "abort", &done]);
    assert!(
        stderr(&out).contains("Level2 or Level3"),
        "{}",
        stderr(&out)
    );

    // A repeated request id gets the first job back, and nothing runs twice.
    let first = f.cli_json(
        "alice",
        &[
            "--request-id",
            "enable-n3-1",
            "node",
            "enable",
            "node3",
            "--detach",
        ],
    );
    let jobs_after_first = job_count(&f);
    let again = f.cli_json(
        "alice",
        &[
            "--request-id",
            "enable-n3-1",
            "node",
            "enable",
            "node3",
            "--detach",
        ],
    );
    assert_eq!(first["job_id"], again["job_id"], "{first} / {again}");
    assert!(again["message"]
        .as_str()
        .unwrap()
        .contains("already accepted"));
    assert_eq!(job_count(&f), jobs_after_first);
    wait_for(Duration::from_secs(10), "node3 enabled", || {
        status(&f, "node3") == "ENABLED"
    });

    // An agent of an older release (no protocol version in its heartbeat)
    // as a destination: refused, naming it.
    let url = f.nats.url.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let old = std::thread::spawn(move || fake_old_agent(&url, "old1", &stop2));
    wait_for(Duration::from_secs(10), "old1 registered", || {
        f.cli_json("bob", &["node", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "old1" && n["reachable"] == true)
    });
    refused(
        &f,
        &["maintenance", "start", "node3", "--mode", "move"],
        &["protocol version", "node old1 speaks protocol 0"],
        "node3",
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    old.join().unwrap();
}

/// Heartbeats like an agent older than the protocol-version field, with a
/// lot of free memory so the planner picks it as a destination.
fn fake_old_agent(url: &str, node: &str, stop: &std::sync::atomic::AtomicBool) {
    fake_agent(url, node, 0, "test:///default", stop)
}

/// Heartbeats as `node` (no real agent behind it) speaking `protocol`,
/// reporting `libvirt_uri` and address 127.0.0.9, with a lot of free memory
/// so the planner picks it as a destination.
fn fake_agent(
    url: &str,
    node: &str,
    protocol: u32,
    libvirt_uri: &str,
    stop: &std::sync::atomic::AtomicBool,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let subjects = nodemaint_proto::subjects::Subjects::new("nodemaint");
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let hb = pb::Heartbeat {
                boot_id: "old-boot".into(),
                agent_version: "0.0.9".into(),
                capacity: Some(pb::HostCapacity {
                    vcpus: 64,
                    memory_mib: 1 << 20,
                }),
                address: "127.0.0.9".into(),
                libvirt_uri: libvirt_uri.into(),
                interval_ms: 500,
                protocol_version: protocol,
                ..Default::default()
            };
            let _ = nodemaint_proto::bus::publish_event(
                &js,
                &subjects,
                node,
                "",
                pb::event::Body::Heartbeat(hb),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    });
}

#[test]
fn dry_run_of_a_pinned_vm_asks_for_a_fallback() {
    let mut f = Fleet::start();
    f.add_agent(
        "node1",
        &[Dom::user("pinned", "cs1").pinned(), Dom::vfw("cs1")],
    );
    f.add_agent("node2", &[Dom::user("vm-e", "cs1")]);
    f.wait_registered();
    let v: Value = f
        .cli_json("bob", &["vm", "list", "--node", "node1"])
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "pinned")
        .cloned()
        .unwrap();
    assert!(
        v["not_migratable"]
            .as_str()
            .unwrap()
            .contains("migratable=\"no\""),
        "{v}"
    );
    // No fallback: refused, naming the VM and the way out.
    refused(
        &f,
        &["maintenance", "start", "node1", "--mode", "move"],
        &["migratable", "pinned", "--fallback stop or --fallback cold"],
        "node1",
    );
    // A manual live move is refused too.
    let out = f.cli("alice", &["vm", "move", "pinned", "--to", "node2"]);
    assert!(
        stderr(&out).contains("cannot live-migrate"),
        "{}",
        stderr(&out)
    );
    // With a fallback the plan passes and marks the VM.
    let dry = f.cli_json(
        "bob",
        &[
            "maintenance",
            "start",
            "node1",
            "--mode",
            "move",
            "--fallback",
            "stop",
            "--dry-run",
        ],
    );
    assert_eq!(dry["ok"], true, "{dry}");
    let m = dry["plan"]["moves"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["vm"] == "pinned")
        .unwrap();
    assert!(m["not_migratable"].is_string());
}

/// A hook is a name from the agent's own config (`[hooks]`), never a
/// command line: a command line in the field where the old wire format
/// carried one, an unknown name and a name that is a command are refused
/// by the agent and nothing runs; the configured name runs its command.
/// The API refuses a command line as a hook name, and the CLI's removed
/// `--reboot-command` says what replaced it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_runs_only_the_hooks_named_in_its_own_config() {
    use nodemaint_proto::subjects::{EventKind, Subjects};
    use nodemaint_proto::Message as _;
    use nodemaint_tests::raw;
    let marks = tempfile::tempdir().unwrap();
    let (ran, pwned) = (marks.path().join("ran"), marks.path().join("pwned"));
    let f = tokio::task::block_in_place(|| {
        let mut f = Fleet::start();
        let touch = format!("touch {}", ran.display());
        f.agent_edits.insert(
            "node1".into(),
            Box::new(move |c| {
                c.hooks.insert("reboot".into(), touch.clone());
            }),
        );
        f.add_agent("node1", &[Dom::user("vm-a", "cs1")]);
        f.add_agent("node2", &[Dom::user("vm-b", "cs1")]);
        f.wait_registered();
        f
    });
    let (client, js) = raw::js_client(&f).await;
    let mut results = client
        .subscribe(Subjects::default().event("node1", EventKind::Result))
        .await
        .unwrap();
    let hook = |id: &str, name: &str| {
        raw::command(
            id,
            pb::agent_command::Kind::RunHook(pb::RunHook {
                name: name.into(),
                timeout_s: 10,
            }),
        )
    };
    let code = |r: &pb::CommandResult| r.error.as_ref().map(|e| e.code);

    // The old wire format: RunHook's field 1, a command line run by `sh -c`.
    let mut body = pb::AgentCommand {
        kind: None,
        ..raw::command("old", pb::agent_command::Kind::RunHook(Default::default()))
    }
    .encode_to_vec();
    let line = format!("touch {}", pwned.display());
    let mut inner = vec![0x0a, line.len() as u8];
    inner.extend(line.as_bytes());
    body.extend([0x82, 0x01, inner.len() as u8]); // field 16 (run_hook), bytes
    body.extend(inner);
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", "old");
    js.publish_with_headers(Subjects::default().agent_cmd("node1"), h, body.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let r = raw::next_result(&mut results, "old").await;
    assert!(!r.ok, "{r:?}");
    assert_eq!(
        code(&r),
        Some(pb::error::Code::InvalidArgument as i32),
        "{r:?}"
    );
    assert!(!pwned.exists(), "a command line sent to the agent ran");

    // A name the agent does not know: refused, naming the ones it knows.
    raw::send(&js, "node1", &hook("unknown", "upgrade"), true).await;
    let r = raw::next_result(&mut results, "unknown").await;
    assert_eq!(code(&r), Some(pb::error::Code::NotFound as i32), "{r:?}");
    assert!(
        r.message.contains("\"upgrade\"") && r.message.contains("known hooks: reboot"),
        "{}",
        r.message
    );
    // A command line as the name: refused as a name.
    raw::send(
        &js,
        "node1",
        &hook("line", &format!("touch {}", pwned.display())),
        true,
    )
    .await;
    let r = raw::next_result(&mut results, "line").await;
    assert_eq!(
        code(&r),
        Some(pb::error::Code::InvalidArgument as i32),
        "{r:?}"
    );
    assert!(!pwned.exists() && !ran.exists(), "a refused hook ran");

    // The configured name runs the configured command.
    raw::send(&js, "node1", &hook("named", "reboot"), true).await;
    let r = raw::next_result(&mut results, "named").await;
    assert!(r.ok, "{r:?}");
    assert!(ran.exists(), "the reboot hook did not run");

    // The API takes a name only; the removed option points to --hook.
    tokio::task::block_in_place(|| {
        refused(
            &f,
            &[
                "rolling",
                "start",
                "--all",
                "--hook",
                "touch /tmp/x",
                "--yes",
            ],
            &["invalid hook name", "[hooks]"],
            "node1",
        );
        refused(
            &f,
            &[
                "rolling",
                "start",
                "--all",
                "--reboot-command",
                "id",
                "--yes",
            ],
            &["--reboot-command was removed", "--hook"],
            "node1",
        );
    });
    assert!(!pwned.exists());
}

/// A node does not choose what another node's libvirt opens: a compromised
/// node reporting a `qemu+ext` URI (libvirt runs its `command=`) as its
/// own is probed and migrated to at the configured template over its
/// address instead, even by a Level1 `--dry-run`; and an agent given such a
/// URI straight on the bus (probe or migration) refuses it and opens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_choose_the_uri_another_nodes_libvirt_opens() {
    use nodemaint_proto::subjects::{EventKind, Subjects};
    use nodemaint_tests::raw;
    use std::os::unix::fs::PermissionsExt;
    let marks = tempfile::tempdir().unwrap();
    let pwned = marks.path().join("pwned");
    let script = marks.path().join("evil.sh");
    std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", pwned.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let evil_uri = format!("qemu+ext:///system?command={}", script.display());

    let mut f = tokio::task::block_in_place(|| {
        let mut f = Fleet::start();
        f.add_agent("node1", &[Dom::user("vm-a", "cs1")]);
        f.wait_registered();
        f
    });
    let (url, uri) = (f.nats.url.clone(), evil_uri.clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let evil = std::thread::spawn(move || {
        fake_agent(
            &url,
            "evil1",
            nodemaint_proto::PROTOCOL_VERSION,
            &uri,
            &stop2,
        )
    });
    tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(10), "evil1 registered", || {
            f.cli_json("bob", &["node", "list"])
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["name"] == "evil1" && n["reachable"] == true)
        });
        // A viewer's dry-run probes evil1 from node1: at the template over
        // its address, not at the URI it reported.
        let out = f.cli(
            "bob",
            &[
                "maintenance",
                "start",
                "node1",
                "--mode",
                "move",
                "--dry-run",
            ],
        );
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            !pwned.exists(),
            "node1's libvirt ran the command evil1 reported: {text}"
        );
        assert!(
            text.contains("evil1"),
            "evil1 is not the destination: {text}"
        );
        assert!(!text.contains("qemu+ext"), "{text}");
        assert!(text.contains("qemu+tcp://127.0.0.9/system"), "{text}");
    });

    // The same URI straight on the bus: refused, nothing opened.
    let (client, js) = raw::js_client(&f).await;
    let mut results = client
        .subscribe(Subjects::default().event("node1", EventKind::Result))
        .await
        .unwrap();
    let probe = raw::command(
        "probe-evil",
        pb::agent_command::Kind::ProbeLibvirt(pb::ProbeLibvirt {
            uris: vec![evil_uri.clone()],
        }),
    );
    raw::send(&js, "node1", &probe, true).await;
    let r = raw::next_result(&mut results, "probe-evil").await;
    assert!(!r.ok, "{r:?}");
    let detail = &r.checks.as_ref().unwrap().services[0].detail;
    assert!(
        detail.contains("refused") && detail.contains("not opened"),
        "{detail}"
    );
    let migrate = raw::command(
        "migrate-evil",
        pb::agent_command::Kind::Migrate(pb::MigrateVm {
            vm: "vm-a".into(),
            dest_node: "evil1".into(),
            dest_libvirt_uri: evil_uri.clone(),
            dest_migrate_uri: "tcp://127.0.0.9".into(),
            timeout_s: 10,
            ..Default::default()
        }),
    );
    raw::send(&js, "node1", &migrate, true).await;
    let r = raw::next_result(&mut results, "migrate-evil").await;
    assert_eq!(
        r.error.as_ref().map(|e| e.code),
        Some(pb::error::Code::PermissionDenied as i32),
        "{r:?}"
    );
    assert!(r.message.contains("qemu+ext"), "{}", r.message);
    assert!(!pwned.exists(), "node1's libvirt ran the command of a URI");
    tokio::task::block_in_place(|| {
        assert_eq!(vm_node(&f, "vm-a"), "node1");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        evil.join().unwrap();
        f.stop_agent("node1");
    });
}

/// An agent's libvirt probes are bounded: however many probe commands
/// arrive at once (they bypass the command slots, like cancels), at most two
/// libvirt connections are open at a time, each probe answers within its
/// 8 s bound even when the destination never does, and ordinary commands
/// still run meanwhile. (Before, every probe opened its own connection on a
/// blocking thread that no timeout stopped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_probes_are_bounded_in_number_and_time() {
    use futures::StreamExt as _;
    use nodemaint_proto::subjects::{EventKind, Subjects};
    use nodemaint_tests::raw;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    // A "libvirtd" that accepts and never answers, counting open connections.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let (open, most, held) = (open.clone(), most.clone(), held.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let now = open.fetch_add(1, SeqCst) + 1;
                most.fetch_max(now, SeqCst);
                let open = open.clone();
                let probe = conn.try_clone().unwrap();
                held.lock().unwrap().push(conn);
                // Count the connection closed when the client gives up.
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while std::io::Read::read(&mut &probe, &mut buf).is_ok_and(|n| n > 0) {}
                    open.fetch_sub(1, SeqCst);
                });
            }
        });
    }

    let mut f = tokio::task::block_in_place(|| {
        let mut f = Fleet::start();
        f.add_agent("node1", &[Dom::user("vm-a", "cs1")]);
        f.wait_registered();
        f
    });
    let (client, js) = raw::js_client(&f).await;
    let mut results = client
        .subscribe(Subjects::default().event("node1", EventKind::Result))
        .await
        .unwrap();
    let uri = format!("qemu+tcp://127.0.0.1:{port}/system");
    let ids: Vec<String> = (0..5).map(|i| format!("probe-{i}")).collect();
    let sent = std::time::Instant::now();
    for id in &ids {
        let cmd = raw::command(
            id,
            pb::agent_command::Kind::ProbeLibvirt(pb::ProbeLibvirt {
                uris: vec![uri.clone()],
            }),
        );
        raw::send(&js, "node1", &cmd, true).await;
    }
    // An ordinary command meanwhile is not held up by the stuck probes.
    let stop = raw::command(
        "stop-a",
        pb::agent_command::Kind::Stop(pb::StopVm {
            vm: "vm-a".into(),
            ..Default::default()
        }),
    );
    raw::send(&js, "node1", &stop, true).await;

    let mut answered = std::collections::BTreeMap::new();
    let deadline = sent + Duration::from_secs(30);
    while answered.len() < ids.len() + 1 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let msg = tokio::time::timeout(left, results.next())
            .await
            .unwrap_or_else(|_| panic!("unanswered after 30 s; answered: {answered:?}"))
            .unwrap();
        let ev: pb::Event = nodemaint_proto::decode(&msg.payload).unwrap();
        if let Some(pb::event::Body::Result(r)) = ev.body {
            answered.insert(r.command_id.clone(), (r, sent.elapsed()));
        }
    }
    let (stopped, _) = &answered["stop-a"];
    assert!(stopped.ok, "{stopped:?}");
    for id in &ids {
        let (r, _) = &answered[id];
        assert!(!r.ok, "{r:?}");
        let detail = &r.checks.as_ref().unwrap().services[0].detail;
        assert!(
            detail.contains("no answer within 8 s") && detail.contains("at most 2 probes"),
            "{detail}"
        );
    }
    assert!(
        most.load(SeqCst) <= 2 && most.load(SeqCst) >= 1,
        "{} libvirt connections open at once",
        most.load(SeqCst)
    );
    // Release the stuck clients.
    for c in held.lock().unwrap().drain(..) {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    tokio::task::block_in_place(|| f.stop_agent("node1"));
}
