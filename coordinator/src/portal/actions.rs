//! The actions: each checks the session's CSRF token, then makes exactly
//! the API request the CLI would make, as the logged-in user. Accepted:
//! 303 to the job view. Refused: the API's message with a status code that
//! says why (404, 403, 409, 400, 503), and nothing changed.

use super::auth::Auth;
use super::Portal;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use nodemaint_proto::pb::{self, api_reply::Kind as Reply, api_request::Kind as Req};
use serde::Deserialize;
use std::sync::Arc;

fn accepted(reply: Reply, to: fn(&str) -> String) -> Response {
    match reply {
        Reply::Accepted(a) => Redirect::to(&to(&a.op_id)).into_response(),
        other => super::html::error_page(
            None,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Unexpected reply",
            &format!("unexpected API reply {other:?}"),
        ),
    }
}

/// Sends `req` as the logged-in user: accepted, 303 to its job; refused,
/// the API's message under the title `refused`.
pub(super) async fn submit(st: &Portal, auth: &Auth, req: Req, refused: &str) -> Response {
    submit_to(st, auth, req, refused, |id| {
        format!("/jobs/{}", super::html::url(id))
    })
    .await
}

/// [`submit`], accepted: 303 to `to(job id)` (a page made for that job).
pub(super) async fn submit_to(
    st: &Portal,
    auth: &Auth,
    req: Req,
    refused: &str,
    to: fn(&str) -> String,
) -> Response {
    match st.api(&auth.user, req).await {
        Ok(r) => accepted(r, to),
        Err(e) => e.page(Some(auth), refused),
    }
}

#[derive(Deserialize, Default)]
pub struct MaintenanceForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    ack_vfw_downtime: Option<String>,
    #[serde(default)]
    max_parallel: Option<String>,
}

pub async fn maintenance(
    State(st): State<Arc<Portal>>,
    auth: Auth,
    Path(node): Path<String>,
    Form(f): Form<MaintenanceForm>,
) -> Response {
    if let Err(r) = auth.check_csrf(&f.csrf) {
        return r;
    }
    use pb::start_maintenance::Mode;
    let mode = match f.mode.as_str() {
        "move" => Mode::Move,
        "stop" => Mode::Stop,
        // The API names the choices.
        _ => Mode::Unspecified,
    };
    let max_parallel = match f.max_parallel.as_deref().map(str::trim) {
        None | Some("") => 0,
        Some(s) => match s.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                return super::html::error_page(
                    Some(&auth),
                    StatusCode::BAD_REQUEST,
                    "Maintenance refused",
                    &format!("max_parallel {s:?} is not a number"),
                )
            }
        },
    };
    let ack = matches!(
        f.ack_vfw_downtime.as_deref(),
        Some("yes" | "on" | "true" | "1")
    );
    submit(
        &st,
        &auth,
        Req::StartMaintenance(pb::StartMaintenance {
            node,
            mode: mode as i32,
            ack_vfw_downtime: ack,
            max_parallel,
            ..Default::default()
        }),
        "Maintenance refused",
    )
    .await
}

pub async fn enable(
    State(st): State<Arc<Portal>>,
    auth: Auth,
    Path(node): Path<String>,
    Form(f): Form<super::auth::CsrfForm>,
) -> Response {
    if let Err(r) = auth.check_csrf(&f.csrf) {
        return r;
    }
    submit(
        &st,
        &auth,
        Req::EnableNode(pb::EnableNode { node }),
        "Enable refused",
    )
    .await
}

pub async fn abort(
    State(st): State<Arc<Portal>>,
    auth: Auth,
    Path(id): Path<String>,
    Form(f): Form<super::auth::CsrfForm>,
) -> Response {
    if let Err(r) = auth.check_csrf(&f.csrf) {
        return r;
    }
    submit(
        &st,
        &auth,
        Req::AbortJob(pb::AbortJob { job_id: id }),
        "Abort refused",
    )
    .await
}

#[derive(Deserialize, Default)]
pub struct MoveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    to_node: String,
}

pub async fn move_vfw(
    State(st): State<Arc<Portal>>,
    auth: Auth,
    Path(cloudspace): Path<String>,
    Form(f): Form<MoveForm>,
) -> Response {
    if let Err(r) = auth.check_csrf(&f.csrf) {
        return r;
    }
    if f.to_node.is_empty() {
        return super::html::error_page(
            Some(&auth),
            StatusCode::BAD_REQUEST,
            "Move VFW refused",
            "choose the stack to move the VFW to",
        );
    }
    submit(
        &st,
        &auth,
        Req::MoveVfw(pb::MoveVfw {
            cloudspace,
            to_node: f.to_node,
            timeout_s: 0,
        }),
        "Move VFW refused",
    )
    .await
}

pub async fn vm_start(
    State(st): State<Arc<Portal>>,
    auth: Auth,
    Path(vm): Path<String>,
    Form(f): Form<super::auth::CsrfForm>,
) -> Response {
    if let Err(r) = auth.check_csrf(&f.csrf) {
        return r;
    }
    let req = Req::StartVm(pb::VmAction {
        vm,
        graceful_timeout_s: 0,
    });
    submit(&st, &auth, req, "Start refused").await
}

#[derive(Deserialize, Default)]
pub struct StopForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: Option<String>,
}

/// Stopping a tenant's VM is confirmed, as the CLI's dialogs are: without
/// the box ticked nothing is sent.
pub async fn vm_stop(
    State(st): State<Arc<Portal>>,
    auth: Auth,
    Path(vm): Path<String>,
    Form(f): Form<StopForm>,
) -> Response {
    if let Err(r) = auth.check_csrf(&f.csrf) {
        return r;
    }
    if f.confirm.as_deref() != Some("yes") {
        return super::html::error_page(
            Some(&auth),
            StatusCode::BAD_REQUEST,
            "Stop refused",
            &format!("confirm the stop of {vm} (tick the box): nothing was sent"),
        );
    }
    let req = Req::StopVm(pb::VmAction {
        vm,
        graceful_timeout_s: 0,
    });
    submit(&st, &auth, req, "Stop refused").await
}

pub async fn vm_move(
    State(st): State<Arc<Portal>>,
    auth: Auth,
    Path(vm): Path<String>,
    Form(f): Form<MoveForm>,
) -> Response {
    if let Err(r) = auth.check_csrf(&f.csrf) {
        return r;
    }
    if f.to_node.is_empty() {
        return super::html::error_page(
            Some(&auth),
            StatusCode::BAD_REQUEST,
            "Move refused",
            "choose the stack to move the VM to",
        );
    }
    let req = Req::MoveVm(pb::MoveVm {
        vm,
        to_node: f.to_node,
        timeout_s: 0,
        max_speed_mibs: 0,
        converge: None,
    });
    submit(&st, &auth, req, "Move refused").await
}
