//! Liveness and readiness, without authentication.
//!
//! `/healthz` answers as long as the process serves. `/readyz` answers 200
//! only when signing keys are loaded for every configured issuer and the run
//! ledger answers, so a load balancer or an operator sees why pushes would be
//! nacked.

use std::{collections::BTreeMap, time::Duration};

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{AppState, error::retry_after};
use crate::{
    auth::{keys::KeyCacheStats, token_cache::TokenCacheStats},
    runs::RunQuery,
};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Health {
    /// Always `ok`.
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
}

/// `GET /readyz`: whether this instance can take work, and why not.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Readiness {
    /// Keys are loaded for every configured issuer and the ledger answers.
    ready: bool,
    /// The key cache of each configured issuer (`google`, `clerk`).
    issuers: BTreeMap<&'static str, KeyCacheStats>,
    /// Whether the run ledger answered.
    store: StoreProbe,
    /// The verified-token cache's counters, when it is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    token_cache: Option<TokenCacheStats>,
}

/// The run ledger's answer to a probe.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct StoreProbe {
    /// It answered within 2 s.
    reachable: bool,
    /// It did not answer in time.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    timed_out: bool,
}

/// The process is up and serving.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "healthz",
    responses((status = 200, description = "The process is serving.", body = Health)),
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Ready when every configured issuer has usable signing keys and the run
/// ledger answers within 2 s. The body also carries the key caches' and the
/// token cache's counters (no secrets: counts only), which the benchmark reads.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready: keys loaded for every issuer, the ledger answers.", body = Readiness),
        (status = 503, description = "Not ready: the body says which part is missing.", body = Readiness,
            headers(("Retry-After" = u32, description = "Seconds to wait before asking again."))),
    ),
)]
async fn readyz(State(state): State<AppState>) -> Response {
    let mut ready = true;
    let mut issuers = BTreeMap::new();
    if let Some(g) = state.auth.google() {
        let stats = g.keys().stats();
        ready &= stats.loaded;
        issuers.insert("google", stats);
    }
    if let Some(c) = state.auth.clerk() {
        let stats = c.keys().stats();
        ready &= stats.loaded;
        issuers.insert("clerk", stats);
    }
    let probe = RunQuery {
        limit: 1,
        ..RunQuery::default()
    };
    let store = match tokio::time::timeout(Duration::from_secs(2), state.runs.list(probe)).await {
        Ok(Ok(_)) => StoreProbe {
            reachable: true,
            timed_out: false,
        },
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the run ledger is unreachable");
            StoreProbe {
                reachable: false,
                timed_out: false,
            }
        }
        Err(_) => StoreProbe {
            reachable: false,
            timed_out: true,
        },
    };
    ready &= store.reachable;
    let body = Json(Readiness {
        ready,
        issuers,
        store,
        token_cache: state.auth.token_cache().map(|cache| cache.stats()),
    });
    if ready {
        (StatusCode::OK, body).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, retry_after())],
            body,
        )
            .into_response()
    }
}
