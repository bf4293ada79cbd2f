//! The agent runtime: connects to NATS, publishes inventory and heartbeats,
//! and executes commands from its durable consumer at most once per id.
//!
//! At-most-once works in two layers. JetStream de-duplicates a resent
//! command id (`Nats-Msg-Id`) within the stream's duplicate window. Beyond
//! that, and across agent restarts, the agent *claims* an id in the results
//! bucket with a put-if-absent (`create`) before executing it; a redelivered
//! or resent id finds the claim and is answered with the recorded result.

use crate::config::AgentConfig;
use crate::hypervisor::{Cancel, HvError, Hypervisor, MigrateTarget, StopOutcome};
use async_nats::jetstream::{self, consumer, kv};
use futures::StreamExt;
use nodemaint_proto::bus;
use nodemaint_proto::model::{Vm, VmState};
use nodemaint_proto::pb::{self, agent_command::Kind as Cmd, error::Code, event::Body};
use nodemaint_proto::subjects::Subjects;
use nodemaint_proto::Message as _;
use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Claim marker in the results bucket: executing, no result yet (followed
/// by the protobuf AgentCommand, so a restarted agent knows what it did).
const CLAIMED: &[u8] = b"S";
/// Prefix of a recorded result (followed by the protobuf CommandResult).
const RESULT: u8 = b'R';

/// Handles hooks in-process instead of `sh -c` (the simulated fleet's power
/// cycle), given the hook's name and configured command line; returns `None`
/// to fall back to the shell.
pub type HookHandler = Arc<dyn Fn(&str, &str) -> Option<pb::CommandResult> + Send + Sync>;

/// libvirt connections a node's probes may hold at once.
const PROBES_AT_ONCE: usize = 2;

pub struct Agent {
    cfg: AgentConfig,
    hooks: Option<HookHandler>,
    hv: Arc<dyn Hypervisor>,
    js: jetstream::Context,
    subjects: Subjects,
    results: kv::Store,
    inventory: tokio::sync::Mutex<InventoryState>,
    generation: std::sync::atomic::AtomicU64,
    in_flight: Mutex<HashSet<String>>,
    /// Cancellation handles of the migrations running now, by VM.
    migrations: Mutex<std::collections::HashMap<String, Cancel>>,
    slots: Arc<Semaphore>,
    /// Probes run outside the command slots (a pre-flight must not wait
    /// behind migrations), so they have their own bound: a probe's permit is
    /// held by its libvirt call until that call really ends, so connections
    /// that hang past the timeout cannot pile up.
    probe_slots: Arc<Semaphore>,
    capacity: nodemaint_proto::model::Capacity,
    boot_time_ms: i64,
    /// The highest leader epoch seen on a command (see [`admit_epoch`]);
    /// kept in `state_dir` when there is one, so a restart remembers it.
    epoch: std::sync::atomic::AtomicU64,
}

/// Fencing (pure): a command from a leader older than one already seen is
/// refused (`Err` with the highest epoch seen); otherwise the new highest.
pub fn admit_epoch(highest: u64, epoch: u64) -> Result<u64, u64> {
    if epoch < highest {
        Err(highest)
    } else {
        Ok(epoch)
    }
}

fn epoch_file(cfg: &AgentConfig) -> Option<std::path::PathBuf> {
    cfg.state_dir.as_ref().map(|d| d.join("leader-epoch"))
}

#[derive(Default)]
struct InventoryState {
    domains: Option<Vec<Vm>>,
    /// When the list was last published (for the periodic full resync).
    sent: Option<Instant>,
}

/// Runs the agent until `shutdown` completes.
pub async fn run(
    cfg: AgentConfig,
    hv: Arc<dyn Hypervisor>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with(cfg, hv, None, shutdown).await
}

/// `run` with an in-process hook handler.
pub async fn run_with(
    cfg: AgentConfig,
    hv: Arc<dyn Hypervisor>,
    hooks: Option<HookHandler>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    cfg.validate()?;
    crate::metrics::init_node(&cfg.node, &cfg.checks);
    if let Some(addr) = cfg.metrics_listen {
        crate::metrics::listen(addr).await?;
    }
    let security = cfg.nats_security();
    let who = format!("node-agent {}", cfg.node);
    let (client, server_errors) = bus::Retry::forever("NATS connection")
        .run(|| bus::connect_watching(&cfg.nats_url, &who, &security))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Whatever set-up step the server refuses (this node's credentials lack
    // a permission) ends the agent with the refusal, not a wait.
    let refusals = || server_errors.subscribe();
    let node = cfg.node.clone();
    let hint = |what: &str, e: bus::BoxError| {
        anyhow::anyhow!(
            "cannot {what}: {e} (check that this node's credentials are node {node:?}'s)"
        )
    };
    let js = jetstream::new(client.clone());
    let subjects = Subjects::new(&cfg.subject_prefix);
    // The coordinator creates the streams and buckets (agents may not, under
    // per-agent permissions); until it has, or until this agent's cluster
    // member has seen them, wait.
    for stream in [subjects.commands_stream(), subjects.events_stream()] {
        bus::existing_stream(
            &js,
            &stream,
            bus::Retry::forever(format!("stream {stream} (the coordinator creates it)"))
                .refusals(refusals()),
        )
        .await
        .map_err(|e| hint(&format!("open stream {stream}"), e))?;
    }
    let results_bucket = subjects.agent_results_bucket();
    let results = bus::existing_bucket(
        &js,
        &results_bucket,
        bus::Retry::forever(format!(
            "bucket {results_bucket} (the coordinator creates it)"
        ))
        .refusals(refusals()),
    )
    .await
    .map_err(|e| hint("open the results bucket", e))?;
    let hv2 = hv.clone();
    let capacity = tokio::task::spawn_blocking(move || hv2.host_capacity()).await??;
    let epoch = epoch_file(&cfg)
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let agent = Arc::new(Agent {
        hooks,
        slots: Arc::new(Semaphore::new(cfg.max_concurrent_commands)),
        probe_slots: Arc::new(Semaphore::new(PROBES_AT_ONCE)),
        cfg,
        hv,
        js,
        subjects,
        results,
        inventory: Default::default(),
        // Starting from the clock keeps generations increasing across restarts.
        generation: std::sync::atomic::AtomicU64::new(nodemaint_proto::now_ms() as u64),
        in_flight: Default::default(),
        migrations: Default::default(),
        epoch: std::sync::atomic::AtomicU64::new(epoch),
        capacity,
        boot_time_ms: boot_time_ms(),
    });
    // The first inventory must land (the coordinator plans from it); a
    // cluster member may still be catching up with the events stream.
    bus::Retry::forever("first inventory")
        .refusals(refusals())
        .run(|| agent.publish_inventory(true))
        .await
        .map_err(|e| hint("publish inventory", e))?;
    agent.heartbeat().await;
    tokio::spawn(agent.clone().report_interrupted());
    tracing::info!(node = %agent.cfg.node, uri = %agent.cfg.libvirt_uri, "agent started");

    let hb = tokio::spawn(agent.clone().heartbeat_loop());
    let inv = tokio::spawn(agent.clone().inventory_loop());
    let result = tokio::select! {
        r = agent.clone().command_loop() => r,
        _ = shutdown => Ok(()),
    };
    hb.abort();
    inv.abort();
    result
}

/// Whether the domain list is to be published (pure): forced, changed, never
/// sent, or last sent `resync` ago or more.
fn needs_publish(
    force: bool,
    sent_list: Option<&[Vm]>,
    now_list: &[Vm],
    since_sent: Option<Duration>,
    resync: Duration,
) -> bool {
    force || sent_list != Some(now_list) || since_sent.is_none_or(|d| d >= resync)
}

/// Short pull requests with a quick heartbeat: when the consumer's leader
/// moves (a cluster member died or came back), the pending pull is lost on
/// the server; async-nats' defaults (30 s expiry, 15 s heartbeat) left the
/// agent deaf for up to 30 s, long enough for the pre-flight's probe command
/// to time out. Now a lost pull is noticed within ~2 s and re-issued.
async fn pull(c: &consumer::PullConsumer) -> Result<consumer::pull::Stream, bus::BoxError> {
    Ok(c.stream()
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_secs(1))
        .messages()
        .await?)
}

fn boot_time_ms() -> i64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|s| s.trim().parse::<i64>().ok())
        .map(|s| s * 1000)
        .unwrap_or(0)
}

fn hv_error(node: &str, e: &HvError) -> pb::Error {
    let code = match e {
        HvError::NotFound(_) => Code::NotFound,
        HvError::WrongState(_) => Code::WrongState,
        HvError::Timeout { .. } | HvError::NoProgress { .. } => Code::Timeout,
        HvError::Cancelled { .. } => Code::Aborted,
        HvError::Connection { .. } => Code::Unavailable,
        HvError::Libvirt { .. } | HvError::Other(_) => Code::Hypervisor,
    };
    let message = match e {
        HvError::NotFound(vm) => format!("domain {vm} not found on node {node}"),
        other => format!("{other} (node {node})"),
    };
    pb::Error::new(code, message)
}

impl Agent {
    fn node(&self) -> &str {
        &self.cfg.node
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Hypervisor) -> Result<T, HvError> + Send + 'static,
    ) -> Result<T, HvError> {
        let hv = self.hv.clone();
        tokio::task::spawn_blocking(move || f(hv.as_ref()))
            .await
            .unwrap_or_else(|e| Err(HvError::Other(format!("hypervisor call panicked: {e}"))))
    }

    async fn publish(&self, op_id: &str, body: Body) {
        if let Err(e) = bus::publish_event(&self.js, &self.subjects, self.node(), op_id, body).await
        {
            tracing::warn!(error = %e, "cannot publish event");
        }
    }

    fn boot_id(&self) -> String {
        std::fs::read_to_string(&self.cfg.boot_id_file)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    async fn heartbeat(&self) {
        let hb = pb::Heartbeat {
            boot_id: self.boot_id(),
            agent_version: VERSION.into(),
            capacity: Some(pb::HostCapacity {
                vcpus: self.capacity.vcpus,
                memory_mib: self.capacity.memory_mib,
            }),
            address: self.cfg.address.clone().unwrap_or_default(),
            libvirt_uri: self.cfg.migration_uri(),
            inventory_generation: self.generation.load(std::sync::atomic::Ordering::SeqCst),
            boot_time_ms: self.boot_time_ms as u64,
            interval_ms: self.cfg.heartbeat_interval_ms as u32,
            protocol_version: nodemaint_proto::PROTOCOL_VERSION,
        };
        self.publish("", Body::Heartbeat(hb)).await;
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.heartbeat_interval_ms));
        loop {
            tick.tick().await;
            self.heartbeat().await;
        }
    }

    async fn inventory_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.inventory_poll_ms));
        loop {
            tick.tick().await;
            if let Err(e) = self.publish_inventory(false).await {
                tracing::warn!(error = %e, "inventory refresh failed");
            }
        }
    }

    /// Lists domains and publishes them when they changed, when forced, or
    /// when the last publication is older than `inventory_resync_ms`.
    pub async fn publish_inventory(&self, force: bool) -> anyhow::Result<()> {
        self.publish_inventory_then(force, None).await
    }

    /// [`Self::publish_inventory`], then the event `then` (a command's
    /// result) sent right behind it before either ack is awaited: the
    /// coordinator reads the new inventory before the result (one
    /// connection, one stream: sent order is stream order), for one round
    /// trip instead of two. `then` goes out whatever became of the inventory.
    async fn publish_inventory_then(
        &self,
        force: bool,
        then: Option<(&str, Body)>,
    ) -> anyhow::Result<()> {
        let mut state = self.inventory.lock().await;
        let mut failure = None;
        let mut sent = None;
        let resync = Duration::from_millis(self.cfg.inventory_resync_ms);
        let since_sent = state.sent.map(|t| t.elapsed());
        match self.blocking(|hv| hv.list()).await {
            Ok(domains)
                if needs_publish(
                    force,
                    state.domains.as_deref(),
                    &domains,
                    since_sent,
                    resync,
                ) =>
            {
                let generation = self
                    .generation
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    + 1;
                let inv = pb::Inventory {
                    generation,
                    domains: domains.iter().map(pb::Domain::from).collect(),
                };
                match bus::send_event(
                    &self.js,
                    &self.subjects,
                    self.node(),
                    "",
                    Body::Inventory(inv),
                )
                .await
                {
                    Ok(ack) => sent = Some((ack, domains)),
                    Err(e) => failure = Some(anyhow::anyhow!("cannot publish inventory: {e}")),
                }
            }
            Ok(_) => {}
            Err(e) => failure = Some(e.into()),
        }
        let then_ack = match then {
            Some((op_id, body)) => {
                match bus::send_event(&self.js, &self.subjects, self.node(), op_id, body).await {
                    Ok(ack) => ack,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot publish event");
                        None
                    }
                }
            }
            None => None,
        };
        if let Some((ack, domains)) = sent {
            let acked = match ack {
                Some(a) => a.await.map(|_| ()),
                None => Ok(()),
            };
            match acked {
                Ok(()) => {
                    state.domains = Some(domains);
                    state.sent = Some(Instant::now());
                }
                Err(e) => failure = Some(anyhow::anyhow!("cannot publish inventory: {e}")),
            }
        }
        drop(state);
        if let Some(a) = then_ack {
            if let Err(e) = a.await {
                tracing::warn!(error = %e, "cannot publish event");
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Pulls commands forever: when the consumer goes away (a server
    /// restart, a stream leader change), it is opened again.
    async fn command_loop(self: Arc<Self>) -> anyhow::Result<()> {
        let mut backoff = bus::Backoff::default();
        let mut consumer: Option<consumer::PullConsumer> = None;
        loop {
            let handle = match &consumer {
                Some(c) => c.clone(),
                None => {
                    let c = bus::Retry::forever("command consumer")
                        .run(|| self.open_commands())
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot open the command consumer: {e}"))?;
                    consumer = Some(c.clone());
                    c
                }
            };
            let mut messages = match pull(&handle).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot pull commands; opening the consumer again");
                    consumer = None;
                    backoff.wait().await;
                    continue;
                }
            };
            while let Some(msg) = messages.next().await {
                match msg {
                    Ok(msg) => {
                        backoff = bus::Backoff::default();
                        self.clone().dispatch(msg).await
                    }
                    // The pull reached no consumer leader (a consumer just
                    // created on a forming cluster, a leader election): no
                    // command would come until it expired. Pull again on the
                    // same handle (no JetStream API call, which would time
                    // out while there is no leader).
                    Err(e) if e.kind() == consumer::pull::MessagesErrorKind::NoResponders => {
                        tracing::warn!(error = %e, "command consumer has no leader yet; pulling again");
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "command consumer error"),
                }
            }
            backoff.wait().await;
        }
    }

    async fn open_commands(&self) -> Result<consumer::PullConsumer, bus::BoxError> {
        let stream = self.js.get_stream(self.subjects.commands_stream()).await?;
        let durable = self.subjects.agent_consumer(self.node());
        Ok(stream
            .get_or_create_consumer(
                &durable,
                consumer::pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: self.subjects.agent_cmd(self.node()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    // Bounded: a command that cannot even be claimed (KV down
                    // for a minute, nak'ed with a 2 s delay) is dropped after
                    // this many tries, not retried forever.
                    max_deliver: 30,
                    ..Default::default()
                },
            )
            .await?)
    }

    async fn dispatch(self: Arc<Self>, msg: jetstream::Message) {
        let cmd = match nodemaint_proto::decode::<pb::AgentCommand>(&msg.payload) {
            Ok(cmd) if cmd.id.is_empty() || cmd.kind.is_none() => {
                Err("command without id or kind".to_string())
            }
            Ok(cmd) if nodemaint_proto::subjects::validate_token(&cmd.id).is_err() => {
                Err(format!("command id {:?} is not a valid token", cmd.id))
            }
            Ok(cmd) => Ok(cmd),
            Err(e) => Err(e.to_string()),
        };
        let cmd = match cmd {
            Ok(cmd) => cmd,
            Err(reason) => {
                tracing::warn!(subject = %msg.subject, %reason, "malformed command dropped");
                self.publish(
                    "",
                    Body::Error(pb::ErrorReport {
                        subject: msg.subject.to_string(),
                        error: Some(pb::Error::new(Code::Malformed, reason)),
                    }),
                )
                .await;
                // Terminate: redelivering garbage would never help.
                let _ = msg.ack_with(jetstream::AckKind::Term).await;
                return;
            }
        };
        if let Err(seen) = self.fence(cmd.epoch) {
            let why = format!(
                "command {} comes from a deposed leader (epoch {} < {seen}): not executed",
                cmd.id, cmd.epoch
            );
            tracing::warn!(id = %cmd.id, "{why}");
            let result = pb::CommandResult {
                command_id: cmd.id.clone(),
                ..err_result(Code::StaleLeader, why)
            };
            self.publish(&cmd.op_id, Body::Result(result)).await;
            // Not claimed: the current leader may resend the same id.
            let _ = msg.ack_with(jetstream::AckKind::Term).await;
            return;
        }
        let key = format!("{}.{}", self.node(), cmd.id);
        // The claim carries the command, so that after a crash the agent
        // knows what it was doing (see `recover`).
        let mut claim = CLAIMED.to_vec();
        claim.extend(cmd.encode_to_vec());
        match self.results.create(&key, claim.into()).await {
            Ok(_) => {
                self.in_flight.lock().unwrap().insert(cmd.id.clone());
                let _ = msg.ack().await;
                // Quick commands that must not queue behind the migrations
                // they act on run at once, outside the command slots.
                let span = command_span(self.node(), &cmd);
                if matches!(
                    cmd.kind,
                    Some(Cmd::CancelMigration(_) | Cmd::ProbeLibvirt(_))
                ) {
                    let run = async move { self.execute(cmd, &key).await };
                    tokio::spawn(tracing::Instrument::instrument(run, span));
                    return;
                }
                let permit = self.slots.clone().acquire_owned().await.expect("semaphore");
                tokio::spawn(tracing::Instrument::instrument(
                    async move {
                        self.execute(cmd, &key).await;
                        drop(permit);
                    },
                    span,
                ));
            }
            Err(e) if bus::create_conflict(&e) => {
                let _ = msg.ack().await;
                let span = command_span(self.node(), &cmd);
                tracing::Instrument::instrument(self.answer_repeat(cmd, &key), span).await;
            }
            Err(e) => {
                // NATS is unavailable (a server restarting, a cluster
                // electing): redelivered soon (bounded by max_deliver).
                tracing::warn!(error = %e, id = %cmd.id, "cannot claim command; will be redelivered");
                let _ = msg
                    .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(2))))
                    .await;
            }
        }
    }

    /// Admits a command's leader epoch, remembering a new highest one.
    fn fence(&self, epoch: u64) -> Result<(), u64> {
        use std::sync::atomic::Ordering;
        let before = self.epoch.fetch_max(epoch, Ordering::SeqCst);
        admit_epoch(before, epoch)?;
        if epoch > before {
            if let Some(f) = epoch_file(&self.cfg) {
                if let Err(e) = std::fs::write(&f, epoch.to_string()) {
                    tracing::warn!(file = %f.display(), error = %e, "cannot keep the leader epoch");
                }
            }
            tracing::info!(epoch, "commands now come from a new leader");
        }
        Ok(())
    }

    /// A command id seen before: answer with what happened the first time.
    async fn answer_repeat(&self, cmd: pb::AgentCommand, key: &str) {
        // The failed create proves the key exists, but a direct get may be
        // answered by a replica that has not seen it yet (agents may not
        // read through the stream leader): ask again until one has.
        let mut recorded = None;
        for _ in 0..50 {
            recorded = self.results.get(key).await.ok().flatten();
            if recorded.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut result = match recorded.as_deref() {
            Some([RESULT, rest @ ..]) => match pb::CommandResult::decode(rest) {
                Ok(r) => r,
                Err(_) => interrupted(&cmd.id, "recorded result is unreadable"),
            },
            _ if self.in_flight.lock().unwrap().contains(&cmd.id) => {
                tracing::info!(id = %cmd.id, "repeat of a command still executing; ignored");
                return;
            }
            _ => {
                // Claimed by an earlier run of this agent that died: find
                // out what it did (reported there, so nothing more here).
                self.recover_claim(key, cmd).await;
                return;
            }
        };
        tracing::info!(id = %cmd.id, "repeated command answered with the recorded result");
        result.duplicate = true;
        self.publish(&cmd.op_id, Body::Result(result)).await;
    }

    /// After a restart: claims left without a result were cut off mid-way.
    /// Each is settled from what the hypervisors show now (`recover_claim`),
    /// so nobody waits forever and nothing is re-run blindly.
    async fn report_interrupted(self: Arc<Self>) {
        let prefix = format!("{}.", self.node());
        let mine = match self.my_result_keys().await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list this node's recorded commands");
                return;
            }
        };
        for key in mine {
            let Ok(Some(v)) = self.results.get(&key).await else {
                continue;
            };
            if v.first() != Some(&CLAIMED[0]) {
                continue;
            }
            let id = key[prefix.len()..].to_string();
            match pb::AgentCommand::decode(&v[1..]) {
                Ok(cmd) if cmd.kind.is_some() && cmd.id == id => {
                    let me = self.clone();
                    tokio::spawn(async move { me.recover_claim(&key, cmd).await });
                }
                // A bare claim (older agents): the outcome is unknown.
                _ => {
                    let r = interrupted(&id, "the agent stopped while executing it");
                    self.record(&key, &r).await;
                    self.publish("", Body::Result(r)).await;
                }
            }
        }
    }

    /// Keys of this node's records in the results bucket, read through a
    /// consumer named for the node and filtered to its keys: both are part
    /// of the consumer-create API subject, so the server's permissions can
    /// limit an agent to its own records (`kv.keys()` would need access to
    /// every node's).
    async fn my_result_keys(&self) -> Result<Vec<String>, bus::BoxError> {
        let bucket = self.subjects.agent_results_bucket();
        let stream = self.js.get_stream(format!("KV_{bucket}")).await?;
        let name = self.subjects.agent_results_consumer(self.node());
        let prefix = format!("$KV.{bucket}.");
        // A leftover consumer of an earlier run has delivered already.
        let _ = stream.delete_consumer(&name).await;
        let mut consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                name: Some(name.clone()),
                filter_subject: format!("{prefix}{}.>", self.node()),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ack_policy: consumer::AckPolicy::None,
                headers_only: true,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await?;
        let pending = consumer.info().await?.num_pending as usize;
        let mut keys = Vec::with_capacity(pending);
        if pending > 0 {
            let mut msgs = consumer
                .fetch()
                .max_messages(pending)
                .expires(Duration::from_secs(5))
                .messages()
                .await?;
            while let Some(m) = msgs.next().await {
                let m = m?;
                let deleted = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_some();
                if let (false, Some(k)) = (deleted, m.subject.strip_prefix(prefix.as_str())) {
                    keys.push(k.to_string());
                }
            }
        }
        let _ = stream.delete_consumer(&name).await;
        Ok(keys)
    }

    /// Settles a command this agent claimed before it crashed: the result
    /// says where the VM is now (a migration is waited for while libvirtd
    /// still runs it, and the destination is asked); recorded and published
    /// like any result. A repeat arriving meanwhile is ignored (in flight).
    async fn recover_claim(&self, key: &str, cmd: pb::AgentCommand) {
        if !self.in_flight.lock().unwrap().insert(cmd.id.clone()) {
            return;
        }
        let mut r = match cmd.kind.clone() {
            Some(Cmd::Migrate(m)) => self.recover_migration(&m).await,
            Some(Cmd::Start(s)) => self.recover_power(&s.vm, true).await,
            Some(Cmd::Stop(s)) => self.recover_power(&s.vm, false).await,
            _ => interrupted(&cmd.id, "the agent stopped while executing it"),
        };
        r.command_id = cmd.id.clone();
        tracing::info!(id = %cmd.id, ok = r.ok, message = %r.message, "command cut off by an agent restart settled");
        self.record(key, &r).await;
        self.in_flight.lock().unwrap().remove(&cmd.id);
        let _ = self.publish_inventory(true).await;
        self.publish(&cmd.op_id, Body::Result(r)).await;
    }

    /// A successful result: `vm` is on this node in `state`.
    fn vm_here(&self, vm: &str, state: pb::VmState, message: String) -> pb::CommandResult {
        pb::CommandResult {
            vm: vm.into(),
            vm_node: self.node().into(),
            vm_state: state as i32,
            ..ok_result(&message)
        }
    }

    async fn local_state(&self, vm: &str) -> Result<Option<VmState>, HvError> {
        let name = vm.to_string();
        let list = self.blocking(|hv| hv.list()).await?;
        Ok(list.into_iter().find(|d| d.name == name).map(|d| d.state))
    }

    async fn recover_power(&self, vm: &str, start: bool) -> pb::CommandResult {
        let what = if start { "start" } else { "stop" };
        match self.local_state(vm).await {
            Ok(state) => match crate::recovery::reached(start, state) {
                Some(true) => self.vm_here(
                    vm,
                    if start {
                        pb::VmState::Running
                    } else {
                        pb::VmState::Shutoff
                    },
                    format!(
                        "{vm} is {} on {} (the {what} was cut off by an agent restart, but took effect)",
                        if start { "running" } else { "shut off" },
                        self.node()
                    ),
                ),
                Some(false) => with_vm(
                    vm,
                    err_result(
                        Code::Aborted,
                        format!(
                            "the {what} of {vm} was cut off by an agent restart and did not take effect; {vm} is {} on {}",
                            if start { "shut off" } else { "running" },
                            self.node()
                        ),
                    ),
                ),
                None => with_vm(vm, failed(hv_error(self.node(), &HvError::NotFound(vm.into())))),
            },
            Err(e) => with_vm(vm, failed(hv_error(self.node(), &e))),
        }
    }

    /// Where a migration cut off by a crash ended: libvirtd carries a
    /// peer-to-peer migration on without the agent, so wait while its job
    /// runs, then see which node holds the VM (never both, never neither,
    /// or the result says so).
    async fn recover_migration(&self, m: &pb::MigrateVm) -> pb::CommandResult {
        use crate::recovery::{migration, Local, Migration};
        let limit = or_default(m.timeout_s, self.cfg.migration_timeout_s);
        let deadline = Instant::now() + Duration::from_secs(u64::from(limit) + 30);
        // Doubtful answers (destination unreachable, both or neither) get
        // a short grace before they are reported.
        let mut doubt_since: Option<Instant> = None;
        let mut last_verdict = None;
        loop {
            let name = m.vm.clone();
            let local = self
                .blocking(move |hv| {
                    let state = hv
                        .list()?
                        .into_iter()
                        .find(|d| d.name == name)
                        .map(|d| d.state);
                    let job_running = hv.job_running(&name)?;
                    Ok(state.map(|state| Local { state, job_running }))
                })
                .await;
            let local = match local {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(vm = %m.vm, error = %e, "cannot read the local hypervisor; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if Instant::now() > deadline {
                        return with_vm(&m.vm, failed(hv_error(self.node(), &e)));
                    }
                    continue;
                }
            };
            let (uri, name) = (m.dest_libvirt_uri.clone(), m.vm.clone());
            let remote = match self.check_destination(m) {
                Ok(()) => self
                    .blocking(move |hv| hv.remote_state(&uri, &name))
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            let verdict = migration(local, remote);
            let seen = format!("{local:?} {verdict:?}");
            if last_verdict.as_ref() != Some(&seen) {
                tracing::info!(vm = %m.vm, ?local, ?verdict, "settling a migration cut off by an agent restart");
                last_verdict = Some(seen);
            }
            match verdict {
                Migration::OnDestination => {
                    return pb::CommandResult {
                        vm: m.vm.clone(),
                        vm_node: m.dest_node.clone(),
                        vm_state: pb::VmState::Running as i32,
                        ..ok_result(&format!(
                            "{} migrated from {} to {} (completed while the agent restarted)",
                            m.vm,
                            self.node(),
                            m.dest_node
                        ))
                    };
                }
                Migration::OnSource => {
                    return pb::CommandResult {
                        vm: m.vm.clone(),
                        vm_node: self.node().into(),
                        ..err_result(
                            Code::Aborted,
                            format!(
                                "the migration of {} to {} was cut off by an agent restart; {} still runs on the source {}",
                                m.vm,
                                m.dest_node,
                                m.vm,
                                self.node()
                            ),
                        )
                    };
                }
                Migration::Wait => doubt_since = None,
                Migration::Unknown(why) => {
                    let since = *doubt_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(15) || Instant::now() > deadline {
                        return with_vm(
                            &m.vm,
                            err_result(
                                Code::Aborted,
                                format!(
                                    "the migration of {} to {} was cut off by an agent restart and its outcome is unclear: {why}",
                                    m.vm, m.dest_node
                                ),
                            ),
                        );
                    }
                }
            }
            if Instant::now() > deadline {
                return with_vm(
                    &m.vm,
                    err_result(
                        Code::Timeout,
                        format!(
                            "the migration of {} cut off by an agent restart did not settle within {} s",
                            m.vm,
                            limit + 30
                        ),
                    ),
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Records a result, retrying for up to 10 minutes while NATS is
    /// unavailable: the record is what a coordinator that missed the result
    /// event reads, so it must not be dropped on a blip.
    async fn record(&self, key: &str, result: &pb::CommandResult) {
        let mut value = vec![RESULT];
        value.extend(result.encode_to_vec());
        let value: bytes::Bytes = value.into();
        let put = bus::Retry::within(format!("record result {key}"), Duration::from_secs(600))
            .run(|| self.results.put(key, value.clone()))
            .await;
        if let Err(e) = put {
            tracing::error!(error = %e, key, "cannot record command result; giving up");
        }
    }

    async fn execute(&self, cmd: pb::AgentCommand, key: &str) {
        let started = Instant::now();
        let id = cmd.id.clone();
        tracing::info!(id = %id, op = %cmd.op_id, by = %cmd.requested_by, kind = ?cmd.kind, "executing command");
        let mut result = match cmd.kind.clone().expect("checked in dispatch") {
            Cmd::Start(s) => self.start(&s.vm).await,
            Cmd::Stop(s) => self.stop(&s).await,
            Cmd::RefreshInventory(_) => match self.publish_inventory(true).await {
                Ok(()) => ok_result("inventory republished"),
                Err(e) => err_result(Code::Hypervisor, e.to_string()),
            },
            Cmd::Migrate(m) => self.migrate(&cmd, &m).await,
            Cmd::Define(d) => self.define(&d).await,
            Cmd::RunHook(h) => match crate::hook::resolve(&self.cfg.hooks, self.node(), &h) {
                Err(refused) => refused,
                Ok(command) => {
                    // In-process hooks may block (a simulated reboot sleeps).
                    let handled = match self.hooks.clone() {
                        Some(f) => {
                            let (name, line) = (h.name.clone(), command.to_string());
                            tokio::task::spawn_blocking(move || f(&name, &line))
                                .await
                                .ok()
                                .flatten()
                        }
                        None => None,
                    };
                    match handled {
                        Some(r) => r,
                        None => crate::hook::run(&h.name, command, h.timeout_s).await,
                    }
                }
            },
            Cmd::RunChecks(rc) => self.checks(&cmd.op_id, rc.start_failed).await,
            Cmd::CancelMigration(c) => {
                let handle = self.migrations.lock().unwrap().get(&c.vm).cloned();
                match handle {
                    Some(h) => {
                        h.request(&c.reason);
                        ok_result(&format!("cancel of the migration of {} requested", c.vm))
                    }
                    None => with_vm(
                        &c.vm,
                        err_result(
                            Code::NotFound,
                            format!("no migration of {} is running on {}", c.vm, self.node()),
                        ),
                    ),
                }
            }
            Cmd::ProbeLibvirt(p) => self.probe(&p.uris).await,
        };
        result.command_id = id.clone();
        result.duration_ms = started.elapsed().as_millis() as u64;
        let action = crate::metrics::action(cmd.kind.as_ref());
        crate::metrics::command_done(self.node(), action, result.ok, started.elapsed());
        tracing::info!(id = %id, ok = result.ok, detail = %result.message, error = ?result.error, "command done");
        // The record, the inventory and the result go out together and
        // their acks are awaited together: one round trip, not three. The
        // record is what a coordinator that misses the result event reads
        // (it waits while the id is only claimed), so the result need not
        // wait for it; `in_flight` is left only once the record landed, so a
        // repeat meanwhile is still known to be executing.
        let record = self.record(key, &result);
        let published =
            self.publish_inventory_then(false, Some((&cmd.op_id, Body::Result(result.clone()))));
        let ((), inventory) = tokio::join!(record, published);
        self.in_flight.lock().unwrap().remove(&id);
        if let Err(e) = inventory {
            tracing::warn!(error = %e, "inventory refresh after command failed");
        }
    }

    /// Runs the configured service checks; the report also goes out as a
    /// `checks` event for dashboards. Ok only when every service is ok.
    async fn checks(&self, op_id: &str, start_failed: bool) -> pb::CommandResult {
        let report = crate::checks::run_checks(&self.cfg.checks, start_failed).await;
        crate::metrics::checks_done(self.node(), &report);
        self.publish(op_id, Body::Checks(report.clone())).await;
        let failed: Vec<String> = report
            .services
            .iter()
            .filter(|s| !s.ok)
            .map(|s| format!("{} ({})", s.service, s.state))
            .collect();
        let mut r = if failed.is_empty() {
            ok_result(&format!(
                "{} services ok on {}",
                report.services.len(),
                self.node()
            ))
        } else {
            err_result(
                Code::WrongState,
                format!("failed on {}: {}", self.node(), failed.join(", ")),
            )
        };
        r.checks = Some(report);
        r
    }

    /// Whether this node's libvirt reaches each URI (pre-flight of a drain);
    /// one service line per URI in the result's check report.
    /// A URI that is not an allowed transport to a plain address is not
    /// opened (see [`Agent::check_destination`]).
    async fn probe(&self, uris: &[String]) -> pb::CommandResult {
        let mut services = Vec::new();
        for uri in uris {
            let u = uri.clone();
            let slots = self.probe_slots.clone();
            let res = match nodemaint_proto::guard::check_libvirt_uri(uri, self.cfg.test_drivers) {
                Err(e) => {
                    tracing::warn!(error = %e, "probe refused");
                    Err(HvError::Other(format!("{e}; not opened")))
                }
                Ok(()) => tokio::time::timeout(Duration::from_secs(8), async move {
                    let permit = slots.acquire_owned().await.expect("semaphore");
                    self.blocking(move |hv| {
                        let _held = permit;
                        hv.probe(&u)
                    })
                    .await
                })
                .await
                .unwrap_or_else(|_| {
                    Err(HvError::Other(format!(
                        "no answer within 8 s (at most {PROBES_AT_ONCE} probes run at once)"
                    )))
                }),
            };
            services.push(pb::ServiceStatus {
                check: "libvirt".into(),
                service: uri.clone(),
                ok: res.is_ok(),
                state: if res.is_ok() {
                    "reachable"
                } else {
                    "unreachable"
                }
                .into(),
                detail: res.err().map(|e| e.to_string()).unwrap_or_default(),
                start_attempted: false,
            });
        }
        let all_ok = services.iter().all(|s| s.ok);
        let mut r = if all_ok {
            ok_result(&format!(
                "{} reaches {} libvirt URIs",
                self.node(),
                uris.len()
            ))
        } else {
            err_result(
                Code::Unavailable,
                format!("{} cannot reach every destination's libvirt", self.node()),
            )
        };
        r.checks = Some(pb::CheckReport { services, all_ok });
        r
    }

    async fn start(&self, vm: &str) -> pb::CommandResult {
        let name = vm.to_string();
        match self.blocking(move |hv| hv.start(&name)).await {
            Ok(()) => self.vm_here(
                vm,
                pb::VmState::Running,
                format!("{vm} started on {}", self.node()),
            ),
            Err(e) => with_vm(vm, failed(hv_error(self.node(), &e))),
        }
    }

    async fn stop(&self, s: &pb::StopVm) -> pb::CommandResult {
        let secs = or_default(s.graceful_timeout_s, self.cfg.stop_graceful_timeout_s);
        let name = s.vm.clone();
        match self
            .blocking(move |hv| hv.stop(&name, Duration::from_secs(secs as u64)))
            .await
        {
            Ok(outcome) => {
                let how = match outcome {
                    StopOutcome::AlreadyOff => "was already shut off".to_string(),
                    StopOutcome::Graceful => "shut down gracefully".to_string(),
                    StopOutcome::Destroyed => {
                        format!("did not shut down within {secs} s and was destroyed")
                    }
                };
                pb::CommandResult {
                    vm: s.vm.clone(),
                    vm_node: self.node().into(),
                    vm_state: pb::VmState::Shutoff as i32,
                    ..ok_result(&format!("{} {how}", s.vm))
                }
            }
            Err(e) => with_vm(&s.vm, failed(hv_error(self.node(), &e))),
        }
    }

    async fn define(&self, d: &pb::DefineVm) -> pb::CommandResult {
        let xml = if d.xml.is_empty() {
            if d.name.is_empty() || d.memory_mib == 0 {
                return err_result(
                    Code::InvalidArgument,
                    "define needs domain XML or a name and memory",
                );
            }
            let template = match &self.cfg.guest_template {
                Some(path) => match std::fs::read_to_string(path) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        return err_result(
                            Code::Internal,
                            format!("cannot read guest template {}: {e}", path.display()),
                        )
                    }
                },
                None => None,
            };
            let spec = crate::hypervisor::template::Spec {
                name: d.name.clone(),
                memory_mib: d.memory_mib,
                vcpus: d.vcpus.max(1),
                meta: crate::hypervisor::metadata::VmMetadata {
                    kind: d.kind().into(),
                    cloudspace: (!d.cloudspace.is_empty()).then(|| d.cloudspace.clone()),
                    anti_affinity: None,
                    no_live_migration: false,
                },
            };
            let ty = crate::hypervisor::template::domain_type(&self.cfg.libvirt_uri);
            crate::hypervisor::template::render(&spec, ty, template.as_deref())
        } else {
            d.xml.clone()
        };
        let start = d.start;
        let res = self
            .blocking(move |hv| {
                let name = hv.define(&xml)?;
                if start {
                    hv.start(&name)?;
                }
                Ok(name)
            })
            .await;
        match res {
            Ok(name) => pb::CommandResult {
                vm: name.clone(),
                vm_node: self.node().into(),
                vm_state: if start {
                    VmState::Running
                } else {
                    VmState::Shutoff
                } as i32,
                ..ok_result(&format!("{name} defined on {}", self.node()))
            },
            Err(e) => failed(hv_error(self.node(), &e)),
        }
    }

    /// The URIs of a migration are ones this agent may open: an allowed
    /// transport to a plain address, no query (libvirt would run or read
    /// what a `qemu+ext`/`?command=` URI says). Checked here again because
    /// whoever can publish commands must not get a shell from a URI.
    fn check_destination(&self, m: &pb::MigrateVm) -> Result<(), String> {
        use nodemaint_proto::guard;
        guard::check_libvirt_uri(&m.dest_libvirt_uri, self.cfg.test_drivers)?;
        guard::check_migrate_uri(&m.dest_migrate_uri)
    }

    async fn migrate(&self, cmd: &pb::AgentCommand, m: &pb::MigrateVm) -> pb::CommandResult {
        if m.dest_libvirt_uri.is_empty() || m.dest_node.is_empty() {
            return with_vm(
                &m.vm,
                err_result(
                    Code::InvalidArgument,
                    "migrate needs dest_node and dest_libvirt_uri",
                ),
            );
        }
        if m.dest_node == self.node() {
            return with_vm(
                &m.vm,
                err_result(
                    Code::InvalidArgument,
                    format!("{} already runs on {}", m.vm, m.dest_node),
                ),
            );
        }
        if let Err(e) = self.check_destination(m) {
            tracing::warn!(vm = %m.vm, error = %e, "migration refused");
            return with_vm(
                &m.vm,
                err_result(Code::PermissionDenied, format!("{e}; nothing was opened")),
            );
        }
        tracing::info!(vm = %m.vm, to = %m.dest_node, libvirt = %m.dest_libvirt_uri,
            stream = %m.dest_migrate_uri, "migrating");
        let target = MigrateTarget {
            libvirt_uri: m.dest_libvirt_uri.clone(),
            migrate_uri: m.dest_migrate_uri.clone(),
            timeout: Duration::from_secs(u64::from(or_default(
                m.timeout_s,
                self.cfg.migration_timeout_s,
            ))),
            max_speed_mibs: m.max_speed_mibs,
            progress_timeout: Duration::from_secs(if m.progress_timeout_s > 0 {
                m.progress_timeout_s
            } else {
                self.cfg.migration_progress_timeout_s
            } as u64),
            cancel: Cancel::default(),
            policy: m.converge.as_ref().map(policy_of).unwrap_or_default(),
        };
        self.migrations
            .lock()
            .unwrap()
            .insert(m.vm.clone(), target.cancel.clone());
        // Progress samples come from a blocking thread; a channel keeps their
        // order while a task publishes them.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let timer = crate::metrics::MigrationTimer::start(self.node());
        let forward = {
            let js = self.js.clone();
            let s = self.subjects.clone();
            let node = self.node().to_string();
            let op = cmd.op_id.clone();
            let id = cmd.id.clone();
            let vm = m.vm.clone();
            tokio::spawn(async move {
                let (mut bytes, mut downtime_ms) = (0, None);
                while let Some(p) = rx.recv().await {
                    let p: crate::hypervisor::MigrateProgress = p;
                    bytes = p.bytes_processed;
                    downtime_ms = downtime_ms.or(p.downtime_ms);
                    let (step, message) = match p.escalation {
                        Some(e) => {
                            timer.escalated(e.step);
                            ("escalating", e.reason)
                        }
                        None => ("migrating", String::new()),
                    };
                    let body = Body::Progress(pb::Progress {
                        command_id: id.clone(),
                        vm: vm.clone(),
                        step: step.into(),
                        percent: p.percent,
                        bytes_processed: p.bytes_processed,
                        bytes_remaining: p.bytes_remaining,
                        message,
                        pass: p.pass,
                        dirty_rate_bps: p.dirty_rate,
                        bandwidth_bps: p.bandwidth,
                        eta_s: p.eta_s,
                        downtime_ms: p.downtime_ms,
                    });
                    let _ = bus::publish_event(&js, &s, &node, &op, body).await;
                }
                (timer, bytes, downtime_ms)
            })
        };
        let name = m.vm.clone();
        let res = self
            .blocking(move |hv| {
                hv.migrate(&name, &target, &mut |p| {
                    let _ = tx.send(p);
                })
            })
            .await;
        let (bytes, downtime_ms) = match forward.await {
            Ok((timer, bytes, downtime_ms)) => {
                timer.finish(res.is_ok(), bytes, downtime_ms);
                (bytes, downtime_ms)
            }
            Err(_) => (0, None),
        };
        self.migrations.lock().unwrap().remove(&m.vm);
        match res {
            Ok(()) => pb::CommandResult {
                vm: m.vm.clone(),
                vm_node: m.dest_node.clone(),
                vm_state: pb::VmState::Running as i32,
                migrated_bytes: bytes,
                downtime_ms,
                ..ok_result(&format!(
                    "{} migrated from {} to {}{}",
                    m.vm,
                    self.node(),
                    m.dest_node,
                    downtime_ms
                        .map(|ms| format!(" (downtime {ms} ms)"))
                        .unwrap_or_default()
                ))
            },
            Err(e) => pb::CommandResult {
                vm: m.vm.clone(),
                // On failure or abort the VM stays where it was.
                vm_node: self.node().into(),
                ..failed(hv_error(self.node(), &e))
            },
        }
    }
}

/// The convergence policy a migrate command carries.
fn policy_of(c: &pb::ConvergePolicy) -> crate::converge::Policy {
    (&nodemaint_proto::model::ConvergePolicy::from_pb(c)).into()
}

/// A command's own value, or the agent's default when it gives none (0).
fn or_default(given: u32, default: u32) -> u32 {
    if given > 0 {
        given
    } else {
        default
    }
}

fn ok_result(message: &str) -> pb::CommandResult {
    pb::CommandResult {
        ok: true,
        message: message.to_string(),
        ..Default::default()
    }
}

fn failed(error: pb::Error) -> pb::CommandResult {
    pb::CommandResult {
        ok: false,
        message: error.message.clone(),
        error: Some(error),
        ..Default::default()
    }
}

fn err_result(code: Code, message: impl Into<String>) -> pb::CommandResult {
    failed(pb::Error::new(code, message))
}

fn with_vm(vm: &str, mut r: pb::CommandResult) -> pb::CommandResult {
    r.vm = vm.to_string();
    r
}

fn interrupted(id: &str, why: &str) -> pb::CommandResult {
    pb::CommandResult {
        command_id: id.to_string(),
        ..err_result(
            Code::Aborted,
            format!(
                "command {id} was interrupted: {why}; its outcome is unknown, check the inventory"
            ),
        )
    }
}

/// The span of one command's handling: `command{job_id, node, cmd_id,
/// action}`, so every line logged while executing it names the job (the
/// command's `op_id`) and the node.
fn command_span(node: &str, cmd: &pb::AgentCommand) -> tracing::Span {
    tracing::info_span!(
        "command",
        job_id = %cmd.op_id,
        node = %node,
        cmd_id = %cmd.id,
        action = crate::metrics::action(cmd.kind.as_ref()),
    )
}

#[cfg(test)]
mod tests {
    use super::{admit_epoch, needs_publish};
    use nodemaint_proto::model::Vm;
    use std::time::Duration;

    #[test]
    fn inventory_goes_out_when_changed_forced_or_due_for_resync() {
        let hour = Duration::from_secs(3600);
        let a = vec![Vm {
            name: "a".into(),
            ..Default::default()
        }];
        let b: Vec<Vm> = Vec::new();
        let sec = Some(Duration::from_secs(1));
        assert!(needs_publish(false, None, &a, None, hour), "never sent");
        assert!(!needs_publish(false, Some(&a), &a, sec, hour), "unchanged");
        assert!(needs_publish(false, Some(&a), &b, sec, hour), "changed");
        assert!(needs_publish(true, Some(&a), &a, sec, hour), "forced");
        assert!(
            needs_publish(false, Some(&a), &a, Some(hour), hour),
            "resync due"
        );
    }

    #[test]
    fn commands_of_a_deposed_leader_are_refused() {
        assert_eq!(admit_epoch(0, 0), Ok(0), "no leader seen yet");
        assert_eq!(admit_epoch(5, 9), Ok(9), "a new leader");
        assert_eq!(admit_epoch(9, 9), Ok(9), "the same leader");
        assert_eq!(admit_epoch(9, 5), Err(9), "a deposed leader");
        assert_eq!(admit_epoch(9, 0), Err(9), "a sender without an epoch");
    }
}
