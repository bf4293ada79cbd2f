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
        }
    }
}

impl Coordinator {
    pub async fn create_job(&self, job: &Job) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(job)?;
        self.jobs
            .create(&job.id, bytes.into())
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

    /// Ends a job with a state and outcome, and publishes the terminal event.
    pub async fn finish_job(&self, id: &str, state: JobState, outcome: String) {
        let now = nodemaint_proto::now_ms();
        let res = bus::cas_update::<Job, String>(&self.jobs, id, |j| {
            let mut j = j.ok_or_else(|| format!("job {id} vanished"))?;
            j.state = state;
            j.outcome = Some(outcome.clone());
            j.updated_ms = now;
            Ok(j)
        })
        .await;
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
