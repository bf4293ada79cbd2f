//! A job's live progress on a terminal (indicatif): one bar per VM in
//! flight, with bytes/s and ETA when its progress events carry bytes, and
//! the job's overall bar (VMs done of the VMs seen so far). Job messages
//! and check tables print above the bars. Only for a terminal: piped or
//! redirected output keeps its plain lines (`follow_job`).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use nodemaint_proto::pb::{self, event::Body};
use std::collections::{BTreeMap, BTreeSet};

pub struct Bars {
    multi: MultiProgress,
    job: ProgressBar,
    /// The bar of each VM in flight, by name.
    vms: BTreeMap<String, ProgressBar>,
    seen: BTreeSet<String>,
    done: BTreeSet<String>,
}

/// A VM's bar when its progress carries bytes: rate and ETA.
/// The ETA is the agent's (from the dirty rate and the bandwidth), in the
/// message: indicatif's own guess knows nothing of memory passes.
const BYTES: &str = "{prefix:<20} [{bar:30}] {bytes}/{total_bytes}  {binary_bytes_per_sec}  {msg}";
/// A VM's bar when its progress is a percentage only.
const PERCENT: &str = "{prefix:<20} [{bar:30}] {pos:>3}%  {msg}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("a valid template")
        .progress_chars("#>-")
}

impl Bars {
    pub fn new(target: ProgressDrawTarget) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        // Without VMs yet, no bar: an empty one would draw as full.
        let job = multi.add(
            ProgressBar::new(0)
                .with_style(style("{prefix:<20} {elapsed_precise}  {wide_msg}"))
                .with_prefix("job"),
        );
        Bars {
            multi,
            job,
            vms: BTreeMap::new(),
            seen: BTreeSet::new(),
            done: BTreeSet::new(),
        }
    }

    /// A line above the bars.
    pub fn println(&self, line: &str) {
        // Hidden (not a terminal, tests): nothing to print above.
        let _ = self.multi.println(line);
    }

    /// Runs `f` (printing a table) with the bars cleared, then redraws them.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.multi.suspend(f)
    }

    fn saw(&mut self, vm: &str) {
        if !vm.is_empty() && self.seen.insert(vm.to_string()) {
            if self.seen.len() == 1 {
                self.job.set_style(style(
                    "{prefix:<20} [{bar:30}] {pos}/{len} VMs  {elapsed_precise}  {wide_msg}",
                ));
            }
            self.job.set_length(self.seen.len() as u64);
        }
    }

    /// Updates the bars with one event of the job.
    pub fn on_event(&mut self, ev: &pb::Event) {
        match &ev.body {
            Some(Body::Progress(p)) if p.step == "escalating" => {
                self.println(&format!("{:<20} {}", p.vm, p.message));
            }
            Some(Body::Progress(p)) if !self.done.contains(&p.vm) => {
                self.saw(&p.vm);
                let multi = &self.multi;
                let bar = self.vms.entry(p.vm.clone()).or_insert_with(|| {
                    // Styled before it is added: added, it draws at once.
                    let b = ProgressBar::new(100)
                        .with_style(style(PERCENT))
                        .with_prefix(p.vm.clone());
                    multi.insert_before(&self.job, b)
                });
                let total = p.bytes_processed + p.bytes_remaining;
                if total > 0 {
                    if bar.length() != Some(total) || bar.position() > total {
                        bar.set_style(style(BYTES));
                        bar.set_length(total);
                    }
                    bar.set_position(p.bytes_processed);
                } else {
                    if bar.length() != Some(100) {
                        bar.set_style(style(PERCENT));
                        bar.set_length(100);
                    }
                    bar.set_position(p.percent.clamp(0.0, 100.0) as u64);
                }
                let note = super::output::migration_note(p);
                bar.set_message(if note.is_empty() {
                    p.step.clone()
                } else {
                    format!("{}  {note}", p.step)
                });
            }
            Some(Body::Result(r)) if !r.vm.is_empty() => {
                self.saw(&r.vm);
                if let Some(bar) = self.vms.remove(&r.vm) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                if self.done.insert(r.vm.clone()) {
                    self.job.set_position(self.done.len() as u64);
                }
                let what = if r.ok { "done" } else { "FAILED" };
                self.println(&format!("{:<20} {what} {}", r.vm, r.message));
            }
            Some(Body::Job(j)) if !j.terminal => {
                self.saw(&j.vm);
                self.job.set_message(j.message.clone());
                self.println(&format!(
                    "{} {}",
                    super::output::fmt_ts(ev.ts_ms),
                    j.message
                ));
            }
            _ => {}
        }
    }

    /// Clears every bar (the job's report follows as plain lines).
    pub fn finish(self) {
        for bar in self.vms.values() {
            bar.finish_and_clear();
        }
        self.job.finish_and_clear();
        let _ = self.multi.clear();
    }

    /// The VMs with a bar now (name, position, length), and the job bar's
    /// done/seen counts.
    #[cfg(test)]
    fn in_flight(&self) -> (Vec<VmBar>, u64, Option<u64>) {
        (
            self.vms
                .iter()
                .map(|(vm, b)| (vm.clone(), b.position(), b.length()))
                .collect(),
            self.job.position(),
            self.job.length(),
        )
    }
}

#[cfg(test)]
type VmBar = (String, u64, Option<u64>);

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(body: Body) -> pb::Event {
        pb::Event {
            body: Some(body),
            ..Default::default()
        }
    }

    fn progress(vm: &str, done: u64, left: u64) -> pb::Event {
        ev(Body::Progress(pb::Progress {
            vm: vm.into(),
            step: "migrating".into(),
            bytes_processed: done,
            bytes_remaining: left,
            ..Default::default()
        }))
    }

    fn result(vm: &str, ok: bool) -> pb::Event {
        ev(Body::Result(pb::CommandResult {
            vm: vm.into(),
            ok,
            ..Default::default()
        }))
    }

    #[test]
    fn parallel_migrations_get_a_bar_each_and_the_job_counts_them() {
        let mut b = Bars::new(ProgressDrawTarget::hidden());
        b.on_event(&progress("vm-a", 100, 900));
        b.on_event(&progress("vm-b", 50, 150));
        b.on_event(&progress("vm-a", 400, 600));
        let (vms, done, seen) = b.in_flight();
        assert_eq!(
            vms,
            [
                ("vm-a".to_string(), 400, Some(1000)),
                ("vm-b".to_string(), 50, Some(200))
            ]
        );
        assert_eq!((done, seen), (0, Some(2)));
        // Dirty pages: the total grows, the bar follows.
        b.on_event(&progress("vm-b", 180, 70));
        assert_eq!(b.in_flight().0[1], ("vm-b".to_string(), 180, Some(250)));
        // A result ends the VM's bar and counts it; late progress of a
        // finished VM does not bring its bar back.
        b.on_event(&result("vm-a", true));
        b.on_event(&progress("vm-a", 1000, 0));
        let (vms, done, seen) = b.in_flight();
        assert_eq!(vms, [("vm-b".to_string(), 180, Some(250))]);
        assert_eq!((done, seen), (1, Some(2)));
        // A job message naming a VM not yet in flight counts it as seen.
        b.on_event(&ev(Body::Job(pb::JobEvent {
            vm: "vm-c".into(),
            message: "stopping vm-c".into(),
            ..Default::default()
        })));
        b.on_event(&result("vm-b", false));
        let (vms, done, seen) = b.in_flight();
        assert!(vms.is_empty());
        assert_eq!((done, seen), (2, Some(3)));
        b.finish();
    }

    #[test]
    fn progress_without_bytes_is_a_percentage() {
        let mut b = Bars::new(ProgressDrawTarget::hidden());
        b.on_event(&ev(Body::Progress(pb::Progress {
            vm: "vm-a".into(),
            step: "stopping".into(),
            percent: 42.4,
            ..Default::default()
        })));
        assert_eq!(b.in_flight().0, [("vm-a".to_string(), 42, Some(100))]);
    }
}
