//! HTML building blocks: escaping, the page layout, badges and error pages.
//! Pages are plain strings built with `format!`; every value that comes from
//! outside (names, messages) goes through [`esc`] or [`url`].

use super::auth::Auth;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use nodemaint_proto::model::{NodeRecord, NodeStatus, VmState};

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

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

pub fn badge(class: &str, text: &str) -> String {
    format!(r#"<span class="badge {class}">{}</span>"#, esc(text))
}

/// Status badges of a node: its status, and "unreachable" when it missed
/// its heartbeats.
pub fn node_badges(n: &NodeRecord, now_ms: i64) -> String {
    let word = status_word(n.status);
    let mut s = badge(&format!("st-{}", word.to_lowercase()), word);
    if !n.reachable_at(now_ms) {
        s.push(' ');
        s.push_str(&badge("st-unreachable", "unreachable"));
    }
    s
}

pub fn vm_badge(s: VmState) -> String {
    let w = vm_state_word(s);
    badge(&format!("vm-{}", w.to_lowercase()), w)
}

pub fn job_badge(state: &str) -> String {
    badge(&format!("job-{}", state.to_lowercase()), state)
}

pub fn node_link(n: &str) -> String {
    format!(r#"<a href="/stacks/{}">{}</a>"#, url(n), esc(n))
}

pub fn cs_link(cs: &str) -> String {
    format!(r#"<a href="/cloudspaces/{}">{}</a>"#, url(cs), esc(cs))
}

pub fn job_link(id: &str) -> String {
    format!(
        r#"<a href="/jobs/{}" title="{}"><code>{}</code></a>"#,
        url(id),
        esc(id),
        esc(crate::cli::output::short(id))
    )
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(auth: &Auth) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(&auth.csrf)
    )
}

/// The note shown next to actions a user may not perform.
pub const NEEDS_OPERATOR: &str = "requires Level2 or Level3";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Stacks,
    Vms,
    Cloudspaces,
    Jobs,
    None,
}

/// A full page: header with navigation and the user, then `body`.
pub fn page(auth: Option<&Auth>, nav: Nav, title: &str, body: &str) -> String {
    let item = |n: Nav, href: &str, label: &str| {
        let cur = if n == nav {
            r#" aria-current="page""#
        } else {
            ""
        };
        format!(r#"<a href="{href}"{cur}>{label}</a>"#)
    };
    let user = match auth {
        Some(a) => format!(
            r#"<div class="user"><span title="groups: {groups}">{user} <small>({groups})</small></span>
<form method="post" action="/logout">{csrf}<button type="submit" class="link">Log out</button></form></div>"#,
            user = esc(&a.user),
            groups = esc(&if a.groups.is_empty() {
                "no group".to_string()
            } else {
                a.groups.join(", ")
            }),
            csrf = csrf_field(a),
        ),
        None => String::new(),
    };
    let nav_html = if auth.is_some() {
        format!(
            "<nav>{}{}{}{}</nav>",
            item(Nav::Stacks, "/", "Stacks"),
            item(Nav::Vms, "/vms", "Virtual Machines"),
            item(Nav::Cloudspaces, "/cloudspaces", "Cloudspaces"),
            item(Nav::Jobs, "/jobs", "Jobs"),
        )
    } else {
        String::new()
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · nodemaint</title>
<link rel="stylesheet" href="/static/portal.css">
<script src="/static/portal.js" defer></script>
</head><body>
<header><a class="brand" href="/">nodemaint</a>{nav_html}{user}</header>
<main>
{body}
</main>
</body></html>
"#,
        title = esc(title),
    )
}

/// A page response with headers that keep it out of caches.
pub fn respond(status: StatusCode, html: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// An error page: what went wrong, in the API's own words, and a way back.
pub fn error_page(auth: Option<&Auth>, status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        r#"<h1>{title}</h1>
<div class="alert error" role="alert" id="error"><strong>{code} {reason}:</strong> {message}</div>
<p>Nothing was changed. <a href="/" data-back>Go back</a> or return to <a href="/">Stacks</a>.</p>"#,
        title = esc(title),
        code = status.as_u16(),
        reason = esc(status.canonical_reason().unwrap_or("")),
        message = esc(message),
    );
    respond(status, page(auth, Nav::None, title, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn url_encodes_everything_but_unreserved() {
        assert_eq!(url("cs 1/ä?"), "cs%201%2F%C3%A4%3F");
        assert_eq!(url("node-1_a.b~"), "node-1_a.b~");
    }
}
