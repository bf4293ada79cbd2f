//! Live updates by Server-Sent Events, fed from NATS:
//!
//! - `/events/stacks[?node=N]`: a core subscription to every event
//!   (heartbeats, inventories, job transitions) triggers a re-render of the
//!   Stacks table (or of one Stack Details page) from the registry, at most
//!   every 250 ms; a 1 s tick catches what no event announces (a node
//!   turning unreachable). Only changes are sent.
//! - `/events/jobs`: the coordinator's job events re-render the Jobs table.
//! - `/events/jobs/{id}`: an ordered JetStream consumer replays the
//!   events stream from the job's start and follows it, keeping the job's
//!   progress (per-VM migration percent), results and journal; it ends with
//!   an `end` event after the job's terminal event.
//!
//! Every message is `event: fragments` with `{"fragments": {id: html}}`
//! (plus `key` for a Stack Details page); `portal.js` puts each fragment
//! into the element with that id. Fragments are `maud` markup rendered by
//! `pages.rs`, the same code that renders the pages.

use super::auth::Auth;
use super::pages::{self, LiveProgress};
use super::Portal;
use crate::server::Coordinator;
use async_nats::jetstream::consumer;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use nodemaint_proto::pb::{self, event::Body};
use nodemaint_proto::subjects::{EventKind, COORDINATOR_NODE};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Deserialize, Default)]
pub struct NodeQuery {
    #[serde(default)]
    node: Option<String>,
}

pub(super) fn sse(rx: mpsc::Receiver<Event>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn fragments_event(v: &serde_json::Value) -> Event {
    Event::default().event("fragments").data(v.to_string())
}

/// The stacks (or one node's) fragments; `None` when the node is unknown.
fn stacks_fragments(c: &Coordinator, node: Option<&str>) -> Option<serde_json::Value> {
    let now = nodemaint_proto::now_ms();
    match node {
        None => {
            let nodes = c.registry.all();
            Some(serde_json::json!({ "fragments": {
                "stacks-body": pages::stacks_rows(&nodes, now).into_string(),
                "stacks-count": pages::stacks_count(&nodes, now).into_string(),
            }}))
        }
        Some(name) => {
            let n = c.registry.get(name)?;
            Some(serde_json::json!({
                "key": pages::node_key(&n),
                "fragments": {
                    "node-badges": super::html::node_badges(&n, now).into_string(),
                    "node-facts": pages::node_facts(&n, now).into_string(),
                    "user-vms-body": pages::user_vm_rows(&n).into_string(),
                    "system-vms-body": pages::system_vm_rows(&n).into_string(),
                }
            }))
        }
    }
}

fn unknown_node(node: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("unknown node {node:?}")).into_response()
}

/// `/api/stacks[?node=]`: the nodes as JSON (what the pages show).
pub async fn stacks_json(
    State(st): State<Arc<Portal>>,
    _auth: Auth,
    Query(q): Query<NodeQuery>,
) -> Response {
    let now = nodemaint_proto::now_ms();
    let nodes: Vec<_> = match &q.node {
        Some(name) => match st.c.registry.get(name) {
            Some(n) => vec![n],
            None => return unknown_node(name),
        },
        None => st.c.registry.all(),
    };
    let out: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "name": n.name,
                "status": super::html::status_word(n.status),
                "reachable": n.reachable_at(now),
                "vms_running": n.vms_running(),
                "vms_total": n.domains.len(),
                "memory_used_mib": n.memory_used_mib(),
                "memory_mib": n.capacity.memory_mib,
                "boot_time_ms": n.boot_time_ms,
                "boot_time": crate::cli::output::fmt_ts(n.boot_time_ms),
                "current_job": n.current_job,
                "stopped_by": n.stopped_by,
                "domains": n.domains.iter().map(|d| pages::vm_json(n, d)).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(out).into_response()
}

/// `/api/jobs/{id}`: the job record (as `job show --output json`).
pub async fn job_json(
    State(st): State<Arc<Portal>>,
    _auth: Auth,
    Path(id): Path<String>,
) -> Response {
    match st.c.jobs.get(&id).await {
        Some(j) => Json(j).into_response(),
        None => (StatusCode::NOT_FOUND, format!("unknown job {id:?}")).into_response(),
    }
}

/// Next message of an optional subscription; pending forever without one.
pub(super) async fn next_msg(
    sub: &mut Option<async_nats::Subscriber>,
) -> Option<async_nats::Message> {
    match sub {
        Some(s) => match s.next().await {
            Some(m) => Some(m),
            None => {
                *sub = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}

pub async fn stacks_sse(
    State(st): State<Arc<Portal>>,
    _auth: Auth,
    Query(q): Query<NodeQuery>,
) -> Response {
    if let Some(n) = &q.node {
        if st.c.registry.get(n).is_none() {
            return unknown_node(n);
        }
    }
    let (tx, rx) = mpsc::channel(8);
    let c = st.c.clone();
    tokio::spawn(async move {
        let mut sub = c
            .link
            .client
            .subscribe(c.link.subjects.events_filter(None, None))
            .await
            .map_err(|e| tracing::warn!(error = %e, "portal: no event subscription; ticking only"))
            .ok();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last = String::new();
        let mut last_render = Instant::now() - Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = next_msg(&mut sub) => {
                    if last_render.elapsed() < Duration::from_millis(250) {
                        continue;
                    }
                }
                _ = tick.tick() => {}
                _ = tx.closed() => break,
            }
            last_render = Instant::now();
            let Some(v) = stacks_fragments(&c, q.node.as_deref()) else {
                let _ = tx.send(Event::default().event("gone").data("{}")).await;
                break;
            };
            let data = v.to_string();
            if data != last {
                if tx.send(fragments_event(&v)).await.is_err() {
                    break;
                }
                last = data;
            }
        }
    });
    sse(rx).into_response()
}

/// The coordinator's job events as they happen (live pages refresh on
/// them); `None` when the subscription fails: the page then ticks only.
pub(super) async fn job_event_subscription(c: &Coordinator) -> Option<async_nats::Subscriber> {
    c.link
        .client
        .subscribe(
            c.link
                .subjects
                .events_filter(Some(COORDINATOR_NODE), Some(EventKind::Job)),
        )
        .await
        .map_err(|e| tracing::warn!(error = %e, "portal: no job events; ticking only"))
        .ok()
}

pub async fn jobs_sse(State(st): State<Arc<Portal>>, _auth: Auth) -> Response {
    let (tx, rx) = mpsc::channel(8);
    let c = st.c.clone();
    tokio::spawn(async move {
        let mut sub = job_event_subscription(&c).await;
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut last = String::new();
        loop {
            tokio::select! {
                _ = next_msg(&mut sub) => {
                    // Let a burst of steps settle into one render.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                _ = tick.tick() => {}
                _ = tx.closed() => break,
            }
            let jobs = c.jobs.list(pages::PORTAL_JOBS).jobs;
            let v = serde_json::json!({ "fragments": { "jobs-body": pages::jobs_rows(&jobs).into_string() } });
            let data = v.to_string();
            if data != last {
                if tx.send(fragments_event(&v)).await.is_err() {
                    break;
                }
                last = data;
            }
        }
    });
    sse(rx).into_response()
}

/// The events of one job, replayed from its start, then followed.
async fn job_events(c: &Coordinator, created_ms: i64) -> anyhow::Result<consumer::pull::Ordered> {
    let s = &c.link.subjects;
    let stream = c.link.js.get_stream(s.events_stream()).await?;
    let start =
        time::OffsetDateTime::from_unix_timestamp_nanos((created_ms as i128 - 2_000) * 1_000_000)?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subjects: vec![
                s.events_filter(None, Some(EventKind::Progress)),
                s.events_filter(None, Some(EventKind::Result)),
                s.events_filter(Some(COORDINATOR_NODE), Some(EventKind::Job)),
            ],
            deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time: start },
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

pub async fn job_sse(
    State(st): State<Arc<Portal>>,
    _auth: Auth,
    Path(id): Path<String>,
) -> Response {
    let Some(mut job) = st.c.jobs.get(&id).await else {
        return (StatusCode::NOT_FOUND, format!("unknown job {id:?}")).into_response();
    };
    let (tx, rx) = mpsc::channel(16);
    let c = st.c.clone();
    tokio::spawn(async move {
        let mut live = LiveProgress::new();
        let send = |job: &crate::jobs::Job, live: &LiveProgress| {
            fragments_event(&serde_json::json!({
                "fragments": pages::job_fragments(job, live),
                "terminal": job.state.is_terminal(),
            }))
        };
        if tx.send(send(&job, &live)).await.is_err() {
            return;
        }
        let mut msgs = if job.state.is_terminal() {
            None
        } else {
            match job_events(&c, job.created_ms).await {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "portal: cannot follow job events; polling");
                    None
                }
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        let mut last_sent = Instant::now();
        let mut dirty = false;
        while !job.state.is_terminal() {
            let mut refresh = false;
            tokio::select! {
                m = async {
                    match &mut msgs {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match m {
                        Some(Ok(msg)) => {
                            let Ok(ev) = nodemaint_proto::decode::<pb::Event>(&msg.payload) else { continue };
                            if ev.op_id != id {
                                continue;
                            }
                            match ev.body {
                                Some(Body::Progress(p)) => {
                                    // An escalation keeps the bar and says what was done.
                                    let (percent, text) = if p.step == "escalating" {
                                        let percent = live.get(&p.vm).map_or(p.percent, |l| l.0);
                                        (percent, p.message.clone())
                                    } else {
                                        let note = crate::cli::output::migration_note(&p);
                                        (p.percent, format!("{} {note}", p.step).trim_end().to_string())
                                    };
                                    live.insert(p.vm.clone(), (percent, text));
                                    dirty = true;
                                }
                                Some(Body::Job(j)) => {
                                    if !j.vm.is_empty() && j.percent > 0.0 {
                                        live.insert(j.vm.clone(), (j.percent, String::new()));
                                    }
                                    refresh = true;
                                }
                                Some(Body::Result(_)) => refresh = true,
                                _ => {}
                            }
                        }
                        _ => msgs = None,
                    }
                }
                _ = tick.tick() => refresh = true,
                _ = tx.closed() => return,
            }
            if refresh {
                if let Some(j) = c.jobs.get(&id).await {
                    job = j;
                }
                dirty = true;
            }
            if dirty && (refresh || last_sent.elapsed() >= Duration::from_millis(200)) {
                if tx.send(send(&job, &live)).await.is_err() {
                    return;
                }
                last_sent = Instant::now();
                dirty = false;
            }
        }
        let _ = tx.send(send(&job, &live)).await;
        let _ = tx
            .send(Event::default().event("end").data(job.id.clone()))
            .await;
    });
    sse(rx).into_response()
}
