//! Every decoder of wire and file input, as a function from bytes to
//! "decoded" or "a typed error", with proptest strategies that produce
//! arbitrary and structure-aware inputs for it.
//!
//! A decoder here is the real code path from raw input to what the product
//! does with it: the protobuf decode and the pure processing that follows
//! (a heartbeat applied to a node record, an API request's method), a JSON
//! record from a KV bucket and what the coordinator derives from it, a
//! config file parsed and validated, a service check's output parsed.
//! Used by `tests/tests/decoders.rs` (a few hundred cases each) and by
//! `bench fuzz` (100,000+ cases each, panics caught and reported).
//!
//! Inputs mix four sources: random bytes; a generator aware of the format
//! (well-formed protobuf wire with random fields and nesting, TOML/JSON
//! built from the format's keys and extreme values, check output from its
//! tokens); valid seeds mutated (truncated, bytes flipped, spliced, lines
//! replaced, numbers made extreme); and the seeds themselves.

use nodemaint_agent::checks;
use nodemaint_agent::config::AgentConfig;
use nodemaint_agent::hypervisor::metadata;
use nodemaint_coordinator::config::CoordinatorConfig;
use nodemaint_coordinator::jobs::{self, Job};
use nodemaint_planner as planner;
use nodemaint_proto::model::NodeRecord;
use nodemaint_proto::pb;
use nodemaint_proto::Message as _;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use std::path::Path;

/// One decoder: a name, the code path, and the inputs to feed it.
pub struct Decoder {
    pub name: &'static str,
    /// Ok when the input was accepted, Err with the typed error's message.
    pub run: fn(&[u8]) -> Result<(), String>,
    pub input: fn() -> BoxedStrategy<Vec<u8>>,
    /// A valid input that must be accepted: keeps the seeds in step with
    /// the formats (a seed the decoder rejects would make the mutations
    /// explore little but the error path).
    pub valid: fn() -> Vec<u8>,
}

/// Every decoder, in report order.
pub fn decoders() -> Vec<Decoder> {
    vec![
        Decoder {
            name: "pb AgentCommand",
            valid: || agent_command_seeds()[0].clone(),
            run: agent_command,
            input: || proto_input(agent_command_seeds()),
        },
        Decoder {
            name: "pb Event",
            valid: || event_seeds()[0].clone(),
            run: event,
            input: || proto_input(event_seeds()),
        },
        Decoder {
            name: "pb ApiRequest",
            valid: || api_request_seeds()[0].clone(),
            run: api_request,
            input: || proto_input(api_request_seeds()),
        },
        Decoder {
            name: "pb ApiReply",
            valid: || api_reply_seeds()[1].clone(),
            run: api_reply,
            input: || proto_input(api_reply_seeds()),
        },
        Decoder {
            name: "pb CommandResult",
            valid: || command_result_seed().encode_to_vec(),
            run: command_result,
            input: || proto_input(vec![command_result_seed().encode_to_vec()]),
        },
        Decoder {
            name: "job JSON (KV)",
            valid: || job_seed().into_bytes(),
            run: job_json,
            input: || json_input(vec![job_seed()], JOB_KEYS),
        },
        Decoder {
            name: "node record JSON (KV)",
            valid: || node_record_seed().into_bytes(),
            run: node_record_json,
            input: || json_input(vec![node_record_seed()], NODE_KEYS),
        },
        Decoder {
            name: "lease JSON (KV)",
            valid: || LEASE.as_bytes().to_vec(),
            run: lease_json,
            input: || json_input(vec![LEASE.into()], &["holder", "ttl_ms"]),
        },
        Decoder {
            name: "fleet file JSON",
            valid: || fleet_seed().into_bytes(),
            run: fleet_json,
            input: || json_input(vec![fleet_seed()], FLEET_KEYS),
        },
        Decoder {
            name: "agent TOML",
            valid: || AGENT_TOML.as_bytes().to_vec(),
            run: agent_toml,
            input: || toml_input(vec![AGENT_TOML.into(), rendered_agent()], agent_keys()),
        },
        Decoder {
            name: "coordinator TOML",
            valid: || COORDINATOR_TOML.as_bytes().to_vec(),
            run: coordinator_toml,
            input: || {
                toml_input(
                    vec![COORDINATOR_TOML.into(), rendered_coordinator()],
                    coordinator_keys(),
                )
            },
        },
        Decoder {
            name: "ovs monitor services",
            valid: || OVS_OUTPUT.as_bytes().to_vec(),
            run: ovs_services,
            input: || text_input(vec![OVS_OUTPUT.into()], OVS_TOKENS),
        },
        Decoder {
            name: "ays status",
            valid: || AYS_OUTPUT.as_bytes().to_vec(),
            run: ays_status,
            input: || text_input(vec![AYS_OUTPUT.into()], AYS_TOKENS),
        },
        Decoder {
            name: "systemctl is-active",
            valid: || b"active\n".to_vec(),
            run: systemd_is_active,
            input: || {
                text_input(
                    vec!["active\n".into(), "inactive\n".into(), "\n".into()],
                    SYSTEMD_TOKENS,
                )
            },
        },
        Decoder {
            name: "domain metadata XML",
            valid: || metadata_seeds()[0].clone().into_bytes(),
            run: domain_metadata,
            input: || text_input(metadata_seeds(), XML_TOKENS),
        },
        Decoder {
            name: "NATS subjects",
            valid: || subject_seeds()[0].clone().into_bytes(),
            run: subjects,
            input: || text_input(subject_seeds(), SUBJECT_TOKENS),
        },
        Decoder {
            name: "NATS credentials file",
            valid: || CREDS.as_bytes().to_vec(),
            run: credentials_file,
            input: || {
                text_input(
                    vec![CREDS.into(), "user = op\nnkey_seed = SUAB3XAMPLE\n".into()],
                    CREDS_TOKENS,
                )
            },
        },
        Decoder {
            name: "portal Cookie header",
            valid: || COOKIE.as_bytes().to_vec(),
            run: cookie_header,
            input: || text_input(vec![COOKIE.into()], COOKIE_TOKENS),
        },
    ]
}

// ---------------------------------------------------------------------------
// The code paths

fn utf8(b: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|e| format!("not UTF-8: {e}"))
}

fn agent_command(b: &[u8]) -> Result<(), String> {
    let cmd: pb::AgentCommand = nodemaint_proto::decode(b).map_err(|e| e.to_string())?;
    // The agent's dispatch checks, then what execution reads.
    if cmd.id.is_empty() || cmd.kind.is_none() {
        return Err("command without id or kind".into());
    }
    nodemaint_proto::subjects::validate_token(&cmd.id).map_err(|e| e.to_string())?;
    let _ = nodemaint_agent::metrics::action(cmd.kind.as_ref());
    // `vm create` without XML: the agent renders its built-in guest.
    if let Some(pb::agent_command::Kind::Define(d)) = &cmd.kind {
        use nodemaint_agent::hypervisor::template;
        let spec = template::Spec {
            name: d.name.clone(),
            memory_mib: d.memory_mib,
            vcpus: d.vcpus.max(1),
            meta: metadata::VmMetadata {
                kind: d.kind().into(),
                cloudspace: (!d.cloudspace.is_empty()).then(|| d.cloudspace.clone()),
                anti_affinity: None,
                no_live_migration: false,
            },
        };
        let xml = template::render(&spec, "test", None);
        let meta = xml
            .split_once("<metadata>")
            .map(|(_, m)| metadata::parse(m))
            .ok_or("no metadata element")?;
        assert_eq!(meta, spec.meta, "the rendered guest carries its metadata");
    }
    // Journaled as hex by the coordinator, read back after a restart.
    let back = jobs::unhex(&jobs::hex(&cmd.encode_to_vec())).ok_or("hex")?;
    let again: pb::AgentCommand = nodemaint_proto::decode(&back).map_err(|e| e.to_string())?;
    assert_eq!(again, cmd, "journal round trip");
    Ok(())
}

fn event(b: &[u8]) -> Result<(), String> {
    let ev: pb::Event = nodemaint_proto::decode(b).map_err(|e| e.to_string())?;
    use nodemaint_coordinator::{cli::output, registry};
    use pb::event::Body;
    // How `coordinator events`/`job watch` show any event of the stream.
    let _ = output::event_line(&ev);
    let _ = output::event_json(1, &ev);
    if let Some(Body::Progress(p)) = &ev.body {
        let _ = output::bar(p.percent);
    }
    // The coordinator only applies events of a valid node.
    nodemaint_proto::subjects::validate_token(&ev.node).map_err(|e| e.to_string())?;
    let now = nodemaint_proto::now_ms();
    match &ev.body {
        Some(Body::Heartbeat(hb)) => {
            let stored = registry::apply_heartbeat(None, &ev.node, hb, ev.ts_ms);
            registry::heartbeat_needs_write(Some(&stored), hb);
            let rec = registry::apply_heartbeat(Some(stored), &ev.node, hb, now);
            let _ = rec.summary(now);
            let _ = nodemaint_coordinator::fleet::snapshot(&[rec], now);
        }
        Some(Body::Inventory(inv)) => {
            if let Some(rec) = registry::apply_inventory(None, &ev.node, inv) {
                let _ = rec.summary(now);
                let _ = nodemaint_coordinator::fleet::snapshot(&[rec], now);
            }
        }
        Some(Body::Progress(_)) => nodemaint_coordinator::metrics::progress(&ev),
        Some(Body::Result(r)) => {
            let _ = r.error.as_ref().map(|e| e.to_string());
        }
        Some(Body::Checks(report)) => nodemaint_agent::metrics::checks_done("fuzz", report),
        Some(Body::Error(e)) => {
            let _ = e.error.as_ref().map(|e| e.to_string());
        }
        Some(Body::Job(_)) | None => {}
    }
    Ok(())
}

fn api_request(b: &[u8]) -> Result<(), String> {
    let req: pb::ApiRequest = nodemaint_proto::decode(b).map_err(|e| e.to_string())?;
    let method = req.method().ok_or("request without a method")?;
    let _ = (method, req.is_mutating());
    Ok(())
}

fn api_reply(b: &[u8]) -> Result<(), String> {
    let reply: pb::ApiReply = nodemaint_proto::decode(b).map_err(|e| e.to_string())?;
    use pb::api_reply::Kind;
    match reply.kind.ok_or("reply without a kind")? {
        Kind::Error(e) => return Err(e.to_string()),
        Kind::Nodes(l) => {
            let _: Vec<nodemaint_proto::model::NodeView> = l.nodes.iter().map(Into::into).collect();
        }
        Kind::Node(d) => {
            let _ = d
                .summary
                .as_ref()
                .map(nodemaint_proto::model::NodeView::from);
            let _: Vec<nodemaint_proto::model::Vm> = d.domains.iter().map(Into::into).collect();
        }
        Kind::Json(doc) => {
            serde_json::from_str::<serde_json::Value>(&doc).map_err(|e| e.to_string())?;
        }
        Kind::Job(j) => {
            nodemaint_proto::job::Job::try_from(j).map_err(|e| e.to_string())?;
        }
        Kind::Jobs(l) => {
            for j in l.jobs {
                nodemaint_proto::job::Job::try_from(j).map_err(|e| e.to_string())?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn command_result(b: &[u8]) -> Result<(), String> {
    let r: pb::CommandResult = nodemaint_proto::decode(b).map_err(|e| e.to_string())?;
    let _ = r.error.as_ref().map(|e| e.to_string());
    let _ = r.vm_state();
    Ok(())
}

fn job_json(b: &[u8]) -> Result<(), String> {
    let job: Job = serde_json::from_slice(b).map_err(|e| e.to_string())?;
    // What a resuming coordinator reads from a journal.
    for rec in &job.commands {
        let _ = jobs::journaled_command(&rec.payload);
    }
    let _ = job.spec.command(job.node.as_deref().unwrap_or_default());
    // A resumed drain reads its machine from the journal.
    if let Some(m) = job
        .engine
        .clone()
        .and_then(|v| serde_json::from_value::<nodemaint_coordinator::engine::drain::Drain>(v).ok())
    {
        let _ = m.report();
    }
    let _ = job.rolling.as_ref().map(|r| r.child_ids().count());
    let _ = job.kind();
    let _ = nodemaint_coordinator::logs::job_span(&job);
    // How the CLI and the portal show it.
    let _ = nodemaint_coordinator::cli::output::short(&job.id);
    let _ = nodemaint_coordinator::cli::output::fmt_ts(job.created_ms);
    let _ = nodemaint_coordinator::cli::output::ago(job.updated_ms, nodemaint_proto::now_ms());
    let _ = job.state.is_terminal();
    Ok(())
}

fn node_record_json(b: &[u8]) -> Result<(), String> {
    let rec: NodeRecord = serde_json::from_slice(b).map_err(|e| e.to_string())?;
    let now = nodemaint_proto::now_ms();
    let _ = rec.reachable_at(now);
    let _ = rec.summary(now);
    let _ = rec.memory_used_mib();
    for job in rec.stopped_by.values().chain(rec.current_job.iter()) {
        let _ = nodemaint_coordinator::cli::output::short(job);
    }
    let _ = nodemaint_coordinator::cli::output::ago(rec.last_seen_ms, now);
    // A heartbeat that changes nothing, so the liveness arithmetic runs.
    let hb = pb::Heartbeat {
        boot_id: rec.boot_id.clone(),
        agent_version: rec.agent_version.clone(),
        address: rec.address.clone(),
        libvirt_uri: rec.libvirt_uri.clone(),
        boot_time_ms: rec.boot_time_ms as u64,
        interval_ms: rec.heartbeat_interval_ms,
        capacity: None,
        inventory_generation: rec.inventory_generation,
        protocol_version: nodemaint_proto::PROTOCOL_VERSION,
    };
    let _ = nodemaint_coordinator::registry::heartbeat_needs_write(Some(&rec), &hb);
    let fleet = nodemaint_coordinator::fleet::snapshot(&[rec], now);
    let _ = planner::drain_report(&fleet, &fleet.nodes[0].name, &planner::Limits::default());
    Ok(())
}

fn lease_json(b: &[u8]) -> Result<(), String> {
    use nodemaint_coordinator::lease;
    let l: lease::Lease = serde_json::from_slice(b).map_err(|e| e.to_string())?;
    let seen = lease::Seen {
        revision: 1,
        for_ms: 10_000,
    };
    let _ = lease::decide(Some((l, 1)), "me", seen, 1_000);
    Ok(())
}

/// Fleets beyond this are parsed but not planned (the planner's own
/// benchmarks cover scale; here a bounded time per case matters).
const PLAN_MAX: usize = 64;

fn fleet_json(b: &[u8]) -> Result<(), String> {
    let text = utf8(b)?;
    let fleet: planner::Fleet = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if fleet.nodes.len() + fleet.vms.len() > PLAN_MAX {
        return Ok(());
    }
    // What `coordinator plan drain|rolling --fleet FILE` does with it.
    let limits = planner::Limits::default();
    let mut res = Ok(());
    if let Some(n) = fleet.nodes.first() {
        if let Err(e) = planner::drain_report(&fleet, &n.name, &limits) {
            res = Err(e.to_string());
        }
    }
    let names: Vec<String> = fleet.nodes.iter().map(|n| n.name.clone()).collect();
    if let Err(e) = planner::plan_rolling(&fleet, &names, 1) {
        res = Err(e.to_string());
    }
    if let Some(vm) = fleet.vms.first() {
        let _ = planner::feasible_destinations(&fleet, &vm.name, &[]);
    }
    res
}

fn agent_toml(b: &[u8]) -> Result<(), String> {
    let cfg =
        AgentConfig::from_toml(utf8(b)?, Path::new("agent.toml")).map_err(|e| e.to_string())?;
    cfg.validate().map_err(|e| e.to_string())?;
    let _ = cfg.migration_uri();
    Ok(())
}

fn coordinator_toml(b: &[u8]) -> Result<(), String> {
    let cfg = CoordinatorConfig::from_toml(utf8(b)?, Path::new("coordinator.toml"))
        .map_err(|e| e.to_string())?;
    let _ = cfg.authorize_change("alice", "enable node1");
    let _ = nodemaint_coordinator::fleet::limits(&cfg.limits, 3);
    Ok(())
}

/// Command output is read lossily (`String::from_utf8_lossy`), as the agent does.
fn output(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ovs_services(b: &[u8]) -> Result<(), String> {
    checks::parse_ovs_services(&output(b))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn ays_status(b: &[u8]) -> Result<(), String> {
    checks::parse_ays_status(&output(b))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn systemd_is_active(b: &[u8]) -> Result<(), String> {
    // The same bytes as stdout and as stderr.
    let text = output(b);
    let (ok, state, detail) =
        checks::parse_systemd_is_active("systemctl is-active x", Some(3), None, &text, &text);
    if ok {
        Ok(())
    } else {
        Err(format!("{state}: {detail}"))
    }
}

fn domain_metadata(b: &[u8]) -> Result<(), String> {
    let meta = metadata::parse(&output(b));
    // What the agent writes back on define must parse to the same values.
    let again = metadata::parse(&metadata::element(&meta));
    assert_eq!(again, meta, "metadata round trip");
    // Parsing never fails: a domain without our metadata is a plain user VM.
    if meta == metadata::VmMetadata::default() {
        Err("no nodemaint metadata: a user VM without cloudspace".into())
    } else {
        Ok(())
    }
}

fn subjects(b: &[u8]) -> Result<(), String> {
    let s = utf8(b)?;
    let subj = nodemaint_proto::subjects::Subjects::new("nodemaint");
    let ev = subj.parse_event(s);
    let api = subj.parse_api(s);
    let _ = nodemaint_proto::subjects::EventKind::parse(s);
    match (ev, api) {
        (None, None) => Err("neither an event nor an API subject".into()),
        _ => Ok(()),
    }
}

fn credentials_file(b: &[u8]) -> Result<(), String> {
    nodemaint_proto::bus::Credentials::parse(utf8(b)?).map(|_| ())
}

fn cookie_header(b: &[u8]) -> Result<(), String> {
    let v = axum::http::HeaderValue::from_bytes(b).map_err(|e| e.to_string())?;
    let mut h = axum::http::HeaderMap::new();
    h.insert(axum::http::header::COOKIE, v);
    nodemaint_coordinator::portal::auth::cookie_token(&h)
        .map(|_| ())
        .ok_or_else(|| "no session cookie".into())
}

// ---------------------------------------------------------------------------
// Protobuf inputs: random bytes, generated wire, mutated seeds.

/// One field of protobuf wire format.
#[derive(Clone, Debug)]
enum Field {
    Varint(u32, u64),
    Fixed64(u32, u64),
    Fixed32(u32, u32),
    Bytes(u32, Vec<u8>),
    Msg(u32, Vec<Field>),
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn encode_fields(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        let key = |tag: u32, wt: u64| (u64::from(tag) << 3) | wt;
        match f {
            Field::Varint(t, v) => {
                put_varint(&mut out, key(*t, 0));
                put_varint(&mut out, *v);
            }
            Field::Fixed64(t, v) => {
                put_varint(&mut out, key(*t, 1));
                out.extend(v.to_le_bytes());
            }
            Field::Fixed32(t, v) => {
                put_varint(&mut out, key(*t, 5));
                out.extend(v.to_le_bytes());
            }
            Field::Bytes(t, b) => {
                put_varint(&mut out, key(*t, 2));
                put_varint(&mut out, b.len() as u64);
                out.extend(b);
            }
            Field::Msg(t, fs) => {
                let inner = encode_fields(fs);
                put_varint(&mut out, key(*t, 2));
                put_varint(&mut out, inner.len() as u64);
                out.extend(inner);
            }
        }
    }
    out
}

/// Varints that hit edges: enum values out of range, negative int32/int64,
/// u32 overflow, the largest u64.
fn extreme_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        select(vec![
            0,
            1,
            2,
            7,
            99,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            i64::MAX as u64,
            u64::MAX,
            (-1i64) as u64,
        ]),
    ]
}

fn arb_string_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z0-9.*>_-]{0,12}".prop_map(String::into_bytes),
        ".{0,16}".prop_map(String::into_bytes),
        vec(any::<u8>(), 0..24),
    ]
}

/// Well-formed protobuf wire: random tags (1..40 covers every field and
/// oneof case of our messages), all wire types, nested messages.
fn arb_wire() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        (1u32..40, extreme_u64()).prop_map(|(t, v)| Field::Varint(t, v)),
        (1u32..40, any::<u64>()).prop_map(|(t, v)| Field::Fixed64(t, v)),
        (1u32..40, any::<u32>()).prop_map(|(t, v)| Field::Fixed32(t, v)),
        (1u32..40, arb_string_bytes()).prop_map(|(t, b)| Field::Bytes(t, b)),
    ];
    let field = leaf.prop_recursive(4, 48, 6, |inner| {
        (1u32..40, vec(inner, 0..6)).prop_map(|(t, fs)| Field::Msg(t, fs))
    });
    vec(field, 0..8).prop_map(|fs| encode_fields(&fs))
}

#[derive(Clone, Debug)]
enum ByteMut {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize),
    /// Overwrite with a long varint / length (0xff… continuation bytes).
    Overlong(usize, usize),
    /// Splice in a piece of another seed.
    Splice(usize, usize, usize),
}

fn arb_byte_mut() -> impl Strategy<Value = ByteMut> {
    prop_oneof![
        any::<usize>().prop_map(ByteMut::Truncate),
        (any::<usize>(), 1u8..=255).prop_map(|(p, x)| ByteMut::Flip(p, x)),
        (any::<usize>(), vec(any::<u8>(), 1..8)).prop_map(|(p, b)| ByteMut::Insert(p, b)),
        (any::<usize>(), 1usize..16).prop_map(|(p, n)| ByteMut::Delete(p, n)),
        (any::<usize>(), 1usize..32).prop_map(|(p, n)| ByteMut::Duplicate(p, n)),
        (any::<usize>(), 1usize..11).prop_map(|(p, n)| ByteMut::Overlong(p, n)),
        (any::<usize>(), any::<usize>(), 1usize..32).prop_map(|(p, q, n)| ByteMut::Splice(p, q, n)),
    ]
}

fn apply_byte_muts(seed: &[u8], other: &[u8], muts: &[ByteMut]) -> Vec<u8> {
    let mut b = seed.to_vec();
    let at = |p: usize, len: usize| if len == 0 { 0 } else { p % (len + 1) };
    for m in muts {
        match m {
            ByteMut::Truncate(p) => b.truncate(at(*p, b.len())),
            ByteMut::Flip(p, x) => {
                if !b.is_empty() {
                    let i = p % b.len();
                    b[i] ^= x;
                }
            }
            ByteMut::Insert(p, ins) => {
                let i = at(*p, b.len());
                b.splice(i..i, ins.iter().copied());
            }
            ByteMut::Delete(p, n) => {
                let i = at(*p, b.len());
                let j = (i + n).min(b.len());
                b.drain(i..j);
            }
            ByteMut::Duplicate(p, n) => {
                let i = at(*p, b.len());
                let j = (i + n).min(b.len());
                let piece = b[i..j].to_vec();
                b.splice(j..j, piece);
            }
            ByteMut::Overlong(p, n) => {
                let i = at(*p, b.len());
                b.splice(i..i, std::iter::repeat_n(0xff, *n));
            }
            ByteMut::Splice(p, q, n) => {
                let i = at(*p, b.len());
                let s = at(*q, other.len());
                let e = (s + n).min(other.len());
                b.splice(i..i, other[s..e].iter().copied());
            }
        }
    }
    b
}

fn mutated_seeds(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    let n = seeds.len();
    (0..n, 0..n, vec(arb_byte_mut(), 1..6))
        .prop_map(move |(i, j, muts)| apply_byte_muts(&seeds[i], &seeds[j], &muts))
        .boxed()
}

fn proto_input(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        2 => vec(any::<u8>(), 0..256),
        3 => arb_wire(),
        4 => mutated_seeds(seeds.clone()),
        1 => select(seeds),
    ]
    .boxed()
}

fn domain(name: &str, kind: pb::VmKind, state: pb::VmState) -> pb::Domain {
    pb::Domain {
        uuid: "6b3f1c0e-0000-4000-8000-000000000001".into(),
        name: name.into(),
        kind: kind as i32,
        cloudspace: "cs1".into(),
        anti_affinity: "grp".into(),
        state: state as i32,
        vcpus: 2,
        memory_mib: 2048,
        persistent: true,
        not_migratable: if kind == pb::VmKind::Vfw {
            "passthrough device".into()
        } else {
            String::new()
        },
    }
}

fn agent_command_seeds() -> Vec<Vec<u8>> {
    use pb::agent_command::Kind;
    let kinds = vec![
        Kind::Start(pb::StartVm { vm: "vm1".into() }),
        Kind::Stop(pb::StopVm {
            vm: "vm1".into(),
            graceful_timeout_s: 60,
        }),
        Kind::RefreshInventory(pb::RefreshInventory {}),
        Kind::Migrate(pb::MigrateVm {
            vm: "vm1".into(),
            dest_node: "node2".into(),
            dest_libvirt_uri: "qemu+tcp://10.0.0.2/system".into(),
            dest_migrate_uri: "tcp://10.0.0.2".into(),
            timeout_s: 600,
            max_speed_mibs: 100,
            progress_timeout_s: 150,
            converge: Some(pb::ConvergePolicy {
                downtime_steps_ms: vec![300, 600, 2000],
                passes_per_step: 2,
                auto_converge: true,
                post_copy: false,
            }),
        }),
        Kind::Define(pb::DefineVm {
            xml: "<domain type='kvm'><name>vm1</name></domain>".into(),
            start: true,
            name: "vm1".into(),
            memory_mib: 512,
            vcpus: 1,
            kind: pb::VmKind::Vfw as i32,
            cloudspace: "cs1".into(),
        }),
        Kind::RunChecks(pb::RunChecks { start_failed: true }),
        Kind::RunHook(pb::RunHook {
            name: "reboot".into(),
            timeout_s: 900,
        }),
        Kind::CancelMigration(pb::CancelMigration {
            vm: "vm1".into(),
            reason: "job aborted".into(),
        }),
        Kind::ProbeLibvirt(pb::ProbeLibvirt {
            uris: vec![
                "qemu+tcp://10.0.0.2/system".into(),
                "test:///default".into(),
            ],
        }),
    ];
    kinds
        .into_iter()
        .map(|k| {
            pb::AgentCommand {
                id: "c0ffee00-0000-4000-8000-000000000001".into(),
                op_id: "job-1".into(),
                requested_by: "alice".into(),
                epoch: 3,
                kind: Some(k),
            }
            .encode_to_vec()
        })
        .collect()
}

fn command_result_seed() -> pb::CommandResult {
    pb::CommandResult {
        command_id: "c1".into(),
        ok: false,
        error: Some(pb::Error::new(pb::error::Code::Hypervisor, "libvirt error")),
        vm: "vm1".into(),
        vm_node: "node1".into(),
        vm_state: pb::VmState::Running as i32,
        duplicate: true,
        message: "failed".into(),
        duration_ms: 1234,
        checks: Some(pb::CheckReport {
            services: vec![pb::ServiceStatus {
                check: "ovs".into(),
                service: "ovs-workers".into(),
                ok: false,
                state: "stop/waiting".into(),
                detail: "listed under non-running processes".into(),
                start_attempted: true,
            }],
            all_ok: false,
        }),
        exit_code: 1,
        output: "tail".into(),
        migrated_bytes: 1 << 26,
        downtime_ms: Some(42),
    }
}

fn event_seeds() -> Vec<Vec<u8>> {
    use pb::event::Body;
    let bodies = vec![
        Body::Heartbeat(pb::Heartbeat {
            boot_id: "b1".into(),
            agent_version: "0.1.0".into(),
            capacity: Some(pb::HostCapacity {
                vcpus: 16,
                memory_mib: 65536,
            }),
            address: "10.0.0.1".into(),
            libvirt_uri: "qemu+tcp://10.0.0.1/system".into(),
            inventory_generation: 7,
            boot_time_ms: 1_700_000_000_000,
            interval_ms: 2000,
            protocol_version: nodemaint_proto::PROTOCOL_VERSION,
        }),
        Body::Inventory(pb::Inventory {
            generation: 8,
            domains: vec![
                domain("vm1", pb::VmKind::User, pb::VmState::Running),
                domain("cs1-vfw", pb::VmKind::Vfw, pb::VmState::Shutoff),
            ],
        }),
        Body::Progress(pb::Progress {
            command_id: "c1".into(),
            vm: "vm1".into(),
            step: "migrating".into(),
            percent: 42.5,
            bytes_processed: 1 << 30,
            bytes_remaining: 1 << 29,
            message: String::new(),
            pass: 3,
            dirty_rate_bps: 40 << 20,
            bandwidth_bps: 16 << 20,
            eta_s: Some(12.5),
            downtime_ms: None,
        }),
        Body::Result(command_result_seed()),
        Body::Checks(command_result_seed().checks.unwrap()),
        Body::Job(pb::JobEvent {
            job_id: "j1".into(),
            kind: "maintenance.start".into(),
            state: "RUNNING".into(),
            message: "moving vm1".into(),
            vm: "vm1".into(),
            from_node: "node1".into(),
            to_node: "node2".into(),
            percent: 10.0,
            terminal: false,
            ok: true,
        }),
        Body::Error(pb::ErrorReport {
            subject: "nodemaint.v1.agent.node1.cmd".into(),
            error: Some(pb::Error::new(pb::error::Code::Malformed, "bad")),
        }),
    ];
    bodies
        .into_iter()
        .map(|b| {
            pb::Event {
                node: "node1".into(),
                ts_ms: 1_700_000_000_000,
                op_id: "job-1".into(),
                body: Some(b),
            }
            .encode_to_vec()
        })
        .collect()
}

/// Every `ApiRequest` case (tags 10..=31), empty and with a few fields set.
fn api_request_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for tag in 10..=31u32 {
        let inner = vec![
            Field::Bytes(1, b"node1".to_vec()),
            Field::Varint(2, 1),
            Field::Bytes(3, b"node2".to_vec()),
        ];
        out.push(encode_fields(&[
            Field::Bytes(1, b"alice".to_vec()),
            Field::Msg(tag, vec![]),
        ]));
        out.push(encode_fields(&[
            Field::Bytes(1, b"alice".to_vec()),
            Field::Bytes(2, b"req-0001".to_vec()),
            Field::Msg(tag, inner),
        ]));
    }
    out
}

fn api_reply_seeds() -> Vec<Vec<u8>> {
    use pb::api_reply::Kind;
    let summary = pb::NodeSummary {
        name: "node1".into(),
        status: pb::NodeStatus::Maintenance as i32,
        reachable: true,
        address: "10.0.0.1".into(),
        capacity: Some(pb::HostCapacity {
            vcpus: 8,
            memory_mib: 8192,
        }),
        vms_running: 1,
        vms_total: 2,
        memory_used_mib: 4096,
        last_seen_ms: 1_700_000_000_000,
        boot_id: "b1".into(),
        agent_version: "0.1.0".into(),
        ..Default::default()
    };
    let kinds = vec![
        Kind::Error(pb::Error::new(pb::error::Code::PermissionDenied, "no")),
        Kind::Nodes(pb::NodeList {
            nodes: vec![summary.clone()],
        }),
        Kind::Node(pb::NodeDetail {
            summary: Some(summary),
            domains: vec![domain("vm1", pb::VmKind::User, pb::VmState::Running)],
            ..Default::default()
        }),
        Kind::Vms(pb::VmList::default()),
        Kind::Vfws(pb::VfwList::default()),
        Kind::Accepted(pb::Accepted {
            op_id: "j1".into(),
            events_from_seq: 5,
            message: "accepted".into(),
        }),
        Kind::Json(r#"{"nodes":[],"vms":[]}"#.into()),
        Kind::Job(pb::Job::from(&nodemaint_proto::job::Job::new(
            nodemaint_proto::job::JobSpec::Start(nodemaint_proto::job::StartVm { vm: "v".into() }),
            "alice",
            Some("n1"),
        ))),
    ];
    kinds
        .into_iter()
        .map(|k| pb::ApiReply { kind: Some(k) }.encode_to_vec())
        .collect()
}

// ---------------------------------------------------------------------------
// Text inputs: token soups and mutated seeds.

/// Strings that break naive parsers: huge and negative numbers, floats,
/// multi-byte characters, control characters, quotes and escapes.
const NASTY: &[&str] = &[
    "0",
    "-1",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "9223372036854775807",
    "99999999999999999999999",
    "1e309",
    "-1e309",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "0.5",
    "1979-05-27T07:32:00Z",
    "é",
    "∞",
    "日本",
    "\u{0}",
    "\u{7f}",
    "\u{feff}",
    "\u{1F600}",
    "\t",
    "\r\n",
    "\\",
    "\"",
    "'",
    "\"\"\"",
    "'''",
    "\\u0000",
    "\\ud800",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "=",
    "#",
    ".",
];

fn soup(vocab: &'static [&'static str]) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        6 => select(vocab).prop_map(str::to_string),
        3 => select(NASTY).prop_map(str::to_string),
        2 => "[ -~]{0,8}",
        1 => ".{0,4}",
        2 => Just(" ".to_string()),
        3 => Just("\n".to_string()),
    ];
    vec(piece, 0..48).prop_map(|p| p.concat())
}

#[derive(Clone, Debug)]
enum TextMut {
    Truncate(usize),
    Insert(usize, String),
    Delete(usize, usize),
    Duplicate(usize, usize),
    ReplaceLine(usize, String),
    DeleteLine(usize),
    SwapLines(usize, usize),
    /// Replace a run of digits with an extreme value.
    Number(usize, &'static str),
}

fn arb_text_mut(vocab: &'static [&'static str]) -> impl Strategy<Value = TextMut> {
    prop_oneof![
        any::<usize>().prop_map(TextMut::Truncate),
        (any::<usize>(), soup(vocab)).prop_map(|(p, s)| TextMut::Insert(p, s)),
        (any::<usize>(), 1usize..24).prop_map(|(p, n)| TextMut::Delete(p, n)),
        (any::<usize>(), 1usize..64).prop_map(|(p, n)| TextMut::Duplicate(p, n)),
        (any::<usize>(), soup(vocab)).prop_map(|(p, s)| TextMut::ReplaceLine(p, s)),
        any::<usize>().prop_map(TextMut::DeleteLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| TextMut::SwapLines(a, b)),
        (any::<usize>(), select(NASTY)).prop_map(|(p, s)| TextMut::Number(p, s)),
    ]
}

/// The char boundary at or before `p % (len + 1)`.
fn boundary(s: &str, p: usize) -> usize {
    let mut i = p % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply_text_muts(seed: &str, muts: &[TextMut]) -> String {
    let mut s = seed.to_string();
    for m in muts {
        match m {
            TextMut::Truncate(p) => s.truncate(boundary(&s, *p)),
            TextMut::Insert(p, ins) => s.insert_str(boundary(&s, *p), ins),
            TextMut::Delete(p, n) => {
                let i = boundary(&s, *p);
                let j = boundary(&s, (i + n).min(s.len()));
                s.replace_range(i..j.max(i), "");
            }
            TextMut::Duplicate(p, n) => {
                let i = boundary(&s, *p);
                let j = boundary(&s, (i + n).min(s.len())).max(i);
                let piece = s[i..j].to_string();
                s.insert_str(j, &piece);
            }
            TextMut::ReplaceLine(p, new) => {
                let mut lines: Vec<String> = s.lines().map(str::to_string).collect();
                if lines.is_empty() {
                    lines.push(new.clone());
                } else {
                    let i = p % lines.len();
                    lines[i] = new.clone();
                }
                s = lines.join("\n");
            }
            TextMut::DeleteLine(p) => {
                let mut lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    lines.remove(p % lines.len());
                }
                s = lines.join("\n");
            }
            TextMut::SwapLines(a, b) => {
                let mut lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    let n = lines.len();
                    lines.swap(a % n, b % n);
                }
                s = lines.join("\n");
            }
            TextMut::Number(p, v) => {
                let digits: Vec<usize> = s
                    .char_indices()
                    .filter(|(_, c)| c.is_ascii_digit())
                    .map(|(i, _)| i)
                    .collect();
                if let Some(&start) = digits.get(p % digits.len().max(1)) {
                    let end = s[start..]
                        .find(|c: char| !c.is_ascii_digit())
                        .map_or(s.len(), |e| start + e);
                    s.replace_range(start..end, v);
                }
            }
        }
    }
    s
}

fn text_input(seeds: Vec<String>, vocab: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    let n = seeds.len();
    let byte_seeds: Vec<Vec<u8>> = seeds.iter().map(|s| s.clone().into_bytes()).collect();
    let seeds2 = seeds.clone();
    prop_oneof![
        1 => vec(any::<u8>(), 0..256),
        1 => ".{0,200}".prop_map(String::into_bytes),
        3 => soup(vocab).prop_map(String::into_bytes),
        4 => (0..n, vec(arb_text_mut(vocab), 1..6))
            .prop_map(move |(i, m)| apply_text_muts(&seeds2[i], &m).into_bytes()),
        1 => mutated_seeds(byte_seeds),
        1 => select(seeds).prop_map(String::into_bytes),
    ]
    .boxed()
}

/// TOML built from the format's keys: `key = value` lines and table
/// headers, values of every TOML type and extreme numbers.
fn toml_soup(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    let value = prop_oneof![
        select(NASTY).prop_map(str::to_string),
        "\"[ -~]{0,12}\"",
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        select(vec!["true", "false", "[]", "{}", "[1, \"a\"]", "{ a = 1 }"])
            .prop_map(str::to_string),
    ];
    let line = prop_oneof![
        4 => (select(keys), value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => select(keys).prop_map(|k| format!("[{k}]")),
        1 => select(keys).prop_map(|k| format!("[[{k}]]")),
        1 => "[ -~]{0,20}",
    ];
    vec(line, 0..16).prop_map(|l| l.join("\n"))
}

fn toml_input(seeds: Vec<String>, keys: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => text_input(seeds, keys),
        2 => toml_soup(keys).prop_map(String::into_bytes),
    ]
    .boxed()
}

/// JSON values built from the format's keys, of every JSON type.
fn json_soup(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        select(keys).prop_map(Value::from),
        select(NASTY).prop_map(Value::from),
        "[ -~]{0,10}".prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((select(keys), inner), 0..8).prop_map(|kv| Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    });
    value.prop_map(|v| v.to_string())
}

fn json_input(seeds: Vec<String>, keys: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => text_input(seeds, keys),
        2 => json_soup(keys).prop_map(String::into_bytes),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------
// Seeds and vocabularies.

const LEASE: &str = r#"{"holder":"c1","ttl_ms":10000}"#;
const COOKIE: &str = "nodemaint_session=abc; theme=dark";
const CREDS: &str = "# node1's agent\nuser = \"node1\"\npassword = \"s3cret\"\n";

const CREDS_TOKENS: &[&str] = &[
    "user",
    "password",
    "nkey_seed",
    " = ",
    "=",
    "\"",
    "#",
    "node1",
    "SUAB",
];

const AGENT_TOML: &str = r#"node = "node1"
nats_url = "nats://127.0.0.1:4222"
libvirt_uri = "qemu:///system"
address = "10.0.0.1"
heartbeat_interval_ms = 2000
inventory_poll_ms = 1000
boot_id_file = "/proc/sys/kernel/random/boot_id"
subject_prefix = "nodemaint"
stop_graceful_timeout_s = 60
migration_timeout_s = 600
migration_progress_timeout_s = 150
max_concurrent_commands = 4
metrics_listen = "127.0.0.1:9465"

[[checks]]
type = "ovs_services"
name = "ovs"
timeout_s = 30
command = "/usr/bin/ovs monitor services"
start = "/usr/bin/ovs start services"

[[checks]]
type = "ays_status"
name = "ays"
command = "ays status --all"

[[checks]]
name = "libvirtd"
type = "systemd"
unit = "libvirtd"

[[checks]]
name = "ssh"
type = "tcp"
host = "127.0.0.1"
port = 22
"#;

const AGENT_KEYS: &[&str] = &[
    "node",
    "nats_url",
    "libvirt_uri",
    "address",
    "migration_libvirt_uri",
    "heartbeat_interval_ms",
    "inventory_poll_ms",
    "boot_id_file",
    "subject_prefix",
    "stop_graceful_timeout_s",
    "migration_timeout_s",
    "migration_progress_timeout_s",
    "state_dir",
    "guest_template",
    "checks",
    "max_concurrent_commands",
    "metrics_listen",
    "name",
    "type",
    "command",
    "unit",
    "host",
    "port",
    "start",
    "timeout_s",
    "ovs_services",
    "ays_status",
    "systemd",
    "tcp",
    "\"node1\"",
    "\"127.0.0.1:9465\"",
];

const COORDINATOR_TOML: &str = r#"nats_url = "nats://127.0.0.1:4222"
subject_prefix = "nodemaint"
stop_graceful_timeout_s = 60

[users.alice]
groups = ["Level2"]
password_hash = "$argon2id$v=19$m=1024,t=1,p=1$c2FsdA$aGFzaA"

[users.bob]
groups = []

[limits]
per_source = 2
per_destination = 2
global = 5

[migration]
timeout_per_gib_s = 800
timeout_floor_s = 60
progress_timeout_s = 150

[preflight]
max_nodes_in_maintenance = 2
headroom_percent = 10
"#;

/// The agent seed loaded and rendered from the config struct with every
/// optional setting set: a seed that follows the schema when it changes.
fn rendered_agent() -> String {
    let mut c = AgentConfig::from_toml(AGENT_TOML, Path::new("seed")).expect("the seed loads");
    c.nats_creds = Some("/etc/nodemaint/node1.creds".into());
    c.nats_ca = Some("/etc/nodemaint/ca.pem".into());
    c.migration_libvirt_uri = Some("qemu+tcp://10.0.0.1/system".into());
    c.state_dir = Some("/var/lib/nodemaint".into());
    c.guest_template = Some("/etc/nodemaint/guest.xml".into());
    c.to_toml()
}

/// Like [`rendered_agent`], for the coordinator.
fn rendered_coordinator() -> String {
    let mut c =
        CoordinatorConfig::from_toml(COORDINATOR_TOML, Path::new("seed")).expect("the seed loads");
    c.nats_creds = Some("/etc/nodemaint/coordinator.creds".into());
    c.nats_ca = Some("/etc/nodemaint/ca.pem".into());
    c.to_toml()
}

/// `base` and every key (at any depth) of the TOML `rendered`: the fuzz
/// vocabulary knows each setting the struct has, also one added later.
fn with_rendered_keys(base: &[&'static str], rendered: &str) -> Vec<&'static str> {
    fn walk(v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    out.push(k.clone());
                    walk(v, out);
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut keys = Vec::new();
    let doc: toml::Table = rendered.parse().expect("a rendered config is TOML");
    walk(&toml::Value::Table(doc), &mut keys);
    let mut vocab = base.to_vec();
    for k in keys {
        if !vocab.contains(&k.as_str()) {
            vocab.push(Box::leak(k.into_boxed_str()));
        }
    }
    vocab
}

fn agent_keys() -> &'static [&'static str] {
    static KEYS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| with_rendered_keys(AGENT_KEYS, &rendered_agent()))
}

fn coordinator_keys() -> &'static [&'static str] {
    static KEYS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| with_rendered_keys(COORDINATOR_KEYS, &rendered_coordinator()))
}

const COORDINATOR_KEYS: &[&str] = &[
    "nats_url",
    "subject_prefix",
    "users",
    "users.alice",
    "groups",
    "password_hash",
    "limits",
    "per_source",
    "per_destination",
    "global",
    "stop_graceful_timeout_s",
    "migration",
    "timeout_per_gib_s",
    "timeout_floor_s",
    "progress_timeout_s",
    "preflight",
    "max_nodes_in_maintenance",
    "headroom_percent",
    "\"Level2\"",
    "\"Level3\"",
];

fn job_seed() -> String {
    let plan: planner::DrainPlan = serde_json::from_value(serde_json::json!(
        {"node": "node1", "moves": [
            {"vm": "vm1", "from": "node1", "to": "node2", "wave": 0, "kind": "USER"}]}
    ))
    .unwrap();
    let spec = jobs::JobSpec::Drain(jobs::Drain {
        plan: Some(plan),
        ..Default::default()
    });
    let mut job = Job::new(spec, "alice", Some("node1"));
    let cmd = pb::AgentCommand::decode(agent_command_seeds()[3].as_slice()).unwrap();
    job.commands.push(jobs::CommandRecord {
        id: cmd.id.clone(),
        node: "node1".into(),
        vm: "vm1".into(),
        action: "migrate".into(),
        to: Some("node2".into()),
        payload: jobs::hex(&cmd.encode_to_vec()),
        ok: Some(false),
        message: Some("failed".into()),
    });
    job.steps.push(jobs::Step {
        ts_ms: 1,
        message: "moving vm1".into(),
        vm: Some("vm1".into()),
        ok: Some(true),
    });
    serde_json::to_string(&job).unwrap()
}

const JOB_KEYS: &[&str] = &[
    "id",
    "kind",
    "user",
    "node",
    "state",
    "created_ms",
    "updated_ms",
    "params",
    "steps",
    "outcome",
    "commands",
    "report",
    "ts_ms",
    "message",
    "vm",
    "ok",
    "action",
    "to",
    "payload",
    "done",
    "not_done",
    "detail",
    "groups",
    "plan",
    "moves",
    "mode",
    "move",
    "fallback",
    "maintenance.start",
    "rolling",
    "progress",
    "children",
    "drain",
    "stop_reason",
    "deadline_ms",
    "RUNNING",
    "FAILED",
    "migrate",
    "0a10",
];

fn node_record_seed() -> String {
    let rec = NodeRecord {
        name: "node1".into(),
        address: "10.0.0.1".into(),
        libvirt_uri: "qemu+tcp://10.0.0.1/system".into(),
        capacity: nodemaint_proto::model::Capacity {
            vcpus: 8,
            memory_mib: 8192,
        },
        boot_id: "b1".into(),
        last_seen_ms: 1_700_000_000_000,
        heartbeat_interval_ms: 2000,
        inventory_generation: 3,
        domains: vec![(&domain("vm1", pb::VmKind::User, pb::VmState::Running)).into()],
        current_job: Some("j1".into()),
        stopped_by: [("vm2".to_string(), "j0".to_string())].into(),
        ..Default::default()
    };
    serde_json::to_string(&rec).unwrap()
}

const NODE_KEYS: &[&str] = &[
    "name",
    "status",
    "address",
    "libvirt_uri",
    "capacity",
    "vcpus",
    "memory_mib",
    "boot_id",
    "agent_version",
    "boot_time_ms",
    "last_seen_ms",
    "heartbeat_interval_ms",
    "inventory_generation",
    "domains",
    "current_job",
    "stopped_by",
    "uuid",
    "kind",
    "cloudspace",
    "anti_affinity",
    "state",
    "persistent",
    "ENABLED",
    "MAINTENANCE",
    "VFW",
    "RUNNING",
];

fn fleet_seed() -> String {
    let fleet = planner::synth::fleet(&planner::synth::Spec::new(4, 12, 0.5, 1));
    serde_json::to_string(&fleet).unwrap()
}

const FLEET_KEYS: &[&str] = &[
    "nodes",
    "vms",
    "name",
    "mem_mib",
    "vcpus",
    "status",
    "reachable",
    "mem_ratio",
    "vcpu_ratio",
    "labels",
    "node",
    "kind",
    "cloudspace",
    "anti_affinity",
    "state",
    "ENABLED",
    "MAINTENANCE",
    "USER",
    "VFW",
    "RUNNING",
    "SHUTOFF",
    "n1",
    "n2",
];

const OVS_OUTPUT: &str = "Running processes:
ovs-workers start/running, process 2745
ovs-watcher-framework start/running, process 2712
ovs-albaproxy (instance1) start/running, process 3001

Non-running processes:
ovs-arakoon-voldrv stop/waiting
ovs-volumedriver_vpool1
";

const OVS_TOKENS: &[&str] = &[
    "Running processes:",
    "Non-running processes:",
    "Stopped services:",
    "ovs-workers",
    "start/running,",
    "stop/waiting",
    "start/",
    "/running",
    "/",
    "process",
    "2745",
    "(",
    ")",
    "(instance",
    ",",
    ":",
];

const AYS_OUTPUT: &str = "DOMAIN     NAME                 Instance   Prio Status   Ports
======================================================================

jumpscale  redis                 system       1 RUNNING  9999
jumpscale  mongodb               main         2 HALTED   27017
openvcloud vncproxy              main         3 RUNNING
";

const AYS_TOKENS: &[&str] = &[
    "DOMAIN",
    "NAME",
    "Instance",
    "Prio",
    "Status",
    "Ports",
    "domain name status",
    "=======",
    "-----",
    "jumpscale",
    "redis",
    "main",
    "1",
    "-3",
    "RUNNING",
    "HALTED",
    "9999",
    "27017 27018",
];

const SYSTEMD_TOKENS: &[&str] = &[
    "active",
    "inactive",
    "failed",
    "activating",
    "unknown",
    "Failed to connect to bus",
];

fn metadata_seeds() -> Vec<String> {
    vec![
        metadata::element(&metadata::VmMetadata {
            kind: nodemaint_proto::model::VmKind::Vfw,
            cloudspace: Some("cs\"1&<".into()),
            anti_affinity: Some("grp".into()),
            no_live_migration: false,
        }),
        "<nm:vm xmlns:nm='http://x' kind='user' cloudspace='cs2'/>".into(),
        metadata::element(&metadata::VmMetadata {
            kind: nodemaint_proto::model::VmKind::User,
            cloudspace: Some("cs3".into()),
            anti_affinity: None,
            no_live_migration: true,
        }),
    ]
}

const XML_TOKENS: &[&str] = &[
    "<",
    ">",
    "/>",
    "<nm:vm",
    " kind",
    " cloudspace",
    " anti-affinity",
    " migratable",
    "no",
    "No",
    "=",
    "\"",
    "'",
    "vfw",
    "VFW",
    "user",
    "&amp;",
    "&quot;",
    "&lt;",
    "&",
    " xmlns:nm=\"https://nodemaint\"",
];

fn subject_seeds() -> Vec<String> {
    vec![
        "nodemaint.v1.events.node1.heartbeat".into(),
        "nodemaint.v1.events.node1.result".into(),
        "nodemaint.v1.api.alice.change.maintenance.start".into(),
        "nodemaint.v1.api.bob.read.node.list".into(),
    ]
}

const SUBJECT_TOKENS: &[&str] = &[
    "nodemaint",
    "v1",
    "events",
    "api",
    "agent",
    "cmd",
    ".",
    "*",
    ">",
    "heartbeat",
    "inventory",
    "progress",
    "result",
    "checks",
    "job",
    "error",
    "node1",
    "node.list",
    "alice",
    "read",
    "change",
];

const COOKIE_TOKENS: &[&str] = &[
    "nodemaint_session",
    "=",
    ";",
    "; ",
    "token",
    "theme=dark",
    "\"",
];

/// Deeply nested inputs (brackets, tables, length-delimited protobuf
/// fields): a decoder must refuse them, not recurse until the stack
/// overflows (which aborts the process instead of panicking).
pub fn deep_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let rep = |s: &str, n: usize| s.repeat(n).into_bytes();
    let mut nested = Vec::new();
    for tag in [10u64, 3, 11, 2].iter().cycle().take(20_000) {
        let mut outer = Vec::new();
        put_varint(&mut outer, (tag << 3) | 2);
        put_varint(&mut outer, nested.len() as u64);
        outer.extend(&nested);
        nested = outer;
    }
    vec![
        ("JSON arrays", rep("[", 200_000)),
        ("JSON objects", rep("{\"nodes\":", 100_000)),
        (
            "TOML arrays",
            [b"node = ".to_vec(), rep("[", 200_000)].concat(),
        ),
        (
            "TOML inline tables",
            [b"limits = ".to_vec(), rep("{a=", 100_000)].concat(),
        ),
        ("protobuf messages", nested),
        ("lines", rep("Non-running processes:\n(", 100_000)),
    ]
}

/// An input shown in a report: printable text as is (truncated), otherwise hex.
pub fn show_input(b: &[u8]) -> String {
    const MAX: usize = 300;
    match std::str::from_utf8(b) {
        Ok(s) if s.chars().all(|c| !c.is_control() || c == '\n' || c == '\t') => {
            let mut end = s.len().min(MAX);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            format!("{:?}{}", &s[..end], if end < s.len() { "…" } else { "" })
        }
        _ => {
            let hex: String = b.iter().take(MAX / 2).map(|x| format!("{x:02x}")).collect();
            format!("hex {hex}{}", if b.len() > MAX / 2 { "…" } else { "" })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings the hand-written vocabularies miss come from the structs.
    #[test]
    fn the_fuzz_vocabulary_knows_every_setting() {
        for key in ["nats_creds", "nats_ca", "nats_replicas", "state_dir"] {
            assert!(agent_keys().contains(&key), "{key}");
        }
        for key in ["lease_ttl_s", "nats_replicas", "nats_creds"] {
            assert!(coordinator_keys().contains(&key), "{key}");
        }
        AgentConfig::from_toml(&rendered_agent(), Path::new("a")).unwrap();
        CoordinatorConfig::from_toml(&rendered_coordinator(), Path::new("c")).unwrap();
    }
}
