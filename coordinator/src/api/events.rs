//! `event.read`: pages of the events stream for operators (`events`,
//! `job watch`). The coordinator reads the stream with a short-lived pull
//! consumer of its own and answers into the caller's inbox, so operators
//! need no JetStream permissions: with any, they could name the subject the
//! server delivers to (a push consumer's deliver subject, a pull's reply
//! subject), and the server would publish events on agents' command
//! subjects or other principals' inboxes.

use super::{internal, refuse, Result};
use crate::server::Coordinator;
use async_nats::jetstream::consumer::{self, DeliverPolicy};
use futures::StreamExt;
use nodemaint_proto::pb::{self, api_reply::Kind as Reply, error::Code};
use nodemaint_proto::subjects::{validate_token, EventKind, Subjects};
use std::time::Duration;

/// Most events in one page, and the most bytes (under NATS' 1 MiB payload).
pub const MAX_EVENTS: u32 = 200;
const MAX_BYTES: usize = 512 * 1024;
/// Longest wait for a first event.
pub const MAX_WAIT_MS: u32 = 5_000;

/// A validated request: subject filters, where to start, how many, how long.
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub filters: Vec<String>,
    pub start: Start,
    pub max: usize,
    pub wait: Duration,
}

#[derive(Debug, PartialEq, Clone, Copy)]
pub enum Start {
    Seq(u64),
    TimeMs(i64),
    Beginning,
}

/// Checks a request and clamps its sizes (pure).
pub fn plan(s: &Subjects, r: &pb::ReadEvents) -> Result<Plan> {
    let mut filters = Vec::new();
    for f in &r.filters {
        let node = (!f.node.is_empty()).then_some(f.node.as_str());
        if let Some(n) = node {
            if validate_token(n).is_err() {
                return refuse(
                    Code::InvalidArgument,
                    format!("filter node {n:?}: not a node name"),
                );
            }
        }
        let kind = match f.kind.as_str() {
            "" => None,
            k => Some(EventKind::parse(k).ok_or_else(|| {
                super::Refusal(
                    Code::InvalidArgument,
                    format!(
                        "unknown event kind {k:?}; kinds: {}",
                        EventKind::ALL.map(|k| k.as_str()).join(", ")
                    ),
                )
            })?),
        };
        if let Some(k) = kind.filter(|k| !k.is_stored()) {
            return refuse(
                Code::InvalidArgument,
                format!(
                    "{} events are not stored (live only): subscribe to {} on NATS",
                    k.as_str(),
                    s.events_filter(node, Some(k))
                ),
            );
        }
        filters.push(s.events_filter(node, kind));
    }
    if filters.len() > 16 {
        return refuse(Code::InvalidArgument, "at most 16 filters");
    }
    let start = match (r.start_seq, r.since_ms) {
        (0, 0) => Start::Beginning,
        (0, t) => Start::TimeMs(t),
        (seq, _) => Start::Seq(seq),
    };
    let max = match r.max {
        0 => MAX_EVENTS,
        m => m.min(MAX_EVENTS),
    } as usize;
    Ok(Plan {
        filters,
        start,
        max,
        wait: Duration::from_millis(r.wait_ms.min(MAX_WAIT_MS) as u64),
    })
}

pub async fn read_events(c: &Coordinator, r: &pb::ReadEvents) -> Result<Reply> {
    let p = plan(&c.link.subjects, r)?;
    let mut stream = c
        .link
        .js
        .get_stream(c.link.subjects.events_stream())
        .await
        .map_err(internal)?;
    // Where a reader continues when nothing matches yet: after everything
    // stored before the consumer exists (so nothing is skipped).
    let last = stream.info().await.map_err(internal)?.state.last_sequence;
    let deliver_policy = match p.start {
        Start::Beginning => DeliverPolicy::All,
        Start::Seq(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: seq,
        },
        Start::TimeMs(ms) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
                .map_err(|e| super::Refusal(Code::InvalidArgument, format!("since_ms: {e}")))?,
        },
    };
    let mut cons = stream
        .create_consumer(consumer::pull::Config {
            filter_subjects: p.filters.clone(),
            deliver_policy,
            ack_policy: consumer::AckPolicy::None,
            // Removed by the server if this reader goes away before deleting it.
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(internal)?;
    let name = cons.cached_info().name.clone();
    let page = read_page(&mut cons, &p, last, r).await;
    if let Err(e) = stream.delete_consumer(&name).await {
        tracing::debug!(consumer = %name, error = %e, "event reader not deleted (expires by itself)");
    }
    page.map(Reply::Events)
}

async fn read_page(
    cons: &mut consumer::PullConsumer,
    p: &Plan,
    last: u64,
    r: &pb::ReadEvents,
) -> Result<pb::EventPage> {
    let start_after = match p.start {
        Start::Seq(seq) => seq.max(last + 1),
        _ => last + 1,
    };
    let mut page = pb::EventPage {
        next_seq: start_after,
        ..Default::default()
    };
    let pending = cons.info().await.map_err(internal)?.num_pending;
    if pending == 0 && p.wait.is_zero() {
        return Ok(page);
    }
    // Stored events arrive at once; only an empty reader waits out `wait`.
    let expires = if pending > 0 {
        Duration::from_secs(2)
    } else {
        p.wait
    }
    .max(Duration::from_millis(100));
    let mut msgs = cons
        .batch()
        .max_messages(p.max)
        .expires(expires)
        .messages()
        .await
        .map_err(internal)?;
    let mut bytes = 0;
    while let Some(m) = msgs.next().await {
        let m = m.map_err(internal)?;
        let info = m.info().map_err(internal)?;
        let (seq, left) = (info.stream_sequence, info.pending);
        page.next_seq = seq + 1;
        page.pending = left;
        let wanted = r.op_id.is_empty()
            || nodemaint_proto::decode::<pb::Event>(&m.payload)
                .map(|e| e.op_id == r.op_id)
                // Undecodable: the reader reports it by its sequence.
                .unwrap_or(true);
        if wanted {
            bytes += m.payload.len();
            page.events.push(pb::StoredEvent {
                seq,
                event: m.payload.to_vec(),
                subject: m.subject.to_string(),
            });
        }
        if left == 0 || page.events.len() >= p.max || bytes >= MAX_BYTES {
            break;
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_and_clamped() {
        let s = Subjects::default();
        let f = |node: &str, kind: &str| pb::EventFilter {
            node: node.into(),
            kind: kind.into(),
        };
        let p = plan(
            &s,
            &pb::ReadEvents {
                filters: vec![f("", "job"), f("node1", "")],
                since_ms: 5,
                max: 10_000,
                wait_ms: 60_000,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            p.filters,
            vec!["nodemaint.v1.events.*.job", "nodemaint.v1.events.node1.*"]
        );
        assert_eq!(p.start, Start::TimeMs(5));
        assert_eq!(p.max, MAX_EVENTS as usize);
        assert_eq!(p.wait, Duration::from_millis(MAX_WAIT_MS as u64));
        let seq = pb::ReadEvents {
            start_seq: 7,
            since_ms: 5,
            ..Default::default()
        };
        assert_eq!(plan(&s, &seq).unwrap().start, Start::Seq(7));
        for bad in [f("a.b", ""), f(">", ""), f("", "nope")] {
            let r = pb::ReadEvents {
                filters: vec![bad.clone()],
                ..Default::default()
            };
            assert!(plan(&s, &r).is_err(), "{bad:?}");
        }
        // Heartbeats are never stored: asking for them names where they are.
        let hb = pb::ReadEvents {
            filters: vec![f("node1", "heartbeat")],
            ..Default::default()
        };
        let Err(super::super::Refusal(code, why)) = plan(&s, &hb) else {
            panic!("heartbeats read from the stream")
        };
        assert_eq!(code, Code::InvalidArgument);
        assert!(
            why.contains("not stored") && why.contains("nodemaint.v1.events.node1.heartbeat"),
            "{why}"
        );
    }
}
