//! Every NATS name nodemaint uses, built in one place and versioned.
//!
//! ```text
//! <prefix>.v1.agent.<node>.cmd           commands to one agent (work-queue stream)
//! <prefix>.v1.events.<node>.<kind>       heartbeats, inventory, progress, results, jobs
//!                                        (every kind but heartbeat is stored in the
//!                                        events stream; heartbeats are core NATS only)
//! <prefix>.v1.api.<user>.<read|change>.<method>
//!                                        the coordinator's request/reply API
//! _INBOX.<principal>.>                   replies to one principal
//! ```
//! The API subject names its caller and whether the request changes the
//! fleet, so the NATS server's per-user permissions can bind both to the
//! authenticated connection (see `deploy/nats/gen-auth`); the coordinator
//! takes the caller from the subject, never from the message body.
//! The prefix (default `nodemaint`) lets several installations share one
//! NATS server; stream and bucket names derive from it.

/// The wire version inside every subject.
pub const VERSION: &str = "v1";
pub const DEFAULT_PREFIX: &str = "nodemaint";
/// The node name used for coordinator-wide events (jobs).
pub const COORDINATOR_NODE: &str = "coordinator";

/// Kinds of events, the last token of an event subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Heartbeat,
    Inventory,
    Progress,
    Result,
    Checks,
    Job,
    Error,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::Heartbeat,
        EventKind::Inventory,
        EventKind::Progress,
        EventKind::Result,
        EventKind::Checks,
        EventKind::Job,
        EventKind::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Heartbeat => "heartbeat",
            EventKind::Inventory => "inventory",
            EventKind::Progress => "progress",
            EventKind::Result => "result",
            EventKind::Checks => "checks",
            EventKind::Job => "job",
            EventKind::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether the events stream stores this kind. Heartbeats are not: one
    /// every 2 s from every agent was a JetStream write each (0.5 writes/s
    /// per agent, most of nats-server's CPU at 10,000 agents) that nobody
    /// replays; the coordinators keep liveness in memory from the live
    /// messages, and a coordinator that starts learns it within one
    /// heartbeat interval.
    pub fn is_stored(self) -> bool {
        self != EventKind::Heartbeat
    }
}

const ACCESS_READ: &str = "read";
const ACCESS_CHANGE: &str = "change";

/// The parts of an API request subject.
#[derive(Debug, PartialEq, Eq)]
pub struct ApiSubject<'a> {
    /// The caller, as authenticated by the NATS server's permissions.
    pub user: &'a str,
    /// Published under `change` (only Level2/Level3 users may).
    pub change: bool,
    pub method: &'a str,
}

/// Prefix of a principal's reply inboxes: each principal may subscribe only
/// under its own, so nobody reads another's replies.
pub fn inbox_prefix(principal: &str) -> String {
    format!("_INBOX.{principal}")
}

/// Whether `reply` is one of `principal`'s own inboxes (`_INBOX.<principal>.…`,
/// no wildcards). The coordinator answers API requests only there: a reply
/// subject is the requester's choice, and the coordinator may publish where
/// the requester may not (agents' command subjects, others' inboxes).
pub fn is_own_inbox(principal: &str, reply: &str) -> bool {
    let Some(rest) = reply
        .strip_prefix(inbox_prefix(principal).as_str())
        .and_then(|r| r.strip_prefix('.'))
    else {
        return false;
    };
    validate_token(principal).is_ok()
        && rest
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.contains(char::is_whitespace))
}

/// A name that is not usable as one subject token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid name {0:?}: use letters, digits, '-' and '_' only (no dots, spaces, '*' or '>')")]
pub struct InvalidName(pub String);

/// Node names become subject tokens, so they must not contain separators or
/// wildcards.
pub fn validate_token(name: &str) -> Result<(), InvalidName> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(InvalidName(name.to_string()))
    }
}

/// Subject, stream and bucket names for one prefix.
#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects::new(DEFAULT_PREFIX)
    }
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Subjects {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn base(&self) -> String {
        format!("{}.{}", self.prefix, VERSION)
    }

    pub fn agent_cmd(&self, node: &str) -> String {
        format!("{}.agent.{node}.cmd", self.base())
    }

    pub fn agent_cmd_all(&self) -> String {
        format!("{}.agent.*.cmd", self.base())
    }

    pub fn event(&self, node: &str, kind: EventKind) -> String {
        format!("{}.events.{node}.{}", self.base(), kind.as_str())
    }

    /// Filter for events, any node and/or kind when `None`.
    pub fn events_filter(&self, node: Option<&str>, kind: Option<EventKind>) -> String {
        format!(
            "{}.events.{}.{}",
            self.base(),
            node.unwrap_or("*"),
            kind.map(EventKind::as_str).unwrap_or("*")
        )
    }

    /// The events stream's subjects: one per stored kind, any node (so a
    /// heartbeat, published on the same `events` subject tree for the same
    /// permissions and live subscribers, is not captured).
    pub fn stored_events(&self) -> Vec<String> {
        EventKind::ALL
            .into_iter()
            .filter(|k| k.is_stored())
            .map(|k| self.events_filter(None, Some(k)))
            .collect()
    }

    /// Splits an event subject into (node, kind).
    pub fn parse_event(&self, subject: &str) -> Option<(String, EventKind)> {
        let rest = subject.strip_prefix(&format!("{}.events.", self.base()))?;
        let (node, kind) = rest.split_once('.')?;
        Some((node.to_string(), EventKind::parse(kind)?))
    }

    /// Subject of one API request by `user`; `change` for the methods that
    /// change the fleet (`ApiRequest::is_mutating`).
    pub fn api(&self, user: &str, change: bool, method: &str) -> String {
        format!("{}.{method}", self.api_user(user, change))
    }

    /// `<prefix>.v1.api.<user>.<read|change>`: what a user's server
    /// permissions allow it to publish under (with `.>`).
    pub fn api_user(&self, user: &str, change: bool) -> String {
        let access = if change { ACCESS_CHANGE } else { ACCESS_READ };
        format!("{}.api.{user}.{access}", self.base())
    }

    pub fn api_all(&self) -> String {
        format!("{}.api.>", self.base())
    }

    /// Splits an API subject into caller, access and method.
    pub fn parse_api<'a>(&self, subject: &'a str) -> Option<ApiSubject<'a>> {
        let rest = subject
            .strip_prefix(self.base().as_str())?
            .strip_prefix(".api.")?;
        let (user, rest) = rest.split_once('.')?;
        let (access, method) = rest.split_once('.')?;
        let change = match access {
            ACCESS_READ => false,
            ACCESS_CHANGE => true,
            _ => return None,
        };
        validate_token(user).ok()?;
        Some(ApiSubject {
            user,
            change,
            method,
        })
    }

    fn upper(&self) -> String {
        self.prefix.to_uppercase().replace(['.', '-'], "_")
    }

    fn lower(&self) -> String {
        self.prefix.to_lowercase().replace(['.', '-'], "_")
    }

    /// Work-queue stream holding agent commands.
    pub fn commands_stream(&self) -> String {
        format!("{}_COMMANDS", self.upper())
    }

    /// Limits stream holding every event, for replay.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.upper())
    }

    /// Durable pull consumer of one agent.
    pub fn agent_consumer(&self, node: &str) -> String {
        format!("agent-{node}")
    }

    pub fn nodes_bucket(&self) -> String {
        format!("{}_nodes", self.lower())
    }

    pub fn jobs_bucket(&self) -> String {
        format!("{}_jobs", self.lower())
    }

    pub fn leader_bucket(&self) -> String {
        format!("{}_leader", self.lower())
    }

    /// Consumer an agent reads its own keys of the results bucket with.
    pub fn agent_results_consumer(&self, node: &str) -> String {
        format!("results-{node}")
    }

    /// Idempotency keys of API requests → the job the first one created.
    pub fn requests_bucket(&self) -> String {
        format!("{}_requests", self.lower())
    }

    /// The operator portal's sessions (every coordinator's portal reads them).
    pub fn portal_sessions_bucket(&self) -> String {
        format!("{}_portal_sessions", self.lower())
    }

    /// Agents' record of executed command ids (at-most-once across restarts).
    pub fn agent_results_bucket(&self) -> String {
        format!("{}_agent_results", self.lower())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_inboxes_only() {
        assert!(is_own_inbox("alice", "_INBOX.alice.abc"));
        assert!(is_own_inbox("alice", "_INBOX.alice.abc.17"));
        for bad in [
            "_INBOX.bob.abc",
            "_INBOX.alice",
            "_INBOX.alice.",
            "_INBOX.alicea.x",
            "_INBOX.alice.>",
            "_INBOX.alice.*.x",
            "_INBOX.alice..x",
            "_INBOX.abc",
            "nodemaint.v1.agent.n1.cmd",
        ] {
            assert!(!is_own_inbox("alice", bad), "{bad}");
        }
        // A user name that is not one token never owns anything.
        assert!(!is_own_inbox("a.b", "_INBOX.a.b.c"));
    }

    #[test]
    fn subjects_are_versioned_and_prefixed() {
        let s = Subjects::new("acme");
        assert_eq!(s.agent_cmd("node1"), "acme.v1.agent.node1.cmd");
        assert_eq!(
            s.event("node1", EventKind::Heartbeat),
            "acme.v1.events.node1.heartbeat"
        );
        // The events stream captures every kind but heartbeats.
        let stored = s.stored_events();
        assert_eq!(stored.len(), EventKind::ALL.len() - 1);
        assert!(stored.contains(&"acme.v1.events.*.inventory".to_string()));
        assert!(stored.contains(&"acme.v1.events.*.job".to_string()));
        assert!(!stored
            .iter()
            .any(|x| x.ends_with(".heartbeat") || x.ends_with(".*")));
        assert_eq!(s.events_filter(None, None), "acme.v1.events.*.*");
        assert_eq!(
            s.events_filter(Some("n"), Some(EventKind::Job)),
            "acme.v1.events.n.job"
        );
        assert_eq!(
            s.api("bob", false, "node.list"),
            "acme.v1.api.bob.read.node.list"
        );
        assert_eq!(
            s.parse_api("acme.v1.api.al-1.change.vm.move"),
            Some(ApiSubject {
                user: "al-1",
                change: true,
                method: "vm.move"
            })
        );
        for bad in [
            "other.v1.api.al.change.vm.move",
            "acme.v1.api.al.write.vm.move",
            "acme.v1.api.vm.move",
            "acme.v1.api.al.read",
        ] {
            assert_eq!(s.parse_api(bad), None, "{bad}");
        }
        assert_eq!(s.commands_stream(), "ACME_COMMANDS");
        assert_eq!(s.nodes_bucket(), "acme_nodes");
    }

    #[test]
    fn event_subjects_parse_back() {
        let s = Subjects::default();
        for kind in EventKind::ALL {
            let subj = s.event("node-7", kind);
            assert_eq!(s.parse_event(&subj), Some(("node-7".to_string(), kind)));
        }
        assert_eq!(s.parse_event("nodemaint.v1.events.n.bogus"), None);
    }

    #[test]
    fn tokens_reject_separators_and_wildcards() {
        assert!(validate_token("node-1_a").is_ok());
        for bad in ["", "a.b", "a b", "*", ">", "a>"] {
            assert!(validate_token(bad).is_err(), "{bad:?} accepted");
        }
    }
}
