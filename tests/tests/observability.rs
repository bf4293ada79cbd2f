//! Observability: the coordinator's and agents' Prometheus `/metrics`
//! endpoints move as jobs run (test-driver agents, and simulated agents for
//! successful migrations), and JSON logs put the job id and node on every
//! line about a job.

use nodemaint_agent::checks::{CheckConfig, CheckKind};
use nodemaint_tests::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

/// `GET /metrics` on 127.0.0.1:port; the body, after checking the status
/// and the exposition content type.
fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// The value of the series `name{labels}` (labels exactly as rendered, in
/// order), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// Every family has `# HELP` and `# TYPE`, and every sample line parses.
fn assert_well_formed(text: &str) {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(matches!(kind, "counter" | "gauge" | "histogram"), "{line}");
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        } else if !line.starts_with('#') {
            let (_, v) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            assert!(v == "+Inf" || v.parse::<f64>().is_ok(), "{line:?}");
        }
    }
}

/// The metrics endpoints bind port 0 and log the port they got.
const METRICS: &str = "Prometheus metrics";

/// Starts the coordinator with `--metrics-listen` and JSON logs; returns the
/// metrics port.
fn start_coordinator(f: &mut Fleet) -> u16 {
    let mut p = Proc::spawn(
        "coordinator",
        Command::new(bin("coordinator"))
            .args(["serve", "--config"])
            .env(INSECURE.0, INSECURE.1)
            .arg(&f.config)
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .env("NATS_URL", &f.nats.url)
            .env("RUST_LOG", "info"),
        f.dir.path().join("coordinator.log"),
    );
    let port = wait_listening(&mut p, METRICS).port();
    f.coordinator = Some(p);
    wait_for(Duration::from_secs(20), "coordinator to answer", || {
        f.cli("alice", &["node", "list"]).status.success()
    });
    port
}

/// Starts a test-driver agent with `metrics_listen` and JSON logs; returns
/// the metrics port.
fn start_agent(f: &mut Fleet, node: &str, doms: &[Dom], checks: Vec<CheckConfig>) -> u16 {
    node_xml(&f.dir.path().join(format!("{node}.xml")), 8192, 8, doms);
    std::fs::write(
        f.dir.path().join(format!("{node}.boot_id")),
        format!("boot-{node}-1\n"),
    )
    .unwrap();
    f.agent_edits.insert(
        node.into(),
        Box::new(move |c| {
            c.metrics_listen = Some(([127, 0, 0, 1], 0).into());
            c.checks = checks.clone();
        }),
    );
    let cfg = f.agent_config(node);
    let mut p = Proc::spawn(
        &format!("agent {node}"),
        Command::new(bin("node-agent"))
            .arg("--config")
            .env(INSECURE.0, INSECURE.1)
            .arg(cfg)
            .env("NODEMAINT_LOG_FORMAT", "json")
            .env("RUST_LOG", "info"),
        f.dir.path().join(format!("agent-{node}.log")),
    );
    let port = wait_listening(&mut p, METRICS).port();
    f.agents.push((node.to_string(), Some(p)));
    port
}

/// The id of the job a CLI command (run with `--output json`) created.
fn job_id(out: &std::process::Output) -> String {
    stdout(out)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| v["job"]["id"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no job in {}", stdout(out)))
}

/// The JSON log lines whose text mentions `job`: each must be logged inside
/// a span carrying `job_id = job` and a `node` (the expected one when given).
/// Returns how many there were.
fn assert_job_lines_carry_ids(log: &str, job: &str, node: Option<&str>) -> usize {
    let mut n = 0;
    for line in log.lines().filter(|l| l.contains(job)) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        let spans = v["spans"].as_array().cloned().unwrap_or_default();
        let span = spans
            .iter()
            .rev()
            .find(|s| s["job_id"] == job)
            .unwrap_or_else(|| panic!("line about job {job} outside its span: {line}"));
        // The innermost span naming a node (a rolling job's node pipeline
        // nests inside the job span).
        let line_node = spans
            .iter()
            .rev()
            .find_map(|s| s["node"].as_str())
            .unwrap_or_else(|| panic!("no node on {line}"));
        assert!(!line_node.is_empty(), "empty node on {line}");
        if let Some(want) = node {
            assert_eq!(line_node, want, "{line}");
        }
        assert!(span["job_id"].is_string());
        n += 1;
    }
    n
}

#[test]
fn metrics_move_with_jobs_and_json_logs_name_job_and_node() {
    let mut f = Fleet::start_bare();
    let cport = start_coordinator(&mut f);
    let check = |name: &str, command: &str| CheckConfig {
        name: name.into(),
        kind: CheckKind::Command {
            command: command.into(),
        },
        start: None,
        timeout_s: nodemaint_agent::checks::DEFAULT_TIMEOUT_S,
    };
    let checks = vec![check("good", "true"), check("bad", "false")];
    let a1 = start_agent(
        &mut f,
        "node1",
        &[Dom::user("vm-a", "cs1"), Dom::user("vm-b", "cs1")],
        checks,
    );
    let a2 = start_agent(&mut f, "node2", &[Dom::user("vm-c", "cs2")], vec![]);
    f.wait_registered();

    // Before any job: nothing in flight, both nodes heartbeating, zeroed
    // agent counters.
    let c0 = scrape(cport);
    assert_well_formed(&c0);
    assert_eq!(value(&c0, "nodemaint_migrations_in_flight"), 0.0);
    assert_eq!(value(&c0, "nodemaint_migrated_bytes_total"), 0.0);
    for node in ["node1", "node2"] {
        let age = value(
            &c0,
            &format!("nodemaint_node_heartbeat_age_seconds{{node=\"{node}\"}}"),
        );
        assert!((0.0..5.0).contains(&age), "{node} heartbeat age {age}");
        assert_eq!(
            value(&c0, &format!("nodemaint_node_reachable{{node=\"{node}\"}}")),
            1.0
        );
    }
    wait_for(Duration::from_secs(10), "the leader gauge", || {
        sample(&scrape(cport), "nodemaint_leader") == Some(1.0)
    });
    let n1 = scrape(a1);
    assert_well_formed(&n1);
    assert_eq!(
        value(&n1, "nodemaint_agent_migrations_in_flight{node=\"node1\"}"),
        0.0
    );
    // Configured checks are listed at 0 before they first run.
    assert_eq!(
        value(
            &n1,
            "nodemaint_agent_check_failures_total{node=\"node1\",check=\"bad\"}"
        ),
        0.0
    );

    // A stop job: one command, ok, counted by both sides.
    let out = f.cli("alice", &["vm", "stop", "vm-a", "--output", "json"]);
    ok(&out);
    let stop_job = job_id(&out);
    let c1 = scrape(cport);
    assert_eq!(
        value(&c1, "nodemaint_jobs{kind=\"vm.stop\",state=\"SUCCEEDED\"}"),
        1.0
    );
    assert_eq!(
        value(&c1, "nodemaint_jobs{kind=\"vm.stop\",state=\"RUNNING\"}"),
        0.0
    );
    assert_eq!(
        value(
            &c1,
            "nodemaint_command_duration_seconds_count{action=\"stop\",result=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &c1,
            "nodemaint_command_duration_seconds_bucket{action=\"stop\",result=\"ok\",le=\"+Inf\"}"
        ),
        1.0
    );
    let sum = value(
        &c1,
        "nodemaint_command_duration_seconds_sum{action=\"stop\",result=\"ok\"}",
    );
    assert!(sum > 0.0 && sum < 60.0, "stop took {sum} s");
    let n1 = scrape(a1);
    assert_eq!(
        value(
            &n1,
            "nodemaint_agent_command_duration_seconds_count{node=\"node1\",action=\"stop\",result=\"ok\"}"
        ),
        1.0
    );
    // node2 executed nothing.
    assert!(!scrape(a2).contains("nodemaint_agent_command_duration_seconds_count"));

    // A move: the test driver cannot migrate, so it fails; the migration was
    // in flight and is not any more, and no bytes were counted.
    let out = f.cli(
        "alice",
        &["vm", "move", "vm-b", "--to", "node2", "--output", "json"],
    );
    assert!(!out.status.success(), "the test driver cannot migrate");
    let move_job = job_id(&out);
    let c2 = scrape(cport);
    assert_eq!(
        value(&c2, "nodemaint_jobs{kind=\"vm.move\",state=\"FAILED\"}"),
        1.0
    );
    assert_eq!(value(&c2, "nodemaint_migrations_in_flight"), 0.0);
    assert_eq!(
        value(
            &c2,
            "nodemaint_migration_duration_seconds_count{result=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &c2,
            "nodemaint_command_duration_seconds_count{action=\"migrate\",result=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(value(&c2, "nodemaint_migrated_bytes_total"), 0.0);
    let n1 = scrape(a1);
    assert_eq!(
        value(
            &n1,
            "nodemaint_agent_migration_duration_seconds_count{node=\"node1\",result=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&n1, "nodemaint_agent_migrations_in_flight{node=\"node1\"}"),
        0.0
    );
    assert_eq!(
        value(&n1, "nodemaint_agent_migrated_bytes_total{node=\"node1\"}"),
        0.0
    );

    // Service checks: the failing check is counted, the passing one is not.
    let out = f.cli("bob", &["node", "check", "node1"]);
    assert!(!out.status.success(), "check `bad` fails");
    let n1 = scrape(a1);
    let check = |d: &str, c: &str| value(&n1, &format!("{d}{{node=\"node1\",check=\"{c}\"}}"));
    assert_eq!(check("nodemaint_agent_check_runs_total", "bad"), 1.0);
    assert_eq!(check("nodemaint_agent_check_failures_total", "bad"), 1.0);
    assert_eq!(check("nodemaint_agent_check_runs_total", "good"), 1.0);
    assert_eq!(check("nodemaint_agent_check_failures_total", "good"), 0.0);

    // JSON logs: every line about each job names the job and its node.
    let clog = f.coordinator_log();
    let alog = f.agent_log("node1");
    assert!(
        assert_job_lines_carry_ids(&clog, &stop_job, Some("node1")) > 0,
        "the coordinator logged nothing about job {stop_job}:\n{clog}"
    );
    assert!(assert_job_lines_carry_ids(&clog, &move_job, Some("node1")) > 0);
    assert!(
        assert_job_lines_carry_ids(&alog, &stop_job, Some("node1")) >= 1,
        "the agent's executing/done lines for {stop_job}:\n{alog}"
    );
    assert!(assert_job_lines_carry_ids(&alog, &move_job, Some("node1")) >= 1);
    // The lines logged while executing the command carry the ids even
    // when their text does not mention the job.
    let done: Vec<Value> = alog
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "command done")
        .collect();
    assert!(done.len() >= 3, "{alog}");
    for v in &done {
        assert!(v["span"]["job_id"].is_string(), "{v}");
        assert_eq!(v["span"]["node"], "node1", "{v}");
    }
}

#[test]
fn successful_migrations_count_their_bytes_on_both_sides() {
    let mut f = Fleet::start_bare();
    let cport = start_coordinator(&mut f);
    let vm_mib: u64 = 256;
    let mut sim = Proc::spawn(
        "sim-fleet",
        Command::new(bin("sim-fleet"))
            .args([
                "--nats-url",
                &f.nats.url,
                "--nodes",
                "3",
                "--vms-per-node",
                "2",
                "--cloudspaces",
                "1",
                "--vm-memory-mib",
                &vm_mib.to_string(),
                "--time-scale",
                "0.05",
                "--heartbeat-interval-ms",
                "300",
                "--check-invariants",
                "--state-dir",
                f.dir.path().join("sim").to_str().unwrap(),
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            // Its default is warnings only: the line naming the bound port.
            .env("RUST_LOG", "warn,nodemaint_agent::metrics=info"),
        f.dir.path().join("sim-fleet.log"),
    );
    let sport = wait_listening(&mut sim, METRICS).port();
    wait_for(Duration::from_secs(30), "3 simulated nodes", || {
        let v = f.cli_json("bob", &["node", "list"]);
        v.as_array().is_some_and(|a| {
            a.iter()
                .filter(|n| n["reachable"] == true && n["vms_total"].as_u64() > Some(0))
                .count()
                == 3
        })
    });
    // sim0002 holds two user VMs (the cloudspace's VFW is on sim0001).
    let out = f.cli(
        "alice",
        &[
            "maintenance",
            "start",
            "sim0002",
            "--mode",
            "move",
            "--output",
            "json",
        ],
    );
    ok(&out);
    let job = job_id(&out);
    let c = scrape(cport);
    assert_well_formed(&c);
    assert_eq!(
        value(
            &c,
            "nodemaint_jobs{kind=\"maintenance.start\",state=\"SUCCEEDED\"}"
        ),
        1.0
    );
    assert_eq!(value(&c, "nodemaint_migrations_in_flight"), 0.0);
    assert_eq!(
        value(
            &c,
            "nodemaint_migration_duration_seconds_count{result=\"ok\"}"
        ),
        2.0
    );
    let bytes = 2.0 * (vm_mib * 1024 * 1024) as f64;
    assert_eq!(value(&c, "nodemaint_migrated_bytes_total"), bytes);
    let s = scrape(sport);
    assert_well_formed(&s);
    assert_eq!(
        value(&s, "nodemaint_agent_migrated_bytes_total{node=\"sim0002\"}"),
        bytes
    );
    assert_eq!(
        value(
            &s,
            "nodemaint_agent_migration_duration_seconds_count{node=\"sim0002\",result=\"ok\"}"
        ),
        2.0
    );
    assert_eq!(
        value(&s, "nodemaint_agent_migrations_in_flight{node=\"sim0002\"}"),
        0.0
    );
    assert_eq!(
        value(&s, "nodemaint_agent_migrated_bytes_total{node=\"sim0001\"}"),
        0.0
    );
    let clog = f.coordinator_log();
    assert!(assert_job_lines_carry_ids(&clog, &job, Some("sim0002")) > 0);
}

/// `deploy/monitoring/`, from this crate's directory.
fn monitoring(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/monitoring")
        .join(file)
}

/// Every PromQL expression of the dashboard (panel targets and templating
/// queries), as written (with Grafana's `$variables`).
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(monitoring("nodemaint-dashboard.json")).unwrap();
    let d: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{p}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} queries nothing", p["title"]);
        for t in targets {
            out.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["definition"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

/// The alerting rules: (alert name, expr).
fn rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring("nodemaint-alerts.yml")).unwrap();
    let y: serde_yaml::Value = serde_yaml::from_str(&text).expect("the rules are YAML");
    let mut out = Vec::new();
    for g in y["groups"].as_sequence().expect("groups") {
        assert!(g["name"].as_str().is_some(), "group without a name");
        for r in g["rules"].as_sequence().expect("rules") {
            let name = r["alert"].as_str().expect("an alerting rule").to_string();
            let expr = r["expr"].as_str().expect("expr").to_string();
            let sev = r["labels"]["severity"].as_str().unwrap_or_default();
            assert!(
                ["critical", "warning", "info"].contains(&sev),
                "{name}: severity {sev:?}"
            );
            assert!(r["annotations"]["summary"].as_str().is_some(), "{name}");
            if let Some(f) = r.get("for") {
                let f = f.as_str().expect("for: a duration");
                assert!(
                    f.len() > 1 && f.ends_with(['s', 'm', 'h']),
                    "{name}: for {f:?}"
                );
            }
            out.push((name, expr));
        }
    }
    out
}

/// The metric names an expression uses: identifiers starting with
/// `nodemaint_` (label names, values and functions never do).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = expr.char_indices().peekable();
    let mut quoted: Option<char> = None;
    let mut prev: Option<char> = None;
    while let Some((i, c)) = chars.next() {
        if let Some(q) = quoted {
            if c == q && prev != Some('\\') {
                quoted = None;
            }
            prev = Some(c);
            continue;
        }
        if c == '"' || c == '\'' || c == '`' {
            quoted = Some(c);
        } else if (c.is_ascii_alphabetic() || c == '_' || c == ':')
            && !prev.is_some_and(|p| p.is_ascii_alphanumeric() || p == '_' || p == ':' || p == '$')
        {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let word = &expr[i..end];
            if word.starts_with("nodemaint_") && !out.iter().any(|w| w == word) {
                out.push(word.to_string());
            }
            prev = expr[..end].chars().last();
            continue;
        }
        prev = Some(c);
    }
    out
}

/// The names a scrape serves: every family its `# TYPE` lines declare
/// (histograms as their `_bucket`, `_sum` and `_count` series), so a family
/// without a sample yet (no job running, no migration done) still counts.
fn served_names(scrape: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{s}"));
                }
            } else {
                out.insert(name.to_string());
            }
        }
    }
    out
}

#[test]
fn metric_names_come_out_of_promql() {
    let e = r#"sum by (node) (rate(nodemaint_agent_migrated_bytes_total{node=~"nodemaint_x|$node",check!='nodemaint_y'}[$__rate_interval])) / on(node) max(nodemaint_leader) > 3 * nodemaint_a:b"#;
    assert_eq!(
        metric_names(e),
        [
            "nodemaint_agent_migrated_bytes_total",
            "nodemaint_leader",
            "nodemaint_a:b"
        ]
    );
    assert!(metric_names("time() - x_nodemaint_z").is_empty());
    let served = served_names(
        "# TYPE nodemaint_h histogram\nnodemaint_h_count 0\n# TYPE nodemaint_g gauge\n",
    );
    assert!(served.contains("nodemaint_h_bucket") && served.contains("nodemaint_g"));
    assert!(!served.contains("nodemaint_h"));
}

/// The rules and dashboard parse, every alert the brief names is there, and
/// with `promtool` (Debian: `apt-get install prometheus`; required under CI) the
/// rules pass `promtool check rules` and their unit tests
/// (`nodemaint-alerts.test.yml`), and every dashboard expression parses as
/// PromQL (as a recording rule, Grafana's variables replaced).
#[test]
fn monitoring_rules_and_dashboard_are_valid() {
    let rules = rules();
    let names: Vec<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "NodemaintAgentSilent",
        "NodemaintNodeInMaintenanceTooLong",
        "NodemaintJobStuck",
        "NodemaintChecksFailingAfterEnable",
    ] {
        assert!(names.contains(&want), "no alert {want} in {names:?}");
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "duplicate alert names");
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{} dashboard queries", exprs.len());
    for e in exprs.iter().chain(rules.iter().map(|(_, e)| e)) {
        assert!(!metric_names(e).is_empty(), "no nodemaint metric in {e}");
    }

    let Ok(out) = Command::new("promtool").arg("--version").output() else {
        // deploy/setup.sh --for test installs it (Debian package prometheus).
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool not on PATH under CI (apt-get install prometheus)"
        );
        eprintln!("skipped: promtool not on PATH: rules not checked with it");
        return;
    };
    assert!(out.status.success());
    let dir = monitoring("");
    for args in [
        &["check", "rules", "nodemaint-alerts.yml"][..],
        &["test", "rules", "nodemaint-alerts.test.yml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            stdout(&out),
            stderr(&out)
        );
    }
    // The dashboard's queries, as recording rules promtool parses.
    let tmp = tempfile::tempdir().unwrap();
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        if e.starts_with("label_values(") {
            continue; // a Grafana function, not PromQL
        }
        let e = e.replace("$__rate_interval", "5m").replace("$node", ".*");
        yaml += &format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        );
    }
    let path = tmp.path().join("dashboard-rules.yml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dashboard queries:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// A real coordinator and agent serve every metric the dashboard and the
/// alerting rules use, and the series the alerts read move as they should:
/// node status and since-when, last heartbeat, running jobs' times, the
/// last result of each check, the build.
#[test]
fn every_metric_the_dashboard_and_alerts_use_is_served() {
    let mut f = Fleet::start_bare();
    let cport = start_coordinator(&mut f);
    let check = |name: &str, command: &str| CheckConfig {
        name: name.into(),
        kind: CheckKind::Command {
            command: command.into(),
        },
        start: None,
        timeout_s: nodemaint_agent::checks::DEFAULT_TIMEOUT_S,
    };
    let a1 = start_agent(
        &mut f,
        "node1",
        &[Dom::user("vm-a", "cs1")],
        vec![check("good", "true"), check("bad", "false")],
    );
    start_agent(&mut f, "node2", &[Dom::user("vm-c", "cs2")], vec![]);
    f.wait_registered();
    let now = || nodemaint_proto::now_ms() as f64 / 1000.0;

    let c = scrape(cport);
    let a = scrape(a1);
    assert_well_formed(&c);
    assert_well_formed(&a);
    let mut served = served_names(&c);
    served.extend(served_names(&a));
    let mut used: Vec<(String, String)> = Vec::new();
    for e in dashboard_exprs() {
        used.extend(
            metric_names(&e)
                .into_iter()
                .map(|m| (m, "the dashboard".into())),
        );
    }
    for (alert, e) in rules() {
        used.extend(metric_names(&e).into_iter().map(|m| (m, alert.clone())));
    }
    let missing: Vec<&(String, String)> =
        used.iter().filter(|(m, _)| !served.contains(m)).collect();
    assert!(
        missing.is_empty(),
        "used but not served: {missing:?}\nserved: {served:?}"
    );

    // Both binaries name their build.
    let build = format!(
        "nodemaint_build_info{{version=\"{}\",git=\"{}\"}}",
        env!("CARGO_PKG_VERSION"),
        nodemaint_proto::metrics::GIT_COMMIT
    );
    assert_eq!(value(&c, &build), 1.0);
    assert_eq!(value(&a, &build), 1.0);
    // One status per node is set; heartbeats are recent timestamps.
    for node in ["node1", "node2"] {
        let st = |s: &str| {
            value(
                &c,
                &format!("nodemaint_node_status{{node=\"{node}\",status=\"{s}\"}}"),
            )
        };
        assert_eq!(st("enabled"), 1.0);
        assert_eq!(st("maintenance") + st("error") + st("decommissioned"), 0.0);
        let hb = value(
            &c,
            &format!("nodemaint_node_last_heartbeat_timestamp_seconds{{node=\"{node}\"}}"),
        );
        assert!((now() - 10.0..now() + 1.0).contains(&hb), "{node}: {hb}");
        assert!(
            value(
                &c,
                &format!("nodemaint_node_heartbeat_interval_seconds{{node=\"{node}\"}}")
            ) > 0.0
        );
    }

    // Maintenance (mode none): the status flips and says since when.
    let before = now();
    ok(&f.cli(
        "alice",
        &["maintenance", "start", "node2", "--mode", "none"],
    ));
    let c = scrape(cport);
    assert_eq!(
        value(
            &c,
            "nodemaint_node_status{node=\"node2\",status=\"maintenance\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &c,
            "nodemaint_node_status{node=\"node2\",status=\"enabled\"}"
        ),
        0.0
    );
    let since = value(
        &c,
        "nodemaint_node_status_since_timestamp_seconds{node=\"node2\",status=\"maintenance\"}",
    );
    assert!(
        since >= before - 1.0 && since <= now(),
        "{since} vs {before}"
    );
    assert_eq!(
        sum_of(&c, "nodemaint_node_status{status=\"maintenance\"}"),
        1.0,
        "summing by status counts the nodes"
    );
    ok(&f.cli("alice", &["node", "enable", "node2"]));
    let c = scrape(cport);
    let since2 = value(
        &c,
        "nodemaint_node_status_since_timestamp_seconds{node=\"node2\",status=\"enabled\"}",
    );
    assert!(since2 >= since, "{since2} < {since}");
    assert!(sample(
        &c,
        "nodemaint_node_status_since_timestamp_seconds{node=\"node2\",status=\"maintenance\"}"
    )
    .is_none());

    // Checks: the last result of each.
    assert!(!f.cli("bob", &["node", "check", "node1"]).status.success());
    let a = scrape(a1);
    let ck = |d: &str, c: &str| value(&a, &format!("{d}{{node=\"node1\",check=\"{c}\"}}"));
    assert_eq!(ck("nodemaint_agent_check_ok", "bad"), 0.0);
    assert_eq!(ck("nodemaint_agent_check_ok", "good"), 1.0);
    let ran = ck("nodemaint_agent_check_last_run_timestamp_seconds", "bad");
    assert!((now() - 60.0..=now()).contains(&ran), "{ran}");

    // A job that cannot finish (its agent frozen) is listed with its start
    // and last change; once it ends it is not.
    f.signal_agent("node1", "-STOP");
    let out = f.cli(
        "alice",
        &["vm", "stop", "vm-a", "--detach", "--output", "json"],
    );
    ok(&out);
    let job = serde_json::from_str::<Value>(&stdout(&out)).unwrap()["job_id"]
        .as_str()
        .expect("a detached job's id")
        .to_string();
    let c = scrape(cport);
    let labels = format!("{{job_id=\"{job}\",kind=\"vm.stop\",state=\"RUNNING\",node=\"node1\"}}");
    let started = value(
        &c,
        &format!("nodemaint_job_started_timestamp_seconds{labels}"),
    );
    let updated = value(
        &c,
        &format!("nodemaint_job_updated_timestamp_seconds{labels}"),
    );
    assert!(
        started <= updated && updated <= now(),
        "{started} {updated}"
    );
    assert!(now() - started < 60.0);
    f.signal_agent("node1", "-CONT");
    wait_for(Duration::from_secs(60), "the stop job to end", || {
        !scrape(cport).contains(&format!("job_id=\"{job}\""))
    });
    let c = scrape(cport);
    assert_eq!(
        value(&c, "nodemaint_jobs{kind=\"vm.stop\",state=\"SUCCEEDED\"}"),
        1.0
    );
}

/// The sum of every sample whose series starts with `name{` and carries
/// each of the given `label="value"` pairs (`name{a="b"}` form).
fn sum_of(text: &str, selector: &str) -> f64 {
    let (name, labels) = selector.split_once('{').unwrap();
    let want: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?.strip_prefix('{')?;
            want.iter()
                .all(|w| rest.contains(w))
                .then(|| v.parse::<f64>().unwrap())
        })
        .sum()
}
