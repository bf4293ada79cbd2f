//! `bench latency` (issue 7): command -> ack through the coordinator and NATS.

use crate::*;

/// One operation, ms from the API request (floor: its own round trip).
#[derive(Clone, Copy)]
pub struct LatSample {
    pub floor: f64,
    /// One JetStream write (publish to a file stream, await its ack): the
    /// unit the durable command path is made of.
    pub js_write: f64,
    pub accept: f64,
    /// The agent command seen on the bus (accept + the executor's journaling).
    pub command: f64,
    /// The agent's CommandResult event received: the command→ack latency.
    pub result: f64,
    pub job_end: f64,
    /// The agent's own command duration (execute only).
    pub agent: f64,
}

pub struct LatencyResult {
    pub agents: usize,
    pub register_s: f64,
    pub samples: Vec<LatSample>,
    pub refused_retries: usize,
}

impl LatencyResult {
    pub fn col(&self, f: impl Fn(&LatSample) -> f64) -> Vec<f64> {
        self.samples
            .iter()
            .map(f)
            .filter(|v| v.is_finite())
            .collect()
    }
}

pub async fn latency_at(agents: usize, ops: usize) -> Result<LatencyResult> {
    let (mut stack, api) = SimStack::start(|_| {}).await?;
    log(format!("latency: starting sim-fleet with {agents} agents"));
    let t0 = Instant::now();
    stack.start_fleet(&[
        "--nodes".into(),
        agents.to_string(),
        "--vms-per-node".into(),
        "1".into(),
        "--heartbeat-interval-ms".into(),
        "5000".into(),
    ]);
    api.wait_view(
        &format!("{agents} agents to register"),
        Duration::from_secs(300),
        |n, _| n.len() == agents && n.iter().all(|x| x.reachable && x.vms_total >= 1),
    )
    .await?;
    let register_s = secs(t0.elapsed());
    log(format!(
        "latency: {agents} agents registered in {register_s:.1} s"
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The floor: a trivial responder on its own connection, same server.
    let responder = async_nats::connect(&stack.nats.url).await?;
    let mut echo = responder.subscribe("bench.echo").await?;
    responder.flush().await?;
    let r2 = responder.clone();
    let echo_task = tokio::spawn(async move {
        while let Some(m) = echo.next().await {
            if let Some(reply) = m.reply {
                let _ = r2.publish(reply, m.payload).await;
            }
        }
    });
    let rec = Recorder::start(
        &api.nats,
        &[
            api.s.events_filter(None, Some(EventKind::Result)),
            api.s
                .events_filter(Some(COORDINATOR_NODE), Some(EventKind::Job)),
            api.s.agent_cmd_all(),
        ],
    )
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; 64]);
    // The durable path's unit: a write to a file-backed stream on the same
    // server, acked (as the job record, the claim and the events are).
    let js = async_nats::jetstream::new(api.nats.clone());
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_WRITES".into(),
        subjects: vec!["bench.writes".into()],
        max_messages: 10_000,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow!("bench stream: {e}"))?;
    let mut rng = Rng::new();
    let mut on = vec![true; agents];
    let mut last_touched: Vec<Option<usize>> = vec![None; agents];
    let cool = 20.min(agents / 2);
    let mut samples = Vec::new();
    let mut retries = 0;
    let warmup = 10;
    let mut i = 0;
    while i < ops + warmup {
        let counted = i >= warmup;
        // Floor sample.
        let t = Instant::now();
        api.nats.request("bench.echo", payload.clone()).await?;
        let f = ms(t.elapsed());
        let t = Instant::now();
        js.publish("bench.writes", payload.clone())
            .await
            .map_err(|e| anyhow!("bench write: {e}"))?
            .await
            .map_err(|e| anyhow!("bench write: {e}"))?;
        let w = ms(t.elapsed());
        // A VM of a random node not touched in the last `cool` operations.
        let n = loop {
            let n = rng.below(agents);
            let cooled = match last_touched[n] {
                None => true,
                Some(l) => i - l >= cool,
            };
            if cooled {
                break n;
            }
        };
        let vm = format!("sim{:04}-vm0", n + 1);
        let kind = if on[n] {
            Req::StopVm(pb::VmAction {
                vm: vm.clone(),
                graceful_timeout_s: 0,
            })
        } else {
            Req::StartVm(pb::VmAction {
                vm: vm.clone(),
                graceful_timeout_s: 0,
            })
        };
        let t0 = Instant::now();
        let reply = api.call(kind).await?;
        let t_acc = t0.elapsed();
        let op = match reply {
            Ok(Reply::Accepted(acc)) => acc.op_id,
            Ok(other) => bail!("unexpected reply {other:?}"),
            Err(e) if e.code == pb::error::Code::WrongState as i32 => {
                // The coordinator's view lags the last command; not a sample.
                retries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => bail!("{vm}: {e}"),
        };
        let res = rec
            .wait(|e| is_result(e, &op), Duration::from_secs(30))
            .await
            .ok_or_else(|| anyhow!("no result for {vm} ({op}) within 30 s"))?;
        let end = rec
            .wait(|e| is_terminal_job(e, &op), Duration::from_secs(30))
            .await
            .ok_or_else(|| anyhow!("no job end for {vm} ({op}) within 30 s"))?;
        let cmd = rec.find(|e| is_command(e, &op));
        let mut agent_ms = f64::NAN;
        if let Some(Body::Result(r)) = &res.ev.body {
            if !r.ok {
                bail!("{vm}: command failed: {r:?}");
            }
            agent_ms = r.duration_ms as f64;
        }
        if counted {
            samples.push(LatSample {
                floor: f,
                js_write: w,
                accept: ms(t_acc),
                command: cmd.map_or(f64::NAN, |c| ms(c.at.saturating_duration_since(t0))),
                result: ms(res.at.saturating_duration_since(t0)),
                job_end: ms(end.at.saturating_duration_since(t0)),
                agent: agent_ms,
            });
        }
        on[n] = !on[n];
        last_touched[n] = Some(i);
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    echo_task.abort();
    if stack.sim_log().contains("sim-fleet: agent") {
        log("WARNING: some simulated agents reported errors (see sim-fleet log)");
    }
    Ok(LatencyResult {
        agents,
        register_s,
        samples,
        refused_retries: retries,
    })
}

pub async fn bench_latency(a: &Args) -> Result<Report> {
    a.known(&["agents", "ops"])?;
    let agents: Vec<usize> = a
        .get("agents", "200,1000".to_string())?
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<std::result::Result<_, _>>()
        .context("--agents: comma-separated numbers")?;
    let ops: usize = a.get("ops", 200)?;
    let mut res = Vec::new();
    for n in agents {
        res.push(latency_at(n, ops).await?);
    }
    let mut md = format!(
        "### `bench latency` (issues 7 and 17): VM stop/start through the API, {ops} sequential operations per fleet size, one nats-server, sim-fleet agents (heartbeat 5 s)\n\n\
         *floor* = raw NATS request/reply to a trivial responder on the same server (interleaved with the operations); \
         *one JetStream write* = a publish to a file-backed stream on the same server with its ack awaited (also interleaved): the unit of the durable path; \
         *accept* = API request → `Accepted` reply; *ack* = API request → the agent's `CommandResult` event received by the client (the command→ack latency); \
         *job end* = → the job's terminal event.\n\n"
    );
    let p = |v: Vec<f64>| format!("{:.1} / {:.1}", median(&v), pct(&v, 99.0));
    let p2 = |v: Vec<f64>| format!("{:.2} / {:.2}", median(&v), pct(&v, 99.0));
    let rows: Vec<Vec<String>> = res
        .iter()
        .map(|r| {
            let floor = r.col(|s| s.floor);
            vec![
                r.agents.to_string(),
                format!("{:.2} / {:.2}", median(&floor), pct(&floor, 99.0)),
                p2(r.col(|s| s.js_write)),
                p(r.col(|s| s.accept)),
                p(r.col(|s| s.command)),
                format!("**{}**", p(r.col(|s| s.result))),
                p(r.col(|s| s.job_end)),
                format!("{:.1}×", median(&r.col(|s| s.result)) / median(&floor)),
            ]
        })
        .collect();
    md.push_str(&table(
        &[
            "agents",
            "floor p50 / p99 ms",
            "one JetStream write p50 / p99 ms",
            "accept p50 / p99 ms",
            "command on the bus p50 / p99 ms",
            "ack p50 / p99 ms",
            "job end p50 / p99 ms",
            "ack p50 ÷ floor p50",
        ],
        &rows,
    ));
    md.push_str(
        "
Where the ack time goes (per-operation segments, p50 / p99 ms):

",
    );
    let seg_rows: Vec<Vec<String>> = res
        .iter()
        .map(|r| {
            vec![
                r.agents.to_string(),
                p(r.col(|s| s.accept)),
                p(r.col(|s| s.command - s.accept)),
                p(r.col(|s| s.result - s.command)),
                p(r.col(|s| s.agent)),
                p(r.col(|s| s.job_end - s.result)),
            ]
        })
        .collect();
    md.push_str(&table(
        &[
            "agents",
            "request → Accepted (API: VM lock, job record with the command journaled; stream info alongside)",
            "Accepted → command on the bus (executor: publish, no journal write of its own)",
            "command → result event (agent: claim KV, execute; record, inventory and result sent together)",
            "of which the agent's execute",
            "result → job end event",
        ],
        &seg_rows,
    ));
    for r in &res {
        let ack = r.col(|s| s.result);
        let floor = r.col(|s| s.floor);
        let p99 = pct(&ack, 99.0);
        md.push_str(&format!(
            "\n{} agents: registered in {:.1} s; ack p99 {:.1} ms (goal < 25 ms at 1,000, issue 17: {}); ack p50 {:.1}× the floor p50 (goal ≤ 4×: {}); mean ack {:.1} ms, max {:.1} ms; {} operations retried after a WRONG_STATE refusal (view lag; not counted).\n",
            r.agents,
            r.register_s,
            p99,
            if p99 < 25.0 { "met" } else { "missed" },
            median(&ack) / median(&floor),
            if median(&ack) <= 4.0 * median(&floor) { "met" } else { "missed" },
            mean(&ack),
            max(&ack),
            r.refused_retries,
        ));
        let w = median(&r.col(|s| s.js_write));
        md.push_str(&format!(
            "The durable minimum (the VM lock, the job record with its command, the agent's claim: three JetStream writes in a row, plus the command's and the result's way through the server): about {:.1} ms = {:.1}× the floor at this run's JetStream write p50 of {w:.2} ms; the ack p50 is {:.1} JetStream writes.\n",
            3.0 * w,
            3.0 * w / median(&floor),
            median(&ack) / w,
        ));
    }
    let stat = |v: &[f64]| json!({"p50": median(v), "p90": pct(v, 90.0), "p99": pct(v, 99.0), "mean": mean(v), "max": max(v), "n": v.len()});
    Ok(Report {
        markdown: md,
        json: json!({
            "benchmark": "latency",
            "machine": machine(),
            "ops": ops,
            "fleets": res.iter().map(|r| json!({
                "agents": r.agents,
                "register_s": r.register_s,
                "floor_ms": stat(&r.col(|s| s.floor)),
                "js_write_ms": stat(&r.col(|s| s.js_write)),
                "accept_ms": stat(&r.col(|s| s.accept)),
                "command_ms": stat(&r.col(|s| s.command)),
                "ack_ms": stat(&r.col(|s| s.result)),
                "job_end_ms": stat(&r.col(|s| s.job_end)),
                "agent_execute_ms": stat(&r.col(|s| s.agent)),
                "ack_p50_over_floor_p50": median(&r.col(|s| s.result)) / median(&r.col(|s| s.floor)),
                "refused_retries": r.refused_retries,
            })).collect::<Vec<_>>(),
            "goals": {"ack_p99_ms_at_1000": 25, "ack_p50_over_floor": 4},
        }),
    })
}
