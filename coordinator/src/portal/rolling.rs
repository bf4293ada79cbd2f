//! Rolling maintenance in the portal: the list of rolling runs with the
//! start form, one run's live per-node phase view, and pause, resume,
//! abort and continue-a-node. Every action is the API request the CLI's
//! `rolling start|pause|resume|abort|continue` makes, as the logged-in user.
//!
//! The phase view follows the run by Server-Sent Events
//! (`/events/rolling/{id}`): the coordinator's job events (one per phase
//! change) and a 1 s tick re-render it from the job record; `portal.js`
//! swaps the fragments in.

use super::auth::Auth;
use super::html::{self, respond, Nav, NEEDS_OPERATOR};
use super::Portal;
use crate::cli::output::{fmt_ts, short};
use crate::engine::rolling as machine;
use crate::jobs::{Job, JobSpec, JobState, Phase};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use nodemaint_proto::pb::{self, api_request::Kind as Req};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

fn rolling_url(id: &str) -> String {
    format!("/rolling/{}", html::url(id))
}

fn state_word(s: JobState) -> String {
    format!("{s:?}").to_uppercase()
}

fn state_badge(s: JobState) -> Markup {
    let w = state_word(s);
    html! { span class=(format!("badge job-{}", w.to_lowercase())) { (w) } }
}

fn csrf(auth: &Auth) -> Markup {
    html! { input type="hidden" name="csrf" value=(auth.csrf); }
}

// ------------------------------------------------------------- the list

/// The rolling runs among the newest jobs, newest first.
fn rolling_jobs(st: &Portal) -> Vec<Job> {
    st.c.jobs
        .list(super::pages::PORTAL_JOBS)
        .jobs
        .into_iter()
        .filter(|j| matches!(j.spec, JobSpec::Rolling(_)))
        .collect()
}

fn start_form(st: &Portal, auth: &Auth, running: Option<&Job>) -> Markup {
    let why = if !auth.can_act() {
        Some(NEEDS_OPERATOR.to_string())
    } else {
        running.map(|j| format!("rolling maintenance {} is in progress", short(&j.id)))
    };
    let nodes = st.c.registry.all();
    html! {
        form method="post" action="/rolling/start" id="rolling-start-form" class="stacked" {
            (csrf(auth))
            fieldset disabled[why.is_some()] {
                legend { "Start a rolling maintenance" }
                p class="muted" {
                    "Group by group (at most " em { "max unavailable" } " nodes out at once), each node is "
                    "drained, rebooted (by its agent's hook, or by you and then " em { "Continue" } "), "
                    "checked, enabled and verified before the next group starts."
                }
                div class="field" id="rolling-nodes" {
                    span class="label" { "Nodes" }
                    @for n in &nodes {
                        label class="check" {
                            input type="checkbox" name="node" value=(n.name);
                            " " (n.name) " "
                            small class="muted" { (html::status_word(n.status)) }
                        }
                    }
                }
                label class="field" {
                    span class="label" { "Max unavailable" }
                    input type="number" name="max_unavailable" id="max-unavailable" value="1" min="1";
                }
                div class="field" {
                    span class="label" { "Reboot" }
                    label class="check" {
                        input type="radio" name="reboot" value="hook" id="reboot-hook" checked;
                        " by the agents' hook named "
                        input type="text" name="hook" id="hook" value="reboot" size="12";
                    }
                    label class="check" {
                        input type="radio" name="reboot" value="continue" id="reboot-continue";
                        " by me: wait for my " em { "Continue" } " on each node"
                    }
                }
                label class="check field" {
                    input type="checkbox" name="checks_must_pass" value="yes" id="checks-must-pass";
                    " Checks must pass (stop the rolling if a node's post-reboot checks fail)"
                }
                label class="field" {
                    span class="label" { "Reboot timeout" }
                    input type="text" name="reboot_timeout" id="reboot-timeout" value="15m" size="8";
                }
                label class="field" {
                    span class="label" { "Deadline (optional)" }
                    input type="text" name="deadline" id="deadline" placeholder="e.g. 4h" size="8";
                }
                div class="buttons" {
                    button type="submit" class="primary" id="rolling-start-submit" { "Start rolling maintenance" }
                }
            }
            @if let Some(w) = &why {
                small class="why" id="rolling-start-why" { (w) }
            }
        }
    }
}

pub async fn list(State(st): State<Arc<Portal>>, auth: Auth) -> Response {
    let jobs = rolling_jobs(&st);
    let running = jobs.iter().find(|j| !j.state.is_terminal());
    let body = html! {
        div class="titlebar" { h1 { "Rolling maintenance" } }
        (start_form(&st, &auth, running))
        h2 { "Rolling runs" }
        table class="grid" id="rolling-runs" {
            thead { tr { th { "Run" } th { "State" } th { "Nodes" } th { "Started by" } th { "Started" } th { "Outcome" } } }
            tbody {
                @if jobs.is_empty() {
                    tr { td colspan="6" class="muted" { "No rolling maintenance yet." } }
                }
                @for j in &jobs {
                    tr data-job=(j.id) {
                        td { a href=(rolling_url(&j.id)) title=(j.id) { code { (short(&j.id)) } } }
                        td { (state_badge(j.state)) }
                        td { (spec(j).map(|r| r.nodes.join(", ")).unwrap_or_default()) }
                        td { (j.user) }
                        td { (fmt_ts(j.created_ms)) }
                        td { (j.outcome.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    };
    respond(
        StatusCode::OK,
        html::page(Some(&auth), Nav::Rolling, "Rolling maintenance", body),
    )
}

// ------------------------------------------------------------ the start

/// The start form as sent by the browser: repeated `node` fields, so read
/// as pairs.
type Fields = Vec<(String, String)>;

fn field<'a>(f: &'a Fields, name: &str) -> Option<&'a str> {
    f.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The API request of a start form, or what is wrong with it (pure).
pub fn start_request(f: &Fields) -> Result<pb::StartRolling, String> {
    let nodes: Vec<String> = f
        .iter()
        .filter(|(k, v)| k == "node" && !v.trim().is_empty())
        .map(|(_, v)| v.trim().to_string())
        .collect();
    if nodes.is_empty() {
        return Err("choose at least one node to roll".into());
    }
    let max_unavailable = match field(f, "max_unavailable") {
        None => 1,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(format!(
                    "max unavailable {s:?}: give a whole number of nodes, at least 1"
                ))
            }
        },
    };
    let (hook, wait_for_continue) = match field(f, "reboot") {
        Some("hook") | None => match field(f, "hook") {
            Some(h) => (h.to_string(), false),
            None => return Err("give the name of the reboot hook (e.g. reboot), or choose to continue each node yourself".into()),
        },
        Some("continue") => (String::new(), true),
        Some(other) => return Err(format!("reboot {other:?}: choose hook or continue")),
    };
    let secs = |name: &str, what: &str| -> Result<u32, String> {
        match field(f, name) {
            None => Ok(0),
            Some(s) => crate::cli::args::parse_secs(s).map_err(|e| format!("{what} {s:?}: {e}")),
        }
    };
    let checks_must_pass = match field(f, "checks_must_pass") {
        None => false,
        Some("yes" | "on") => true,
        Some(other) => {
            return Err(format!(
                "checks must pass {other:?}: tick the box or leave it"
            ))
        }
    };
    Ok(pb::StartRolling {
        nodes,
        max_unavailable,
        wait_for_continue,
        checks_must_pass,
        reboot_timeout_s: secs("reboot_timeout", "reboot timeout")?,
        deadline_s: secs("deadline", "deadline")?,
        hook,
    })
}

pub async fn start(State(st): State<Arc<Portal>>, auth: Auth, Form(f): Form<Fields>) -> Response {
    if let Err(r) = auth.check_csrf(field(&f, "csrf").unwrap_or("")) {
        return r;
    }
    let req = match start_request(&f) {
        Ok(r) => r,
        Err(why) => {
            return html::error_page(
                Some(&auth),
                StatusCode::BAD_REQUEST,
                "Rolling maintenance refused",
                &format!("{why}: nothing was started"),
            )
        }
    };
    super::actions::submit_to(
        &st,
        &auth,
        Req::StartRolling(req),
        "Rolling maintenance refused",
        rolling_url,
    )
    .await
}

// ------------------------------------------------------------- controls

#[derive(serde::Deserialize, Default)]
pub struct ControlForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    node: String,
}

pub async fn control(
    State(st): State<Arc<Portal>>,
    auth: Auth,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<ControlForm>,
) -> Response {
    use pb::control_rolling::Action;
    if let Err(r) = auth.check_csrf(&f.csrf) {
        return r;
    }
    let (action, title) = match action.as_str() {
        "pause" => (Action::Pause, "Pause refused"),
        "resume" => (Action::Resume, "Resume refused"),
        "abort" => (Action::Abort, "Abort refused"),
        "continue" => (Action::Continue, "Continue refused"),
        _ => return super::pages::not_found().await,
    };
    if action == Action::Continue && f.node.trim().is_empty() {
        return html::error_page(
            Some(&auth),
            StatusCode::BAD_REQUEST,
            title,
            "name the node whose reboot you finished: nothing was sent",
        );
    }
    let req = Req::ControlRolling(pb::ControlRolling {
        job_id: id,
        action: action as i32,
        node: f.node.trim().to_string(),
    });
    super::actions::submit_to(&st, &auth, req, title, rolling_url).await
}

// ------------------------------------------------------ the phase view

fn spec(j: &Job) -> Option<&crate::jobs::Rolling> {
    match &j.spec {
        JobSpec::Rolling(r) => Some(r),
        _ => None,
    }
}

/// One node's row: its coarse phase (the job's), and the machine's finer
/// state when journaled (awaiting a continue, failed and why).
struct NodeRow {
    group: usize,
    node: String,
    phase: Phase,
    detail: Option<machine::Phase>,
}

fn node_rows(j: &Job) -> Vec<NodeRow> {
    let Some(r) = spec(j) else { return Vec::new() };
    let progress = j.rolling.clone().unwrap_or_default();
    let fine: BTreeMap<String, machine::Phase> = j
        .engine
        .clone()
        .and_then(|v| serde_json::from_value::<machine::Rolling>(v).ok())
        .map(|m| m.nodes.into_iter().map(|t| (t.node, t.phase)).collect())
        .unwrap_or_default();
    let mut rows = Vec::new();
    for (i, g) in r.groups.iter().enumerate() {
        for n in g {
            rows.push(NodeRow {
                group: i + 1,
                node: n.clone(),
                phase: progress.phase(n),
                detail: fine.get(n).cloned(),
            });
        }
    }
    rows
}

/// What the node is doing, in words.
fn detail_words(row: &NodeRow) -> String {
    use machine::Phase as M;
    match &row.detail {
        None => row.phase.as_str().to_string(),
        Some(p) => match p {
            M::Waiting => "waiting for its group".into(),
            M::Draining => "draining (moving its VMs away)".into(),
            M::Drained => "drained".into(),
            M::Inspecting => "checking that it is empty".into(),
            M::Hook => "reboot hook running".into(),
            M::AwaitingContinue => "waiting for your Continue: reboot it, then continue".into(),
            M::WaitingBack => "waiting for a new boot id".into(),
            M::Back => "back with a new boot id".into(),
            M::Checking => "post-reboot checks running".into(),
            M::Checked => "checks passed".into(),
            M::Enabling => "enabling".into(),
            M::Verifying => "verifying it is enabled and reachable".into(),
            M::Done => "done".into(),
            M::Failed { at, why } => format!("failed at {at}: {why}"),
            M::Stopped { at, reason } => format!("stopped at {at}: {reason}"),
        },
    }
}

fn ended_badly(row: &NodeRow) -> bool {
    matches!(
        row.detail,
        Some(machine::Phase::Failed { .. } | machine::Phase::Stopped { .. })
    )
}

/// Whether the operator's Continue is what this node waits for.
fn awaits_continue(j: &Job, row: &NodeRow) -> bool {
    let wfc = spec(j).is_some_and(|r| r.wait_for_continue);
    let continued = j
        .rolling
        .as_ref()
        .is_some_and(|r| r.continued.contains(&row.node));
    let waiting = match &row.detail {
        Some(p) => *p == machine::Phase::AwaitingContinue,
        None => row.phase == Phase::Rebooting,
    };
    wfc && waiting && !continued && !j.state.is_terminal()
}

/// The per-node table body: groups, the phase pipeline, what each node is
/// doing, its child jobs and its Continue button.
pub fn phase_rows(auth: &Auth, j: &Job) -> Markup {
    let rows = node_rows(j);
    let children = j.rolling.clone().unwrap_or_default().children;
    html! {
        @if rows.is_empty() {
            tr { td colspan="5" class="muted" { "No node planned." } }
        }
        @for row in &rows {
            tr data-node=(row.node) data-phase=(row.phase.as_str()) {
                td class="num" { (row.group) }
                td { a href=(format!("/stacks/{}", html::url(&row.node))) { (row.node) } }
                td {
                    ol class="phases" {
                        @for p in Phase::ALL {
                            @let cls = if p < row.phase || row.phase == Phase::Done {
                                "ph done"
                            } else if p == row.phase && ended_badly(row) {
                                "ph failed"
                            } else if p == row.phase {
                                "ph current"
                            } else {
                                "ph todo"
                            };
                            li class=(cls) { (p.as_str()) }
                        }
                    }
                    small class="phase-detail" { (detail_words(row)) }
                }
                td {
                    @if let Some(c) = children.get(&row.node) {
                        @for (what, id) in [("drain", &c.drain), ("reboot+checks", &c.node), ("enable", &c.enable)] {
                            @if let Some(id) = id {
                                a href=(format!("/jobs/{}", html::url(id))) title=(id) { (what) } " "
                            }
                        }
                    }
                }
                td {
                    @if awaits_continue(j, row) {
                        @if auth.can_act() {
                            form method="post" action=(format!("{}/continue", rolling_url(&j.id))) class="inline" {
                                (csrf(auth))
                                input type="hidden" name="node" value=(row.node);
                                button type="submit" class="primary" id=(format!("continue-{}", row.node)) { "Continue " (row.node) }
                            }
                        } @else {
                            button type="button" disabled title=(NEEDS_OPERATOR) id=(format!("continue-{}", row.node)) { "Continue " (row.node) }
                            small class="why" { (NEEDS_OPERATOR) }
                        }
                    }
                }
            }
        }
    }
}

/// Pause, Resume and Abort: each offered when the run's state allows it and
/// the user may act; otherwise shown disabled with the reason.
pub fn controls(auth: &Auth, j: &Job) -> Markup {
    if j.state.is_terminal() {
        return html! { p class="muted" { "This rolling maintenance has ended." } };
    }
    let state = state_word(j.state);
    let why = |allowed: bool| -> Option<String> {
        if !auth.can_act() {
            Some(NEEDS_OPERATOR.into())
        } else if !allowed {
            Some(format!("it is {state}"))
        } else {
            None
        }
    };
    let items = [
        ("pause", "Pause", why(j.state == JobState::Running)),
        ("resume", "Resume", why(j.state == JobState::Paused)),
        ("abort", "Abort", why(true)),
    ];
    html! {
        div class="controls" {
            @for (action, label, why) in &items {
                form method="post" action=(format!("{}/{action}", rolling_url(&j.id))) class="inline" id=(format!("rolling-{action}-form")) {
                    (csrf(auth))
                    button type="submit" id=(format!("rolling-{action}")) disabled[why.is_some()] title=[why.as_deref()] { (label) }
                    @if let Some(w) = why {
                        small class="why" { (w) }
                    }
                }
            }
        }
        @if !auth.can_act() {
            p class="note" id="rolling-needs-operator" { "Pause, resume, abort and continue: " (NEEDS_OPERATOR) "." }
        }
        p class="muted" { "Pause holds every node at its next phase boundary. Abort starts nothing new and cancels the drains in flight; nodes already drained stay in maintenance." }
    }
}

pub fn facts(j: &Job) -> Markup {
    let r = spec(j).cloned().unwrap_or_default();
    html! {
        div { dt { "State" } dd { (state_badge(j.state)) } }
        div { dt { "Started by" } dd { (j.user) } }
        div { dt { "Started" } dd { (fmt_ts(j.created_ms)) } }
        div { dt { "Nodes" } dd { (r.nodes.join(", ")) } }
        div { dt { "Max unavailable" } dd { (r.max_unavailable) } }
        div { dt { "Reboot" } dd {
            @if r.wait_for_continue { "by the operator (Continue per node)" }
            @else { "hook " code { (r.hook) } }
        } }
        div { dt { "Checks must pass" } dd { (if r.checks_must_pass { "yes" } else { "no" }) } }
        div { dt { "Reboot timeout" } dd { (r.reboot_timeout_s) " s" } }
        @if r.deadline_s > 0 {
            div { dt { "Deadline" } dd { (r.deadline_s) " s" } }
        }
        @if let Some(o) = &j.outcome {
            div { dt { "Outcome" } dd id="rolling-outcome" { (o) } }
        }
        div { dt { "Job record" } dd { a href=(format!("/jobs/{}", html::url(&j.id))) { code { (j.id) } } } }
    }
}

fn journal(j: &Job) -> Markup {
    const LAST: usize = 30;
    let skip = j.steps.len().saturating_sub(LAST);
    html! {
        @if j.steps.is_empty() { li class="muted" { "No step yet." } }
        @for s in j.steps.iter().skip(skip) {
            li { time { (fmt_ts(s.ts_ms)) } " " (s.message) }
        }
    }
}

/// The fragments the live view replaces, by element id.
fn fragments(auth: &Auth, j: &Job) -> serde_json::Value {
    serde_json::json!({
        "fragments": {
            "rolling-badge": state_badge(j.state).into_string(),
            "rolling-controls": controls(auth, j).into_string(),
            "rolling-facts": facts(j).into_string(),
            "rolling-phases-body": phase_rows(auth, j).into_string(),
            "rolling-journal": journal(j).into_string(),
        }
    })
}

async fn rolling_job(st: &Portal, id: &str) -> Option<Job> {
    st.c.jobs.get(id).await.filter(|j| spec(j).is_some())
}

pub async fn show(State(st): State<Arc<Portal>>, auth: Auth, Path(id): Path<String>) -> Response {
    let Some(j) = rolling_job(&st, &id).await else {
        return html::error_page(
            Some(&auth),
            StatusCode::NOT_FOUND,
            "Unknown rolling maintenance",
            &format!("no rolling maintenance {id:?}"),
        );
    };
    let live = (!j.state.is_terminal()).then(|| format!("/events/rolling/{}", html::url(&j.id)));
    let body = html! {
        div id="live-root" data-live=[live.as_deref()] {
            nav class="crumbs" { a href="/rolling" { "Rolling maintenance" } " › " code { (j.id) } }
            div class="titlebar" {
                h1 { "Rolling maintenance " code { (short(&j.id)) } " " span id="rolling-badge" { (state_badge(j.state)) } }
                span class="live" id="live" { (if live.is_some() { "live" } else { "ended" }) }
            }
            div id="rolling-controls" { (controls(&auth, &j)) }
            dl class="facts" id="rolling-facts" { (facts(&j)) }
            h2 { "Nodes" }
            table class="grid" id="rolling-phases" {
                thead { tr { th { "Group" } th { "Node" } th { "Phase" } th { "Child jobs" } th { } } }
                tbody id="rolling-phases-body" { (phase_rows(&auth, &j)) }
            }
            h2 { "Journal" }
            ol class="journal" id="rolling-journal" { (journal(&j)) }
        }
    };
    respond(
        StatusCode::OK,
        html::page(
            Some(&auth),
            Nav::Rolling,
            &format!("Rolling maintenance {}", short(&j.id)),
            body,
        ),
    )
}

/// `/events/rolling/{id}`: the phase view's fragments on every change,
/// then `end` once the run ended.
pub async fn sse(State(st): State<Arc<Portal>>, auth: Auth, Path(id): Path<String>) -> Response {
    let Some(first) = rolling_job(&st, &id).await else {
        return (
            StatusCode::NOT_FOUND,
            format!("unknown rolling maintenance {id:?}"),
        )
            .into_response();
    };
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let c = st.c.clone();
    tokio::spawn(async move {
        // Every phase change is a job event of the coordinator's.
        let mut sub = super::live::job_event_subscription(&c).await;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut job = first;
        let mut last = String::new();
        loop {
            let v = fragments(&auth, &job);
            let data = v.to_string();
            if data != last {
                let ev = Event::default().event("fragments").data(data.clone());
                if tx.send(ev).await.is_err() {
                    return;
                }
                last = data;
            }
            if job.state.is_terminal() {
                let _ = tx
                    .send(Event::default().event("end").data(job.id.clone()))
                    .await;
                return;
            }
            tokio::select! {
                _ = super::live::next_msg(&mut sub) => {}
                _ = tick.tick() => {}
                _ = tx.closed() => return,
            }
            match c.jobs.get(&job.id).await {
                Some(j) => job = j,
                None => return,
            }
        }
    });
    super::live::sse(rx).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_start_form_becomes_the_clis_request() {
        let r = start_request(&f(&[
            ("csrf", "x"),
            ("node", "node1"),
            ("node", "node2"),
            ("max_unavailable", "2"),
            ("reboot", "hook"),
            ("hook", "upgrade"),
            ("checks_must_pass", "yes"),
            ("reboot_timeout", "10m"),
            ("deadline", ""),
        ]))
        .unwrap();
        assert_eq!(r.nodes, ["node1", "node2"]);
        assert_eq!(r.max_unavailable, 2);
        assert_eq!(r.hook, "upgrade");
        assert!(!r.wait_for_continue && r.checks_must_pass);
        assert_eq!((r.reboot_timeout_s, r.deadline_s), (600, 0));
        let r = start_request(&f(&[("node", "n"), ("reboot", "continue"), ("hook", "x")])).unwrap();
        assert!(r.wait_for_continue && r.hook.is_empty());
        assert_eq!(r.max_unavailable, 1);
    }

    #[test]
    fn the_phase_view_escapes_names_and_offers_continue_to_the_waiting_node_only() {
        let hostile = r#"<script>"'&"#;
        let mut j = Job::new(
            JobSpec::Rolling(crate::jobs::Rolling {
                nodes: vec![hostile.into(), "n2".into()],
                groups: vec![vec![hostile.into()], vec!["n2".into()]],
                max_unavailable: 1,
                wait_for_continue: true,
                reboot_timeout_s: 900,
                ..Default::default()
            }),
            hostile,
            None,
        );
        let mut r = crate::jobs::RollingState::new(&[hostile.into(), "n2".into()]);
        r.progress.insert(hostile.into(), Phase::Rebooting);
        j.rolling = Some(r);
        j.outcome = Some(hostile.into());
        let operator = Auth {
            user: "alice".into(),
            groups: vec!["Level2".into()],
            csrf: "t".into(),
            token: String::new(),
        };
        let html = [
            phase_rows(&operator, &j).into_string(),
            facts(&j).into_string(),
            controls(&operator, &j).into_string(),
        ]
        .concat();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert_eq!(html.matches("/continue").count(), 1, "{html}");
        // A viewer sees the button disabled, with the reason.
        let viewer = Auth {
            groups: vec!["Level1".into()],
            ..operator
        };
        let rows = phase_rows(&viewer, &j).into_string();
        assert!(
            !rows.contains("/continue") && rows.contains(NEEDS_OPERATOR),
            "{rows}"
        );
    }

    #[test]
    fn bad_start_forms_say_what_is_wrong() {
        for (form, want) in [
            (f(&[("reboot", "continue")]), "at least one node"),
            (
                f(&[("node", "n"), ("max_unavailable", "0")]),
                "max unavailable",
            ),
            (
                f(&[("node", "n"), ("max_unavailable", "two")]),
                "max unavailable",
            ),
            (
                f(&[("node", "n"), ("reboot", "hook"), ("hook", " ")]),
                "reboot hook",
            ),
            (f(&[("node", "n"), ("reboot", "kick")]), "hook or continue"),
            (
                f(&[
                    ("node", "n"),
                    ("reboot", "continue"),
                    ("reboot_timeout", "soon"),
                ]),
                "reboot timeout",
            ),
            (
                f(&[("node", "n"), ("reboot", "continue"), ("deadline", "0s")]),
                "deadline",
            ),
        ] {
            let e = start_request(&form).unwrap_err();
            assert!(e.contains(want), "{form:?}: {e}");
        }
    }
}
