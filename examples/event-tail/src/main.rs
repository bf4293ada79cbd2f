//! `event-tail`: a small consumer of nodemaint's event stream, an example
//! for dashboards and automation. It replays the stored events from a given
//! time, optionally follows new ones, decodes each (`nodemaint.v1.Event`)
//! and prints one line per event.
//!
//! Operators read the stream through the coordinator's `event.read` API
//! (request/reply on `<prefix>.v1.api.<user>.read.event.read`, answered
//! into the caller's own inbox `_INBOX.<user>.…`), which needs no JetStream
//! permissions: the same way `coordinator events` reads it. Each reply is a
//! page of at most 200 stored events and the sequence the next page starts
//! at; with `wait_ms` the coordinator holds a request until an event comes.
//!
//! ```text
//! event-tail [--url URL] [--user NAME] [--prefix P] [--since DURATION | --since-ms MS]
//!            [--node NODE] [--kind KIND] [--op ID] [--follow]
//! ```
//! `NATS_URL`, `NATS_NKEY`, `NATS_CREDS`, `NODEMAINT_CREDS` and `NATS_CA` are read as the CLI reads them.

use nodemaint_proto::pb::{self, api_reply::Kind as Reply, api_request::Kind as Req, event::Body};
use nodemaint_proto::subjects::Subjects;
use nodemaint_proto::Message;
use std::time::Duration;

const USAGE: &str = "usage: event-tail [--url URL] [--user NAME] [--prefix PREFIX] \
[--since DURATION (90s, 10m, 2h, 1d) | --since-ms EPOCH_MS] [--node NODE] [--kind KIND] \
[--op JOB_ID] [--follow]
Replays nodemaint's events (from the start of the stream unless --since) and, with
--follow, waits for new ones; one line per event. KIND: heartbeat, inventory, progress,
result, checks, job, error. NATS_URL, NATS_NKEY, NATS_CREDS, NODEMAINT_CREDS, NATS_CA as for the coordinator CLI.";

struct Args {
    url: String,
    user: String,
    prefix: String,
    since_ms: i64,
    node: String,
    kind: String,
    op: String,
    follow: bool,
}

/// `90s`, `10m`, `2h`, `1d` (or bare seconds) in milliseconds.
fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: i64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("bad duration {s:?}: use s, m, h or d")),
    };
    n.checked_mul(unit_ms)
        .filter(|ms| *ms <= 3650 * 86_400_000)
        .ok_or_else(|| format!("duration {s:?} is more than 3650 days"))
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut a = Args {
        url: env("NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
        user: env("USER").unwrap_or_default(),
        prefix: nodemaint_proto::subjects::DEFAULT_PREFIX.into(),
        since_ms: 0,
        node: String::new(),
        kind: String::new(),
        op: String::new(),
        follow: false,
    };
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--url" => a.url = value()?,
            "--user" => a.user = value()?,
            "--prefix" => a.prefix = value()?,
            "--since" => {
                let back = parse_duration_ms(&value()?)?;
                a.since_ms = (nodemaint_proto::now_ms() - back).max(1);
            }
            "--since-ms" => {
                a.since_ms = value()?.parse().map_err(|_| "--since-ms: not a number")?
            }
            "--node" => a.node = value()?,
            "--kind" => a.kind = value()?,
            "--op" => a.op = value()?,
            "--follow" | "-f" => a.follow = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.user.is_empty() {
        return Err("--user is required (or $USER)".into());
    }
    Ok(a)
}

/// `2026-11-30T22:03:04.123Z` from milliseconds since the epoch (UTC;
/// Howard Hinnant's days-to-civil, to need no date crate).
fn utc(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, min, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

/// One line for an event: sequence, time, node, kind, operation, details.
fn line(seq: u64, ev: &pb::Event) -> String {
    let (kind, detail) = match &ev.body {
        Some(Body::Heartbeat(h)) => (
            "heartbeat",
            format!("boot={} agent={}", h.boot_id, h.agent_version),
        ),
        Some(Body::Inventory(i)) => (
            "inventory",
            format!("generation={} domains={}", i.generation, i.domains.len()),
        ),
        Some(Body::Progress(p)) => (
            "progress",
            format!(
                "vm={} step={} {:.0}% {} bytes",
                p.vm, p.step, p.percent, p.bytes_processed
            ),
        ),
        Some(Body::Result(r)) => (
            "result",
            format!(
                "cmd={} ok={} vm={} {}",
                r.command_id,
                r.ok,
                r.vm,
                r.error
                    .as_ref()
                    .map(|e| e.message.as_str())
                    .unwrap_or(r.message.as_str())
            ),
        ),
        Some(Body::Checks(c)) => {
            let failed: Vec<&str> = c
                .services
                .iter()
                .filter(|s| !s.ok)
                .map(|s| s.service.as_str())
                .collect();
            (
                "checks",
                format!("all_ok={} failed=[{}]", c.all_ok, failed.join(",")),
            )
        }
        Some(Body::Job(j)) => {
            let mut d = format!("job={} kind={} state={}", j.job_id, j.kind, j.state);
            if !j.vm.is_empty() {
                d += &format!(" vm={}", j.vm);
            }
            if !j.from_node.is_empty() || !j.to_node.is_empty() {
                d += &format!(" {}->{}", j.from_node, j.to_node);
            }
            if j.terminal {
                d += &format!(" terminal ok={}", j.ok);
            }
            if !j.message.is_empty() {
                d += &format!(" {:?}", j.message);
            }
            ("job", d)
        }
        Some(Body::Error(e)) => (
            "error",
            format!(
                "subject={} {}",
                e.subject,
                e.error.as_ref().map(|e| e.message.as_str()).unwrap_or("")
            ),
        ),
        None => ("empty", String::new()),
    };
    let op = if ev.op_id.is_empty() { "-" } else { &ev.op_id };
    format!(
        "{seq} {} {} {kind} op={op} {detail}",
        utc(ev.ts_ms),
        ev.node
    )
}

async fn run(a: Args) -> Result<(), String> {
    let sec = nodemaint_proto::bus::Security::from_env();
    // Replies come to `_INBOX.<user>.…`: the only inbox the coordinator
    // answers (and, on a secured server, the only one this user may read).
    let (nats, _) =
        nodemaint_proto::bus::connect_watching_as(&a.url, "event-tail", &sec, Some(&a.user))
            .await
            .map_err(|e| e.to_string())?;
    let subjects = Subjects::new(&a.prefix);
    let subject = subjects.api(&a.user, false, "event.read");
    let mut req = pb::ReadEvents {
        filters: vec![pb::EventFilter {
            node: a.node.clone(),
            kind: a.kind.clone(),
        }],
        since_ms: a.since_ms,
        op_id: a.op.clone(),
        // Following: the coordinator holds the request until an event comes.
        wait_ms: if a.follow { 5_000 } else { 0 },
        ..Default::default()
    };
    loop {
        let body = pb::ApiRequest {
            user: a.user.clone(),
            kind: Some(Req::ReadEvents(req.clone())),
            ..Default::default()
        }
        .encode_to_vec();
        let resp = nats
            .send_request(
                subject.clone(),
                async_nats::Request::new()
                    .payload(body.into())
                    .timeout(Some(Duration::from_secs(30))),
            )
            .await
            .map_err(|e| format!("event.read on {subject}: {e}"))?;
        let reply = nodemaint_proto::decode::<pb::ApiReply>(&resp.payload)
            .map_err(|e| format!("bad reply: {e}"))?;
        let page = match reply.kind {
            Some(Reply::Events(p)) => p,
            Some(Reply::Error(e)) => return Err(format!("refused: {}", e.message)),
            other => return Err(format!("unexpected reply {other:?}")),
        };
        // Continue after this page, also when it was empty.
        req.start_seq = page.next_seq;
        for stored in &page.events {
            match nodemaint_proto::decode::<pb::Event>(&stored.event) {
                Ok(ev) => println!("{}", line(stored.seq, &ev)),
                Err(e) => eprintln!("seq {}: {e}", stored.seq),
            }
        }
        if page.pending == 0 && !a.follow {
            return Ok(());
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    if let Err(e) = run(a).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_796_083_384_123), "2026-12-01T00:03:04.123Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("2"), Ok(2_000));
        assert!(parse_duration_ms("5000d").is_err());
        assert!(parse_duration_ms("99999999999999999999d").is_err());
        assert!(parse_duration_ms("1w").is_err());
    }
}
