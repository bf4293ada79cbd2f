//! Records the events stream with arrival times.

use crate::*;

#[derive(Clone)]
pub struct Seen {
    pub at: Instant,
    pub ev: pb::Event,
}

/// Records events (arrival instant + event) from core subscriptions.
#[derive(Clone, Default)]
pub struct Recorder {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub notify: Arc<tokio::sync::Notify>,
}

impl Recorder {
    pub async fn start(nats: &async_nats::Client, subjects: &[String]) -> Result<Recorder> {
        let r = Recorder::default();
        for s in subjects {
            let mut sub = nats.subscribe(s.clone()).await?;
            let r2 = r.clone();
            tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    let at = Instant::now();
                    // Agent commands (a core subscription sees what the
                    // coordinator publishes into the commands stream) are
                    // recorded as body-less events of node CMD_SEEN.
                    if m.subject.contains(".agent.") {
                        if let Ok(c) = nodemaint_proto::decode::<pb::AgentCommand>(&m.payload) {
                            let ev = pb::Event {
                                node: CMD_SEEN.into(),
                                ts_ms: nodemaint_proto::now_ms(),
                                op_id: c.op_id,
                                body: None,
                            };
                            r2.seen.lock().unwrap().push(Seen { at, ev });
                            r2.notify.notify_waiters();
                        }
                        continue;
                    }
                    if let Ok(ev) = nodemaint_proto::decode::<pb::Event>(&m.payload) {
                        r2.seen.lock().unwrap().push(Seen { at, ev });
                        r2.notify.notify_waiters();
                    }
                }
            });
        }
        nats.flush().await?;
        Ok(r)
    }

    pub fn find(&self, f: impl Fn(&pb::Event) -> bool) -> Option<Seen> {
        self.seen.lock().unwrap().iter().find(|s| f(&s.ev)).cloned()
    }

    pub fn all(&self, f: impl Fn(&pb::Event) -> bool) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| f(&s.ev))
            .cloned()
            .collect()
    }

    pub async fn wait(&self, f: impl Fn(&pb::Event) -> bool, timeout: Duration) -> Option<Seen> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.find(&f) {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            // The arrival instant is taken by the subscriber, so this wait's
            // granularity does not affect the measurement.
            let _ = tokio::time::timeout(Duration::from_millis(5), self.notify.notified()).await;
        }
    }
}

/// Node name of recorded agent commands (see [`Recorder::start`]).
pub const CMD_SEEN: &str = "<command>";

pub fn is_command(ev: &pb::Event, op: &str) -> bool {
    ev.op_id == op && ev.node == CMD_SEEN
}

pub fn is_result(ev: &pb::Event, op: &str) -> bool {
    ev.op_id == op && matches!(ev.body, Some(Body::Result(_)))
}

pub fn is_terminal_job(ev: &pb::Event, op: &str) -> bool {
    ev.op_id == op && matches!(&ev.body, Some(Body::Job(j)) if j.terminal)
}
