//! `GET /jobs` and `POST /jobs/{name}`: the job list for the admin page, and
//! running a job by hand (Clerk users with the trigger permission) or from
//! Cloud Scheduler / Cloud Tasks (allowed service accounts).

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;
use uuid::Uuid;

use super::{
    AppState, Error, dispatch_status,
    extract::{Authenticated, CanTrigger},
};
use crate::{
    auth::Principal,
    jobs::{DispatchError, RunSource},
    runner::{Outcome, RunRequest},
    runs::{DedupKey, RunRecord, RunStatus},
};

/// The header that makes a trigger idempotent.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

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
pub(super) fn payload_or_empty_object(bytes: Bytes) -> Bytes {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
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

/// The `Idempotency-Key` header, if sent: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Error> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = |message: &str| Error::BadRequest {
        code: "invalid_idempotency_key",
        message: format!("Idempotency-Key: {message}"),
    };
    if values.next().is_some() {
        return Err(bad("send it once"));
    }
    let key = value
        .to_str()
        .map_err(|_| bad("use 1 to 255 visible ASCII characters (a UUID is a good key)"))?;
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "use 1 to 255 visible ASCII characters (a UUID is a good key)",
        ));
    }
    Ok(Some(key.to_owned()))
}

/// The first run's answer to a repeat of its `Idempotency-Key`, with
/// `Idempotent-Replayed: true`: the same status and body as it got.
fn replay(job: &str, original_run_id: Uuid, original: Option<&RunRecord>) -> Response {
    let (status, body) = match original {
        Some(run) if run.status == RunStatus::Succeeded => {
            let mut body = json!({
                "run_id": run.run_id,
                "job": run.job,
                "status": "succeeded",
                "output": run.output,
                "duration_ms": run.duration_ms,
            });
            if run.output_truncated {
                body["output_truncated"] = json!(true);
            }
            (StatusCode::OK, body)
        }
        // Dead-lettered, or the record was pruned while its key was kept.
        other => (
            StatusCode::OK,
            json!({
                "run_id": original_run_id,
                "job": job,
                "status": other.map_or("succeeded", |r| r.status.as_str()),
                "output": other.and_then(|r| r.output.clone()),
                "duration_ms": other.and_then(|r| r.duration_ms),
            }),
        ),
    };
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

/// Runs job `name` with the request body as payload and answers with the
/// run. With an `Idempotency-Key` (per job and caller), a repeat answers the
/// first run's result without running again, or 409 while it still runs; a
/// failed run's key may run again.
///
/// Its fields go on the request's span (see `trace_request` in
/// [`crate::http`]): a run that succeeds logs one line, the request line.
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
    let key = idempotency_key(&headers)?;
    let source = match &*principal {
        Principal::Google(_) => RunSource::Service,
        Principal::Clerk(_) => RunSource::Manual,
    };
    let span = tracing::Span::current();
    span.record("job", name.as_str());
    span.record("principal", principal.kind());
    span.record("source", source.as_str());
    let payload = payload_or_empty_object(body);
    let digest = crate::runs::digest(&payload);
    let outcome = state
        .runner()
        .run(RunRequest {
            dedup: key
                .as_deref()
                .map(|k| DedupKey::manual(&name, principal.id(), k)),
            job: name.clone(),
            source,
            principal,
            message: None,
            event: None,
            attempt: attempt_from_headers(&headers),
            idempotency_key: key,
            payload,
        })
        .await?;
    let (run_id, result, duration_ms) = match outcome {
        Outcome::Ran {
            run_id,
            result,
            duration_ms,
        } => (run_id, result, duration_ms),
        Outcome::Duplicate {
            original_run_id,
            original,
            ..
        } => {
            if original
                .as_ref()
                .is_some_and(|o| o.payload_digest != digest)
            {
                return Err(Error::IdempotencyKeyReused {
                    run_id: original_run_id,
                });
            }
            tracing::info!(%original_run_id, "repeat of an Idempotency-Key: answering the first run's result");
            return Ok(replay(&name, original_run_id, original.as_deref()));
        }
        Outcome::InProgress {
            original_run_id,
            original,
            ..
        } => {
            if original
                .as_ref()
                .is_some_and(|o| o.payload_digest != digest)
            {
                return Err(Error::IdempotencyKeyReused {
                    run_id: original_run_id,
                });
            }
            return Err(Error::RunInProgress {
                run_id: original_run_id,
            });
        }
        // Manual keys carry no content digest, so the ledger never answers
        // this for them; if it did, it would mean a reused key.
        Outcome::Conflict {
            original_run_id, ..
        } => {
            return Err(Error::IdempotencyKeyReused {
                run_id: original_run_id,
            });
        }
    };
    match result {
        Ok(output) => {
            let output = output.to_value().map_err(|e| Error::Internal(e.into()))?;
            Ok(Json(json!({
                "run_id": run_id,
                "job": name,
                "status": "succeeded",
                "output": output,
                "duration_ms": duration_ms,
            }))
            .into_response())
        }
        // The payload did not fit the job (recorded `failed_permanent`):
        // answered as a plain client error.
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
