//! The fleet overview: memory used and VMs per stack as bar charts (inline
//! SVG rendered here, no script), the stacks in maintenance and the jobs
//! running. Read-only, any logged-in user.

use super::auth::Auth;
use super::html::{self, respond, Nav};
use super::Portal;
use crate::cli::output::{fmt_ts, mib, short};
use crate::jobs::{Job, JobSpec};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use nodemaint_proto::model::{NodeRecord, NodeStatus};
use std::sync::Arc;

/// One bar of a chart: a stack's value out of its own total.
pub struct Bar {
    pub node: String,
    pub value: u64,
    pub total: u64,
    pub label: String,
    pub maintenance: bool,
}

const LABEL_W: u64 = 130;
const TRACK_W: u64 = 520;
const ROW_H: u64 = 30;
const BAR_H: u64 = 18;

/// Pixels of `v` on a track where `max` is full width (pure; never wider
/// than the track, at least 1 px for a non-zero value).
pub fn px(v: u64, max: u64) -> u64 {
    if max == 0 || v == 0 {
        return 0;
    }
    (v.min(max) * TRACK_W / max).max(1)
}

/// A horizontal bar chart: per stack a track as long as its total (scaled
/// to the largest total) and a bar as long as its value.
pub fn chart(id: &str, title: &str, bars: &[Bar]) -> Markup {
    let max = bars.iter().map(|b| b.total.max(b.value)).max().unwrap_or(0);
    let h = ROW_H * bars.len().max(1) as u64 + 6;
    let w = LABEL_W + TRACK_W + 190;
    html! {
        svg id=(id) class="chart" viewBox=(format!("0 0 {w} {h}")) width=(w) height=(h)
            role="img" aria-label=(title) xmlns="http://www.w3.org/2000/svg" {
            title { (title) }
            @if bars.is_empty() {
                text x="0" y="20" class="muted" { "No stack has registered yet." }
            }
            @for (i, b) in bars.iter().enumerate() {
                @let y = i as u64 * ROW_H + 4;
                g data-node=(b.node) data-value=(b.value) data-total=(b.total)
                    class=(if b.maintenance { "bar maint" } else { "bar" }) {
                    text x="0" y=(y + BAR_H - 4) class="name" { (b.node) }
                    rect class="track" x=(LABEL_W) y=(y) width=(px(b.total, max)) height=(BAR_H) rx="3" {}
                    rect class="used" x=(LABEL_W) y=(y) width=(px(b.value, max)) height=(BAR_H) rx="3" {}
                    text x=(LABEL_W + TRACK_W + 10) y=(y + BAR_H - 4) class="value" { (b.label) }
                }
            }
        }
    }
}

pub fn memory_bars(nodes: &[NodeRecord]) -> Vec<Bar> {
    nodes
        .iter()
        .map(|n| Bar {
            node: n.name.clone(),
            value: n.memory_used_mib(),
            total: n.capacity.memory_mib,
            label: format!(
                "{} / {}",
                mib(n.memory_used_mib()),
                mib(n.capacity.memory_mib)
            ),
            maintenance: n.status == NodeStatus::Maintenance,
        })
        .collect()
}

pub fn vm_bars(nodes: &[NodeRecord]) -> Vec<Bar> {
    nodes
        .iter()
        .map(|n| Bar {
            node: n.name.clone(),
            value: n.vms_running() as u64,
            total: n.domains.len() as u64,
            label: format!("{} running / {} VMs", n.vms_running(), n.domains.len()),
            maintenance: n.status == NodeStatus::Maintenance,
        })
        .collect()
}

fn job_href(j: &Job) -> String {
    match j.spec {
        JobSpec::Rolling(_) => format!("/rolling/{}", html::url(&j.id)),
        _ => format!("/jobs/{}", html::url(&j.id)),
    }
}

fn node_href(n: &str) -> String {
    format!("/stacks/{}", html::url(n))
}

pub async fn page(State(st): State<Arc<Portal>>, auth: Auth) -> Response {
    let now = nodemaint_proto::now_ms();
    let nodes = st.c.registry.all();
    let mut running = st.c.jobs.running();
    running.sort_by_key(|j| std::cmp::Reverse(j.created_ms));
    let maint: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Maintenance)
        .collect();
    let unreachable = nodes.iter().filter(|n| !n.reachable_at(now)).count();
    let used: u64 = nodes.iter().map(|n| n.memory_used_mib()).sum();
    let cap: u64 = nodes.iter().map(|n| n.capacity.memory_mib).sum();
    let vms: usize = nodes.iter().map(|n| n.domains.len()).sum();
    let vms_running: usize = nodes.iter().map(|n| n.vms_running()).sum();
    let body = html! {
        div class="titlebar" { h1 { "Fleet overview" } }
        dl class="facts" id="overview-facts" {
            div { dt { "Stacks" } dd id="ov-stacks" { (nodes.len()) } }
            div { dt { "In maintenance" } dd id="ov-maintenance" { (maint.len()) } }
            div { dt { "Unreachable" } dd id="ov-unreachable" { (unreachable) } }
            div { dt { "VMs running / total" } dd id="ov-vms" { (vms_running) " / " (vms) } }
            div { dt { "Memory used / total" } dd id="ov-memory" { (mib(used)) " / " (mib(cap)) } }
            div { dt { "Jobs running" } dd id="ov-jobs" { (running.len()) } }
        }
        h2 { "Memory used per stack" }
        div class="chart-box" { (chart("chart-memory", "Memory used per stack", &memory_bars(&nodes))) }
        h2 { "VMs per stack" }
        div class="chart-box" { (chart("chart-vms", "VMs running per stack", &vm_bars(&nodes))) }
        p class="muted" { "Bars are scaled to the largest stack; the light track is the stack's total, purple bars are stacks in maintenance." }
        h2 { "Stacks in maintenance" }
        table class="grid" id="overview-maintenance" {
            thead { tr { th { "Stack" } th { "VMs running / total" } th { "Held by job" } } }
            tbody {
                @if maint.is_empty() {
                    tr { td colspan="3" class="muted" { "No stack is in maintenance." } }
                }
                @for n in &maint {
                    tr data-node=(n.name) {
                        td { a href=(node_href(&n.name)) { (n.name) } }
                        td class="num" { (n.vms_running()) " / " (n.domains.len()) }
                        td { @if let Some(j) = &n.current_job {
                            a href=(format!("/jobs/{}", html::url(j))) title=(j) { code { (short(j)) } }
                        } }
                    }
                }
            }
        }
        h2 { "Jobs running" }
        table class="grid" id="overview-jobs" {
            thead { tr { th { "Job" } th { "Kind" } th { "Stack" } th { "User" } th { "State" } th { "Started" } th { "Last step" } } }
            tbody {
                @if running.is_empty() {
                    tr { td colspan="7" class="muted" { "No job is running." } }
                }
                @for j in &running {
                    @let w = format!("{:?}", j.state).to_uppercase();
                    tr data-job=(j.id) {
                        td { a href=(job_href(j)) title=(j.id) { code { (short(&j.id)) } } }
                        td { (j.kind()) }
                        td { @if let Some(n) = &j.node { a href=(node_href(n)) { (n) } } }
                        td { (j.user) }
                        td { span class=(format!("badge job-{}", w.to_lowercase())) { (w) } }
                        td { (fmt_ts(j.created_ms)) }
                        td { small { (j.steps.last().map(|s| s.message.as_str()).unwrap_or("")) } }
                    }
                }
            }
        }
    };
    respond(
        StatusCode::OK,
        html::page(Some(&auth), Nav::Overview, "Fleet overview", body),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_stay_on_the_track() {
        assert_eq!(px(0, 100), 0);
        assert_eq!(px(5, 0), 0);
        assert_eq!(px(100, 100), TRACK_W);
        assert_eq!(px(50, 100), TRACK_W / 2);
        assert_eq!(px(1, 1_000_000), 1, "a non-zero value stays visible");
        assert_eq!(px(300, 100), TRACK_W, "never past the track");
    }

    #[test]
    fn the_chart_escapes_names_and_draws_one_bar_per_stack() {
        let bars = [
            Bar {
                node: "n<1>".into(),
                value: 2048,
                total: 8192,
                label: "2 GiB / 8 GiB".into(),
                maintenance: false,
            },
            Bar {
                node: "n2".into(),
                value: 0,
                total: 4096,
                label: "0 / 4 GiB".into(),
                maintenance: true,
            },
        ];
        let svg = chart("c", "Memory", &bars).into_string();
        assert!(svg.contains("n&lt;1&gt;") && !svg.contains("n<1>"), "{svg}");
        assert_eq!(svg.matches(r#"class="used""#).count(), 2);
        assert!(
            svg.contains(&format!(r#"width="{}""#, TRACK_W / 4)),
            "{svg}"
        );
        assert!(svg.contains(r#"class="bar maint""#));
        // Closed elements: an SVG rect left open would swallow its siblings.
        assert_eq!(svg.matches("<rect").count(), svg.matches("</rect>").count());
    }
}
