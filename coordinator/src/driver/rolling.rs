//! Rolling maintenance: the planner orders the nodes into groups of at most
//! K whose VMs the rest of the fleet can absorb; then, group by group, every
//! node goes through
//!
//! ```text
//! pending → draining → drained → rebooting → rebooted → checked → enabled → done
//! ```
//!
//! Each phase is written to the job's `params.progress` before and after it
//! runs, so a restarted coordinator continues where the journal says, never
//! skipping a node nor repeating a finished phase. Drains and enables are
//! child jobs (resumed on their own after a restart); this executor waits
//! for them. Pause, resume and abort act at phase boundaries.

use crate::driver::executor::{await_job, launch_child};
use crate::jobs::{Job, JobState};
use crate::server::Coordinator;
use nodemaint_planner as planner;
use nodemaint_proto::model::NodeStatus;
use nodemaint_proto::pb::{self, agent_command::Kind};
use std::sync::Arc;
use std::time::Duration;

pub const PHASES: [&str; 8] = [
    "pending",
    "draining",
    "drained",
    "rebooting",
    "rebooted",
    "checked",
    "enabled",
    "done",
];

fn rank(phase: &str) -> usize {
    PHASES.iter().position(|p| *p == phase).unwrap_or(0)
}

/// Plans the drains of one group jointly: each node's drain is planned on a
/// snapshot in which the group is in maintenance and the VMs of the nodes
/// planned before it are already on their destinations, so concurrent
/// drains never count on the same free memory.
pub fn plan_group(
    fleet: &planner::Fleet,
    group: &[String],
    limits: &planner::Limits,
) -> Result<Vec<planner::DrainPlan>, planner::PlanError> {
    let mut f = fleet.clone();
    for n in &mut f.nodes {
        if group.contains(&n.name) {
            n.status = planner::NodeStatus::Maintenance;
        }
    }
    let mut plans = Vec::new();
    for node in group {
        let plan = planner::plan_drain(&f, node, limits)?;
        for m in &plan.moves {
            if let Some(vm) = f.vms.iter_mut().find(|v| v.name == m.vm) {
                vm.node = m.to.clone();
            }
        }
        plans.push(plan);
    }
    Ok(plans)
}

async fn set_phase(
    c: &Coordinator,
    job: &str,
    node: &str,
    phase: &str,
    extra: Option<(&str, serde_json::Value)>,
) {
    c.update_job(job, |j| {
        j.params["progress"][node] = phase.into();
        if let Some((k, v)) = &extra {
            j.params[*k][node] = v.clone();
        }
    })
    .await;
    // Phases are in `params.progress`; the event is for live watchers (the
    // journal keeps group starts, checks and failures, so it stays small).
    c.job_event(pb::JobEvent {
        job_id: job.to_string(),
        kind: "rolling".into(),
        state: "RUNNING".into(),
        message: format!("{node}: {phase}"),
        ..Default::default()
    })
    .await;
}

/// Waits while the job is paused; an aborted job stops here.
async fn checkpoint(c: &Coordinator, id: &str) -> Result<(), String> {
    let mut announced = false;
    loop {
        let job = c.get_job(id).await;
        if let Some(JobState::Aborted) = job.as_ref().map(|j| j.state) {
            let reason = job.as_ref().and_then(|j| j.params["stop_reason"].as_str());
            return Err(reason.unwrap_or("aborted by an operator").to_string());
        }
        match job.map(|j| j.state) {
            Some(JobState::Running) => return Ok(()),
            Some(JobState::Paused) => {
                if !announced {
                    tracing::info!(job = id, "rolling maintenance paused");
                    announced = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return Err(format!("job is {other:?}")),
        }
    }
}

pub async fn run(c: Arc<Coordinator>, job: Job, resumed: bool) {
    let groups: Vec<Vec<String>> =
        serde_json::from_value(job.params["groups"].clone()).unwrap_or_default();
    if resumed {
        c.job_step(
            &job.id,
            None,
            None,
            "resuming rolling maintenance from its journal".into(),
        )
        .await;
    }
    for (i, group) in groups.iter().enumerate() {
        let current = c.get_job(&job.id).await.unwrap_or_else(|| job.clone());
        let done = |n: &String| current.params["progress"][n.as_str()].as_str() == Some("done");
        if group.iter().all(done) {
            continue;
        }
        c.job_step(
            &job.id,
            None,
            None,
            format!("group {}/{}: {}", i + 1, groups.len(), group.join(", ")),
        )
        .await;
        if let Err(e) = run_group(&c, &job.id, group).await {
            let state = if e.contains("aborted") {
                JobState::Aborted
            } else {
                JobState::Failed
            };
            // An expired deadline is a failure, not an operator's abort.
            let state = if e.contains("deadline") {
                JobState::Failed
            } else {
                state
            };
            let msg = format!(
                "rolling maintenance stopped in group {} ({}): {e}",
                i + 1,
                group.join(", ")
            );
            return c.finish_job(&job.id, state, msg).await;
        }
    }
    let n: usize = groups.iter().map(Vec::len).sum();
    c.finish_job(
        &job.id,
        JobState::Succeeded,
        format!(
            "rolling maintenance done: {n} nodes in {} groups",
            groups.len()
        ),
    )
    .await;
}

async fn run_group(c: &Arc<Coordinator>, id: &str, group: &[String]) -> Result<(), String> {
    checkpoint(c, id).await?;
    let job = c.get_job(id).await.ok_or("job vanished")?;
    let phase = |n: &str| {
        job.params["progress"][n]
            .as_str()
            .unwrap_or("pending")
            .to_string()
    };

    // Drain: every node still pending goes into maintenance together, with
    // jointly planned drains; nodes already draining (restart) are awaited.
    let pending: Vec<String> = group
        .iter()
        .filter(|n| phase(n) == "pending")
        .cloned()
        .collect();
    if !pending.is_empty() {
        let limits = crate::fleet::limits(&c.cfg.limits, 0);
        let fleet = crate::fleet::snapshot(&c.registry.all(), nodemaint_proto::now_ms());
        let plans = plan_group(&fleet, &pending, &limits)
            .map_err(|e| format!("cannot drain {}: {e}", pending.join(", ")))?;
        for (node, plan) in pending.iter().zip(plans) {
            let boot = c.registry.get(node).map(|r| r.boot_id).unwrap_or_default();
            let child = Job::new(
                "maintenance.start",
                &job.user,
                Some(node),
                serde_json::json!({
                    "node": node, "mode": "move", "plan": plan, "parent": id,
                    // The rolling's deadline bounds its drains too.
                    "deadline_ms": job.params["deadline_ms"], "deadline_s": job.params["deadline_s"],
                }),
            );
            crate::api::take_node(
                c,
                node,
                NodeStatus::Enabled,
                NodeStatus::Maintenance,
                &child.id,
            )
            .await
            .map_err(|r| r.1)?;
            let child_id = launch_child(c, child).await.map_err(|e| e.to_string())?;
            c.update_job(id, |j| {
                j.params["boot_before"][node.as_str()] = boot.clone().into();
                j.params["children"][node.as_str()]["drain"] = child_id.clone().into();
            })
            .await;
            set_phase(c, id, node, "draining", None).await;
        }
    }
    let results = futures::future::join_all(group.iter().map(|n| {
        let span = tracing::info_span!("node", node = %n);
        tracing::Instrument::instrument(node_pipeline(c.clone(), id.to_string(), n.clone()), span)
    }))
    .await;
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// One node's pipeline. Its agent commands (reboot hook, checks) are
/// journaled in a small per-node job (`rolling.node`), not in the rolling
/// job, which many nodes update at once; after a restart its unfinished
/// commands are settled first.
async fn node_pipeline(c: Arc<Coordinator>, id: String, node: String) -> Result<(), String> {
    let job = c.get_job(&id).await.ok_or("job vanished")?;
    let node_job = match job.params["children"][node.as_str()]["node"].as_str() {
        Some(cid) => c.get_job(cid).await.ok_or("node job vanished")?,
        None => {
            let j = Job::new(
                "rolling.node",
                &job.user,
                Some(&node),
                serde_json::json!({ "parent": id }),
            );
            c.create_job(&j).await.map_err(|e| e.to_string())?;
            let cid = j.id.clone();
            c.update_job(&id, |r| {
                r.params["children"][node.as_str()]["node"] = cid.clone().into()
            })
            .await;
            j
        }
    };
    if node_job.state.is_terminal() {
        return Ok(());
    }
    if node_job.commands.iter().any(|r| r.ok.is_none()) {
        c.finish_unfinished_commands(&node_job).await;
    }
    let res = node_steps(&c, &id, &job, &node_job, &node).await;
    let (state, outcome) = match &res {
        Ok(()) => (JobState::Succeeded, format!("{node} done")),
        Err(e) => (JobState::Failed, e.clone()),
    };
    c.finish_job(&node_job.id, state, outcome).await;
    res
}

/// The rest of one node's phases from wherever its journal says it is.
async fn node_steps(
    c: &Arc<Coordinator>,
    id: &str,
    job: &Job,
    node_job: &Job,
    node: &str,
) -> Result<(), String> {
    let (c, id, node) = (c.clone(), id.to_string(), node.to_string());
    let p = &job.params;
    let mut phase = p["progress"][node.as_str()]
        .as_str()
        .unwrap_or("pending")
        .to_string();
    let fail = |what: String| format!("{node}: {what}");

    if phase == "draining" {
        let child = p["children"][node.as_str()]["drain"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let done = await_job(&c, &child)
            .await
            .ok_or_else(|| fail("drain job vanished".into()))?;
        if done.state != JobState::Succeeded {
            return Err(fail(format!(
                "drain failed: {}",
                done.outcome.unwrap_or_default()
            )));
        }
        set_phase(&c, &id, &node, "drained", None).await;
        phase = "drained".into();
    }
    if rank(&phase) < rank("rebooted") {
        checkpoint(&c, &id).await.map_err(fail)?;
        let before = p["boot_before"][node.as_str()]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if phase == "drained" {
            set_phase(&c, &id, &node, "rebooting", None).await;
            reboot_hook(&c, job, node_job, &node, &before)
                .await
                .map_err(fail)?;
        }
        let timeout = p["reboot_timeout_s"].as_u64().unwrap_or(900);
        wait_new_boot(&c, &node, &before, Duration::from_secs(timeout))
            .await
            .map_err(fail)?;
        set_phase(&c, &id, &node, "rebooted", None).await;
        phase = "rebooted".into();
    }
    if phase == "rebooted" {
        checkpoint(&c, &id).await.map_err(fail)?;
        let r = c
            .run_command(
                node_job,
                &node,
                "",
                None,
                Kind::RunChecks(pb::RunChecks { start_failed: true }),
            )
            .await;
        let msg = if r.ok {
            r.message.clone()
        } else {
            r.error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or(r.message.clone())
        };
        c.job_step(&id, None, Some(r.ok), format!("{node}: checks: {msg}"))
            .await;
        if !r.ok && p["checks_must_pass"].as_bool().unwrap_or(false) {
            return Err(fail(format!(
                "post-reboot checks failed ({msg}); the node stays in maintenance"
            )));
        }
        set_phase(&c, &id, &node, "checked", None).await;
        phase = "checked".into();
    }
    if phase == "checked" {
        checkpoint(&c, &id).await.map_err(fail)?;
        let child_id = match p["children"][node.as_str()]["enable"].as_str() {
            Some(existing) => existing.to_string(),
            None => {
                let child = Job::new(
                    "node.enable",
                    &job.user,
                    Some(&node),
                    serde_json::json!({ "node": node, "parent": id }),
                );
                crate::api::take_node(
                    &c,
                    &node,
                    NodeStatus::Maintenance,
                    NodeStatus::Enabled,
                    &child.id,
                )
                .await
                .map_err(|r| fail(r.1))?;
                let cid = launch_child(&c, child)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                c.update_job(&id, |j| {
                    j.params["children"][node.as_str()]["enable"] = cid.clone().into()
                })
                .await;
                cid
            }
        };
        let done = await_job(&c, &child_id)
            .await
            .ok_or_else(|| fail("enable job vanished".into()))?;
        if done.state != JobState::Succeeded {
            return Err(fail(format!(
                "enable failed: {}",
                done.outcome.unwrap_or_default()
            )));
        }
        set_phase(&c, &id, &node, "enabled", None).await;
        phase = "enabled".into();
    }
    if phase == "enabled" {
        // Verify: ENABLED and reachable before the next group goes down
        // (a heartbeat may be a moment late under load: allow 15 s).
        let mut ok = false;
        for _ in 0..60 {
            let rec = c
                .registry
                .get(&node)
                .ok_or_else(|| fail("vanished".into()))?;
            if rec.status == NodeStatus::Enabled && rec.reachable_at(nodemaint_proto::now_ms()) {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if !ok {
            return Err(fail("not ENABLED and reachable 15 s after enable".into()));
        }
        set_phase(&c, &id, &node, "done", None).await;
    }
    Ok(())
}

/// Runs the reboot hook, or waits for the operator's continue. A hook that
/// reboots the node may never answer: the new boot id counts as success.
async fn reboot_hook(
    c: &Arc<Coordinator>,
    job: &Job,
    node_job: &Job,
    node: &str,
    before: &str,
) -> Result<(), String> {
    let p = &job.params;
    if p["wait_for_continue"].as_bool().unwrap_or(false) {
        c.job_step(
            &job.id,
            None,
            None,
            format!("{node}: waiting for `rolling continue {} {node}`", job.id),
        )
        .await;
        loop {
            let j = c.get_job(&job.id).await.ok_or("job vanished")?;
            if j.params["continued"][node].as_bool() == Some(true) {
                return Ok(());
            }
            checkpoint(c, &job.id).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let command = p["reboot_command"]
        .as_str()
        .unwrap_or_default()
        .replace("{node}", node);
    if command.is_empty() {
        return Ok(());
    }
    let hook = {
        let c = c.clone();
        let job = node_job.clone();
        let node = node.to_string();
        tokio::spawn(async move {
            c.run_command(
                &job,
                &node,
                "",
                None,
                Kind::RunHook(pb::RunHook {
                    command,
                    timeout_s: 600,
                }),
            )
            .await
        })
    };
    let rebooted = wait_new_boot(c, node, before, Duration::from_secs(24 * 3600));
    tokio::pin!(rebooted);
    tokio::select! {
        r = hook => match r {
            Ok(r) if r.ok => Ok(()),
            // A node that reboots under its hook does not answer: its new
            // boot id is the answer.
            Ok(r) if r.error.as_ref().is_some_and(|e| {
                e.code == pb::error::Code::Timeout as i32 || e.code == pb::error::Code::OutcomeUnknown as i32
            }) => Ok(()),
            Ok(r) => Err(format!("reboot hook failed: {}", r.error.map(|e| e.message).unwrap_or(r.message))),
            Err(e) => Err(format!("reboot hook: {e}")),
        },
        _ = &mut rebooted => Ok(()),
    }
}

async fn wait_new_boot(
    c: &Coordinator,
    node: &str,
    before: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(r) = c.registry.get(node) {
            if r.reachable_at(nodemaint_proto::now_ms())
                && !r.boot_id.is_empty()
                && r.boot_id != before
            {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "did not come back with a new boot id within {} s",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_ordered() {
        assert!(rank("pending") < rank("draining"));
        assert!(rank("rebooted") < rank("checked"));
        assert_eq!(rank("done"), PHASES.len() - 1);
    }

    #[test]
    fn joint_group_plans_never_share_free_memory() {
        // Three nodes of 1000 MiB; a and b each hold 400 MiB; c is empty.
        // Draining a and b together must not put 800 MiB on c twice over.
        let mut f = planner::Fleet::default();
        for n in ["a", "b", "c", "d"] {
            f.nodes.push(planner::Node::new(n, 1000, 8));
        }
        f.vms.push(planner::Vm::new("va", "a", 400, 1));
        f.vms.push(planner::Vm::new("vb", "b", 400, 1));
        f.vms.push(planner::Vm::new("vd", "d", 500, 1));
        let plans = plan_group(&f, &["a".into(), "b".into()], &planner::Limits::default()).unwrap();
        let dests: Vec<&str> = plans
            .iter()
            .flat_map(|p| p.moves.iter().map(|m| m.to.as_str()))
            .collect();
        assert_eq!(dests.len(), 2);
        assert!(!dests.contains(&"a") && !dests.contains(&"b"), "{dests:?}");
        let on_c = plans
            .iter()
            .flat_map(|p| &p.moves)
            .filter(|m| m.to == "c")
            .count();
        let on_d = plans
            .iter()
            .flat_map(|p| &p.moves)
            .filter(|m| m.to == "d")
            .count();
        assert!(
            on_c <= 2 && on_d <= 1,
            "d has room for one 400 MiB VM only: {dests:?}"
        );
    }
}
