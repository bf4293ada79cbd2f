//! Post-reboot service checks: the agent's configured checks, run on a
//! `RunChecks` command (`coordinator node check NODE [--start-failed]`).
//!
//! # Configuration
//!
//! Checks are listed in the agent's TOML config as an array of tables. The
//! `type` field selects the kind of check; the other fields depend on it.
//!
//! ```toml
//! # `ovs monitor services` (OpenvStorage, Upstart era): every
//! # `NAME start/running, process N` line is a healthy service, everything
//! # else (other goal/state, anything under "Non-running processes") failed.
//! [[checks]]
//! name = "ovs"
//! type = "ovs_services"
//! command = "ovs monitor services"
//! start = "ovs start services"     # optional, run once by --start-failed
//! timeout_s = 30                   # optional, default 30 (check and start)
//!
//! # `ays status` (JumpScale AYS): a table DOMAIN NAME Instance Prio Status
//! # Ports; every row whose Status is not RUNNING is failed.
//! [[checks]]
//! name = "ays"
//! type = "ays_status"
//! command = "ays status"
//! start = "ays start"
//!
//! # Any shell command, judged by its exit code (0 = ok).
//! [[checks]]
//! name = "storage-mounted"
//! type = "command"
//! command = "mountpoint -q /mnt/storage"
//!
//! # A systemd unit: ok iff `systemctl is-active UNIT` prints "active".
//! [[checks]]
//! name = "libvirtd"
//! type = "systemd"
//! unit = "libvirtd"
//! start = "systemctl start libvirtd"
//!
//! # A TCP port: ok iff a connection succeeds within the timeout.
//! [[checks]]
//! name = "ssh"
//! type = "tcp"
//! host = "127.0.0.1"               # optional, default 127.0.0.1
//! port = 22
//! ```
//!
//! Unknown fields, unknown types, a missing field the type needs, a field
//! the type does not use, an empty name or command and `timeout_s = 0` are
//! configuration errors. [`validate`] additionally rejects duplicate names.
//!
//! # Results
//!
//! [`run_checks`] returns one [`pb::ServiceStatus`] per service, checks in
//! config order and services in the order their command printed them:
//!
//! | type           | `service`                    | `state` when it ran                  |
//! |----------------|------------------------------|--------------------------------------|
//! | `ovs_services` | the Upstart job name         | `start/running`, `stop/waiting`, …   |
//! | `ays_status`   | `DOMAIN/NAME/Instance`       | the Status column (`RUNNING`, …)     |
//! | `command`      | the check's name             | `exit N` or `signal N`               |
//! | `systemd`      | the unit                     | `systemctl is-active` output         |
//! | `tcp`          | `HOST:PORT`                  | `open`, `refused`, `error`           |
//!
//! When a check cannot produce services it yields ONE failed service named
//! after the check, with state `timeout` (killed after `timeout_s`), `error`
//! (could not be spawned) or `unparseable` (the output was not recognized;
//! the detail quotes its first line). `all_ok` is true iff every service is
//! ok (so an agent without checks reports `all_ok = true`).
//!
//! Checks run concurrently; with `start_failed`, every check that has a
//! failed service and a `start` command then gets, one after the other in
//! config order, its start command run once (with the check's timeout) and
//! is checked again; the services of that re-check carry
//! `start_attempted = true`, and the start command's outcome (exit code and
//! output tail when it failed) is appended to their `detail`.
//!
//! Commands run with `sh -c` in their own process group, stdin closed,
//! stdout and stderr captured; on timeout the whole process group is killed.
//! Parsers read stdout; details quote stdout followed by stderr.

use nodemaint_proto::pb;
use serde::{Deserialize, Serialize};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Default timeout of a check command and of its start command.
pub const DEFAULT_TIMEOUT_S: u64 = 30;
/// How much of a command's output is quoted in a service's `detail`.
const DETAIL_TAIL: usize = 512;
/// How much of each output stream is captured (the rest is discarded).
const MAX_CAPTURE: usize = 1 << 20;
/// After a command exited, how long to wait for its output pipes to close
/// (a process it left in the background may hold them open).
const PIPE_GRACE: Duration = Duration::from_secs(1);
/// After a timed-out command was killed, how long to wait for its output.
const KILL_GRACE: Duration = Duration::from_millis(300);
/// Length limit of a first line quoted in errors.
const FIRST_LINE_MAX: usize = 200;

/// One configured check (an element of `[[checks]]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RawCheckConfig", into = "RawCheckConfig")]
pub struct CheckConfig {
    /// Name of the check, e.g. "ovs", "ays", "libvirtd", "ssh".
    pub name: String,
    /// What to check (TOML: the `type` field and the fields it needs).
    pub kind: CheckKind,
    /// Shell command run once by `--start-failed` when the check failed,
    /// e.g. "ovs start services", "ays start", "systemctl start libvirtd".
    pub start: Option<String>,
    /// Timeout in seconds of the check command and of the start command.
    pub timeout_s: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// `type = "ovs_services"`: runs `command` (e.g. "ovs monitor services")
    /// and parses its Upstart-style output ([`parse_ovs_services`]).
    OvsServices { command: String },
    /// `type = "ays_status"`: runs `command` (e.g. "ays status") and parses
    /// its table ([`parse_ays_status`]).
    AysStatus { command: String },
    /// `type = "command"`: ok iff `command` exits with 0.
    Command { command: String },
    /// `type = "systemd"`: ok iff `systemctl is-active UNIT` prints "active".
    Systemd { unit: String },
    /// `type = "tcp"`: ok iff a TCP connection succeeds within the timeout.
    Tcp { host: String, port: u16 },
}

impl CheckKind {
    /// The `type` value of this kind in the TOML config.
    pub fn type_name(&self) -> &'static str {
        match self {
            CheckKind::OvsServices { .. } => "ovs_services",
            CheckKind::AysStatus { .. } => "ays_status",
            CheckKind::Command { .. } => "command",
            CheckKind::Systemd { .. } => "systemd",
            CheckKind::Tcp { .. } => "tcp",
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum CheckType {
    OvsServices,
    AysStatus,
    Command,
    Systemd,
    Tcp,
}

/// The TOML form, validated into a [`CheckConfig`] (and rendered from one).
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawCheckConfig {
    name: String,
    #[serde(rename = "type")]
    kind: CheckType,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<String>,
    #[serde(default = "default_timeout_s")]
    timeout_s: u64,
}

fn default_timeout_s() -> u64 {
    DEFAULT_TIMEOUT_S
}

impl From<CheckConfig> for RawCheckConfig {
    fn from(c: CheckConfig) -> Self {
        let mut raw = RawCheckConfig {
            name: c.name,
            kind: CheckType::Command,
            command: None,
            unit: None,
            host: None,
            port: None,
            start: c.start,
            timeout_s: c.timeout_s,
        };
        match c.kind {
            CheckKind::OvsServices { command } => {
                raw.kind = CheckType::OvsServices;
                raw.command = Some(command);
            }
            CheckKind::AysStatus { command } => {
                raw.kind = CheckType::AysStatus;
                raw.command = Some(command);
            }
            CheckKind::Command { command } => raw.command = Some(command),
            CheckKind::Systemd { unit } => {
                raw.kind = CheckType::Systemd;
                raw.unit = Some(unit);
            }
            CheckKind::Tcp { host, port } => {
                raw.kind = CheckType::Tcp;
                raw.host = Some(host);
                raw.port = Some(port);
            }
        }
        raw
    }
}

impl TryFrom<RawCheckConfig> for CheckConfig {
    type Error = String;

    fn try_from(raw: RawCheckConfig) -> Result<Self, String> {
        let name = raw.name.trim().to_string();
        if name.is_empty() {
            return Err("check name must not be empty".into());
        }
        let err = |msg: String| format!("check {name:?}: {msg}");
        if raw.timeout_s == 0 {
            return Err(err("timeout_s must be at least 1".into()));
        }
        if let Some(start) = &raw.start {
            if start.trim().is_empty() {
                return Err(err("start must not be empty (leave it out instead)".into()));
            }
        }
        let type_name = match raw.kind {
            CheckType::OvsServices => "ovs_services",
            CheckType::AysStatus => "ays_status",
            CheckType::Command => "command",
            CheckType::Systemd => "systemd",
            CheckType::Tcp => "tcp",
        };
        let allowed: &[&str] = match raw.kind {
            CheckType::OvsServices | CheckType::AysStatus | CheckType::Command => &["command"],
            CheckType::Systemd => &["unit"],
            CheckType::Tcp => &["host", "port"],
        };
        let present = [
            ("command", raw.command.is_some()),
            ("unit", raw.unit.is_some()),
            ("host", raw.host.is_some()),
            ("port", raw.port.is_some()),
        ];
        for (field, is_set) in present {
            if is_set && !allowed.contains(&field) {
                return Err(err(format!(
                    "field `{field}` does not apply to type {type_name:?}"
                )));
            }
        }
        let required = |field: &str, value: Option<String>| -> Result<String, String> {
            match value {
                Some(v) if !v.trim().is_empty() => Ok(v),
                Some(_) => Err(err(format!("`{field}` must not be empty"))),
                None => Err(err(format!("type {type_name:?} requires `{field}`"))),
            }
        };
        let kind = match raw.kind {
            CheckType::OvsServices => CheckKind::OvsServices {
                command: required("command", raw.command)?,
            },
            CheckType::AysStatus => CheckKind::AysStatus {
                command: required("command", raw.command)?,
            },
            CheckType::Command => CheckKind::Command {
                command: required("command", raw.command)?,
            },
            CheckType::Systemd => CheckKind::Systemd {
                unit: required("unit", raw.unit)?,
            },
            CheckType::Tcp => CheckKind::Tcp {
                host: match raw.host {
                    Some(h) => required("host", Some(h))?,
                    None => "127.0.0.1".into(),
                },
                port: raw
                    .port
                    .ok_or_else(|| err(format!("type {type_name:?} requires `port`")))?,
            },
        };
        Ok(CheckConfig {
            name,
            kind,
            start: raw.start,
            timeout_s: raw.timeout_s,
        })
    }
}

/// Checks a whole list: names must be unique (they identify the services
/// of a report).
pub fn validate(checks: &[CheckConfig]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for c in checks {
        if !seen.insert(c.name.as_str()) {
            return Err(format!("duplicate check name {:?}", c.name));
        }
    }
    Ok(())
}

/// One service as printed by a status command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedService {
    pub name: String,
    pub ok: bool,
    pub state: String,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty output")]
    Empty,
    #[error("no service line recognized (first line: {first_line:?})")]
    NoServices { first_line: String },
    #[error("no table header (DOMAIN NAME Instance Prio Status Ports) found (first line: {first_line:?})")]
    NoHeader { first_line: String },
}

/// First non-blank line, trimmed and shortened, for error messages.
fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut end = line.len().min(FIRST_LINE_MAX);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    if end < line.len() {
        format!("{}…", &line[..end])
    } else {
        line.to_string()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OvsSection {
    /// Before any header, or under "Running processes:".
    Running,
    /// Under "Non-running processes:": everything listed here is failed.
    NonRunning,
}

fn ovs_section_header(line: &str) -> Option<OvsSection> {
    let key: String = line
        .trim()
        .trim_end_matches(':')
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    match key.as_str() {
        "runningprocesses" | "runningservices" => Some(OvsSection::Running),
        "nonrunningprocesses"
        | "notrunningprocesses"
        | "nonrunningservices"
        | "notrunningservices"
        | "stoppedprocesses"
        | "stoppedservices" => Some(OvsSection::NonRunning),
        _ => None,
    }
}

/// An Upstart status line: `NAME [(INSTANCE)] GOAL/STATE[, process PID]`.
/// Returns (name, "goal/state" in lower case, the rest).
fn parse_upstart_line(line: &str) -> Option<(String, String, String)> {
    let mut toks = line.split_whitespace();
    let mut name = toks.next()?.trim_end_matches([',', ':']).to_string();
    let mut tok = toks.next()?;
    if tok.starts_with('(') {
        let mut instance = tok.to_string();
        while !instance.ends_with(')') {
            instance.push(' ');
            instance.push_str(toks.next()?);
        }
        name = format!("{name} {instance}");
        tok = toks.next()?;
    }
    let goal_state = tok.trim_end_matches(',').to_ascii_lowercase();
    let (goal, state) = goal_state.split_once('/')?;
    let state_ok = !state.is_empty() && state.chars().all(|c| c.is_ascii_lowercase() || c == '-');
    if !(goal == "start" || goal == "stop") || !state_ok || name.is_empty() {
        return None;
    }
    let rest = toks.collect::<Vec<_>>().join(" ");
    Some((name, goal_state, rest))
}

/// Parses the output of `ovs monitor services` (Upstart `initctl`-style):
///
/// ```text
/// Running processes:
/// ovs-workers start/running, process 2745
///
/// Non-running processes:
/// ovs-arakoon-voldrv stop/waiting
/// ```
///
/// A `NAME start/running[, process N]` line is ok (state "start/running",
/// detail "process N"); any other goal/state is failed with that state.
/// Every non-blank line under a "Non-running processes:" header is failed
/// (state its goal/state, or "not running" when it has none). Headers are
/// matched case-insensitively and are optional; whitespace is free;
/// unrecognized lines outside the non-running section are ignored. Output
/// without any service line is a [`ParseError`].
pub fn parse_ovs_services(output: &str) -> Result<Vec<ParsedService>, ParseError> {
    if output.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let mut section = OvsSection::Running;
    let mut services = Vec::new();
    for line in output.lines().map(str::trim) {
        if line.is_empty() {
            continue;
        }
        if let Some(s) = ovs_section_header(line) {
            section = s;
            continue;
        }
        match (parse_upstart_line(line), section) {
            (Some((name, state, rest)), OvsSection::Running) => services.push(ParsedService {
                ok: state == "start/running",
                name,
                state,
                detail: rest,
            }),
            (Some((name, state, rest)), OvsSection::NonRunning) => {
                let mut detail = "listed under non-running processes".to_string();
                if !rest.is_empty() {
                    detail = format!("{rest}; {detail}");
                }
                services.push(ParsedService {
                    name,
                    ok: false,
                    state,
                    detail,
                })
            }
            (None, OvsSection::NonRunning) => {
                let name = line
                    .split_whitespace()
                    .next()
                    .unwrap_or(line)
                    .trim_end_matches([',', ':'])
                    .to_string();
                let detail = if name == line {
                    String::new()
                } else {
                    line.to_string()
                };
                services.push(ParsedService {
                    name,
                    ok: false,
                    state: "not running".into(),
                    detail,
                })
            }
            (None, OvsSection::Running) => {}
        }
    }
    if services.is_empty() {
        return Err(ParseError::NoServices {
            first_line: first_line(output),
        });
    }
    Ok(services)
}

/// Parses the table printed by `ays status` (JumpScale AYS):
///
/// ```text
/// DOMAIN     NAME                 Instance   Prio Status   Ports
/// ======================================================================
///
/// jumpscale  redis                 system       1 RUNNING  9999
/// jumpscale  mongodb               main         2 HALTED   27017
/// ```
///
/// Lines before the header (a line starting with the words DOMAIN NAME and
/// containing STATUS, any case) are ignored; separator lines of `=`/`-` and
/// blank lines are skipped. Each row is a service named
/// `DOMAIN/NAME/Instance` (`DOMAIN/NAME` when the instance is empty), ok iff
/// its Status is RUNNING (any case); state is the Status as printed, detail
/// `prio P[, ports …]`. Ports may be empty or several words. Rows that do
/// not fit the columns are ignored. No header, or a header without rows, is
/// a [`ParseError`].
pub fn parse_ays_status(output: &str) -> Result<Vec<ParsedService>, ParseError> {
    if output.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let mut lines = output.lines().map(str::trim);
    let mut header: Option<Vec<String>> = None;
    for line in lines.by_ref() {
        if let Some(cols) = ays_header(line) {
            header = Some(cols);
            break;
        }
    }
    let Some(cols) = header else {
        return Err(ParseError::NoHeader {
            first_line: first_line(output),
        });
    };
    let has_prio = cols.iter().any(|c| c == "prio");
    let status_col = cols.iter().position(|c| c == "status").unwrap_or(3);
    let mut services = Vec::new();
    for line in lines {
        if line.is_empty()
            || line
                .chars()
                .all(|c| matches!(c, '=' | '-' | '+' | '|' | '_') || c.is_whitespace())
            || ays_header(line).is_some()
        {
            continue;
        }
        let toks: Vec<&str> = line.split_whitespace().collect();
        if let Some(s) = ays_row(&toks, has_prio, status_col) {
            services.push(s);
        }
    }
    if services.is_empty() {
        return Err(ParseError::NoServices {
            first_line: first_line(output),
        });
    }
    Ok(services)
}

/// The lower-cased column names if `line` is the `ays status` header.
fn ays_header(line: &str) -> Option<Vec<String>> {
    let cols: Vec<String> = line
        .split_whitespace()
        .map(|t| t.to_ascii_lowercase())
        .collect();
    let is_header = cols.len() >= 3
        && cols[0] == "domain"
        && cols[1] == "name"
        && cols.iter().any(|c| c == "status");
    is_header.then_some(cols)
}

fn is_status_word(tok: &str) -> bool {
    !tok.is_empty()
        && tok
            .chars()
            .all(|c| c.is_ascii_alphabetic() || c == '_' || c == '-')
}

fn ays_row(toks: &[&str], has_prio: bool, status_col: usize) -> Option<ParsedService> {
    if toks.len() < 3 {
        return None;
    }
    let (instance, prio, status, ports) = if has_prio {
        // The instance is normally one word, but find the Prio number
        // rather than assume it: DOMAIN NAME [Instance] Prio Status [Ports].
        let i = (2..toks.len().saturating_sub(1))
            .find(|&i| toks[i].parse::<i64>().is_ok() && is_status_word(toks[i + 1]))?;
        (
            toks[2..i].join(" "),
            Some(toks[i]),
            toks[i + 1],
            &toks[i + 2..],
        )
    } else {
        if toks.len() <= status_col || !is_status_word(toks[status_col]) {
            return None;
        }
        (
            toks[2..status_col.max(2)].join(" "),
            None,
            toks[status_col],
            &toks[status_col + 1..],
        )
    };
    let mut name = format!("{}/{}", toks[0], toks[1]);
    if !instance.is_empty() {
        name = format!("{name}/{instance}");
    }
    let mut detail = Vec::new();
    if let Some(p) = prio {
        detail.push(format!("prio {p}"));
    }
    if !ports.is_empty() {
        detail.push(format!("ports {}", ports.join(" ")));
    }
    Some(ParsedService {
        name,
        ok: status.eq_ignore_ascii_case("running"),
        state: status.to_string(),
        detail: detail.join(", "),
    })
}

// ---------------------------------------------------------------------------
// Running commands

/// How a command ended.
enum Exec {
    Exited {
        /// Exit code, or None when killed by a signal.
        code: Option<i32>,
        signal: Option<i32>,
        stdout: String,
        stderr: String,
    },
    TimedOut {
        stdout: String,
        stderr: String,
    },
    SpawnFailed(std::io::Error),
}

impl Exec {
    fn exit_desc(code: Option<i32>, signal: Option<i32>) -> String {
        match (code, signal) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(s)) => format!("signal {s}"),
            (None, None) => "exit ?".into(),
        }
    }
}

/// Captures one output stream into a shared buffer until EOF. Once
/// `detached` is set, the data is drained and dropped (so a background
/// process still holding the pipe neither blocks us nor gets SIGPIPE).
fn capture<R>(
    mut reader: R,
    buf: Arc<Mutex<Vec<u8>>>,
    detached: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut chunk = [0u8; 8192];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if detached.load(Ordering::Relaxed) {
                        continue;
                    }
                    let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
                    let room = MAX_CAPTURE.saturating_sub(b.len());
                    b.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
    })
}

/// Kills the process group `pgid` (the command ran with `process_group(0)`,
/// so its group id is its pid). Uses the shell's `kill` builtin: `sh` is
/// already required for the commands themselves.
async fn kill_group(pgid: u32) {
    let _ = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -9 -{pgid} 2>/dev/null"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// Runs `program args…` with a timeout, capturing stdout and stderr.
async fn exec(program: &str, args: &[&str], timeout: Duration) -> Exec {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Exec::SpawnFailed(e),
    };
    let pid = child.id();
    let out_buf = Arc::new(Mutex::new(Vec::new()));
    let err_buf = Arc::new(Mutex::new(Vec::new()));
    let detached = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(capture(out, out_buf.clone(), detached.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(capture(err, err_buf.clone(), detached.clone()));
    }
    let status = tokio::time::timeout(timeout, child.wait()).await;
    let timed_out = status.is_err();
    if timed_out {
        if let Some(pid) = pid {
            kill_group(pid).await;
        }
        let _ = child.kill().await;
    }
    let grace = if timed_out { KILL_GRACE } else { PIPE_GRACE };
    let _ = tokio::time::timeout(grace, async {
        for r in &mut readers {
            let _ = r.await;
        }
    })
    .await;
    detached.store(true, Ordering::Relaxed);
    let text = |buf: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    };
    let (stdout, stderr) = (text(&out_buf), text(&err_buf));
    match status {
        Err(_) => Exec::TimedOut { stdout, stderr },
        Ok(Err(e)) => Exec::SpawnFailed(e),
        Ok(Ok(st)) => {
            use std::os::unix::process::ExitStatusExt;
            Exec::Exited {
                code: st.code(),
                signal: st.signal(),
                stdout,
                stderr,
            }
        }
    }
}

async fn exec_shell(command: &str, timeout: Duration) -> Exec {
    exec("sh", &["-c", command], timeout).await
}

/// The last `DETAIL_TAIL` bytes of stdout followed by stderr, trimmed.
fn output_tail(stdout: &str, stderr: &str) -> String {
    let mut text = stdout.trim().to_string();
    let stderr = stderr.trim();
    if !stderr.is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(stderr);
    }
    let mut start = text.len().saturating_sub(DETAIL_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    if start > 0 {
        format!("…{}", &text[start..])
    } else {
        text
    }
}

fn status(check: &str, service: &str, ok: bool, state: &str, detail: String) -> pb::ServiceStatus {
    pb::ServiceStatus {
        check: check.to_string(),
        service: service.to_string(),
        ok,
        state: state.to_string(),
        detail,
        start_attempted: false,
    }
}

/// A check that produced no services: one failed service named after it.
fn check_failure(check: &CheckConfig, state: &str, detail: String) -> Vec<pb::ServiceStatus> {
    vec![status(&check.name, &check.name, false, state, detail)]
}

fn timeout_detail(command: &str, timeout: Duration, stdout: &str, stderr: &str) -> String {
    let mut d = format!(
        "{command:?} did not finish within {} s and was killed",
        timeout.as_secs()
    );
    let tail = output_tail(stdout, stderr);
    if !tail.is_empty() {
        d = format!("{d}; output: {tail}");
    }
    d
}

/// Runs a check command and parses its stdout with `parse`.
async fn run_parsed(
    check: &CheckConfig,
    command: &str,
    timeout: Duration,
    parse: fn(&str) -> Result<Vec<ParsedService>, ParseError>,
) -> Vec<pb::ServiceStatus> {
    match exec_shell(command, timeout).await {
        Exec::SpawnFailed(e) => {
            check_failure(check, "error", format!("cannot run {command:?}: {e}"))
        }
        Exec::TimedOut { stdout, stderr } => check_failure(
            check,
            "timeout",
            timeout_detail(command, timeout, &stdout, &stderr),
        ),
        Exec::Exited {
            code,
            signal,
            stdout,
            stderr,
        } => match parse(&stdout) {
            Ok(services) => services
                .into_iter()
                .map(|s| status(&check.name, &s.name, s.ok, &s.state, s.detail))
                .collect(),
            Err(e) => {
                let shown = if stdout.trim().is_empty() {
                    &stderr
                } else {
                    &stdout
                };
                check_failure(
                    check,
                    "unparseable",
                    format!(
                        "output of {command:?} ({}) not recognized: {e}; first line: {:?}",
                        Exec::exit_desc(code, signal),
                        first_line(shown)
                    ),
                )
            }
        },
    }
}

async fn run_command(
    check: &CheckConfig,
    command: &str,
    timeout: Duration,
) -> Vec<pb::ServiceStatus> {
    match exec_shell(command, timeout).await {
        Exec::SpawnFailed(e) => {
            check_failure(check, "error", format!("cannot run {command:?}: {e}"))
        }
        Exec::TimedOut { stdout, stderr } => check_failure(
            check,
            "timeout",
            timeout_detail(command, timeout, &stdout, &stderr),
        ),
        Exec::Exited {
            code,
            signal,
            stdout,
            stderr,
        } => vec![status(
            &check.name,
            &check.name,
            code == Some(0),
            &Exec::exit_desc(code, signal),
            output_tail(&stdout, &stderr),
        )],
    }
}

async fn run_systemd(check: &CheckConfig, unit: &str, timeout: Duration) -> Vec<pb::ServiceStatus> {
    let what = format!("systemctl is-active {unit}");
    let (ok, state, detail) = match exec("systemctl", &["is-active", unit], timeout).await {
        Exec::SpawnFailed(e) => (
            false,
            "error".to_string(),
            format!("cannot run {what:?}: {e}"),
        ),
        Exec::TimedOut { stdout, stderr } => (
            false,
            "timeout".to_string(),
            timeout_detail(&what, timeout, &stdout, &stderr),
        ),
        Exec::Exited {
            code,
            signal,
            stdout,
            stderr,
        } => parse_systemd_is_active(&what, code, signal, &stdout, &stderr),
    };
    vec![status(&check.name, unit, ok, &state, detail)]
}

/// Judges what `systemctl is-active UNIT` (`what`) printed: returns (ok,
/// state, detail). The state is its first non-blank stdout line, ok iff it
/// is `active`; without one the state is `unknown` and the detail says how
/// the command ended.
pub fn parse_systemd_is_active(
    what: &str,
    code: Option<i32>,
    signal: Option<i32>,
    stdout: &str,
    stderr: &str,
) -> (bool, String, String) {
    let printed = stdout.lines().map(str::trim).find(|l| !l.is_empty());
    match printed {
        Some(state) => (
            state == "active",
            state.to_string(),
            output_tail("", stderr),
        ),
        None => (
            false,
            "unknown".to_string(),
            format!(
                "{what:?} printed no state ({}): {}",
                Exec::exit_desc(code, signal),
                output_tail("", stderr)
            ),
        ),
    }
}

async fn run_tcp(
    check: &CheckConfig,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Vec<pb::ServiceStatus> {
    let service = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let (ok, state, detail) =
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
            Ok(Ok(stream)) => {
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| service.clone());
                (true, "open", format!("connected to {peer}"))
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                (false, "refused", format!("connect to {service}: {e}"))
            }
            Ok(Err(e)) => (false, "error", format!("connect to {service}: {e}")),
            Err(_) => (
                false,
                "timeout",
                format!(
                    "connect to {service} did not succeed within {} s",
                    timeout.as_secs()
                ),
            ),
        };
    vec![status(&check.name, &service, ok, state, detail)]
}

/// Runs one check once; services are reported with `start_attempted = false`.
async fn run_one(check: &CheckConfig) -> Vec<pb::ServiceStatus> {
    let timeout = Duration::from_secs(check.timeout_s.max(1));
    match &check.kind {
        CheckKind::OvsServices { command } => {
            run_parsed(check, command, timeout, parse_ovs_services).await
        }
        CheckKind::AysStatus { command } => {
            run_parsed(check, command, timeout, parse_ays_status).await
        }
        CheckKind::Command { command } => run_command(check, command, timeout).await,
        CheckKind::Systemd { unit } => run_systemd(check, unit, timeout).await,
        CheckKind::Tcp { host, port } => run_tcp(check, host, *port, timeout).await,
    }
}

/// Runs a start command; returns (succeeded, summary for details).
async fn run_start(check: &CheckConfig, start: &str) -> (bool, String) {
    let timeout = Duration::from_secs(check.timeout_s.max(1));
    tracing::info!(check = %check.name, command = %start, "starting failed services");
    let (ok, summary) = match exec_shell(start, timeout).await {
        Exec::SpawnFailed(e) => (false, format!("start {start:?} could not run: {e}")),
        Exec::TimedOut { stdout, stderr } => (
            false,
            format!("start {}", timeout_detail(start, timeout, &stdout, &stderr)),
        ),
        Exec::Exited { code: Some(0), .. } => (true, format!("start {start:?} succeeded")),
        Exec::Exited {
            code,
            signal,
            stdout,
            stderr,
        } => {
            let tail = output_tail(&stdout, &stderr);
            let mut s = format!("start {start:?} failed ({})", Exec::exit_desc(code, signal));
            if !tail.is_empty() {
                s = format!("{s}: {tail}");
            }
            (false, s)
        }
    };
    if !ok {
        tracing::warn!(check = %check.name, "{summary}");
    }
    (ok, summary)
}

/// Runs `checks` (concurrently) and reports every service. With
/// `start_failed`, each check with a failed service and a `start` command
/// gets its start command run once and is checked again (sequentially, in
/// config order); see the module documentation.
pub async fn run_checks(checks: &[CheckConfig], start_failed: bool) -> pb::CheckReport {
    let handles: Vec<_> = checks
        .iter()
        .cloned()
        .map(|c| tokio::spawn(async move { run_one(&c).await }))
        .collect();
    let mut results = Vec::with_capacity(checks.len());
    for (handle, check) in handles.into_iter().zip(checks) {
        results.push(
            handle.await.unwrap_or_else(|e| {
                check_failure(check, "error", format!("check task failed: {e}"))
            }),
        );
    }
    if start_failed {
        for (check, services) in checks.iter().zip(results.iter_mut()) {
            let Some(start) = &check.start else { continue };
            if services.iter().all(|s| s.ok) {
                continue;
            }
            let (start_ok, summary) = run_start(check, start).await;
            let mut again = run_one(check).await;
            for s in &mut again {
                s.start_attempted = true;
                if !s.ok || !start_ok {
                    s.detail = if s.detail.is_empty() {
                        summary.clone()
                    } else {
                        format!("{}; {summary}", s.detail)
                    };
                }
            }
            *services = again;
        }
    }
    let services: Vec<pb::ServiceStatus> = results.into_iter().flatten().collect();
    pb::CheckReport {
        all_ok: services.iter().all(|s| s.ok),
        services,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVS: &str = include_str!("../tests/fixtures/ovs_monitor_services.txt");
    const OVS_ALL: &str = include_str!("../tests/fixtures/ovs_all_running.txt");
    const AYS: &str = include_str!("../tests/fixtures/ays_status.txt");
    const AYS_ALL: &str = include_str!("../tests/fixtures/ays_all_running.txt");
    const GARBAGE: &str = include_str!("../tests/fixtures/garbage.txt");

    fn svc(name: &str, ok: bool, state: &str, detail: &str) -> ParsedService {
        ParsedService {
            name: name.into(),
            ok,
            state: state.into(),
            detail: detail.into(),
        }
    }

    #[test]
    fn ovs_sample_with_a_stopped_service() {
        let s = parse_ovs_services(OVS).unwrap();
        assert_eq!(
            s,
            vec![
                svc("ovs-workers", true, "start/running", "process 2745"),
                svc(
                    "ovs-watcher-framework",
                    true,
                    "start/running",
                    "process 1854"
                ),
                svc(
                    "ovs-volumedriver_vpool1",
                    true,
                    "start/running",
                    "process 3110"
                ),
                svc(
                    "ovs-arakoon-voldrv",
                    false,
                    "stop/waiting",
                    "listed under non-running processes"
                ),
            ]
        );
    }

    #[test]
    fn ovs_all_running() {
        let s = parse_ovs_services(OVS_ALL).unwrap();
        assert!(s.len() >= 4, "{s:?}");
        assert!(
            s.iter().all(|s| s.ok && s.state == "start/running"),
            "{s:?}"
        );
    }

    #[test]
    fn ovs_odd_spacing_case_and_missing_header() {
        let out = "  ovs-workers\t start/running,   process 2745  \r\n\
                   ovs-scheduled-tasks   start/starting\n\
                   \n\
                   NON-RUNNING PROCESSES :\n\
                   \tovs-arakoon-voldrv   stop/waiting\n\
                   ovs-support-agent\n\
                   ovs-foo: unknown job\n";
        let s = parse_ovs_services(out).unwrap();
        assert_eq!(
            s,
            vec![
                svc("ovs-workers", true, "start/running", "process 2745"),
                svc("ovs-scheduled-tasks", false, "start/starting", ""),
                svc(
                    "ovs-arakoon-voldrv",
                    false,
                    "stop/waiting",
                    "listed under non-running processes"
                ),
                svc("ovs-support-agent", false, "not running", ""),
                svc("ovs-foo", false, "not running", "ovs-foo: unknown job"),
            ]
        );
    }

    #[test]
    fn ovs_stop_waiting_in_running_section_and_instances() {
        let out = "running processes:\n\
                   ovs-workers stop/waiting\n\
                   ovs-volumedriver (vpool1) start/running, process 12\n";
        let s = parse_ovs_services(out).unwrap();
        assert_eq!(
            s,
            vec![
                svc("ovs-workers", false, "stop/waiting", ""),
                svc(
                    "ovs-volumedriver (vpool1)",
                    true,
                    "start/running",
                    "process 12"
                ),
            ]
        );
    }

    #[test]
    fn ovs_garbage_and_empty_are_errors() {
        assert_eq!(parse_ovs_services(""), Err(ParseError::Empty));
        assert_eq!(parse_ovs_services(" \n\t\n"), Err(ParseError::Empty));
        match parse_ovs_services(GARBAGE) {
            Err(ParseError::NoServices { first_line }) => {
                assert_eq!(first_line, GARBAGE.lines().next().unwrap().trim())
            }
            other => panic!("{other:?}"),
        }
        // Headers alone, and an ays table, are not ovs output.
        assert!(parse_ovs_services("Running processes:\n\nNon-running processes:\n").is_err());
        assert!(parse_ovs_services(AYS).is_err());
    }

    #[test]
    fn ays_sample_with_a_halted_service() {
        let s = parse_ays_status(AYS).unwrap();
        assert_eq!(
            s,
            vec![
                svc(
                    "jumpscale/redis/system",
                    true,
                    "RUNNING",
                    "prio 1, ports 9999"
                ),
                svc(
                    "jumpscale/mongodb/main",
                    false,
                    "HALTED",
                    "prio 2, ports 27017"
                ),
                svc(
                    "openvcloud/vncproxy/main",
                    true,
                    "RUNNING",
                    "prio 10, ports 8091"
                ),
            ]
        );
    }

    #[test]
    fn ays_all_running() {
        let s = parse_ays_status(AYS_ALL).unwrap();
        assert!(s.len() >= 3, "{s:?}");
        assert!(s.iter().all(|s| s.ok && s.state == "RUNNING"), "{s:?}");
    }

    #[test]
    fn ays_empty_ports_odd_spacing_and_noise_before_header() {
        let out = "[warning] loading config\n\
                   domain name instance prio status ports\n\
                   ----------------------------------------\n\
                   jumpscale   agentcontroller2   main 3   running\n\
                   \n\
                   jumpscale\tnginx\tmain\t5\tHALTED\t80 443\n\
                   openvcloud  portal  main  42  ERROR\r\n";
        let s = parse_ays_status(out).unwrap();
        assert_eq!(
            s,
            vec![
                svc("jumpscale/agentcontroller2/main", true, "running", "prio 3"),
                svc(
                    "jumpscale/nginx/main",
                    false,
                    "HALTED",
                    "prio 5, ports 80 443"
                ),
                svc("openvcloud/portal/main", false, "ERROR", "prio 42"),
            ]
        );
    }

    #[test]
    fn ays_numeric_or_missing_instance() {
        let out = "DOMAIN NAME Instance Prio Status Ports\n\
                   jumpscale redis 1 1 RUNNING 9999\n\
                   jumpscale mongodb 2 HALTED\n";
        let s = parse_ays_status(out).unwrap();
        assert_eq!(
            s,
            vec![
                svc("jumpscale/redis/1", true, "RUNNING", "prio 1, ports 9999"),
                svc("jumpscale/mongodb", false, "HALTED", "prio 2"),
            ]
        );
    }

    #[test]
    fn ays_garbage_empty_and_header_only_are_errors() {
        assert_eq!(parse_ays_status(""), Err(ParseError::Empty));
        assert!(matches!(
            parse_ays_status(GARBAGE),
            Err(ParseError::NoHeader { .. })
        ));
        assert!(matches!(
            parse_ays_status(OVS),
            Err(ParseError::NoHeader { .. })
        ));
        let header_only = "DOMAIN     NAME   Instance   Prio Status   Ports\n=====\n\n";
        assert!(matches!(
            parse_ays_status(header_only),
            Err(ParseError::NoServices { .. })
        ));
    }

    #[derive(Deserialize)]
    struct Wrapper {
        #[serde(default)]
        checks: Vec<CheckConfig>,
    }

    fn parse_config(text: &str) -> Result<Vec<CheckConfig>, String> {
        toml::from_str::<Wrapper>(text)
            .map(|w| w.checks)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn toml_example_parses() {
        let checks = parse_config(
            r#"
            [[checks]]
            name = "ovs"
            type = "ovs_services"
            command = "ovs monitor services"
            start = "ovs start services"
            timeout_s = 30
            [[checks]]
            name = "ays"
            type = "ays_status"
            command = "ays status"
            start = "ays start"
            [[checks]]
            name = "libvirtd"
            type = "systemd"
            unit = "libvirtd"
            [[checks]]
            name = "ssh"
            type = "tcp"
            host = "127.0.0.1"
            port = 22
            [[checks]]
            name = "mounted"
            type = "command"
            command = "true"
            timeout_s = 5
            [[checks]]
            name = "local"
            type = "tcp"
            port = 80
            "#,
        )
        .unwrap();
        validate(&checks).unwrap();
        let kinds: Vec<_> = checks.iter().map(|c| c.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                CheckKind::OvsServices {
                    command: "ovs monitor services".into()
                },
                CheckKind::AysStatus {
                    command: "ays status".into()
                },
                CheckKind::Systemd {
                    unit: "libvirtd".into()
                },
                CheckKind::Tcp {
                    host: "127.0.0.1".into(),
                    port: 22
                },
                CheckKind::Command {
                    command: "true".into()
                },
                CheckKind::Tcp {
                    host: "127.0.0.1".into(),
                    port: 80
                },
            ]
        );
        assert_eq!(checks[0].start.as_deref(), Some("ovs start services"));
        assert_eq!(checks[1].timeout_s, DEFAULT_TIMEOUT_S);
        assert_eq!(checks[2].start, None);
        assert_eq!(checks[4].timeout_s, 5);
        assert_eq!(checks[2].kind.type_name(), "systemd");
        assert!(parse_config("").unwrap().is_empty());
    }

    #[test]
    fn toml_errors_are_reported() {
        let bad = [
            (
                r#"name = "x"
                type = "ovs_services""#,
                "requires `command`",
            ),
            (
                r#"name = "x"
                type = "tcp"
                host = "h""#,
                "requires `port`",
            ),
            (
                r#"name = "x"
                type = "systemd"
                unit = "u"
                command = "c""#,
                "does not apply",
            ),
            (
                r#"name = "x"
                type = "command"
                command = "c"
                colour = "red""#,
                "colour",
            ),
            (
                r#"name = "x"
                type = "http"
                command = "c""#,
                "http",
            ),
            (
                r#"name = "x"
                type = "command"
                command = "c"
                timeout_s = 0"#,
                "timeout_s",
            ),
            (
                r#"name = " "
                type = "command"
                command = "c""#,
                "name",
            ),
            (
                r#"name = "x"
                type = "command"
                command = """#,
                "empty",
            ),
            (
                r#"name = "x"
                type = "tcp"
                port = 70000"#,
                "70000",
            ),
        ];
        for (body, needle) in bad {
            let text = format!("[[checks]]\n{body}\n");
            let err = parse_config(&text).expect_err(body);
            assert!(err.contains(needle), "{body}: {err}");
        }
        let dup = parse_config(
            "[[checks]]\nname = \"a\"\ntype = \"command\"\ncommand = \"true\"\n\
             [[checks]]\nname = \"a\"\ntype = \"tcp\"\nport = 1\n",
        )
        .unwrap();
        assert!(validate(&dup).unwrap_err().contains("duplicate"));
    }

    #[test]
    fn output_tail_keeps_the_end() {
        let long = "x".repeat(2000) + "END";
        let t = output_tail(&long, "err");
        assert!(t.ends_with("END\nerr"), "{t}");
        assert!(t.len() <= DETAIL_TAIL + "…".len());
        assert_eq!(output_tail(" a \n", ""), "a");
    }
}
