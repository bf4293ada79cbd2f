//! Foundation: agents on libvirt's test driver report to a coordinator over
//! a real nats-server; the CLI shows what libvirt holds; commands reach
//! libvirt at most once per id; bad input is refused by name.

use futures::StreamExt;
use nodemaint_proto::pb::{self, event::Body};
use nodemaint_proto::subjects::{EventKind, Subjects};
use nodemaint_tests::raw::*;
use nodemaint_tests::*;
use std::time::{Duration, Instant};

fn two_node_fleet() -> Fleet {
    let mut f = Fleet::start();
    f.add_agent(
        "node1",
        &[
            Dom::vfw("cs1"),
            Dom::user("node1-vm1", "cs1"),
            Dom::user("node1-off", "cs2").off(),
        ],
    );
    f.add_agent("node2", &[Dom::vfw("cs2"), Dom::user("node2-vm1", "cs2")]);
    f.wait_registered();
    f
}

fn vm_state(f: &Fleet, vm: &str) -> String {
    let vms = f.cli_json("bob", &["vm", "list"]);
    vms.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == vm)
        .map(|v| v["state"].as_str().unwrap().to_string())
        .unwrap_or_else(|| "ABSENT".into())
}

fn wait_state(f: &Fleet, vm: &str, want: &str) {
    wait_for(
        Duration::from_secs(10),
        &format!("{vm} to be {want}"),
        || vm_state(f, vm) == want,
    );
}

#[test]
fn cli_json_shows_what_libvirt_holds() {
    let f = two_node_fleet();

    let nodes = f.cli_json("bob", &["node", "list"]);
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    let n1 = nodes.iter().find(|n| n["name"] == "node1").unwrap();
    assert_eq!(n1["status"], "ENABLED");
    assert_eq!(n1["reachable"], true);
    assert_eq!(n1["vms_total"], 3);
    assert_eq!(n1["vms_running"], 2);
    assert_eq!(n1["memory_mib"], 8192, "capacity from libvirt's node info");
    assert_eq!(n1["memory_used_mib"], 64 + 256 + 256);
    assert_eq!(n1["boot_id"], "boot-node1-1");

    let show = f.cli_json("bob", &["node", "show", "node1"]);
    let vms = show["vms"].as_array().unwrap();
    let vfw = vms.iter().find(|v| v["name"] == "cs1-vfw").unwrap();
    assert_eq!(vfw["kind"], "VFW");
    assert_eq!(vfw["cloudspace"], "cs1");
    let off = vms.iter().find(|v| v["name"] == "node1-off").unwrap();
    assert_eq!(off["state"], "SHUTOFF");
    assert_eq!(off["kind"], "USER");

    let vfws = f.cli_json("bob", &["vm", "list", "--kind", "vfw"]);
    let mut names: Vec<&str> = vfws
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["cs1-vfw", "cs2-vfw"]);
    let cs2 = f.cli_json("bob", &["vm", "list", "--cloudspace", "cs2"]);
    assert_eq!(cs2.as_array().unwrap().len(), 3);
    let off = f.cli_json("bob", &["vm", "list", "--state", "shutoff"]);
    assert_eq!(off.as_array().unwrap().len(), 1);
    assert_eq!(off[0]["node"], "node1");

    let vfw_list = f.cli_json("bob", &["vfw", "list"]);
    let pairs: Vec<(String, String)> = vfw_list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["cloudspace"].as_str().unwrap().into(),
                v["node"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("cs1".into(), "node1".into()),
            ("cs2".into(), "node2".into())
        ]
    );

    // The human table marks system VMs separately.
    let table = stdout(&f.cli("bob", &["node", "show", "node1"]));
    let sys = table.find("System VMs").expect("system VMs section");
    assert!(table[sys..].contains("cs1-vfw"), "{table}");
    assert!(!table[..sys].contains("cs1-vfw"), "{table}");
}

#[test]
fn start_and_stop_reach_libvirt_and_are_jobs() {
    let f = two_node_fleet();
    let out = f.cli("alice", &["vm", "stop", "node1-vm1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_state(&f, "node1-vm1", "SHUTOFF");

    // JSON lines: the acceptance, the job's events, the terminal event.
    let out = f.cli("carol", &["vm", "start", "node1-vm1", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["accepted"], true);
    let terminal = lines
        .iter()
        .find(|l| l["body"]["terminal"] == true)
        .expect("a terminal event");
    assert_eq!(terminal["body"]["ok"], true);
    // The last line is the job record with its journal.
    let job = &lines.last().unwrap()["job"];
    assert_eq!(
        (job["kind"].as_str(), job["state"].as_str()),
        (Some("vm.start"), Some("SUCCEEDED"))
    );
    wait_state(&f, "node1-vm1", "RUNNING");

    let jobs = f.cli_json("bob", &["job", "list"]);
    let kinds: Vec<(&str, &str, &str)> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["kind"].as_str().unwrap(),
                j["user"].as_str().unwrap(),
                j["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("vm.stop", "alice", "SUCCEEDED")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("vm.start", "carol", "SUCCEEDED")),
        "{kinds:?}"
    );

    // Starting a running VM is refused by name, and nothing changes.
    let out = f.cli("alice", &["vm", "start", "node1-vm1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_commands_are_refused_and_the_new_leader_may_resend_them() {
    let f = tokio::task::block_in_place(two_node_fleet);
    let (client, js) = js_client(&f).await;
    let s = Subjects::default();
    let mut results = client
        .subscribe(s.event("node1", EventKind::Result))
        .await
        .unwrap();
    let refresh = |id: &str, epoch: u64| pb::AgentCommand {
        epoch,
        ..command(
            id,
            pb::agent_command::Kind::RefreshInventory(Default::default()),
        )
    };
    // A newer leader speaks: its epoch becomes the agent's highest.
    send(&js, "node1", &refresh("new-1", EPOCH + 10), true).await;
    assert!(next_result(&mut results, "new-1").await.ok);

    // The deposed leader's stop is refused and not executed.
    let stop = pb::AgentCommand {
        epoch: EPOCH + 9,
        ..command(
            "stop-old",
            pb::agent_command::Kind::Stop(pb::StopVm {
                vm: "node1-vm1".into(),
                graceful_timeout_s: 5,
            }),
        )
    };
    send(&js, "node1", &stop, true).await;
    let r = next_result(&mut results, "stop-old").await;
    assert!(!r.ok, "{r:?}");
    assert_eq!(
        r.error.as_ref().map(|e| e.code),
        Some(pb::error::Code::StaleLeader as i32),
        "{r:?}"
    );
    assert!(r.message.contains("deposed leader"), "{}", r.message);
    // The agent answered after deciding; the VM was never touched.
    send(&js, "node1", &refresh("new-2", EPOCH + 10), true).await;
    assert!(next_result(&mut results, "new-2").await.ok);
    assert_eq!(
        tokio::task::block_in_place(|| vm_state(&f, "node1-vm1")),
        "RUNNING"
    );

    // The current leader resends the same id (a journaled command after a
    // takeover): it was not claimed, so it runs now.
    let resent = pb::AgentCommand {
        epoch: EPOCH + 10,
        ..stop
    };
    send(&js, "node1", &resent, false).await;
    let r = next_result(&mut results, "stop-old").await;
    assert!(r.ok && !r.duplicate, "{r:?}");
    tokio::task::block_in_place(|| wait_state(&f, "node1-vm1", "SHUTOFF"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_id_executes_at_most_once_also_across_agent_restarts() {
    let mut f = tokio::task::block_in_place(two_node_fleet);
    let (client, js) = js_client(&f).await;
    let s = Subjects::default();
    let mut results = client
        .subscribe(s.event("node1", EventKind::Result))
        .await
        .unwrap();

    let stop = command(
        "stop-1",
        pb::agent_command::Kind::Stop(pb::StopVm {
            vm: "node1-vm1".into(),
            graceful_timeout_s: 5,
        }),
    );
    send(&js, "node1", &stop, true).await;
    let r = next_result(&mut results, "stop-1").await;
    assert!(r.ok && !r.duplicate, "{r:?}");
    tokio::task::block_in_place(|| wait_state(&f, "node1-vm1", "SHUTOFF"));

    // Start it again under another id, then resend the stop id: first within
    // the server's de-duplication window (dropped by JetStream), then without
    // a message id (as after the window): answered, not executed.
    let start = command(
        "start-1",
        pb::agent_command::Kind::Start(pb::StartVm {
            vm: "node1-vm1".into(),
        }),
    );
    send(&js, "node1", &start, true).await;
    assert!(next_result(&mut results, "start-1").await.ok);
    send(&js, "node1", &stop, true).await;
    send(&js, "node1", &stop, false).await;
    let r = next_result(&mut results, "stop-1").await;
    assert!(
        r.ok && r.duplicate,
        "repeat must be answered with the recorded result: {r:?}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        tokio::task::block_in_place(|| vm_state(&f, "node1-vm1")),
        "RUNNING"
    );

    // Restart the agent: the test driver reloads its fixture (node1-vm1
    // running). The old id must still not execute.
    tokio::task::block_in_place(|| {
        f.stop_agent("node1");
        f.start_agent("node1");
    });
    send(&js, "node1", &stop, false).await;
    let r = next_result(&mut results, "stop-1").await;
    assert!(r.duplicate, "{r:?}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        tokio::task::block_in_place(|| vm_state(&f, "node1-vm1")),
        "RUNNING"
    );
    let log = f.agent_log("node1");
    assert!(log.contains("repeated command answered"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_reported_acked_and_survived() {
    let f = tokio::task::block_in_place(two_node_fleet);
    let (client, js) = js_client(&f).await;
    let s = Subjects::default();
    let mut agent_errors = client
        .subscribe(s.event("node1", EventKind::Error))
        .await
        .unwrap();
    let mut coord_errors = client
        .subscribe(s.event("coordinator", EventKind::Error))
        .await
        .unwrap();

    // Garbage on the agent's command subject.
    js.publish(s.agent_cmd("node1"), vec![0xff, 0x01, 0x02].into())
        .await
        .unwrap()
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), agent_errors.next())
        .await
        .unwrap()
        .unwrap();
    let ev: pb::Event = nodemaint_proto::decode(&msg.payload).unwrap();
    let Some(Body::Error(e)) = ev.body else {
        panic!("{ev:?}")
    };
    assert_eq!(e.error.unwrap().code, pb::error::Code::Malformed as i32);
    // Acked (terminated), not redelivered: nothing left pending for the agent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(s.commands_stream())
        .await
        .unwrap()
        .get_consumer("agent-node1")
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0), "{info:?}");

    // Garbage on the API: a typed error reply.
    let reply = api_client(&f.nats.url, "alice")
        .await
        .request(s.api("alice", false, "node.list"), vec![0xff, 0xff].into())
        .await
        .unwrap();
    let reply: pb::ApiReply = nodemaint_proto::decode(&reply.payload).unwrap();
    let Some(pb::api_reply::Kind::Error(e)) = reply.kind else {
        panic!("{reply:?}")
    };
    assert_eq!(e.code, pb::error::Code::Malformed as i32);

    // Garbage heartbeat: the coordinator reports it and keeps going.
    client
        .publish(
            s.event("node1", EventKind::Heartbeat),
            vec![0xde, 0xad].into(),
        )
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), coord_errors.next())
        .await
        .unwrap()
        .unwrap();
    let ev: pb::Event = nodemaint_proto::decode(&msg.payload).unwrap();
    assert!(matches!(ev.body, Some(Body::Error(_))), "{ev:?}");

    // Both still work.
    let out = tokio::task::block_in_place(|| f.cli("alice", &["vm", "stop", "node2-vm1"]));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_for_a_missing_domain_fails_with_not_found() {
    let f = tokio::task::block_in_place(two_node_fleet);
    let (client, js) = js_client(&f).await;
    let s = Subjects::default();
    let mut results = client
        .subscribe(s.event("node2", EventKind::Result))
        .await
        .unwrap();
    let cmd = command(
        "ghost-1",
        pb::agent_command::Kind::Start(pb::StartVm { vm: "ghost".into() }),
    );
    send(&js, "node2", &cmd, true).await;
    let r = next_result(&mut results, "ghost-1").await;
    assert!(!r.ok);
    let e = r.error.unwrap();
    assert_eq!(e.code, pb::error::Code::NotFound as i32);
    assert!(
        e.message.contains("ghost") && e.message.contains("node2"),
        "{}",
        e.message
    );
}

#[test]
fn silent_agent_is_shown_unreachable_not_dropped() {
    let mut f = two_node_fleet();
    f.stop_agent("node2");
    wait_for(Duration::from_secs(10), "node2 unreachable", || {
        let nodes = f.cli_json("bob", &["node", "list"]);
        nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "node2" && n["reachable"] == false)
    });
    let nodes = f.cli_json("bob", &["node", "list"]);
    assert_eq!(nodes.as_array().unwrap().len(), 2);
    let table = stdout(&f.cli("bob", &["node", "list"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("node2") && l.contains("NO")),
        "{table}"
    );
    // Its VFW is still accounted for, flagged as on an unreachable node.
    let vfws = f.cli_json("bob", &["vfw", "list"]);
    let cs2 = vfws
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["cloudspace"] == "cs2")
        .unwrap();
    assert_eq!(
        (cs2["node"].as_str(), cs2["node_reachable"].as_bool()),
        (Some("node2"), Some(false))
    );
    // Commands to it are refused clearly.
    let out = f.cli("alice", &["vm", "stop", "node2-vm1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("node2 is unreachable"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_input_is_refused_by_name_and_changes_nothing() {
    let f = two_node_fleet();
    // (user, args, message, exit code: 2 usage, 3 refused; see cli::exit)
    let cases: &[(&str, &[&str], &str, i32)] = &[
        (
            "alice",
            &["node", "show", "nope"],
            "unknown node \"nope\"",
            3,
        ),
        ("alice", &["vm", "start", "nope"], "unknown VM \"nope\"", 3),
        (
            "alice",
            &["vm", "list", "--node", "nope"],
            "unknown node \"nope\"",
            3,
        ),
        ("bob", &["vm", "stop", "node1-vm1"], "Level2 or Level3", 3),
        ("mallory", &["vm", "stop", "node1-vm1"], "unknown user", 3),
        ("alice", &["vm", "stop", "node1-off"], "already shut off", 3),
        (
            "alice",
            &["events", "--kind", "nonsense"],
            "unknown event kind",
            2,
        ),
        (
            "alice",
            &["events", "--kind", "heartbeat"],
            "heartbeat events are not stored",
            2,
        ),
        (
            "alice",
            &["events", "--since", "5 fortnights"],
            "unknown time unit",
            2,
        ),
        (
            "alice",
            &["events", "--since", "5000000d"],
            "'5000000d' for '--since <DURATION>': too long",
            2,
        ),
        (
            "alice",
            &["vm", "stop", "node1-vm1", "--timeout", "soon"],
            "'soon' for '--timeout <DURATION>'",
            2,
        ),
        ("alice", &["node", "list", "--bogus"], "'--bogus'", 2),
        ("alice", &["job", "show", "nope"], "unknown job", 3),
    ];
    for (user, args, want, code) in cases {
        let out = f.cli(user, args);
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(vm_state(&f, "node1-vm1"), "RUNNING");
    assert_eq!(vm_state(&f, "node1-off"), "SHUTOFF");
    let jobs = f.cli_json("bob", &["job", "list"]);
    assert_eq!(jobs.as_array().unwrap().len(), 0, "refusals create no job");
}

#[test]
fn tables_for_scripts_drop_headers_and_choose_columns() {
    let f = two_node_fleet();
    let lines = |args: &[&str]| {
        let out = f.cli("alice", args);
        ok(&out);
        let mut l: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
        l.sort();
        l
    };
    assert_eq!(
        lines(&["node", "list", "--no-headers", "--columns", "node,status"]),
        ["node1  ENABLED", "node2  ENABLED"]
    );
    assert_eq!(
        lines(&[
            "vm",
            "list",
            "--node",
            "node1",
            "--columns",
            "state,vm",
            "--no-headers"
        ]),
        [
            "RUNNING  cs1-vfw",
            "RUNNING  node1-vm1",
            "SHUTOFF  node1-off"
        ]
    );
    // Headers stay unless asked to go; the chosen columns in the order asked.
    let with = lines(&["vfw", "list", "--columns", "node,cloudspace"]);
    assert_eq!(with, ["NODE   CLOUDSPACE", "node1  cs1", "node2  cs2"]);
    // An unknown column is a usage error naming the known ones.
    let out = f.cli("alice", &["job", "list", "--columns", "memory"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("no column \"memory\"; columns: job,kind,state,node,user,created,outcome"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unreachable_nats_is_named_within_five_seconds() {
    let dir = tempfile::tempdir().unwrap();
    // free_port on purpose: a port nothing listens on (a process taking it
    // within the next instant is far less likely than the bind race of a
    // start, and there is no server start here to retry).
    let url = format!("nats://127.0.0.1:{}", free_port());
    let t = Instant::now();
    let out = cli_in(&url, dir.path(), "alice", &["node", "list"]);
    assert_eq!(out.status.code(), Some(4), "unavailable: {}", stderr(&out));
    assert!(
        t.elapsed() < Duration::from_secs(7),
        "took {:?}",
        t.elapsed()
    );
    assert!(stderr(&out).contains(&url), "{}", stderr(&out));
}

#[test]
fn no_coordinator_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let out = cli_in(&nats.url, dir.path(), "alice", &["node", "list"]);
    assert_eq!(out.status.code(), Some(4), "unavailable: {}", stderr(&out));
    assert!(
        stderr(&out).contains("no coordinator answers"),
        "{}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------- configs

use nodemaint_agent::config::AgentConfig;
use nodemaint_coordinator::config::CoordinatorConfig;
use nodemaint_tests::lab::config::{self as labcfg, LabAgent, LabCoordinator};

/// `lab-config ARGS` as deploy/lab runs it: its output, or the failure.
fn lab_config(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lab-config"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lab-config {args:?}: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// Every config the harness, the lab and the benchmarks' simulated fleet
/// write is rendered from the binaries' own config structs and loads back
/// through the binaries' own loaders to the same settings (the writers
/// assert it: [`write_agent_config`], [`write_coordinator_config`]).
#[test]
fn every_rendered_config_loads_back_through_the_binaries_loaders() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);

    // The harness: plain and portal users, a test-driver agent.
    write_coordinator_config(&path("c1.toml"), &coordinator_config());
    write_coordinator_config(&path("c2.toml"), &coordinator_config_with_passwords());
    let loaded = CoordinatorConfig::load(&path("c2.toml")).unwrap();
    assert!(loaded.authorize_change("alice", "x").is_ok());
    assert!(loaded.authorize_change("bob", "x").is_err());
    assert!(loaded.users["carol"].password_hash.is_some());
    let mut agent = test_agent_config(dir.path(), "node1", "nats://127.0.0.1:4999", None);
    agent.nats_creds = Some(path("node1.creds"));
    write_agent_config(&path("a1.toml"), &agent);
    let loaded = AgentConfig::load(&path("a1.toml")).unwrap();
    assert_eq!(loaded.heartbeat_interval_ms, 300);
    assert_eq!(loaded.boot_id_file, path("node1.boot_id"));
    assert_eq!(loaded.migration_uri(), agent.libvirt_uri);

    // The lab, through lab-config exactly as deploy/lab calls it.
    let lab = dir.path().join("lab");
    let node_dir = lab.join("node2");
    let (lab_s, node_s) = (lab.display().to_string(), node_dir.display().to_string());
    let mut agent_args = vec![
        "agent",
        "--node",
        "node2",
        "--nats-url",
        "nats://10.77.0.1:4222,nats://10.77.0.1:4322",
        "--nats-replicas",
        "3",
        "--address",
        "10.77.0.12",
        "--node-dir",
        &node_s,
        "--lab-dir",
        &lab_s,
        "--lab-script",
        "/repo/deploy/lab",
        "--nats-creds",
        "/lab/secure/auth/creds/node2.creds",
        "--nats-ca",
        "/lab/secure/tls/ca.pem",
    ];
    let text = lab_config(&agent_args);
    std::fs::write(path("lab-agent.toml"), &text).unwrap();
    let lab_agent = AgentConfig::load(&path("lab-agent.toml")).unwrap();
    lab_agent.validate().unwrap();
    assert_eq!(lab_agent.node, "node2");
    assert_eq!(lab_agent.migration_uri(), "qemu+tcp://10.77.0.12/system");
    assert_eq!(lab_agent.boot_id_file, node_dir.join("boot_id"));
    assert_eq!(
        lab_agent.guest_template,
        Some(lab.join("guest-template.xml"))
    );
    let names: Vec<&str> = lab_agent.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["ovs", "ays"]);
    assert_eq!(
        lab_agent.hooks.get("reboot").map(String::as_str),
        Some("/repo/deploy/lab reboot node2"),
        "rolling maintenance's hook, by name"
    );
    assert_eq!(lab_agent.to_toml(), text);
    // The same from the library (what the lab suites' Rust side sees).
    let in_process = labcfg::agent_config(&LabAgent {
        node: "node2".into(),
        nats_url: "nats://10.77.0.1:4222,nats://10.77.0.1:4322".into(),
        nats_replicas: 3,
        address: "10.77.0.12".into(),
        node_dir: node_dir.clone(),
        lab_dir: lab.clone(),
        nats_creds: Some("/lab/secure/auth/creds/node2.creds".into()),
        nats_ca: Some("/lab/secure/tls/ca.pem".into()),
        lab_script: "/repo/deploy/lab".into(),
    });
    assert_eq!(in_process.to_toml(), text);
    // LAB_AGENT_CONFIG_EXTRA adds or replaces top-level settings.
    agent_args.extend(["--extra", "heartbeat_interval_ms = 250"]);
    std::fs::write(path("lab-agent2.toml"), lab_config(&agent_args)).unwrap();
    let extra = AgentConfig::load(&path("lab-agent2.toml")).unwrap();
    assert_eq!(extra.heartbeat_interval_ms, 250);
    assert_eq!(extra.checks, lab_agent.checks, "the checks stay checks");

    let text = lab_config(&["coordinator"]);
    std::fs::write(path("lab-c1.toml"), &text).unwrap();
    let lab_c = CoordinatorConfig::load(&path("lab-c1.toml")).unwrap();
    let defaults = CoordinatorConfig::default();
    assert_eq!(lab_c.limits.global, defaults.limits.global);
    assert_eq!(lab_c.lease_ttl_s, defaults.lease_ttl_s);
    assert!(lab_c.authorize_change("operator", "x").is_ok());
    assert!(lab_c.authorize_change("viewer", "x").is_err());
    assert_eq!(lab_c.to_toml(), text);
    let text = lab_config(&[
        "coordinator",
        "--nats-replicas",
        "3",
        "--lease-ttl-s",
        "15",
        "--per-source",
        "1",
        "--per-destination",
        "3",
        "--global",
        "4",
        "--progress-timeout-s",
        "20",
        "--libvirt-tls",
    ]);
    std::fs::write(path("lab-c2.toml"), &text).unwrap();
    let lab_c = CoordinatorConfig::load(&path("lab-c2.toml")).unwrap();
    let limits = (
        lab_c.limits.per_source,
        lab_c.limits.per_destination,
        lab_c.limits.global,
    );
    assert_eq!(limits, (1, 3, 4));
    assert_eq!(
        (
            lab_c.nats_replicas,
            lab_c.lease_ttl_s,
            lab_c.migration.progress_timeout_s
        ),
        (3, 15, 20)
    );
    assert_eq!(lab_c.migration.libvirt_uri, "qemu+tls://{address}/system");
    let same = labcfg::coordinator_config(&LabCoordinator {
        nats_replicas: 3,
        lease_ttl_s: Some(15),
        per_source: Some(1),
        per_destination: Some(3),
        global: Some(4),
        progress_timeout_s: Some(20),
        libvirt_tls: true,
    });
    assert_eq!(same.to_toml(), text);
}

/// An operator's typo is refused, naming the key and the file: at the top
/// level, in a table, in a check; by the loaders and by the binaries.
#[test]
fn a_config_with_an_unknown_key_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let agent = test_agent_config(dir.path(), "node1", "nats://127.0.0.1:4999", None);
    let mut with_check = agent.clone();
    with_check.checks = AgentConfig::from_toml(
        "node = 'x'\n[[checks]]\nname = 'ssh'\ntype = 'tcp'\nport = 22\n",
        std::path::Path::new("-"),
    )
    .unwrap()
    .checks;
    let rendered = with_check.to_toml();
    let typos = [
        ("heartbeat_interval = 5\n", "heartbeat_interval"),
        ("", "prot"), // in the check, below
    ];
    for (i, (prefix, key)) in typos.iter().enumerate() {
        let text = if prefix.is_empty() {
            rendered.replace("port = 22", "prot = 22")
        } else {
            format!("{prefix}{rendered}")
        };
        assert!(text.contains(key));
        let path = dir.path().join(format!("agent{i}.toml"));
        std::fs::write(&path, &text).unwrap();
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains(key) && err.contains(&path.display().to_string()),
            "{err}"
        );
        let out = std::process::Command::new(bin("node-agent"))
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "node-agent accepted {key}");
        assert!(stderr(&out).contains(key), "{}", stderr(&out));
    }

    let rendered = coordinator_config().to_toml();
    let coordinator_typos = [
        (
            "lease_tll_s",
            rendered.replace("lease_ttl_s", "lease_tll_s"),
        ),
        ("per_sources", rendered.replace("per_source", "per_sources")),
        ("group", rendered.replace("groups", "group")),
        ("headroom", rendered.replace("headroom_percent", "headroom")),
    ];
    for (i, (key, text)) in coordinator_typos.iter().enumerate() {
        assert_ne!(text, &rendered, "{key}: the rendered config has the key");
        let path = dir.path().join(format!("coordinator{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let err = CoordinatorConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("unknown field `{key}`"))
                && err.contains(&path.display().to_string()),
            "{err}"
        );
    }
    let path = dir.path().join("coordinator0.toml");
    let out = std::process::Command::new(bin("coordinator"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("NATS_URL", "nats://127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "coordinator accepted lease_tll_s");
    assert!(stderr(&out).contains("lease_tll_s"), "{}", stderr(&out));
}

/// The example configs the project ships load through the binaries'
/// loaders: the README's and docs/'s, the config modules' documentation,
/// and every TOML file under deploy/ (the packaged examples in deploy/etc).
#[test]
fn shipped_example_configs_load() {
    let repo = nodemaint_tests::lab::repo();
    let mut examples: Vec<(String, String)> = Vec::new();
    let mut files: Vec<String> = [
        "README.md",
        "coordinator/src/config.rs",
        "node-agent/src/config.rs",
        "node-agent/src/checks.rs",
    ]
    .map(String::from)
    .to_vec();
    for e in std::fs::read_dir(repo.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(format!("docs/{}", p.file_name().unwrap().to_string_lossy()));
        }
    }
    let in_docs = files.iter().filter(|f| f.starts_with("docs/")).count();
    assert!(in_docs >= 5, "docs/*.md: {files:?}");
    for file in &files {
        let text = std::fs::read_to_string(repo.join(file)).unwrap();
        let mut block: Option<String> = None;
        for (n, line) in text.lines().enumerate() {
            // Rust module docs carry the same fences behind `//! `.
            let line = line
                .strip_prefix("//!")
                .map_or(line, |l| l.strip_prefix(' ').unwrap_or(l));
            match (&mut block, line.trim()) {
                (None, "```toml") => block = Some(String::new()),
                (Some(b), "```") => {
                    examples.push((
                        format!("{file} (block ending on line {})", n + 1),
                        b.clone(),
                    ));
                    block = None;
                }
                (Some(b), _) => {
                    b.push_str(line);
                    b.push('\n');
                }
                (None, _) => {}
            }
        }
    }
    let mut stack = vec![repo.join("deploy")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "toml") {
                examples.push((
                    p.display().to_string(),
                    std::fs::read_to_string(&p).unwrap(),
                ));
            }
        }
    }
    assert!(examples.len() >= 6, "found {}", examples.len());
    let (mut agents, mut coordinators) = (0, 0);
    for (name, text) in &examples {
        let top_level: Vec<&str> = text
            .lines()
            .take_while(|l| !l.trim_start().starts_with('['))
            .collect();
        let is_agent = top_level
            .iter()
            .any(|l| l.trim_start().starts_with("node ="))
            || text.trim_start().starts_with("[[checks]]")
            || text.contains("\n[[checks]]");
        if is_agent {
            // A checks-only example is a fragment of an agent's config.
            let text = if top_level
                .iter()
                .any(|l| l.trim_start().starts_with("node ="))
            {
                text.clone()
            } else {
                format!("node = \"node1\"\n{text}")
            };
            let cfg = AgentConfig::from_toml(&text, std::path::Path::new(name))
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            cfg.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            agents += 1;
        } else {
            CoordinatorConfig::from_toml(text, std::path::Path::new(name))
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            coordinators += 1;
        }
    }
    assert!(
        agents >= 3 && coordinators >= 3,
        "{agents} agent and {coordinators} coordinator examples"
    );
}

#[test]
fn a_reader_that_goes_away_ends_the_cli_quietly() {
    let f = two_node_fleet();
    // The pipe's reader is closed before the CLI writes: every write fails
    // with EPIPE, as for `coordinator vm list | head -1` after the first line.
    let mut child = cli_command(&f.nats.url, f.dir.path(), "viewer")
        .args(["vm", "list", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(13),
        "ended by SIGPIPE: {:?}",
        out.status
    );
}
