//! `GET /auth/whoami`: the verified principal, the first thing to check when
//! an audience or an authorized party is wrong.

use axum::{Json, extract::State};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState,
    extract::Authenticated,
    openapi::responses::{BadRequest, Forbidden, Unauthorized, Unavailable},
};
use crate::auth::Principal;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(whoami))
}

/// Who called, and whether it may trigger jobs.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Whoami {
    /// The verified caller.
    #[schema(value_type = Principal)]
    principal: std::sync::Arc<Principal>,
    /// Whether it may run jobs (`POST /jobs/{name}`).
    can_trigger: bool,
    /// The permission that lets Clerk users run jobs (`TRIGGER_PERMISSION`).
    trigger_permission: String,
    /// Why it may not, when it may not.
    #[serde(skip_serializing_if = "Option::is_none")]
    trigger_denied_reason: Option<String>,
}

/// The caller, and whether (and why not) it may trigger jobs.
#[utoipa::path(
    get,
    path = "/auth/whoami",
    tag = "auth",
    operation_id = "whoami",
    security(("clerk_session" = []), ("google_oidc" = [])),
    responses(
        (status = 200, description = "The verified caller: a Clerk user or a Google service identity.", body = Whoami),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ),
)]
#[tracing::instrument(skip_all, fields(principal = %principal.kind()))]
async fn whoami(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Json<Whoami> {
    let trigger = principal.check_trigger(&state.config.trigger);
    let trigger_denied_reason = match &trigger {
        Err(crate::auth::AuthError::InsufficientScope(reason)) => Some(reason.clone()),
        _ => None,
    };
    Json(Whoami {
        can_trigger: trigger.is_ok(),
        principal,
        trigger_permission: state.config.trigger.permission.clone(),
        trigger_denied_reason,
    })
}
