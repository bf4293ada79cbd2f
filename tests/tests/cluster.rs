//! nodemaint on the shipped 3-node NATS JetStream cluster configs
//! (`deploy/nats/cluster/`, hosts and ports rewritten to loopback): streams
//! and KV buckets get three replicas, clients take the list of members, and
//! losing a member does not stop the fleet.

use nodemaint_tests::*;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

/// One shipped member config, pointed at loopback, a fresh temp store, the
/// route port `routes[i - 1]` (the members route to each other's:
/// pre-chosen, so started through `retry_on_taken_ports`) and a client port
/// of the server's choosing (read from its ports file, see `spawn_member`).
/// `secured`: the directory (relative to `dir`) holding gen-tls's and
/// gen-routes' output for the routes; `None` makes plain routes (a plain test
/// bus: the shipped configs include generated security files).
fn member_config(
    i: usize,
    routes: &[u16],
    dir: &std::path::Path,
    secured: Option<&str>,
) -> std::path::PathBuf {
    let shipped = lab::repo().join(format!("deploy/nats/cluster/nats-{i}.conf"));
    let mut text = std::fs::read_to_string(&shipped).unwrap();
    for include in [
        "include ./auth.conf",
        "include ./tls.conf",
        "include ./cluster-tls.conf",
        "include ./cluster-routes.conf",
    ] {
        assert!(text.contains(include), "{shipped:?} lacks {include}");
    }
    let route = routes[i - 1];
    let routes = match secured {
        // nats-server resolves includes relative to the including file.
        Some(sub) => {
            format!("include \"{sub}/cluster-tls.conf\"\n  include \"{sub}/cluster-routes.conf\"")
        }
        None => format!(
            "routes: [ {} ]",
            routes
                .iter()
                .map(|r| format!("nats-route://127.0.0.1:{r}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    text = text
        .replace("listen: 0.0.0.0:4222", "listen: \"127.0.0.1:-1\"")
        .replace(
            "listen: 0.0.0.0:6222",
            &format!("listen: 127.0.0.1:{route}"),
        )
        .replace("include ./auth.conf", "")
        .replace("include ./tls.conf", "")
        .replace("include ./cluster-tls.conf", "")
        .replace("include ./cluster-routes.conf", &routes)
        .replace(
            "store_dir: /var/lib/nats",
            &format!("store_dir: \"{}\"", dir.join(format!("s{i}")).display()),
        );
    // A retried start must not find the failed attempt's cluster state.
    let _ = std::fs::remove_dir_all(dir.join(format!("s{i}")));
    let path = dir.join(format!("nats-{i}.conf"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts member `i` on `conf`, writing its ports file into `dir/ports`.
fn spawn_member(i: usize, conf: &std::path::Path, dir: &std::path::Path) -> Proc {
    let ports = dir.join("ports");
    std::fs::create_dir_all(&ports).unwrap();
    Proc::spawn(
        &format!("nats-server {i}"),
        Command::new("nats-server")
            .arg("-c")
            .arg(conf)
            .arg("--ports_file_dir")
            .arg(ports),
        dir.join(format!("nats-{i}.log")),
    )
}

/// The ports member `p` bound, once it wrote them.
fn member_ports(p: &Proc, dir: &std::path::Path) -> Option<NatsPorts> {
    NatsPorts::read(&dir.join("ports"), p.pid())
}

/// Waits until every member wrote its ports and one was elected the
/// JetStream meta leader.
fn wait_meta_leader(servers: &mut [Proc], dir: &std::path::Path) -> Result<(), PortTaken> {
    wait_started(
        servers,
        Duration::from_secs(20),
        "a JetStream meta leader",
        |ps| {
            ps.iter().all(|p| member_ports(p, dir).is_some())
                && ps.iter().any(|p| {
                    p.log_text()
                        .contains("JetStream cluster new metadata leader")
                })
        },
    )
}

fn replicas(url: &str, stream: &str) -> usize {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = nodemaint_proto::bus::connect(url, "test", &Default::default())
            .await
            .unwrap();
        let js = async_nats::jetstream::new(c);
        let mut s = js.get_stream(stream).await.unwrap();
        s.info().await.unwrap().config.num_replicas
    })
}

#[test]
fn nodemaint_runs_on_the_shipped_three_node_cluster_and_survives_a_lost_member() {
    let dir = tempfile::tempdir().unwrap();
    let (servers, url) = retry_on_taken_ports("the 3-node cluster", |_| {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut servers: Vec<Proc> = (1..=3)
            .map(|i| spawn_member(i, &member_config(i, &routes, dir.path(), None), dir.path()))
            .collect();
        wait_meta_leader(&mut servers, dir.path())?;
        let url = servers
            .iter()
            .map(|p| {
                format!(
                    "nats://127.0.0.1:{}",
                    member_ports(p, dir.path()).unwrap().client
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        Ok((servers, url))
    });
    let mut servers: Vec<Option<Proc>> = servers.into_iter().map(Some).collect();

    let config = dir.path().join("coordinator.toml");
    let mut cfg = coordinator_config();
    cfg.nats_replicas = 3;
    cfg.lease_ttl_s = 15;
    write_coordinator_config(&config, &cfg);
    let _coordinator = Proc::spawn(
        "coordinator",
        Command::new(bin("coordinator"))
            .args(["serve", "--config"])
            .env(INSECURE.0, INSECURE.1)
            .arg(&config)
            .env("NATS_URL", &url)
            .env("RUST_LOG", "info"),
        dir.path().join("coordinator.log"),
    );
    let xml = dir.path().join("node1.xml");
    node_xml(&xml, 8192, 8, &[Dom::user("vm1", "cs1")]);
    let boot = dir.path().join("node1.boot_id");
    std::fs::write(&boot, "boot-1\n").unwrap();
    let agent_cfg = dir.path().join("node1.toml");
    let mut cfg = test_agent_config(dir.path(), "node1", &url, None);
    cfg.nats_replicas = 3;
    write_agent_config(&agent_cfg, &cfg);
    let _agent = Proc::spawn(
        "agent node1",
        Command::new(bin("node-agent"))
            .arg("--config")
            .env(INSECURE.0, INSECURE.1)
            .arg(&agent_cfg)
            .env("RUST_LOG", "info"),
        dir.path().join("agent.log"),
    );
    let cli = |user: &str, args: &[&str]| cli_in(&url, dir.path(), user, args);
    wait_for(Duration::from_secs(30), "node1 registered", || {
        stdout(&cli("bob", &["vm", "list"])).contains("vm1")
    });

    // Every stream and bucket nodemaint created has three replicas.
    let s = nodemaint_proto::subjects::Subjects::new("nodemaint");
    for stream in [
        s.commands_stream(),
        s.events_stream(),
        format!("KV_{}", s.nodes_bucket()),
        format!("KV_{}", s.jobs_bucket()),
        format!("KV_{}", s.agent_results_bucket()),
        format!("KV_{}", s.leader_bucket()),
    ] {
        assert_eq!(replicas(&url, &stream), 3, "{stream}");
    }

    // A member dies: the fleet keeps working through the others.
    servers[0].take().unwrap().kill();
    let t = Instant::now();
    // Usually at once; while the cluster elects new stream leaders (4–9 s
    // after a server dies) an answer can take longer.
    wait_for(Duration::from_secs(60), "the API to answer again", || {
        cli("bob", &["vm", "list"]).status.success()
    });
    eprintln!("the API answered {:?} after the server died", t.elapsed());
    // A fleet change right after the loss: accepted (the accept waits for
    // the jobs bucket's new stream leader, up to ~10 s) and done. Asked
    // again only if the CLI gave up waiting (counted, printed).
    let mut stalls = 0;
    wait_for(Duration::from_secs(120), "vm stop to be accepted", || {
        let out = cli("alice", &["vm", "stop", "vm1"]);
        let err = stderr(&out);
        if err.contains("did not answer") {
            stalls += 1;
        }
        out.status.success() || err.contains("already")
    });
    eprintln!(
        "vm stop done {:?} after the server died ({stalls} unanswered attempts)",
        t.elapsed()
    );
    wait_for(Duration::from_secs(20), "vm1 shown shut off", || {
        stdout(&cli("bob", &["vm", "list"])).contains("SHUTOFF")
    });
    let out = cli("alice", &["vm", "start", "vm1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let jobs: serde_json::Value =
        serde_json::from_slice(&cli("bob", &["job", "list", "--output", "json"]).stdout).unwrap();
    let done: Vec<&Value> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["state"] == "SUCCEEDED")
        .collect();
    assert!(done.len() >= 2, "a stop and a start succeeded: {jobs}");
    drop(servers);
}

/// Routes between the members are authenticated and encrypted as shipped
/// (`include ./cluster-tls.conf` from `gen-tls`, `include
/// ./cluster-routes.conf` from `gen-routes`): two members with the CA's
/// certificates and the cluster's secret form their route; a server routing
/// in without TLS, with a certificate of another CA, or with the right CA's
/// certificate but not the route secret, is refused. (Before, the shipped
/// cluster configs accepted any route.)
#[test]
fn routes_admit_only_servers_with_the_cas_certificate_and_the_route_secret() {
    let dir = tempfile::tempdir().unwrap();
    let run = |script: &str, args: &[String]| {
        let out = Command::new(lab::repo().join("deploy/nats").join(script))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {}", stderr(&out));
    };
    let at = |sub: &str| dir.path().join(sub).display().to_string();
    run("gen-tls", &[at("tls"), "127.0.0.1".into()]);
    run("gen-tls", &[at("other/tls"), "127.0.0.1".into()]);
    let addrs = |routes: &[u16]| -> Vec<String> {
        routes.iter().map(|r| format!("127.0.0.1:{r}")).collect()
    };

    let log = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    // Members 1 and 2 of 3 (3 is never started); member 1's monitoring port
    // answers which servers it is routed to.
    let (routes, _members, monitor) = retry_on_taken_ports("members 1 and 2", |_| {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        run("gen-routes", &[&[at("tls")], &addrs(&routes)[..]].concat());
        let mut members: Vec<Proc> = (1..=2)
            .map(|i| {
                let conf = member_config(i, &routes, dir.path(), Some("tls"));
                if i == 1 {
                    let text = std::fs::read_to_string(&conf).unwrap();
                    std::fs::write(&conf, format!("http: \"127.0.0.1:-1\"\n{text}")).unwrap();
                }
                spawn_member(i, &conf, dir.path())
            })
            .collect();
        let mut monitor = None;
        wait_started(
            &mut members,
            Duration::from_secs(20),
            "members 1 and 2 routed",
            |ps| {
                monitor = member_ports(&ps[0], dir.path()).and_then(|p| p.monitoring);
                monitor.is_some_and(|m| routez(m).contains("\"remote_name\": \"nats-2\""))
            },
        )?;
        Ok((routes, members, monitor.unwrap()))
    });

    // gen-routes names every member with the cluster's secret, and
    // re-running it keeps the secret (adding a member must not cut the
    // others off). The running members read the files at start only.
    let members = addrs(&routes);
    let secret = std::fs::read_to_string(dir.path().join("tls/route.password")).unwrap();
    let routes_conf = std::fs::read_to_string(dir.path().join("tls/cluster-routes.conf")).unwrap();
    assert!(routes_conf.contains(&format!("nodemaint-route:{secret}@{}", members[2])));
    run("gen-routes", &[&[at("tls")], &members[..2]].concat());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("tls/route.password")).unwrap(),
        secret
    );
    run("gen-routes", &[&[at("tls")], &members[..]].concat());

    // Intruders on member 1's route port: plain; TLS from another CA; the
    // right CA's certificate without the route secret.
    let route1 = routes[0];
    for (name, cluster, refusal) in [
        ("plain", String::new(), "TLS route handshake error"),
        (
            "other-ca",
            "  include \"other/tls/cluster-tls.conf\"\n".to_string(),
            "certificate signed by unknown authority",
        ),
        (
            "no-secret",
            "  include \"tls/cluster-tls.conf\"\n".to_string(),
            "Authorization Violation",
        ),
        (
            "wrong-secret",
            "  include \"tls/cluster-tls.conf\"\n".to_string(),
            "Authorization Violation",
        ),
    ] {
        let login = if name == "wrong-secret" {
            "nodemaint-route:0123456789abcdef0123@"
        } else {
            ""
        };
        // On ports of its own choosing (-1): nothing routes to it.
        let conf = dir.path().join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: {name}\nlisten: \"127.0.0.1:-1\"\ncluster {{\n  name: nodemaint\n  \
                 listen: \"127.0.0.1:-1\"\n{cluster}  routes: [ nats-route://{login}127.0.0.1:{route1} ]\n}}\n"
            ),
        )
        .unwrap();
        let mut intruder = Proc::spawn(
            name,
            Command::new("nats-server").arg("-c").arg(&conf),
            dir.path().join(format!("{name}.log")),
        );
        wait_started(
            std::slice::from_mut(&mut intruder),
            Duration::from_secs(20),
            &format!("member 1 refusing {name}"),
            |_| {
                log("nats-1.log").contains(refusal) || log(&format!("{name}.log")).contains(refusal)
            },
        )
        .unwrap_or_else(|t| panic!("{}: {}", t.name, t.log));

        let routes = routez(monitor);
        assert!(routes.contains("\"remote_name\": \"nats-2\""), "{routes}");
        assert!(
            !routes.contains(&format!("\"remote_name\": \"{name}\"")),
            "{routes}"
        );
        intruder.kill();
    }
}

/// nats-server's `/routez` (its current routes, with each remote's name).
fn routez(port: u16) -> String {
    use std::io::{Read, Write};
    // Not listening yet: no routes to tell of.
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    s.write_all(b"GET /routez HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// A TCP forwarder for one route between two members, which the test can
/// stall: connections stay up but nothing passes (a slow network), so the
/// member on the other side does not notice at once; the data held back
/// flows again once it is reopened.
struct Link {
    open: tokio::sync::watch::Sender<bool>,
    port: u16,
    accept: tokio::task::JoinHandle<()>,
}

impl Link {
    /// A link to port `to`, listening on a port of its own ([`Link::port`]).
    async fn start(to: u16) -> Link {
        let (open, rx) = tokio::sync::watch::channel(true);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                    continue;
                };
                let (a_read, a_write) = inbound.into_split();
                let (b_read, b_write) = outbound.into_split();
                tokio::spawn(pump(a_read, b_write, rx.clone()));
                tokio::spawn(pump(b_read, a_write, rx.clone()));
            }
        });
        Link { open, port, accept }
    }

    fn set(&self, open: bool) {
        self.open.send_replace(open);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to`, holding what it read while the link is stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut open: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if open.wait_for(|open| *open).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Record {
    steps: u32,
}

/// The bug behind "job … vanished; drain halted" after a coordinator
/// failover: KV reads are DIRECT GETs, answered by whichever replica is
/// nearest, and a follower that has not applied the latest writes answers
/// "no such key" for a record written a moment before. Here member F's
/// routes run through forwarders the test stalls: a record is written through
/// the other two (a quorum), and a client connected to F reads it. F's
/// DIRECT GET answers "absent" (the lag, checked); nodemaint's reads
/// (`bus::leader_entry`, `get_json`, `cas_update`) never conclude "absent":
/// the journal-style update waits for the leader and lands once F is back.
#[test]
fn a_record_written_while_a_follower_lags_is_never_read_as_gone() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_servers, links, clients) = retry_on_taken_ports("the 3-node cluster", |_| {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        // links[i][j]: member i+1 routes to member j+1 through it.
        let links: Vec<Vec<Option<Link>>> = rt.block_on(async {
            let mut all = Vec::new();
            for i in 0..3 {
                let mut row = Vec::new();
                for (j, &to) in routes.iter().enumerate() {
                    row.push(if i == j {
                        None
                    } else {
                        Some(Link::start(to).await)
                    });
                }
                all.push(row);
            }
            all
        });
        let direct = format!(
            "routes: [ {} ]",
            routes
                .iter()
                .map(|r| format!("nats-route://127.0.0.1:{r}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut servers: Vec<Proc> = (1..=3)
            .map(|i| {
                let conf = member_config(i, &routes, dir.path(), None);
                // Advertised to the others as a dead address: gossip must
                // not hand out the member's own route port, around the links.
                let via_links = format!(
                    "routes: [ {} ]\n  advertise: \"127.0.0.1:1\"",
                    links[i - 1]
                        .iter()
                        .flatten()
                        .map(|l| format!("nats-route://127.0.0.1:{}", l.port))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let text = std::fs::read_to_string(&conf).unwrap();
                assert!(text.contains(&direct));
                std::fs::write(&conf, text.replace(&direct, &via_links)).unwrap();
                spawn_member(i, &conf, dir.path())
            })
            .collect();
        wait_meta_leader(&mut servers, dir.path())?;
        let clients: Vec<u16> = servers
            .iter()
            .map(|p| member_ports(p, dir.path()).unwrap().client)
            .collect();
        Ok((servers, links, clients))
    });
    let url = |i: usize| format!("nats://127.0.0.1:{}", clients[i]);
    let connect = |i: usize| {
        let u = url(i);
        async move {
            let c = nodemaint_proto::bus::connect(&u, "test", &Default::default())
                .await
                .unwrap();
            async_nats::jetstream::new(c)
        }
    };
    use nodemaint_proto::bus;
    rt.block_on(async {
        let js = connect(0).await;
        let kv = bus::Retry::within("bucket", Duration::from_secs(30))
            .run(|| bus::bucket(&js, "lagtest", 5, Duration::ZERO, 3))
            .await
            .unwrap();
        // Pick F: a follower of the bucket's stream; write through another.
        let leader = bus::Retry::within("stream leader", Duration::from_secs(30))
            .run(|| {
                let mut s = kv.stream.clone();
                async move {
                    s.info()
                        .await?
                        .cluster
                        .clone()
                        .and_then(|c| c.leader)
                        .ok_or_else(|| bus::BoxError::from("no stream leader yet"))
                }
            })
            .await
            .unwrap();
        let l: usize = leader.trim_start_matches("nats-").parse::<usize>().unwrap() - 1;
        let f = (l + 1) % 3;
        let w = (l + 2) % 3;
        eprintln!(
            "stream leader nats-{}, lagging follower nats-{}",
            l + 1,
            f + 1
        );
        let writer = connect(w).await.get_key_value("lagtest").await.unwrap();
        // Short request timeouts through F: while F lags, a request that
        // F routes to another member goes unanswered.
        let reader = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_millis(500))
            .build(connect(f).await.client())
            .get_key_value("lagtest")
            .await
            .unwrap();

        // Figures: a direct read against a leader read, on a healthy cluster.
        writer.put("warm", "{}".into()).await.unwrap();
        let t = Instant::now();
        while reader.entry("warm").await.unwrap().is_none() {
            assert!(t.elapsed() < Duration::from_secs(20), "F never caught up");
        }
        let t = Instant::now();
        for _ in 0..200 {
            assert!(reader.entry("warm").await.unwrap().is_some());
        }
        let direct = t.elapsed() / 200;
        let t = Instant::now();
        for _ in 0..200 {
            assert!(bus::leader_entry(&reader, "warm").await.unwrap().is_some());
        }
        let via_leader = t.elapsed() / 200;
        eprintln!("one read through F: direct {direct:?}, from the leader {via_leader:?}");

        // F falls behind: its routes stall, the others keep a quorum.
        for (i, row) in links.iter().enumerate() {
            for (j, link) in row.iter().enumerate() {
                if let Some(link) = link.as_ref().filter(|_| i == f || j == f) {
                    link.set(false);
                }
            }
        }
        let rec = serde_json::to_vec(&Record { steps: 0 }).unwrap();
        bus::Retry::within("write while F lags", Duration::from_secs(30))
            .run(|| writer.create("job", rec.clone().into()))
            .await
            .unwrap();
        // The lag: F's DIRECT GET says the record does not exist.
        // A DIRECT GET goes to any replica (a queue group): the others,
        // behind the stalled routes, do not answer; F's answer, the first
        // to come, is its older state.
        let mut stale = None;
        for _ in 0..50 {
            if let Ok(answer) = reader.entry("job").await {
                stale = Some(answer);
                break;
            }
        }
        let stale = stale.expect("F answers a DIRECT GET");
        assert!(
            stale.is_none(),
            "F should answer from its older state: {stale:?}"
        );
        // nodemaint's read and a journal-style update through F (which
        // needs the record) wait for the leader rather than conclude the
        // record is gone; they end once F is back.
        let reader = std::sync::Arc::new(reader);
        let mut read = tokio::spawn({
            let reader = reader.clone();
            async move {
                bus::get_json::<Record>(&reader, "job")
                    .await
                    .map_err(|e| e.to_string())
            }
        });
        let mut update = tokio::spawn(async move {
            bus::cas_update::<Record, String>(&reader, "job", |r| {
                let mut r = r.ok_or_else(|| "job vanished".to_string())?;
                r.steps += 1;
                Ok(r)
            })
            .await
            .map(|u| u.value)
            .map_err(|e| e.to_string())
        });
        let early = tokio::time::timeout(Duration::from_secs(2), &mut update).await;
        assert!(early.is_err(), "update concluded while F lagged: {early:?}");
        let early = tokio::time::timeout(Duration::from_millis(10), &mut read).await;
        assert!(early.is_err(), "read concluded while F lagged: {early:?}");
        for row in &links {
            for link in row.iter().flatten() {
                link.set(true);
            }
        }
        let done = update.await.unwrap();
        assert_eq!(done, Ok(Record { steps: 1 }));
        let seen = read.await.unwrap().unwrap().expect("the record");
        assert!(seen.steps <= 1, "{seen:?}");
        let read = bus::get_json::<Record>(&writer, "job").await.unwrap();
        assert_eq!(read, Some(Record { steps: 1 }));
    });
}
