//! The operator portal, served by `coordinator serve --http ADDR`: the
//! Stacks overview, Stack Details with Put in Maintenance and Enable, the
//! Virtual Machines page (VFWs one click away), cloudspaces with Move VFW,
//! and jobs with live progress. Server-rendered HTML (`maud` templates,
//! which escape every spliced value) with a little JavaScript
//! (`/static/portal.js`), live updates by Server-Sent Events.
//!
//! Every action goes through [`crate::api::handle`] with the logged-in user,
//! exactly like the CLI, so permissions, validation, refusals and job
//! records are the API's. See [`auth`] for login, sessions and CSRF.
//!
//! Routes:
//! ```text
//! GET  /login, POST /login, POST /logout
//! GET  /                          Stacks (live)
//! GET  /stacks/{node}             Stack Details (live), Actions menu
//! POST /stacks/{node}/maintenance mode=move|stop, ack_vfw_downtime, csrf
//! POST /stacks/{node}/enable      csrf
//! POST /stacks/{node}/checks      start_failed=yes (optional), csrf
//! GET  /overview                  fleet overview: memory and VMs per stack, maintenance, jobs
//! GET  /vms?name=&node=&cloudspace=&kind=user|vfw&state=
//! GET  /cloudspaces, /cloudspaces/{cs}
//! POST /cloudspaces/{cs}/move-vfw to_node, csrf
//! GET  /jobs, /jobs/{id}          job view with live progress
//! GET  /rolling, /rolling/{id}    rolling runs, start form; one run's phases (live)
//! POST /rolling/start             node (repeated), max_unavailable, reboot=hook|continue,
//!                                 hook, checks_must_pass, reboot_timeout, deadline, csrf
//! POST /rolling/{id}/pause|resume|abort, /rolling/{id}/continue node, csrf
//! GET  /api/stacks[?node=], /api/jobs/{id}        JSON
//! GET  /events/stacks[?node=], /events/jobs, /events/jobs/{id}, /events/rolling/{id}   SSE
//! ```

mod actions;
mod assets;
pub mod auth;
mod checks;
pub mod guard;
pub mod html;
pub mod listen;
mod live;
mod overview;
mod pages;
mod rolling;
pub mod session;

pub use auth::{hash_password, verify_password};

use crate::server::Coordinator;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use nodemaint_proto::pb::{self, api_reply::Kind as Reply, api_request::Kind as Req, error::Code};
use std::net::SocketAddr;
use std::sync::Arc;

/// Shared state of the portal's handlers.
pub struct Portal {
    pub c: Arc<Coordinator>,
    pub sessions: session::Sessions,
    /// Failed logins per user name and address.
    pub throttle: guard::Throttle,
    /// Password checks running at once.
    pub verify_slots: tokio::sync::Semaphore,
    /// Cookies carry `Secure` (TLS here or at a proxy in front).
    pub secure: bool,
}

/// An API refusal as the portal shows it.
#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
}

impl ApiError {
    /// The HTTP status of a refusal: 404 unknown, 403 permission, 409 wrong
    /// state or conflict, 400 bad input, 503 unreachable node.
    pub fn status(&self) -> StatusCode {
        match self.code {
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::WrongState | Code::Conflict | Code::NoCapacity => StatusCode::CONFLICT,
            Code::InvalidArgument | Code::Malformed => StatusCode::BAD_REQUEST,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn page(&self, auth: Option<&auth::Auth>, title: &str) -> Response {
        html::error_page(auth, self.status(), title, &self.message)
    }
}

impl Portal {
    /// One API call on behalf of `user`, through the same handler as the CLI.
    pub async fn api(&self, user: &str, kind: Req) -> Result<Reply, ApiError> {
        let req = pb::ApiRequest {
            request_id: String::new(),
            user: user.to_string(),
            kind: Some(kind),
        };
        // A standby coordinator shows the fleet but must not change it.
        if req.is_mutating() && !self.c.leader.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ApiError {
                code: Code::Unavailable,
                message: "this coordinator is a standby (another one holds the leader lease); \
                          use the leader's portal"
                    .into(),
            });
        }
        let reply = crate::api::handle(&self.c, user, req).await;
        match reply.kind {
            Some(Reply::Error(e)) => Err(ApiError {
                code: e.code(),
                message: e.message,
            }),
            Some(k) => Ok(k),
            None => Err(ApiError {
                code: Code::Internal,
                message: "empty reply from the API".into(),
            }),
        }
    }
}

/// The portal's routes, ready to serve or to test with `oneshot`. Opens
/// (creating when missing) the sessions bucket.
pub async fn router(c: Arc<Coordinator>) -> anyhow::Result<Router> {
    let p = &c.cfg.portal;
    let body_timeout_s = p.body_timeout_s;
    let sessions = session::Sessions::open(
        &c.link.js,
        &c.link.subjects.portal_sessions_bucket(),
        c.cfg.nats_replicas,
        std::time::Duration::from_secs(p.session_idle_s.max(1)),
        std::time::Duration::from_secs(p.session_lifetime_s.max(1)),
    )
    .await?;
    let st = Arc::new(Portal {
        sessions,
        throttle: guard::Throttle::new(
            std::time::Duration::from_secs(p.login_window_s),
            p.login_failures_per_user,
            p.login_failures_per_address,
        ),
        verify_slots: tokio::sync::Semaphore::new(4),
        secure: p.secure_cookies || p.tls_cert.is_some(),
        c,
    });
    Ok(Router::new()
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/", get(pages::stacks))
        .route("/stacks/{node}", get(pages::stack))
        .route("/stacks/{node}/maintenance", post(actions::maintenance))
        .route("/stacks/{node}/enable", post(actions::enable))
        .route("/stacks/{node}/checks", post(checks::run))
        .route("/overview", get(overview::page))
        .route("/vms", get(pages::vms))
        .route("/vms/{vm}", get(pages::vm))
        .route("/vms/{vm}/start", post(actions::vm_start))
        .route("/vms/{vm}/stop", post(actions::vm_stop))
        .route("/vms/{vm}/move", post(actions::vm_move))
        .route("/cloudspaces", get(pages::cloudspaces))
        .route("/cloudspaces/{cs}", get(pages::cloudspace))
        .route("/cloudspaces/{cs}/move-vfw", post(actions::move_vfw))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/{id}", get(pages::job))
        .route("/jobs/{id}/abort", post(actions::abort))
        .route("/rolling", get(rolling::list))
        .route("/rolling/start", post(rolling::start))
        .route("/rolling/{id}", get(rolling::show))
        .route("/rolling/{id}/{action}", post(rolling::control))
        .route("/events/rolling/{id}", get(rolling::sse))
        .route("/api/stacks", get(live::stacks_json))
        .route("/api/jobs/{id}", get(live::job_json))
        .route("/events/stacks", get(live::stacks_sse))
        .route("/events/jobs", get(live::jobs_sse))
        .route("/events/jobs/{id}", get(live::job_sse))
        .route("/static/portal.css", get(assets::css))
        .route("/static/portal.js", get(assets::js))
        .fallback(pages::not_found)
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn_with_state(
            std::time::Duration::from_secs(body_timeout_s.max(1)),
            listen::body_deadline,
        ))
        .with_state(st))
}

/// Scripts and styles from the portal only, no framing, no sniffing.
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    res
}

/// Serves the portal on `addr` until the process ends.
pub async fn serve(c: Arc<Coordinator>, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("portal: cannot listen on {addr}: {e}"))?;
    serve_on(c, listener).await
}

/// Serves the portal on a bound listener (so a caller can fail fast on a
/// busy port, or bind port 0), with the timeouts, connection limit and TLS
/// of the coordinator's `[portal]` config.
pub async fn serve_on(
    c: Arc<Coordinator>,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    start(c, listener).await?.await
}

/// Everything that can fail at start (the sessions bucket, the TLS
/// certificate and key) done; the returned future serves.
pub async fn start(
    c: Arc<Coordinator>,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>>> {
    let cfg = c.cfg.portal.clone();
    let tls = listen::tls_of(&cfg)?;
    let app = router(c).await?;
    Ok(async move { listen::serve_with(app, listener, &cfg, tls).await })
}
