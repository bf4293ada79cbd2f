//! The read-only pages (any logged-in user) and the HTML fragments that the
//! live updates re-send (`live.rs`), so each piece is rendered in one place.
//! Handlers gather the data; the `*_page` builders are pure `maud`
//! templates (escaped by default), tested without a coordinator.

use super::auth::Auth;
use super::html::{
    self, badge, cs_link, csrf_field, groups_text, job_badge, job_link, node_badges, node_link,
    page, respond, url, vm_badge, Nav, NEEDS_OPERATOR,
};
use super::Portal;
use crate::cli::output::{fmt_ts, mib};
use crate::jobs::Job;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use nodemaint_planner as planner;
use nodemaint_proto::model::{NodeRecord, NodeStatus, Vm, VmKind};
use nodemaint_proto::pb::{self, api_reply::Kind as Reply, api_request::Kind as Req};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

fn now() -> i64 {
    nodemaint_proto::now_ms()
}

pub async fn not_found() -> Response {
    html::error_page(
        None,
        StatusCode::NOT_FOUND,
        "Not found",
        "no such page in the portal",
    )
}

/// One fact of a `<dl class="facts">`.
fn fact(k: &str, v: Markup) -> Markup {
    html! { div { dt { (k) } dd { (v) } } }
}

/// A table row spanning `cols` columns that says the table is empty.
fn empty_row(cols: u32, text: &str) -> Markup {
    html! { tr { td colspan=(cols) class="muted" { (text) } } }
}

// ---------------------------------------------------------------- Stacks

/// The rows of the Stacks table.
pub fn stacks_rows(nodes: &[NodeRecord], now: i64) -> Markup {
    if nodes.is_empty() {
        return empty_row(7, "No stack has registered yet: start a node-agent.");
    }
    html! {
        @for n in nodes {
            tr data-node=(n.name) {
                td { (node_link(&n.name)) }
                td class="status" { (node_badges(n, now)) }
                td class="num" { (n.vms_running()) " / " (n.domains.len()) }
                td class="num" { (mib(n.memory_used_mib())) " / " (mib(n.capacity.memory_mib)) }
                td class="num" { (n.domains.iter().filter(|d| d.kind == VmKind::Vfw).count()) }
                td { (fmt_ts(n.boot_time_ms)) }
                td { @if let Some(j) = &n.current_job { (job_link(j)) } }
            }
        }
    }
}

pub fn stacks_count(nodes: &[NodeRecord], now: i64) -> Markup {
    let maint = nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Maintenance)
        .count();
    let down = nodes.iter().filter(|n| !n.reachable_at(now)).count();
    html! {
        (nodes.len()) " stacks · " (maint) " in maintenance · " (down) " unreachable"
    }
}

pub fn stacks_page(auth: &Auth, nodes: &[NodeRecord], now: i64) -> Markup {
    let body = html! {
        div id="live-root" data-live="/events/stacks" {
            div class="titlebar" { h1 { "Stacks" } span class="live" id="live" { "live" } }
            p class="muted" id="stacks-count" { (stacks_count(nodes, now)) }
            table class="grid" id="stacks" {
                thead { tr {
                    th { "Stack" } th { "Status" } th { "VMs running / total" }
                    th { "Memory used / total" } th { "VFWs" } th { "Boot time" } th { "Current job" }
                } }
                tbody id="stacks-body" { (stacks_rows(nodes, now)) }
            }
        }
    };
    page(Some(auth), Nav::Stacks, "Stacks", body)
}

pub async fn stacks(State(st): State<Arc<Portal>>, auth: Auth) -> Response {
    let nodes = st.c.registry.all();
    respond(StatusCode::OK, stacks_page(&auth, &nodes, now()))
}

// ---------------------------------------------------------- Stack Details

pub fn node_facts(n: &NodeRecord, now: i64) -> Markup {
    html! {
        (fact("Status", node_badges(n, now)))
        (fact("Reachable", if n.reachable_at(now) {
            html! { "yes" }
        } else {
            badge("st-unreachable", "unreachable")
        }))
        (fact("VMs running / total", html! { (n.vms_running()) " / " (n.domains.len()) }))
        (fact("Memory used / total", html! {
            (mib(n.memory_used_mib())) " / " (mib(n.capacity.memory_mib))
        }))
        (fact("vCPUs", html! { (n.capacity.vcpus) }))
        (fact("Boot time", html! { (fmt_ts(n.boot_time_ms)) }))
        (fact("Last heartbeat", html! { (crate::cli::output::ago(n.last_seen_ms, now)) }))
        (fact("Address", html! { (n.address) }))
        (fact("libvirt URI", html! { code { (n.libvirt_uri) } }))
        (fact("Agent version", html! { (n.agent_version) }))
        (fact("Current job", match &n.current_job {
            Some(j) => job_link(j),
            None => html! { "none" },
        }))
    }
}

pub fn user_vm_rows(n: &NodeRecord) -> Markup {
    vm_rows(n, VmKind::User, "No user VM on this stack.")
}

pub fn system_vm_rows(n: &NodeRecord) -> Markup {
    vm_rows(n, VmKind::Vfw, "No virtual firewall on this stack.")
}

/// Stack Details' VM tables; each name links to the VM's page (its actions).
fn vm_rows(n: &NodeRecord, kind: VmKind, none: &str) -> Markup {
    let vms: Vec<&Vm> = n.domains.iter().filter(|d| d.kind == kind).collect();
    if vms.is_empty() {
        return empty_row(6, none);
    }
    html! {
        @for d in vms {
            tr data-vm=(d.name) {
                td { a href={ "/vms/" (url(&d.name)) } { (d.name) } }
                td { (vm_badge(d.state)) }
                td { @if let Some(cs) = &d.cloudspace { (cs_link(cs)) } }
                td class="num" { (d.vcpus) }
                td class="num" { (mib(d.memory_mib)) }
                td { @if let Some(j) = n.stopped_by.get(&d.name) { "stopped by " (job_link(j)) } }
            }
        }
    }
}

/// Why an action is not offered now, if it is not.
fn maintenance_blocker(auth: &Auth, n: &NodeRecord, now: i64) -> Option<String> {
    if !auth.can_act() {
        return Some(NEEDS_OPERATOR.into());
    }
    if let Some(j) = &n.current_job {
        return Some(format!(
            "node is held by job {}",
            crate::cli::output::short(j)
        ));
    }
    if n.status != NodeStatus::Enabled {
        return Some(format!("node is {}", html::status_word(n.status)));
    }
    if !n.reachable_at(now) {
        return Some("node is unreachable".into());
    }
    None
}

fn enable_blocker(auth: &Auth, n: &NodeRecord) -> Option<String> {
    if !auth.can_act() {
        return Some(NEEDS_OPERATOR.into());
    }
    if let Some(j) = &n.current_job {
        return Some(format!(
            "node is held by job {}",
            crate::cli::output::short(j)
        ));
    }
    if n.status != NodeStatus::Maintenance {
        return Some(format!(
            "node is {}, not in maintenance",
            html::status_word(n.status)
        ));
    }
    None
}

fn menu_item(id: &str, dialog: &str, label: &str, blocker: &Option<String>) -> Markup {
    html! {
        @match blocker {
            None => button type="button" id=(id) data-open=(dialog) { (label) },
            Some(why) => {
                button type="button" id=(id) disabled title=(why) { (label) }
                small class="why" { (why) }
            }
        }
    }
}

fn actions_menu(auth: &Auth, n: &NodeRecord, now: i64) -> Markup {
    html! {
        details class="menu" id="actions" {
            summary { "Actions" }
            div class="menu-items" {
                (menu_item("action-maintenance", "maint-dialog", "Put in Maintenance",
                    &maintenance_blocker(auth, n, now)))
                (menu_item("action-enable", "enable-dialog", "Enable", &enable_blocker(auth, n)))
            }
        }
        @if !auth.can_act() {
            p class="note" id="needs-operator" {
                "Actions: " (NEEDS_OPERATOR) "; you are in " (groups_text(auth)) "."
            }
        }
    }
}

/// What the planner says about "Move All": its report, `None` when it
/// answered something else, or its refusal.
pub type DrainPlan = Result<Option<planner::DrainReport>, String>;

async fn drain_plan(st: &Portal, auth: &Auth, node: &str) -> DrainPlan {
    let req = Req::PlanDrain(pb::PlanDrain {
        node: node.into(),
        max_parallel: 0,
    });
    match st.api(&auth.user, req).await {
        Ok(Reply::Json(doc)) => Ok(serde_json::from_str(&doc).ok()),
        Ok(_) => Ok(None),
        Err(e) => Err(e.message),
    }
}

/// The planner's preview of "Move All": where each VM would go, or which
/// VMs fit nowhere.
fn drain_preview(plan: &DrainPlan) -> Markup {
    let r = match plan {
        Ok(Some(r)) => r,
        Ok(None) => return html! {},
        Err(e) => {
            return html! { p class="plan bad" { "The planner cannot plan the move now: " (e) } }
        }
    };
    if !r.feasible {
        return html! {
            div class="plan bad" {
                p { "The other stacks cannot take every VM; Move All would be refused:" }
                ul { @for u in &r.unplaced { li { b { (u.vm) } ": " (u.reason) } } }
            }
        };
    }
    if r.moves.is_empty() {
        return html! { p class="plan" { "No VM to move: the stack is empty." } };
    }
    html! {
        div class="plan" {
            p { "Planned destinations (" (r.moves.len()) " VMs, " (r.waves) " waves, VFWs first):" }
            ul {
                @for m in &r.moves {
                    li {
                        (m.vm)
                        @if m.kind == planner::VmKind::Vfw { " " small { "(VFW)" } }
                        " → " (m.to)
                    }
                }
            }
        }
    }
}

fn maintenance_dialog(auth: &Auth, n: &NodeRecord, plan: &DrainPlan) -> Markup {
    let cs = crate::api::vfw_cloudspaces(n);
    let node = &n.name;
    html! {
        dialog id="maint-dialog" aria-labelledby="maint-title" {
            form method="post" action={ "/stacks/" (url(node)) "/maintenance" } id="maint-form" {
                (csrf_field(auth))
                h2 id="maint-title" { "Put " (node) " in maintenance" }
                p { (node) " becomes unschedulable at once (no new VM is placed on it), then it is emptied. Choose how:" }
                label class="option preferred" {
                    input type="radio" name="mode" value="move" id="mode-move" checked;
                    " "
                    span {
                        strong { "Move All Virtual Machines" } " " span class="badge pref" { "preferred" }
                        br;
                        small { "Live-migrate every VM, virtual firewalls first, to the stacks the planner picks. Tenants keep running." }
                    }
                }
                div class="move-only" { (drain_preview(plan)) }
                label class="option" {
                    input type="radio" name="mode" value="stop" id="mode-stop";
                    " "
                    span {
                        strong { "Stop All Virtual Machines" }
                        br;
                        small { "Stop every VM on " (node) ", virtual firewalls included. Enable restarts exactly the VMs stopped here." }
                    }
                }
                div class="stop-only warning" id="stop-warning" {
                    @if cs.is_empty() {
                        p { "No virtual firewall runs on this stack, so no cloudspace loses its network." }
                    } @else {
                        p {
                            strong { "Warning:" }
                            " the virtual firewall (VFW) of these cloudspaces runs on " (node)
                            ". Stopping it takes their network down until " (node) " is enabled again:"
                        }
                        ul id="vfw-cloudspaces" { @for c in &cs { li { (c) } } }
                        label class="ack" {
                            input type="checkbox" name="ack_vfw_downtime" id="ack-vfw" value="yes" data-required-for="stop";
                            " I understand that " (cs.join(", ")) " lose their network until " (node) " is enabled"
                        }
                    }
                }
                div class="buttons" {
                    button type="button" data-close { "Cancel" }
                    " "
                    button type="submit" class="primary" id="maint-submit" { "Put in Maintenance" }
                }
            }
        }
    }
}

fn enable_dialog(auth: &Auth, n: &NodeRecord) -> Markup {
    let node = &n.name;
    let kind = |vm: &str| {
        n.domains
            .iter()
            .find(|d| d.name == vm)
            .map(|d| if d.kind == VmKind::Vfw { " (VFW)" } else { "" })
            .unwrap_or("")
    };
    html! {
        dialog id="enable-dialog" aria-labelledby="enable-title" {
            form method="post" action={ "/stacks/" (url(node)) "/enable" } id="enable-form" {
                (csrf_field(auth))
                h2 id="enable-title" { "Enable " (node) }
                p { (node) " leaves maintenance and becomes schedulable again." }
                @if n.stopped_by.is_empty() {
                    p id="enable-restart" {
                        "No VM will be restarted: maintenance stopped none on " (node)
                        " (VMs that tenants shut off stay off)."
                    }
                } @else {
                    p { "These " (n.stopped_by.len()) " VMs were stopped by maintenance and will be restarted:" }
                    ul id="enable-restart" {
                        @for (vm, job) in &n.stopped_by {
                            li { b { (vm) } (kind(vm)) " " small { "stopped by job " (job_link(job)) } }
                        }
                    }
                }
                div class="buttons" {
                    button type="button" data-close { "Cancel" }
                    " "
                    button type="submit" class="primary" id="enable-submit" { "Enable" }
                }
            }
        }
    }
}

/// The JSON that makes a page reload when the node's status or job changes
/// (the actions and dialogs depend on them).
pub fn node_key(n: &NodeRecord) -> String {
    format!(
        "{}|{}",
        html::status_word(n.status),
        n.current_job.as_deref().unwrap_or("")
    )
}

/// Whether Stack Details offers the Put in Maintenance dialog (and so
/// needs the planner's preview).
fn offers_maintenance(auth: &Auth, n: &NodeRecord, now: i64) -> bool {
    maintenance_blocker(auth, n, now).is_none()
}

/// Stack Details; `checks` is the post-reboot checks section (`checks.rs`).
pub fn stack_page(
    auth: &Auth,
    n: &NodeRecord,
    now: i64,
    plan: &DrainPlan,
    checks: Markup,
) -> Markup {
    let node = &n.name;
    let vm_head = html! {
        thead { tr {
            th { "Name" } th { "State" } th { "Cloudspace" } th { "vCPUs" } th { "Memory" } th {}
        } }
    };
    let body = html! {
        div id="live-root" data-live={ "/events/stacks?node=" (url(node)) } data-key=(node_key(n)) {
            nav class="crumbs" { a href="/" { "Stacks" } " › " (node) }
            div class="titlebar" {
                h1 { "Stack " (node) " " span id="node-badges" { (node_badges(n, now)) } }
                span class="live" id="live" { "live" }
                (actions_menu(auth, n, now))
            }
            dl class="facts" id="node-facts" { (node_facts(n, now)) }
            h2 { "Virtual machines" }
            table class="grid" id="user-vms" { (vm_head) tbody id="user-vms-body" { (user_vm_rows(n)) } }
            h2 { "System VMs: virtual firewalls (VFW)" }
            p class="muted" {
                "One per cloudspace; its cloudspace's network is down while it is not running. "
                a href="/vms?kind=vfw" { "All VFWs" }
            }
            table class="grid" id="system-vms" { (vm_head) tbody id="system-vms-body" { (system_vm_rows(n)) } }
            (checks)
        }
        @if auth.can_act() {
            @if offers_maintenance(auth, n, now) { (maintenance_dialog(auth, n, plan)) }
            @if enable_blocker(auth, n).is_none() { (enable_dialog(auth, n)) }
        }
    };
    page(Some(auth), Nav::Stacks, &format!("Stack {node}"), body)
}

pub async fn stack(
    State(st): State<Arc<Portal>>,
    auth: Auth,
    Path(node): Path<String>,
) -> Response {
    let Some(n) = st.c.registry.get(&node) else {
        let known: Vec<String> = st.c.registry.all().into_iter().map(|n| n.name).collect();
        return html::error_page(
            Some(&auth),
            StatusCode::NOT_FOUND,
            "Unknown stack",
            &format!(
                "unknown node {node:?} (known nodes: {})",
                if known.is_empty() {
                    "none yet".into()
                } else {
                    known.join(", ")
                }
            ),
        );
    };
    let now = now();
    let plan = if offers_maintenance(&auth, &n, now) {
        drain_plan(&st, &auth, &n.name).await
    } else {
        Ok(None)
    };
    let checks = super::checks::gather(&st, &auth, &n).await;
    let checks = super::checks::section(&auth, &n, now, &checks);
    respond(StatusCode::OK, stack_page(&auth, &n, now, &plan, checks))
}

// ------------------------------------------------------- Virtual Machines

#[derive(Deserialize, Default, Debug)]
pub struct VmFilter {
    #[serde(default)]
    name: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    cloudspace: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    state: String,
}

fn select(name: &str, current: &str, options: &[(String, String)]) -> Markup {
    html! {
        select name=(name) id={ "f-" (name) } {
            @for (v, label) in options {
                option value=(v) selected[v == current] { (label) }
            }
        }
    }
}

/// The Virtual Machines page: the API's list (already filtered by node,
/// cloudspace, kind and state), narrowed by name here.
pub fn vms_page(auth: &Auth, f: &VmFilter, entries: &[pb::VmEntry], all: &[NodeRecord]) -> Markup {
    let needle = f.name.to_lowercase();
    let shown: Vec<(&pb::VmEntry, Vm)> = entries
        .iter()
        .map(|e| (e, Vm::from(&e.domain.clone().unwrap_or_default())))
        .filter(|(_, vm)| needle.is_empty() || vm.name.to_lowercase().contains(&needle))
        .collect();
    let mut nodes: Vec<(String, String)> = vec![(String::new(), "any stack".into())];
    nodes.extend(all.iter().map(|n| (n.name.clone(), n.name.clone())));
    let mut css: Vec<String> = all
        .iter()
        .flat_map(|n| n.domains.iter().filter_map(|d| d.cloudspace.clone()))
        .collect();
    css.sort();
    css.dedup();
    let mut cs_opts: Vec<(String, String)> = vec![(String::new(), "any cloudspace".into())];
    cs_opts.extend(css.into_iter().map(|c| (c.clone(), c)));
    let kinds = [
        ("", "any kind"),
        ("user", "user VMs"),
        ("vfw", "virtual firewalls (VFW)"),
    ]
    .map(|(a, b)| (a.to_string(), b.to_string()));
    let states = [
        ("", "any state"),
        ("running", "running"),
        ("shutoff", "shut off"),
        ("paused", "paused"),
    ]
    .map(|(a, b)| (a.to_string(), b.to_string()));
    let body = html! {
        div class="titlebar" { h1 { "Virtual Machines" } }
        p class="quick" {
            a href="/vms" id="q-all" { "All VMs" } " · "
            a href="/vms?kind=vfw" id="q-vfw" { "Virtual firewalls (VFW)" } " · "
            a href="/vms?kind=user" { "User VMs" } " · "
            a href="/vms?state=shutoff" { "Shut off" }
        }
        form method="get" action="/vms" class="filters" id="vm-filter" {
            label { "Name " input name="name" id="f-name" value=(f.name) placeholder="contains…"; }
            label { "Stack " (select("node", &f.node, &nodes)) }
            label { "Cloudspace " (select("cloudspace", &f.cloudspace, &cs_opts)) }
            label { "Kind " (select("kind", &f.kind.to_ascii_lowercase(), &kinds)) }
            label { "State " (select("state", &f.state.to_ascii_lowercase(), &states)) }
            button type="submit" { "Filter" }
        }
        p class="muted" id="vm-count" { (shown.len()) " VMs" }
        table class="grid" id="vms" {
            thead { tr {
                th { "Name" } th { "Kind" } th { "Stack" } th { "Cloudspace" } th { "State" }
                th { "vCPUs" } th { "Memory" } th {}
            } }
            tbody {
                @if shown.is_empty() {
                    (empty_row(8, "No VM matches the filter."))
                }
                @for (e, vm) in &shown {
                    tr data-vm=(vm.name) {
                        td { a href={ "/vms/" (url(&vm.name)) } { (vm.name) } }
                        td { @if vm.kind == VmKind::Vfw { (badge("vfw", "VFW")) } @else { "user" } }
                        td { (node_link(&e.node)) }
                        td { @if let Some(cs) = &vm.cloudspace { (cs_link(cs)) } }
                        td { (vm_badge(vm.state)) }
                        td class="num" { (vm.vcpus) }
                        td class="num" { (mib(vm.memory_mib)) }
                        td { @if !e.stopped_by.is_empty() { "stopped by " (job_link(&e.stopped_by)) } }
                    }
                }
            }
        }
    };
    page(Some(auth), Nav::Vms, "Virtual Machines", body)
}

pub async fn vms(State(st): State<Arc<Portal>>, auth: Auth, Query(f): Query<VmFilter>) -> Response {
    let kind = match f.kind.to_ascii_lowercase().as_str() {
        "" | "all" => pb::VmKind::Unspecified,
        "user" => pb::VmKind::User,
        "vfw" => pb::VmKind::Vfw,
        other => {
            return html::error_page(
                Some(&auth),
                StatusCode::BAD_REQUEST,
                "Bad filter",
                &format!("unknown kind {other:?}: use user or vfw"),
            )
        }
    };
    let state = match f.state.to_ascii_lowercase().as_str() {
        "" | "all" => pb::VmState::Unspecified,
        "running" => pb::VmState::Running,
        "shutoff" => pb::VmState::Shutoff,
        "paused" => pb::VmState::Paused,
        "migrating" => pb::VmState::Migrating,
        "crashed" => pb::VmState::Crashed,
        other => {
            return html::error_page(
                Some(&auth),
                StatusCode::BAD_REQUEST,
                "Bad filter",
                &format!(
                    "unknown state {other:?}: use running, shutoff, paused, migrating or crashed"
                ),
            )
        }
    };
    let reply = st
        .api(
            &auth.user,
            Req::ListVms(pb::ListVms {
                node: f.node.clone(),
                cloudspace: f.cloudspace.clone(),
                kind: kind as i32,
                state: state as i32,
            }),
        )
        .await;
    let entries = match reply {
        Ok(Reply::Vms(l)) => l.vms,
        Ok(_) => Vec::new(),
        Err(e) => return e.page(Some(&auth), "Cannot list VMs"),
    };
    let all = st.c.registry.all();
    respond(StatusCode::OK, vms_page(&auth, &f, &entries, &all))
}

/// One VM and what an operator may do with it: start it when shut off;
/// move it (the planner's destinations, best first, with each stack's free
/// memory) or stop it (after a confirmation, as the CLI's) when running.
/// `None` when no stack reports the VM.
pub fn vm_page(auth: &Auth, all: &[NodeRecord], name: &str, now: i64) -> Option<Markup> {
    let places: Vec<(&NodeRecord, &Vm)> = all
        .iter()
        .flat_map(|n| n.domains.iter().map(move |d| (n, d)))
        .filter(|(_, d)| d.name == name)
        .collect();
    let &(n, d) = places.first()?;
    let body = html! {
        nav class="crumbs" { a href="/vms" { "Virtual Machines" } " › " (name) }
        div class="titlebar" { h1 { "VM " (name) } }
        dl class="facts" id="vm-facts" {
            div { dt { "Kind" } dd {
                @if d.kind == VmKind::Vfw { (badge("vfw", "VFW (system)")) } @else { "user" }
            } }
            div { dt { "Stack" } dd id="vm-node" { (node_link(&n.name)) } }
            div { dt { "Cloudspace" } dd { @if let Some(cs) = &d.cloudspace { (cs_link(cs)) } } }
            div { dt { "State" } dd id="vm-state" { (vm_badge(d.state)) } }
            (fact("vCPUs", html! { (d.vcpus) }))
            (fact("Memory", html! { (mib(d.memory_mib)) }))
            @if let Some(j) = n.stopped_by.get(&d.name) { (fact("Stopped by", job_link(j))) }
        }
        h2 { "Actions" }
        @if places.len() > 1 {
            p class="plan bad" id="vm-actions" {
                (name) " is reported by several stacks ("
                (places.iter().map(|(n, _)| n.name.as_str()).collect::<Vec<_>>().join(", "))
                "); resolve this before acting on it."
            }
        } @else if !auth.can_act() {
            p class="note" id="vm-actions" { "Start, stop and move: " (NEEDS_OPERATOR) "." }
        } @else {
            (vm_actions(auth, all, n, d, now))
        }
    };
    Some(page(Some(auth), Nav::Vms, &format!("VM {name}"), body))
}

pub async fn vm(State(st): State<Arc<Portal>>, auth: Auth, Path(name): Path<String>) -> Response {
    let all = st.c.registry.all();
    match vm_page(&auth, &all, &name, now()) {
        Some(p) => respond(StatusCode::OK, p),
        None => html::error_page(
            Some(&auth),
            StatusCode::NOT_FOUND,
            "Unknown VM",
            &format!("unknown VM {name:?}: no stack reports it"),
        ),
    }
}

fn vm_actions(auth: &Auth, all: &[NodeRecord], n: &NodeRecord, d: &Vm, now: i64) -> Markup {
    use nodemaint_proto::model::VmState;
    let vm = url(&d.name);
    match d.state {
        VmState::Shutoff => html! {
            form method="post" action={ "/vms/" (vm) "/start" } id="vm-start-form" class="filters" {
                (csrf_field(auth))
                button type="submit" class="primary" id="vm-start-submit" { "Start" }
                " "
                small {
                    "Starts " (d.name) " on " (n.name)
                    @if n.status != NodeStatus::Enabled {
                        " (the stack is not enabled: the coordinator refuses, saying why)"
                    }
                    "."
                }
            }
        },
        VmState::Running => {
            let fleet = crate::fleet::snapshot(all, now);
            let dests = planner::feasible_destinations(&fleet, &d.name, &[]);
            let free = |node: &str| {
                all.iter()
                    .find(|r| r.name == node)
                    .map(|r| r.capacity.memory_mib.saturating_sub(r.memory_used_mib()))
                    .unwrap_or(0)
            };
            let none = dests.is_empty();
            html! {
                form method="post" action={ "/vms/" (vm) "/move" } id="vm-move-form" class="filters" {
                    (csrf_field(auth))
                    label {
                        "Live-migrate " (d.name) " from " (n.name) " to "
                        select name="to_node" id="vm-to-node" disabled[none] {
                            @for (i, to) in dests.iter().enumerate() {
                                option value=(to) {
                                    (to) " · " (mib(free(to))) " free"
                                    @if i == 0 { " (recommended)" }
                                }
                            }
                        }
                    }
                    " "
                    button type="submit" class="primary" id="vm-move-submit" disabled[none] { "Move" }
                    @if none {
                        " "
                        small class="why" id="vm-move-why" {
                            "no other stack can take this VM now (capacity, status, anti-affinity)"
                        }
                    }
                }
                p class="muted" {
                    "Only stacks the planner accepts are offered (enabled, reachable, with room, anti-affinity), best first."
                }
                form method="post" action={ "/vms/" (vm) "/stop" } id="vm-stop-form" class="filters" {
                    (csrf_field(auth))
                    label {
                        input type="checkbox" name="confirm" value="yes" id="vm-stop-confirm" required;
                        " Stop " (d.name)
                        ": the guest is asked to shut down, and forced off after the timeout."
                        @if d.kind == VmKind::Vfw {
                            " This is cloudspace " (d.cloudspace.as_deref().unwrap_or("?"))
                            "'s virtual firewall: its network is down until the VFW runs again."
                        }
                    }
                    " "
                    button type="submit" id="vm-stop-submit" { "Stop" }
                }
            }
        }
        other => html! {
            p class="note" id="vm-actions" {
                "No action while the VM is " (format!("{other:?}").to_lowercase()) "."
            }
        },
    }
}

// ------------------------------------------------------------ Cloudspaces

async fn vfw_list(st: &Portal, auth: &Auth) -> Result<Vec<pb::VfwEntry>, super::ApiError> {
    match st.api(&auth.user, Req::ListVfws(pb::ListVfws {})).await? {
        Reply::Vfws(l) => Ok(l.vfws),
        _ => Ok(Vec::new()),
    }
}

pub fn cloudspaces_page(auth: &Auth, vfws: &[pb::VfwEntry], all: &[NodeRecord]) -> Markup {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in all {
        for d in &n.domains {
            if let (Some(cs), VmKind::User) = (&d.cloudspace, d.kind) {
                *counts.entry(cs.as_str()).or_default() += 1;
            }
        }
    }
    let body = html! {
        div class="titlebar" { h1 { "Cloudspaces" } }
        p class="muted" { "Each cloudspace (private network) has one virtual firewall (VFW), a system VM." }
        table class="grid" id="cloudspaces" {
            thead { tr {
                th { "Cloudspace" } th { "VFW" } th { "Runs on" } th { "State" } th { "User VMs" }
            } }
            tbody {
                @if vfws.is_empty() { (empty_row(5, "No cloudspace known.")) }
                @for v in vfws {
                    @let d = v.domain.clone().unwrap_or_default();
                    tr data-cloudspace=(v.cloudspace) {
                        td { (cs_link(&v.cloudspace)) }
                        @if v.node.is_empty() {
                            td { (badge("st-unreachable", "no VFW found")) }
                            td {}
                            td {}
                        } @else {
                            td { (d.name) }
                            td { (node_link(&v.node)) }
                            td { (vm_badge(d.state().into())) }
                        }
                        td class="num" { (counts.get(v.cloudspace.as_str()).copied().unwrap_or(0)) }
                    }
                }
            }
        }
    };
    page(Some(auth), Nav::Cloudspaces, "Cloudspaces", body)
}

pub async fn cloudspaces(State(st): State<Arc<Portal>>, auth: Auth) -> Response {
    let vfws = match vfw_list(&st, &auth).await {
        Ok(v) => v,
        Err(e) => return e.page(Some(&auth), "Cannot list cloudspaces"),
    };
    let all = st.c.registry.all();
    respond(StatusCode::OK, cloudspaces_page(&auth, &vfws, &all))
}

/// One cloudspace: where its VFW runs, Move VFW, its user VMs. `None` when
/// no node reports a VM of it.
pub fn cloudspace_page(
    auth: &Auth,
    cs: &str,
    vfws: &[pb::VfwEntry],
    all: &[NodeRecord],
    now: i64,
) -> Option<Markup> {
    let mine: Vec<&pb::VfwEntry> = vfws.iter().filter(|v| v.cloudspace == cs).collect();
    if mine.is_empty() {
        return None;
    }
    let vfw = mine.iter().find(|v| !v.node.is_empty());
    let facts = match vfw {
        Some(v) => {
            let d = v.domain.clone().unwrap_or_default();
            html! {
                div { dt { "Virtual firewall" } dd id="vfw-name" { (d.name) } }
                div { dt { "Runs on" } dd id="vfw-node" { (node_link(&v.node)) } }
                (fact("State", vm_badge(d.state().into())))
                (fact("Stack reachable", html! { (if v.node_reachable { "yes" } else { "no" }) }))
                (fact("Memory", html! { (mib(d.memory_mib)) }))
            }
        }
        None => html! {
            div { dt { "Virtual firewall" } dd id="vfw-name" {
                (badge("st-unreachable", "no node reports this cloudspace's VFW"))
            } }
        },
    };
    let move_form = vfw.map(|v| {
        let name = v.domain.clone().unwrap_or_default().name;
        let fleet = crate::fleet::snapshot(all, now);
        let dests = planner::feasible_destinations(&fleet, &name, &[]);
        let why = if !auth.can_act() {
            Some(NEEDS_OPERATOR)
        } else if dests.is_empty() {
            Some("no other stack can take this VFW now")
        } else {
            None
        };
        html! {
            h2 { "Move VFW" }
            form method="post" action={ "/cloudspaces/" (url(cs)) "/move-vfw" } class="filters" id="move-vfw-form" {
                (csrf_field(auth))
                label {
                    "Live-migrate " (name) " from " (v.node) " to "
                    select name="to_node" id="to-node" disabled[why.is_some()] {
                        @for (i, d) in dests.iter().enumerate() {
                            option value=(d) { (d) @if i == 0 { " (recommended)" } }
                        }
                    }
                }
                " "
                button type="submit" class="primary" id="move-vfw-submit" disabled[why.is_some()] { "Move VFW" }
                @if let Some(w) = why { " " small class="why" id="move-vfw-why" { (w) } }
            }
            p class="muted" {
                "Only stacks the planner accepts are offered (enabled, reachable, with room, not already running another VFW when avoidable), best first."
            }
        }
    });
    let vms: Vec<(&NodeRecord, &Vm)> = all
        .iter()
        .flat_map(|n| n.domains.iter().map(move |d| (n, d)))
        .filter(|(_, d)| d.cloudspace.as_deref() == Some(cs) && d.kind == VmKind::User)
        .collect();
    let body = html! {
        nav class="crumbs" { a href="/cloudspaces" { "Cloudspaces" } " › " (cs) }
        div class="titlebar" { h1 { "Cloudspace " (cs) } }
        dl class="facts" id="cs-facts" { (facts) }
        @if let Some(f) = move_form { (f) }
        h2 { "Virtual machines" }
        table class="grid" id="cs-vms" {
            thead { tr { th { "Name" } th { "Stack" } th { "State" } th { "Memory" } } }
            tbody {
                @if vms.is_empty() { (empty_row(4, "No user VM in this cloudspace.")) }
                @for (n, d) in &vms {
                    tr {
                        td { (d.name) }
                        td { (node_link(&n.name)) }
                        td { (vm_badge(d.state)) }
                        td class="num" { (mib(d.memory_mib)) }
                    }
                }
            }
        }
    };
    Some(page(
        Some(auth),
        Nav::Cloudspaces,
        &format!("Cloudspace {cs}"),
        body,
    ))
}

pub async fn cloudspace(
    State(st): State<Arc<Portal>>,
    auth: Auth,
    Path(cs): Path<String>,
) -> Response {
    let vfws = match vfw_list(&st, &auth).await {
        Ok(v) => v,
        Err(e) => return e.page(Some(&auth), "Cannot list cloudspaces"),
    };
    let all = st.c.registry.all();
    match cloudspace_page(&auth, &cs, &vfws, &all, now()) {
        Some(p) => respond(StatusCode::OK, p),
        None => html::error_page(
            Some(&auth),
            StatusCode::NOT_FOUND,
            "Unknown cloudspace",
            &format!("unknown cloudspace {cs:?}: no node reports a VM of it"),
        ),
    }
}

// ------------------------------------------------------------------- Jobs

fn state_word(j: &Job) -> String {
    format!("{:?}", j.state).to_uppercase()
}

pub fn jobs_rows(jobs: &[Job]) -> Markup {
    if jobs.is_empty() {
        return empty_row(7, "No job yet.");
    }
    html! {
        @for j in jobs {
            tr data-job=(j.id) {
                td { (job_link(&j.id)) }
                td { (j.kind()) }
                td { @if let Some(n) = &j.node { (node_link(n)) } }
                td { (j.user) }
                td { (job_badge(&state_word(j))) }
                td { (fmt_ts(j.created_ms)) }
                td { (j.outcome.as_deref().unwrap_or("")) }
            }
        }
    }
}

/// The jobs page shows the newest this many (the CLI's `job list --limit`
/// reaches further back).
pub const PORTAL_JOBS: usize = 200;

pub fn jobs_page(auth: &Auth, jobs: &[Job]) -> Markup {
    let body = html! {
        div id="live-root" data-live="/events/jobs" {
            div class="titlebar" { h1 { "Jobs" } span class="live" id="live" { "live" } }
            p class="muted" { "Every maintenance, enable, move, start and stop, with who asked for it." }
            table class="grid" id="jobs" {
                thead { tr {
                    th { "Job" } th { "Kind" } th { "Stack" } th { "User" } th { "State" }
                    th { "Started" } th { "Outcome" }
                } }
                tbody id="jobs-body" { (jobs_rows(jobs)) }
            }
        }
    };
    page(Some(auth), Nav::Jobs, "Jobs", body)
}

pub async fn jobs(State(st): State<Arc<Portal>>, auth: Auth) -> Response {
    let jobs = st.c.jobs.list(PORTAL_JOBS).jobs;
    respond(StatusCode::OK, jobs_page(&auth, &jobs))
}

/// Live migration/step progress per VM, from progress events.
pub type LiveProgress = HashMap<String, (f64, String)>;

pub fn job_facts(j: &Job) -> Markup {
    html! {
        (fact("State", job_badge(&state_word(j))))
        (fact("Kind", html! { (j.kind()) }))
        (fact("Stack", html! { @if let Some(n) = &j.node { (node_link(n)) } }))
        (fact("Requested by", html! { (j.user) }))
        (fact("Started", html! { (fmt_ts(j.created_ms)) }))
        (fact("Updated", html! { (fmt_ts(j.updated_ms)) }))
        @if let Some(m) = j.spec.mode() { (fact("Mode", html! { (m) })) }
        @if let crate::jobs::JobSpec::StopAll(stop) = &j.spec {
            @if !stop.vfw_cloudspaces_down.is_empty() {
                (fact("VFW downtime acknowledged for", html! { (stop.vfw_cloudspaces_down.join(", ")) }))
            }
        }
        @if let Some(o) = &j.outcome {
            (fact("Outcome", html! { span id="job-outcome" { (o) } }))
        }
    }
}

/// One row per VM the job acts on: its action, progress and result.
pub fn job_progress_rows(j: &Job, live: &LiveProgress) -> Markup {
    struct Row {
        vm: String,
        action: String,
        target: String,
        ok: Option<bool>,
        message: String,
    }
    let mut rows: Vec<Row> = Vec::new();
    for c in &j.commands {
        let row = Row {
            vm: c.vm.clone(),
            action: c.action.clone(),
            target: c.to.clone().unwrap_or_else(|| c.node.clone()),
            ok: c.ok,
            message: c.message.clone().unwrap_or_default(),
        };
        // A retry replaces the earlier attempt's row.
        match rows.iter_mut().find(|r| r.vm == c.vm) {
            Some(r) => *r = row,
            None => rows.push(row),
        }
    }
    // Planned moves not started yet.
    let planned = match &j.spec {
        crate::jobs::JobSpec::Drain(d) => d.plan.as_ref().map(|p| p.moves.as_slice()),
        _ => None,
    };
    for m in planned.unwrap_or_default() {
        if !m.vm.is_empty() && !rows.iter().any(|r| r.vm == m.vm) {
            rows.push(Row {
                vm: m.vm.clone(),
                action: "migrate".into(),
                target: m.to.clone(),
                ok: None,
                message: String::new(),
            });
        }
    }
    // The end report is the last word on what happened.
    if let Some(rep) = &j.report {
        for (lines, ok) in [(&rep.done, true), (&rep.not_done, false)] {
            for l in lines {
                match rows.iter_mut().find(|r| r.vm == l.vm) {
                    Some(r) => {
                        r.ok = Some(ok);
                        r.message = l.detail.clone();
                    }
                    None => rows.push(Row {
                        vm: l.vm.clone(),
                        action: String::new(),
                        target: String::new(),
                        ok: Some(ok),
                        message: l.detail.clone(),
                    }),
                }
            }
        }
    }
    if rows.is_empty() {
        return empty_row(5, "No VM step yet.");
    }
    let terminal = j.state.is_terminal();
    html! {
        @for r in &rows {
            @let (pct, step) = live.get(&r.vm).cloned().unwrap_or((0.0, String::new()));
            @let pct = if r.ok == Some(true) { 100.0 } else { pct };
            @let status = match r.ok {
                Some(true) => badge("ok", "done"),
                Some(false) => badge("failed", "failed"),
                None if terminal => badge("failed", "not done"),
                None if pct > 0.0 || !step.is_empty() => {
                    badge("running", if step.is_empty() { "running" } else { &step })
                }
                None => badge("pending", "pending"),
            };
            @let p = format!("{:.0}", pct.clamp(0.0, 100.0));
            tr data-vm=(r.vm) {
                td { (r.vm) }
                td { (r.action) }
                td { (r.target) }
                td class="pct" {
                    progress max="100" value=(p) {}
                    " " span class="pct-text" { (p) "%" }
                }
                td { (status) " " small { (r.message) } }
            }
        }
    }
}

pub fn job_journal(j: &Job) -> Markup {
    if j.steps.is_empty() {
        return html! { li class="muted" { "No step yet." } };
    }
    html! {
        @for s in &j.steps {
            li {
                time { (fmt_ts(s.ts_ms)) } " "
                @match s.ok {
                    Some(true) => (badge("ok", "ok")),
                    Some(false) => (badge("failed", "failed")),
                    None => {},
                }
                " " (s.message)
            }
        }
    }
}

pub fn job_report(j: &Job) -> Markup {
    if !j.state.is_terminal() {
        return html! { p class="muted" { "The report appears when the job ends." } };
    }
    let ok = j.state == crate::jobs::JobState::Succeeded;
    let list = |lines: &[crate::jobs::ReportLine]| {
        html! { @for l in lines { li { b { (l.vm) } ": " (l.detail) } } }
    };
    html! {
        div class={ "alert " (if ok { "ok" } else { "error" }) } id="job-end" {
            strong { (state_word(j)) } ": " (j.outcome.as_deref().unwrap_or(""))
        }
        @if let Some(r) = &j.report {
            @if !r.done.is_empty() {
                h3 { "Done (" (r.done.len()) ")" }
                ul id="report-done" { (list(&r.done)) }
            }
            @if !r.not_done.is_empty() {
                h3 { "Not done (" (r.not_done.len()) ")" }
                ul id="report-not-done" { (list(&r.not_done)) }
            }
        }
    }
}

/// The fragments of the job view that live updates replace.
pub fn job_fragments(j: &Job, live: &LiveProgress) -> serde_json::Value {
    serde_json::json!({
        "job-badge": job_badge(&state_word(j)).into_string(),
        "job-facts": job_facts(j).into_string(),
        "job-progress-body": job_progress_rows(j, live).into_string(),
        "job-journal": job_journal(j).into_string(),
        "job-report": job_report(j).into_string(),
    })
}

pub fn job_page(auth: &Auth, j: &Job) -> Markup {
    let terminal = j.state.is_terminal();
    let body = html! {
        div id="live-root" data-live=[(!terminal).then(|| format!("/events/jobs/{}", url(&j.id)))] {
            nav class="crumbs" { a href="/jobs" { "Jobs" } " › " code { (j.id) } }
            div class="titlebar" {
                h1 { "Job " (j.kind()) " " span id="job-badge" { (job_badge(&state_word(j))) } }
                span class="live" id="live" { (if terminal { "ended" } else { "live" }) }
            }
            (abort_form(auth, j))
            dl class="facts" id="job-facts" { (job_facts(j)) }
            h2 { "Progress" }
            table class="grid" id="job-progress" {
                thead { tr {
                    th { "VM" } th { "Action" } th { "To / on" } th { "Progress" } th { "Result" }
                } }
                tbody id="job-progress-body" { (job_progress_rows(j, &LiveProgress::new())) }
            }
            h2 { "Report" }
            div id="job-report" { (job_report(j)) }
            h2 { "Journal" }
            ol class="journal" id="job-journal" { (job_journal(j)) }
        }
    };
    page(
        Some(auth),
        Nav::Jobs,
        &format!("Job {}", crate::cli::output::short(&j.id)),
        body,
    )
}

pub async fn job(State(st): State<Arc<Portal>>, auth: Auth, Path(id): Path<String>) -> Response {
    match st.c.jobs.get(&id).await {
        Some(j) => respond(StatusCode::OK, job_page(&auth, &j)),
        None => html::error_page(
            Some(&auth),
            StatusCode::NOT_FOUND,
            "Unknown job",
            &format!("unknown job {id:?}"),
        ),
    }
}

/// The Abort button of a running job (operators only): nothing new starts,
/// migrations in flight are cancelled, the report says where every VM is.
fn abort_form(auth: &Auth, j: &Job) -> Markup {
    html! {
        @if j.state.is_terminal() {
        } @else if !auth.can_act() {
            p class="note" { "Abort: " (NEEDS_OPERATOR) "." }
        } @else {
            form method="post" action={ "/jobs/" (url(&j.id)) "/abort" } id="abort-form" {
                (csrf_field(auth))
                button type="submit" id="abort-submit" { "Abort" }
                " "
                small {
                    "Nothing new starts; migrations in flight are cancelled (their VMs keep running on the source); a node in maintenance stays in maintenance."
                }
            }
        }
    }
}

/// VM state as JSON words, for `/api/stacks`.
pub fn vm_json(n: &NodeRecord, d: &Vm) -> serde_json::Value {
    serde_json::json!({
        "name": d.name,
        "kind": if d.kind == VmKind::Vfw { "VFW" } else { "USER" },
        "cloudspace": d.cloudspace,
        "state": html::vm_state_word(d.state),
        "vcpus": d.vcpus,
        "memory_mib": d.memory_mib,
        "stopped_by": n.stopped_by.get(&d.name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{CommandRecord, JobSpec, JobState, Report, ReportLine, Step, StopAll};
    use nodemaint_proto::model::{Capacity, VmState};

    /// A name that breaks out of element content and of both quotings.
    const H: &str = r#"<script>"'&"#;
    const ESCAPED: &str = "&lt;script&gt;&quot;'&amp;";

    fn hostile(tag: &str) -> String {
        format!("{tag}{H}")
    }

    fn vm(name: &str, kind: VmKind, state: VmState, cs: &str) -> Vm {
        Vm {
            name: name.into(),
            kind,
            state,
            cloudspace: Some(cs.into()),
            vcpus: 2,
            memory_mib: 1024,
            ..Default::default()
        }
    }

    fn node(name: &str, now: i64, domains: Vec<Vm>) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            status: NodeStatus::Enabled,
            address: hostile("addr"),
            libvirt_uri: hostile("qemu"),
            agent_version: hostile("v"),
            capacity: Capacity {
                vcpus: 32,
                memory_mib: 64 * 1024,
            },
            last_seen_ms: now,
            heartbeat_interval_ms: 1000,
            domains,
            ..Default::default()
        }
    }

    /// The page shows the hostile text, escaped, and never as markup.
    fn assert_escaped(what: &str, html: &str) {
        assert!(!html.contains("<script>"), "{what}: raw markup in {html}");
        assert!(!html.contains(H), "{what}: unescaped {html}");
        assert!(
            html.contains(ESCAPED),
            "{what}: hostile text not shown: {html}"
        );
    }

    #[test]
    fn hostile_names_are_escaped_on_every_page() {
        let now = nodemaint_proto::now_ms();
        let (n1, n2, cs) = (hostile("n1"), hostile("n2"), hostile("cs"));
        let (user_vm, vfw, off) = (hostile("vm"), hostile("vfw"), hostile("off"));
        let mut a = node(
            &n1,
            now,
            vec![
                vm(&user_vm, VmKind::User, VmState::Running, &cs),
                vm(&vfw, VmKind::Vfw, VmState::Running, &cs),
                vm(&off, VmKind::User, VmState::Shutoff, &cs),
            ],
        );
        let b = node(&n2, now, Vec::new());
        let mut job = Job::new(
            JobSpec::StopAll(StopAll {
                vfw_cloudspaces_down: vec![cs.clone()],
                ..Default::default()
            }),
            &hostile("user"),
            Some(&n1),
        );
        job.id = hostile("job");
        job.state = JobState::Failed;
        job.outcome = Some(hostile("outcome"));
        job.steps.push(Step {
            ts_ms: now,
            message: hostile("step"),
            vm: None,
            ok: Some(false),
        });
        job.commands.push(CommandRecord {
            id: "c1".into(),
            node: n1.clone(),
            vm: user_vm.clone(),
            action: hostile("stop"),
            to: None,
            payload: String::new(),
            ok: Some(false),
            message: Some(hostile("message")),
        });
        job.report = Some(Report {
            done: vec![ReportLine {
                vm: vfw.clone(),
                detail: hostile("detail"),
            }],
            not_done: Vec::new(),
        });
        a.current_job = Some(job.id.clone());
        a.stopped_by.insert(off.clone(), job.id.clone());
        let all = vec![a.clone(), b];
        let operator = Auth {
            user: hostile("alice"),
            groups: vec!["Level2".into()],
            csrf: hostile("csrf"),
            token: String::new(),
        };
        let reader = Auth {
            groups: vec![hostile("group")],
            ..operator.clone()
        };
        let entries: Vec<pb::VmEntry> = a
            .domains
            .iter()
            .map(|d| pb::VmEntry {
                node: n1.clone(),
                domain: Some(d.into()),
                stopped_by: a.stopped_by.get(&d.name).cloned().unwrap_or_default(),
            })
            .collect();
        let vfws = vec![pb::VfwEntry {
            cloudspace: cs.clone(),
            node: n1.clone(),
            domain: Some((&a.domains[1]).into()),
            node_reachable: true,
        }];
        let filter = VmFilter {
            name: hostile("filter"),
            node: n1.clone(),
            ..Default::default()
        };
        let preview = Ok(Some(planner::DrainReport {
            node: n1.clone(),
            feasible: false,
            waves: 0,
            moves: Vec::new(),
            unplaced: vec![planner::Unplaced {
                vm: user_vm.clone(),
                reason: hostile("reason"),
            }],
        }));
        // Free of its job, the node offers Put in Maintenance with the preview.
        let mut free = a.clone();
        free.current_job = None;
        // In maintenance, it offers Enable, naming the VMs it restarts.
        let maint = NodeRecord {
            status: NodeStatus::Maintenance,
            ..free.clone()
        };
        let mut pages: Vec<(String, Markup)> = vec![
            ("stacks".into(), stacks_page(&reader, &all, now)),
            (
                "stack".into(),
                stack_page(&reader, &a, now, &Ok(None), html! {}),
            ),
            (
                "stack+dialog".into(),
                stack_page(&operator, &free, now, &preview, html! {}),
            ),
            (
                "stack+refusal".into(),
                stack_page(&operator, &free, now, &Err(hostile("refused")), html! {}),
            ),
            (
                "stack+enable".into(),
                stack_page(&operator, &maint, now, &Ok(None), html! {}),
            ),
            ("vms".into(), vms_page(&reader, &filter, &entries, &all)),
            ("cloudspaces".into(), cloudspaces_page(&reader, &vfws, &all)),
            (
                "jobs".into(),
                jobs_page(&reader, std::slice::from_ref(&job)),
            ),
            ("job".into(), job_page(&operator, &job)),
            (
                "login".into(),
                super::super::auth::login_form(&hostile("next"), Some(H), &hostile("u"), H),
            ),
            (
                "error".into(),
                html::page(
                    Some(&reader),
                    Nav::None,
                    H,
                    html::error_body(StatusCode::CONFLICT, H, H),
                ),
            ),
        ];
        for v in [&user_vm, &vfw, &off] {
            for who in [&operator, &reader] {
                pages.push((format!("vm {v}"), vm_page(who, &all, v, now).unwrap()));
            }
        }
        for who in [&operator, &reader] {
            pages.push((
                "cloudspace".into(),
                cloudspace_page(who, &cs, &vfws, &all, now).unwrap(),
            ));
        }
        // The live fragments, as the SSE streams send them.
        let fragments = job_fragments(&job, &LiveProgress::new()).to_string();
        let fragments: serde_json::Value = serde_json::from_str(&fragments).unwrap();
        for (id, f) in fragments.as_object().unwrap() {
            if id != "job-badge" {
                pages.push((
                    id.clone(),
                    maud::PreEscaped(f.as_str().unwrap().to_string()),
                ));
            }
        }
        job.state = JobState::Running;
        pages.push(("running job".into(), job_page(&operator, &job)));
        pages.push(("stacks-body".into(), stacks_rows(&all, now)));
        pages.push(("node-facts".into(), node_facts(&a, now)));
        pages.push(("user-vms-body".into(), user_vm_rows(&a)));
        pages.push(("system-vms-body".into(), system_vm_rows(&a)));
        for (what, p) in &pages {
            assert_escaped(what, &p.0);
        }
        // Every hostile value the fixtures hold shows up somewhere, escaped.
        let all_html: String = pages.iter().map(|(_, p)| p.0.as_str()).collect();
        for tag in [
            "n1", "n2", "cs", "vm", "vfw", "off", "job", "user", "outcome", "step", "stop",
            "message", "detail", "alice", "group", "csrf", "filter", "reason", "refused", "addr",
            "qemu", "v", "next", "u",
        ] {
            let want = format!("{tag}{ESCAPED}");
            assert!(all_html.contains(&want), "{want} not rendered");
        }
    }
}
