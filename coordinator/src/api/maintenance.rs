//! Maintenance: plan, pre-flight, start (move, stop or cordon), retry, and
//! abort of any job.

use super::*;

pub(super) fn plan_drain(c: &Coordinator, r: &pb::PlanDrain) -> Result<Reply> {
    node(c, &r.node)?;
    let limits = crate::fleet::limits(&c.cfg.limits, r.max_parallel);
    let report = planner::drain_report(&fleet(c), &r.node, &limits).map_err(plan_error)?;
    json(&report)
}

pub(super) async fn start_maintenance(
    c: &Arc<Coordinator>,
    user: &str,
    r: &pb::StartMaintenance,
) -> Result<Reply> {
    use pb::start_maintenance::Mode;
    let n = node(c, &r.node)?;
    match (n.status, &n.current_job) {
        (NodeStatus::Maintenance, _) => {
            return refuse(
                Code::WrongState,
                format!(
                    "node {} is already in maintenance; `node enable {}` ends it, \
                     `maintenance retry {}` continues a drain that left VMs behind",
                    n.name, n.name, n.name
                ),
            )
        }
        (_, Some(j)) => {
            return refuse(
                Code::Conflict,
                format!("node {} is held by job {j}", n.name),
            )
        }
        (NodeStatus::Enabled, None) => {}
        (other, None) => {
            return refuse(
                Code::WrongState,
                format!(
                    "node {} is {}; only an ENABLED node can enter maintenance",
                    n.name,
                    status_word(other)
                ),
            )
        }
    }
    let mode = match Mode::try_from(r.mode).unwrap_or(Mode::Unspecified) {
        Mode::Unspecified => return refuse(Code::InvalidArgument, "give a mode: move (live-migrate every VM away, preferred), stop (stop every VM, VFWs included) or none (only mark it unschedulable)"),
        Mode::Move => "move",
        Mode::Stop => "stop",
        Mode::None => "none",
    };
    let opts = DrainOptions {
        max_parallel: r.max_parallel,
        deadline_s: r.deadline_s,
        // An unknown value reads as the default, FAIL (prost's accessor).
        fallback: r.fallback().into(),
        ack_vfw_downtime: r.ack_vfw_downtime,
        max_speed_mibs: r.max_speed_mibs,
        converge: c.cfg.migration.converge.with_request(r.converge.as_ref()),
        adaptive: c.cfg.drain.adaptive(r.concurrency()),
    };
    let (checks, plan) = preflight(c, &n, mode, &opts, false).await?;
    if r.dry_run {
        return json(&serde_json::json!({
            "node": n.name, "mode": mode, "dry_run": true,
            "ok": checks.iter().all(|c| c.ok), "checks": checks, "plan": plan,
        }));
    }
    refuse_failed(&n.name, &checks)?;
    let spec = match mode {
        "stop" => JobSpec::StopAll(jobs::StopAll {
            vfw_cloudspaces_down: vfw_cloudspaces(&n),
            ack_vfw_downtime: opts.ack_vfw_downtime,
            deadline_s: opts.deadline_s,
        }),
        "move" => JobSpec::Drain(jobs::Drain {
            plan,
            ..opts.drain()
        }),
        _ => JobSpec::Cordon(jobs::Cordon {}),
    };
    let job = Job::new(spec, user, Some(&n.name));
    take_and_launch(
        c,
        &n.name,
        NodeStatus::Enabled,
        NodeStatus::Maintenance,
        job,
    )
    .await
}

/// Refuses when a pre-flight check failed: NO_CAPACITY when the plan does
/// not fit, WRONG_STATE otherwise.
pub(super) fn refuse_failed(node: &str, checks: &[crate::api::preflight::Check]) -> Result<()> {
    let Some(why) = crate::api::preflight::refusal(node, checks) else {
        return Ok(());
    };
    let capacity = checks.iter().any(|c| c.name == "capacity" && !c.ok);
    refuse(
        if capacity {
            Code::NoCapacity
        } else {
            Code::WrongState
        },
        why,
    )
}

/// The options of a drain (start and retry).
pub(super) struct DrainOptions {
    max_parallel: u32,
    max_speed_mibs: u64,
    deadline_s: u32,
    fallback: jobs::Fallback,
    ack_vfw_downtime: bool,
    converge: nodemaint_proto::model::ConvergePolicy,
    adaptive: bool,
}

impl DrainOptions {
    pub(super) fn drain(&self) -> jobs::Drain {
        jobs::Drain {
            plan: None,
            fallback: self.fallback,
            ack_vfw_downtime: self.ack_vfw_downtime,
            max_parallel: self.max_parallel,
            max_speed_mibs: self.max_speed_mibs,
            deadline_s: self.deadline_s,
            retry: false,
            parent: None,
            converge: Some(self.converge.clone()),
            adaptive: self.adaptive,
        }
    }
}

/// Runs the pre-flight checks of a drain of `n` (plan with headroom,
/// agents, protocol, destination libvirt, limits, conflicting jobs).
pub(super) async fn preflight(
    c: &Arc<Coordinator>,
    n: &NodeRecord,
    mode: &str,
    opts: &DrainOptions,
    retry: bool,
) -> Result<(
    Vec<crate::api::preflight::Check>,
    Option<planner::DrainPlan>,
)> {
    let plan = if mode == "move" {
        let limits = crate::fleet::limits(&c.cfg.limits, opts.max_parallel);
        let mut f =
            crate::api::preflight::with_headroom(&fleet(c), c.cfg.preflight.headroom_percent);
        // Plan as if the node were already in maintenance.
        for node in &mut f.nodes {
            if node.name == n.name {
                node.status = planner::NodeStatus::Maintenance;
            }
        }
        // A retry leaves what maintenance stopped where it is.
        f.vms
            .retain(|v| !(v.node == n.name && n.stopped_by.contains_key(&v.name)));
        Some(planner::plan_drain(&f, &n.name, &limits))
    } else {
        None
    };
    if let Some(Err(e @ planner::PlanError::UnknownNode(_))) = &plan {
        return Err(plan_error(e.clone()));
    }
    let probes = match &plan {
        Some(Ok(p)) if !p.moves.is_empty() && n.reachable_at(now()) => {
            Some(c.probes.probe(c, &n.name, p).await)
        }
        _ => None,
    };
    let running: Vec<Job> = c.jobs.running();
    let nodes = c.registry.all();
    let cs = vfw_cloudspaces(n);
    let checks = crate::api::preflight::evaluate(&crate::api::preflight::Input {
        node: n,
        nodes: &nodes,
        now_ms: now(),
        mode,
        plan: plan.as_ref(),
        headroom_percent: c.cfg.preflight.headroom_percent,
        fallback: opts.fallback,
        ack_vfw_downtime: opts.ack_vfw_downtime,
        vfw_cloudspaces: &cs,
        max_nodes_in_maintenance: c.cfg.preflight.max_nodes_in_maintenance,
        running_jobs: &running,
        probes: probes.as_deref(),
        retry,
    });
    Ok((checks, plan.and_then(|p| p.ok())))
}

/// The node, if it is in maintenance and no job holds it; otherwise the
/// refusal (`why` says what the operation needs).
pub(super) fn free_in_maintenance(c: &Coordinator, name: &str, why: &str) -> Result<NodeRecord> {
    let n = node(c, name)?;
    if n.status != NodeStatus::Maintenance {
        return refuse(
            Code::WrongState,
            format!("node {} is {}; {why}", n.name, status_word(n.status)),
        );
    }
    if let Some(j) = &n.current_job {
        return refuse(
            Code::Conflict,
            format!(
                "node {} is held by job {j}; wait for it or `job abort {j}`",
                n.name
            ),
        );
    }
    Ok(n)
}

/// `maintenance retry NODE`: a node in maintenance whose drain left VMs
/// behind drains again, with just those (moved VMs are not on it any more;
/// VMs maintenance stopped stay stopped).
pub(super) async fn retry_maintenance(
    c: &Arc<Coordinator>,
    user: &str,
    r: &pb::RetryMaintenance,
) -> Result<Reply> {
    let n = free_in_maintenance(
        c,
        &r.node,
        "retry continues the drain of a node in maintenance",
    )?;
    let left = n
        .domains
        .iter()
        .filter(|d| !n.stopped_by.contains_key(&d.name))
        .count();
    if left == 0 {
        return refuse(
            Code::WrongState,
            format!(
                "node {} has nothing left to drain ({} VMs stopped by maintenance stay recorded)",
                n.name,
                n.stopped_by.len()
            ),
        );
    }
    let opts = DrainOptions {
        max_parallel: r.max_parallel,
        deadline_s: r.deadline_s,
        fallback: r.fallback().into(),
        ack_vfw_downtime: r.ack_vfw_downtime,
        max_speed_mibs: r.max_speed_mibs,
        converge: c.cfg.migration.converge.with_request(r.converge.as_ref()),
        adaptive: c.cfg.drain.adaptive(r.concurrency()),
    };
    let (checks, plan) = preflight(c, &n, "move", &opts, true).await?;
    refuse_failed(&n.name, &checks)?;
    let mut drain = opts.drain();
    drain.plan = plan;
    drain.retry = true;
    let job = Job::new(JobSpec::Drain(drain), user, Some(&n.name));
    take_and_launch(
        c,
        &n.name,
        NodeStatus::Maintenance,
        NodeStatus::Maintenance,
        job,
    )
    .await
}

/// `job abort ID`: a drain, stop-all, enable or move stops starting new
/// work and cancels its migrations in flight; a rolling maintenance stops
/// at its next step and stops its current drains.
pub(super) async fn abort_job(c: &Arc<Coordinator>, user: &str, r: &pb::AbortJob) -> Result<Reply> {
    let job = c
        .stop_job(&r.job_id, &format!("aborted by {user}"))
        .await
        .map_err(|e| {
            let code = if e.starts_with("unknown job") {
                Code::NotFound
            } else {
                Code::WrongState
            };
            Refusal(code, e)
        })?;
    Ok(Reply::Accepted(pb::Accepted {
        op_id: job.id.clone(),
        events_from_seq: 0,
        message: format!(
            "abort of {} {} requested: nothing new starts, migrations in flight are cancelled",
            job.kind(),
            job.id
        ),
    }))
}
