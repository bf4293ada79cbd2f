//! The node registry: node records in the `nodes` KV bucket, written with
//! compare-and-set, and mirrored in memory by a KV watch for fast reads.
//!
//! Reads from the mirror may lag a write by milliseconds; every decision
//! that must not race (status changes) is made inside a CAS update, which
//! sees the stored value.

use async_nats::jetstream::kv;
use futures::StreamExt;
use nodemaint_proto::bus::{self, CasError};
use nodemaint_proto::model::{Capacity, NodeRecord, Vm};
use nodemaint_proto::pb;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// Cheap to clone: clones share the mirror.
#[derive(Clone)]
pub struct Registry {
    kv: kv::Store,
    mirror: Arc<RwLock<BTreeMap<String, NodeRecord>>>,
    /// Last heartbeat per node as this coordinator saw it. Liveness lives
    /// only here: heartbeats are core NATS messages (no stream stores them)
    /// and the stored `last_seen_ms` changes only with the record (a new
    /// boot id, address, capacity...). Every coordinator, standby included,
    /// subscribes to heartbeats, so a standby that takes the lease knows
    /// liveness at once and one that starts learns it within one interval.
    seen: Arc<RwLock<HashMap<String, i64>>>,
}

impl Registry {
    /// Opens the registry and starts mirroring it; returns once the mirror
    /// has caught up with the bucket.
    pub async fn open(kv: kv::Store) -> Result<Self, bus::BoxError> {
        let reg = Registry {
            kv,
            mirror: Arc::default(),
            seen: Arc::default(),
        };
        // Watch first, then read: a change landing in between is replayed
        // by the watch rather than missed until the node's next change.
        let mut watch = reg.kv.watch_all().await?;
        let initial = bus::all_json::<NodeRecord>(&reg.kv).await?;
        {
            let mut m = reg.mirror.write().unwrap();
            for (k, v) in initial {
                m.insert(k, v);
            }
        }
        let mirror = reg.mirror.clone();
        tokio::spawn(async move {
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { continue };
                let mut m = mirror.write().unwrap();
                match entry.operation {
                    kv::Operation::Put => {
                        if let Ok(rec) = serde_json::from_slice::<NodeRecord>(&entry.value) {
                            m.insert(entry.key, rec);
                        }
                    }
                    kv::Operation::Delete | kv::Operation::Purge => {
                        m.remove(&entry.key);
                    }
                }
            }
        });
        Ok(reg)
    }

    fn with_seen(&self, mut rec: NodeRecord) -> NodeRecord {
        if let Some(&t) = self.seen.read().unwrap().get(&rec.name) {
            rec.last_seen_ms = rec.last_seen_ms.max(t);
        }
        rec
    }

    pub fn get(&self, node: &str) -> Option<NodeRecord> {
        let rec = self.mirror.read().unwrap().get(node).cloned()?;
        Some(self.with_seen(rec))
    }

    pub fn all(&self) -> Vec<NodeRecord> {
        let recs: Vec<NodeRecord> = self.mirror.read().unwrap().values().cloned().collect();
        recs.into_iter().map(|r| self.with_seen(r)).collect()
    }

    /// Notes a heartbeat in memory (cheap; no KV write).
    pub fn saw(&self, node: &str, ts_ms: i64) {
        let mut seen = self.seen.write().unwrap();
        let t = seen.entry(node.to_string()).or_insert(0);
        *t = (*t).max(ts_ms);
    }

    /// Reads the stored record, bypassing the mirror.
    pub async fn fresh(&self, node: &str) -> Result<Option<NodeRecord>, bus::BoxError> {
        bus::get_json(&self.kv, node).await
    }

    /// CAS update of one node; `f` may refuse. The mirror is updated at once
    /// so the writer reads its own write.
    pub async fn update<E>(
        &self,
        node: &str,
        f: impl FnMut(Option<NodeRecord>) -> Result<NodeRecord, E>,
    ) -> Result<NodeRecord, CasError<E>> {
        let updated = bus::cas_update(&self.kv, node, f).await?;
        self.mirror
            .write()
            .unwrap()
            .insert(node.to_string(), updated.value.clone());
        Ok(updated.value)
    }

    /// Claims `node` as the destination of `vm` for `job` (see
    /// [`NodeRecord::claim_inbound`]): refused once the node is in
    /// maintenance, so nothing lands on a node being drained.
    pub async fn claim_inbound(&self, node: &str, vm: &str, job: &str) -> Result<(), String> {
        self.update::<String>(node, |r| {
            let mut r = r.ok_or_else(|| format!("unknown node {node}"))?;
            r.claim_inbound(vm, job)?;
            Ok(r)
        })
        .await
        .map(|_| ())
        .map_err(|e| match e {
            CasError::Rejected(why) => why,
            other => format!("cannot claim {node} for {vm}: {other}"),
        })
    }

    /// Drops every claim of a job that ended (it lands nothing any more).
    pub async fn release_inbound(&self, job: &str) {
        let held: Vec<String> = self
            .all()
            .into_iter()
            .filter(|n| n.inbound.values().any(|j| j == job))
            .map(|n| n.name)
            .collect();
        for node in held {
            let res = self
                .update::<String>(&node, |r| {
                    let mut r = r.ok_or_else(|| format!("node {node} vanished"))?;
                    r.inbound.retain(|_, j| j != job);
                    Ok(r)
                })
                .await;
            if let Err(e) = res {
                // Harmless: entering maintenance ignores claims of ended jobs.
                tracing::warn!(node, job, error = %e, "claim of an ended job left behind");
            }
        }
    }

    /// Finds a VM by name: (node record, vm). Several hits would mean a VM
    /// runs twice, which callers report rather than pick one.
    pub fn find_vm(&self, name: &str) -> Vec<(NodeRecord, Vm)> {
        let hits: Vec<(NodeRecord, Vm)> = self
            .mirror
            .read()
            .unwrap()
            .values()
            .flat_map(|n| {
                n.domains
                    .iter()
                    .filter(|d| d.name == name)
                    .map(move |d| (n.clone(), d.clone()))
            })
            .collect();
        // Mid-migration the destination holds a paused incoming copy; the
        // VM is the one that is not migrating.
        let settled: Vec<_> = hits
            .iter()
            .filter(|(_, d)| d.state != nodemaint_proto::model::VmState::Migrating)
            .cloned()
            .collect();
        let hits = if settled.len() == 1 { settled } else { hits };
        hits.into_iter()
            .map(|(n, d)| (self.with_seen(n), d))
            .collect()
    }
}

/// How long after it starts listening a coordinator has heard every live
/// node (pure): the longest interval a node promised, plus a margin for a
/// late one, at most 10 s; nothing to learn without nodes.
pub fn liveness_learned_after(intervals_ms: &[u32]) -> std::time::Duration {
    let Some(&longest) = intervals_ms.iter().max() else {
        return std::time::Duration::ZERO;
    };
    let ms = u64::from(longest.max(100)) * 5 / 4 + 100;
    std::time::Duration::from_millis(ms.min(10_000))
}

/// Whether a heartbeat changes the stored record beyond liveness (pure):
/// only then is it written. Refreshing the stored `last_seen_ms` on a timer
/// would cost a KV write per node per period (333/s at 10,000 nodes every
/// 30 s) and still be too stale to say a node is reachable after a restart.
pub fn heartbeat_needs_write(rec: Option<&NodeRecord>, hb: &pb::Heartbeat) -> bool {
    let Some(r) = rec else { return true };
    let cap = hb.capacity.map(|c| (c.vcpus, c.memory_mib));
    r.boot_id != hb.boot_id
        || r.agent_version != hb.agent_version
        || r.address != hb.address
        || r.libvirt_uri != hb.libvirt_uri
        || r.boot_time_ms != hb.boot_time_ms as i64
        || r.heartbeat_interval_ms != hb.interval_ms
        || r.protocol_version != hb.protocol_version
        || (cap.is_some() && cap != Some((r.capacity.vcpus, r.capacity.memory_mib)))
}

/// Applies a heartbeat (pure): liveness, boot id, capacity, address.
pub fn apply_heartbeat(
    rec: Option<NodeRecord>,
    node: &str,
    hb: &pb::Heartbeat,
    ts_ms: i64,
) -> NodeRecord {
    let mut rec = rec.unwrap_or_else(|| NodeRecord {
        name: node.to_string(),
        ..Default::default()
    });
    rec.last_seen_ms = rec.last_seen_ms.max(ts_ms);
    rec.boot_id = hb.boot_id.clone();
    rec.agent_version = hb.agent_version.clone();
    rec.address = hb.address.clone();
    rec.libvirt_uri = hb.libvirt_uri.clone();
    rec.boot_time_ms = hb.boot_time_ms as i64;
    rec.heartbeat_interval_ms = hb.interval_ms;
    rec.protocol_version = hb.protocol_version;
    if let Some(c) = hb.capacity {
        rec.capacity = Capacity {
            vcpus: c.vcpus,
            memory_mib: c.memory_mib,
        };
    }
    rec
}

/// Applies an inventory (pure). Returns `None` when it is older than what
/// the record holds, so a late event never overwrites a newer list.
pub fn apply_inventory(
    rec: Option<NodeRecord>,
    node: &str,
    inv: &pb::Inventory,
) -> Option<NodeRecord> {
    let mut rec = rec.unwrap_or_else(|| NodeRecord {
        name: node.to_string(),
        ..Default::default()
    });
    if inv.generation <= rec.inventory_generation {
        return None;
    }
    rec.inventory_generation = inv.generation;
    rec.domains = inv.domains.iter().map(Vm::from).collect();
    Some(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(generation: u64, names: &[&str]) -> pb::Inventory {
        pb::Inventory {
            generation,
            domains: names
                .iter()
                .map(|n| pb::Domain {
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn heartbeat_creates_and_refreshes() {
        let hb = pb::Heartbeat {
            boot_id: "b1".into(),
            interval_ms: 1000,
            capacity: Some(pb::HostCapacity {
                vcpus: 8,
                memory_mib: 4096,
            }),
            ..Default::default()
        };
        let r = apply_heartbeat(None, "n1", &hb, 5000);
        assert_eq!(
            (r.name.as_str(), r.boot_id.as_str(), r.capacity.memory_mib),
            ("n1", "b1", 4096)
        );
        // An out-of-order older heartbeat does not move last_seen back.
        let r = apply_heartbeat(Some(r), "n1", &hb, 4000);
        assert_eq!(r.last_seen_ms, 5000);
    }

    #[test]
    fn heartbeat_keeps_status_and_domains() {
        let rec = NodeRecord {
            name: "n1".into(),
            status: nodemaint_proto::model::NodeStatus::Maintenance,
            domains: vec![Vm::default()],
            ..Default::default()
        };
        let r = apply_heartbeat(Some(rec), "n1", &pb::Heartbeat::default(), 1);
        assert_eq!(r.status, nodemaint_proto::model::NodeStatus::Maintenance);
        assert_eq!(r.domains.len(), 1);
    }

    #[test]
    fn only_changes_are_written_never_liveness_alone() {
        let hb = pb::Heartbeat {
            boot_id: "b1".into(),
            interval_ms: 1000,
            ..Default::default()
        };
        assert!(heartbeat_needs_write(None, &hb));
        let r = apply_heartbeat(None, "n1", &hb, 10_000);
        // However old the stored liveness, an unchanged heartbeat is no write.
        assert!(!heartbeat_needs_write(Some(&r), &hb));
        let rebooted = pb::Heartbeat {
            boot_id: "b2".into(),
            ..hb.clone()
        };
        assert!(heartbeat_needs_write(Some(&r), &rebooted));
        let slower = pb::Heartbeat {
            interval_ms: 2000,
            ..hb
        };
        assert!(heartbeat_needs_write(Some(&r), &slower));
    }

    #[test]
    fn a_new_leader_waits_about_one_interval_to_learn_liveness() {
        use std::time::Duration;
        assert_eq!(liveness_learned_after(&[]), Duration::ZERO);
        assert_eq!(
            liveness_learned_after(&[2000, 300]),
            Duration::from_millis(2600)
        );
        assert_eq!(liveness_learned_after(&[0]), Duration::from_millis(225));
        assert_eq!(liveness_learned_after(&[600_000]), Duration::from_secs(10));
    }

    #[test]
    fn older_inventory_is_ignored() {
        let r = apply_inventory(None, "n1", &inv(5, &["a", "b"])).unwrap();
        assert_eq!(r.domains.len(), 2);
        assert!(apply_inventory(Some(r.clone()), "n1", &inv(4, &["a"])).is_none());
        assert!(apply_inventory(Some(r.clone()), "n1", &inv(5, &["a"])).is_none());
        let r = apply_inventory(Some(r), "n1", &inv(6, &["a"])).unwrap();
        assert_eq!(r.domains.len(), 1);
    }
}
