//! Jobs a crashed coordinator left RUNNING, resumed by the next one. The
//! job records are written into the jobs bucket exactly as a coordinator
//! that died at that point would leave them; then a coordinator starts and
//! must finish them truthfully.
//!
//! The defect: a one-command job whose coordinator died before the
//! command was journaled was resumed with no commands, and `all(ok)` over
//! none ended it SUCCEEDED having done nothing.

use async_nats::jetstream;
use nodemaint_coordinator::jobs::{hex, CommandRecord, Job, JobSpec, JobState, StartVm};
use nodemaint_proto::pb;
use nodemaint_proto::subjects::Subjects;
use nodemaint_proto::Message as _;
use nodemaint_tests::*;
use serde_json::Value;
use std::time::Duration;

fn vm_state(f: &Fleet, name: &str) -> Option<String> {
    let v = f.cli_json("bob", &["vm", "list"]);
    v.as_array()?
        .iter()
        .find(|x| x["name"] == name)
        .and_then(|x| x["state"].as_str().map(str::to_string))
}

/// A `vm start` job as the API records it: RUNNING, its command follows
/// from its spec, nothing journaled yet.
fn start_job(vm: &str, node: &str) -> Job {
    let spec = JobSpec::Start(StartVm { vm: vm.into() });
    Job::new(spec, "alice", Some(node))
}

/// Writes job records into the jobs bucket (the coordinator is down).
fn write_jobs(f: &Fleet, jobs: &[&Job]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(&f.nats.url).await.unwrap();
        let js = jetstream::new(client);
        let kv = js
            .get_key_value(Subjects::new("nodemaint").jobs_bucket())
            .await
            .unwrap();
        for job in jobs {
            kv.put(&job.id, serde_json::to_vec(job).unwrap().into())
                .await
                .unwrap();
        }
    });
}

fn job(f: &Fleet, id: &str) -> Value {
    f.cli_json("bob", &["job", "show", id])
}

fn wait_ended(f: &Fleet, id: &str) -> Value {
    wait_for(Duration::from_secs(120), "the resumed job to end", || {
        matches!(
            job(f, id)["state"].as_str(),
            Some("SUCCEEDED" | "FAILED" | "ABORTED")
        )
    });
    job(f, id)
}

#[test]
fn a_resumed_single_job_sends_its_command_and_never_succeeds_having_done_nothing() {
    let mut f = Fleet::start();
    f.add_agent(
        "node1",
        &[
            Dom::vfw("cs1"),
            Dom::user("web-1", "cs1").off(),
            Dom::user("web-2", "cs1").off(),
            Dom::user("web-3", "cs1").off(),
            Dom::user("web-4", "cs1").off(),
        ],
    );
    f.wait_registered();
    f.coordinator.take().unwrap().kill();

    // Died before journaling anything: no machine, no command record.
    let unjournaled = start_job("web-1", "node1");
    // Died after journaling the command as sent, before sending it.
    let mut unsent = start_job("web-2", "node1");
    unsent.engine = Some(serde_json::json!({
        "job": unsent.id, "vm": "web-2", "phase": "Sent"
    }));
    // Journaled by the executor before the engine (a job older than the
    // upgrade): in the command list under its own id, no machine; unsent.
    let mut legacy = start_job("web-3", "node1");
    let cmd = pb::AgentCommand {
        id: "legacy-7".into(),
        op_id: legacy.id.clone(),
        requested_by: "alice".into(),
        kind: Some(pb::agent_command::Kind::Start(pb::StartVm {
            vm: "web-3".into(),
        })),
        ..Default::default()
    };
    legacy.commands.push(CommandRecord {
        id: "legacy-7".into(),
        node: "node1".into(),
        vm: "web-3".into(),
        action: "start".into(),
        to: None,
        payload: hex(&cmd.encode_to_vec()),
        ok: None,
        message: None,
    });
    // Recorded by the API with its command journaled (issue 17: the record
    // the job is created with allows the send), died before sending it.
    let mut recorded = start_job("web-4", "node1");
    nodemaint_coordinator::driver::single::prejournal(&mut recorded);
    assert_eq!(recorded.commands.len(), 1, "{recorded:?}");
    write_jobs(&f, &[&unjournaled, &unsent, &legacy, &recorded]);
    assert_eq!(unjournaled.state, JobState::Running);

    f.start_coordinator();
    for (j, vm, id) in [
        (&unjournaled, "web-1", format!("{}-cmd", unjournaled.id)),
        (&unsent, "web-2", format!("{}-cmd", unsent.id)),
        (&legacy, "web-3", "legacy-7".to_string()),
        (&recorded, "web-4", format!("{}-cmd", recorded.id)),
    ] {
        let done = wait_ended(&f, &j.id);
        assert_eq!(
            done["state"],
            "SUCCEEDED",
            "{vm}: {done:#}\n{}",
            f.coordinator_log()
        );
        // Succeeded means done: the VM runs.
        assert_eq!(vm_state(&f, vm).as_deref(), Some("RUNNING"), "{done:#}");
        // Under the command id it was journaled with, never another.
        let cmds: Vec<&Value> = done["commands"]
            .as_array()
            .map(|c| c.iter().collect())
            .unwrap_or_default();
        assert!(
            cmds.iter().all(|c| c["id"] == id.as_str()),
            "{vm}: {cmds:?}"
        );
    }
    // The journaled-but-unsent one was found out (resent once), not sent
    // again blindly: its journal says so.
    let steps = job(&f, &unsent.id)["steps"].to_string();
    assert!(steps.contains("web-2 started"), "{steps}");
    // So was the one recorded with its command, under that one entry.
    let done = job(&f, &recorded.id);
    assert!(
        done["steps"].to_string().contains("web-4 started"),
        "{done:#}"
    );
    assert_eq!(
        done["commands"].as_array().map(Vec::len),
        Some(1),
        "{done:#}"
    );
}

/// Died after journaling a machine's end, before writing the job's end:
/// the resumed job ends as its machine says (stop all used to skip a
/// finished machine, leaving the job RUNNING and its node held).
#[test]
fn a_job_journaled_as_finished_ends_when_resumed() {
    let mut f = Fleet::start();
    f.add_agent("node1", &[Dom::vfw("cs1"), Dom::user("web-1", "cs1").off()]);
    f.wait_registered();
    f.coordinator.take().unwrap().kill();

    let mut stop_all = Job::new(JobSpec::StopAll(Default::default()), "alice", Some("node1"));
    stop_all.engine = Some(serde_json::json!({
        "job": stop_all.id, "node": "node1", "parallel": 4,
        "vms": [{ "vm": "web-1", "vfw": false, "phase": { "Done": { "Stopped": "shut off" } } }],
        "finished": true
    }));
    let mut enable = Job::new(JobSpec::Enable(Default::default()), "alice", Some("node1"));
    enable.engine = Some(serde_json::json!({
        "job": enable.id, "node": "node1", "which": "Enable",
        "vms": [{ "vm": "cs1-vfw", "vfw": true, "found": "Running",
                  "phase": { "Done": "AlreadyRunning" } }],
        "finished": true
    }));
    write_jobs(&f, &[&stop_all, &enable]);

    f.start_coordinator();
    for j in [&stop_all, &enable] {
        let done = wait_ended(&f, &j.id);
        assert_eq!(done["state"], "SUCCEEDED", "{done:#}");
        assert_eq!(done["report"]["done"].as_array().map(Vec::len), Some(1));
    }
    // Repeating an ending did nothing else: web-1 stays as it was.
    assert_eq!(vm_state(&f, "web-1").as_deref(), Some("SHUTOFF"));
}

/// Enable resumed with a start journaled (`Starting`) but never sent, and
/// one VM still waiting: the journaled start is found out (the agent never
/// claimed it, so the same id goes again), never re-sent under another id;
/// then the rest starts, and every record goes only once its VM runs.
#[test]
fn a_resumed_enable_finds_out_its_journaled_start_and_restarts_every_recorded_vm() {
    let mut f = Fleet::start();
    f.add_agent("node1", &[Dom::vfw("cs1"), Dom::user("web-1", "cs1")]);
    f.wait_registered();
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
    wait_for(Duration::from_secs(30), "both stopped and recorded", || {
        let v = f.cli_json("bob", &["vm", "list"]);
        v.as_array()
            .unwrap()
            .iter()
            .all(|x| x["state"] == "SHUTOFF" && x["stopped_by"].is_string())
    });
    f.coordinator.take().unwrap().kill();

    let mut enable = Job::new(JobSpec::Enable(Default::default()), "carol", Some("node1"));
    enable.engine = Some(serde_json::json!({
        "job": enable.id, "node": "node1", "which": "Enable",
        "vms": [
            { "vm": "cs1-vfw", "vfw": true, "found": "ShutOff", "phase": "Starting" },
            { "vm": "web-1", "vfw": false, "found": "ShutOff", "phase": "Waiting" }
        ]
    }));
    write_jobs(&f, &[&enable]);

    f.start_coordinator();
    let done = wait_ended(&f, &enable.id);
    assert_eq!(done["state"], "SUCCEEDED", "{done:#}");
    let v = f.cli_json("bob", &["vm", "list"]);
    for x in v.as_array().unwrap() {
        assert_eq!(x["state"], "RUNNING", "{x}");
        assert!(x["stopped_by"].is_null(), "record left: {x}");
    }
    // Only web-1's start was sent as new; the VFW's journaled start went
    // under its journaled id.
    let sent: Vec<&str> = done["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(sent, [format!("{}-start1", enable.id)]);
    let steps = done["steps"].to_string();
    assert!(steps.contains("cs1-vfw: started"), "{steps}");
}
