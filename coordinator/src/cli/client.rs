//! The CLI's side of the API: requests with typed errors, and watchers of
//! the events stream (an operation's progress, or the whole stream).

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
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
    #[error("{0}")]
    Connect(String),
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
        let creds = sec
            .credentials()
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let user = resolve_user(
            user,
            creds.as_ref().map(|c| c.user.as_str()),
            sec.creds.as_deref(),
        )
        .map_err(ClientError::Connect)?;
        let (nats, server_errors) =
            nodemaint_proto::bus::connect_watching(url, "nodemaint-cli", sec)
                .await
                .map_err(|e| ClientError::Connect(e.to_string()))?;
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

    /// An ordered consumer over the events stream.
    pub async fn event_stream(
        &self,
        filters: Vec<String>,
        deliver: consumer::DeliverPolicy,
    ) -> Result<consumer::pull::Ordered, ClientError> {
        // While a cluster elects the stream's new leader (a server died),
        // JetStream requests time out for a few seconds: try again.
        let opened =
            nodemaint_proto::bus::Retry::within("events consumer", Duration::from_secs(20))
                .run(|| async {
                    let stream = self
                        .js
                        .get_stream(self.subjects.events_stream())
                        .await
                        .map_err(|e| format!("events stream unavailable on {}: {e}", self.url))?;
                    let consumer = stream
                        .create_consumer(consumer::pull::OrderedConfig {
                            filter_subjects: filters.clone(),
                            deliver_policy: deliver,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| format!("cannot read events: {e}"))?;
                    consumer
                        .messages()
                        .await
                        .map_err(|e| format!("cannot read events: {e}"))
                })
                .await;
        opened.map_err(|e| ClientError::Other(e.to_string()))
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
        let s = &self.subjects;
        let filters = vec![
            s.events_filter(None, Some(EventKind::Progress)),
            s.events_filter(None, Some(EventKind::Result)),
            s.events_filter(None, Some(EventKind::Checks)),
            s.events_filter(Some(COORDINATOR_NODE), Some(EventKind::Job)),
        ];
        let mut msgs = self
            .event_stream(
                filters,
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from_seq + 1,
                },
            )
            .await?;
        while let Some(msg) = msgs.next().await {
            let msg = msg.map_err(|e| ClientError::Other(format!("event stream error: {e}")))?;
            let Ok(ev) = nodemaint_proto::decode::<pb::Event>(&msg.payload) else {
                continue;
            };
            if ev.op_id != op_id {
                continue;
            }
            on_event(&ev);
            if let Some(Body::Job(j)) = &ev.body {
                if j.terminal {
                    return Ok(j.clone());
                }
            }
        }
        Err(ClientError::Other("event stream ended".into()))
    }
}
