//! The example event consumer (`examples/event-tail`) against a real,
//! secured fleet: a Level1 user (no JetStream permissions) follows the job
//! events of a stop it did not start and sees them decoded as they come,
//! replays one job's events and stops when caught up, and a replay from a
//! time leaves out what came before it.

use nodemaint_tests::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn event_tail(f: &Fleet, user: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin("event-tail"));
    c.args(["--url", &f.nats.url, "--user", user])
        .args(args)
        .envs(f.secure.as_ref().expect("a secured fleet").env(user));
    c
}

/// Runs a replay (no `--follow`): it must end by itself once caught up.
fn replay(f: &Fleet, user: &str, args: &[&str]) -> Vec<String> {
    let out = event_tail(f, user, args).output().expect("run event-tail");
    assert!(
        out.status.success(),
        "event-tail {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out).lines().map(str::to_string).collect()
}

/// `<seq> <time> <node> <kind> op=<id> …`: the fields of one line.
fn fields(line: &str) -> (u64, &str, &str, &str, &str) {
    let mut it = line.split(' ');
    let seq = it.next().unwrap().parse().expect("a sequence number");
    let ts = it.next().unwrap();
    let node = it.next().unwrap();
    let kind = it.next().unwrap();
    let op = it.next().unwrap().strip_prefix("op=").expect("op=");
    (seq, ts, node, kind, op)
}

#[test]
fn the_example_consumer_follows_replays_and_starts_at_a_time() {
    let mut f = Fleet::start_secure(&["node1", "node2"]);
    f.add_agent(
        "node1",
        &[Dom::user("vm-a", "cs1"), Dom::user("vm-b", "cs1")],
    );
    f.add_agent("node2", &[Dom::user("vm-c", "cs2")]);
    f.wait_registered();

    // bob (Level1) follows job events (from a minute back: no job yet).
    let mut follower = event_tail(&f, "bob", &["--kind", "job", "--since", "1m", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start event-tail");
    let (tx, rx) = mpsc::channel::<String>();
    let out = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let out = f.cli("alice", &["vm", "stop", "vm-a", "--output", "json"]);
    ok(&out);
    let job = job_of(&out)["id"].as_str().unwrap().to_string();

    // The follower prints the job's events, decoded, ending with the
    // terminal one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen: Vec<String> = Vec::new();
    while !seen.iter().any(|l| l.contains(" terminal ok=true")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(&job) => seen.push(l),
            Ok(_) => {}
            Err(_) => panic!("no terminal event for job {job}; saw {seen:#?}"),
        }
    }
    follower.kill().unwrap();
    let _ = follower.wait();
    let mut last_seq = 0;
    for l in &seen {
        let (seq, ts, node, kind, op) = fields(l);
        assert!(seq > last_seq, "sequences ascend: {seen:#?}");
        last_seq = seq;
        assert!(ts.ends_with('Z') && ts.len() == 24, "{l}");
        assert_eq!(
            (node, kind, op),
            ("coordinator", "job", job.as_str()),
            "{l}"
        );
        assert!(l.contains(&format!("job={job} ")), "{l}");
    }
    assert!(
        seen.iter().any(|l| l.contains(" kind=vm.stop ")),
        "{seen:#?}"
    );
    assert!(
        seen.last().unwrap().contains("state=SUCCEEDED"),
        "{seen:#?}"
    );

    // A replay of the job's events (every kind) ends by itself and holds
    // node1's result of the stop command as well as the job's events.
    let lines = replay(&f, "bob", &["--op", &job]);
    assert!(
        lines.iter().any(|l| {
            fields(l).1.len() == 24
                && l.contains(" node1 result ")
                && l.contains(" ok=true vm=vm-a")
        }),
        "{lines:#?}"
    );
    assert!(
        lines.iter().all(|l| fields(l).4 == job),
        "only the job's events: {lines:#?}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains(" terminal ok=true"))
            .count(),
        1,
        "{lines:#?}"
    );

    // From a time after that job: a second job's events, not the first's.
    // (The first job's events were all stored before its CLI returned.)
    let after = nodemaint_proto::now_ms() + 1;
    let out = f.cli("alice", &["vm", "stop", "vm-b", "--output", "json"]);
    ok(&out);
    let job2 = job_of(&out)["id"].as_str().unwrap().to_string();
    let lines = replay(
        &f,
        "bob",
        &["--kind", "job", "--since-ms", &after.to_string()],
    );
    assert!(lines.iter().any(|l| l.contains(&job2)), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains(&job)), "{lines:#?}");

    // Bad arguments are a usage error.
    let out = event_tail(&f, "bob", &["--since", "1w"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// The Python example (`examples/python/event_tail.py`) prints the same
/// lines as the Rust one for the same job. Runs when
/// `NODEMAINT_TEST_PYTHON` names a Python with nats-py, protobuf and
/// grpcio-tools (`pip install -r examples/python/requirements.txt`), which
/// CI's machine does not have.
#[test]
fn the_python_example_prints_what_the_rust_one_prints() {
    let Some(py) = std::env::var_os("NODEMAINT_TEST_PYTHON") else {
        eprintln!("NODEMAINT_TEST_PYTHON unset: the Python example is not run");
        return;
    };
    let mut f = Fleet::start();
    f.add_agent("node1", &[Dom::user("vm-a", "cs1")]);
    f.wait_registered();
    let out = f.cli("alice", &["vm", "stop", "vm-a", "--output", "json"]);
    ok(&out);
    let job = job_of(&out)["id"].as_str().unwrap().to_string();

    // The script and its generated classes, side by side in a scratch dir.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("event_tail.py");
    std::fs::copy(root.join("examples/python/event_tail.py"), &script).unwrap();
    let protos: Vec<_> = std::fs::read_dir(root.join("proto/proto/nodemaint/v1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    std::fs::create_dir(dir.path().join("gen")).unwrap();
    let gen = Command::new(&py)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("proto/proto"))
        .arg(format!("--python_out={}", dir.path().join("gen").display()))
        .args(&protos)
        .output()
        .unwrap();
    assert!(gen.status.success(), "protoc: {}", stderr(&gen));

    let args = ["--user", "bob", "--op", job.as_str()];
    let rust = Command::new(bin("event-tail"))
        .args(["--url", &f.nats.url])
        .args(args)
        .output()
        .unwrap();
    let python = Command::new(&py)
        .arg(&script)
        .args(["--url", &f.nats.url])
        .args(args)
        .output()
        .unwrap();
    assert!(rust.status.success(), "{}", stderr(&rust));
    assert!(python.status.success(), "{}", stderr(&python));
    assert!(
        stdout(&rust).contains(" terminal ok=true"),
        "{}",
        stdout(&rust)
    );
    assert_eq!(stdout(&python), stdout(&rust));
}
