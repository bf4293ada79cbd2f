//! `coordinator serve`: keeps the node registry from agents' events and
//! answers the API. The pieces:
//!
//! - an event loop applying heartbeats and inventories to the registry;
//! - a result router handing agents' progress and results to whoever sent
//!   the command (jobs wait on them);
//! - the API responder (`<prefix>.v1.api.>`, queue group, so replicas share load).

use crate::config::CoordinatorConfig;
use crate::registry::{self, Registry};
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use nodemaint_proto::bus;
use nodemaint_proto::pb::{self, event::Body};
use nodemaint_proto::subjects::{EventKind, Subjects, COORDINATOR_NODE};
use nodemaint_proto::Message as _;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub struct Coordinator {
    pub cfg: CoordinatorConfig,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub registry: Registry,
    pub jobs: kv::Store,
    /// Agents' record of executed command ids: the truth about a command
    /// whose result a restarted coordinator did not see.
    pub agent_results: kv::Store,
    /// True while this coordinator holds the leader lease: only the leader
    /// changes the fleet (the portal checks it too).
    pub leader: std::sync::atomic::AtomicBool,
    /// This leadership's fencing token ([`crate::lease::Elector::epoch`]),
    /// stamped on every agent command: agents refuse a deposed leader's.
    pub epoch: std::sync::atomic::AtomicU64,
    /// API request ids (idempotency) → job ids.
    pub requests: kv::Store,
    /// The leader lease's bucket.
    leader_store: kv::Store,
    /// Migration concurrency shared by all jobs.
    pub slots: crate::driver::slots::MigrationSlots,
    /// Abort and deadline requests of running jobs.
    pub stops: crate::driver::executor::Stops,
    /// Command id → channel of that command's progress and result events.
    waiters: Mutex<HashMap<String, mpsc::UnboundedSender<pb::Event>>>,
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
        let coord = Arc::new(Coordinator {
            cfg,
            client,
            js,
            subjects,
            registry,
            jobs,
            agent_results,
            requests,
            leader_store: leader,
            slots: crate::driver::slots::MigrationSlots::new(cfg_limits),
            stops: Default::default(),
            leader: Default::default(),
            epoch: Default::default(),
            waiters: Default::default(),
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
        let held_until = tokio::select! {
            until = elector.acquire() => until,
            _ = &mut shutdown => return Ok(()),
        };
        self.epoch
            .store(elector.epoch(), std::sync::atomic::Ordering::SeqCst);
        self.leader.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(crate::driver::executor::resume_jobs(self.clone()));
        let mut api = self
            .client
            .queue_subscribe(self.subjects.api_all(), "nodemaint-coordinator".into())
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

    async fn answer(self: Arc<Self>, msg: async_nats::Message) {
        let Some(reply_to) = msg.reply.clone() else {
            tracing::warn!(subject = %msg.subject, "API request without reply subject ignored");
            return;
        };
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
        let Some(api) = self.subjects.parse_api(subject) else {
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
                    self.subjects.api_user(api.user, req.is_mutating())
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
        let s = &self.subjects;
        let mut state = self
            .client
            .subscribe(s.events_filter(None, Some(EventKind::Heartbeat)))
            .await?;
        let mut inventory = self
            .client
            .subscribe(s.events_filter(None, Some(EventKind::Inventory)))
            .await?;
        let mut results = self
            .client
            .subscribe(s.events_filter(None, Some(EventKind::Result)))
            .await?;
        let mut progress = self
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
                me.route_to_waiter(msg);
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
        let _ = bus::publish_event(&self.js, &self.subjects, COORDINATOR_NODE, "", body).await;
    }

    fn decode_event(&self, msg: &async_nats::Message) -> Result<(String, pb::Event), String> {
        let (node, _) = self
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
                if registry::heartbeat_needs_write(stored.as_ref(), &hb, ts) {
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
        let subject = self.subjects.event(node, EventKind::Inventory);
        let Ok(stream) = self.js.get_stream(self.subjects.events_stream()).await else {
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

    fn route_to_waiter(&self, msg: async_nats::Message) {
        let Ok(ev) = nodemaint_proto::decode::<pb::Event>(&msg.payload) else {
            return;
        };
        let id = match &ev.body {
            Some(Body::Result(r)) => r.command_id.clone(),
            Some(Body::Progress(p)) => p.command_id.clone(),
            _ => return,
        };
        let mut waiters = self.waiters.lock().unwrap();
        let is_result = matches!(ev.body, Some(Body::Result(_)));
        if let Some(tx) = waiters.get(&id) {
            let _ = tx.send(ev);
            if is_result {
                waiters.remove(&id);
            }
        }
    }

    /// Sends a command to a node's agent through its durable stream, with
    /// the command id as `Nats-Msg-Id`. The returned channel yields the
    /// command's progress events and, last, its result.
    pub async fn send_command(
        &self,
        node: &str,
        cmd: &pb::AgentCommand,
    ) -> anyhow::Result<mpsc::UnboundedReceiver<pb::Event>> {
        let (tx, rx) = mpsc::unbounded_channel();
        // Registered before publishing, so even an instant result is caught.
        self.waiters.lock().unwrap().insert(cmd.id.clone(), tx);
        let sent = self
            .publish_command(node, cmd, &cmd.id, Duration::from_secs(30))
            .await;
        if let Err(e) = sent {
            self.waiters.lock().unwrap().remove(&cmd.id);
            return Err(e.context(format!("cannot send command to node {node}")));
        }
        Ok(rx)
    }

    /// Publishes a command on the node's durable subject with `msg_id` as
    /// `Nats-Msg-Id`, retrying for up to `patience` while NATS does not
    /// acknowledge it (a server restarting, a cluster electing a stream
    /// leader): the same message id makes a retry of a publish that did
    /// land a no-op, so nothing runs twice and nothing is dropped.
    pub async fn publish_command(
        &self,
        node: &str,
        cmd: &pb::AgentCommand,
        msg_id: &str,
        patience: Duration,
    ) -> anyhow::Result<()> {
        // Stamped at each send: a command resent by a later leader (after a
        // takeover) carries that leader's epoch.
        let cmd = pb::AgentCommand {
            epoch: self.epoch.load(std::sync::atomic::Ordering::SeqCst),
            ..cmd.clone()
        };
        let payload: bytes::Bytes = cmd.encode_to_vec().into();
        bus::Retry::within(format!("command {} to {node}", cmd.id), patience)
            .run(|| async {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", msg_id);
                self.js
                    .publish_with_headers(self.subjects.agent_cmd(node), headers, payload.clone())
                    .await?
                    .await?;
                Ok::<_, bus::BoxError>(())
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The result an agent recorded for a command in its results bucket,
    /// `None` while it is not recorded (not claimed, or still executing).
    /// The bucket is the truth when a result event was missed (published
    /// while this coordinator was reconnecting, or before it restarted).
    pub async fn recorded_result(
        &self,
        node: &str,
        id: &str,
    ) -> Result<Option<pb::CommandResult>, bus::BoxError> {
        let key = format!("{node}.{id}");
        match self.agent_results.get(&key).await? {
            Some(v) if v.first() == Some(&b'R') => {
                Ok(Some(pb::CommandResult::decode(&v[1..]).map_err(|e| {
                    format!("unreadable recorded result of {key}: {e}")
                })?))
            }
            _ => Ok(None),
        }
    }

    /// Last sequence of the events stream: a watcher that replays from the
    /// next one misses nothing of an operation accepted now.
    pub async fn events_seq(&self) -> u64 {
        match self.js.get_stream(self.subjects.events_stream()).await {
            Ok(mut s) => s.info().await.map(|i| i.state.last_sequence).unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Publishes a job event (on the coordinator's subject).
    pub async fn job_event(&self, job: pb::JobEvent) {
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
