//! Node methods: list and show, enable (restarts what maintenance stopped),
//! start-stopped, and post-reboot checks.

use super::*;

pub(super) fn list_nodes(c: &Coordinator) -> Reply {
    let now = now();
    Reply::Nodes(pb::NodeList {
        nodes: c.registry.all().iter().map(|n| n.summary(now)).collect(),
    })
}

pub(super) fn show_node(c: &Coordinator, name: &str) -> Result<Reply> {
    let n = node(c, name)?;
    Ok(Reply::Node(pb::NodeDetail {
        summary: Some(n.summary(now())),
        domains: n.domains.iter().map(pb::Domain::from).collect(),
        libvirt_uri: n.libvirt_uri.clone(),
    }))
}

pub(super) async fn enable_node(
    c: &Arc<Coordinator>,
    user: &str,
    r: &pb::EnableNode,
) -> Result<Reply> {
    let n = free_in_maintenance(c, &r.node, "not in maintenance; nothing to enable")?;
    if !n.stopped_by.is_empty() {
        require_reachable(&n)?;
    }
    let restart: Vec<String> = n.stopped_by.keys().cloned().collect();
    let spec = JobSpec::Enable(jobs::Enable {
        restart,
        parent: None,
    });
    let job = Job::new(spec, user, Some(&n.name));
    take_and_launch(
        c,
        &n.name,
        NodeStatus::Maintenance,
        NodeStatus::Enabled,
        job,
    )
    .await
}

pub(super) async fn start_stopped(
    c: &Arc<Coordinator>,
    user: &str,
    r: &pb::StartStopped,
) -> Result<Reply> {
    let n = node(c, &r.node)?;
    let names = crate::driver::executor::shut_off(&n);
    if r.dry_run {
        return json(&serde_json::json!({ "node": n.name, "would_start": names }));
    }
    if n.status == NodeStatus::Maintenance {
        return refuse(
            Code::WrongState,
            format!("node {} is in maintenance; enable it first", n.name),
        );
    }
    if let Some(j) = &n.current_job {
        return refuse(
            Code::Conflict,
            format!("node {} is held by job {j}", n.name),
        );
    }
    require_reachable(&n)?;
    if names.is_empty() {
        return refuse(
            Code::WrongState,
            format!("node {} has no shut-off VM", n.name),
        );
    }
    let spec = JobSpec::StartStopped(jobs::StartStopped { start: names });
    let job = Job::new(spec, user, Some(&n.name));
    take_and_launch(c, &n.name, NodeStatus::Enabled, NodeStatus::Enabled, job).await
}

pub(super) async fn check_node(
    c: &Arc<Coordinator>,
    user: &str,
    r: &pb::CheckNode,
) -> Result<Reply> {
    let n = node(c, &r.node)?;
    require_reachable(&n)?;
    let spec = JobSpec::Check(jobs::Check {
        start_failed: r.start_failed,
    });
    launch(c, Job::new(spec, user, Some(&n.name))).await
}
