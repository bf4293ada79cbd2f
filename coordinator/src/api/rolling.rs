//! Rolling maintenance: plan, start, and pause/resume/abort/continue.

use super::*;

pub(super) fn plan_rolling(c: &Coordinator, r: &pb::PlanRolling) -> Result<Reply> {
    let fleet = fleet(c);
    let nodes: Vec<String> = if r.nodes.is_empty() {
        fleet.nodes.iter().map(|n| n.name.clone()).collect()
    } else {
        r.nodes.clone()
    };
    let k = r.max_unavailable.max(1) as usize;
    let plan = planner::plan_rolling(&fleet, &nodes, k).map_err(plan_error)?;
    json(&plan)
}

pub(super) async fn start_rolling(
    c: &Arc<Coordinator>,
    user: &str,
    r: &pb::StartRolling,
) -> Result<Reply> {
    // Exactly one of the two.
    if r.hook.is_empty() != r.wait_for_continue {
        return refuse(
            Code::InvalidArgument,
            "give either --hook NAME (a hook in each node's agent config) or --wait-for-continue",
        );
    }
    // A name only: the command line it stands for lives in each agent's config.
    if !r.wait_for_continue {
        if let Err(e) = nodemaint_proto::guard::validate_hook_name(&r.hook) {
            return refuse(Code::InvalidArgument, e);
        }
    }
    let f = fleet(c);
    let nodes: Vec<String> = if r.nodes.is_empty() {
        f.nodes.iter().map(|n| n.name.clone()).collect()
    } else {
        for n in &r.nodes {
            node(c, n)?;
        }
        r.nodes.clone()
    };
    // A cheap early answer; the lock below is what makes it atomic.
    if let Some(j) = c
        .jobs
        .running()
        .iter()
        .find(|j| matches!(j.spec, JobSpec::Rolling(_)))
    {
        return refuse(
            Code::Conflict,
            format!("rolling maintenance {} is already in progress", j.id),
        );
    }
    let k = r.max_unavailable.max(1) as usize;
    let plan = planner::plan_rolling(&f, &nodes, k).map_err(plan_error)?;
    if !plan.undrainable.is_empty() {
        let why: Vec<String> = plan
            .undrainable
            .iter()
            .map(|u| format!("{}: {}", u.node, u.reason))
            .collect();
        return refuse(
            Code::NoCapacity,
            format!(
                "these nodes cannot be drained, leave them out or make room: {}",
                why.join("; ")
            ),
        );
    }
    let spec = JobSpec::Rolling(jobs::Rolling {
        nodes,
        groups: plan.groups,
        max_unavailable: k as u32,
        hook: r.hook.clone(),
        wait_for_continue: r.wait_for_continue,
        checks_must_pass: r.checks_must_pass,
        reboot_timeout_s: if r.reboot_timeout_s > 0 {
            r.reboot_timeout_s
        } else {
            900
        },
        deadline_s: r.deadline_s,
    });
    let job = Job::new(spec, user, None);
    let id = job.id.clone();
    if let Err(holder) = c.jobs.lock_rolling(&id).await {
        return refuse(
            Code::Conflict,
            format!("rolling maintenance {holder} is already in progress"),
        );
    }
    launch(c, job).await
}

pub(super) async fn control_rolling(
    c: &Arc<Coordinator>,
    user: &str,
    r: &pb::ControlRolling,
) -> Result<Reply> {
    use crate::jobs::JobState;
    use pb::control_rolling::Action;
    let action = Action::try_from(r.action).unwrap_or(Action::Unspecified);
    let id = r.job_id.clone();
    let node_name = r.node.clone();
    let res = c.jobs.modify::<Refusal>(&id, |j| {
        let mut j = j.ok_or_else(|| Refusal(Code::NotFound, format!("unknown job {id:?}")))?;
        let JobSpec::Rolling(spec) = &j.spec else {
            return Err(Refusal(Code::InvalidArgument, format!("job {id} is a {}, not a rolling maintenance", j.kind())));
        };
        let wait_for_continue = spec.wait_for_continue;
        let state = j.state;
        let wrong = |what: &str| Refusal(Code::WrongState, format!("cannot {what} rolling maintenance {id}: it is {state:?}"));
        match action {
            Action::Pause if state == JobState::Running => j.state = JobState::Paused,
            Action::Pause => return Err(wrong("pause")),
            Action::Resume if state == JobState::Paused => j.state = JobState::Running,
            Action::Resume => return Err(wrong("resume")),
            Action::Abort if !state.is_terminal() => {
                j.state = JobState::Aborted;
                j.stop_reason = Some(format!("aborted by {user}"));
            }
            Action::Abort => return Err(wrong("abort")),
            Action::Continue => {
                let rolling = j.rolling.get_or_insert_with(Default::default);
                if rolling.phase(&node_name) != jobs::Phase::Rebooting || !wait_for_continue {
                    return Err(Refusal(
                        Code::WrongState,
                        format!("node {node_name:?} is not waiting for a continue in rolling maintenance {id}"),
                    ));
                }
                rolling.continued.insert(node_name.clone());
            }
            Action::Unspecified => return Err(Refusal(Code::InvalidArgument, "give an action: pause, resume, abort or continue".into())),
        }
        j.updated_ms = now();
        Ok(j)
    })
    .await;
    let job = match res {
        Ok(j) => j,
        Err(nodemaint_proto::bus::CasError::Rejected(r)) => return Err(r),
        Err(e) => return Err(internal(e)),
    };
    if action == Action::Abort {
        // Its drains in flight stop too (nothing new, migrations cancelled).
        let reason = format!("aborted by {user}");
        c.stops.request(&job.id, &reason);
        for child in job
            .rolling
            .iter()
            .flat_map(|r| r.children.values())
            .filter_map(|c| c.drain.as_deref())
        {
            let _ = c.stop_job(child, &reason).await;
        }
    }
    let word = format!("{action:?}").to_lowercase();
    c.jobs
        .step(&job.id, None, None, format!("{word} requested"))
        .await;
    Ok(Reply::Accepted(pb::Accepted {
        op_id: job.id.clone(),
        events_from_seq: 0,
        message: format!("rolling maintenance {}: {word} ({:?})", job.id, job.state),
    }))
}
