//! VM methods: list VMs and VFWs, start, stop, move (one VM or a
//! cloudspace's VFW) and create.

use super::*;

pub(super) fn list_vms(c: &Coordinator, r: &pb::ListVms) -> Result<Reply> {
    if !r.node.is_empty() {
        node(c, &r.node)?;
    }
    let kind = pb::VmKind::try_from(r.kind).unwrap_or_default();
    let state = pb::VmState::try_from(r.state).unwrap_or_default();
    let mut vms = Vec::new();
    for n in c.registry.all() {
        if !r.node.is_empty() && n.name != r.node {
            continue;
        }
        for d in &n.domains {
            let keep = (r.cloudspace.is_empty() || d.cloudspace.as_deref() == Some(&r.cloudspace))
                && (kind == pb::VmKind::Unspecified || pb::VmKind::from(d.kind) == kind)
                && (state == pb::VmState::Unspecified || pb::VmState::from(d.state) == state);
            if keep {
                vms.push(pb::VmEntry {
                    node: n.name.clone(),
                    domain: Some(pb::Domain::from(d)),
                    stopped_by: n.stopped_by.get(&d.name).cloned().unwrap_or_default(),
                });
            }
        }
    }
    Ok(Reply::Vms(pb::VmList { vms }))
}

/// Every cloudspace's VFW and where it runs; a cloudspace whose VMs exist
/// but whose VFW no node reports is listed with an empty node, so a lost
/// firewall shows up instead of disappearing.
pub(super) fn list_vfws(c: &Coordinator) -> Reply {
    let now = now();
    let mut by_cs: BTreeMap<String, Vec<pb::VfwEntry>> = BTreeMap::new();
    for n in c.registry.all() {
        for d in &n.domains {
            let Some(cs) = d.cloudspace.clone() else {
                continue;
            };
            let entries = by_cs.entry(cs.clone()).or_default();
            if d.kind == VmKind::Vfw {
                entries.push(pb::VfwEntry {
                    cloudspace: cs,
                    node: n.name.clone(),
                    domain: Some(pb::Domain::from(d)),
                    node_reachable: n.reachable_at(now),
                });
            }
        }
    }
    let vfws = by_cs
        .into_iter()
        .flat_map(|(cs, entries)| {
            if entries.is_empty() {
                vec![pb::VfwEntry {
                    cloudspace: cs,
                    ..Default::default()
                }]
            } else {
                entries
            }
        })
        .collect();
    Reply::Vfws(pb::VfwList { vfws })
}

pub(super) async fn start_vm(c: &Arc<Coordinator>, user: &str, r: &pb::VmAction) -> Result<Reply> {
    let (n, vm) = locate_vm(c, &r.vm)?;
    require_reachable(&n)?;
    if n.status == NodeStatus::Maintenance {
        return refuse(
            Code::WrongState,
            format!(
                "node {} is in maintenance; enable it first or move {} elsewhere",
                n.name, vm.name
            ),
        );
    }
    if vm.state == VmState::Running {
        return refuse(
            Code::WrongState,
            format!("VM {} is already running on {}", vm.name, n.name),
        );
    }
    let spec = JobSpec::Start(jobs::StartVm {
        vm: vm.name.clone(),
    });
    launch(c, Job::new(spec, user, Some(&n.name))).await
}

pub(super) async fn stop_vm(c: &Arc<Coordinator>, user: &str, r: &pb::VmAction) -> Result<Reply> {
    let (n, vm) = locate_vm(c, &r.vm)?;
    require_reachable(&n)?;
    if vm.state == VmState::Shutoff {
        return refuse(
            Code::WrongState,
            format!("VM {} is already shut off on {}", vm.name, n.name),
        );
    }
    let timeout = if r.graceful_timeout_s > 0 {
        r.graceful_timeout_s
    } else {
        c.cfg.stop_graceful_timeout_s
    };
    let spec = JobSpec::Stop(jobs::StopVm {
        vm: vm.name.clone(),
        graceful_timeout_s: timeout,
    });
    launch(c, Job::new(spec, user, Some(&n.name))).await
}

pub(super) async fn move_vm(c: &Arc<Coordinator>, user: &str, r: &pb::MoveVm) -> Result<Reply> {
    let (src, vm) = locate_vm(c, &r.vm)?;
    let dest = node(c, &r.to_node)?;
    if dest.name == src.name {
        return refuse(
            Code::InvalidArgument,
            format!("VM {} already runs on {}", vm.name, src.name),
        );
    }
    require_reachable(&src)?;
    require_reachable(&dest)?;
    planner::validate_move(&fleet(c), &vm.name, &dest.name).map_err(plan_error)?;
    if vm.state != VmState::Running {
        return refuse(
            Code::WrongState,
            format!(
                "VM {} is {:?} on {}; only running VMs are live-migrated",
                vm.name, vm.state, src.name
            ),
        );
    }
    let converge = c.cfg.migration.converge.with_request(r.converge.as_ref());
    let kind = c
        .migrate_kind(&vm.name, &dest, r.timeout_s, r.max_speed_mibs, &converge)
        .map_err(|e| Refusal(Code::Unavailable, e))?;
    let pb::agent_command::Kind::Migrate(m) = kind else {
        return Err(internal("the migrate command is not a migration"));
    };
    let spec = JobSpec::Move(jobs::MoveVm {
        vm: m.vm,
        from: src.name.clone(),
        to: m.dest_node,
        dest_libvirt_uri: m.dest_libvirt_uri,
        dest_migrate_uri: m.dest_migrate_uri,
        timeout_s: m.timeout_s,
        progress_timeout_s: m.progress_timeout_s,
        max_speed_mibs: m.max_speed_mibs,
        converge: Some(converge),
    });
    launch(c, Job::new(spec, user, Some(&src.name))).await
}

pub(super) async fn move_vfw(c: &Arc<Coordinator>, user: &str, r: &pb::MoveVfw) -> Result<Reply> {
    let to = (!r.to_node.is_empty()).then_some(r.to_node.as_str());
    if let Some(to) = to {
        node(c, to)?;
    }
    let m = planner::plan_vfw_move(&fleet(c), &r.cloudspace, to).map_err(plan_error)?;
    move_vm(
        c,
        user,
        &pb::MoveVm {
            vm: m.vm,
            to_node: m.to,
            timeout_s: r.timeout_s,
            max_speed_mibs: 0,
            converge: None,
        },
    )
    .await
}

/// Cloudspaces whose VFW runs on the node (these firewalls go down in stop mode).
pub fn vfw_cloudspaces(n: &NodeRecord) -> Vec<String> {
    let mut cs: Vec<String> = n
        .domains
        .iter()
        .filter(|d| d.kind == VmKind::Vfw && d.state == VmState::Running)
        .map(|d| d.cloudspace.clone().unwrap_or_else(|| d.name.clone()))
        .collect();
    cs.sort();
    cs.dedup();
    cs
}

pub(super) async fn create_vm(c: &Arc<Coordinator>, user: &str, r: &pb::CreateVm) -> Result<Reply> {
    nodemaint_proto::subjects::validate_token(&r.name)
        .map_err(|e| Refusal(Code::InvalidArgument, format!("VM name: {e}")))?;
    if r.memory_mib == 0 || r.vcpus == 0 {
        return refuse(
            Code::InvalidArgument,
            "give --memory MiB and --vcpus, both above 0",
        );
    }
    if r.vfw && r.cloudspace.is_empty() {
        return refuse(
            Code::InvalidArgument,
            "a VFW belongs to a cloudspace: give --cloudspace",
        );
    }
    if !c.registry.find_vm(&r.name).is_empty() {
        return refuse(
            Code::Conflict,
            format!("a VM named {:?} already exists", r.name),
        );
    }
    let f = fleet(c);
    if r.vfw
        && f.vms.iter().any(|v| {
            v.kind == planner::VmKind::Vfw && v.cloudspace.as_deref() == Some(&r.cloudspace)
        })
    {
        return refuse(
            Code::Conflict,
            format!("cloudspace {} already has a VFW", r.cloudspace),
        );
    }
    let mut vm = planner::Vm::new(r.name.clone(), String::new(), r.memory_mib, r.vcpus);
    vm.kind = if r.vfw {
        planner::VmKind::Vfw
    } else {
        planner::VmKind::User
    };
    vm.cloudspace = (!r.cloudspace.is_empty()).then(|| r.cloudspace.clone());
    // The scheduler: never a node in maintenance (the planner only places on ENABLED, reachable nodes).
    let dest = planner::place_new(&f, &vm).map_err(plan_error)?;
    let spec = JobSpec::Create(jobs::CreateVm {
        vm: r.name.clone(),
        memory_mib: r.memory_mib,
        vcpus: r.vcpus,
        cloudspace: r.cloudspace.clone(),
        vfw: r.vfw,
        to: dest.clone(),
    });
    launch(c, Job::new(spec, user, Some(&dest))).await
}
