//! The job store: the `jobs` KV bucket where every job is recorded,
//! journaled and ended, and the job events published on the way. The job
//! model itself is `nodemaint_proto::job`, shared with the CLI and the wire.

use crate::registry::Registry;
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use nodemaint_proto::bus::{self, CasError};
use nodemaint_proto::pb::{self, event::Body};
use nodemaint_proto::subjects::{Subjects, COORDINATOR_NODE};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub use nodemaint_proto::job::*;

/// The `jobs` bucket and the job events: where every job is recorded,
/// journaled and ended. Ending a job releases its inbound claims in the
/// registry, so no caller can forget to.
///
/// Listing reads an in-memory mirror of the bucket kept by a KV watch (as
/// the registry does), not every record: pre-flight, metrics scrapes and the
/// portal list jobs often. `get` reads the bucket itself: drivers decide on
/// the stored journal.
pub struct JobStore {
    kv: kv::Store,
    js: jetstream::Context,
    subjects: Subjects,
    registry: Registry,
    /// Every job record, as of the watch's last update: for listings only;
    /// decisions read the bucket (`get`).
    mirror: Arc<RwLock<HashMap<String, Job>>>,
}

/// The key of "one rolling maintenance at a time": holds the running
/// rolling job's id, taken with a create so two starts cannot both win.
const ROLLING_LOCK: &str = "lock.rolling";

/// The key of "one job at a time on a VM" (move, start, stop, create): the
/// name as is when it is a valid key token, else hex (`x…`).
fn vm_lock(vm: &str) -> String {
    if !vm.is_empty()
        && vm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        format!("lock.vm.{vm}")
    } else {
        let hex: String = vm.bytes().map(|b| format!("{b:02x}")).collect();
        format!("lock.vm.x{hex}")
    }
}

/// How long a lock may wait for its job's record.
const LOCK_START_S: i64 = 60;

/// How long the record of a read-only job (`node check` without
/// `--start-failed`) outlives its end, at most.
pub const READ_ONLY_RETENTION_MS: i64 = 3600 * 1000;

/// A listing: the newest jobs first, and how many there are in all.
pub struct Listing {
    pub jobs: Vec<Job>,
    pub total: usize,
}

impl JobStore {
    /// Opens the store; returns once the mirror holds every stored job.
    pub async fn open(
        kv: kv::Store,
        js: jetstream::Context,
        subjects: Subjects,
        registry: Registry,
    ) -> Result<Self, bus::BoxError> {
        let store = JobStore {
            kv,
            js,
            subjects,
            registry,
            mirror: Arc::default(),
        };
        // Watch first, then read: a change landing in between is replayed
        // by the watch rather than missed.
        let mut watch = store.kv.watch_all().await?;
        store.reload().await?;
        let mirror = store.mirror.clone();
        tokio::spawn(async move {
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { continue };
                if !is_job_key(&entry.key) {
                    continue;
                }
                let mut m = mirror.write().unwrap();
                match entry.operation {
                    kv::Operation::Put => {
                        if let Ok(j) = serde_json::from_slice::<Job>(&entry.value) {
                            m.insert(entry.key, j);
                        }
                    }
                    kv::Operation::Delete | kv::Operation::Purge => {
                        m.remove(&entry.key);
                    }
                }
            }
        });
        Ok(store)
    }

    /// Reads every job record into the mirror: at start, and when this
    /// coordinator becomes the leader (a standby's watch may have stalled,
    /// e.g. on a cluster member that died).
    pub async fn reload(&self) -> Result<(), bus::BoxError> {
        let mut keys = Vec::new();
        let mut listed = self.kv.keys().await?;
        while let Some(k) = listed.next().await {
            keys.push(k?);
        }
        let mut fresh = HashMap::new();
        for k in keys.into_iter().filter(|k| is_job_key(k)) {
            if let Some(j) = self.get(&k).await {
                fresh.insert(k, j);
            }
        }
        *self.mirror.write().unwrap() = fresh;
        Ok(())
    }

    /// The leader writes every job itself: its own writes enter the mirror
    /// at once, whatever the watch does.
    fn remember(&self, j: &Job) {
        self.mirror.write().unwrap().insert(j.id.clone(), j.clone());
    }

    /// The newest `limit` jobs (0: all), from the mirror.
    pub fn list(&self, limit: usize) -> Listing {
        let mut jobs: Vec<Job> = self.mirror.read().unwrap().values().cloned().collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.created_ms));
        let total = jobs.len();
        if limit > 0 {
            jobs.truncate(limit);
        }
        Listing { jobs, total }
    }

    /// Jobs not ended (running or paused), from the mirror.
    pub fn running(&self) -> Vec<Job> {
        let mut jobs: Vec<Job> = self
            .mirror
            .read()
            .unwrap()
            .values()
            .filter(|j| !j.state.is_terminal())
            .cloned()
            .collect();
        jobs.sort_by_key(|j| j.created_ms);
        jobs
    }

    /// Deletes the records of jobs that ended more than `retention_ms` ago;
    /// returns how many. Their events stay in the events stream.
    pub async fn expire(&self, now_ms: i64, retention_ms: i64) -> usize {
        let old: Vec<String> = self
            .mirror
            .read()
            .unwrap()
            .values()
            .filter(|j| expired(j, now_ms, retention_ms))
            .map(|j| j.id.clone())
            .collect();
        let mut n = 0;
        for id in old {
            match self.kv.purge(&id).await {
                Ok(()) => {
                    self.mirror.write().unwrap().remove(&id);
                    n += 1
                }
                Err(e) => tracing::warn!(job = %id, error = %e, "cannot delete an expired job"),
            }
        }
        n
    }

    /// Takes "the" rolling maintenance for job `id`; refused with the id of
    /// the rolling that holds it.
    pub async fn lock_rolling(&self, id: &str) -> Result<(), String> {
        self.lock(ROLLING_LOCK, id).await
    }

    /// Takes VM `vm` for the single-VM job `id`; refused with the id of the
    /// job acting on it. (A check of the running jobs followed by a create
    /// let two concurrent moves of one VM both start.)
    pub async fn lock_vm(&self, vm: &str, id: &str) -> Result<(), String> {
        self.lock(&vm_lock(vm), id).await
    }

    /// Gives the locks of job `job` back (its VM's, the rolling one).
    pub async fn unlock_job(&self, job: &Job) {
        if matches!(job.spec, JobSpec::Rolling(_)) {
            self.unlock(ROLLING_LOCK, &job.id).await;
        }
        if let Some(vm) = job.spec.vm() {
            self.unlock(&vm_lock(vm), &job.id).await;
        }
    }

    /// Put-if-absent of `key` = `id`; a lock left by a job that has ended
    /// is taken over by compare-and-set. Refused with the holder's id.
    async fn lock(&self, key: &str, id: &str) -> Result<(), String> {
        loop {
            match self.kv.create(key, id.to_string().into()).await {
                Ok(_) => return Ok(()),
                Err(e) if !bus::create_conflict(&e) => return Err(format!("cannot lock: {e}")),
                Err(_) => {}
            }
            let Ok(Some(entry)) = bus::leader_entry(&self.kv, key).await else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let holder = String::from_utf8_lossy(&entry.value).into_owned();
            // The lock is taken before its job is recorded: a holder with no
            // record yet is still starting, unless the lock is older than any
            // start takes (its coordinator died in between).
            let starting = || {
                let age = time::OffsetDateTime::now_utc() - entry.created;
                age < time::Duration::seconds(LOCK_START_S)
            };
            let live = match self.get(&holder).await {
                Some(j) => !j.state.is_terminal(),
                None => starting(),
            };
            if live {
                return Err(holder);
            }
            match self
                .kv
                .update(key, id.to_string().into(), entry.revision)
                .await
            {
                Ok(_) => return Ok(()),
                // Someone else took it meanwhile: look again.
                Err(_) => continue,
            }
        }
    }

    /// Gives lock `key` back if job `id` holds it.
    async fn unlock(&self, key: &str, id: &str) {
        if let Ok(Some(entry)) = bus::leader_entry(&self.kv, key).await {
            if entry.operation == kv::Operation::Put && entry.value.as_ref() == id.as_bytes() {
                if let Err(e) = self
                    .kv
                    .delete_expect_revision(key, Some(entry.revision))
                    .await
                {
                    tracing::warn!(job = id, key, error = %e, "cannot release a lock");
                }
            }
        }
    }

    /// Records a new job and publishes its "started" event.
    pub async fn create(&self, job: &Job) -> anyhow::Result<()> {
        self.record_new(job).await?;
        self.event(started(job)).await;
        Ok(())
    }

    /// Records a new job without announcing it ([`JobStore::announce`]).
    pub async fn record_new(&self, job: &Job) -> anyhow::Result<()> {
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
        self.remember(job);
        Ok(())
    }

    /// Sends a recorded job's "started" event without waiting for the
    /// stream's ack (awaited in the background; a failure is logged, as
    /// [`JobStore::event`] does): nobody waits for it, and the job's later
    /// events, published by this process on the same connection, follow it
    /// on the stream.
    pub async fn announce(&self, job: &Job) {
        let sent = bus::send_event(
            &self.js,
            &self.subjects,
            COORDINATOR_NODE,
            &job.id,
            Body::Job(started(job)),
        )
        .await;
        match sent {
            Ok(Some(ack)) => {
                tokio::spawn(async move {
                    if let Err(e) = ack.await {
                        tracing::warn!(error = %e, "cannot publish job event");
                    }
                });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot publish job event"),
        }
    }

    /// The job's record as the bucket's stream leader has it; `None` also
    /// when the bucket did not answer for 30 s (logged).
    pub async fn get(&self, id: &str) -> Option<Job> {
        match bus::get_json(&self.kv, id).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(job = id, error = %e, "cannot read job record");
                None
            }
        }
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
        let res = self
            .modify::<String>(id, |j| {
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
        let j = bus::cas_update::<Job, E>(&self.kv, id, f).await?.value;
        self.remember(&j);
        Ok(j)
    }

    /// True when the bucket's stream leader answers that the job's record
    /// is gone (a journal write that fails for that reason will never
    /// succeed). Not on an error: the leader may be changing.
    pub async fn vanished(&self, id: &str) -> bool {
        matches!(bus::leader_value(&self.kv, id).await, Ok(None))
    }

    /// Read-modify-write of a job record.
    pub async fn update(&self, id: &str, mut f: impl FnMut(&mut Job)) -> Option<Job> {
        let res = self
            .modify::<String>(id, |j| {
                let mut j = j.ok_or_else(|| format!("job {id} vanished"))?;
                f(&mut j);
                j.updated_ms = nodemaint_proto::now_ms();
                Ok(j)
            })
            .await;
        match res {
            Ok(j) => Some(j),
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
        let res = self
            .modify::<String>(id, |j| {
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
            Ok(j) => {
                self.unlock_job(&j).await;
                j.kind().to_string()
            }
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

/// A job's first event.
fn started(job: &Job) -> pb::JobEvent {
    pb::JobEvent {
        job_id: job.id.clone(),
        kind: job.kind().into(),
        state: "RUNNING".into(),
        message: format!("{} started by {}", job.kind(), job.user),
        ..Default::default()
    }
}

/// Job records are keyed by their id (a UUID); other keys are the store's
/// own (the rolling lock).
fn is_job_key(k: &str) -> bool {
    !k.starts_with("lock.")
}

/// Whether a job's record is past its retention: ended, and ended longer
/// ago than the retention (a read-only check: at most an hour).
pub fn expired(j: &Job, now_ms: i64, retention_ms: i64) -> bool {
    let keep = match j.spec {
        JobSpec::Check(Check {
            start_failed: false,
        }) => retention_ms.min(READ_ONLY_RETENTION_MS),
        _ => retention_ms,
    };
    j.state.is_terminal() && j.updated_ms < now_ms.saturating_sub(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ended_jobs_expire_and_reads_sooner() {
        let day = 24 * 3600 * 1000;
        let job = |spec: JobSpec, state: JobState, ended: i64| Job {
            state,
            updated_ms: ended,
            ..Job::new(spec, "u", None)
        };
        let check = |start_failed| JobSpec::Check(Check { start_failed });
        let now = 100 * day;
        let cases = [
            (
                job(check(false), JobState::Succeeded, now - 2 * 3600 * 1000),
                true,
            ),
            (
                job(check(false), JobState::Succeeded, now - 600 * 1000),
                false,
            ),
            (
                job(check(true), JobState::Succeeded, now - 2 * 3600 * 1000),
                false,
            ),
            (job(check(true), JobState::Failed, now - 31 * day), true),
            (
                job(
                    JobSpec::Cordon(Cordon {}),
                    JobState::Running,
                    now - 90 * day,
                ),
                false,
            ),
            (
                job(JobSpec::Cordon(Cordon {}), JobState::Paused, now - 90 * day),
                false,
            ),
            (
                job(
                    JobSpec::Cordon(Cordon {}),
                    JobState::Aborted,
                    now - 29 * day,
                ),
                false,
            ),
        ];
        for (j, want) in cases {
            assert_eq!(
                expired(&j, now, 30 * day),
                want,
                "{:?} {:?}",
                j.spec,
                j.state
            );
        }
    }
}
