//! The CLI's side of the API: requests with typed errors, and watchers of
//! the events stream (an operation's progress, or the whole stream).

use async_nats::jetstream;
use nodemaint_proto::bus::Security;
use nodemaint_proto::pb::{self, api_reply::Kind as Reply, api_request::Kind as Req, event::Body};
use nodemaint_proto::subjects::{EventKind, Subjects, COORDINATOR_NODE};
use nodemaint_proto::Message as _;
use std::path::Path;
use std::time::Duration;

/// The operator the CLI acts as: the credentials' user when there are
/// credentials (the server only lets it publish under that name), else the
/// given name or `$USER`. The name is a subject token.
pub fn resolve_user(
    given: Option<&str>,
    creds_user: Option<&str>,
    creds_path: Option<&Path>,
) -> Result<String, String> {
    let user = match (given, creds_user) {
        (Some(g), Some(c)) if g != c => {
            return Err(format!(
                "--user/NODEMAINT_USER is {g:?} but the NATS credentials {} are {c:?}'s; \
                 drop --user or use {g:?}'s credentials",
                creds_path
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ))
        }
        (_, Some(c)) => c.to_string(),
        (Some(g), None) => g.to_string(),
        (None, None) => std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
    };
    nodemaint_proto::subjects::validate_token(&user).map_err(|e| format!("operator name: {e}"))?;
    Ok(user)
}

/// Errors the CLI reports; each says what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CLI's own settings: credentials or CA file, operator name, URL.
    #[error("{0}")]
    Settings(String),
    /// No NATS server could be reached.
    #[error("{0}")]
    Unreachable(String),
    /// A NATS server refused the connection (credentials, TLS trust).
    #[error("{0}")]
    ConnectRefused(String),
    #[error(
        "no coordinator answers on {url} (is `coordinator serve` running with the same --prefix?)"
    )]
    NoCoordinator { url: String },
    #[error("the coordinator on {url} did not answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    /// The NATS server's permissions refused the request.
    #[error("{0}")]
    Refused(String),
    /// The coordinator refused or failed the request.
    #[error("{0}")]
    Api(pb::Error),
    #[error("{0}")]
    Other(String),
}

pub struct Client {
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub url: String,
    pub user: String,
    /// The server's error messages (permission violations).
    server_errors: tokio::sync::broadcast::Sender<String>,
    /// Idempotency key sent with mutating requests (`--request-id`).
    pub request_id: Option<String>,
}

impl Client {
    /// Connects as the credentials' user when `sec` has credentials (an
    /// explicit `user` must then match them), else as `user` or `$USER`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        user: Option<&str>,
        sec: &Security,
    ) -> Result<Self, ClientError> {
        let login = sec
            .login()
            .map_err(|e| ClientError::Settings(e.to_string()))?;
        let user = resolve_user(
            user,
            login.as_ref().and_then(|l| l.name.as_deref()),
            login.as_ref().map(|l| Path::new(&l.source)),
        )
        .map_err(ClientError::Settings)?;
        let (nats, server_errors) =
            nodemaint_proto::bus::connect_watching_as(url, "nodemaint-cli", sec, Some(&user))
                .await
                .map_err(|e| {
                    use nodemaint_proto::bus::{ConnectError, ConnectFailure};
                    match e.downcast_ref::<ConnectError>().map(|c| c.failure) {
                        Some(ConnectFailure::Unreachable) => {
                            ClientError::Unreachable(e.to_string())
                        }
                        Some(ConnectFailure::Refused) => ClientError::ConnectRefused(e.to_string()),
                        None => ClientError::Settings(e.to_string()),
                    }
                })?;
        Ok(Client {
            js: jetstream::new(nats.clone()),
            nats,
            server_errors,
            subjects: Subjects::new(prefix),
            url: url.to_string(),
            user,
            request_id: None,
        })
    }

    /// One API request; an error reply becomes `ClientError::Api`.
    pub async fn call(&self, kind: Req) -> Result<Reply, ClientError> {
        let mut req = pb::ApiRequest {
            user: self.user.clone(),
            kind: Some(kind),
            ..Default::default()
        };
        if req.is_mutating() {
            req.request_id = self.request_id.clone().unwrap_or_default();
        }
        let method = req.method().expect("kind set");
        // Generous: while a cluster elects new stream leaders after losing a
        // server, an accept can take ~10 s.
        let secs = 30;
        let subject = self.subjects.api(&self.user, req.is_mutating(), method);
        let payload: bytes::Bytes = req.encode_to_vec().into();
        let mut refused = self.server_errors.subscribe();
        // A publish the server's permissions refuse never gets an answer:
        // report the refusal at once instead of a timeout.
        let violation = async {
            loop {
                match refused.recv().await {
                    Ok(e) if e.contains(&subject) => return e,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => std::future::pending::<()>().await,
                }
            }
        };
        // "No responders" means nobody got the request, so it is safe to ask
        // again: for a few seconds, a coordinator may be reconnecting to
        // another NATS server (the API's interest is not yet propagated).
        let patience = tokio::time::Instant::now() + Duration::from_secs(5);
        let request = async {
            loop {
                // The request's own timeout: the connection's (10 s) would
                // cut off an accept that waits out a cluster election, and
                // raising that one would slow every JetStream call's failure.
                let r = self
                    .nats
                    .send_request(
                        subject.clone(),
                        async_nats::Request::new()
                            .payload(payload.clone())
                            .timeout(Some(Duration::from_secs(secs))),
                    )
                    .await;
                match r {
                    Err(e)
                        if e.kind() == async_nats::RequestErrorKind::NoResponders
                            && tokio::time::Instant::now() < patience =>
                    {
                        tokio::time::sleep(Duration::from_millis(250)).await
                    }
                    other => break other,
                }
            }
        };
        let resp = tokio::time::timeout(Duration::from_secs(secs), async {
            tokio::select! {
                r = request => Ok(r),
                e = violation => Err(e),
            }
        })
        .await
        .map_err(|_| ClientError::Timeout {
            url: self.url.clone(),
            secs,
        })?
        .map_err(|violation| {
            ClientError::Refused(format!(
                "the NATS server refused the request ({violation}): user {:?} may not call {method}{}",
                self.user,
                if req.is_mutating() {
                    " (changes need group Level2 or Level3)"
                } else {
                    ""
                }
            ))
        })?
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => ClientError::NoCoordinator {
                url: self.url.clone(),
            },
            async_nats::RequestErrorKind::TimedOut => ClientError::Timeout {
                url: self.url.clone(),
                secs,
            },
            _ => ClientError::Other(format!("request {method} failed: {e}")),
        })?;
        let reply = nodemaint_proto::decode::<pb::ApiReply>(&resp.payload)
            .map_err(|e| ClientError::Other(format!("bad reply from coordinator: {e}")))?;
        match reply.kind {
            Some(Reply::Error(e)) => Err(ClientError::Api(e)),
            Some(k) => Ok(k),
            None => Err(ClientError::Other("empty reply from coordinator".into())),
        }
    }

    /// One page of the events stream, read by the coordinator for us (see
    /// `api::events`: operators have no JetStream permissions).
    pub async fn read_events(&self, req: pb::ReadEvents) -> Result<pb::EventPage, ClientError> {
        match self.call(Req::ReadEvents(req)).await? {
            Reply::Events(page) => Ok(page),
            other => Err(ClientError::Other(format!(
                "unexpected reply to event.read: {other:?}"
            ))),
        }
    }

    /// Follows one operation's events from `from_seq` until its terminal job
    /// event; `on_event` sees every event of the operation. Returns the
    /// terminal event.
    pub async fn watch_op(
        &self,
        op_id: &str,
        from_seq: u64,
        mut on_event: impl FnMut(&pb::Event),
    ) -> Result<pb::JobEvent, ClientError> {
        let f = |node: &str, kind: EventKind| pb::EventFilter {
            node: node.into(),
            kind: kind.as_str().into(),
        };
        let mut req = pb::ReadEvents {
            filters: vec![
                f("", EventKind::Progress),
                f("", EventKind::Result),
                f("", EventKind::Checks),
                // Job events only from the coordinator (agents cannot forge an end).
                f(COORDINATOR_NODE, EventKind::Job),
            ],
            start_seq: from_seq + 1,
            op_id: op_id.into(),
            wait_ms: 5_000,
            ..Default::default()
        };
        let job_subject = self.subjects.event(COORDINATOR_NODE, EventKind::Job);
        loop {
            let page = self.read_events(req.clone()).await?;
            req.start_seq = page.next_seq;
            for stored in page.events {
                let Ok(ev) = nodemaint_proto::decode::<pb::Event>(&stored.event) else {
                    continue;
                };
                if ev.op_id != op_id {
                    continue;
                }
                // A job's end only from the coordinator's job subject (the
                // body's node is the publisher's claim; the subject is not).
                let job = match &ev.body {
                    Some(Body::Job(_)) if stored.subject != job_subject => continue,
                    Some(Body::Job(j)) => Some(j.clone()),
                    _ => None,
                };
                on_event(&ev);
                if let Some(j) = job.filter(|j| j.terminal) {
                    return Ok(j);
                }
            }
        }
    }
}
