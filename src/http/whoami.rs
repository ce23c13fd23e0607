//! `GET /auth/whoami`: the verified principal, the first thing to check when
//! an audience or an authorized party is wrong.

use axum::{Json, Router, extract::State, routing::get};
use serde_json::{Value, json};

use super::{AppState, extract::Authenticated};

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/auth/whoami", get(whoami))
}

/// The caller, and whether (and why not) it may trigger jobs.
#[tracing::instrument(skip_all, fields(principal = %principal.kind()))]
async fn whoami(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Json<Value> {
    let trigger = principal.check_trigger(&state.config.trigger);
    let mut body = json!({
        "principal": &*principal,
        "can_trigger": trigger.is_ok(),
        "trigger_permission": state.config.trigger.permission,
    });
    if let Err(crate::auth::AuthError::InsufficientScope(reason)) = trigger {
        body["trigger_denied_reason"] = json!(reason);
    }
    Json(body)
}
