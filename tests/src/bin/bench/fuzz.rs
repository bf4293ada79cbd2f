//! `bench fuzz`: every decoder of wire and file input on generated inputs.

use crate::*;

/// One caught panic: its message (with location) and the input.
pub struct Panicked {
    pub message: String,
    pub input: String,
}

/// Per decoder: (name, cases, ok, err, panics, first panics, decode time, total time).
pub struct FuzzRow {
    pub name: &'static str,
    pub cases: u64,
    pub ok: u64,
    pub err: u64,
    pub panics: u64,
    pub examples: Vec<Panicked>,
    pub decode: Duration,
    pub total: Duration,
}

pub async fn bench_fuzz(a: &Args) -> Result<Report> {
    a.known(&["cases", "seed", "decoder"])?;
    let cases: u64 = a.get("cases", 100_000)?;
    let seed: u64 = a.get("seed", 1)?;
    let filter: Option<String> = a.opt("decoder")?;
    let rows =
        tokio::task::spawn_blocking(move || fuzz_all(cases, seed, filter.as_deref())).await??;
    let panics_total: u64 = rows.iter().map(|r| r.panics).sum();
    let mut md = format!(
        "## Decoders on arbitrary input (bench fuzz)\n\n{cases} generated inputs per decoder \
         (seed {seed}): random bytes, structure-aware (protobuf wire with random fields and \
         nesting; TOML/JSON from the format's keys and extreme values; check output from its \
         tokens) and mutated valid seeds. A panic is caught and counted; there must be none.\n\n"
    );
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.to_string(),
                r.cases.to_string(),
                r.ok.to_string(),
                r.err.to_string(),
                r.panics.to_string(),
                format!("{:.1}", secs(r.total)),
                format!("{:.1}", secs(r.decode) * 1e6 / r.cases.max(1) as f64),
            ]
        })
        .collect();
    md.push_str(&table(
        &[
            "decoder",
            "cases",
            "Ok",
            "Err",
            "panics",
            "time (s)",
            "decode µs/case",
        ],
        &table_rows,
    ));
    md.push_str(&format!("\npanics in total: {panics_total}\n"));
    for r in rows.iter().filter(|r| r.panics > 0) {
        md.push_str(&format!(
            "\n### {}: {} panics; first ones\n",
            r.name, r.panics
        ));
        for p in &r.examples {
            md.push_str(&format!("- {}\n  input: {}\n", p.message, p.input));
        }
    }
    let json_rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "decoder": r.name, "cases": r.cases, "ok": r.ok, "err": r.err,
                "panics": r.panics, "time_s": secs(r.total), "decode_s": secs(r.decode),
                "panic_examples": r.examples.iter()
                    .map(|p| json!({"message": p.message, "input": p.input}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Report {
        markdown: md,
        json: json!({
            "bench": "fuzz", "cases_per_decoder": cases, "seed": seed,
            "decoders": json_rows, "panics_total": panics_total, "machine": machine(),
        }),
    })
}

pub fn fuzz_all(cases: u64, seed: u64, filter: Option<&str>) -> Result<Vec<FuzzRow>> {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    use std::cell::RefCell;

    thread_local! {
        static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
    }
    // Quiet, but remember the message and location of the last panic.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        LAST_PANIC.with(|p| *p.borrow_mut() = info.to_string());
    }));
    let mut rows = Vec::new();
    for dec in nodemaint_tests::fuzz::decoders() {
        if filter.is_some_and(|f| !dec.name.contains(f)) {
            continue;
        }
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &key),
        );
        let strategy = (dec.input)();
        let mut row = FuzzRow {
            name: dec.name,
            cases,
            ok: 0,
            err: 0,
            panics: 0,
            examples: Vec::new(),
            decode: Duration::ZERO,
            total: Duration::ZERO,
        };
        let t0 = Instant::now();
        for _ in 0..cases {
            let input = strategy
                .new_tree(&mut runner)
                .map_err(|e| anyhow!("{}: cannot generate an input: {e}", dec.name))?
                .current();
            let t = Instant::now();
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (dec.run)(&input)));
            row.decode += t.elapsed();
            match res {
                Ok(Ok(())) => row.ok += 1,
                Ok(Err(_)) => row.err += 1,
                Err(_) => {
                    row.panics += 1;
                    if row.examples.len() < 3 {
                        row.examples.push(Panicked {
                            message: LAST_PANIC.with(|p| p.borrow().clone()),
                            input: nodemaint_tests::fuzz::show_input(&input),
                        });
                    }
                }
            }
        }
        row.total = t0.elapsed();
        log(format!(
            "fuzz {}: {} cases, {} ok, {} err, {} panics, {:.1} s",
            row.name,
            row.cases,
            row.ok,
            row.err,
            row.panics,
            secs(row.total)
        ));
        rows.push(row);
    }
    std::panic::set_hook(default_hook);
    if rows.is_empty() {
        bail!("no decoder matches {:?}", filter.unwrap_or(""));
    }
    Ok(rows)
}
