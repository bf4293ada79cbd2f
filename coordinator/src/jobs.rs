//! Jobs: every fleet-changing operation (start, stop, move, maintenance,
//! enable, rolling) is a job with an id, the requesting user and a journal
//! of steps, stored in the `jobs` KV bucket so it survives a restart.

use crate::server::Coordinator;
use nodemaint_proto::bus::{self, CasError};
use nodemaint_proto::pb;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum JobState {
    Running,
    Paused,
    Succeeded,
    Failed,
    Aborted,
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
    /// The API method that created it (`vm.move`, `maintenance.start`, …).
    pub kind: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub state: JobState,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// The request's parameters, for the record and for resuming.
    #[serde(default)]
    pub params: serde_json::Value,
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
    let cmd = nodemaint_proto::decode::<pb::AgentCommand>(&unhex(payload)?).ok()?;
    let kind = cmd.kind.clone()?;
    Some((cmd, kind))
}

impl Job {
    pub fn new(kind: &str, user: &str, node: Option<&str>, params: serde_json::Value) -> Job {
        let now = nodemaint_proto::now_ms();
        Job {
            id: uuid::Uuid::new_v4().to_string(),
            kind: kind.into(),
            user: user.into(),
            node: node.map(str::to_string),
            state: JobState::Running,
            created_ms: now,
            updated_ms: now,
            params,
            steps: Vec::new(),
            outcome: None,
            commands: Vec::new(),
            report: None,
            engine: None,
        }
    }
}

impl Coordinator {
    pub async fn create_job(&self, job: &Job) -> anyhow::Result<()> {
        let bytes: bytes::Bytes = serde_json::to_vec(job)?.into();
        // Retried while the jobs bucket has no stream leader (a cluster
        // member just died): the CLI waits 30 s for the answer.
        bus::Retry::within("job record", std::time::Duration::from_secs(20))
            .run(|| async {
                match self.jobs.create(&job.id, bytes.clone()).await {
                    Ok(_) => Ok(()),
                    // An earlier attempt that timed out but landed.
                    Err(e) if bus::create_conflict(&e) && self.get_job(&job.id).await.is_some() => {
                        Ok(())
                    }
                    Err(e) => Err(bus::BoxError::from(e)),
                }
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot record job: {e}"))?;
        self.job_event(pb::JobEvent {
            job_id: job.id.clone(),
            kind: job.kind.clone(),
            state: "RUNNING".into(),
            message: format!("{} started by {}", job.kind, job.user),
            ..Default::default()
        })
        .await;
        Ok(())
    }

    pub async fn get_job(&self, id: &str) -> Option<Job> {
        bus::get_json(&self.jobs, id).await.ok().flatten()
    }

    pub async fn list_jobs(&self) -> anyhow::Result<Vec<Job>> {
        let mut jobs: Vec<Job> = bus::all_json(&self.jobs)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .into_iter()
            .map(|(_, j)| j)
            .collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.created_ms));
        Ok(jobs)
    }

    /// Appends a journal step (CAS) and publishes it as a job event.
    pub async fn job_step(
        &self,
        id: &str,
        step_vm: Option<&str>,
        ok: Option<bool>,
        message: String,
    ) {
        // Journal steps are the job's story: log them too (in the job's span).
        tracing::info!(vm = step_vm.unwrap_or(""), ok = ?ok, "{message}");
        let step = Step {
            ts_ms: nodemaint_proto::now_ms(),
            message: message.clone(),
            vm: step_vm.map(str::to_string),
            ok,
        };
        let res = bus::cas_update::<Job, String>(&self.jobs, id, |j| {
            let mut j = j.ok_or_else(|| format!("job {id} vanished"))?;
            j.steps.push(step.clone());
            j.updated_ms = step.ts_ms;
            Ok(j)
        })
        .await;
        if let Err(e) = res {
            tracing::warn!(job = id, error = %e, "cannot journal step");
        }
        self.job_event(pb::JobEvent {
            job_id: id.into(),
            state: "RUNNING".into(),
            message,
            vm: step_vm.unwrap_or_default().into(),
            ok: ok.unwrap_or(true),
            ..Default::default()
        })
        .await;
    }

    /// Read-modify-write of a job record.
    pub async fn update_job(&self, id: &str, mut f: impl FnMut(&mut Job)) -> Option<Job> {
        let res = bus::cas_update::<Job, String>(&self.jobs, id, |j| {
            let mut j = j.ok_or_else(|| format!("job {id} vanished"))?;
            f(&mut j);
            j.updated_ms = nodemaint_proto::now_ms();
            Ok(j)
        })
        .await;
        match res {
            Ok(u) => Some(u.value),
            Err(e) => {
                tracing::warn!(job = id, error = %e, "cannot update job");
                None
            }
        }
    }

    /// Ends a job with a state and outcome, and publishes the terminal event.
    pub async fn finish_job(&self, id: &str, state: JobState, outcome: String) {
        self.finish_job_with(id, state, outcome, None).await
    }

    pub async fn finish_job_with(
        &self,
        id: &str,
        state: JobState,
        outcome: String,
        report: Option<Report>,
    ) {
        let now = nodemaint_proto::now_ms();
        let res = bus::cas_update::<Job, String>(&self.jobs, id, |j| {
            let mut j = j.ok_or_else(|| format!("job {id} vanished"))?;
            j.state = state;
            j.outcome = Some(outcome.clone());
            if report.is_some() {
                j.report = report.clone();
            }
            j.updated_ms = now;
            Ok(j)
        })
        .await;
        // An ended job lands nothing any more: its destinations may enter
        // maintenance.
        self.registry.release_inbound(id).await;
        let kind = match res {
            Ok(j) => j.value.kind,
            Err(CasError::Rejected(e)) => {
                tracing::warn!(job = id, error = %e, "cannot finish job");
                String::new()
            }
            Err(e) => {
                tracing::warn!(job = id, error = %e, "cannot finish job");
                String::new()
            }
        };
        self.job_event(pb::JobEvent {
            job_id: id.into(),
            kind,
            state: format!("{state:?}").to_uppercase(),
            message: outcome,
            terminal: true,
            ok: state == JobState::Succeeded,
            percent: 100.0,
            ..Default::default()
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodemaint_proto::Message as _;

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
            r#"{"id":"1","kind":"vm.start","user":"a","state":"RUNNING","created_ms":1,"updated_ms":1}"#,
        )
        .unwrap();
        assert!(j.commands.is_empty() && j.report.is_none());
        assert!(!j.state.is_terminal());
    }
}
