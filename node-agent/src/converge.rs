//! Live migrations that converge (issue 17 §1): what to do, from libvirt's job
//! statistics, when a guest dirties memory faster than the migration copies it.
//! Pure decisions; the libvirt backend samples the job once a second, feeds
//! [`Escalator::observe`] and applies what it returns.
//!
//! QEMU switches a live migration over when what remains to copy fits in the
//! allowed downtime at the measured bandwidth. A guest whose hot memory does
//! not fit never gets there: every pass re-copies it. The ladder, in order:
//! 1. raise the allowed downtime to the smallest step that fits what remains
//!    (never past the ceiling, the last step);
//! 2. auto-converge: QEMU throttles the guest's vCPUs. libvirt can only ask for
//!    it when the migration starts, so with the policy on every migration starts
//!    with it and QEMU engages it by itself when passes stop shrinking; we report
//!    when it does;
//! 3. post-copy (only where the operator permits it: a failure of the
//!    destination or the link during post-copy loses the guest): switch over at
//!    once and fetch the remaining pages on demand;
//! 4. otherwise the job's own limits (progress timeout, timeout) end it and its
//!    fallback applies.

use std::time::Duration;

/// How far a migration may go to converge. Sent per migration by the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Allowed downtime steps in ms, ascending; the first is set when the
    /// migration starts, the last is the ceiling. Empty: leave QEMU's default
    /// (300 ms) and never raise it.
    pub downtime_steps_ms: Vec<u64>,
    /// Memory passes to wait after a step before judging it.
    pub passes_per_step: u64,
    pub auto_converge: bool,
    pub post_copy: bool,
}

/// The agent's default is the coordinator's (`[migration.converge]`).
impl Default for Policy {
    fn default() -> Self {
        Policy::from(&nodemaint_proto::model::ConvergePolicy::default())
    }
}

impl From<&nodemaint_proto::model::ConvergePolicy> for Policy {
    fn from(c: &nodemaint_proto::model::ConvergePolicy) -> Self {
        let mut steps: Vec<u64> = c
            .downtime_steps_ms
            .iter()
            .map(|&ms| u64::from(ms))
            .collect();
        steps.sort_unstable();
        steps.dedup();
        Policy {
            downtime_steps_ms: steps,
            passes_per_step: u64::from(c.passes_per_step.max(1)),
            auto_converge: c.auto_converge,
            post_copy: c.post_copy,
        }
    }
}

/// One sample of a running migration's job statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Memory pass number (1 = the first full copy).
    pub pass: u64,
    /// Bytes of memory still to copy.
    pub remaining: u64,
    /// Bytes per second the guest dirties.
    pub dirty_rate: u64,
    /// Bytes per second the migration copies.
    pub bandwidth: u64,
    /// QEMU's expected downtime in ms, if it gave one.
    pub expected_downtime_ms: Option<u64>,
    /// vCPU throttle in percent while auto-converge runs.
    pub throttle_pct: u64,
}

impl Sample {
    /// Downtime in ms a switch-over now would need: QEMU's own estimate, or
    /// what remains at the measured bandwidth.
    pub fn needed_downtime_ms(&self) -> Option<u64> {
        match self.expected_downtime_ms {
            Some(ms) if ms > 0 => Some(ms),
            _ if self.bandwidth > 0 => Some(self.remaining.saturating_mul(1000) / self.bandwidth),
            _ => None,
        }
    }
}

/// What to do now, with the reason (each becomes an event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    SetDowntime {
        ms: u64,
        reason: String,
    },
    StartPostCopy {
        reason: String,
    },
    /// Something QEMU did on its own that the operator should see.
    Report {
        reason: String,
    },
}

impl Action {
    /// The step's metric label.
    pub fn step(&self) -> &'static str {
        match self {
            Action::SetDowntime { .. } => "downtime",
            Action::StartPostCopy { .. } => "post_copy",
            Action::Report { .. } => "report",
        }
    }
}

/// The escalation state of one migration.
#[derive(Clone, Debug)]
pub struct Escalator {
    policy: Policy,
    /// Allowed downtime now (ms); QEMU's default until we set one.
    downtime_ms: u64,
    /// Pass at the last escalation (or the start).
    since_pass: u64,
    post_copy: bool,
    throttle_reported: u64,
    /// Nothing more to try was reported (once).
    exhausted: bool,
}

/// QEMU's default allowed downtime.
pub const QEMU_DEFAULT_DOWNTIME_MS: u64 = 300;

impl Escalator {
    pub fn new(policy: Policy) -> Self {
        Escalator {
            downtime_ms: QEMU_DEFAULT_DOWNTIME_MS,
            policy,
            since_pass: 0,
            post_copy: false,
            throttle_reported: 0,
            exhausted: false,
        }
    }

    /// The downtime to set when the migration starts (the first step), if
    /// it differs from QEMU's default.
    pub fn start(&mut self) -> Option<u64> {
        let first = *self.policy.downtime_steps_ms.first()?;
        (first != self.downtime_ms).then(|| {
            self.downtime_ms = first;
            first
        })
    }

    pub fn downtime_ms(&self) -> u64 {
        self.downtime_ms
    }

    pub fn in_post_copy(&self) -> bool {
        self.post_copy
    }

    pub fn observe(&mut self, s: &Sample) -> Vec<Action> {
        let mut out = Vec::new();
        if s.throttle_pct >= self.throttle_reported + 20
            || (s.throttle_pct > 0 && self.throttle_reported == 0)
        {
            self.throttle_reported = s.throttle_pct;
            out.push(Action::Report {
                reason: format!(
                    "auto-converge: QEMU throttles the guest's vCPUs to {} % (it dirties {} MiB/s, the link copies {} MiB/s)",
                    s.throttle_pct,
                    mib(s.dirty_rate),
                    mib(s.bandwidth)
                ),
            });
        }
        // Judge a step only after its passes: the first pass copies all memory
        // and says nothing about convergence.
        if self.post_copy
            || self.exhausted
            || s.pass < 2
            || s.pass < self.since_pass + self.policy.passes_per_step
        {
            return out;
        }
        let Some(needed) = s.needed_downtime_ms() else {
            return out;
        };
        if needed <= self.downtime_ms {
            return out; // it fits: QEMU switches over at the end of this pass
        }
        let why = format!(
            "pass {}: {} MiB remain at {} MiB/s (guest dirties {} MiB/s), a switch-over needs ~{needed} ms, {} ms allowed",
            s.pass,
            mib(s.remaining),
            mib(s.bandwidth),
            mib(s.dirty_rate),
            self.downtime_ms
        );
        self.since_pass = s.pass;
        let ceiling = self.policy.downtime_steps_ms.last().copied().unwrap_or(0);
        if let Some(&ms) = self
            .policy
            .downtime_steps_ms
            .iter()
            .find(|&&ms| ms > self.downtime_ms && ms >= needed)
        {
            self.downtime_ms = ms;
            out.push(Action::SetDowntime {
                ms,
                reason: format!("{why}: allowed downtime raised to {ms} ms"),
            });
        } else if self.policy.post_copy {
            self.post_copy = true;
            out.push(Action::StartPostCopy {
                reason: format!(
                    "{why}, more than the {ceiling} ms ceiling: switching to post-copy"
                ),
            });
        } else if ceiling > self.downtime_ms {
            self.downtime_ms = ceiling;
            out.push(Action::SetDowntime {
                ms: ceiling,
                reason: format!("{why}: allowed downtime raised to the {ceiling} ms ceiling"),
            });
        } else {
            self.exhausted = true;
            out.push(Action::Report {
                reason: format!(
                    "{why}, the ceiling; post-copy not permitted: {}the job's progress timeout and fallback decide",
                    if self.policy.auto_converge {
                        "auto-converge throttling continues, "
                    } else {
                        ""
                    }
                ),
            });
        }
        out
    }
}

/// Expected time to the end of the migration: passes shrink by dirty/bandwidth
/// each, so what remains takes remaining / (bandwidth - dirty). `None` while
/// it does not converge.
pub fn eta(s: &Sample, downtime_ms: u64, post_copy: bool) -> Option<Duration> {
    if s.bandwidth == 0 {
        return None;
    }
    let b = s.bandwidth as f64;
    let r = s.remaining as f64;
    if post_copy || r * 1000.0 / b <= downtime_ms as f64 {
        return Some(Duration::from_secs_f64(r / b));
    }
    (s.dirty_rate < s.bandwidth).then(|| Duration::from_secs_f64(r / (b - s.dirty_rate as f64)))
}

fn mib(bytes: u64) -> String {
    let m = bytes as f64 / (1024.0 * 1024.0);
    if m >= 10.0 {
        format!("{m:.0}")
    } else {
        format!("{m:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn sample(pass: u64, remaining_mib: u64, bw_mib: u64, dirty_mib: u64) -> Sample {
        Sample {
            pass,
            remaining: remaining_mib * MIB,
            bandwidth: bw_mib * MIB,
            dirty_rate: dirty_mib * MIB,
            ..Default::default()
        }
    }

    #[test]
    fn a_converging_migration_is_left_alone() {
        let mut e = Escalator::new(Policy::default());
        assert_eq!(e.start(), None, "300 ms is QEMU's default already");
        for pass in 1..10 {
            // 1 MiB at 16 MiB/s: ~62 ms, fits 300 ms
            assert!(e.observe(&sample(pass, 1, 16, 4)).is_empty());
        }
        assert_eq!(e.downtime_ms(), 300);
    }

    #[test]
    fn a_hot_working_set_gets_the_smallest_step_that_fits() {
        let mut e = Escalator::new(Policy::default());
        // 8 MiB hot at 16 MiB/s needs 500 ms: not during the first pass
        assert!(e.observe(&sample(1, 40, 16, 40)).is_empty());
        let a = e.observe(&sample(2, 8, 16, 40));
        assert!(
            matches!(&a[..], [Action::SetDowntime { ms: 600, reason }] if reason.contains("~500 ms")),
            "{a:?}"
        );
        // judged again only after passes_per_step more passes
        assert!(e.observe(&sample(3, 12, 16, 40)).is_empty());
        assert_eq!(e.downtime_ms(), 600);
        let a = e.observe(&sample(4, 12, 16, 40));
        assert!(
            matches!(&a[..], [Action::SetDowntime { ms: 1200, .. }]),
            "{a:?}"
        );
    }

    #[test]
    fn past_the_ceiling_post_copy_only_when_permitted() {
        let forbidden = Policy::default();
        let mut e = Escalator::new(forbidden);
        // 61 MiB hot at 16 MiB/s needs ~3.8 s, past the 2 s ceiling
        let a = e.observe(&sample(2, 61, 16, 40));
        assert!(
            matches!(&a[..], [Action::SetDowntime { ms: 2000, .. }]),
            "{a:?}"
        );
        let a = e.observe(&sample(4, 61, 16, 40));
        assert!(
            matches!(&a[..], [Action::Report { reason }] if reason.contains("post-copy not permitted")),
            "{a:?}"
        );
        assert!(e.observe(&sample(9, 61, 16, 40)).is_empty(), "said once");

        let mut e = Escalator::new(Policy {
            post_copy: true,
            ..Policy::default()
        });
        let a = e.observe(&sample(2, 61, 16, 40));
        assert!(matches!(&a[..], [Action::StartPostCopy { .. }]), "{a:?}");
        assert!(e.in_post_copy());
        assert!(
            e.observe(&sample(9, 61, 16, 40)).is_empty(),
            "post-copy is the last step"
        );
    }

    #[test]
    fn no_steps_means_qemus_default_and_a_report() {
        let mut e = Escalator::new(Policy {
            downtime_steps_ms: vec![],
            auto_converge: false,
            ..Policy::default()
        });
        assert_eq!(e.start(), None);
        let a = e.observe(&sample(3, 61, 16, 40));
        assert!(matches!(&a[..], [Action::Report { .. }]), "{a:?}");
        assert_eq!(e.downtime_ms(), 300);
    }

    #[test]
    fn auto_converge_throttling_is_reported_when_it_starts_and_grows() {
        let mut e = Escalator::new(Policy::default());
        let mut s = sample(1, 40, 16, 40);
        s.throttle_pct = 20;
        assert!(
            matches!(&e.observe(&s)[..], [Action::Report { reason }] if reason.contains("20 %"))
        );
        s.throttle_pct = 30;
        assert!(e.observe(&s).is_empty());
        s.throttle_pct = 40;
        assert_eq!(e.observe(&s).len(), 1);
    }

    #[test]
    fn qemus_expected_downtime_wins_over_the_estimate() {
        let mut s = sample(3, 8, 16, 40);
        assert_eq!(s.needed_downtime_ms(), Some(500));
        s.expected_downtime_ms = Some(450);
        assert_eq!(s.needed_downtime_ms(), Some(450));
    }

    #[test]
    fn eta_follows_the_geometric_series_and_is_unknown_when_diverging() {
        // 30 MiB remain, 16 MiB/s copy, 8 MiB/s dirty: 30 / 8 = 3.75 s
        let s = sample(2, 30, 16, 8);
        assert_eq!(eta(&s, 300, false), Some(Duration::from_secs_f64(3.75)));
        let s = sample(2, 30, 16, 40);
        assert_eq!(eta(&s, 300, false), None);
        assert_eq!(
            eta(&s, 300, true),
            Some(Duration::from_secs_f64(30.0 / 16.0))
        );
        // fits the allowed downtime: the last pass
        let s = sample(2, 4, 16, 40);
        assert_eq!(eta(&s, 300, false), Some(Duration::from_secs_f64(0.25)));
    }
}
