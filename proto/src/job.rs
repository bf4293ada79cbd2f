//! The job model: every fleet-changing operation (start, stop, move,
//! maintenance, enable, rolling) is a job with an id, the requesting user,
//! a typed spec and a journal. The coordinator stores it as JSON in its
//! `jobs` bucket; the API sends it as the `Job` protobuf message (the
//! conversions are in `crate::job_wire`).

use crate::pb;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum JobState {
    Running,
    Paused,
    Succeeded,
    Failed,
    Aborted,
}

impl Job {
    /// The stop reason an expired deadline of `secs` records.
    pub fn deadline_reason(secs: u32) -> String {
        format!("deadline of {secs} s expired")
    }

    /// Whether the job was stopped by its deadline (not an operator's abort).
    pub fn deadline_expired(&self) -> bool {
        self.stop_reason
            .as_deref()
            .is_some_and(|r| r == Job::deadline_reason(self.spec.deadline_s()))
    }
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Aborted
        )
    }
}

/// One line of a job's journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub ts_ms: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    /// What the job does, with its typed parameters. Stored (and shown by
    /// `--output json`) as `kind` (the API method that created it:
    /// `vm.move`, `maintenance.start`, …) and `params`.
    #[serde(flatten)]
    pub spec: JobSpec,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub state: JobState,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Why the job must stop (an operator's abort, an expired deadline),
    /// journaled so that a resumed job honours it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// When the job's deadline expires (ms since the epoch), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
    /// A rolling maintenance's progress: each node's phase and child jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling: Option<RollingState>,
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Final summary once terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Every agent command the job sent, journaled before it is sent, so a
    /// restarted coordinator can re-send unfinished ones with the same id
    /// (agents execute an id at most once and answer repeats).
    #[serde(default)]
    pub commands: Vec<CommandRecord>,
    /// What the job did and did not do, once it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
    /// The state of the job's engine machine (`crate::engine`), journaled
    /// before each of its acts; a restarted coordinator resumes from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<serde_json::Value>,
}

/// What a move-mode drain does with a VM that cannot live-migrate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    // The aliases read drain machines journaled before the spec was typed.
    #[default]
    #[serde(alias = "Fail")]
    Fail,
    #[serde(alias = "Stop")]
    Stop,
    #[serde(alias = "Cold")]
    Cold,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Fail => "fail",
            Fallback::Stop => "stop",
            Fallback::Cold => "cold",
        }
    }
}

/// A job's kind and typed parameters: one variant per kind of job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "SpecRepr", into = "SpecRepr")]
pub enum JobSpec {
    /// `maintenance start --mode move` (and `maintenance retry`, and a
    /// rolling maintenance's drains): live-migrate every VM away.
    Drain(Drain),
    /// `maintenance start --mode stop`: stop every VM, VFWs included.
    StopAll(StopAll),
    /// `maintenance start --mode none`: only mark the node unschedulable.
    Cordon(Cordon),
    /// `node enable`: restart what maintenance stopped.
    Enable(Enable),
    /// `node start-stopped`: start every shut-off VM of the node.
    StartStopped(StartStopped),
    /// `vm move` and `vfw move`: one live migration.
    Move(MoveVm),
    Start(StartVm),
    Stop(StopVm),
    Create(CreateVm),
    /// `node check`: the agent's checks.
    Check(Check),
    /// `rolling start`.
    Rolling(Rolling),
    /// One node of a rolling maintenance: journals that node's agent
    /// commands (reboot hook, checks).
    RollingNode(RollingNode),
}

/// Options shared by drains and stop all (`deadline_s` 0: none).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    /// The plan made when the job was accepted; re-planned after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<nodemaint_planner::DrainPlan>,
    #[serde(default)]
    pub fallback: Fallback,
    #[serde(default)]
    pub ack_vfw_downtime: bool,
    #[serde(default)]
    pub max_parallel: u32,
    #[serde(default)]
    pub max_speed_mibs: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deadline_s: u32,
    /// `maintenance retry`: a node already in maintenance drains again.
    #[serde(default, skip_serializing_if = "is_false")]
    pub retry: bool,
    /// The rolling maintenance this drain belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Escalation policy fixed when the job was accepted (`None`: the
    /// coordinator's configured one when each migration starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converge: Option<crate::model::ConvergePolicy>,
    /// Adaptive concurrency: the number of migrations in flight follows
    /// the measured throughput instead of staying at the fixed limit.
    #[serde(default, skip_serializing_if = "is_false")]
    pub adaptive: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StopAll {
    /// Cloudspaces whose VFW goes down (acknowledged by the operator).
    #[serde(default)]
    pub vfw_cloudspaces_down: Vec<String>,
    #[serde(default)]
    pub ack_vfw_downtime: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deadline_s: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cordon {}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Enable {
    /// What maintenance had stopped when it was accepted.
    #[serde(default)]
    pub restart: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StartStopped {
    /// The shut-off VMs when it was accepted.
    #[serde(default)]
    pub start: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MoveVm {
    pub vm: String,
    pub from: String,
    pub to: String,
    /// The destination's libvirt and migration endpoints.
    pub dest_libvirt_uri: String,
    pub dest_migrate_uri: String,
    pub timeout_s: u32,
    #[serde(default)]
    pub progress_timeout_s: u32,
    #[serde(default)]
    pub max_speed_mibs: u64,
    /// Escalation policy fixed when the job was accepted (`None`: the
    /// agent's default, jobs from before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converge: Option<crate::model::ConvergePolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StartVm {
    pub vm: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StopVm {
    pub vm: String,
    pub graceful_timeout_s: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateVm {
    pub vm: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    #[serde(default)]
    pub cloudspace: String,
    #[serde(default)]
    pub vfw: bool,
    /// The node the scheduler placed it on.
    pub to: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Check {
    #[serde(default)]
    pub start_failed: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rolling {
    pub nodes: Vec<String>,
    /// The planner's groups, drained one after another.
    pub groups: Vec<Vec<String>>,
    pub max_unavailable: u32,
    /// The name of the hook each node's agent runs (its command line is in
    /// the agent's config); empty with `wait_for_continue`.
    #[serde(default)]
    pub hook: String,
    #[serde(default)]
    pub wait_for_continue: bool,
    #[serde(default)]
    pub checks_must_pass: bool,
    pub reboot_timeout_s: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deadline_s: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RollingNode {
    pub parent: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A node's phase in a rolling maintenance, in order.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    // The aliases read rolling machines journaled when the engine had its
    // own copy of this type.
    #[default]
    #[serde(alias = "Pending")]
    Pending,
    #[serde(alias = "Draining")]
    Draining,
    #[serde(alias = "Drained")]
    Drained,
    #[serde(alias = "Rebooting")]
    Rebooting,
    #[serde(alias = "Rebooted")]
    Rebooted,
    #[serde(alias = "Checked")]
    Checked,
    #[serde(alias = "Enabled")]
    Enabled,
    #[serde(alias = "Done")]
    Done,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Pending,
        Phase::Draining,
        Phase::Drained,
        Phase::Rebooting,
        Phase::Rebooted,
        Phase::Checked,
        Phase::Enabled,
        Phase::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Draining => "draining",
            Phase::Drained => "drained",
            Phase::Rebooting => "rebooting",
            Phase::Rebooted => "rebooted",
            Phase::Checked => "checked",
            Phase::Enabled => "enabled",
            Phase::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The child jobs of one node of a rolling maintenance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Children {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<String>,
    /// The node's `rolling.node` job (its reboot hook and checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<String>,
}

/// A rolling maintenance's progress, written before and after each phase
/// so that a restarted coordinator continues where it was.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollingState {
    #[serde(default)]
    pub progress: BTreeMap<String, Phase>,
    #[serde(default)]
    pub children: BTreeMap<String, Children>,
    /// Each node's boot id before its reboot.
    #[serde(default)]
    pub boot_before: BTreeMap<String, String>,
    /// Nodes the operator let continue (`--wait-for-continue`).
    #[serde(default)]
    pub continued: BTreeSet<String>,
}

impl RollingState {
    pub fn new(nodes: &[String]) -> RollingState {
        RollingState {
            progress: nodes.iter().map(|n| (n.clone(), Phase::Pending)).collect(),
            ..Default::default()
        }
    }

    pub fn phase(&self, node: &str) -> Phase {
        self.progress.get(node).copied().unwrap_or_default()
    }

    /// Every child job (drains, node jobs, enables).
    pub fn child_ids(&self) -> impl Iterator<Item = &str> {
        self.children.values().flat_map(|c| {
            [&c.drain, &c.node, &c.enable]
                .into_iter()
                .filter_map(|id| id.as_deref())
        })
    }
}

impl JobSpec {
    /// The API method that created the job, as operators see it.
    pub fn kind(&self) -> &'static str {
        match self {
            JobSpec::Drain(_) | JobSpec::StopAll(_) | JobSpec::Cordon(_) => "maintenance.start",
            JobSpec::Enable(_) => "node.enable",
            JobSpec::StartStopped(_) => "node.start-stopped",
            JobSpec::Move(_) => "vm.move",
            JobSpec::Start(_) => "vm.start",
            JobSpec::Stop(_) => "vm.stop",
            JobSpec::Create(_) => "vm.create",
            JobSpec::Check(_) => "node.check",
            JobSpec::Rolling(_) => "rolling",
            JobSpec::RollingNode(_) => "rolling.node",
        }
    }

    /// A maintenance's mode (`move`, `stop`, `none`).
    pub fn mode(&self) -> Option<&'static str> {
        match self {
            JobSpec::Drain(_) => Some("move"),
            JobSpec::StopAll(_) => Some("stop"),
            JobSpec::Cordon(_) => Some("none"),
            _ => None,
        }
    }

    /// The VM a single-VM job acts on.
    pub fn vm(&self) -> Option<&str> {
        match self {
            JobSpec::Move(m) => Some(&m.vm),
            JobSpec::Start(s) => Some(&s.vm),
            JobSpec::Stop(s) => Some(&s.vm),
            JobSpec::Create(c) => Some(&c.vm),
            _ => None,
        }
    }

    /// The configured deadline in seconds (0: none).
    pub fn deadline_s(&self) -> u32 {
        match self {
            JobSpec::Drain(d) => d.deadline_s,
            JobSpec::StopAll(s) => s.deadline_s,
            JobSpec::Rolling(r) => r.deadline_s,
            _ => 0,
        }
    }

    /// The parent of a rolling maintenance's child job.
    pub fn parent(&self) -> Option<&str> {
        match self {
            JobSpec::Drain(d) => d.parent.as_deref(),
            JobSpec::Enable(e) => e.parent.as_deref(),
            JobSpec::RollingNode(r) => Some(&r.parent),
            _ => None,
        }
    }

    /// The agent command of a single-command job, and the node it goes to
    /// (`node` is the job's node).
    pub fn command(&self, node: &str) -> Option<(String, pb::agent_command::Kind)> {
        use pb::agent_command::Kind;
        let kind = match self {
            JobSpec::Move(m) => {
                return Some((
                    m.from.clone(),
                    Kind::Migrate(pb::MigrateVm {
                        vm: m.vm.clone(),
                        dest_node: m.to.clone(),
                        dest_libvirt_uri: m.dest_libvirt_uri.clone(),
                        dest_migrate_uri: m.dest_migrate_uri.clone(),
                        timeout_s: m.timeout_s,
                        max_speed_mibs: m.max_speed_mibs,
                        progress_timeout_s: m.progress_timeout_s,
                        converge: m.converge.as_ref().map(|c| c.to_pb()),
                    }),
                ))
            }
            JobSpec::Start(s) => Kind::Start(pb::StartVm { vm: s.vm.clone() }),
            JobSpec::Stop(s) => Kind::Stop(pb::StopVm {
                vm: s.vm.clone(),
                graceful_timeout_s: s.graceful_timeout_s,
            }),
            JobSpec::Create(c) => {
                return Some((
                    c.to.clone(),
                    Kind::Define(pb::DefineVm {
                        xml: String::new(),
                        start: true,
                        name: c.vm.clone(),
                        memory_mib: c.memory_mib,
                        vcpus: c.vcpus,
                        kind: if c.vfw {
                            pb::VmKind::Vfw
                        } else {
                            pb::VmKind::User
                        } as i32,
                        cloudspace: c.cloudspace.clone(),
                    }),
                ))
            }
            JobSpec::Check(c) => Kind::RunChecks(pb::RunChecks {
                start_failed: c.start_failed,
            }),
            _ => return None,
        };
        Some((node.to_string(), kind))
    }
}

/// How a spec is stored: `kind` (the API method) and `params`, maintenance
/// modes told apart by `params.mode`, the shape operators' scripts read.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", content = "params")]
enum SpecRepr {
    #[serde(rename = "maintenance.start")]
    Maintenance(MaintenanceRepr),
    #[serde(rename = "node.enable")]
    Enable(Enable),
    #[serde(rename = "node.start-stopped")]
    StartStopped(StartStopped),
    #[serde(rename = "vm.move")]
    Move(MoveVm),
    #[serde(rename = "vm.start")]
    Start(StartVm),
    #[serde(rename = "vm.stop")]
    Stop(StopVm),
    #[serde(rename = "vm.create")]
    Create(CreateVm),
    #[serde(rename = "node.check")]
    Check(Check),
    #[serde(rename = "rolling")]
    Rolling(Rolling),
    #[serde(rename = "rolling.node")]
    RollingNode(RollingNode),
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "mode")]
enum MaintenanceRepr {
    #[serde(rename = "move")]
    Drain(Drain),
    #[serde(rename = "stop")]
    StopAll(StopAll),
    #[serde(rename = "none")]
    Cordon(Cordon),
}

impl From<SpecRepr> for JobSpec {
    fn from(r: SpecRepr) -> JobSpec {
        match r {
            SpecRepr::Maintenance(MaintenanceRepr::Drain(d)) => JobSpec::Drain(d),
            SpecRepr::Maintenance(MaintenanceRepr::StopAll(s)) => JobSpec::StopAll(s),
            SpecRepr::Maintenance(MaintenanceRepr::Cordon(c)) => JobSpec::Cordon(c),
            SpecRepr::Enable(x) => JobSpec::Enable(x),
            SpecRepr::StartStopped(x) => JobSpec::StartStopped(x),
            SpecRepr::Move(x) => JobSpec::Move(x),
            SpecRepr::Start(x) => JobSpec::Start(x),
            SpecRepr::Stop(x) => JobSpec::Stop(x),
            SpecRepr::Create(x) => JobSpec::Create(x),
            SpecRepr::Check(x) => JobSpec::Check(x),
            SpecRepr::Rolling(x) => JobSpec::Rolling(x),
            SpecRepr::RollingNode(x) => JobSpec::RollingNode(x),
        }
    }
}

impl From<JobSpec> for SpecRepr {
    fn from(s: JobSpec) -> SpecRepr {
        match s {
            JobSpec::Drain(d) => SpecRepr::Maintenance(MaintenanceRepr::Drain(d)),
            JobSpec::StopAll(x) => SpecRepr::Maintenance(MaintenanceRepr::StopAll(x)),
            JobSpec::Cordon(x) => SpecRepr::Maintenance(MaintenanceRepr::Cordon(x)),
            JobSpec::Enable(x) => SpecRepr::Enable(x),
            JobSpec::StartStopped(x) => SpecRepr::StartStopped(x),
            JobSpec::Move(x) => SpecRepr::Move(x),
            JobSpec::Start(x) => SpecRepr::Start(x),
            JobSpec::Stop(x) => SpecRepr::Stop(x),
            JobSpec::Create(x) => SpecRepr::Create(x),
            JobSpec::Check(x) => SpecRepr::Check(x),
            JobSpec::Rolling(x) => SpecRepr::Rolling(x),
            JobSpec::RollingNode(x) => SpecRepr::RollingNode(x),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub id: String,
    pub node: String,
    pub vm: String,
    /// `migrate`, `stop`, `start`, `define`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The encoded AgentCommand (hex), for re-sending after a restart.
    pub payload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The end report of a job: each VM with what happened to it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub done: Vec<ReportLine>,
    pub not_done: Vec<ReportLine>,
}

impl Report {
    /// Succeeded when everything was done.
    pub fn state(&self) -> JobState {
        if self.not_done.is_empty() {
            JobState::Succeeded
        } else {
            JobState::Failed
        }
    }

    /// Adds what happened to `vm`: done (`Ok`) or not done (`Err`).
    pub fn record(&mut self, vm: String, outcome: Result<String, String>) {
        match outcome {
            Ok(detail) => self.done.push(ReportLine { vm, detail }),
            Err(detail) => self.not_done.push(ReportLine { vm, detail }),
        }
    }

    /// The VMs not done, for an outcome line.
    pub fn not_done_names(&self) -> String {
        let names: Vec<&str> = self.not_done.iter().map(|l| l.vm.as_str()).collect();
        names.join(", ")
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportLine {
    pub vm: String,
    pub detail: String,
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Decodes a journaled command (hex of an `AgentCommand`); `None` when it
/// is unreadable or has no kind. A journal comes from the jobs bucket, so
/// this is external input: never trust it enough to panic.
pub fn journaled_command(payload: &str) -> Option<(pb::AgentCommand, pb::agent_command::Kind)> {
    let cmd = crate::decode::<pb::AgentCommand>(&unhex(payload)?).ok()?;
    let kind = cmd.kind.clone()?;
    Some((cmd, kind))
}

impl Job {
    pub fn new(spec: JobSpec, user: &str, node: Option<&str>) -> Job {
        let now = crate::now_ms();
        let rolling = match &spec {
            JobSpec::Rolling(r) => Some(RollingState::new(&r.nodes)),
            _ => None,
        };
        let deadline_ms = match spec.deadline_s() {
            0 => None,
            s => Some(now + i64::from(s) * 1000),
        };
        Job {
            id: uuid::Uuid::new_v4().to_string(),
            spec,
            user: user.into(),
            node: node.map(str::to_string),
            state: JobState::Running,
            created_ms: now,
            updated_ms: now,
            stop_reason: None,
            deadline_ms,
            rolling,
            steps: Vec::new(),
            outcome: None,
            commands: Vec::new(),
            report: None,
            engine: None,
        }
    }

    /// The API method that created the job (`vm.move`, `maintenance.start`, …).
    pub fn kind(&self) -> &'static str {
        self.spec.kind()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::Message as _;

    #[test]
    fn hex_roundtrips() {
        let b = vec![0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&b), "0001abff");
        assert_eq!(unhex(&hex(&b)), Some(b));
        assert_eq!(unhex("zz"), None);
        // A journaled command without a kind is unreadable, not a panic.
        let kindless = pb::AgentCommand {
            id: "c1".into(),
            ..Default::default()
        };
        assert!(journaled_command(&hex(&kindless.encode_to_vec())).is_none());
        assert!(journaled_command("").is_none());
        assert!(journaled_command("0").is_none());
    }

    #[test]
    fn old_records_without_new_fields_still_load() {
        let j: Job = serde_json::from_str(
            r#"{"id":"1","kind":"vm.start","params":{"vm":"a"},"user":"a","state":"RUNNING","created_ms":1,"updated_ms":1}"#,
        )
        .unwrap();
        assert!(j.commands.is_empty() && j.report.is_none());
        assert!(!j.state.is_terminal());
        assert_eq!(j.spec, JobSpec::Start(StartVm { vm: "a".into() }));
    }

    /// One spec of every kind, with non-default fields.
    pub fn every_spec() -> Vec<JobSpec> {
        let plan: nodemaint_planner::DrainPlan = serde_json::from_value(serde_json::json!(
            {"node": "n1", "moves": [{"vm": "v", "from": "n1", "to": "n2", "wave": 0, "kind": "VFW"}]}
        ))
        .unwrap();
        vec![
            JobSpec::Drain(Drain {
                plan: Some(plan),
                fallback: Fallback::Cold,
                ack_vfw_downtime: true,
                max_parallel: 3,
                max_speed_mibs: 100,
                deadline_s: 60,
                retry: true,
                parent: Some("p".into()),
                converge: Some(crate::model::ConvergePolicy {
                    post_copy: true,
                    ..Default::default()
                }),
                adaptive: true,
            }),
            JobSpec::StopAll(StopAll {
                vfw_cloudspaces_down: vec!["cs1".into()],
                ack_vfw_downtime: true,
                deadline_s: 5,
            }),
            JobSpec::Cordon(Cordon {}),
            JobSpec::Enable(Enable {
                restart: vec!["a".into(), "b".into()],
                parent: Some("p".into()),
            }),
            JobSpec::StartStopped(StartStopped {
                start: vec!["a".into()],
            }),
            JobSpec::Move(MoveVm {
                vm: "v".into(),
                from: "n1".into(),
                to: "n2".into(),
                dest_libvirt_uri: "qemu+tcp://n2/system".into(),
                dest_migrate_uri: "tcp://n2".into(),
                timeout_s: 300,
                progress_timeout_s: 30,
                max_speed_mibs: 50,
                converge: Some(crate::model::ConvergePolicy::default()),
            }),
            JobSpec::Start(StartVm { vm: "v".into() }),
            JobSpec::Stop(StopVm {
                vm: "v".into(),
                graceful_timeout_s: 90,
            }),
            JobSpec::Create(CreateVm {
                vm: "v".into(),
                memory_mib: 512,
                vcpus: 2,
                cloudspace: "cs".into(),
                vfw: true,
                to: "n3".into(),
            }),
            JobSpec::Check(Check { start_failed: true }),
            JobSpec::Rolling(Rolling {
                nodes: vec!["n1".into(), "n2".into()],
                groups: vec![vec!["n1".into()], vec!["n2".into()]],
                max_unavailable: 1,
                hook: "reboot".into(),
                wait_for_continue: false,
                checks_must_pass: true,
                reboot_timeout_s: 900,
                deadline_s: 3600,
            }),
            JobSpec::RollingNode(RollingNode { parent: "p".into() }),
        ]
    }

    #[test]
    fn every_spec_roundtrips_through_the_jobs_bucket() {
        let specs = every_spec();
        let kinds: std::collections::BTreeSet<String> = specs
            .iter()
            .map(|s| format!("{:?}", std::mem::discriminant(s)))
            .collect();
        assert_eq!(kinds.len(), specs.len(), "one spec per kind");
        for spec in specs {
            let mut job = Job::new(spec.clone(), "alice", Some("n1"));
            job.stop_reason = Some("aborted by bob".into());
            job.engine = Some(serde_json::json!({"machine": 1}));
            if let Some(r) = job.rolling.as_mut() {
                r.progress.insert("n1".into(), Phase::Rebooting);
                r.continued.insert("n1".into());
                r.boot_before.insert("n1".into(), "b0".into());
                r.children.entry("n1".into()).or_default().drain = Some("d".into());
            }
            let text = serde_json::to_string(&job).unwrap();
            let back: Job = serde_json::from_str(&text).unwrap();
            assert_eq!(back, job, "{text}");
            // Operators' scripts read `kind` and `params` (with the mode).
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["kind"], spec.kind(), "{text}");
            assert!(v["params"].is_object(), "{text}");
            assert_eq!(v["params"]["mode"].as_str(), spec.mode(), "{text}");
        }
    }

    #[test]
    fn a_drain_as_scripts_and_old_journals_write_it() {
        let j: Job = serde_json::from_value(serde_json::json!({
            "id": "1", "kind": "maintenance.start", "user": "a", "node": "n1",
            "state": "RUNNING", "created_ms": 1, "updated_ms": 1,
            "params": {"node": "n1", "mode": "move", "fallback": "stop", "max_parallel": 2,
                       "ack_vfw_downtime": true, "max_speed_mibs": 0},
        }))
        .unwrap();
        let JobSpec::Drain(d) = &j.spec else {
            panic!("{:?}", j.spec)
        };
        assert_eq!(
            (d.fallback, d.max_parallel, d.plan.is_none()),
            (Fallback::Stop, 2, true)
        );
        // An unknown mode or kind is refused, not guessed.
        for bad in [
            serde_json::json!({"kind": "maintenance.start", "params": {"mode": "reboot"}}),
            serde_json::json!({"kind": "vm.teleport", "params": {}}),
        ] {
            assert!(serde_json::from_value::<JobSpec>(bad).is_err());
        }
    }

    #[test]
    fn phases_read_both_spellings() {
        for p in Phase::ALL {
            let lower = serde_json::to_string(&p).unwrap();
            assert_eq!(lower, format!("\"{}\"", p.as_str()));
            // As the engine's own copy journaled it before they were one type.
            let old = format!("{p:?}");
            assert_eq!(
                serde_json::from_str::<Phase>(&format!("\"{old}\"")).unwrap(),
                p
            );
            assert_eq!(serde_json::from_str::<Phase>(&lower).unwrap(), p);
        }
    }

    #[test]
    fn a_deadline_is_set_from_the_spec() {
        let before = crate::now_ms();
        let j = Job::new(
            JobSpec::StopAll(StopAll {
                deadline_s: 10,
                ..Default::default()
            }),
            "u",
            None,
        );
        let d = j.deadline_ms.unwrap();
        assert!(d >= before + 10_000 && d <= crate::now_ms() + 10_000);
        assert_eq!(
            Job::new(JobSpec::Cordon(Cordon {}), "u", None).deadline_ms,
            None
        );
    }

    #[test]
    fn single_command_jobs_derive_their_command() {
        use pb::agent_command::Kind;
        for spec in every_spec() {
            let cmd = spec.command("n1");
            match &spec {
                JobSpec::Move(m) => {
                    let (node, Some(Kind::Migrate(k))) = cmd.map(|(n, k)| (n, Some(k))).unwrap()
                    else {
                        panic!()
                    };
                    assert_eq!(
                        (node.as_str(), k.dest_node.as_str(), k.timeout_s),
                        ("n1", "n2", 300)
                    );
                    assert_eq!(k.dest_migrate_uri, m.dest_migrate_uri);
                }
                JobSpec::Create(_) => {
                    let (node, kind) = cmd.unwrap();
                    assert_eq!(node, "n3");
                    assert!(
                        matches!(kind, Kind::Define(d) if d.kind == pb::VmKind::Vfw as i32 && d.start)
                    );
                }
                JobSpec::Start(_) | JobSpec::Stop(_) | JobSpec::Check(_) => {
                    assert_eq!(cmd.unwrap().0, "n1")
                }
                _ => assert!(cmd.is_none(), "{spec:?}"),
            }
        }
    }
}
