//! The coordinator's request/reply API, spoken directly.

use crate::*;

/// The coordinator's request/reply API, spoken directly (no CLI process).
pub struct Api {
    pub nats: async_nats::Client,
    pub user: String,
    pub s: Subjects,
}

impl Api {
    pub async fn connect(url: &str, user: &str) -> Result<Api> {
        // Replies come only into the caller's own inbox prefix.
        let nats = async_nats::ConnectOptions::new()
            .custom_inbox_prefix(nodemaint_proto::subjects::inbox_prefix(user))
            .connect(url)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        Ok(Api {
            nats,
            user: user.into(),
            s: Subjects::default(),
        })
    }

    /// One request; an error reply is the inner `Err`.
    pub async fn call(&self, kind: Req) -> Result<std::result::Result<Reply, pb::Error>> {
        let req = pb::ApiRequest {
            user: self.user.clone(),
            kind: Some(kind),
            ..Default::default()
        };
        let method = req.method().expect("kind set");
        let msg = tokio::time::timeout(
            Duration::from_secs(20),
            self.nats.request(
                self.s.api(&self.user, req.is_mutating(), method),
                req.encode_to_vec().into(),
            ),
        )
        .await
        .map_err(|_| anyhow!("{method}: no reply within 20 s"))?
        .with_context(|| format!("request {method}"))?;
        let reply: pb::ApiReply = nodemaint_proto::decode(&msg.payload)?;
        match reply.kind {
            Some(Reply::Error(e)) => Ok(Err(e)),
            Some(k) => Ok(Ok(k)),
            None => bail!("{method}: empty reply"),
        }
    }

    pub async fn ok(&self, kind: Req) -> Result<Reply> {
        self.call(kind).await?.map_err(|e| anyhow!("{e}"))
    }

    pub async fn json(&self, kind: Req) -> Result<Value> {
        match self.ok(kind).await? {
            Reply::Json(s) => Ok(serde_json::from_str(&s)?),
            other => bail!("expected a JSON reply, got {other:?}"),
        }
    }

    pub async fn job(&self, id: &str) -> Result<Value> {
        match self
            .ok(Req::ShowJob(pb::ShowJob { job_id: id.into() }))
            .await?
        {
            Reply::Job(j) => Ok(serde_json::to_value(nodemaint_proto::job::Job::try_from(
                j,
            )?)?),
            other => bail!("expected a job, got {other:?}"),
        }
    }

    pub async fn nodes(&self) -> Result<Vec<pb::NodeSummary>> {
        match self.ok(Req::ListNodes(pb::ListNodes {})).await? {
            Reply::Nodes(n) => Ok(n.nodes),
            other => bail!("expected nodes, got {other:?}"),
        }
    }

    /// Every VM: (node, domain).
    pub async fn vms(&self) -> Result<Vec<(String, pb::Domain)>> {
        match self.ok(Req::ListVms(pb::ListVms::default())).await? {
            Reply::Vms(v) => Ok(v
                .vms
                .into_iter()
                .filter_map(|e| Some((e.node, e.domain?)))
                .collect()),
            other => bail!("expected VMs, got {other:?}"),
        }
    }

    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.nodes().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the coordinator did not answer within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `ok(nodes, vms)` holds on the coordinator's view.
    pub async fn wait_view(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&[pb::NodeSummary], &[(String, pb::Domain)]) -> bool,
    ) -> Result<Duration> {
        let t0 = Instant::now();
        loop {
            if let (Ok(n), Ok(v)) = (self.nodes().await, self.vms().await) {
                if ok(&n, &v) {
                    return Ok(t0.elapsed());
                }
            }
            if t0.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn running(d: &pb::Domain) -> bool {
    d.state == pb::VmState::Running as i32
}

/// Whether every VM in `want` (name -> node) is running there and nowhere else.
pub fn placed(vms: &[(String, pb::Domain)], want: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(vm, node)| {
        let at: Vec<_> = vms.iter().filter(|(_, d)| &d.name == vm).collect();
        at.len() == 1 && &at[0].0 == node && running(&at[0].1)
    })
}
