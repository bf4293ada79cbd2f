//! The read-only pages (any logged-in user) and the HTML fragments that the
//! live updates re-send (`live.rs`), so each piece is rendered in one place.

use super::auth::Auth;
use super::html::{
    self, badge, cs_link, csrf_field, esc, job_badge, job_link, node_badges, node_link, page,
    respond, url, vm_badge, Nav, NEEDS_OPERATOR,
};
use super::Portal;
use crate::cli::output::{fmt_ts, mib};
use crate::jobs::Job;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
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

// ---------------------------------------------------------------- Stacks

/// The rows of the Stacks table.
pub fn stacks_rows(nodes: &[NodeRecord], now: i64) -> String {
    if nodes.is_empty() {
        return r#"<tr><td colspan="7" class="muted">No stack has registered yet: start a node-agent.</td></tr>"#.into();
    }
    let mut s = String::new();
    for n in nodes {
        let vfws = n.domains.iter().filter(|d| d.kind == VmKind::Vfw).count();
        s.push_str(&format!(
            r#"<tr data-node="{name}"><td>{link}</td><td class="status">{badges}</td><td class="num">{run} / {total}</td><td class="num">{used} / {cap}</td><td class="num">{vfws}</td><td>{boot}</td><td>{job}</td></tr>"#,
            name = esc(&n.name),
            link = node_link(&n.name),
            badges = node_badges(n, now),
            run = n.vms_running(),
            total = n.domains.len(),
            used = mib(n.memory_used_mib()),
            cap = mib(n.capacity.memory_mib),
            boot = fmt_ts(n.boot_time_ms),
            job = n.current_job.as_deref().map(job_link).unwrap_or_default(),
        ));
    }
    s
}

pub fn stacks_count(nodes: &[NodeRecord], now: i64) -> String {
    let maint = nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Maintenance)
        .count();
    let down = nodes.iter().filter(|n| !n.reachable_at(now)).count();
    format!(
        "{} stacks · {} in maintenance · {} unreachable",
        nodes.len(),
        maint,
        down
    )
}

pub async fn stacks(State(st): State<Arc<Portal>>, auth: Auth) -> Response {
    let nodes = st.c.registry.all();
    let now = now();
    let body = format!(
        r#"<div id="live-root" data-live="/events/stacks">
<div class="titlebar"><h1>Stacks</h1><span class="live" id="live">live</span></div>
<p class="muted" id="stacks-count">{count}</p>
<table class="grid" id="stacks">
<thead><tr><th>Stack</th><th>Status</th><th>VMs running / total</th><th>Memory used / total</th><th>VFWs</th><th>Boot time</th><th>Current job</th></tr></thead>
<tbody id="stacks-body">{rows}</tbody>
</table></div>"#,
        count = esc(&stacks_count(&nodes, now)),
        rows = stacks_rows(&nodes, now),
    );
    respond(
        StatusCode::OK,
        page(Some(&auth), Nav::Stacks, "Stacks", &body),
    )
}

// ---------------------------------------------------------- Stack Details

pub fn node_facts(n: &NodeRecord, now: i64) -> String {
    let fact = |k: &str, v: String| format!("<div><dt>{k}</dt><dd>{v}</dd></div>");
    let reach = if n.reachable_at(now) {
        "yes".to_string()
    } else {
        badge("st-unreachable", "unreachable")
    };
    [
        fact("Status", node_badges(n, now)),
        fact("Reachable", reach),
        fact(
            "VMs running / total",
            format!("{} / {}", n.vms_running(), n.domains.len()),
        ),
        fact(
            "Memory used / total",
            format!(
                "{} / {}",
                mib(n.memory_used_mib()),
                mib(n.capacity.memory_mib)
            ),
        ),
        fact("vCPUs", n.capacity.vcpus.to_string()),
        fact("Boot time", esc(&fmt_ts(n.boot_time_ms))),
        fact(
            "Last heartbeat",
            esc(&crate::cli::output::ago(n.last_seen_ms, now)),
        ),
        fact("Address", esc(&n.address)),
        fact(
            "libvirt URI",
            format!("<code>{}</code>", esc(&n.libvirt_uri)),
        ),
        fact("Agent version", esc(&n.agent_version)),
        fact(
            "Current job",
            n.current_job
                .as_deref()
                .map(job_link)
                .unwrap_or_else(|| "none".into()),
        ),
    ]
    .concat()
}

fn stopped_by_cell(n: &NodeRecord, vm: &str) -> String {
    n.stopped_by
        .get(vm)
        .map(|j| format!("stopped by {}", job_link(j)))
        .unwrap_or_default()
}

pub fn user_vm_rows(n: &NodeRecord) -> String {
    vm_rows(n, VmKind::User, "No user VM on this stack.")
}

pub fn system_vm_rows(n: &NodeRecord) -> String {
    vm_rows(n, VmKind::Vfw, "No virtual firewall on this stack.")
}

/// Stack Details' VM tables; each name links to the VM's page (its actions).
fn vm_rows(n: &NodeRecord, kind: VmKind, none: &str) -> String {
    let rows: Vec<String> = n
        .domains
        .iter()
        .filter(|d| d.kind == kind)
        .map(|d| {
            format!(
                r#"<tr data-vm="{name}"><td><a href="/vms/{vmurl}">{name}</a></td><td>{state}</td><td>{cs}</td><td class="num">{vcpus}</td><td class="num">{mem}</td><td>{stopped}</td></tr>"#,
                name = esc(&d.name),
                vmurl = url(&d.name),
                state = vm_badge(d.state),
                cs = d.cloudspace.as_deref().map(cs_link).unwrap_or_default(),
                vcpus = d.vcpus,
                mem = mib(d.memory_mib),
                stopped = stopped_by_cell(n, &d.name),
            )
        })
        .collect();
    if rows.is_empty() {
        return format!(r#"<tr><td colspan="6" class="muted">{none}</td></tr>"#);
    }
    rows.concat()
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

fn menu_item(id: &str, dialog: &str, label: &str, blocker: &Option<String>) -> String {
    match blocker {
        None => format!(r#"<button type="button" id="{id}" data-open="{dialog}">{label}</button>"#),
        Some(why) => format!(
            r#"<button type="button" id="{id}" disabled title="{why}">{label}</button><small class="why">{why}</small>"#,
            why = esc(why)
        ),
    }
}

fn actions_menu(auth: &Auth, n: &NodeRecord, now: i64) -> String {
    let note = if auth.can_act() {
        String::new()
    } else {
        format!(
            r#"<p class="note" id="needs-operator">Actions: {NEEDS_OPERATOR}; you are in {}.</p>"#,
            esc(&if auth.groups.is_empty() {
                "no group".into()
            } else {
                auth.groups.join(", ")
            })
        )
    };
    format!(
        r#"<details class="menu" id="actions"><summary>Actions</summary><div class="menu-items">{m}{e}</div></details>{note}"#,
        m = menu_item(
            "action-maintenance",
            "maint-dialog",
            "Put in Maintenance",
            &maintenance_blocker(auth, n, now)
        ),
        e = menu_item(
            "action-enable",
            "enable-dialog",
            "Enable",
            &enable_blocker(auth, n)
        ),
    )
}

/// The planner's preview of "Move All": where each VM would go, or which
/// VMs fit nowhere.
async fn drain_preview(st: &Portal, auth: &Auth, node: &str) -> String {
    let doc = match st
        .api(
            &auth.user,
            Req::PlanDrain(pb::PlanDrain {
                node: node.into(),
                max_parallel: 0,
            }),
        )
        .await
    {
        Ok(Reply::Json(doc)) => doc,
        Ok(_) => return String::new(),
        Err(e) => {
            return format!(
                r#"<p class="plan bad">The planner cannot plan the move now: {}</p>"#,
                esc(&e.message)
            )
        }
    };
    let Ok(r) = serde_json::from_str::<planner::DrainReport>(&doc) else {
        return String::new();
    };
    if !r.feasible {
        let items: Vec<String> = r
            .unplaced
            .iter()
            .map(|u| format!("<li><b>{}</b>: {}</li>", esc(&u.vm), esc(&u.reason)))
            .collect();
        return format!(
            r#"<div class="plan bad"><p>The other stacks cannot take every VM; Move All would be refused:</p><ul>{}</ul></div>"#,
            items.concat()
        );
    }
    if r.moves.is_empty() {
        return r#"<p class="plan">No VM to move: the stack is empty.</p>"#.into();
    }
    let items: Vec<String> = r
        .moves
        .iter()
        .map(|m| {
            format!(
                "<li>{}{} → {}</li>",
                esc(&m.vm),
                if m.kind == planner::VmKind::Vfw {
                    " <small>(VFW)</small>"
                } else {
                    ""
                },
                esc(&m.to)
            )
        })
        .collect();
    format!(
        r#"<div class="plan"><p>Planned destinations ({} VMs, {} waves, VFWs first):</p><ul>{}</ul></div>"#,
        r.moves.len(),
        r.waves,
        items.concat()
    )
}

async fn maintenance_dialog(st: &Portal, auth: &Auth, n: &NodeRecord) -> String {
    let cs = crate::api::vfw_cloudspaces(n);
    let vfw_warning = if cs.is_empty() {
        r#"<p>No virtual firewall runs on this stack, so no cloudspace loses its network.</p>"#
            .to_string()
    } else {
        let items: Vec<String> = cs.iter().map(|c| format!("<li>{}</li>", esc(c))).collect();
        format!(
            r#"<p><strong>Warning:</strong> the virtual firewall (VFW) of these cloudspaces runs on {node}. Stopping it takes their network down until {node} is enabled again:</p>
<ul id="vfw-cloudspaces">{items}</ul>
<label class="ack"><input type="checkbox" name="ack_vfw_downtime" id="ack-vfw" value="yes" data-required-for="stop"> I understand that {list} lose their network until {node} is enabled</label>"#,
            node = esc(&n.name),
            items = items.concat(),
            list = esc(&cs.join(", ")),
        )
    };
    format!(
        r#"<dialog id="maint-dialog" aria-labelledby="maint-title">
<form method="post" action="/stacks/{nurl}/maintenance" id="maint-form">
{csrf}
<h2 id="maint-title">Put {node} in maintenance</h2>
<p>{node} becomes unschedulable at once (no new VM is placed on it), then it is emptied. Choose how:</p>
<label class="option preferred"><input type="radio" name="mode" value="move" id="mode-move" checked>
<span><strong>Move All Virtual Machines</strong> <span class="badge pref">preferred</span><br>
<small>Live-migrate every VM, virtual firewalls first, to the stacks the planner picks. Tenants keep running.</small></span></label>
<div class="move-only">{preview}</div>
<label class="option"><input type="radio" name="mode" value="stop" id="mode-stop">
<span><strong>Stop All Virtual Machines</strong><br>
<small>Stop every VM on {node}, virtual firewalls included. Enable restarts exactly the VMs stopped here.</small></span></label>
<div class="stop-only warning" id="stop-warning">{vfw_warning}</div>
<div class="buttons"><button type="button" data-close>Cancel</button>
<button type="submit" class="primary" id="maint-submit">Put in Maintenance</button></div>
</form></dialog>"#,
        nurl = url(&n.name),
        node = esc(&n.name),
        csrf = csrf_field(auth),
        preview = drain_preview(st, auth, &n.name).await,
    )
}

fn enable_dialog(auth: &Auth, n: &NodeRecord) -> String {
    let restart = if n.stopped_by.is_empty() {
        format!(
            r#"<p id="enable-restart">No VM will be restarted: maintenance stopped none on {} (VMs that tenants shut off stay off).</p>"#,
            esc(&n.name)
        )
    } else {
        let items: Vec<String> = n
            .stopped_by
            .iter()
            .map(|(vm, job)| {
                let kind = n
                    .domains
                    .iter()
                    .find(|d| &d.name == vm)
                    .map(|d| if d.kind == VmKind::Vfw { " (VFW)" } else { "" })
                    .unwrap_or("");
                format!(
                    "<li><b>{}</b>{kind} <small>stopped by job {}</small></li>",
                    esc(vm),
                    job_link(job)
                )
            })
            .collect();
        format!(
            r#"<p>These {} VMs were stopped by maintenance and will be restarted:</p><ul id="enable-restart">{}</ul>"#,
            n.stopped_by.len(),
            items.concat()
        )
    };
    format!(
        r#"<dialog id="enable-dialog" aria-labelledby="enable-title">
<form method="post" action="/stacks/{nurl}/enable" id="enable-form">
{csrf}
<h2 id="enable-title">Enable {node}</h2>
<p>{node} leaves maintenance and becomes schedulable again.</p>
{restart}
<div class="buttons"><button type="button" data-close>Cancel</button>
<button type="submit" class="primary" id="enable-submit">Enable</button></div>
</form></dialog>"#,
        nurl = url(&n.name),
        node = esc(&n.name),
        csrf = csrf_field(auth),
    )
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
    let mut dialogs = String::new();
    if auth.can_act() {
        if maintenance_blocker(&auth, &n, now).is_none() {
            dialogs.push_str(&maintenance_dialog(&st, &auth, &n).await);
        }
        if enable_blocker(&auth, &n).is_none() {
            dialogs.push_str(&enable_dialog(&auth, &n));
        }
    }
    let vm_head = "<thead><tr><th>Name</th><th>State</th><th>Cloudspace</th><th>vCPUs</th><th>Memory</th><th></th></tr></thead>";
    let body = format!(
        r#"<div id="live-root" data-live="/events/stacks?node={nurl}" data-key="{key}">
<nav class="crumbs"><a href="/">Stacks</a> › {node}</nav>
<div class="titlebar"><h1>Stack {node} <span id="node-badges">{badges}</span></h1><span class="live" id="live">live</span>{menu}</div>
<dl class="facts" id="node-facts">{facts}</dl>
<h2>Virtual machines</h2>
<table class="grid" id="user-vms">{vm_head}<tbody id="user-vms-body">{user}</tbody></table>
<h2>System VMs: virtual firewalls (VFW)</h2>
<p class="muted">One per cloudspace; its cloudspace's network is down while it is not running. <a href="/vms?kind=vfw">All VFWs</a></p>
<table class="grid" id="system-vms">{vm_head}<tbody id="system-vms-body">{system}</tbody></table>
</div>
{dialogs}"#,
        nurl = url(&n.name),
        key = esc(&node_key(&n)),
        node = esc(&n.name),
        badges = node_badges(&n, now),
        menu = actions_menu(&auth, &n, now),
        facts = node_facts(&n, now),
        user = user_vm_rows(&n),
        system = system_vm_rows(&n),
    );
    respond(
        StatusCode::OK,
        page(
            Some(&auth),
            Nav::Stacks,
            &format!("Stack {}", n.name),
            &body,
        ),
    )
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

fn select(name: &str, current: &str, options: &[(String, String)]) -> String {
    let mut s = format!(r#"<select name="{name}" id="f-{name}">"#);
    for (v, label) in options {
        let sel = if v == current { " selected" } else { "" };
        s.push_str(&format!(
            r#"<option value="{}"{sel}>{}</option>"#,
            esc(v),
            esc(label)
        ));
    }
    s.push_str("</select>");
    s
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
    let needle = f.name.to_lowercase();
    let mut rows = Vec::new();
    for e in &entries {
        let vm = Vm::from(&e.domain.clone().unwrap_or_default());
        if !needle.is_empty() && !vm.name.to_lowercase().contains(&needle) {
            continue;
        }
        rows.push(format!(
            r#"<tr data-vm="{name}"><td><a href="/vms/{vmurl}">{name}</a></td><td>{kind}</td><td>{node}</td><td>{cs}</td><td>{state}</td><td class="num">{vcpus}</td><td class="num">{mem}</td><td>{stopped}</td></tr>"#,
            name = esc(&vm.name),
            vmurl = url(&vm.name),
            kind = if vm.kind == VmKind::Vfw {
                badge("vfw", "VFW")
            } else {
                "user".into()
            },
            node = node_link(&e.node),
            cs = vm.cloudspace.as_deref().map(cs_link).unwrap_or_default(),
            state = vm_badge(vm.state),
            vcpus = vm.vcpus,
            mem = mib(vm.memory_mib),
            stopped = if e.stopped_by.is_empty() {
                String::new()
            } else {
                format!("stopped by {}", job_link(&e.stopped_by))
            },
        ));
    }
    let all = st.c.registry.all();
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
    let count = rows.len();
    let body = format!(
        r#"<div class="titlebar"><h1>Virtual Machines</h1></div>
<p class="quick"><a href="/vms" id="q-all">All VMs</a> · <a href="/vms?kind=vfw" id="q-vfw">Virtual firewalls (VFW)</a> · <a href="/vms?kind=user">User VMs</a> · <a href="/vms?state=shutoff">Shut off</a></p>
<form method="get" action="/vms" class="filters" id="vm-filter">
<label>Name <input name="name" id="f-name" value="{name}" placeholder="contains…"></label>
<label>Stack {node_sel}</label>
<label>Cloudspace {cs_sel}</label>
<label>Kind {kind_sel}</label>
<label>State {state_sel}</label>
<button type="submit">Filter</button>
</form>
<p class="muted" id="vm-count">{count} VMs</p>
<table class="grid" id="vms"><thead><tr><th>Name</th><th>Kind</th><th>Stack</th><th>Cloudspace</th><th>State</th><th>vCPUs</th><th>Memory</th><th></th></tr></thead>
<tbody>{rows}</tbody></table>"#,
        name = esc(&f.name),
        node_sel = select("node", &f.node, &nodes),
        cs_sel = select("cloudspace", &f.cloudspace, &cs_opts),
        kind_sel = select("kind", &f.kind.to_ascii_lowercase(), &kinds),
        state_sel = select("state", &f.state.to_ascii_lowercase(), &states),
        rows = if rows.is_empty() {
            r#"<tr><td colspan="8" class="muted">No VM matches the filter.</td></tr>"#.into()
        } else {
            rows.concat()
        },
    );
    respond(
        StatusCode::OK,
        page(Some(&auth), Nav::Vms, "Virtual Machines", &body),
    )
}

/// One VM and what an operator may do with it: start it when shut off;
/// move it (the planner's destinations, best first, with each stack's free
/// memory) or stop it (after a confirmation, as the CLI's) when running.
pub async fn vm(State(st): State<Arc<Portal>>, auth: Auth, Path(name): Path<String>) -> Response {
    let all = st.c.registry.all();
    let places: Vec<(&NodeRecord, &Vm)> = all
        .iter()
        .flat_map(|n| n.domains.iter().map(move |d| (n, d)))
        .filter(|(_, d)| d.name == name)
        .collect();
    let Some(&(n, d)) = places.first() else {
        return html::error_page(
            Some(&auth),
            StatusCode::NOT_FOUND,
            "Unknown VM",
            &format!("unknown VM {name:?}: no stack reports it"),
        );
    };
    let facts = format!(
        r#"<div><dt>Kind</dt><dd>{kind}</dd></div><div><dt>Stack</dt><dd id="vm-node">{node}</dd></div><div><dt>Cloudspace</dt><dd>{cs}</dd></div><div><dt>State</dt><dd id="vm-state">{state}</dd></div><div><dt>vCPUs</dt><dd>{vcpus}</dd></div><div><dt>Memory</dt><dd>{mem}</dd></div>{stopped}"#,
        kind = if d.kind == VmKind::Vfw {
            badge("vfw", "VFW (system)")
        } else {
            "user".into()
        },
        node = node_link(&n.name),
        cs = d.cloudspace.as_deref().map(cs_link).unwrap_or_default(),
        state = vm_badge(d.state),
        vcpus = d.vcpus,
        mem = mib(d.memory_mib),
        stopped = n
            .stopped_by
            .get(&d.name)
            .map(|j| format!("<div><dt>Stopped by</dt><dd>{}</dd></div>", job_link(j)))
            .unwrap_or_default(),
    );
    let actions = if places.len() > 1 {
        format!(
            r#"<p class="plan bad" id="vm-actions">{} is reported by several stacks ({}); resolve this before acting on it.</p>"#,
            esc(&name),
            esc(&places
                .iter()
                .map(|(n, _)| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", "))
        )
    } else if !auth.can_act() {
        format!(r#"<p class="note" id="vm-actions">Start, stop and move: {NEEDS_OPERATOR}.</p>"#)
    } else {
        vm_actions(&auth, &all, n, d)
    };
    let body = format!(
        r#"<nav class="crumbs"><a href="/vms">Virtual Machines</a> › {vmn}</nav>
<div class="titlebar"><h1>VM {vmn}</h1></div>
<dl class="facts" id="vm-facts">{facts}</dl>
<h2>Actions</h2>
{actions}"#,
        vmn = esc(&name),
    );
    respond(
        StatusCode::OK,
        page(Some(&auth), Nav::Vms, &format!("VM {name}"), &body),
    )
}

fn vm_actions(auth: &Auth, all: &[NodeRecord], n: &NodeRecord, d: &Vm) -> String {
    use nodemaint_proto::model::VmState;
    let vm = url(&d.name);
    let csrf = csrf_field(auth);
    match d.state {
        VmState::Shutoff => format!(
            r#"<form method="post" action="/vms/{vm}/start" id="vm-start-form" class="filters">{csrf}
<button type="submit" class="primary" id="vm-start-submit">Start</button>
<small>Starts {name} on {node}{held}.</small></form>"#,
            name = esc(&d.name),
            node = esc(&n.name),
            held = if n.status == NodeStatus::Enabled {
                ""
            } else {
                " (the stack is not enabled: the coordinator refuses, saying why)"
            },
        ),
        VmState::Running => {
            let fleet = crate::fleet::snapshot(all, now());
            let dests = planner::feasible_destinations(&fleet, &d.name, &[]);
            let free = |node: &str| {
                all.iter()
                    .find(|r| r.name == node)
                    .map(|r| r.capacity.memory_mib.saturating_sub(r.memory_used_mib()))
                    .unwrap_or(0)
            };
            let options: Vec<String> = dests
                .iter()
                .enumerate()
                .map(|(i, to)| {
                    format!(
                        r#"<option value="{v}">{v} · {free} free{best}</option>"#,
                        v = esc(to),
                        free = mib(free(to)),
                        best = if i == 0 { " (recommended)" } else { "" }
                    )
                })
                .collect();
            let (disabled, why) = if dests.is_empty() {
                (
                    " disabled",
                    r#"<small class="why" id="vm-move-why">no other stack can take this VM now (capacity, status, anti-affinity)</small>"#,
                )
            } else {
                ("", "")
            };
            let vfw_warning = if d.kind == VmKind::Vfw {
                format!(
                    " This is cloudspace {}'s virtual firewall: its network is down until the VFW runs again.",
                    esc(d.cloudspace.as_deref().unwrap_or("?"))
                )
            } else {
                String::new()
            };
            format!(
                r#"<form method="post" action="/vms/{vm}/move" id="vm-move-form" class="filters">{csrf}
<label>Live-migrate {name} from {node} to <select name="to_node" id="vm-to-node"{disabled}>{options}</select></label>
<button type="submit" class="primary" id="vm-move-submit"{disabled}>Move</button>
{why}</form>
<p class="muted">Only stacks the planner accepts are offered (enabled, reachable, with room, anti-affinity), best first.</p>
<form method="post" action="/vms/{vm}/stop" id="vm-stop-form" class="filters">{csrf}
<label><input type="checkbox" name="confirm" value="yes" id="vm-stop-confirm" required> Stop {name}: the guest is asked to shut down, and forced off after the timeout.{vfw_warning}</label>
<button type="submit" id="vm-stop-submit">Stop</button></form>"#,
                name = esc(&d.name),
                node = esc(&n.name),
                options = options.concat(),
            )
        }
        other => format!(
            r#"<p class="note" id="vm-actions">No action while the VM is {}.</p>"#,
            esc(&format!("{other:?}").to_lowercase())
        ),
    }
}

// ------------------------------------------------------------ Cloudspaces

async fn vfw_list(st: &Portal, auth: &Auth) -> Result<Vec<pb::VfwEntry>, super::ApiError> {
    match st.api(&auth.user, Req::ListVfws(pb::ListVfws {})).await? {
        Reply::Vfws(l) => Ok(l.vfws),
        _ => Ok(Vec::new()),
    }
}

pub async fn cloudspaces(State(st): State<Arc<Portal>>, auth: Auth) -> Response {
    let vfws = match vfw_list(&st, &auth).await {
        Ok(v) => v,
        Err(e) => return e.page(Some(&auth), "Cannot list cloudspaces"),
    };
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for n in st.c.registry.all() {
        for d in &n.domains {
            if let (Some(cs), VmKind::User) = (&d.cloudspace, d.kind) {
                *counts.entry(cs.clone()).or_default() += 1;
            }
        }
    }
    let rows: Vec<String> = vfws
        .iter()
        .map(|v| {
            let d = v.domain.clone().unwrap_or_default();
            let (vfw, state) = if v.node.is_empty() {
                (
                    badge("st-unreachable", "no VFW found"),
                    String::new(),
                )
            } else {
                (esc(&d.name), vm_badge(d.state().into()))
            };
            format!(
                r#"<tr data-cloudspace="{csn}"><td>{cs}</td><td>{vfw}</td><td>{node}</td><td>{state}</td><td class="num">{n}</td></tr>"#,
                csn = esc(&v.cloudspace),
                cs = cs_link(&v.cloudspace),
                node = if v.node.is_empty() { String::new() } else { node_link(&v.node) },
                n = counts.get(&v.cloudspace).copied().unwrap_or(0),
            )
        })
        .collect();
    let body = format!(
        r#"<div class="titlebar"><h1>Cloudspaces</h1></div>
<p class="muted">Each cloudspace (private network) has one virtual firewall (VFW), a system VM.</p>
<table class="grid" id="cloudspaces"><thead><tr><th>Cloudspace</th><th>VFW</th><th>Runs on</th><th>State</th><th>User VMs</th></tr></thead>
<tbody>{}</tbody></table>"#,
        if rows.is_empty() {
            r#"<tr><td colspan="5" class="muted">No cloudspace known.</td></tr>"#.into()
        } else {
            rows.concat()
        }
    );
    respond(
        StatusCode::OK,
        page(Some(&auth), Nav::Cloudspaces, "Cloudspaces", &body),
    )
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
    let mine: Vec<&pb::VfwEntry> = vfws.iter().filter(|v| v.cloudspace == cs).collect();
    if mine.is_empty() {
        return html::error_page(
            Some(&auth),
            StatusCode::NOT_FOUND,
            "Unknown cloudspace",
            &format!("unknown cloudspace {cs:?}: no node reports a VM of it"),
        );
    }
    let all = st.c.registry.all();
    let now = now();
    let vfw = mine.iter().find(|v| !v.node.is_empty());
    let facts = match vfw {
        Some(v) => {
            let d = v.domain.clone().unwrap_or_default();
            format!(
                r#"<div><dt>Virtual firewall</dt><dd id="vfw-name">{}</dd></div><div><dt>Runs on</dt><dd id="vfw-node">{}</dd></div><div><dt>State</dt><dd>{}</dd></div><div><dt>Stack reachable</dt><dd>{}</dd></div><div><dt>Memory</dt><dd>{}</dd></div>"#,
                esc(&d.name),
                node_link(&v.node),
                vm_badge(d.state().into()),
                if v.node_reachable { "yes" } else { "no" },
                mib(d.memory_mib),
            )
        }
        None => r#"<div><dt>Virtual firewall</dt><dd id="vfw-name"><span class="badge st-unreachable">no node reports this cloudspace's VFW</span></dd></div>"#.into(),
    };
    let move_form = match vfw {
        None => String::new(),
        Some(v) => {
            let name = v.domain.clone().unwrap_or_default().name;
            let fleet = crate::fleet::snapshot(&all, now);
            let dests = planner::feasible_destinations(&fleet, &name, &[]);
            let why = if !auth.can_act() {
                Some(NEEDS_OPERATOR.to_string())
            } else if dests.is_empty() {
                Some("no other stack can take this VFW now".to_string())
            } else {
                None
            };
            let options: Vec<String> = dests
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    format!(
                        r#"<option value="{}">{}{}</option>"#,
                        esc(d),
                        esc(d),
                        if i == 0 { " (recommended)" } else { "" }
                    )
                })
                .collect();
            let disabled = if why.is_some() { " disabled" } else { "" };
            format!(
                r#"<h2>Move VFW</h2>
<form method="post" action="/cloudspaces/{csurl}/move-vfw" class="filters" id="move-vfw-form">
{csrf}
<label>Live-migrate {name} from {from} to <select name="to_node" id="to-node"{disabled}>{options}</select></label>
<button type="submit" class="primary" id="move-vfw-submit"{disabled}>Move VFW</button>
{note}
</form>
<p class="muted">Only stacks the planner accepts are offered (enabled, reachable, with room, not already running another VFW when avoidable), best first.</p>"#,
                csurl = url(&cs),
                csrf = csrf_field(&auth),
                name = esc(&name),
                from = esc(&v.node),
                options = options.concat(),
                note = why
                    .map(|w| format!(
                        r#"<small class="why" id="move-vfw-why">{}</small>"#,
                        esc(&w)
                    ))
                    .unwrap_or_default(),
            )
        }
    };
    let mut vm_rows = String::new();
    for n in &all {
        for d in &n.domains {
            if d.cloudspace.as_deref() == Some(cs.as_str()) && d.kind == VmKind::User {
                vm_rows.push_str(&format!(
                    r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td></tr>"#,
                    esc(&d.name),
                    node_link(&n.name),
                    vm_badge(d.state),
                    mib(d.memory_mib)
                ));
            }
        }
    }
    if vm_rows.is_empty() {
        vm_rows =
            r#"<tr><td colspan="4" class="muted">No user VM in this cloudspace.</td></tr>"#.into();
    }
    let body = format!(
        r#"<nav class="crumbs"><a href="/cloudspaces">Cloudspaces</a> › {csn}</nav>
<div class="titlebar"><h1>Cloudspace {csn}</h1></div>
<dl class="facts" id="cs-facts">{facts}</dl>
{move_form}
<h2>Virtual machines</h2>
<table class="grid" id="cs-vms"><thead><tr><th>Name</th><th>Stack</th><th>State</th><th>Memory</th></tr></thead><tbody>{vm_rows}</tbody></table>"#,
        csn = esc(&cs),
    );
    respond(
        StatusCode::OK,
        page(
            Some(&auth),
            Nav::Cloudspaces,
            &format!("Cloudspace {cs}"),
            &body,
        ),
    )
}

// ------------------------------------------------------------------- Jobs

fn state_word(j: &Job) -> String {
    format!("{:?}", j.state).to_uppercase()
}

pub fn jobs_rows(jobs: &[Job]) -> String {
    if jobs.is_empty() {
        return r#"<tr><td colspan="7" class="muted">No job yet.</td></tr>"#.into();
    }
    jobs.iter()
        .map(|j| {
            format!(
                r#"<tr data-job="{id}"><td>{link}</td><td>{kind}</td><td>{node}</td><td>{user}</td><td>{state}</td><td>{created}</td><td>{outcome}</td></tr>"#,
                id = esc(&j.id),
                link = job_link(&j.id),
                kind = esc(j.kind()),
                node = j.node.as_deref().map(node_link).unwrap_or_default(),
                user = esc(&j.user),
                state = job_badge(&state_word(j)),
                created = esc(&fmt_ts(j.created_ms)),
                outcome = esc(j.outcome.as_deref().unwrap_or("")),
            )
        })
        .collect()
}

/// The jobs page shows the newest this many (the CLI's `job list --limit`
/// reaches further back).
pub const PORTAL_JOBS: usize = 200;

pub async fn jobs(State(st): State<Arc<Portal>>, auth: Auth) -> Response {
    let jobs = st.c.jobs.list(PORTAL_JOBS).jobs;
    let body = format!(
        r#"<div id="live-root" data-live="/events/jobs">
<div class="titlebar"><h1>Jobs</h1><span class="live" id="live">live</span></div>
<p class="muted">Every maintenance, enable, move, start and stop, with who asked for it.</p>
<table class="grid" id="jobs"><thead><tr><th>Job</th><th>Kind</th><th>Stack</th><th>User</th><th>State</th><th>Started</th><th>Outcome</th></tr></thead>
<tbody id="jobs-body">{}</tbody></table></div>"#,
        jobs_rows(&jobs)
    );
    respond(StatusCode::OK, page(Some(&auth), Nav::Jobs, "Jobs", &body))
}

/// Live migration/step progress per VM, from progress events.
pub type LiveProgress = HashMap<String, (f64, String)>;

pub fn job_facts(j: &Job) -> String {
    let fact = |k: &str, v: String| format!("<div><dt>{k}</dt><dd>{v}</dd></div>");
    let mut s = vec![
        fact("State", job_badge(&state_word(j))),
        fact("Kind", esc(j.kind())),
        fact(
            "Stack",
            j.node.as_deref().map(node_link).unwrap_or_default(),
        ),
        fact("Requested by", esc(&j.user)),
        fact("Started", esc(&fmt_ts(j.created_ms))),
        fact("Updated", esc(&fmt_ts(j.updated_ms))),
    ];
    if let Some(m) = j.spec.mode() {
        s.push(fact("Mode", esc(m)));
    }
    if let crate::jobs::JobSpec::StopAll(stop) = &j.spec {
        if !stop.vfw_cloudspaces_down.is_empty() {
            s.push(fact(
                "VFW downtime acknowledged for",
                esc(&stop.vfw_cloudspaces_down.join(", ")),
            ));
        }
    }
    if let Some(o) = &j.outcome {
        s.push(fact(
            "Outcome",
            format!(r#"<span id="job-outcome">{}</span>"#, esc(o)),
        ));
    }
    s.concat()
}

/// One row per VM the job acts on: its action, progress and result.
pub fn job_progress_rows(j: &Job, live: &LiveProgress) -> String {
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
        return r#"<tr><td colspan="5" class="muted">No VM step yet.</td></tr>"#.into();
    }
    let terminal = j.state.is_terminal();
    rows.iter()
        .map(|r| {
            let (pct, step) = live.get(&r.vm).cloned().unwrap_or((0.0, String::new()));
            let pct = if r.ok == Some(true) { 100.0 } else { pct };
            let status = match r.ok {
                Some(true) => badge("ok", "done"),
                Some(false) => badge("failed", "failed"),
                None if terminal => badge("failed", "not done"),
                None if pct > 0.0 || !step.is_empty() => badge("running", if step.is_empty() { "running" } else { &step }),
                None => badge("pending", "pending"),
            };
            format!(
                r#"<tr data-vm="{vm}"><td>{vm}</td><td>{action}</td><td>{target}</td><td class="pct"><progress max="100" value="{p:.0}"></progress> <span class="pct-text">{p:.0}%</span></td><td>{status} <small>{msg}</small></td></tr>"#,
                vm = esc(&r.vm),
                action = esc(&r.action),
                target = esc(&r.target),
                p = pct.clamp(0.0, 100.0),
                msg = esc(&r.message),
            )
        })
        .collect()
}

pub fn job_journal(j: &Job) -> String {
    if j.steps.is_empty() {
        return r#"<li class="muted">No step yet.</li>"#.into();
    }
    j.steps
        .iter()
        .map(|s| {
            let mark = match s.ok {
                Some(true) => badge("ok", "ok"),
                Some(false) => badge("failed", "failed"),
                None => String::new(),
            };
            format!(
                r#"<li><time>{}</time> {mark} {}</li>"#,
                esc(&fmt_ts(s.ts_ms)),
                esc(&s.message)
            )
        })
        .collect()
}

pub fn job_report(j: &Job) -> String {
    if !j.state.is_terminal() {
        return r#"<p class="muted">The report appears when the job ends.</p>"#.into();
    }
    let mut s = format!(
        r#"<div class="alert {}" id="job-end"><strong>{}</strong>: {}</div>"#,
        if j.state == crate::jobs::JobState::Succeeded {
            "ok"
        } else {
            "error"
        },
        esc(&state_word(j)),
        esc(j.outcome.as_deref().unwrap_or(""))
    );
    if let Some(r) = &j.report {
        let list = |lines: &[crate::jobs::ReportLine]| -> String {
            lines
                .iter()
                .map(|l| format!("<li><b>{}</b>: {}</li>", esc(&l.vm), esc(&l.detail)))
                .collect()
        };
        if !r.done.is_empty() {
            s.push_str(&format!(
                r#"<h3>Done ({})</h3><ul id="report-done">{}</ul>"#,
                r.done.len(),
                list(&r.done)
            ));
        }
        if !r.not_done.is_empty() {
            s.push_str(&format!(
                r#"<h3>Not done ({})</h3><ul id="report-not-done">{}</ul>"#,
                r.not_done.len(),
                list(&r.not_done)
            ));
        }
    }
    s
}

/// The fragments of the job view that live updates replace.
pub fn job_fragments(j: &Job, live: &LiveProgress) -> serde_json::Value {
    serde_json::json!({
        "job-badge": job_badge(&state_word(j)),
        "job-facts": job_facts(j),
        "job-progress-body": job_progress_rows(j, live),
        "job-journal": job_journal(j),
        "job-report": job_report(j),
    })
}

pub async fn job(State(st): State<Arc<Portal>>, auth: Auth, Path(id): Path<String>) -> Response {
    let Some(j) = st.c.jobs.get(&id).await else {
        return html::error_page(
            Some(&auth),
            StatusCode::NOT_FOUND,
            "Unknown job",
            &format!("unknown job {id:?}"),
        );
    };
    let live = if j.state.is_terminal() {
        String::new()
    } else {
        format!(r#" data-live="/events/jobs/{}""#, url(&j.id))
    };
    let body = format!(
        r#"<div id="live-root"{live}>
<nav class="crumbs"><a href="/jobs">Jobs</a> › <code>{id}</code></nav>
<div class="titlebar"><h1>Job {kind} <span id="job-badge">{badge}</span></h1><span class="live" id="live">{live_word}</span></div>
{abort}
<dl class="facts" id="job-facts">{facts}</dl>
<h2>Progress</h2>
<table class="grid" id="job-progress"><thead><tr><th>VM</th><th>Action</th><th>To / on</th><th>Progress</th><th>Result</th></tr></thead>
<tbody id="job-progress-body">{progress}</tbody></table>
<h2>Report</h2>
<div id="job-report">{report}</div>
<h2>Journal</h2>
<ol class="journal" id="job-journal">{journal}</ol>
</div>"#,
        id = esc(&j.id),
        kind = esc(j.kind()),
        badge = job_badge(&state_word(&j)),
        live_word = if j.state.is_terminal() {
            "ended"
        } else {
            "live"
        },
        abort = abort_form(&auth, &j),
        facts = job_facts(&j),
        progress = job_progress_rows(&j, &LiveProgress::new()),
        report = job_report(&j),
        journal = job_journal(&j),
    );
    respond(
        StatusCode::OK,
        page(
            Some(&auth),
            Nav::Jobs,
            &format!("Job {}", crate::cli::output::short(&j.id)),
            &body,
        ),
    )
}

/// The Abort button of a running job (operators only): nothing new starts,
/// migrations in flight are cancelled, the report says where every VM is.
fn abort_form(auth: &Auth, j: &crate::jobs::Job) -> String {
    if j.state.is_terminal() {
        return String::new();
    }
    if !auth.can_act() {
        return format!(r#"<p class="note">Abort: {NEEDS_OPERATOR}.</p>"#);
    }
    format!(
        r#"<form method="post" action="/jobs/{id}/abort" id="abort-form">
{csrf}
<button type="submit" id="abort-submit">Abort</button>
<small>Nothing new starts; migrations in flight are cancelled (their VMs keep running on the source); a node in maintenance stays in maintenance.</small>
</form>"#,
        id = url(&j.id),
        csrf = csrf_field(auth),
    )
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
