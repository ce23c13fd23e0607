//! `GET /jobs` and `POST /jobs/{name}`: the job list for the admin page, and
//! running a job by hand (Clerk users with the trigger permission) or from
//! Cloud Scheduler / Cloud Tasks (allowed service accounts).

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{AppState, Error, dispatch_status};
use crate::{
    auth::{Authenticated, CanTrigger, Principal},
    jobs::{DispatchError, JobContext, RunSource},
};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs", get(list))
        .route("/jobs/{name}", post(trigger))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::pubsub::MAX_BODY_BYTES,
        ))
}

/// The jobs, with their descriptions and payload schemas.
#[tracing::instrument(skip_all, fields(principal = %principal.kind()))]
async fn list(State(state): State<AppState>, Authenticated(principal): Authenticated) -> Response {
    Json(json!({ "jobs": state.jobs.list() })).into_response()
}

/// Maps a body rejection to our error (413 for an oversized body).
pub(super) fn body_error(rejection: BytesRejection) -> Error {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::PayloadTooLarge(crate::pubsub::MAX_BODY_BYTES)
    } else {
        Error::BadBody
    }
}

/// The payload bytes to decode: an empty body means `{}`.
pub(super) fn payload_or_empty_object(bytes: &[u8]) -> &[u8] {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    }
}

/// Cloud Tasks' retry count, as a 1-based attempt.
fn attempt_from_headers(headers: &HeaderMap) -> u32 {
    headers
        .get("x-cloudtasks-taskretrycount")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(1, |n| n.saturating_add(1))
}

/// Runs job `name` with the request body as payload and answers with the run.
#[tracing::instrument(skip_all, fields(job = %name, principal = %principal.kind(), source, run_id))]
async fn trigger(
    State(state): State<AppState>,
    Path(name): Path<String>,
    CanTrigger(principal): CanTrigger,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    if !state.jobs.contains(&name) {
        return Err(DispatchError::UnknownJob(name).into());
    }
    let body = body.map_err(body_error)?;
    let run_id = Uuid::now_v7();
    let source = match principal {
        Principal::Google(_) => RunSource::Service,
        Principal::Clerk(_) => RunSource::Manual,
    };
    let span = tracing::Span::current();
    span.record("run_id", tracing::field::display(run_id));
    span.record("source", source.as_str());
    let ctx = JobContext {
        run_id,
        source,
        principal: Arc::new(principal),
        message: None,
        attempt: attempt_from_headers(&headers),
        cancel: CancellationToken::new(),
    };
    let started = Instant::now();
    let result = state
        .jobs
        .dispatch(
            &name,
            payload_or_empty_object(&body),
            ctx,
            state.config.job_timeout,
        )
        .await;
    let duration_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(output) => {
            tracing::info!(duration_ms, "job succeeded");
            Ok(Json(json!({
                "run_id": run_id,
                "job": name,
                "status": "succeeded",
                "output": output,
                "duration_ms": duration_ms,
            }))
            .into_response())
        }
        // Nothing ran: answer as a plain client error.
        Err(
            e @ (DispatchError::UnknownJob(_)
            | DispatchError::NotJson { .. }
            | DispatchError::InvalidPayload { .. }),
        ) => Err(e.into()),
        Err(e) => {
            let status = dispatch_status(&e);
            let (run_status, message) = match &e {
                DispatchError::Permanent(text) => ("failed_permanent", text.clone()),
                DispatchError::Timeout(_) => ("timed_out", "the job timed out".to_owned()),
                DispatchError::Panicked => ("panicked", "internal error".to_owned()),
                _ => (
                    "failed_transient",
                    "the job failed with a transient error; retry later".to_owned(),
                ),
            };
            if status.is_server_error() {
                tracing::warn!(error = %e, duration_ms, "job failed");
            } else {
                tracing::info!(error = %e, duration_ms, "job failed permanently");
            }
            Ok((
                status,
                Json(json!({
                    "run_id": run_id,
                    "job": name,
                    "status": run_status,
                    "error": e.kind(),
                    "message": message,
                    "duration_ms": duration_ms,
                })),
            )
                .into_response())
        }
    }
}
