//! The agent link: commands to node agents over their durable subjects,
//! and the routing of their progress and results back to whoever waits.
//! It knows nothing of jobs or the registry; drivers stand on it.

use async_nats::jetstream::{self, kv};
use nodemaint_proto::bus;
use nodemaint_proto::pb::{self, event::Body};
use nodemaint_proto::subjects::Subjects;
use nodemaint_proto::Message as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

pub struct AgentLink {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    /// Agents' record of executed command ids: the truth about a command
    /// whose result a restarted coordinator did not see.
    pub results: kv::Store,
    /// This leadership's fencing token ([`crate::lease::Elector::epoch`]),
    /// stamped on every agent command: agents refuse a deposed leader's.
    pub epoch: AtomicU64,
    /// Command id → channel of that command's progress and result events.
    waiters: Mutex<HashMap<String, mpsc::UnboundedSender<pb::Event>>>,
}

impl AgentLink {
    pub fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        subjects: Subjects,
        results: kv::Store,
    ) -> Self {
        AgentLink {
            client,
            js,
            subjects,
            results,
            epoch: AtomicU64::new(0),
            waiters: Default::default(),
        }
    }

    pub fn route_to_waiter(&self, msg: async_nats::Message) {
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
            epoch: self.epoch.load(Ordering::SeqCst),
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
        match bus::leader_value(&self.results, &key).await? {
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
        // Looking the stream up returns its info: one request, not two.
        match self.js.get_stream(self.subjects.events_stream()).await {
            Ok(s) => s.cached_info().state.last_sequence,
            Err(_) => 0,
        }
    }
}
