//! The NATS server's authorization, generated from one source of truth:
//! the coordinator's `[users]` (operators and their groups) plus the list
//! of agents. Each principal gets an nkey and exactly the subjects it needs
//! (see docs/security.md, "Permission table"); the `nats-auth` binary writes the
//! server's `auth.conf` include and one credentials file per principal.
//!
//! Pure: names in, permission lists and config text out.

use crate::config::OPERATOR_GROUPS;
use nodemaint_proto::subjects::{inbox_prefix, validate_token, Subjects, COORDINATOR_NODE};
use std::collections::BTreeMap;

/// Who connects to NATS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// `coordinator serve` (every replica shares it).
    Coordinator(String),
    /// The node-agent of one node; its name is the node's.
    Agent(String),
    /// An operator (CLI); `change` for members of Level2/Level3.
    Operator { name: String, change: bool },
}

impl Principal {
    pub fn name(&self) -> &str {
        match self {
            Principal::Coordinator(n) | Principal::Agent(n) => n,
            Principal::Operator { name, .. } => name,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Principal::Coordinator(_) => "coordinator".into(),
            Principal::Agent(_) => "agent".into(),
            Principal::Operator { change: true, .. } => "operator (Level2/Level3)".into(),
            Principal::Operator { change: false, .. } => "operator (read-only)".into(),
        }
    }
}

/// Subjects a principal may publish to and subscribe to (allow lists;
/// everything else is denied by the server).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// Every principal: the coordinator, the agents, the configured users.
/// Refuses names that are not subject tokens or are used twice.
pub fn principals(
    coordinator: &str,
    agents: &[String],
    users: &BTreeMap<String, crate::config::User>,
) -> Result<Vec<Principal>, String> {
    let mut all = vec![Principal::Coordinator(coordinator.to_string())];
    all.extend(agents.iter().map(|a| Principal::Agent(a.clone())));
    all.extend(users.iter().map(|(name, u)| {
        Principal::Operator {
            name: name.clone(),
            change: u
                .groups
                .iter()
                .any(|g| OPERATOR_GROUPS.contains(&g.as_str())),
        }
    }));
    let mut seen = std::collections::BTreeSet::new();
    for p in &all {
        validate_token(p.name()).map_err(|e| format!("{}: {e}", p.describe()))?;
        if !seen.insert(p.name()) {
            return Err(format!(
                "name {:?} is used twice (coordinator, agents and users share one namespace)",
                p.name()
            ));
        }
    }
    if agents.iter().any(|a| a == COORDINATOR_NODE) {
        return Err(format!(
            "no agent may be called {COORDINATOR_NODE:?}: the coordinator publishes job events as that node"
        ));
    }
    Ok(all)
}

/// The allow lists of one principal.
pub fn permissions(s: &Subjects, p: &Principal) -> Permissions {
    let commands = s.commands_stream();
    let events = s.events_stream();
    let kv = |bucket: String| format!("$KV.{bucket}.>");
    let results = s.agent_results_bucket();
    let results_stream = format!("KV_{results}");
    let api = "$JS.API";
    match p {
        Principal::Coordinator(name) => Permissions {
            publish: vec![
                s.agent_cmd_all(),
                s.events_filter(Some(COORDINATOR_NODE), None),
                // Streams, buckets, consumers: the coordinator sets them up.
                format!("{api}.>"),
                "$JS.ACK.>".into(),
                "$JS.FC.>".into(),
                kv(s.nodes_bucket()),
                kv(s.jobs_bucket()),
                kv(s.leader_bucket()),
                kv(s.requests_bucket()),
                kv(s.portal_sessions_bucket()),
                kv(results.clone()),
                // Replies to every principal's inbox.
                "_INBOX.>".into(),
            ],
            subscribe: vec![
                s.events_filter(None, None),
                s.api_all(),
                format!("{}.>", inbox_prefix(name)),
            ],
        },
        Principal::Agent(node) => {
            let consumer = s.agent_consumer(node);
            let rc = s.agent_results_consumer(node);
            let my_keys = format!("$KV.{results}.{node}.>");
            Permissions {
                publish: vec![
                    s.events_filter(Some(node), None),
                    format!("{api}.INFO"),
                    format!("{api}.STREAM.INFO.{commands}"),
                    format!("{api}.STREAM.INFO.{events}"),
                    format!("{api}.STREAM.INFO.{results_stream}"),
                    // Its own durable consumer, filtered to its own commands
                    // (name and filter are part of the create subject).
                    format!("{api}.CONSUMER.INFO.{commands}.{consumer}"),
                    format!(
                        "{api}.CONSUMER.CREATE.{commands}.{consumer}.{}",
                        s.agent_cmd(node)
                    ),
                    format!("{api}.CONSUMER.MSG.NEXT.{commands}.{consumer}"),
                    format!("$JS.ACK.{commands}.{consumer}.>"),
                    // Its own keys of the results bucket.
                    my_keys.clone(),
                    format!("{api}.DIRECT.GET.{results_stream}.{my_keys}"),
                    format!("{api}.CONSUMER.CREATE.{results_stream}.{rc}.{my_keys}"),
                    format!("{api}.CONSUMER.INFO.{results_stream}.{rc}"),
                    format!("{api}.CONSUMER.DELETE.{results_stream}.{rc}"),
                    format!("{api}.CONSUMER.MSG.NEXT.{results_stream}.{rc}"),
                ],
                subscribe: vec![format!("{}.>", inbox_prefix(node))],
            }
        }
        Principal::Operator { name, change } => {
            let mut publish = vec![format!("{}.>", s.api_user(name, false))];
            if *change {
                publish.push(format!("{}.>", s.api_user(name, true)));
            }
            // No JetStream: the events stream is read through the API
            // (`event.read`). Any consumer or pull would let an operator
            // choose where the server delivers (a deliver subject is in the
            // request's body, a pull's reply subject is the requester's
            // choice; permissions see neither).
            Permissions {
                publish,
                subscribe: vec![format!("{}.>", inbox_prefix(name))],
            }
        }
    }
}

fn quoted_list(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The server's `authorization` block (an include file): one user per
/// principal, identified by its nkey's public key.
pub fn auth_conf(s: &Subjects, users: &[(Principal, String)]) -> String {
    let mut out = String::from(
        "# Generated by deploy/nats/gen-auth (nats-auth): do not edit; rerun it.\n\
         # Include from the server config: `include auth.conf`.\n\
         authorization {\n  users = [\n",
    );
    for (p, nkey) in users {
        let perms = permissions(s, p);
        out.push_str(&format!(
            "    # {}: {}\n    {{ nkey: \"{nkey}\", permissions: {{\n      \
             publish: {{ allow: [{}] }}\n      subscribe: {{ allow: [{}] }}\n    }} }}\n",
            p.describe(),
            p.name(),
            quoted_list(&perms.publish),
            quoted_list(&perms.subscribe)
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

/// A credentials file (see `nodemaint_proto::bus::Credentials`).
pub fn creds_file(p: &Principal, seed: &str) -> String {
    format!(
        "# NATS credentials of {}: {}; keep it mode 0600 and private.\nuser = \"{}\"\nnkey_seed = \"{seed}\"\n",
        p.describe(),
        p.name(),
        p.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::User;

    fn users() -> BTreeMap<String, User> {
        let u = |g: &str| User {
            groups: vec![g.to_string()],
            password_hash: None,
        };
        BTreeMap::from([
            ("operator".to_string(), u("Level2")),
            ("admin".to_string(), u("Level3")),
            ("viewer".to_string(), u("Level1")),
        ])
    }

    fn allowed(list: &[String], subject: &str) -> bool {
        // NATS wildcard matching: `*` one token, `>` the rest.
        list.iter().any(|pat| {
            let (p, t): (Vec<_>, Vec<_>) = (pat.split('.').collect(), subject.split('.').collect());
            let mut i = 0;
            loop {
                match (p.get(i), t.get(i)) {
                    (Some(&">"), Some(_)) => return true,
                    (Some(&"*"), Some(_)) => {}
                    (Some(a), Some(b)) if a == b => {}
                    (None, None) => return true,
                    _ => return false,
                }
                i += 1;
            }
        })
    }

    #[test]
    fn agents_reach_only_their_own_subjects() {
        let s = Subjects::default();
        let p = permissions(&s, &Principal::Agent("node1".into()));
        assert!(allowed(&p.publish, "nodemaint.v1.events.node1.heartbeat"));
        assert!(!allowed(&p.publish, "nodemaint.v1.events.node2.heartbeat"));
        assert!(!allowed(&p.publish, "nodemaint.v1.agent.node1.cmd"));
        assert!(!allowed(
            &p.publish,
            "nodemaint.v1.api.node1.read.node.list"
        ));
        assert!(allowed(
            &p.publish,
            "$JS.API.CONSUMER.MSG.NEXT.NODEMAINT_COMMANDS.agent-node1"
        ));
        assert!(!allowed(
            &p.publish,
            "$JS.API.CONSUMER.MSG.NEXT.NODEMAINT_COMMANDS.agent-node2"
        ));
        assert!(!allowed(
            &p.publish,
            "$JS.API.CONSUMER.CREATE.NODEMAINT_COMMANDS.agent-node1.nodemaint.v1.agent.node2.cmd"
        ));
        assert!(allowed(&p.publish, "$KV.nodemaint_agent_results.node1.abc"));
        assert!(!allowed(
            &p.publish,
            "$KV.nodemaint_agent_results.node2.abc"
        ));
        assert!(!allowed(
            &p.publish,
            "$JS.API.STREAM.DELETE.NODEMAINT_COMMANDS"
        ));
        assert_eq!(p.subscribe, vec!["_INBOX.node1.>".to_string()]);
    }

    #[test]
    fn only_level2_and_level3_may_publish_changes() {
        let s = Subjects::default();
        let all = principals("coordinator", &["node1".into()], &users()).unwrap();
        for p in &all {
            let perms = permissions(&s, p);
            let name = p.name();
            let change = format!("nodemaint.v1.api.{name}.change.node.enable");
            let read = format!("nodemaint.v1.api.{name}.read.node.list");
            match p {
                Principal::Operator { change: may, .. } => {
                    assert_eq!(allowed(&perms.publish, &change), *may, "{name}");
                    assert!(allowed(&perms.publish, &read), "{name}");
                    // Never under another user's name.
                    assert!(!allowed(
                        &perms.publish,
                        "nodemaint.v1.api.admin2.change.node.enable"
                    ));
                    assert!(!allowed(&perms.publish, "nodemaint.v1.agent.node1.cmd"));
                    // No JetStream at all: no consumer (its deliver subject),
                    // no pull or direct get (their reply subject).
                    assert!(
                        perms.publish.iter().all(|p| !p.starts_with("$JS")),
                        "{name}: {:?}",
                        perms.publish
                    );
                }
                Principal::Coordinator(_) => {
                    assert!(allowed(&perms.publish, "nodemaint.v1.agent.node1.cmd"));
                    assert!(!allowed(&perms.publish, "nodemaint.v1.events.node1.result"));
                    assert!(!allowed(&perms.publish, &read));
                }
                Principal::Agent(_) => assert!(!allowed(&perms.publish, &read)),
            }
        }
        let viewer = Principal::Operator {
            name: "viewer".into(),
            change: false,
        };
        assert!(all.contains(&viewer));
    }

    #[test]
    fn names_must_be_unique_tokens() {
        let e = principals("coordinator", &["operator".into()], &users()).unwrap_err();
        assert!(e.contains("\"operator\" is used twice"), "{e}");
        let e = principals("coordinator", &["a.b".into()], &users()).unwrap_err();
        assert!(e.contains("agent: ") && e.contains("a.b"), "{e}");
        let e = principals("ctl", &["coordinator".into()], &users()).unwrap_err();
        assert!(e.contains("job events"), "{e}");
    }

    #[test]
    fn auth_conf_lists_every_principal() {
        let s = Subjects::default();
        let all = principals("coordinator", &["node1".into()], &users()).unwrap();
        let with_keys: Vec<_> = all
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), format!("UKEY{i}")))
            .collect();
        let conf = auth_conf(&s, &with_keys);
        for i in 0..all.len() {
            assert!(conf.contains(&format!("nkey: \"UKEY{i}\"")), "{conf}");
        }
        assert!(conf.contains("\"nodemaint.v1.api.viewer.read.>\""));
        assert!(!conf.contains("nodemaint.v1.api.viewer.change"));
    }
}
