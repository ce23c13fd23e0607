//! Liveness and readiness, without authentication.

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::{Value, json};

use super::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// The process is up and serving.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when every configured issuer has usable signing keys. The body also
/// carries the key caches' and the token cache's counters (no secrets: counts
/// only), which the benchmark reads.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let mut ready = true;
    let mut issuers = serde_json::Map::new();
    if let Some(g) = state.auth.google() {
        let stats = g.keys().stats();
        ready &= stats.loaded;
        issuers.insert("google".into(), json!(stats));
    }
    if let Some(c) = state.auth.clerk() {
        let stats = c.keys().stats();
        ready &= stats.loaded;
        issuers.insert("clerk".into(), json!(stats));
    }
    let mut body = json!({ "ready": ready, "issuers": issuers });
    if let Some(cache) = state.auth.token_cache() {
        body["token_cache"] = json!(cache.stats());
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
