//! libvirt backend on the `virt` crate; works with any URI
//! (`qemu:///system`, `qemu+tcp://host/system`, `test:///default`,
//! `test:///abs/path/node.xml`).

use super::metadata;
use super::{Escalation, HvError, Hypervisor, MigrateProgress, MigrateTarget, StopOutcome};
use crate::converge::{self, Escalator};
use nodemaint_proto::model::{Capacity, Vm, VmState};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use virt::connect::Connect;
use virt::domain::{Domain, DomainState, MigrateParameters};
use virt::error::{Error as VirtError, ErrorNumber};
use virt::sys;

pub struct LibvirtHypervisor {
    uri: String,
    conn: Mutex<Option<Connect>>,
}

impl LibvirtHypervisor {
    /// Opens the connection now, so a wrong URI fails at agent start.
    pub fn open(uri: &str) -> Result<Self, HvError> {
        // libvirt prints every error to stderr by default; we report them ourselves.
        virt::error::clear_error_callback();
        let hv = LibvirtHypervisor {
            uri: uri.to_string(),
            conn: Mutex::new(None),
        };
        hv.connection()?;
        Ok(hv)
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The shared connection, opened on first use or after it was lost.
    fn connection(&self) -> Result<Connect, HvError> {
        let mut guard = self.conn.lock().expect("libvirt connection lock");
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = Connect::open(Some(&self.uri)).map_err(|e| HvError::Connection {
            uri: self.uri.clone(),
            message: e.message().to_string(),
        })?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Runs `f` on the connection; when it fails and the connection turns
    /// out to be dead (libvirtd restarted), reopens it and tries once more.
    fn with_conn<T>(&self, f: impl Fn(&Connect) -> Result<T, VirtError>) -> Result<T, HvError> {
        let conn = self.connection()?;
        match f(&conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                if conn.is_alive().unwrap_or(false) {
                    return Err(map_err(e));
                }
                tracing::warn!(uri = %self.uri, error = %e.message(), "libvirt connection lost, reopening");
                *self.conn.lock().expect("libvirt connection lock") = None;
                let conn = self.connection()?;
                f(&conn).map_err(map_err)
            }
        }
    }

    fn domain(&self, vm: &str) -> Result<Domain, HvError> {
        self.with_conn(|c| c.lookup_domain_by_name(vm))
            .map_err(|e| match e {
                HvError::Libvirt { .. } | HvError::NotFound(_) => HvError::NotFound(vm.to_string()),
                other => other,
            })
    }
}

fn map_err(e: VirtError) -> HvError {
    let code = e.code();
    if code.is(ErrorNumber::NoDomain) {
        return HvError::NotFound(e.message().to_string());
    }
    if code.is(ErrorNumber::OperationInvalid) {
        return HvError::WrongState(e.message().to_string());
    }
    HvError::Libvirt {
        code: code.to_raw() as i32,
        domain: e.domain().to_raw() as i32,
        message: e.message().to_string(),
    }
}

fn vm_state(s: DomainState) -> VmState {
    match s {
        DomainState::Running | DomainState::Blocked => VmState::Running,
        DomainState::Paused | DomainState::PMSuspended => VmState::Paused,
        DomainState::Shutoff | DomainState::Shutdown => VmState::Shutoff,
        DomainState::Crashed => VmState::Crashed,
        DomainState::NoState => VmState::Other,
    }
}

fn describe(dom: &Domain) -> Result<Vm, VirtError> {
    let info = dom.info()?;
    // The incoming side of a live migration is a paused copy: report it as
    // MIGRATING, so nobody takes it for a second running instance.
    let incoming = matches!(
        dom.state(),
        Ok((_, virt::enumutil::Enum::Known(virt::domain::DomainStateReason::Paused(r))))
            if r.is(virt::domain::DomainPausedReason::Migration)
    );
    let meta = dom
        .metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(metadata::NAMESPACE),
            0,
        )
        .map(|xml| metadata::parse(&xml))
        .unwrap_or_default();
    Ok(Vm {
        uuid: dom.uuid_string()?,
        name: dom.name()?,
        kind: meta.kind,
        cloudspace: meta.cloudspace,
        anti_affinity: meta.anti_affinity,
        state: if incoming {
            VmState::Migrating
        } else {
            vm_state(info.state.known().unwrap_or(DomainState::NoState))
        },
        vcpus: info.nr_virt_cpu,
        memory_mib: info.max_mem / 1024,
        persistent: dom.is_persistent().unwrap_or(false),
        not_migratable: if meta.no_live_migration {
            Some("marked migratable=\"no\" in its nodemaint metadata".into())
        } else {
            // A passed-through host device cannot follow the VM.
            dom.xml_desc(0)
                .ok()
                .filter(|xml| xml.contains("<hostdev"))
                .map(|_| "has a host device (<hostdev>) attached".into())
        },
    })
}

/// How long a migration may take to stop after its abort before the agent
/// answers without waiting for it.
/// A domain job's statistics by name (numbers only), from
/// virDomainGetJobStats. Raw: virt 0.5's `job_stats` hands a NULL parameter
/// array to `Vec::from_raw_parts` when no job runs, which aborts the process.
struct JobStats(Vec<(String, u64)>);

impl JobStats {
    fn get(&self, name: &std::ffi::CStr) -> Option<u64> {
        let name = name.to_str().ok()?;
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

fn job_stats(dom: &Domain, flags: u32) -> Option<JobStats> {
    let mut kind = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut n = 0;
    // SAFETY: `dom` is a live domain; libvirt allocates `params` (n entries)
    // and we free it with virTypedParamsFree below.
    let rc =
        unsafe { sys::virDomainGetJobStats(dom.as_ptr(), &mut kind, &mut params, &mut n, flags) };
    if rc < 0 || params.is_null() {
        return None;
    }
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for i in 0..n.max(0) as usize {
        // SAFETY: i < n entries, initialised by libvirt.
        let p = unsafe { &*params.add(i) };
        let name = unsafe { std::ffi::CStr::from_ptr(p.field.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: the union member read is the one `type_` names.
        let v = unsafe {
            match p.type_ as u32 {
                sys::VIR_TYPED_PARAM_INT => p.value.i.max(0) as u64,
                sys::VIR_TYPED_PARAM_UINT => u64::from(p.value.ui),
                sys::VIR_TYPED_PARAM_LLONG => p.value.l.max(0) as u64,
                sys::VIR_TYPED_PARAM_ULLONG => p.value.ul,
                sys::VIR_TYPED_PARAM_DOUBLE => p.value.d.max(0.0) as u64,
                _ => continue,
            }
        };
        out.push((name, v));
    }
    unsafe { sys::virTypedParamsFree(params, n) };
    Some(JobStats(out))
}

fn set_downtime(dom: &Domain, vm: &str, ms: u64) {
    if let Err(e) = dom.migrate_set_max_downtime(ms, 0) {
        tracing::warn!(vm, ms, error = %e, "cannot set the allowed downtime");
    }
}

fn last_error() -> String {
    VirtError::last_error().message().to_string()
}

/// Downtime (ms) of a completed incoming migration, from the destination.
/// The completed migration job's (downtime ms, bytes sent), as libvirt
/// keeps them on the destination; kept there for others to read too
/// (without KEEP_COMPLETED the first reader clears them).
fn completed_stats(uri: &str, vm: &str) -> (Option<u64>, Option<u64>) {
    let stats = Connect::open(Some(uri))
        .ok()
        .and_then(|conn| conn.lookup_domain_by_name(vm).ok())
        .and_then(|dom| {
            job_stats(
                &dom,
                sys::VIR_DOMAIN_JOB_STATS_COMPLETED | sys::VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED,
            )
        });
    match stats {
        Some(s) => (
            s.get(sys::VIR_DOMAIN_JOB_DOWNTIME),
            s.get(sys::VIR_DOMAIN_JOB_DATA_PROCESSED),
        ),
        None => (None, None),
    }
}

const ABORT_GRACE: Duration = Duration::from_secs(30);

impl Hypervisor for LibvirtHypervisor {
    fn list(&self) -> Result<Vec<Vm>, HvError> {
        self.with_conn(|c| {
            let mut vms = Vec::new();
            for dom in c.list_all_domains(0)? {
                match describe(&dom) {
                    Ok(vm) => vms.push(vm),
                    // Undefined between listing and describing (migrated away).
                    Err(e) if e.code().is(ErrorNumber::NoDomain) => {}
                    Err(e) => return Err(e),
                }
            }
            vms.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(vms)
        })
    }

    fn probe(&self, uri: &str) -> Result<(), HvError> {
        // Dropping the connection closes it.
        let c = Connect::open(Some(uri)).map_err(|e| HvError::Connection {
            uri: uri.to_string(),
            message: e.message().to_string(),
        })?;
        let alive = c.is_alive().unwrap_or(false);
        drop(c);
        alive.then_some(()).ok_or_else(|| HvError::Connection {
            uri: uri.to_string(),
            message: "connection opened but not alive".into(),
        })
    }

    fn host_capacity(&self) -> Result<Capacity, HvError> {
        self.with_conn(|c| {
            let info = c.node_info()?;
            Ok(Capacity {
                vcpus: info.cpus,
                memory_mib: info.memory / 1024,
            })
        })
    }

    fn start(&self, vm: &str) -> Result<(), HvError> {
        let dom = self.domain(vm)?;
        if dom.is_active().map_err(map_err)? {
            return Err(HvError::WrongState(format!("{vm} is already running")));
        }
        dom.create().map(|_| ()).map_err(map_err)
    }

    fn stop(&self, vm: &str, graceful: Duration) -> Result<StopOutcome, HvError> {
        let dom = self.domain(vm)?;
        if !dom.is_active().map_err(map_err)? {
            return Ok(StopOutcome::AlreadyOff);
        }
        // A guest without ACPI support rejects shutdown; destroy it then.
        if dom.shutdown().is_ok() {
            let deadline = Instant::now() + graceful;
            while Instant::now() < deadline {
                if !dom.is_active().map_err(map_err)? {
                    return Ok(StopOutcome::Graceful);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        match dom.destroy() {
            Ok(()) => Ok(StopOutcome::Destroyed),
            // It went down between our last check and destroy.
            Err(_) if !dom.is_active().unwrap_or(true) => Ok(StopOutcome::Graceful),
            Err(e) => Err(map_err(e)),
        }
    }

    fn define(&self, xml: &str) -> Result<String, HvError> {
        self.with_conn(|c| c.define_domain_xml(xml)?.name())
    }

    fn migrate(
        &self,
        vm: &str,
        target: &MigrateTarget,
        progress: &mut dyn FnMut(MigrateProgress),
    ) -> Result<(), HvError> {
        let dom = self.domain(vm)?;
        // A shut-off domain has no memory to copy: move its definition only.
        let live = dom.is_active().map_err(map_err)?;
        let policy = &target.policy;
        let flags = if live {
            sys::VIR_MIGRATE_LIVE
                | sys::VIR_MIGRATE_PEER2PEER
                | sys::VIR_MIGRATE_PERSIST_DEST
                | sys::VIR_MIGRATE_UNDEFINE_SOURCE
                // Both are requested at the start or never (libvirt's rule);
                // QEMU throttles only when passes stop shrinking, and post-copy
                // starts only when the escalator says so.
                | if policy.auto_converge { sys::VIR_MIGRATE_AUTO_CONVERGE } else { 0 }
                | if policy.post_copy { sys::VIR_MIGRATE_POSTCOPY } else { 0 }
        } else {
            sys::VIR_MIGRATE_OFFLINE
                | sys::VIR_MIGRATE_PEER2PEER
                | sys::VIR_MIGRATE_PERSIST_DEST
                | sys::VIR_MIGRATE_UNDEFINE_SOURCE
        };
        let params = MigrateParameters {
            uri: Some(target.migrate_uri.clone()),
            bandwidth: (target.max_speed_mibs > 0).then_some(target.max_speed_mibs),
            ..Default::default()
        };
        let dest = target.libvirt_uri.clone();
        let name = vm.to_string();
        let conn = self.connection()?;
        // migrate_to_uri3 blocks until the end; a second thread samples the
        // job stats and enforces the timeout meanwhile.
        let worker = std::thread::spawn(move || {
            let dom = conn.lookup_domain_by_name(&name)?;
            dom.migrate_to_uri3(Some(&dest), params, flags)
        });
        let started = Instant::now();
        let mut last_sample = started;
        let mut total_seen = 0u64;
        let mut escalator = Escalator::new(policy.clone());
        let mut job_seen = false;
        // The lowest data-remaining seen and when: progress means a new low.
        let mut lowest = (u64::MAX, started);
        let mut aborted: Option<HvError> = None;
        // libvirt refuses an abort in some phases (before the data phase,
        // after the switch-over): repeat it each second until it is taken.
        let mut abort_taken = false;
        let mut last_abort = started;
        let mut abort_since = started;
        while !worker.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
            if aborted.is_none() {
                aborted = if started.elapsed() >= target.timeout {
                    Some(HvError::Timeout {
                        vm: vm.to_string(),
                        secs: target.timeout.as_secs(),
                    })
                } else if lowest.1.elapsed() >= target.progress_timeout {
                    Some(HvError::NoProgress {
                        vm: vm.to_string(),
                        secs: target.progress_timeout.as_secs(),
                    })
                } else {
                    target.cancel.requested().map(|reason| HvError::Cancelled {
                        vm: vm.to_string(),
                        reason,
                    })
                };
                if let Some(why) = &aborted {
                    tracing::warn!(vm, reason = %why, "aborting the migration job");
                    last_abort = started; // abort now
                    abort_since = Instant::now();
                }
            }
            // Bounded even when libvirt cannot stop it (a connect stuck in
            // SYN retries ignores the cancel): answer, and leave the job to
            // libvirt; the inventory shows where the VM ends up.
            if let Some(why) = &aborted {
                if abort_since.elapsed() >= ABORT_GRACE {
                    return Err(HvError::Other(format!(
                        "{why}; but libvirt did not stop the migration within {} s of the abort: \
                         it still holds the job, and the inventory will show where {vm} runs",
                        ABORT_GRACE.as_secs()
                    )));
                }
            }
            if aborted.is_some() && !abort_taken && last_abort.elapsed() >= Duration::from_secs(1) {
                // The safe wrapper has no virDomainAbortJob; this is the one
                // raw call of the backend. The pointer is valid while `dom`
                // lives. Past the switch-over the migration completes anyway:
                // the worker's result says which.
                let rc = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
                abort_taken = rc == 0;
                last_abort = Instant::now();
                tracing::info!(vm, rc, "virDomainAbortJob");
            }
            if last_sample.elapsed() < Duration::from_secs(1) {
                continue;
            }
            last_sample = Instant::now();
            let Some(stats) = job_stats(&dom, 0) else {
                continue;
            };
            let total = stats.get(sys::VIR_DOMAIN_JOB_DATA_TOTAL).unwrap_or(0);
            if total == 0 {
                continue;
            }
            let mut sample = MigrateProgress {
                bytes_processed: stats.get(sys::VIR_DOMAIN_JOB_DATA_PROCESSED).unwrap_or(0),
                bytes_remaining: stats.get(sys::VIR_DOMAIN_JOB_DATA_REMAINING).unwrap_or(0),
                ..Default::default()
            };
            sample.percent = (sample.bytes_processed as f64 * 100.0 / total as f64).min(100.0);
            total_seen = total;
            if sample.bytes_remaining < lowest.0 {
                lowest = (sample.bytes_remaining, Instant::now());
            }
            if !job_seen && live {
                job_seen = true;
                if let Some(ms) = escalator.start() {
                    set_downtime(&dom, vm, ms);
                }
            }
            let page = stats
                .get(sys::VIR_DOMAIN_JOB_MEMORY_PAGE_SIZE)
                .unwrap_or(4096);
            let conv = converge::Sample {
                pass: stats.get(sys::VIR_DOMAIN_JOB_MEMORY_ITERATION).unwrap_or(0),
                remaining: stats.get(sys::VIR_DOMAIN_JOB_MEMORY_REMAINING).unwrap_or(0),
                dirty_rate: stats
                    .get(sys::VIR_DOMAIN_JOB_MEMORY_DIRTY_RATE)
                    .unwrap_or(0)
                    * page,
                bandwidth: stats.get(sys::VIR_DOMAIN_JOB_MEMORY_BPS).unwrap_or(0),
                expected_downtime_ms: stats.get(sys::VIR_DOMAIN_JOB_DOWNTIME),
                throttle_pct: stats
                    .get(sys::VIR_DOMAIN_JOB_AUTO_CONVERGE_THROTTLE)
                    .unwrap_or(0),
            };
            sample.pass = conv.pass;
            sample.dirty_rate = conv.dirty_rate;
            sample.bandwidth = conv.bandwidth;
            if live && aborted.is_none() {
                for action in escalator.observe(&conv) {
                    let step = action.step();
                    let reason = match action {
                        converge::Action::SetDowntime { ms, reason } => {
                            set_downtime(&dom, vm, ms);
                            reason
                        }
                        converge::Action::StartPostCopy { reason } => {
                            // Not in the safe wrapper; `dom` outlives the call.
                            let rc = unsafe { sys::virDomainMigrateStartPostCopy(dom.as_ptr(), 0) };
                            if rc == 0 {
                                reason
                            } else {
                                format!(
                                    "{reason}; libvirt refused to start post-copy ({})",
                                    last_error()
                                )
                            }
                        }
                        converge::Action::Report { reason } => reason,
                    };
                    tracing::info!(vm, "{reason}");
                    progress(MigrateProgress {
                        escalation: Some(Escalation { step, reason }),
                        ..sample.clone()
                    });
                }
            }
            sample.eta_s = converge::eta(&conv, escalator.downtime_ms(), escalator.in_post_copy())
                .map(|d| d.as_secs_f64());
            progress(sample);
        }
        let result = worker
            .join()
            .map_err(|_| HvError::Other("migration thread panicked".into()))?;
        match result {
            Ok(()) => {
                // What the guest felt and what was sent: libvirt keeps the
                // completed job's statistics on the destination, where the
                // domain now lives (a short migration had no sample).
                let (downtime_ms, sent) = if live {
                    completed_stats(&target.libvirt_uri, vm)
                } else {
                    (None, None)
                };
                progress(MigrateProgress {
                    percent: 100.0,
                    bytes_processed: sent.unwrap_or(total_seen),
                    bytes_remaining: 0,
                    downtime_ms,
                    ..Default::default()
                });
                Ok(())
            }
            Err(e) => Err(aborted.unwrap_or_else(|| map_err(e))),
        }
    }

    fn job_running(&self, vm: &str) -> Result<bool, HvError> {
        let dom = match self.domain(vm) {
            Ok(d) => d,
            Err(HvError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        match dom.job_info() {
            Ok(stats) => Ok(matches!(
                stats.r#type as u32,
                sys::VIR_DOMAIN_JOB_BOUNDED | sys::VIR_DOMAIN_JOB_UNBOUNDED
            )),
            Err(e) if e.code().is(ErrorNumber::NoDomain) => Ok(false),
            Err(e) => Err(map_err(e)),
        }
    }

    fn remote_state(&self, uri: &str, vm: &str) -> Result<Option<VmState>, HvError> {
        let conn = Connect::open(Some(uri)).map_err(|e| HvError::Connection {
            uri: uri.to_string(),
            message: e.message().to_string(),
        })?;
        match conn.lookup_domain_by_name(vm) {
            Ok(dom) => match describe(&dom) {
                Ok(v) => Ok(Some(v.state)),
                Err(e) if e.code().is(ErrorNumber::NoDomain) => Ok(None),
                Err(e) => Err(map_err(e)),
            },
            Err(e) if e.code().is(ErrorNumber::NoDomain) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }
}
