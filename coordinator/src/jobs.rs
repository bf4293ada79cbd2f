//! The job store: the `jobs` KV bucket where every job is recorded,
//! journaled and ended, and the job events published on the way. The job
//! model itself is `nodemaint_proto::job`, shared with the CLI and the wire.

use crate::registry::Registry;
use async_nats::jetstream::{self, kv};
use nodemaint_proto::bus::{self, CasError};
use nodemaint_proto::pb::{self, event::Body};
use nodemaint_proto::subjects::{Subjects, COORDINATOR_NODE};

pub use nodemaint_proto::job::*;

/// The `jobs` bucket and the job events: where every job is recorded,
/// journaled and ended. Ending a job releases its inbound claims in the
/// registry, so no caller can forget to.
pub struct JobStore {
    kv: kv::Store,
    js: jetstream::Context,
    subjects: Subjects,
    registry: Registry,
}

impl JobStore {
    pub fn new(
        kv: kv::Store,
        js: jetstream::Context,
        subjects: Subjects,
        registry: Registry,
    ) -> Self {
        JobStore {
            kv,
            js,
            subjects,
            registry,
        }
    }

    pub async fn create(&self, job: &Job) -> anyhow::Result<()> {
        let bytes: bytes::Bytes = serde_json::to_vec(job)?.into();
        // Retried while the jobs bucket has no stream leader (a cluster
        // member just died): the CLI waits 30 s for the answer.
        bus::Retry::within("job record", std::time::Duration::from_secs(20))
            .run(|| async {
                match self.kv.create(&job.id, bytes.clone()).await {
                    Ok(_) => Ok(()),
                    // An earlier attempt that timed out but landed.
                    Err(e) if bus::create_conflict(&e) && self.get(&job.id).await.is_some() => {
                        Ok(())
                    }
                    Err(e) => Err(bus::BoxError::from(e)),
                }
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot record job: {e}"))?;
        self.event(pb::JobEvent {
            job_id: job.id.clone(),
            kind: job.kind().into(),
            state: "RUNNING".into(),
            message: format!("{} started by {}", job.kind(), job.user),
            ..Default::default()
        })
        .await;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Option<Job> {
        bus::get_json(&self.kv, id).await.ok().flatten()
    }

    pub async fn list(&self) -> anyhow::Result<Vec<Job>> {
        let mut jobs: Vec<Job> = bus::all_json(&self.kv)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .into_iter()
            .map(|(_, j)| j)
            .collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.created_ms));
        Ok(jobs)
    }

    /// Appends a journal step (CAS) and publishes it as a job event.
    pub async fn step(&self, id: &str, step_vm: Option<&str>, ok: Option<bool>, message: String) {
        // Journal steps are the job's story: log them too (in the job's span).
        tracing::info!(vm = step_vm.unwrap_or(""), ok = ?ok, "{message}");
        let step = Step {
            ts_ms: nodemaint_proto::now_ms(),
            message: message.clone(),
            vm: step_vm.map(str::to_string),
            ok,
        };
        let res = bus::cas_update::<Job, String>(&self.kv, id, |j| {
            let mut j = j.ok_or_else(|| format!("job {id} vanished"))?;
            j.steps.push(step.clone());
            j.updated_ms = step.ts_ms;
            Ok(j)
        })
        .await;
        if let Err(e) = res {
            tracing::warn!(job = id, error = %e, "cannot journal step");
        }
        self.event(pb::JobEvent {
            job_id: id.into(),
            state: "RUNNING".into(),
            message,
            vm: step_vm.unwrap_or_default().into(),
            ok: ok.unwrap_or(true),
            ..Default::default()
        })
        .await;
    }

    /// Compare-and-set of a job record: `f` sees the stored job (`None` if
    /// there is none) and returns the new one or a refusal.
    pub async fn modify<E>(
        &self,
        id: &str,
        f: impl FnMut(Option<Job>) -> Result<Job, E>,
    ) -> Result<Job, CasError<E>> {
        bus::cas_update::<Job, E>(&self.kv, id, f)
            .await
            .map(|u| u.value)
    }

    /// True when the job's record is gone while the bucket answers (a
    /// journal write that fails for that reason will never succeed).
    pub async fn vanished(&self, id: &str) -> bool {
        self.get(id).await.is_none() && self.kv.status().await.is_ok()
    }

    /// Read-modify-write of a job record.
    pub async fn update(&self, id: &str, mut f: impl FnMut(&mut Job)) -> Option<Job> {
        let res = bus::cas_update::<Job, String>(&self.kv, id, |j| {
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
    pub async fn finish(&self, id: &str, state: JobState, outcome: String) {
        self.finish_with(id, state, outcome, None).await
    }

    pub async fn finish_with(
        &self,
        id: &str,
        state: JobState,
        outcome: String,
        report: Option<Report>,
    ) {
        let now = nodemaint_proto::now_ms();
        let res = bus::cas_update::<Job, String>(&self.kv, id, |j| {
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
            Ok(j) => j.value.kind().to_string(),
            Err(CasError::Rejected(e)) => {
                tracing::warn!(job = id, error = %e, "cannot finish job");
                String::new()
            }
            Err(e) => {
                tracing::warn!(job = id, error = %e, "cannot finish job");
                String::new()
            }
        };
        self.event(pb::JobEvent {
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

    /// Publishes a job event (on the coordinator's subject).
    pub async fn event(&self, job: pb::JobEvent) {
        let op = job.job_id.clone();
        if let Err(e) = bus::publish_event(
            &self.js,
            &self.subjects,
            COORDINATOR_NODE,
            &op,
            Body::Job(job),
        )
        .await
        {
            tracing::warn!(error = %e, "cannot publish job event");
        }
    }
}
