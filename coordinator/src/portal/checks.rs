//! Post-reboot service checks on Stack Details: run them, see each
//! service's state from the latest check, start the failed ones.
//!
//! A check's report is not in its job record: the agent publishes it as a
//! `checks` event of the job. The section reads it the way the CLI's
//! `node check` does, through the API's `event.read` (the job's events of
//! kind `checks` from the node), as the logged-in user.

use super::auth::Auth;
use super::html::{self, NEEDS_OPERATOR};
use super::Portal;
use crate::cli::output::{fmt_ts, short};
use crate::jobs::{Job, JobSpec};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};
use nodemaint_proto::model::NodeRecord;
use nodemaint_proto::pb::{self, api_reply::Kind as Reply, api_request::Kind as Req, event::Body};
use nodemaint_proto::subjects::EventKind;
use std::sync::Arc;

/// The node's newest check job among the portal's jobs.
fn latest_check(st: &Portal, node: &str) -> Option<Job> {
    st.c.jobs
        .list(super::pages::PORTAL_JOBS)
        .jobs
        .into_iter()
        .find(|j| matches!(j.spec, JobSpec::Check(_)) && j.node.as_deref() == Some(node))
}

/// The last check report of job `j` on `node`, read like `node check`
/// reads it: `event.read` of the job's `checks` events from that node.
async fn report_of(
    st: &Portal,
    auth: &Auth,
    node: &str,
    j: &Job,
) -> Result<Option<pb::CheckReport>, String> {
    let mut req = pb::ReadEvents {
        filters: vec![pb::EventFilter {
            node: node.to_string(),
            kind: EventKind::Checks.as_str().into(),
        }],
        // Events are stored when published; the job exists just before.
        since_ms: (j.created_ms - 2_000).max(1),
        op_id: j.id.clone(),
        ..Default::default()
    };
    let mut report = None;
    // A few pages at most: one node's checks events since the job began.
    for _ in 0..10 {
        let page = match st.api(&auth.user, Req::ReadEvents(req.clone())).await {
            Ok(Reply::Events(p)) => p,
            Ok(other) => return Err(format!("unexpected reply {other:?}")),
            Err(e) => return Err(e.message),
        };
        for stored in &page.events {
            if let Ok(ev) = nodemaint_proto::decode::<pb::Event>(&stored.event) {
                if let Some(Body::Checks(r)) = ev.body {
                    report = Some(r);
                }
            }
        }
        if page.pending == 0 {
            break;
        }
        req.start_seq = page.next_seq;
    }
    Ok(report)
}

fn action_form(auth: &Auth, node: &str, start_failed: bool, why: Option<&str>) -> Markup {
    let (id, label) = if start_failed {
        ("checks-start-failed", "Start failed services")
    } else {
        ("checks-run", "Run checks")
    };
    html! {
        form method="post" action=(format!("/stacks/{}/checks", html::url(node))) class="inline" {
            input type="hidden" name="csrf" value=(auth.csrf);
            @if start_failed {
                input type="hidden" name="start_failed" value="yes";
            }
            button type="submit" id=(id) class=[(!start_failed).then_some("primary")] disabled[why.is_some()] title=[why] { (label) }
            @if let Some(w) = why {
                small class="why" id=(format!("{id}-why")) { (w) }
            }
        }
    }
}

/// What the checks section shows: the node's latest check job and its
/// report (or why it cannot be read).
pub struct Checks {
    pub job: Option<Job>,
    pub report: Result<Option<pb::CheckReport>, String>,
}

/// The latest check of `n` and its report, read as the logged-in user.
pub async fn gather(st: &Portal, auth: &Auth, n: &NodeRecord) -> Checks {
    let job = latest_check(st, &n.name);
    let report = match &job {
        Some(j) => report_of(st, auth, &n.name, j).await,
        None => Ok(None),
    };
    Checks { job, report }
}

/// The checks section of Stack Details (pure).
pub fn section(auth: &Auth, n: &NodeRecord, now: i64, c: &Checks) -> Markup {
    let (job, report) = (&c.job, &c.report);
    let failed = match report {
        Ok(Some(r)) => r.services.iter().filter(|s| !s.ok).count(),
        _ => 0,
    };
    let unreachable = (!n.reachable_at(now)).then_some("node is unreachable");
    // Checking only reads (any user); starting services changes the node.
    let run_why = unreachable;
    let start_why = if !auth.can_act() {
        Some(NEEDS_OPERATOR)
    } else if unreachable.is_some() {
        unreachable
    } else if job.as_ref().is_some_and(|j| !j.state.is_terminal()) {
        Some("a check is running")
    } else if failed == 0 {
        Some("no failed service in the latest check")
    } else {
        None
    };
    html! {
        section id="checks" {
            h2 { "Post-reboot checks" }
            p class="muted" { "The services this stack's agent checks after a reboot (storage, agent services, …), from its own config." }
            div class="controls" {
                (action_form(auth, &n.name, false, run_why))
                (action_form(auth, &n.name, true, start_why))
            }
            @match job {
                None => {
                    p class="muted" id="checks-none" { "No check has run on this stack yet." }
                }
                Some(j) => {
                    p id="checks-job" {
                        "Latest check: job "
                        a href=(format!("/jobs/{}", html::url(&j.id))) title=(j.id) { code { (short(&j.id)) } }
                        " by " (j.user) ", " (fmt_ts(j.created_ms)) " "
                        @let w = format!("{:?}", j.state).to_uppercase();
                        span class=(format!("badge job-{}", w.to_lowercase())) { (w) }
                    }
                }
            }
            @match report {
                Err(e) => {
                    p class="alert error" id="checks-error" { "Cannot read the check report: " (e) }
                }
                Ok(None) => {
                    @if job.is_some() {
                        p class="muted" { "No report from the agent for this check (yet)." }
                    }
                }
                Ok(Some(r)) => {
                    p id="checks-summary" {
                        @if r.all_ok {
                            span class="badge ok" { "all ok" }
                        } @else {
                            span class="badge failed" { (failed) " failed" }
                        }
                        " " (r.services.len()) " services"
                    }
                    table class="grid" id="checks-table" {
                        thead { tr { th { "Check" } th { "Service" } th { "Result" } th { "State" } th { "Action" } th { "Message" } } }
                        tbody {
                            @if r.services.is_empty() {
                                tr { td colspan="6" class="muted" { "The agent has no check configured." } }
                            }
                            @for s in &r.services {
                                tr data-service=(s.service) {
                                    td { (s.check) }
                                    td { (s.service) }
                                    td {
                                        @if s.ok { span class="badge ok" { "ok" } }
                                        @else { span class="badge failed" { "FAILED" } }
                                    }
                                    td { (s.state) }
                                    td { @if s.start_attempted { "started" } }
                                    td { small { (s.detail.lines().next().unwrap_or("")) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[derive(serde::Deserialize, Default)]
pub struct ChecksForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    start_failed: Option<String>,
}

/// `POST /stacks/{node}/checks`: `node check NODE [--start-failed]`.
pub async fn run(
    State(st): State<Arc<Portal>>,
    auth: Auth,
    Path(node): Path<String>,
    Form(f): Form<ChecksForm>,
) -> Response {
    if let Err(r) = auth.check_csrf(&f.csrf) {
        return r;
    }
    let start_failed = match f.start_failed.as_deref() {
        None | Some("") | Some("no") => false,
        Some("yes") => true,
        Some(other) => {
            return html::error_page(
                Some(&auth),
                StatusCode::BAD_REQUEST,
                "Checks refused",
                &format!("start_failed {other:?}: yes or no; nothing was sent"),
            )
        }
    };
    let title = if start_failed {
        "Start failed services refused"
    } else {
        "Checks refused"
    };
    super::actions::submit(
        &st,
        &auth,
        Req::CheckNode(pb::CheckNode { node, start_failed }),
        title,
    )
    .await
}
