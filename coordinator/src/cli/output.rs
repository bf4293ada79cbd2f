//! Human output: aligned tables, timestamps, progress lines; and the JSON
//! form of events for `--output json`.

use nodemaint_proto::pb::{self, event::Body};
use serde_json::{json, Value};

/// Left-aligned columns separated by two spaces, with a header line.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let all: Vec<usize> = (0..headers.len()).collect();
    table_of(headers, rows, &all, true)
}

/// [`table`] of the columns `cols` (indices into `headers`, in the order
/// shown), with or without the header line (`--no-headers`).
pub fn table_of(
    headers: &[&str],
    rows: &[Vec<String>],
    cols: &[usize],
    show_headers: bool,
) -> String {
    fn cell(row: &[String], i: usize) -> &str {
        row.get(i).map(String::as_str).unwrap_or("")
    }
    let mut widths: Vec<usize> = cols
        .iter()
        .map(|&i| if show_headers { headers[i].len() } else { 0 })
        .collect();
    for row in rows {
        for (w, &i) in widths.iter_mut().zip(cols) {
            *w = (*w).max(cell(row, i).chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (k, c) in cells.iter().enumerate() {
            if k + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{:<w$}  ", c, w = widths[k]));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    if show_headers {
        line(cols.iter().map(|&i| headers[i]).collect());
    }
    for row in rows {
        line(cols.iter().map(|&i| cell(row, i)).collect());
    }
    out
}

/// A column as `--columns` names it: `VMS RUN/TOTAL` is `vms_run_total`.
pub fn column_key(header: &str) -> String {
    header
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("_")
}

/// The columns `wanted` (by [`column_key`], case-insensitive) as indices
/// into `headers`, in the order asked; every column when none is asked.
pub fn select_columns(headers: &[&str], wanted: &[String]) -> Result<Vec<usize>, String> {
    if wanted.is_empty() {
        return Ok((0..headers.len()).collect());
    }
    let keys: Vec<String> = headers.iter().map(|h| column_key(h)).collect();
    wanted
        .iter()
        .map(|w| {
            let w = column_key(w);
            keys.iter()
                .position(|k| *k == w)
                .ok_or_else(|| format!("--columns: no column {w:?}; columns: {}", keys.join(",")))
        })
        .collect()
}

/// `2026-11-25 18:30:01Z` from milliseconds since the epoch (UTC).
pub fn fmt_ts(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `12s ago`, `5m ago`, `3h ago`, or `never`.
pub fn ago(ms: i64, now_ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let s = ((now_ms - ms) / 1000).max(0);
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

pub fn mib(v: u64) -> String {
    if v >= 10 * 1024 {
        format!("{:.1} GiB", v as f64 / 1024.0)
    } else {
        format!("{v} MiB")
    }
}

fn code_name(e: &Option<pb::Error>) -> Value {
    match e {
        Some(e) => json!({
            "code": pb::error::Code::try_from(e.code).map(|c| c.as_str_name()).unwrap_or("UNKNOWN"),
            "message": e.message,
        }),
        None => Value::Null,
    }
}

/// The event's kind word (the last subject token).
pub fn kind_of(ev: &pb::Event) -> &'static str {
    match ev.body {
        Some(Body::Heartbeat(_)) => "heartbeat",
        Some(Body::Inventory(_)) => "inventory",
        Some(Body::Progress(_)) => "progress",
        Some(Body::Result(_)) => "result",
        Some(Body::Checks(_)) => "checks",
        Some(Body::Job(_)) => "job",
        Some(Body::Error(_)) => "error",
        None => "empty",
    }
}

/// One event as a JSON object (a line of `events --output json`).
pub fn event_json(seq: u64, ev: &pb::Event) -> Value {
    let body = match &ev.body {
        Some(Body::Heartbeat(h)) => json!({
            "boot_id": h.boot_id, "agent_version": h.agent_version,
            "address": h.address, "inventory_generation": h.inventory_generation,
            "vcpus": h.capacity.map(|c| c.vcpus), "memory_mib": h.capacity.map(|c| c.memory_mib),
        }),
        Some(Body::Inventory(i)) => json!({
            "generation": i.generation,
            "domains": i.domains.iter().map(|d| {
                let vm = nodemaint_proto::model::Vm::from(d);
                serde_json::to_value(vm).unwrap_or(Value::Null)
            }).collect::<Vec<_>>(),
        }),
        Some(Body::Progress(p)) => json!({
            "command_id": p.command_id, "vm": p.vm, "step": p.step, "percent": p.percent,
            "bytes_processed": p.bytes_processed, "bytes_remaining": p.bytes_remaining,
            "message": p.message, "pass": p.pass, "dirty_rate_bps": p.dirty_rate_bps,
            "bandwidth_bps": p.bandwidth_bps, "eta_s": p.eta_s, "downtime_ms": p.downtime_ms,
        }),
        Some(Body::Result(r)) => json!({
            "command_id": r.command_id, "ok": r.ok, "vm": r.vm, "vm_node": r.vm_node,
            "message": r.message, "error": code_name(&r.error), "duplicate": r.duplicate,
            "duration_ms": r.duration_ms, "migrated_bytes": r.migrated_bytes,
            "downtime_ms": r.downtime_ms,
        }),
        Some(Body::Checks(c)) => json!({
            "all_ok": c.all_ok,
            "services": c.services.iter().map(|s| json!({
                "check": s.check, "service": s.service, "ok": s.ok, "state": s.state, "detail": s.detail,
            })).collect::<Vec<_>>(),
        }),
        Some(Body::Job(j)) => json!({
            "job_id": j.job_id, "kind": j.kind, "state": j.state, "message": j.message,
            "vm": j.vm, "from": j.from_node, "to": j.to_node, "percent": j.percent,
            "terminal": j.terminal, "ok": j.ok,
        }),
        Some(Body::Error(e)) => json!({ "subject": e.subject, "error": code_name(&e.error) }),
        None => Value::Null,
    };
    json!({
        "seq": seq,
        "ts": fmt_ts(ev.ts_ms),
        "ts_ms": ev.ts_ms,
        "node": ev.node,
        "kind": kind_of(ev),
        "op_id": ev.op_id,
        "body": body,
    })
}

/// One event as a human line.
pub fn event_line(ev: &pb::Event) -> String {
    let what = match &ev.body {
        Some(Body::Heartbeat(h)) => format!(
            "boot={} agent={} gen={}",
            short(&h.boot_id),
            h.agent_version,
            h.inventory_generation
        ),
        Some(Body::Inventory(i)) => {
            let running = i
                .domains
                .iter()
                .filter(|d| d.state() == pb::VmState::Running)
                .count();
            format!("{} domains ({} running)", i.domains.len(), running)
        }
        Some(Body::Progress(p)) if p.step == "escalating" => format!("{} {}", p.vm, p.message),
        Some(Body::Progress(p)) => format!(
            "{} {} {:.0}% {}",
            p.vm,
            p.step,
            p.percent,
            migration_note(p)
        )
        .trim_end()
        .to_string(),
        Some(Body::Result(r)) if r.ok => format!("ok: {}", r.message),
        Some(Body::Result(r)) => format!(
            "FAILED: {}",
            r.error
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_else(|| r.message.clone())
        ),
        Some(Body::Checks(c)) => {
            format!("checks all_ok={} ({} services)", c.all_ok, c.services.len())
        }
        Some(Body::Job(j)) => format!("job {} {} {}", short(&j.job_id), j.state, j.message),
        Some(Body::Error(e)) => format!(
            "error on {}: {}",
            e.subject,
            e.error.as_ref().map(|e| e.to_string()).unwrap_or_default()
        ),
        None => String::new(),
    };
    format!(
        "{} {:<12} {:<9} {}",
        fmt_ts(ev.ts_ms),
        ev.node,
        kind_of(ev),
        what
    )
}

/// The first 8 characters of an id (ids come from the wire: not
/// necessarily ASCII, so cut at a character boundary).
pub fn short(id: &str) -> &str {
    id.char_indices().nth(8).map_or(id, |(i, _)| &id[..i])
}

/// `[#####-----]  52%` progress bar.
pub fn bar(percent: f64) -> String {
    let p = percent.clamp(0.0, 100.0);
    let filled = (p / 5.0).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        "-".repeat(20 - filled),
        p
    )
}

/// A live migration's pass and expected end, from its progress event:
/// "pass 3, ETA 4s", or why there is no ETA ("not converging: …"); empty
/// when the event carries neither.
pub fn migration_note(p: &pb::Progress) -> String {
    if p.pass == 0 {
        return String::new();
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    match p.eta_s {
        Some(s) => format!("pass {}, ETA {}s", p.pass, s.ceil() as u64),
        None => format!(
            "pass {}, not converging: guest dirties {:.0} MiB/s, link copies {:.0} MiB/s",
            p.pass,
            mib(p.dirty_rate_bps),
            mib(p.bandwidth_bps)
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_migrations_note_gives_its_eta_or_why_it_has_none() {
        let mut p = pb::Progress {
            step: "migrating".into(),
            ..Default::default()
        };
        assert_eq!(migration_note(&p), "", "not a live migration sample");
        p.pass = 3;
        p.eta_s = Some(3.2);
        assert_eq!(migration_note(&p), "pass 3, ETA 4s");
        p.eta_s = None;
        p.dirty_rate_bps = 40 << 20;
        p.bandwidth_bps = 16 << 20;
        assert_eq!(
            migration_note(&p),
            "pass 3, not converging: guest dirties 40 MiB/s, link copies 16 MiB/s"
        );
    }

    use super::*;

    #[test]
    fn timestamps_are_utc_civil() {
        assert_eq!(fmt_ts(0), "-");
        assert_eq!(fmt_ts(1_000), "1970-01-01 00:00:01Z");
        assert_eq!(fmt_ts(1_795_629_721_000), "2026-11-25 18:02:01Z");
        assert_eq!(fmt_ts(951_782_400_000), "2000-02-29 00:00:00Z");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "BB"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(t, "A     BB\nlong  x\n");
        // Widths count characters: a multi-byte cell pads like any other.
        let t = table(&["A", "B"], &[vec!["é".into(), "x".into()]]);
        assert_eq!(t, "A  B\né  x\n");
    }

    #[test]
    fn headers_can_go_and_columns_be_chosen() {
        let headers = ["NODE", "VMS RUN/TOTAL", "LAST SEEN"];
        let rows = vec![
            vec!["node1".into(), "3/4".into(), "2s ago".into()],
            vec!["n2".into(), "10/10".into(), "never".into()],
        ];
        let all = select_columns(&headers, &[]).unwrap();
        assert_eq!(
            table_of(&headers, &rows, &all, false),
            "node1  3/4    2s ago\nn2     10/10  never\n"
        );
        let cols = select_columns(&headers, &["last_seen".into(), "NODE".into()]).unwrap();
        assert_eq!(cols, vec![2, 0]);
        assert_eq!(
            table_of(&headers, &rows, &cols, true),
            "LAST SEEN  NODE\n2s ago     node1\nnever      n2\n"
        );
        assert_eq!(
            select_columns(&headers, &["vms-run/total".into()]),
            Ok(vec![1])
        );
        let e = select_columns(&headers, &["memory".into()]).unwrap_err();
        assert!(
            e.contains("no column \"memory\"") && e.contains("node,vms_run_total,last_seen"),
            "{e}"
        );
    }

    #[test]
    fn bar_and_ago() {
        assert_eq!(bar(50.0), "[##########----------]  50%");
        assert_eq!(short("0123456789"), "01234567");
        // Found by `bench fuzz`: a multi-byte character across byte 8.
        assert_eq!(short("abcdefgé-rest"), "abcdefgé");
        assert_eq!(short("日本"), "日本");
        assert_eq!(ago(0, 5), "never");
        assert_eq!(ago(1_000, 61_000), "60s ago");
        assert_eq!(ago(1_000, 601_000), "10m ago");
    }
}
