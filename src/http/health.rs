//! Liveness and readiness, without authentication.
//!
//! `/healthz` answers as long as the process serves. `/readyz` answers 200
//! only when signing keys are loaded for every configured issuer and the run
//! ledger answers, so a load balancer or an operator sees why pushes would be
//! nacked.

use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::{Value, json};

use super::AppState;
use crate::runs::RunQuery;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// The process is up and serving.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when every configured issuer has usable signing keys and the run
/// ledger answers within 2 s. The body also carries the key caches' and the
/// token cache's counters (no secrets: counts only), which the benchmark reads.
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
    let probe = RunQuery {
        limit: 1,
        ..RunQuery::default()
    };
    let store = match tokio::time::timeout(Duration::from_secs(2), state.runs.list(probe)).await {
        Ok(Ok(_)) => json!({ "reachable": true }),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the run ledger is unreachable");
            json!({ "reachable": false })
        }
        Err(_) => json!({ "reachable": false, "timed_out": true }),
    };
    ready &= store["reachable"] == true;
    let mut body = json!({ "ready": ready, "issuers": issuers, "store": store });
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
