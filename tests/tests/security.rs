//! The secured bus: a real nats-server with TLS (a test CA from
//! `deploy/nats/gen-tls`) and per-principal nkeys and subject permissions
//! (`deploy/nats/gen-auth`). A maintenance works end to end with every
//! process on its own credentials; each forbidden publish or subscribe is
//! refused by the server (reported to the client as a permission
//! violation); the coordinator acts as the authenticated caller, whatever
//! the message claims; bad credentials, missing TLS and an untrusted
//! certificate are refused with a clear error.

use async_nats::jetstream;
use futures::StreamExt;
use nodemaint_proto::bus::{self, Security};
use nodemaint_proto::pb::{self, api_reply::Kind as Reply, api_request::Kind as Req};
use nodemaint_proto::subjects::Subjects;
use nodemaint_proto::Message as _;
use nodemaint_tests::*;
use std::io::{Read, Write};
use std::time::Duration;
use tokio::sync::broadcast;

fn fleet() -> Fleet {
    let mut f = Fleet::start_secure(&["node1", "node2"]);
    f.add_agent(
        "node1",
        &[
            Dom::vfw("cs1"),
            Dom::user("vm-a", "cs1"),
            Dom::user("tenant-off", "cs1").off(),
        ],
    );
    f.add_agent("node2", &[Dom::user("vm-b", "cs1")]);
    f.wait_registered();
    f
}

fn secure(f: &Fleet) -> &Secure {
    f.secure.as_ref().unwrap()
}

/// Server-reported permission violations of this run's server log.
fn violations(f: &Fleet) -> Vec<String> {
    f.nats
        .proc
        .log_text()
        .lines()
        // Logged as `Publish Violation` / `Subscription Violation`.
        .filter(|l| l.contains("Violation"))
        .map(str::to_string)
        .collect()
}

/// A connection as `principal`, with the server's error messages.
async fn connect_as(
    f: &Fleet,
    principal: &str,
) -> (async_nats::Client, broadcast::Receiver<String>) {
    let s = secure(f);
    let sec = Security {
        creds: Some(s.creds(principal)),
        ca: Some(s.ca.clone()),
        ..Default::default()
    };
    let (c, errors) = bus::connect_watching(&f.nats.url, &format!("test {principal}"), &sec)
        .await
        .unwrap_or_else(|e| panic!("connect as {principal}: {e}"));
    let rx = errors.subscribe();
    // Keep the sender alive with the client.
    std::mem::forget(errors);
    (c, rx)
}

/// Waits up to 3 s for a permission violation naming `subject`; flushes first
/// so the server has seen the operation.
async fn refused(c: &async_nats::Client, rx: &mut broadcast::Receiver<String>, subject: &str) {
    let _ = c.flush().await;
    let got = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match rx.recv().await {
                Ok(e) if e.contains("Permissions Violation") && e.contains(subject) => return e,
                Ok(_) => {}
                Err(e) => panic!("error channel closed: {e}"),
            }
        }
    })
    .await;
    assert!(got.is_ok(), "no permission violation for {subject:?}");
}

/// Asserts that no server error arrives within a short while.
async fn accepted(c: &async_nats::Client, rx: &mut broadcast::Receiver<String>, what: &str) {
    let _ = c.flush().await;
    if let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        panic!("{what} was refused: {e}");
    }
}

fn job_user(f: &Fleet, job_id: &str) -> String {
    f.cli_json("alice", &["job", "show", job_id])["user"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn secured_fleet_does_a_maintenance_with_every_principal_on_its_own_credentials() {
    let f = fleet();
    // Stop mode and enable: commands to node1, results, events, KV records,
    // all within the generated permissions.
    ok(&f.cli(
        "alice",
        &[
            "maintenance",
            "start",
            "node1",
            "--mode",
            "stop",
            "--ack-vfw-downtime",
        ],
    ));
    wait_for(Duration::from_secs(20), "node1 stopped", || {
        let vms = f.cli_json("bob", &["vm", "list", "--node", "node1"]);
        vms.as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "SHUTOFF")
    });
    ok(&f.cli("carol", &["node", "enable", "node1"]));
    wait_for(Duration::from_secs(20), "node1 restarted", || {
        let vms = f.cli_json("bob", &["vm", "list", "--node", "node1"]);
        let state = |n: &str| {
            vms.as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == n)
                .unwrap()["state"]
                .clone()
        };
        state("vm-a") == "RUNNING"
            && state("cs1-vfw") == "RUNNING"
            && state("tenant-off") == "SHUTOFF"
    });
    // Each job names its authenticated user.
    let jobs = f.cli_json("bob", &["job", "list"]);
    let users: Vec<(String, String)> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["kind"].as_str().unwrap().into(),
                j["user"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        users.contains(&("maintenance.start".into(), "alice".into())),
        "{users:?}"
    );
    assert!(
        users.contains(&("node.enable".into(), "carol".into())),
        "{users:?}"
    );
    // An agent restart (it lists its own recorded commands through its
    // own results consumer) and the whole run: not one refusal.
    let mut f = f;
    f.stop_agent("node2");
    f.start_agent("node2");
    f.wait_registered();
    assert_eq!(
        violations(&f),
        Vec::<String>::new(),
        "the principals' permissions are incomplete"
    );
}

#[test]
fn an_agent_reaches_only_its_own_commands_events_and_records() {
    let f = fleet();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = Subjects::default();
        let (node1, mut errs) = connect_as(&f, "node1").await;

        // Its own events: allowed (the control case).
        node1
            .publish(
                s.event("node1", nodemaint_proto::subjects::EventKind::Checks),
                "x".into(),
            )
            .await
            .unwrap();
        accepted(&node1, &mut errs, "node1's own event").await;

        // Another node's commands: no subscription, no consumer reads.
        let _sub = node1.subscribe(s.agent_cmd("node2")).await.unwrap();
        refused(&node1, &mut errs, &s.agent_cmd("node2")).await;
        let _ = node1
            .publish(
                format!(
                    "$JS.API.CONSUMER.MSG.NEXT.{}.agent-node2",
                    s.commands_stream()
                ),
                "{\"batch\":1}".into(),
            )
            .await;
        refused(&node1, &mut errs, "agent-node2").await;
        // Nor its own durable consumer re-pointed at node2's subject.
        let next = format!(
            "$JS.API.CONSUMER.CREATE.{}.agent-node1.{}",
            s.commands_stream(),
            s.agent_cmd("node2")
        );
        let _ = node1.publish(next.clone(), "{}".into()).await;
        refused(&node1, &mut errs, &next).await;

        // Another node's events, any command, other keys, others' inboxes.
        let forged = s.event("node2", nodemaint_proto::subjects::EventKind::Inventory);
        let _ = node1.publish(forged.clone(), "x".into()).await;
        refused(&node1, &mut errs, &forged).await;
        for node in ["node1", "node2"] {
            let _ = node1.publish(s.agent_cmd(node), "x".into()).await;
            refused(&node1, &mut errs, &s.agent_cmd(node)).await;
        }
        let key = format!("$KV.{}.node2.c1", s.agent_results_bucket());
        let _ = node1.publish(key.clone(), "S".into()).await;
        refused(&node1, &mut errs, &key).await;
        let _inbox = node1.subscribe("_INBOX.alice.>".to_string()).await.unwrap();
        refused(&node1, &mut errs, "_INBOX.alice.>").await;
        let api = s.api("node1", false, "node.list");
        let _ = node1.publish(api.clone(), "x".into()).await;
        refused(&node1, &mut errs, &api).await;

        // Nothing reached the commands stream: node2's consumer has nothing pending.
        let (coord, _) = connect_as(&f, "coordinator").await;
        let js = jetstream::new(coord);
        let mut stream = js.get_stream(s.commands_stream()).await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 0);
    });
    // The detector itself sees them (so the empty checks elsewhere mean something).
    assert!(violations(&f).len() >= 9, "{:?}", violations(&f));
}

#[test]
fn the_coordinator_acts_as_the_authenticated_caller_not_the_claimed_one() {
    let f = fleet();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = Subjects::default();
        let call = |c: async_nats::Client, subject: String, claimed: &str, kind: Req| {
            let req = pb::ApiRequest {
                user: claimed.to_string(),
                kind: Some(kind),
                ..Default::default()
            };
            async move {
                let msg = tokio::time::timeout(
                    Duration::from_secs(10),
                    c.request(subject, req.encode_to_vec().into()),
                )
                .await
                .expect("reply")
                .expect("request");
                nodemaint_proto::decode::<pb::ApiReply>(&msg.payload)
                    .unwrap()
                    .kind
                    .unwrap()
            }
        };
        let stop = || {
            Req::StopVm(pb::VmAction {
                vm: "vm-b".into(),
                ..Default::default()
            })
        };

        // alice's connection claiming to be carol: the job is alice's.
        let (alice, _) = connect_as(&f, "alice").await;
        let reply = call(
            alice.clone(),
            s.api("alice", true, "vm.stop"),
            "carol",
            stop(),
        )
        .await;
        let Reply::Accepted(acc) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(job_user(&f, &acc.op_id), "alice");
        let log = f.coordinator_log();
        assert!(
            log.lines().any(|l| l.contains("claims another user")
                && l.contains("carol")
                && l.contains("alice")),
            "the forged claim is not logged: {log}"
        );

        // bob (Level1) claiming to be carol: the server refuses the change
        // subject, under his name or carol's.
        let (bob, mut errs) = connect_as(&f, "bob").await;
        for subject in [
            s.api("bob", true, "vm.start"),
            s.api("carol", true, "vm.start"),
        ] {
            let _ = bob.publish(subject.clone(), "x".into()).await;
            refused(&bob, &mut errs, &subject).await;
        }
        // A change smuggled under his read subject: the coordinator refuses it.
        let reply = call(bob.clone(), s.api("bob", false, "vm.stop"), "carol", stop()).await;
        let Reply::Error(e) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(e.code(), pb::error::Code::PermissionDenied, "{e:?}");
        assert!(
            e.message.contains("nodemaint.v1.api.bob.change"),
            "{}",
            e.message
        );
        // Reads under his own name work; his replies are his own.
        let reply = call(
            bob.clone(),
            s.api("bob", false, "node.list"),
            "carol",
            Req::ListNodes(pb::ListNodes {}),
        )
        .await;
        assert!(matches!(reply, Reply::Nodes(_)), "{reply:?}");

        // The CLI reports the server's refusal at once, naming the rule.
        let out = f.cli("bob", &["node", "enable", "node2"]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("refused") && err.contains("Level2 or Level3") && err.contains("bob"),
            "{err}"
        );
    });
}

#[test]
fn the_coordinator_answers_only_into_the_callers_own_inbox() {
    // A reply subject is the requester's choice, and the coordinator may
    // publish where a Level1 user may not: another user's inbox, an agent's
    // command subject (captured by the commands stream).
    let f = fleet();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = Subjects::default();
        let (bob, _) = connect_as(&f, "bob").await;
        let (alice, _) = connect_as(&f, "alice").await;
        let mut alices_inbox = alice.subscribe("_INBOX.alice.>".to_string()).await.unwrap();
        alice.flush().await.unwrap();
        let list = pb::ApiRequest {
            kind: Some(Req::ListNodes(pb::ListNodes {})),
            ..Default::default()
        }
        .encode_to_vec();
        let subject = s.api("bob", false, "node.list");
        let good = || async {
            let t = std::time::Instant::now();
            let msg = tokio::time::timeout(
                Duration::from_secs(10),
                bob.request(subject.clone(), list.clone().into()),
            )
            .await
            .expect("reply in time")
            .expect("reply");
            let reply = nodemaint_proto::decode::<pb::ApiReply>(&msg.payload).unwrap();
            assert!(matches!(reply.kind, Some(Reply::Nodes(_))), "{reply:?}");
            t.elapsed()
        };
        // The control: bob's own inbox is answered; how long that takes.
        let round_trip = good().await;

        let foreign = ["_INBOX.alice.stolen".to_string(), s.agent_cmd("node1")];
        for reply in &foreign {
            bob.publish_with_reply(subject.clone(), reply.clone(), list.clone().into())
                .await
                .unwrap();
        }
        // The coordinator takes requests in order but answers each in its own
        // task, so a later good answer alone does not prove the bad ones were
        // handled: wait for the good one, then a generous multiple of the
        // round trip, then the coordinator's own word that it refused them.
        good().await;
        let quiet = (round_trip * 5).max(Duration::from_millis(200));
        if let Ok(Some(m)) = tokio::time::timeout(quiet, alices_inbox.next()).await {
            panic!(
                "bob's request was answered into alice's inbox: {:?}",
                m.subject
            );
        }
        wait_for(Duration::from_secs(5), "the refusals logged", || {
            let log = f.coordinator_log();
            foreign.iter().all(|r| {
                log.lines().any(|l| {
                    l.contains("reply subject is not the caller's inbox") && l.contains(r.as_str())
                })
            })
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(100), alices_inbox.next())
                .await
                .is_err(),
            "an answer reached alice's inbox"
        );
        let (coord, _) = connect_as(&f, "coordinator").await;
        let mut commands = jetstream::new(coord)
            .get_stream(s.commands_stream())
            .await
            .unwrap();
        assert_eq!(
            commands.info().await.unwrap().state.messages,
            0,
            "an API reply was stored as a command for node1"
        );
    });
}

#[test]
fn when_the_server_permissions_are_too_wide_the_coordinator_still_refuses() {
    // auth.conf generated from a stale config where bob was Level2; the
    // coordinator's config says Level1.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    write_coordinator_config(&config, &coordinator_config());
    let stale = dir.path().join("stale.toml");
    let mut stale_cfg = coordinator_config();
    stale_cfg.users.get_mut("bob").unwrap().groups = vec!["Level2".into()];
    write_coordinator_config(&stale, &stale_cfg);
    let secure = Secure::generate(dir.path(), &stale, &["node1"]);
    let nats = Nats::start_with_config(dir.path(), &secure.server_conf);
    let mut f = Fleet {
        dir,
        nats,
        coordinator: None,
        agents: Vec::new(),
        config,
        agent_edits: Default::default(),
        secure: Some(secure),
    };
    f.start_coordinator();
    f.add_agent("node1", &[Dom::user("vm-a", "cs1")]);
    f.wait_registered();
    let out = f.cli("bob", &["vm", "stop", "vm-a"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("PERMISSION_DENIED") && err.contains("\"bob\" (groups: Level1)"),
        "{err}"
    );
    assert_eq!(
        violations(&f),
        Vec::<String>::new(),
        "the server let it through"
    );
    let vms = f.cli_json("bob", &["vm", "list"]);
    assert_eq!(vms[0]["state"], "RUNNING");
}

#[test]
fn bad_credentials_plain_connections_and_untrusted_certificates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    write_coordinator_config(&config, &coordinator_config());
    let secure = Secure::generate(dir.path(), &config, &["node1"]);
    let nats = Nats::start_with_config(dir.path(), &secure.server_conf);
    // A second, unrelated CA and key set: valid files, wrong secrets.
    let other = Secure::generate(&dir.path().join("other"), &config, &["node1"]);
    let cli = |env: &[(&str, &std::path::Path)]| {
        let mut c = std::process::Command::new(bin("coordinator"));
        c.args(["node", "list"])
            .env("NATS_URL", &nats.url)
            .env_remove("NATS_CREDS")
            .env_remove("NODEMAINT_CREDS")
            .env_remove("NATS_CA")
            .env_remove("NODEMAINT_USER");
        no_nats_context(&mut c, dir.path());
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(!out.status.success(), "{env:?} connected");
        stderr(&out)
    };
    let (ca, good) = (secure.ca.as_path(), secure.creds("alice"));
    let e = cli(&[("NATS_CA", ca), ("NODEMAINT_CREDS", &other.creds("alice"))]);
    assert!(
        e.contains("authorization violation") && e.contains("refused these credentials"),
        "{e}"
    );
    let e = cli(&[("NATS_CA", ca)]);
    assert!(
        e.contains("requires credentials") && e.contains("NATS_CREDS"),
        "{e}"
    );
    let e = cli(&[("NODEMAINT_CREDS", &good)]);
    assert!(e.contains("not trusted") && e.contains("NATS_CA"), "{e}");
    let e = cli(&[("NATS_CA", &other.ca), ("NODEMAINT_CREDS", &good)]);
    assert!(e.contains("not signed by this CA"), "{e}");
    // A credentials file others may read: refused before connecting, naming the fix.
    let exposed = dir.path().join("exposed.creds");
    std::fs::copy(&good, &exposed).unwrap();
    std::fs::set_permissions(
        &exposed,
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let e = cli(&[("NATS_CA", ca), ("NODEMAINT_CREDS", &exposed)]);
    assert!(
        e.contains(&format!("chmod 600 {}", exposed.display())),
        "{e}"
    );
    // The right ones work.
    let out = std::process::Command::new(bin("coordinator"))
        .args(["node", "list", "--output", "json"])
        .env("NATS_URL", &nats.url)
        .env("NATS_CA", ca)
        .env("NODEMAINT_CREDS", &good)
        .env_remove("NATS_CREDS")
        .output()
        .unwrap();
    // No coordinator runs here: connected, then "no coordinator answers".
    assert!(
        stderr(&out).contains("no coordinator answers"),
        "{}",
        stderr(&out)
    );

    // Plain text (no TLS handshake): the server refuses the connection.
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", nats.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut info = [0u8; 4096];
    let n = tcp.read(&mut info).unwrap();
    let info = String::from_utf8_lossy(&info[..n]).to_string();
    assert!(info.contains("\"tls_required\":true"), "{info}");
    let _ = tcp.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n");
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        !rest.contains("PONG"),
        "plain-text client was served: {rest}"
    );
}

#[test]
fn an_operator_cannot_make_the_server_deliver_events_anywhere() {
    // A push consumer's deliver subject is in the request body, a pull's or
    // direct get's reply subject is the requester's choice: the server would
    // publish events wherever a Level1 user says (an agent's command subject,
    // the coordinator's event subjects, another user's inbox). Operators
    // therefore have no JetStream permissions at all and read the events
    // stream through the API, which answers only into their own inbox.
    let f = fleet();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = Subjects::default();
        let (bob, mut errs) = connect_as(&f, "bob").await;
        let create = format!("$JS.API.CONSUMER.CREATE.{}", s.events_stream());
        let body = serde_json::json!({
            "stream_name": s.events_stream(),
            "config": { "deliver_subject": s.agent_cmd("node1"), "deliver_policy": "all" },
        })
        .to_string();
        let _ = bob.publish(create.clone(), body.into()).await;
        refused(&bob, &mut errs, &create).await;
        // The library's way, with the same deliver subject: refused too.
        let created = tokio::time::timeout(
            Duration::from_secs(10),
            jetstream::new(bob.clone()).create_consumer_on_stream(
                jetstream::consumer::push::Config {
                    deliver_subject: s.agent_cmd("node1"),
                    ..Default::default()
                },
                s.events_stream(),
            ),
        )
        .await;
        assert!(
            !matches!(created, Ok(Ok(_))),
            "push consumer created: {created:?}"
        );
        // Pulls and direct gets answer to a reply subject of the caller's choosing.
        for subject in [
            format!("$JS.API.CONSUMER.MSG.NEXT.{}.any", s.events_stream()),
            format!("$JS.API.DIRECT.GET.{}", s.events_stream()),
        ] {
            let _ = bob
                .publish_with_reply(subject.clone(), s.agent_cmd("node1"), "{}".into())
                .await;
            refused(&bob, &mut errs, &subject).await;
        }
        let (coord, _) = connect_as(&f, "coordinator").await;
        let mut stream = jetstream::new(coord)
            .get_stream(s.commands_stream())
            .await
            .unwrap();
        let stored = stream.info().await.unwrap().state.messages;
        assert_eq!(stored, 0, "events were delivered into the commands stream");
    });

    // Replay and job following still work for operators, Level1 included.
    let acc = f.cli_json("alice", &["vm", "stop", "vm-b", "--detach"]);
    let id = acc["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{acc}"))
        .to_string();
    let watched = f.cli("bob", &["job", "watch", &id, "--output", "json"]);
    ok(&watched);
    assert!(
        stdout(&watched).contains("SUCCEEDED"),
        "{}",
        stdout(&watched)
    );
    // alice follows a job to its end (event.read pages, not a consumer).
    ok(&f.cli("alice", &["vm", "start", "vm-b"]));
    let out = f.cli("bob", &["events", "--since", "1h", "--output", "json"]);
    ok(&out);
    let ops: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        ops.iter().any(|e| e.to_string().contains(&id)),
        "bob's replay lacks job {id}: {}",
        stdout(&out)
    );
    let kinds = f.cli(
        "bob",
        &[
            "events",
            "--since",
            "1h",
            "--kind",
            "job",
            "--node",
            "coordinator",
        ],
    );
    ok(&kinds);
    assert!(!stdout(&kinds).is_empty(), "{}", stderr(&kinds));
}

#[test]
fn password_credentials_work_and_a_wrong_password_is_refused() {
    // Users with passwords (instead of nkeys), as a hand-written server
    // config would have them.
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start_with_config(
        dir.path(),
        "authorization { users = [ { user: \"alice\", password: \"s3cret-pw\" } ] }",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        p
    };
    let good = write("good.creds", "user = \"alice\"\npassword = \"s3cret-pw\"\n");
    let bad = write("bad.creds", "user = \"alice\"\npassword = \"guess\"\n");
    rt.block_on(async {
        let sec = |creds| Security {
            creds: Some(creds),
            ..Default::default()
        };
        let c = bus::connect(&nats.url, "t", &sec(good.clone()))
            .await
            .unwrap();
        c.flush().await.unwrap();
        let e = bus::connect(&nats.url, "t", &sec(bad.clone()))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("as alice") && e.contains("refused these credentials"),
            "{e}"
        );
    });
    // The CLI with --user/--password, or the `nats` CLI's NATS_USER and
    // NATS_PASSWORD: connected (no coordinator runs here to answer).
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(bin("coordinator"));
        c.args(["node", "list"])
            .args(args)
            .env("NATS_URL", &nats.url)
            .env_remove("NATS_CREDS")
            .env_remove("NODEMAINT_CREDS")
            .env_remove("NATS_CA")
            .env_remove("NODEMAINT_USER");
        no_nats_context(&mut c, dir.path());
        c.envs(env.iter().copied());
        stderr(&c.output().unwrap())
    };
    for e in [
        cli(&["--user", "alice", "--password", "s3cret-pw"], &[]),
        cli(
            &[],
            &[("NATS_USER", "alice"), ("NATS_PASSWORD", "s3cret-pw")],
        ),
    ] {
        assert!(e.contains("no coordinator answers"), "{e}");
    }
    let e = cli(&["--user", "alice", "--password", "guess"], &[]);
    assert!(e.contains("refused these credentials"), "{e}");
    assert!(!e.contains("guess"), "the password is in the message: {e}");
}

/// The CLI logs in as the `nats` CLI in the same shell does: an nkey seed
/// file (`--nkey`), a NATS context (named, or the selected one) giving the
/// URL, nkey, user and CA; and `NATS_CREDS` is only ever a NATS .creds
/// file: nodemaint's own credentials there are refused, naming the file and
/// the variable they belong in.
#[test]
fn the_cli_logs_in_with_an_nkey_a_context_and_never_reads_its_own_format_from_nats_creds() {
    let f = fleet();
    let s = secure(&f);
    let names = |out: &std::process::Output| -> Vec<String> {
        ok(out);
        let v: serde_json::Value = serde_json::from_str(&stdout(out)).unwrap();
        let mut n: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    let cli = |args: &[&str], env: &[(&str, &std::ffi::OsStr)]| {
        let mut c = std::process::Command::new(bin("coordinator"));
        c.args(args)
            .args(["--output", "json"])
            .env_remove("NATS_URL")
            .env_remove("NATS_CREDS")
            .env_remove("NODEMAINT_CREDS")
            .env_remove("NATS_CA")
            .env_remove("NODEMAINT_USER");
        no_nats_context(&mut c, f.dir.path());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let url = std::ffi::OsStr::new(&f.nats.url);
    let ca = s.ca.as_os_str();
    let nk = s.nkey("alice");

    // --nkey FILE with the user it belongs to.
    let nk_arg = nk.to_str().unwrap();
    let out = cli(
        &["node", "list", "--nkey", nk_arg, "--user", "alice"],
        &[("NATS_URL", url), ("NATS_CA", ca)],
    );
    assert_eq!(names(&out), ["node1", "node2"]);
    // NATS_NKEY and NATS_USER, the `nats` CLI's variables.
    let out = cli(
        &["node", "list"],
        &[
            ("NATS_URL", url),
            ("NATS_CA", ca),
            ("NATS_NKEY", nk.as_os_str()),
            ("NATS_USER", "alice".as_ref()),
        ],
    );
    assert_eq!(names(&out), ["node1", "node2"]);

    // A context: the URL, the nkey, the user and the CA, all from its file.
    let ctx_dir = f.dir.path().join("nats/context");
    std::fs::create_dir_all(&ctx_dir).unwrap();
    std::fs::write(
        ctx_dir.join("lab.json"),
        serde_json::json!({
            "description": "the test fleet",
            "url": f.nats.url,
            "nkey": nk,
            "user": "alice",
            "ca": s.ca,
        })
        .to_string(),
    )
    .unwrap();
    let out = cli(&["node", "list", "--context", "lab"], &[]);
    assert_eq!(names(&out), ["node1", "node2"]);
    let out = cli(&["node", "list"], &[("NATS_CONTEXT", "lab".as_ref())]);
    assert_eq!(names(&out), ["node1", "node2"]);
    // Without a name, the context `nats context select` chose (its login;
    // the URL and CA of the environment win over its own).
    let out = cli(&["node", "list"], &[("NATS_URL", url), ("NATS_CA", ca)]);
    assert!(
        stderr(&out).contains("requires credentials"),
        "{}",
        stderr(&out)
    );
    std::fs::write(f.dir.path().join("nats/context.txt"), "lab\n").unwrap();
    let out = cli(&["node", "list"], &[("NATS_URL", url), ("NATS_CA", ca)]);
    assert_eq!(names(&out), ["node1", "node2"]);
    // A context that does not exist is an error naming its file.
    let out = cli(&["node", "list", "--context", "nope"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nope.json"), "{}", stderr(&out));
    std::fs::remove_file(f.dir.path().join("nats/context.txt")).unwrap();

    // nodemaint's own format in NATS_CREDS: refused before connecting, with
    // the file and the fix; the same file as NODEMAINT_CREDS works.
    let own = s.creds("alice");
    let out = cli(
        &["node", "list"],
        &[
            ("NATS_URL", url),
            ("NATS_CA", ca),
            ("NATS_CREDS", own.as_os_str()),
        ],
    );
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains(&format!("NODEMAINT_CREDS={}", own.display()))
            && e.contains("not a NATS .creds file"),
        "{e}"
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a settings error is a usage error: {e}"
    );
    let out = cli(
        &["node", "list"],
        &[
            ("NATS_URL", url),
            ("NATS_CA", ca),
            ("NODEMAINT_CREDS", own.as_os_str()),
        ],
    );
    assert_eq!(names(&out), ["node1", "node2"]);
}
