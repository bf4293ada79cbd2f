//! Pre-flight checks of a maintenance start (pure). Every start runs them
//! and `--dry-run` shows them; one failed check refuses the start, naming
//! it, before anything changes. The only I/O input, whether the source's
//! libvirt reaches each destination's, is gathered by the caller.

use crate::driver::executor::Fallback;
use crate::jobs::Job;
use nodemaint_planner as planner;
use nodemaint_proto::model::{NodeRecord, NodeStatus};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn check(name: &'static str, problems: Vec<String>, fine: String) -> Check {
    Check {
        name,
        ok: problems.is_empty(),
        detail: if problems.is_empty() {
            fine
        } else {
            problems.join("; ")
        },
    }
}

pub struct Input<'a> {
    pub node: &'a NodeRecord,
    pub nodes: &'a [NodeRecord],
    pub now_ms: i64,
    /// "move", "stop" or "none".
    pub mode: &'a str,
    /// The drain plan (move mode), made with the headroom reserved.
    pub plan: Option<&'a Result<planner::DrainPlan, planner::PlanError>>,
    pub headroom_percent: u32,
    pub fallback: Fallback,
    pub ack_vfw_downtime: bool,
    /// VFW cloudspaces of the node (stop mode needs the acknowledgement).
    pub vfw_cloudspaces: &'a [String],
    /// 0 = no limit.
    pub max_nodes_in_maintenance: usize,
    /// Jobs that have not ended.
    pub running_jobs: &'a [Job],
    /// Destination → Err(why) for each destination libvirt the source could
    /// not reach; `None` when not probed (not move mode, or no plan).
    pub probes: Option<&'a [(String, Result<(), String>)]>,
    /// Whether this is a retry of a node already in maintenance.
    pub retry: bool,
}

/// The fleet the drain is planned on: every other node's memory reduced by
/// the headroom, so the plan leaves that much free everywhere.
pub fn with_headroom(fleet: &planner::Fleet, percent: u32) -> planner::Fleet {
    let mut f = fleet.clone();
    let keep = 100u64.saturating_sub(u64::from(percent.min(100)));
    for n in &mut f.nodes {
        n.mem_mib = n.mem_mib * keep / 100;
    }
    f
}

pub fn evaluate(i: &Input) -> Vec<Check> {
    let mut out = Vec::new();
    let involved: Vec<&str> = match i.plan {
        Some(Ok(p)) => {
            let mut v: Vec<&str> = p.moves.iter().map(|m| m.to.as_str()).collect();
            v.sort();
            v.dedup();
            v
        }
        _ => Vec::new(),
    };

    // Capacity (and the plan itself).
    if let Some(plan) = i.plan {
        out.push(match plan {
            Ok(p) => Check {
                name: "capacity",
                ok: true,
                detail: format!(
                    "{} VMs fit on {} nodes with {}% memory headroom kept",
                    p.moves.len(),
                    involved.len(),
                    i.headroom_percent
                ),
            },
            Err(e) => Check {
                name: "capacity",
                ok: false,
                detail: format!("{e} (with {}% memory headroom kept)", i.headroom_percent),
            },
        });
    }

    // Agents reachable: the node itself (unless only cordoned) and every
    // destination.
    if i.mode != "none" {
        let mut names = vec![i.node.name.as_str()];
        names.extend(involved.iter().copied());
        let unreachable: Vec<String> = names
            .iter()
            .filter_map(|n| i.nodes.iter().find(|r| r.name == *n))
            .filter(|r| !r.reachable_at(i.now_ms))
            .map(|r| {
                format!(
                    "node {} is unreachable (last heartbeat {} ms ago)",
                    r.name,
                    i.now_ms - r.last_seen_ms
                )
            })
            .collect();
        out.push(check(
            "agents reachable",
            unreachable,
            format!("{} agents answer", names.len()),
        ));
        let mismatched: Vec<String> = names
            .iter()
            .filter_map(|n| i.nodes.iter().find(|r| r.name == *n))
            .filter(|r| r.protocol_version != nodemaint_proto::PROTOCOL_VERSION)
            .map(|r| {
                format!(
                    "node {} speaks protocol {} (agent {}), the coordinator {}",
                    r.name,
                    r.protocol_version,
                    if r.agent_version.is_empty() {
                        "?"
                    } else {
                        &r.agent_version
                    },
                    nodemaint_proto::PROTOCOL_VERSION
                )
            })
            .collect();
        out.push(check(
            "protocol version",
            mismatched,
            format!("all speak protocol {}", nodemaint_proto::PROTOCOL_VERSION),
        ));
    }

    if let Some(probes) = i.probes {
        let failed: Vec<String> = probes
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
            .collect();
        out.push(check(
            "destination libvirt",
            failed
                .into_iter()
                .map(|f| format!("{}'s libvirt cannot reach {f}", i.node.name))
                .collect(),
            format!(
                "{} reaches the libvirt of {} destinations",
                i.node.name,
                probes.len()
            ),
        ));
    }

    // Nodes in maintenance.
    if i.max_nodes_in_maintenance > 0 {
        let already: Vec<&str> = i
            .nodes
            .iter()
            .filter(|n| n.status == NodeStatus::Maintenance && n.name != i.node.name)
            .map(|n| n.name.as_str())
            .collect();
        let would = already.len() + 1;
        out.push(check(
            "maintenance limit",
            if would > i.max_nodes_in_maintenance {
                vec![format!(
                    "{} would make {would} nodes in maintenance (already: {}); the limit is {}",
                    i.node.name,
                    already.join(", "),
                    i.max_nodes_in_maintenance
                )]
            } else {
                vec![]
            },
            format!(
                "{would} of at most {} nodes in maintenance",
                i.max_nodes_in_maintenance
            ),
        ));
    }

    // Other jobs touching the node's VMs, or draining onto this node.
    let vms: Vec<&str> = i.node.domains.iter().map(|d| d.name.as_str()).collect();
    let conflicts: Vec<String> = i
        .running_jobs
        .iter()
        .filter(|j| !(i.retry && j.node.as_deref() == Some(i.node.name.as_str())))
        .filter_map(|j| {
            if let Some(vm) = j.spec.vm().filter(|vm| vms.contains(vm)) {
                return Some(format!("job {} ({}) is acting on {vm}", j.id, j.kind()));
            }
            let onto = match &j.spec {
                crate::jobs::JobSpec::Drain(d) => d
                    .plan
                    .as_ref()
                    .is_some_and(|p| p.moves.iter().any(|m| m.to == i.node.name)),
                _ => false,
            };
            onto.then(|| {
                format!(
                    "job {} ({} of {}) is moving VMs onto {}",
                    j.id,
                    j.kind(),
                    j.node.as_deref().unwrap_or("?"),
                    i.node.name
                )
            })
        })
        .chain(
            // VMs on their way here (a move or create in flight).
            i.node
                .inbound
                .iter()
                .filter(|(_, j)| i.running_jobs.iter().any(|r| &r.id == *j))
                .map(|(vm, j)| format!("job {j} is putting {vm} on {}", i.node.name)),
        )
        .collect();
    out.push(check(
        "no conflicting job",
        conflicts,
        "no other job touches these VMs".into(),
    ));

    // What the drain would do to VMs that cannot live-migrate, and VFWs.
    if let Some(Ok(p)) = i.plan {
        let pinned: Vec<&planner::Move> = p
            .moves
            .iter()
            .filter(|m| m.not_migratable.is_some())
            .collect();
        let mut problems = Vec::new();
        if !pinned.is_empty() && i.fallback == Fallback::Fail {
            problems.push(format!(
                "{} cannot live-migrate; give --fallback stop or --fallback cold",
                pinned
                    .iter()
                    .map(|m| format!("{} ({})", m.vm, m.not_migratable.as_deref().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let vfws: Vec<&str> = pinned
            .iter()
            .filter(|m| m.kind == planner::VmKind::Vfw)
            .map(|m| m.vm.as_str())
            .collect();
        if !vfws.is_empty() && i.fallback != Fallback::Fail && !i.ack_vfw_downtime {
            problems.push(format!(
                "VFW {} cannot live-migrate and the {} fallback takes its cloudspace's network down; \
                 repeat with --ack-vfw-downtime",
                vfws.join(", "),
                i.fallback.as_str()
            ));
        }
        out.push(check(
            "migratable",
            problems,
            if pinned.is_empty() {
                "every VM can live-migrate".into()
            } else {
                format!(
                    "{} VMs take the {} fallback",
                    pinned.len(),
                    i.fallback.as_str()
                )
            },
        ));
    }
    if i.mode == "stop" {
        out.push(check(
            "VFW downtime",
            if !i.vfw_cloudspaces.is_empty() && !i.ack_vfw_downtime {
                vec![format!(
                    "node {} runs the virtual firewall (VFW) of cloudspace(s) {}: stopping it takes their \
                     network down until `node enable {}` restarts it. Repeat with --ack-vfw-downtime to \
                     accept, or use --mode move",
                    i.node.name,
                    i.vfw_cloudspaces.join(", "),
                    i.node.name
                )]
            } else {
                vec![]
            },
            if i.vfw_cloudspaces.is_empty() {
                "no VFW runs here".into()
            } else {
                format!("acknowledged: cloudspace(s) {} lose their firewall", i.vfw_cloudspaces.join(", "))
            },
        ));
    }
    out
}

/// The refusal text of failed checks, or `None` when all passed.
pub fn refusal(node: &str, checks: &[Check]) -> Option<String> {
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    (!failed.is_empty()).then(|| {
        format!(
            "pre-flight refused maintenance of {node}, nothing was changed:\n  {}",
            failed.join("\n  ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodemaint_proto::model::Vm;

    fn node(name: &str, status: NodeStatus, seen: i64) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            status,
            last_seen_ms: seen,
            heartbeat_interval_ms: 1000,
            protocol_version: nodemaint_proto::PROTOCOL_VERSION,
            domains: vec![Vm {
                name: format!("{name}-vm"),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn plan(to: &str) -> Result<planner::DrainPlan, planner::PlanError> {
        Ok(planner::DrainPlan {
            node: "n1".into(),
            moves: vec![planner::Move {
                vm: "n1-vm".into(),
                from: "n1".into(),
                to: to.into(),
                wave: 0,
                kind: planner::VmKind::User,
                not_migratable: None,
            }],
        })
    }

    fn input<'a>(
        nodes: &'a [NodeRecord],
        plan: &'a Result<planner::DrainPlan, planner::PlanError>,
        jobs: &'a [Job],
    ) -> Input<'a> {
        Input {
            node: &nodes[0],
            nodes,
            now_ms: 10_000,
            mode: "move",
            plan: Some(plan),
            headroom_percent: 10,
            fallback: Fallback::Fail,
            ack_vfw_downtime: false,
            vfw_cloudspaces: &[],
            max_nodes_in_maintenance: 2,
            running_jobs: jobs,
            probes: None,
            retry: false,
        }
    }

    #[test]
    fn a_healthy_start_passes_every_check() {
        let nodes = [
            node("n1", NodeStatus::Enabled, 9_500),
            node("n2", NodeStatus::Enabled, 9_500),
        ];
        let p = plan("n2");
        let checks = evaluate(&input(&nodes, &p, &[]));
        assert!(checks.iter().all(|c| c.ok), "{checks:?}");
        assert_eq!(refusal("n1", &checks), None);
    }

    #[test]
    fn each_failure_is_named() {
        let mut old = node("n2", NodeStatus::Enabled, 1_000); // unreachable
        old.protocol_version = 0;
        let nodes = [
            node("n1", NodeStatus::Enabled, 9_500),
            old,
            node("n3", NodeStatus::Maintenance, 9_500),
            node("n4", NodeStatus::Maintenance, 9_500),
        ];
        let p = plan("n2");
        let spec = crate::jobs::JobSpec::Move(crate::jobs::MoveVm {
            vm: "n1-vm".into(),
            from: "n1".into(),
            to: "n3".into(),
            ..Default::default()
        });
        let mut job = Job::new(spec, "u", Some("n1"));
        job.id = "J".into();
        let jobs = [job];
        let probes = [("n2".to_string(), Err("connection refused".to_string()))];
        let mut i = input(&nodes, &p, &jobs);
        i.probes = Some(&probes);
        let checks = evaluate(&i);
        let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
        assert_eq!(
            failed,
            [
                "agents reachable",
                "protocol version",
                "destination libvirt",
                "maintenance limit",
                "no conflicting job"
            ]
        );
        let text = refusal("n1", &checks).unwrap();
        assert!(text.contains("node n2 is unreachable"), "{text}");
        assert!(text.contains("protocol 0"), "{text}");
        assert!(
            text.contains("job J (vm.move) is acting on n1-vm"),
            "{text}"
        );
        assert!(text.contains("the limit is 2"), "{text}");
    }

    #[test]
    fn pinned_vms_need_a_fallback_and_vfws_an_acknowledgement() {
        let nodes = [
            node("n1", NodeStatus::Enabled, 9_500),
            node("n2", NodeStatus::Enabled, 9_500),
        ];
        let mut p = plan("n2");
        if let Ok(p) = &mut p {
            p.moves[0].not_migratable = Some("has a host device".into());
            p.moves[0].kind = planner::VmKind::Vfw;
        }
        let mut i = input(&nodes, &p, &[]);
        let c = evaluate(&i);
        assert!(c
            .iter()
            .any(|c| c.name == "migratable" && !c.ok && c.detail.contains("--fallback")));
        i.fallback = Fallback::Stop;
        let c = evaluate(&i);
        assert!(c
            .iter()
            .any(|c| c.name == "migratable" && c.detail.contains("--ack-vfw-downtime")));
        i.ack_vfw_downtime = true;
        assert!(evaluate(&i).iter().all(|c| c.ok));
    }

    #[test]
    fn headroom_shrinks_every_node() {
        let mut f = planner::Fleet::default();
        f.nodes.push(planner::Node::new("a", 1000, 4));
        assert_eq!(with_headroom(&f, 10).nodes[0].mem_mib, 900);
        assert_eq!(with_headroom(&f, 0).nodes[0].mem_mib, 1000);
    }
}
