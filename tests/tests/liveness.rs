//! Heartbeats are core NATS messages only (issue 17 §5): they cost no stored
//! write, liveness still follows them, and a coordinator that starts learns
//! it from the next heartbeats; inventories go out only when they change,
//! and a coordinator that missed one converges to the agent's list.

use async_nats::jetstream;
use futures::StreamExt;
use nodemaint_proto::model::NodeRecord;
use nodemaint_proto::subjects::{EventKind, Subjects};
use nodemaint_tests::raw::js_client;
use nodemaint_tests::*;
use std::time::{Duration, Instant};

fn node(f: &Fleet, name: &str) -> serde_json::Value {
    f.cli_json("alice", &["node", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
        .unwrap_or_default()
}

fn reachable(f: &Fleet, name: &str) -> bool {
    node(f, name)["reachable"] == true
}

/// Last sequence of the events stream and of the nodes bucket: every stored
/// event and every node record write moves one of them.
async fn stored_writes(js: &jetstream::Context, s: &Subjects) -> (u64, u64) {
    let mut last = Vec::new();
    for name in [s.events_stream(), format!("KV_{}", s.nodes_bucket())] {
        let mut stream = js.get_stream(&name).await.unwrap();
        last.push(stream.info().await.unwrap().state.last_sequence);
    }
    (last[0], last[1])
}

async fn next_beat(beats: &mut async_nats::Subscriber) {
    tokio::time::timeout(Duration::from_secs(5), beats.next())
        .await
        .expect("a heartbeat within 5 s")
        .unwrap();
}

async fn stored_record(js: &jetstream::Context, s: &Subjects, node: &str) -> NodeRecord {
    let kv = js.get_key_value(s.nodes_bucket()).await.unwrap();
    let v = kv.get(node).await.unwrap().expect("node record");
    serde_json::from_slice(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_cost_no_stored_write_and_liveness_follows_them() {
    let mut f = tokio::task::block_in_place(|| {
        let mut f = Fleet::start();
        f.add_agent("node1", &[Dom::user("vm1", "cs1")]);
        f.wait_registered();
        f
    });
    let (client, js) = js_client(&f).await;
    let s = Subjects::default();
    let mut beats = client
        .subscribe(s.event("node1", EventKind::Heartbeat))
        .await
        .unwrap();
    next_beat(&mut beats).await;

    // Ten heartbeats go by (3 s at 300 ms): neither the events stream nor
    // the nodes bucket stores anything.
    let before = stored_writes(&js, &s).await;
    for _ in 0..10 {
        next_beat(&mut beats).await;
    }
    assert_eq!(
        stored_writes(&js, &s).await,
        before,
        "(events stream, nodes bucket) last sequences moved with heartbeats alone"
    );
    let mut events = js.get_stream(s.events_stream()).await.unwrap();
    let captured = events.info().await.unwrap().config.subjects.clone();
    assert!(
        !captured
            .iter()
            .any(|x| x.ends_with(".heartbeat") || x.ends_with(".*")),
        "{captured:?}"
    );
    // ...and yet the node is reachable: liveness is what the coordinator heard.
    assert!(tokio::task::block_in_place(|| reachable(&f, "node1")));

    // Heartbeats stop: unreachable within the grace of three intervals.
    tokio::task::block_in_place(|| f.stop_agent("node1"));
    let stopped = Instant::now();
    tokio::task::block_in_place(|| {
        wait_for(
            Duration::from_secs(15),
            "node1 to become unreachable",
            || !reachable(&f, "node1"),
        )
    });
    assert!(
        stopped.elapsed() >= Duration::from_secs(2),
        "unreachable after {:?}, before its grace of three heartbeats",
        stopped.elapsed()
    );
    // They resume: reachable again.
    tokio::task::block_in_place(|| {
        f.start_agent("node1");
        wait_for(
            Duration::from_secs(30),
            "node1 to be reachable again",
            || reachable(&f, "node1"),
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_learns_liveness_and_the_inventory_it_missed() {
    let mut f = tokio::task::block_in_place(|| {
        let mut f = Fleet::start();
        f.add_agent("node1", &[Dom::user("vm1", "cs1")]);
        f.wait_registered();
        f
    });
    let (_client, js) = js_client(&f).await;
    let s = Subjects::default();

    // The coordinator goes away; meanwhile the agent restarts with a new VM
    // and publishes its new list, which nobody applies to the node record.
    f.coordinator.take().unwrap().kill();
    tokio::task::block_in_place(|| {
        f.stop_agent("node1");
        node_xml(
            &f.dir.path().join("node1.xml"),
            8192,
            8,
            &[Dom::user("vm1", "cs1"), Dom::user("vm2", "cs1")],
        );
        f.start_agent("node1");
        wait_for(Duration::from_secs(30), "the agent to start", || {
            f.agent_log("node1").contains("agent started")
        });
    });
    let rec = stored_record(&js, &s, "node1").await;
    assert_eq!(rec.domains.len(), 1, "{rec:?}");
    // The stored liveness is long stale (heartbeats write nothing): only
    // heartbeats heard by the new coordinator can make node1 reachable.
    let grace_ms = 3 * i64::from(rec.heartbeat_interval_ms.max(1000));
    tokio::task::block_in_place(|| {
        wait_for(
            Duration::from_secs(10),
            "the stored last_seen to be older than the grace",
            || nodemaint_proto::now_ms() - rec.last_seen_ms > grace_ms,
        )
    });

    tokio::task::block_in_place(|| f.start_coordinator());
    let answered = Instant::now();
    let view = tokio::task::block_in_place(|| node(&f, "node1"));
    assert_eq!(
        view["reachable"], true,
        "a new leader's first answer already knows liveness: {view}"
    );
    // The heartbeat's inventory generation told it that it missed a list: it
    // re-reads the last one from the stream and converges to the agent's.
    tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(10), "the missed inventory", || {
            node(&f, "node1")["vms_total"] == 2
        })
    });
    assert!(
        answered.elapsed() < Duration::from_secs(5),
        "converged after {:?}",
        answered.elapsed()
    );
    let rec = stored_record(&js, &s, "node1").await;
    let mut names: Vec<_> = rec.domains.iter().map(|d| d.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["vm1", "vm2"]);
}
