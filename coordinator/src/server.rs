//! `coordinator serve`: keeps the node registry from agents' events and
//! answers the API. The pieces:
//!
//! - an event loop applying heartbeats and inventories to the registry;
//! - a result router handing agents' progress and results to whoever sent
//!   the command (jobs wait on them);
//! - the API responder (`<prefix>.v1.api.>`, queue group, so replicas share load).

use crate::config::CoordinatorConfig;
use crate::jobs::JobStore;
use crate::link::AgentLink;
use crate::registry::{self, Registry};
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use nodemaint_proto::bus;
use nodemaint_proto::pb::{self, event::Body};
use nodemaint_proto::subjects::{EventKind, Subjects, COORDINATOR_NODE};
use nodemaint_proto::Message as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The coordinator: three parts that do not know each other (the node
/// registry, the job store, the agent link), composed with this process's
/// leadership and the drivers' shared limits.
pub struct Coordinator {
    pub cfg: CoordinatorConfig,
    pub registry: Registry,
    pub jobs: JobStore,
    pub link: AgentLink,
    /// True while this coordinator holds the leader lease: only the leader
    /// changes the fleet (the portal checks it too).
    pub leader: std::sync::atomic::AtomicBool,
    /// API request ids (idempotency) → job ids.
    pub requests: kv::Store,
    /// The leader lease's bucket.
    leader_store: kv::Store,
    /// Migration concurrency shared by all jobs.
    pub slots: crate::driver::slots::MigrationSlots,
    /// Abort and deadline requests of running jobs.
    pub stops: crate::driver::executor::Stops,
    /// Pre-flight probes, cached and single-flight per source node.
    pub probes: crate::driver::probes::Probes,
    /// When this coordinator started listening to heartbeats.
    listening_since: tokio::time::Instant,
}

/// Connects to NATS within 5 s, naming the URL when it can't.
pub async fn connect(
    url: &str,
    name: &str,
    sec: &bus::Security,
) -> anyhow::Result<async_nats::Client> {
    bus::connect(url, name, sec)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

impl Coordinator {
    /// Connects, creates streams and buckets, and starts the event loops.
    pub async fn start(cfg: CoordinatorConfig) -> anyhow::Result<Arc<Self>> {
        let security = cfg.nats_security();
        // A daemon waits for its server (started after it, restarting, a
        // cluster electing); only what waiting cannot fix ends it.
        let (client, server_errors) = bus::Retry::forever("NATS connection")
            .run(|| bus::connect_watching(&cfg.nats_url, "nodemaint-coordinator", &security))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let js = jetstream::new(client.clone());
        let subjects = Subjects::new(&cfg.subject_prefix);
        let e = |what: &str, err: bus::BoxError| anyhow::anyhow!("cannot set up {what}: {err}");
        let replicas = cfg.nats_replicas;
        let retry = |what: &str| bus::Retry::forever(what).refusals(server_errors.subscribe());
        retry("streams")
            .run(|| bus::ensure_streams(&js, &subjects, replicas))
            .await
            .map_err(|err| e("streams", err))?;
        let day = Duration::from_secs(24 * 3600);
        // (bucket, history, max age); the requests bucket remembers request
        // ids only as long as a client retries.
        let buckets = [
            (subjects.nodes_bucket(), 5, Duration::ZERO),
            (subjects.jobs_bucket(), 1, Duration::ZERO),
            (subjects.requests_bucket(), 1, day),
            (subjects.agent_results_bucket(), 1, 7 * day),
            (subjects.leader_bucket(), 1, Duration::ZERO),
        ];
        let mut stores = Vec::new();
        for (name, history, max_age) in buckets {
            let store = retry(&format!("bucket {name}"))
                .run(|| bus::bucket(&js, &name, history, max_age, replicas))
                .await
                .map_err(|err| e(&format!("bucket {name}"), err))?;
            stores.push(store);
        }
        let [nodes, jobs, requests, agent_results, leader]: [kv::Store; 5] = stores
            .try_into()
            .map_err(|_| anyhow::anyhow!("five buckets"))?;
        let registry = Registry::open(nodes)
            .await
            .map_err(|err| e("registry", err))?;
        let cfg_limits = cfg.limits;
        let jobs = JobStore::open(jobs, js.clone(), subjects.clone(), registry.clone())
            .await
            .map_err(|err| e("job store", err))?;
        let link = AgentLink::new(client, js.clone(), subjects.clone(), agent_results);
        let coord = Arc::new(Coordinator {
            cfg,
            jobs,
            registry,
            link,
            requests,
            leader_store: leader,
            slots: crate::driver::slots::MigrationSlots::new(cfg_limits),
            stops: Default::default(),
            probes: Default::default(),
            leader: Default::default(),
            listening_since: tokio::time::Instant::now(),
        });
        coord.clone().spawn_event_loops().await?;
        Ok(coord)
    }

    /// Waits for the leader lease, then resumes left-over jobs and answers
    /// the API until `shutdown` completes or the lease is lost.
    pub async fn serve(self: Arc<Self>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let leader = self.leader_store.clone();
        let elector =
            crate::lease::Elector::new(leader, Duration::from_secs(self.cfg.lease_ttl_s.max(2)));
        tokio::pin!(shutdown);
        // Liveness is only in memory (heartbeats are not stored): a
        // coordinator that just started has heard no heartbeat yet and, as
        // leader, would find every node unreachable. So it listens for about
        // one interval before it competes for the lease (a standby that
        // waited for the lease has heard them all long since).
        let intervals: Vec<u32> = self
            .registry
            .all()
            .iter()
            .map(|n| n.heartbeat_interval_ms)
            .collect();
        let learned = self.listening_since + registry::liveness_learned_after(&intervals);
        tokio::select! {
            _ = tokio::time::sleep_until(learned) => {}
            _ = &mut shutdown => return Ok(()),
        }
        let held_until = tokio::select! {
            until = elector.acquire() => until,
            _ = &mut shutdown => return Ok(()),
        };
        self.link
            .epoch
            .store(elector.epoch(), std::sync::atomic::Ordering::SeqCst);
        self.leader.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = self.jobs.reload().await {
            tracing::warn!(error = %e, "cannot reload the job listing; it follows the watch");
        }
        tokio::spawn(crate::driver::executor::resume_jobs(self.clone()));
        tokio::spawn(self.clone().expire_jobs());
        let mut api = self
            .link
            .client
            .queue_subscribe(self.link.subjects.api_all(), "nodemaint-coordinator".into())
            .await?;
        tracing::info!(url = %self.cfg.nats_url, "coordinator serving");
        let serve = async {
            while let Some(msg) = api.next().await {
                let me = self.clone();
                tokio::spawn(async move { me.answer(msg).await });
            }
        };
        tokio::select! {
            _ = serve => anyhow::bail!("API subscription ended"),
            _ = elector.keep(held_until) => {
                self.leader.store(false, std::sync::atomic::Ordering::SeqCst);
                anyhow::bail!("lost the leader lease; exiting so that only one coordinator acts")
            }
            _ = shutdown => Ok(()),
        }
    }

    /// While leader: deletes finished jobs older than the retention, at
    /// a quarter of it (at most hourly, at least every second).
    async fn expire_jobs(self: Arc<Self>) {
        let retention = Duration::from_secs(self.cfg.job_retention_s);
        let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if !self.leader.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            let n = self
                .jobs
                .expire(nodemaint_proto::now_ms(), retention_ms)
                .await;
            if n > 0 {
                tracing::info!(jobs = n, "deleted finished jobs past their retention");
            }
        }
    }

    async fn answer(self: Arc<Self>, msg: async_nats::Message) {
        let Some(reply_to) = msg.reply.clone() else {
            tracing::warn!(subject = %msg.subject, "API request without reply subject ignored");
            return;
        };
        // Answer only into the authenticated caller's own inbox (its user is
        // the subject's token). The reply subject is the requester's choice
        // and the coordinator may publish where the requester may not
        // (agents' commands, others' inboxes): a request asking for its
        // answer anywhere else is not run and gets no reply at all.
        let user = self
            .link
            .subjects
            .parse_api(&msg.subject)
            .map(|a| a.user)
            .unwrap_or_default();
        if !nodemaint_proto::subjects::is_own_inbox(user, &reply_to) {
            tracing::warn!(subject = %msg.subject, reply = %reply_to,
                expected = %format!("{}.…", nodemaint_proto::subjects::inbox_prefix(user)),
                "API request refused: its reply subject is not the caller's inbox; nothing sent");
            crate::metrics::registry().add(&crate::metrics::FOREIGN_REPLIES, &[], 1.0);
            return;
        }
        let reply = match nodemaint_proto::decode::<pb::ApiRequest>(&msg.payload) {
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %e, "malformed API request");
                pb::ApiReply::error(pb::error::Code::Malformed, e.to_string())
            }
            Ok(req) => match self.caller(&msg.subject, &req) {
                Ok(user) => crate::api::handle(&self, &user, req).await,
                Err(e) => {
                    tracing::warn!(subject = %msg.subject, error = %e.message, "API request refused");
                    pb::ApiReply {
                        kind: Some(pb::api_reply::Kind::Error(e)),
                    }
                }
            },
        };
        if let Err(e) = self
            .link
            .client
            .publish(reply_to, reply.encode_to_vec().into())
            .await
        {
            tracing::warn!(error = %e, "cannot send API reply");
        }
    }

    /// Who sent an API request: the user token of its subject, which the
    /// NATS server's permissions bind to the authenticated connection (the
    /// body's `user` field is only a claim and is ignored). The subject's
    /// read/change token must match the method, so a user whose permissions
    /// only allow `read` cannot smuggle a change through it.
    fn caller(&self, subject: &str, req: &pb::ApiRequest) -> Result<String, pb::Error> {
        use pb::error::Code;
        let Some(api) = self.link.subjects.parse_api(subject) else {
            return Err(pb::Error::new(
                Code::Malformed,
                format!("{subject:?} is not an API subject (<prefix>.v1.api.<user>.<read|change>.<method>)"),
            ));
        };
        if req.method() != Some(api.method) {
            return Err(pb::Error::new(
                Code::Malformed,
                format!(
                    "request body {} does not match subject method {:?}",
                    req.method().unwrap_or("(empty)"),
                    api.method
                ),
            ));
        }
        if req.is_mutating() != api.change {
            return Err(pb::Error::new(
                Code::PermissionDenied,
                format!(
                    "{} {} the fleet: send it under {}",
                    api.method,
                    if req.is_mutating() {
                        "changes"
                    } else {
                        "does not change"
                    },
                    self.link.subjects.api_user(api.user, req.is_mutating())
                ),
            ));
        }
        if !req.user.is_empty() && req.user != api.user {
            tracing::warn!(claimed = %req.user, authenticated = %api.user, method = api.method,
                "API request claims another user; acting as the authenticated one");
        }
        Ok(api.user.to_string())
    }

    async fn spawn_event_loops(self: Arc<Self>) -> anyhow::Result<()> {
        let s = &self.link.subjects;
        let mut state = self
            .link
            .client
            .subscribe(s.events_filter(None, Some(EventKind::Heartbeat)))
            .await?;
        let mut inventory = self
            .link
            .client
            .subscribe(s.events_filter(None, Some(EventKind::Inventory)))
            .await?;
        let mut results = self
            .link
            .client
            .subscribe(s.events_filter(None, Some(EventKind::Result)))
            .await?;
        let mut progress = self
            .link
            .client
            .subscribe(s.events_filter(None, Some(EventKind::Progress)))
            .await?;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    Some(m) = state.next() => m,
                    Some(m) = inventory.next() => m,
                    else => break,
                };
                me.on_node_event(msg).await;
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    Some(m) = results.next() => m,
                    Some(m) = progress.next() => m,
                    else => break,
                };
                me.link.route_to_waiter(msg);
            }
        });
        Ok(())
    }

    /// Reports a malformed message on the coordinator's error subject.
    async fn report_malformed(&self, subject: &str, reason: String) {
        tracing::warn!(subject, %reason, "malformed event ignored");
        let body = Body::Error(pb::ErrorReport {
            subject: subject.to_string(),
            error: Some(pb::Error::new(pb::error::Code::Malformed, reason)),
        });
        let _ = bus::publish_event(
            &self.link.js,
            &self.link.subjects,
            COORDINATOR_NODE,
            "",
            body,
        )
        .await;
    }

    fn decode_event(&self, msg: &async_nats::Message) -> Result<(String, pb::Event), String> {
        let (node, _) = self
            .link
            .subjects
            .parse_event(&msg.subject)
            .ok_or_else(|| "not an event subject".to_string())?;
        nodemaint_proto::subjects::validate_token(&node).map_err(|e| e.to_string())?;
        let ev = nodemaint_proto::decode::<pb::Event>(&msg.payload).map_err(|e| e.to_string())?;
        if ev.node != node {
            return Err(format!(
                "event for node {:?} published on {node}'s subject",
                ev.node
            ));
        }
        Ok((node, ev))
    }

    async fn on_node_event(&self, msg: async_nats::Message) {
        let (node, ev) = match self.decode_event(&msg) {
            Ok(x) => x,
            Err(reason) => return self.report_malformed(&msg.subject, reason).await,
        };
        match ev.body {
            Some(Body::Heartbeat(hb)) => {
                let ts = nodemaint_proto::now_ms();
                self.registry.saw(&node, ts);
                let stored = self.registry.get(&node);
                let generation = stored.as_ref().map(|r| r.inventory_generation);
                if registry::heartbeat_needs_write(stored.as_ref(), &hb) {
                    let res = self
                        .registry
                        .update::<std::convert::Infallible>(&node, |r| {
                            Ok(registry::apply_heartbeat(r, &node, &hb, ts))
                        })
                        .await;
                    if let Err(e) = res {
                        tracing::warn!(%node, error = %e, "cannot record heartbeat");
                    }
                }
                // The agent's inventory moved on while we did not see it
                // (coordinator restart, lost core message): re-read it.
                if generation != Some(hb.inventory_generation) {
                    self.reload_inventory(&node).await
                }
            }
            Some(Body::Inventory(inv)) => self.apply_inventory(&node, &inv).await,
            _ => {}
        }
    }

    async fn apply_inventory(&self, node: &str, inv: &pb::Inventory) {
        let res = self
            .registry
            .update(node, |r| {
                registry::apply_inventory(r, node, inv)
                    .ok_or_else(|| "older than the stored inventory".to_string())
            })
            .await;
        match res {
            Ok(_) | Err(bus::CasError::Rejected(_)) => {}
            Err(e) => tracing::warn!(node, error = %e, "cannot record inventory"),
        }
    }

    async fn reload_inventory(&self, node: &str) {
        let subject = self.link.subjects.event(node, EventKind::Inventory);
        let Ok(stream) = self
            .link
            .js
            .get_stream(self.link.subjects.events_stream())
            .await
        else {
            return;
        };
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => match nodemaint_proto::decode::<pb::Event>(&m.payload) {
                Ok(pb::Event {
                    body: Some(Body::Inventory(inv)),
                    ..
                }) => self.apply_inventory(node, &inv).await,
                _ => {
                    self.report_malformed(&subject, "stored inventory unreadable".into())
                        .await
                }
            },
            Err(e) => tracing::debug!(node, error = %e, "no stored inventory yet"),
        }
    }
}
