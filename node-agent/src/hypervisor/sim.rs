//! An in-memory hypervisor for scale tests and what-if runs. Nodes of one
//! [`SimWorld`] can migrate to each other; a migration takes
//! `memory ÷ bandwidth`, scaled by `time_scale` (0.01 = a hundred times
//! faster than real time). Never used where a test claims libvirt behaviour.

use super::{HvError, Hypervisor, MigrateProgress, MigrateTarget, StopOutcome};
use nodemaint_proto::model::{Capacity, Vm, VmState};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// URI scheme of simulated nodes: `sim://<node>`.
pub const SCHEME: &str = "sim://";

/// All simulated nodes of one process, so migrations can cross them.
#[derive(Clone, Default)]
pub struct SimWorld {
    nodes: Arc<Mutex<HashMap<String, BTreeMap<String, Vm>>>>,
    pub bandwidth_mibs: u64,
    pub time_scale: f64,
}

impl SimWorld {
    pub fn new(bandwidth_mibs: u64, time_scale: f64) -> Self {
        SimWorld {
            nodes: Arc::default(),
            bandwidth_mibs: bandwidth_mibs.max(1),
            time_scale,
        }
    }

    pub fn node(&self, name: &str, capacity: Capacity) -> SimHypervisor {
        self.nodes
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default();
        SimHypervisor {
            world: self.clone(),
            node: name.to_string(),
            capacity,
        }
    }

    pub fn add_vm(&self, node: &str, vm: Vm) {
        self.nodes
            .lock()
            .unwrap()
            .entry(node.to_string())
            .or_default()
            .insert(vm.name.clone(), vm);
    }

    /// Every (node, vm) pair: invariant checks look for duplicates here.
    pub fn placements(&self) -> Vec<(String, Vm)> {
        let nodes = self.nodes.lock().unwrap();
        let mut out: Vec<_> = nodes
            .iter()
            .flat_map(|(n, vms)| vms.values().map(move |v| (n.clone(), v.clone())))
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
        out
    }

    /// Power-cycles a node: every running VM is shut off, definitions stay.
    pub fn power_cycle(&self, node: &str) {
        if let Some(vms) = self.nodes.lock().unwrap().get_mut(node) {
            for vm in vms.values_mut() {
                vm.state = VmState::Shutoff;
            }
        }
    }
}

pub struct SimHypervisor {
    world: SimWorld,
    node: String,
    capacity: Capacity,
}

impl SimHypervisor {
    fn with_vm<T>(
        &self,
        vm: &str,
        f: impl FnOnce(&mut Vm) -> Result<T, HvError>,
    ) -> Result<T, HvError> {
        let mut nodes = self.world.nodes.lock().unwrap();
        let v = nodes
            .get_mut(&self.node)
            .and_then(|vms| vms.get_mut(vm))
            .ok_or_else(|| HvError::NotFound(vm.to_string()))?;
        f(v)
    }
}

impl Hypervisor for SimHypervisor {
    fn list(&self) -> Result<Vec<Vm>, HvError> {
        let nodes = self.world.nodes.lock().unwrap();
        Ok(nodes
            .get(&self.node)
            .map(|vms| vms.values().cloned().collect())
            .unwrap_or_default())
    }

    fn host_capacity(&self) -> Result<Capacity, HvError> {
        Ok(self.capacity)
    }

    fn probe(&self, uri: &str) -> Result<(), HvError> {
        let node = uri.strip_prefix(SCHEME).unwrap_or(uri);
        if self.world.nodes.lock().unwrap().contains_key(node) {
            Ok(())
        } else {
            Err(HvError::Connection {
                uri: uri.to_string(),
                message: "no such simulated node".into(),
            })
        }
    }

    fn start(&self, vm: &str) -> Result<(), HvError> {
        self.with_vm(vm, |v| {
            if v.state == VmState::Running {
                return Err(HvError::WrongState(format!("{vm} is already running")));
            }
            v.state = VmState::Running;
            Ok(())
        })
    }

    fn stop(&self, vm: &str, _graceful: Duration) -> Result<StopOutcome, HvError> {
        self.with_vm(vm, |v| {
            if v.state == VmState::Shutoff {
                return Ok(StopOutcome::AlreadyOff);
            }
            v.state = VmState::Shutoff;
            Ok(StopOutcome::Graceful)
        })
    }

    fn define(&self, xml: &str) -> Result<String, HvError> {
        // Only what the agent renders from a spec: name, memory, vcpus, metadata.
        let tag = |t: &str| -> Option<String> {
            let start = xml.find(&format!("<{t}"))?;
            let open_end = xml[start..].find('>')? + start + 1;
            let close = xml[open_end..].find(&format!("</{t}>"))? + open_end;
            Some(xml[open_end..close].trim().to_string())
        };
        let name = tag("name").ok_or_else(|| HvError::Other("domain XML without <name>".into()))?;
        let meta = xml
            .find("<nodemaint:vm")
            .map(|i| super::metadata::parse(&xml[i..]))
            .unwrap_or_default();
        let vm = Vm {
            uuid: format!("sim-{name}"),
            name: name.clone(),
            kind: meta.kind,
            cloudspace: meta.cloudspace,
            anti_affinity: meta.anti_affinity,
            state: VmState::Shutoff,
            vcpus: tag("vcpu").and_then(|v| v.parse().ok()).unwrap_or(1),
            memory_mib: tag("memory")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                / 1024,
            persistent: true,
            not_migratable: None,
        };
        self.world.add_vm(&self.node, vm);
        Ok(name)
    }

    fn migrate(
        &self,
        vm: &str,
        target: &MigrateTarget,
        progress: &mut dyn FnMut(MigrateProgress),
    ) -> Result<(), HvError> {
        let dest = target
            .libvirt_uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| HvError::Connection {
                uri: target.libvirt_uri.clone(),
                message: "not a sim:// URI".into(),
            })?
            .to_string();
        // A shut-off VM moves its definition only, instantly.
        let mem = self.with_vm(vm, |v| {
            Ok(if v.state == VmState::Running {
                v.memory_mib
            } else {
                0
            })
        })?;
        if !self.world.nodes.lock().unwrap().contains_key(&dest) {
            return Err(HvError::Connection {
                uri: target.libvirt_uri.clone(),
                message: "no such simulated node".into(),
            });
        }
        let secs = mem as f64 / self.world.bandwidth_mibs as f64 * self.world.time_scale;
        let total = Duration::from_secs_f64(secs);
        let started = Instant::now();
        let total_bytes = mem * 1024 * 1024;
        loop {
            let elapsed = started.elapsed();
            if elapsed >= total {
                break;
            }
            if elapsed >= target.timeout {
                return Err(HvError::Timeout {
                    vm: vm.to_string(),
                    secs: target.timeout.as_secs(),
                });
            }
            if let Some(reason) = target.cancel.requested() {
                return Err(HvError::Cancelled {
                    vm: vm.to_string(),
                    reason,
                });
            }
            let frac = elapsed.as_secs_f64() / total.as_secs_f64();
            progress(MigrateProgress {
                percent: frac * 100.0,
                bytes_processed: (total_bytes as f64 * frac) as u64,
                bytes_remaining: (total_bytes as f64 * (1.0 - frac)) as u64,
                ..Default::default()
            });
            std::thread::sleep((total - elapsed).min(Duration::from_millis(200)));
        }
        // Switch-over is atomic: the VM is never on both nodes, nor on none.
        let mut nodes = self.world.nodes.lock().unwrap();
        let v = nodes
            .get_mut(&self.node)
            .and_then(|vms| vms.remove(vm))
            .ok_or_else(|| HvError::NotFound(vm.to_string()))?;
        nodes.entry(dest).or_default().insert(v.name.clone(), v);
        progress(MigrateProgress {
            percent: 100.0,
            bytes_processed: total_bytes,
            bytes_remaining: 0,
            ..Default::default()
        });
        Ok(())
    }
}
