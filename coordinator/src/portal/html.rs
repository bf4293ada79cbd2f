//! HTML building blocks: the page layout, badges, links and error pages.
//! Pages are `maud` templates: checked at compile time, and every spliced
//! value is escaped unless wrapped in `PreEscaped` (which only
//! server-rendered `Markup` is). Path segments and query values still go
//! through [`url`] (percent-encoding is not HTML escaping).

use super::auth::Auth;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use nodemaint_proto::model::{NodeRecord, NodeStatus, VmState};

/// Percent-encodes one path segment or query value.
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Operator word of a node status: ENABLED, MAINTENANCE, …
pub fn status_word(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Enabled => "ENABLED",
        NodeStatus::Maintenance => "MAINTENANCE",
        NodeStatus::Error => "ERROR",
        NodeStatus::Decommissioned => "DECOMMISSIONED",
    }
}

pub fn vm_state_word(s: VmState) -> &'static str {
    match s {
        VmState::Running => "RUNNING",
        VmState::Shutoff => "SHUTOFF",
        VmState::Paused => "PAUSED",
        VmState::Migrating => "MIGRATING",
        VmState::Crashed => "CRASHED",
        VmState::Other => "OTHER",
    }
}

pub fn badge(class: &str, text: &str) -> Markup {
    html! { span class={ "badge " (class) } { (text) } }
}

/// Status badges of a node: its status, and "unreachable" when it missed
/// its heartbeats.
pub fn node_badges(n: &NodeRecord, now_ms: i64) -> Markup {
    let word = status_word(n.status);
    html! {
        (badge(&format!("st-{}", word.to_lowercase()), word))
        @if !n.reachable_at(now_ms) {
            " " (badge("st-unreachable", "unreachable"))
        }
    }
}

pub fn vm_badge(s: VmState) -> Markup {
    let w = vm_state_word(s);
    badge(&format!("vm-{}", w.to_lowercase()), w)
}

pub fn job_badge(state: &str) -> Markup {
    badge(&format!("job-{}", state.to_lowercase()), state)
}

pub fn node_link(n: &str) -> Markup {
    html! { a href={ "/stacks/" (url(n)) } { (n) } }
}

pub fn cs_link(cs: &str) -> Markup {
    html! { a href={ "/cloudspaces/" (url(cs)) } { (cs) } }
}

pub fn job_link(id: &str) -> Markup {
    html! {
        a href={ "/jobs/" (url(id)) } title=(id) { code { (crate::cli::output::short(id)) } }
    }
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(auth: &Auth) -> Markup {
    html! { input type="hidden" name="csrf" value=(auth.csrf); }
}

/// A user's groups as the pages show them.
pub fn groups_text(auth: &Auth) -> String {
    if auth.groups.is_empty() {
        "no group".to_string()
    } else {
        auth.groups.join(", ")
    }
}

/// The note shown next to actions a user may not perform.
pub const NEEDS_OPERATOR: &str = "requires Level2 or Level3";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Stacks,
    Vms,
    Cloudspaces,
    Jobs,
    Rolling,
    None,
}

/// A full page: header with navigation and the user, then `body`.
pub fn page(auth: Option<&Auth>, nav: Nav, title: &str, body: Markup) -> Markup {
    let items = [
        (Nav::Stacks, "/", "Stacks"),
        (Nav::Overview, "/overview", "Overview"),
        (Nav::Vms, "/vms", "Virtual Machines"),
        (Nav::Cloudspaces, "/cloudspaces", "Cloudspaces"),
        (Nav::Jobs, "/jobs", "Jobs"),
        (Nav::Rolling, "/rolling", "Rolling"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · nodemaint" }
                link rel="stylesheet" href="/static/portal.css";
                script src="/static/portal.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "nodemaint" }
                    @if let Some(a) = auth {
                        nav {
                            @for (n, href, label) in items {
                                a href=(href) aria-current=[(n == nav).then_some("page")] { (label) }
                            }
                        }
                        div.user {
                            span title={ "groups: " (groups_text(a)) } {
                                (a.user) " " small { "(" (groups_text(a)) ")" }
                            }
                            form method="post" action="/logout" {
                                (csrf_field(a))
                                button.link type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page response with headers that keep it out of caches.
pub fn respond(status: StatusCode, html: Markup) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html.into_string(),
    )
        .into_response()
}

/// An error page's body: what went wrong, in the API's own words, and a
/// way back.
pub fn error_body(status: StatusCode, title: &str, message: &str) -> Markup {
    html! {
        h1 { (title) }
        div.alert.error role="alert" id="error" {
            strong { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) ":" }
            " " (message)
        }
        p {
            "Nothing was changed. " a href="/" data-back { "Go back" }
            " or return to " a href="/" { "Stacks" } "."
        }
    }
}

pub fn error_page(auth: Option<&Auth>, status: StatusCode, title: &str, message: &str) -> Response {
    respond(
        status,
        page(auth, Nav::None, title, error_body(status, title, message)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encodes_everything_but_unreserved() {
        assert_eq!(url("cs 1/ä?"), "cs%201%2F%C3%A4%3F");
        assert_eq!(url("node-1_a.b~"), "node-1_a.b~");
    }
}
