//! Check-then-act, made atomic: a request id, "one rolling maintenance at
//! a time" and "one job at a time on a VM" are claimed with KV creates, so concurrent duplicates cannot both
//! run (before, both read "not there yet" and both acted). And growth with
//! a bound: finished jobs expire, listings are bounded.

use nodemaint_proto::pb::{self, api_reply::Kind as Reply, api_request::Kind as Req};
use nodemaint_proto::Message as _;
use nodemaint_tests::*;
use serde_json::Value;
use std::time::Duration;

/// Runs `args` as `user` from `n` threads released at once.
fn at_once(f: &Fleet, n: usize, user: &str, args: &[&str]) -> Vec<std::process::Output> {
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    f.cli(user, args)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn jobs_of_kind(f: &Fleet, kind: &str) -> Vec<Value> {
    f.cli_json("bob", &["job", "list", "--limit", "1000"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["kind"] == kind)
        .cloned()
        .collect()
}

#[test]
fn concurrent_duplicates_run_once() {
    let mut f = Fleet::start();
    f.add_agent("node1", &[Dom::user("vm-a", "cs1").off()]);
    f.add_agent("node2", &[Dom::user("vm-b", "cs1")]);
    f.add_agent("node3", &[Dom::user("vm-c", "cs2")]);
    f.wait_registered();

    // Eight copies of one request (same id), sent at once on one connection
    // so they reach the coordinator back to back: one job, and every answer
    // names it.
    let ids = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = async_nats::ConnectOptions::new()
            .custom_inbox_prefix(nodemaint_proto::subjects::inbox_prefix("alice"))
            .connect(f.nats.url.as_str())
            .await
            .unwrap();
        let subject = nodemaint_proto::subjects::Subjects::default().api("alice", true, "vm.start");
        let req = pb::ApiRequest {
            request_id: "start-a-1".into(),
            kind: Some(Req::StartVm(pb::VmAction {
                vm: "vm-a".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let body: bytes::Bytes = req.encode_to_vec().into();
        let answers = futures::future::join_all(
            (0..8).map(|_| client.request(subject.clone(), body.clone())),
        )
        .await;
        answers
            .into_iter()
            .map(|a| {
                let reply = pb::ApiReply::decode(a.unwrap().payload).unwrap();
                match reply.kind {
                    Some(Reply::Accepted(acc)) => acc.op_id,
                    other => panic!("not accepted: {other:?}"),
                }
            })
            .collect::<std::collections::BTreeSet<String>>()
    });
    assert_eq!(ids.len(), 1, "one job for one request id: {ids:?}");
    assert_eq!(jobs_of_kind(&f, "vm.start").len(), 1);

    // Four moves of one VM at once (four request ids): one job acts on it,
    // the others are refused naming that job (or, once it has ended, the
    // VM's new place); the VM stays on exactly one node. (libvirt's test
    // driver cannot migrate: the job itself fails, leaving vm-b on node2.)
    let outs = at_once(
        &f,
        4,
        "alice",
        &["vm", "move", "vm-b", "--to", "node3", "--detach"],
    );
    let accepted = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        accepted,
        1,
        "{:?}",
        outs.iter().map(stderr).collect::<Vec<_>>()
    );
    for o in outs.iter().filter(|o| !o.status.success()) {
        let e = stderr(o);
        assert!(
            e.contains("is acting on VM vm-b") || e.contains("already runs on node3"),
            "{e}"
        );
    }
    let moves = jobs_of_kind(&f, "vm.move");
    assert_eq!(moves.len(), 1, "{moves:?}");
    let places: Vec<String> = f
        .cli_json("bob", &["vm", "list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"] == "vm-b")
        .map(|v| v["node"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(places.len(), 1, "{places:?}");

    // Four different rolling starts at once: exactly one is accepted, the
    // others are refused naming it.
    let outs = at_once(
        &f,
        4,
        "alice",
        &[
            "rolling",
            "start",
            "node2",
            "node3",
            "--wait-for-continue",
            "--yes",
            "--detach",
            "--output",
            "json",
        ],
    );
    let accepted: Vec<&std::process::Output> = outs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(
        accepted.len(),
        1,
        "{:?}",
        outs.iter().map(stderr).collect::<Vec<_>>()
    );
    let v: Value = serde_json::from_str(stdout(accepted[0]).trim()).unwrap();
    let rolling = v["job_id"].as_str().unwrap().to_string();
    for o in outs.iter().filter(|o| !o.status.success()) {
        assert!(
            stderr(o).contains(&format!(
                "rolling maintenance {rolling} is already in progress"
            )),
            "{}",
            stderr(o)
        );
    }
    assert_eq!(jobs_of_kind(&f, "rolling").len(), 1);

    // Once it ends, the next one may start.
    // (libvirt's test driver cannot migrate: its first drain may fail, and
    // end it, before the abort arrives.)
    let out = f.cli("alice", &["rolling", "abort", &rolling]);
    assert!(
        out.status.success() || stderr(&out).contains("it is Failed"),
        "{}",
        stderr(&out)
    );
    wait_for(Duration::from_secs(120), "the rolling to end", || {
        f.cli_json("bob", &["job", "show", &rolling])["state"] != "RUNNING"
    });
    let out = f.cli(
        "alice",
        &[
            "rolling",
            "start",
            "node3",
            "--wait-for-continue",
            "--yes",
            "--detach",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn finished_jobs_expire_and_listings_are_bounded() {
    // Long enough that the first job outlives the second one's run even on
    // a loaded machine (the listing below must see both).
    let mut f = Fleet::start_with_config(|c| c.job_retention_s = 20);
    f.add_agent(
        "node1",
        &[
            Dom::user("vm-a", "cs1").off(),
            Dom::user("vm-b", "cs1").off(),
        ],
    );
    f.wait_registered();
    let start = |vm: &str| {
        let out = f.cli("alice", &["vm", "start", vm, "--output", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        job_of(&out)["id"].as_str().unwrap().to_string()
    };
    let first = start("vm-a");
    let second = start("vm-b");

    // Bounded: the newest first, and the CLI says what it left out.
    let out = f.cli("bob", &["job", "list", "--limit", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&second) && !stdout(&out).contains(&first),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("the newest 1 of 2 jobs"),
        "{}",
        stderr(&out)
    );

    // Expired: both records go once past the retention; their events stay.
    wait_for(Duration::from_secs(120), "finished jobs deleted", || {
        f.cli_json("bob", &["job", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    });
    let out = f.cli("bob", &["job", "show", &first]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown job"), "{}", stderr(&out));
    let events = f.cli(
        "bob",
        &[
            "events", "--kind", "job", "--since", "1h", "--output", "json",
        ],
    );
    assert!(stdout(&events).contains(&first), "{}", stderr(&events));
}
