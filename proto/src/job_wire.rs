//! The job model on the wire: `Job` ⇄ `pb::Job`, in one place. Sending
//! cannot fail; reading checks what protobuf cannot (a spec is present, a
//! state and a phase are known) and names the field that is wrong.

use crate::job::*;
use crate::model::ConvergePolicy;
use crate::pb;
use nodemaint_planner::{DrainPlan, Move};

/// A `pb::Job` that is not a job: the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed job: {field}: {reason}")]
pub struct WireError {
    pub field: String,
    pub reason: String,
}

fn wrong(field: impl Into<String>, reason: impl Into<String>) -> WireError {
    WireError {
        field: field.into(),
        reason: reason.into(),
    }
}

impl From<JobState> for pb::JobState {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Running => pb::JobState::Running,
            JobState::Paused => pb::JobState::Paused,
            JobState::Succeeded => pb::JobState::Succeeded,
            JobState::Failed => pb::JobState::Failed,
            JobState::Aborted => pb::JobState::Aborted,
        }
    }
}

impl TryFrom<pb::JobState> for JobState {
    type Error = WireError;
    fn try_from(s: pb::JobState) -> Result<Self, WireError> {
        Ok(match s {
            pb::JobState::Running => JobState::Running,
            pb::JobState::Paused => JobState::Paused,
            pb::JobState::Succeeded => JobState::Succeeded,
            pb::JobState::Failed => JobState::Failed,
            pb::JobState::Aborted => JobState::Aborted,
            pb::JobState::Unspecified => return Err(wrong("state", "unspecified")),
        })
    }
}

impl From<Fallback> for pb::Fallback {
    fn from(f: Fallback) -> Self {
        match f {
            Fallback::Fail => pb::Fallback::Fail,
            Fallback::Stop => pb::Fallback::Stop,
            Fallback::Cold => pb::Fallback::Cold,
        }
    }
}

impl From<pb::Fallback> for Fallback {
    fn from(f: pb::Fallback) -> Self {
        match f {
            pb::Fallback::Fail => Fallback::Fail,
            pb::Fallback::Stop => Fallback::Stop,
            pb::Fallback::Cold => Fallback::Cold,
        }
    }
}

impl From<Phase> for pb::RollingPhase {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Pending => pb::RollingPhase::Pending,
            Phase::Draining => pb::RollingPhase::Draining,
            Phase::Drained => pb::RollingPhase::Drained,
            Phase::Rebooting => pb::RollingPhase::Rebooting,
            Phase::Rebooted => pb::RollingPhase::Rebooted,
            Phase::Checked => pb::RollingPhase::Checked,
            Phase::Enabled => pb::RollingPhase::Enabled,
            Phase::Done => pb::RollingPhase::Done,
        }
    }
}

fn phase(field: &str, v: i32) -> Result<Phase, WireError> {
    Ok(match pb::RollingPhase::try_from(v) {
        Ok(pb::RollingPhase::Pending) => Phase::Pending,
        Ok(pb::RollingPhase::Draining) => Phase::Draining,
        Ok(pb::RollingPhase::Drained) => Phase::Drained,
        Ok(pb::RollingPhase::Rebooting) => Phase::Rebooting,
        Ok(pb::RollingPhase::Rebooted) => Phase::Rebooted,
        Ok(pb::RollingPhase::Checked) => Phase::Checked,
        Ok(pb::RollingPhase::Enabled) => Phase::Enabled,
        Ok(pb::RollingPhase::Done) => Phase::Done,
        _ => return Err(wrong(field, format!("unknown rolling phase {v}"))),
    })
}

impl From<&DrainPlan> for pb::DrainPlan {
    fn from(p: &DrainPlan) -> Self {
        pb::DrainPlan {
            node: p.node.clone(),
            moves: p
                .moves
                .iter()
                .map(|m| pb::PlannedMove {
                    vm: m.vm.clone(),
                    from: m.from.clone(),
                    to: m.to.clone(),
                    wave: m.wave,
                    kind: pb::VmKind::from(m.kind) as i32,
                    not_migratable: m.not_migratable.clone(),
                })
                .collect(),
        }
    }
}

impl From<pb::DrainPlan> for DrainPlan {
    fn from(p: pb::DrainPlan) -> Self {
        DrainPlan {
            node: p.node,
            moves: p
                .moves
                .into_iter()
                .map(|m| Move {
                    kind: m.kind().into(),
                    vm: m.vm,
                    from: m.from,
                    to: m.to,
                    wave: m.wave,
                    not_migratable: m.not_migratable,
                })
                .collect(),
        }
    }
}

impl From<&JobSpec> for pb::JobSpec {
    fn from(s: &JobSpec) -> Self {
        use pb::job_spec::Kind as K;
        let kind = match s.clone() {
            JobSpec::Drain(d) => K::Drain(pb::DrainSpec {
                plan: d.plan.as_ref().map(Into::into),
                fallback: pb::Fallback::from(d.fallback) as i32,
                ack_vfw_downtime: d.ack_vfw_downtime,
                max_parallel: d.max_parallel,
                max_speed_mibs: d.max_speed_mibs,
                deadline_s: d.deadline_s,
                retry: d.retry,
                parent: d.parent,
                converge: d.converge.map(|c| c.to_pb()),
                adaptive: d.adaptive,
            }),
            JobSpec::StopAll(s) => K::StopAll(pb::StopAllSpec {
                vfw_cloudspaces_down: s.vfw_cloudspaces_down,
                ack_vfw_downtime: s.ack_vfw_downtime,
                deadline_s: s.deadline_s,
            }),
            JobSpec::Cordon(Cordon {}) => K::Cordon(pb::CordonSpec {}),
            JobSpec::Enable(e) => K::Enable(pb::EnableSpec {
                restart: e.restart,
                parent: e.parent,
            }),
            JobSpec::StartStopped(s) => K::StartStopped(pb::StartStoppedSpec { start: s.start }),
            JobSpec::Move(m) => K::Move(pb::MoveSpec {
                vm: m.vm,
                from: m.from,
                to: m.to,
                dest_libvirt_uri: m.dest_libvirt_uri,
                dest_migrate_uri: m.dest_migrate_uri,
                timeout_s: m.timeout_s,
                progress_timeout_s: m.progress_timeout_s,
                max_speed_mibs: m.max_speed_mibs,
                converge: m.converge.map(|c| c.to_pb()),
            }),
            JobSpec::Start(s) => K::Start(pb::StartSpec { vm: s.vm }),
            JobSpec::Stop(s) => K::Stop(pb::StopSpec {
                vm: s.vm,
                graceful_timeout_s: s.graceful_timeout_s,
            }),
            JobSpec::Create(c) => K::Create(pb::CreateSpec {
                vm: c.vm,
                memory_mib: c.memory_mib,
                vcpus: c.vcpus,
                cloudspace: c.cloudspace,
                vfw: c.vfw,
                to: c.to,
            }),
            JobSpec::Check(c) => K::Check(pb::CheckSpec {
                start_failed: c.start_failed,
            }),
            JobSpec::Rolling(r) => K::Rolling(pb::RollingSpec {
                nodes: r.nodes,
                groups: r
                    .groups
                    .into_iter()
                    .map(|nodes| pb::NodeGroup { nodes })
                    .collect(),
                max_unavailable: r.max_unavailable,
                hook: r.hook,
                wait_for_continue: r.wait_for_continue,
                checks_must_pass: r.checks_must_pass,
                reboot_timeout_s: r.reboot_timeout_s,
                deadline_s: r.deadline_s,
            }),
            JobSpec::RollingNode(r) => K::RollingNode(pb::RollingNodeSpec { parent: r.parent }),
        };
        pb::JobSpec { kind: Some(kind) }
    }
}

impl TryFrom<pb::JobSpec> for JobSpec {
    type Error = WireError;
    fn try_from(s: pb::JobSpec) -> Result<Self, WireError> {
        use pb::job_spec::Kind as K;
        Ok(match s.kind.ok_or_else(|| wrong("spec", "no kind"))? {
            K::Drain(d) => JobSpec::Drain(Drain {
                fallback: d.fallback().into(),
                plan: d.plan.map(Into::into),
                ack_vfw_downtime: d.ack_vfw_downtime,
                max_parallel: d.max_parallel,
                max_speed_mibs: d.max_speed_mibs,
                deadline_s: d.deadline_s,
                retry: d.retry,
                parent: d.parent,
                converge: d.converge.as_ref().map(ConvergePolicy::from_pb),
                adaptive: d.adaptive,
            }),
            K::StopAll(s) => JobSpec::StopAll(StopAll {
                vfw_cloudspaces_down: s.vfw_cloudspaces_down,
                ack_vfw_downtime: s.ack_vfw_downtime,
                deadline_s: s.deadline_s,
            }),
            K::Cordon(_) => JobSpec::Cordon(Cordon {}),
            K::Enable(e) => JobSpec::Enable(Enable {
                restart: e.restart,
                parent: e.parent,
            }),
            K::StartStopped(s) => JobSpec::StartStopped(StartStopped { start: s.start }),
            K::Move(m) => JobSpec::Move(MoveVm {
                vm: m.vm,
                from: m.from,
                to: m.to,
                dest_libvirt_uri: m.dest_libvirt_uri,
                dest_migrate_uri: m.dest_migrate_uri,
                timeout_s: m.timeout_s,
                progress_timeout_s: m.progress_timeout_s,
                max_speed_mibs: m.max_speed_mibs,
                converge: m.converge.as_ref().map(ConvergePolicy::from_pb),
            }),
            K::Start(s) => JobSpec::Start(StartVm { vm: s.vm }),
            K::Stop(s) => JobSpec::Stop(StopVm {
                vm: s.vm,
                graceful_timeout_s: s.graceful_timeout_s,
            }),
            K::Create(c) => JobSpec::Create(CreateVm {
                vm: c.vm,
                memory_mib: c.memory_mib,
                vcpus: c.vcpus,
                cloudspace: c.cloudspace,
                vfw: c.vfw,
                to: c.to,
            }),
            K::Check(c) => JobSpec::Check(Check {
                start_failed: c.start_failed,
            }),
            K::Rolling(r) => JobSpec::Rolling(Rolling {
                nodes: r.nodes,
                groups: r.groups.into_iter().map(|g| g.nodes).collect(),
                max_unavailable: r.max_unavailable,
                hook: r.hook,
                wait_for_continue: r.wait_for_continue,
                checks_must_pass: r.checks_must_pass,
                reboot_timeout_s: r.reboot_timeout_s,
                deadline_s: r.deadline_s,
            }),
            K::RollingNode(r) => JobSpec::RollingNode(RollingNode { parent: r.parent }),
        })
    }
}

impl From<&RollingState> for pb::RollingProgress {
    fn from(r: &RollingState) -> Self {
        pb::RollingProgress {
            progress: r
                .progress
                .iter()
                .map(|(n, p)| (n.clone(), pb::RollingPhase::from(*p) as i32))
                .collect(),
            children: r
                .children
                .iter()
                .map(|(n, c)| {
                    let c = pb::RollingChildren {
                        drain: c.drain.clone(),
                        node: c.node.clone(),
                        enable: c.enable.clone(),
                    };
                    (n.clone(), c)
                })
                .collect(),
            boot_before: r.boot_before.clone().into_iter().collect(),
            continued: r.continued.iter().cloned().collect(),
        }
    }
}

impl TryFrom<pb::RollingProgress> for RollingState {
    type Error = WireError;
    fn try_from(r: pb::RollingProgress) -> Result<Self, WireError> {
        Ok(RollingState {
            progress: r
                .progress
                .into_iter()
                .map(|(n, p)| Ok((n.clone(), phase(&format!("rolling.progress[{n}]"), p)?)))
                .collect::<Result<_, WireError>>()?,
            children: r
                .children
                .into_iter()
                .map(|(n, c)| {
                    let c = Children {
                        drain: c.drain,
                        node: c.node,
                        enable: c.enable,
                    };
                    (n, c)
                })
                .collect(),
            boot_before: r.boot_before.into_iter().collect(),
            continued: r.continued.into_iter().collect(),
        })
    }
}

fn report_lines(lines: &[ReportLine]) -> Vec<pb::ReportLine> {
    lines
        .iter()
        .map(|l| pb::ReportLine {
            vm: l.vm.clone(),
            detail: l.detail.clone(),
        })
        .collect()
}

fn from_report_lines(lines: Vec<pb::ReportLine>) -> Vec<ReportLine> {
    lines
        .into_iter()
        .map(|l| ReportLine {
            vm: l.vm,
            detail: l.detail,
        })
        .collect()
}

/// The job as the API sends it. The engine's journaled machine stays home:
/// it is the coordinator's own memory, not part of the contract.
impl From<&Job> for pb::Job {
    fn from(j: &Job) -> Self {
        pb::Job {
            id: j.id.clone(),
            spec: Some((&j.spec).into()),
            user: j.user.clone(),
            node: j.node.clone(),
            state: pb::JobState::from(j.state) as i32,
            created_ms: j.created_ms,
            updated_ms: j.updated_ms,
            stop_reason: j.stop_reason.clone(),
            deadline_ms: j.deadline_ms,
            rolling: j.rolling.as_ref().map(Into::into),
            steps: j
                .steps
                .iter()
                .map(|s| pb::JobStep {
                    ts_ms: s.ts_ms,
                    message: s.message.clone(),
                    vm: s.vm.clone(),
                    ok: s.ok,
                })
                .collect(),
            outcome: j.outcome.clone(),
            commands: j
                .commands
                .iter()
                .map(|c| pb::JobCommand {
                    id: c.id.clone(),
                    node: c.node.clone(),
                    vm: c.vm.clone(),
                    action: c.action.clone(),
                    to: c.to.clone(),
                    // A journal that is not hex is sent empty rather than
                    // refused: the rest of the job is still worth showing.
                    payload: unhex(&c.payload).unwrap_or_default(),
                    ok: c.ok,
                    message: c.message.clone(),
                })
                .collect(),
            report: j.report.as_ref().map(|r| pb::JobReport {
                done: report_lines(&r.done),
                not_done: report_lines(&r.not_done),
            }),
        }
    }
}

impl TryFrom<pb::Job> for Job {
    type Error = WireError;
    fn try_from(j: pb::Job) -> Result<Self, WireError> {
        if j.id.is_empty() {
            return Err(wrong("id", "empty"));
        }
        let state = pb::JobState::try_from(j.state)
            .map_err(|_| wrong("state", format!("unknown state {}", j.state)))?
            .try_into()?;
        Ok(Job {
            spec: j.spec.ok_or_else(|| wrong("spec", "missing"))?.try_into()?,
            state,
            id: j.id,
            user: j.user,
            node: j.node,
            created_ms: j.created_ms,
            updated_ms: j.updated_ms,
            stop_reason: j.stop_reason,
            deadline_ms: j.deadline_ms,
            rolling: j.rolling.map(TryInto::try_into).transpose()?,
            steps: j
                .steps
                .into_iter()
                .map(|s| Step {
                    ts_ms: s.ts_ms,
                    message: s.message,
                    vm: s.vm,
                    ok: s.ok,
                })
                .collect(),
            outcome: j.outcome,
            commands: j
                .commands
                .into_iter()
                .map(|c| CommandRecord {
                    id: c.id,
                    node: c.node,
                    vm: c.vm,
                    action: c.action,
                    to: c.to,
                    payload: hex(&c.payload),
                    ok: c.ok,
                    message: c.message,
                })
                .collect(),
            report: j.report.map(|r| Report {
                done: from_report_lines(r.done),
                not_done: from_report_lines(r.not_done),
            }),
            engine: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message as _;

    /// Every kind of job, with every optional part set, survives the wire
    /// (encoded and decoded) unchanged but for the engine's journal.
    #[test]
    fn every_job_roundtrips_through_protobuf() {
        for spec in crate::job::tests::every_spec() {
            let mut job = Job::new(spec, "alice", Some("n1"));
            job.stop_reason = Some("deadline of 3 s expired".into());
            job.outcome = Some("done".into());
            job.state = JobState::Failed;
            job.steps.push(Step {
                ts_ms: 5,
                message: "m".into(),
                vm: Some("v".into()),
                ok: Some(false),
            });
            job.commands.push(CommandRecord {
                id: "c".into(),
                node: "n1".into(),
                vm: "v".into(),
                action: "migrate".into(),
                to: Some("n2".into()),
                payload: "0a0163".into(),
                ok: None,
                message: Some("unknown".into()),
            });
            let mut report = Report::default();
            report.record("a".into(), Ok("moved to n2".into()));
            report.record("b".into(), Err("not migratable".into()));
            job.report = Some(report);
            if let Some(r) = job.rolling.as_mut() {
                r.progress.insert("n2".into(), Phase::Rebooted);
                r.children.entry("n1".into()).or_default().enable = Some("e".into());
                r.boot_before.insert("n1".into(), "b0".into());
                r.continued.insert("n2".into());
            }
            let wire = pb::Job::from(&job).encode_to_vec();
            let back = Job::try_from(pb::Job::decode(wire.as_slice()).unwrap()).unwrap();
            assert_eq!(back, job, "{:?}", job.spec);
            // The engine's journal is not sent.
            job.engine = Some(serde_json::json!({"machine": 1}));
            assert_eq!(Job::try_from(pb::Job::from(&job)).unwrap().engine, None);
        }
    }

    #[test]
    fn a_malformed_job_names_its_field() {
        let good = pb::Job::from(&Job::new(JobSpec::Cordon(Cordon {}), "u", None));
        let cases: Vec<(pb::Job, &str)> = vec![
            (
                pb::Job {
                    spec: None,
                    ..good.clone()
                },
                "spec",
            ),
            (
                pb::Job {
                    spec: Some(pb::JobSpec { kind: None }),
                    ..good.clone()
                },
                "spec",
            ),
            (
                pb::Job {
                    state: 0,
                    ..good.clone()
                },
                "state",
            ),
            (
                pb::Job {
                    state: 99,
                    ..good.clone()
                },
                "state",
            ),
            (
                pb::Job {
                    id: String::new(),
                    ..good.clone()
                },
                "id",
            ),
            (
                pb::Job {
                    rolling: Some(pb::RollingProgress {
                        progress: [("n1".to_string(), 42)].into(),
                        ..Default::default()
                    }),
                    ..good.clone()
                },
                "rolling.progress[n1]",
            ),
        ];
        for (bad, field) in cases {
            let e = Job::try_from(bad).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        assert!(Job::try_from(good).is_ok());
    }
}
