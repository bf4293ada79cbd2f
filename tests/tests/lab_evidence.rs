//! Lab suite: a failed lab keeps its evidence (`nodemaint_tests::lab`).
//! A lab whose agent exits at once (a deliberately broken agent setting)
//! fails `up` with a message that names the evidence directory under
//! `target/lab-logs/` and shows the dead agent's last log lines; a suite
//! that fails while its lab is up (here: after its agent was killed) leaves
//! the same evidence behind. One node, no VMs.

use nodemaint_tests::lab::{evidence_kept, evidence_root, step, Lab};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

const BROKEN: &str = "deliberately_broken_setting = true";

fn panic_text(p: Box<dyn Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p
            .downcast::<&str>()
            .map(|s| s.to_string())
            .unwrap_or_default(),
    }
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{} not kept: {e}", dir.join(file).display()))
}

#[test]
fn lab_evidence_suite() {
    step("an agent that exits at once: `lab up` fails, naming the evidence it kept");
    let before = evidence_kept().len();
    eprintln!("(the next panic is deliberate)");
    let broken = catch_unwind(|| {
        Lab::up(
            "evidence",
            7,
            1,
            0,
            0,
            &[("LAB_AGENT_CONFIG_EXTRA", BROKEN)],
        )
    });
    let msg = match broken {
        Ok(None) => return, // the lab cannot run here (the SKIPPED line says why)
        Ok(Some(_)) => panic!("a lab whose agent cannot read its config came up"),
        Err(p) => panic_text(p),
    };
    let kept = evidence_kept();
    assert_eq!(kept.len(), before + 1, "one evidence directory: {msg}");
    let dir = kept[before].clone();
    assert!(
        dir.starts_with(evidence_root())
            && dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("evidence-")),
        "{}",
        dir.display()
    );
    assert!(
        msg.contains(&dir.display().to_string()),
        "the message names {}: {msg}",
        dir.display()
    );
    assert!(
        msg.contains("node1: node-agent exited"),
        "lab up's own error: {msg}"
    );
    assert!(msg.contains("DIED: node1 agent"), "{msg}");
    assert!(
        msg.contains("deliberately_broken_setting"),
        "the dead agent's last log lines are in the message: {msg}"
    );
    assert!(read(&dir, "node1/agent.log").contains("deliberately_broken_setting"));
    assert!(read(&dir, "node1/agent.toml").contains(BROKEN));
    assert!(read(&dir, "died.txt").contains("DIED: node1 agent"));
    let processes = read(&dir, "processes.txt");
    assert!(
        processes
            .lines()
            .any(|l| l.starts_with("node1 libvirtd") && l.contains("alive")),
        "libvirtd was still alive at collection: {processes}"
    );
    for f in [
        "lab.env",
        "state",
        "status.txt",
        "status.json",
        "nats.log",
        "coordinator.log",
        "coordinator.toml",
        "node1/libvirtd.out",
        "node1/root/log-libvirt/libvirtd.log",
        "node1/root/log-libvirt/virtlogd.log",
    ] {
        assert!(dir.join(f).exists(), "{f} kept in {}", dir.display());
    }
    assert!(
        !Path::new("/run/nodemaint-test-evidence").exists(),
        "the lab was torn down after its evidence was kept"
    );

    step("a suite that fails while its lab is up keeps the evidence too");
    eprintln!("(the next panic is deliberate)");
    let failed = catch_unwind(AssertUnwindSafe(|| {
        let lab = Lab::up("evidence", 7, 1, 0, 0, &[]).expect("the lab ran a moment ago");
        lab.lab_ok(&["agent", "kill", "node1"]);
        panic!("deliberate failure of a lab suite");
    }));
    assert!(failed.is_err());
    let kept = evidence_kept();
    assert_eq!(kept.len(), before + 2);
    let dir = kept[before + 1].clone();
    assert!(
        read(&dir, "died.txt").contains("DIED: node1 agent"),
        "{}",
        read(&dir, "processes.txt")
    );
    assert!(read(&dir, "state").contains("up"));
    assert!(!read(&dir, "node1/agent.log").is_empty());
    assert!(
        !Path::new("/run/nodemaint-test-evidence").exists(),
        "the lab was torn down after its evidence was kept"
    );
    // The proof holds: remove these deliberate failures' evidence, so that
    // target/lab-logs/ holds only real failures.
    for d in &kept[before..] {
        let _ = std::fs::remove_dir_all(d);
    }
}
