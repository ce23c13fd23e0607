//! `GET /jobs` and `POST /jobs/{name}`: the job list for the admin page, and
//! running a job by hand (Clerk users with the trigger permission) or from
//! Cloud Scheduler / Cloud Tasks (allowed service accounts).

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    AppState, Error, dispatch_status,
    error::{RunFailure, retry_after},
    extract::{Authenticated, CanTrigger},
    openapi::responses::{
        BadRequest, Forbidden, NotFound, PayloadTooLarge, RunConflict, RunPanicked, RunTimedOut,
        RunUnavailable, RunUnprocessable, Unauthorized, Unavailable,
    },
};
use crate::{
    auth::Principal,
    jobs::{DispatchError, JobInfo, RunSource},
    runner::{Outcome, RunRequest},
    runs::{DedupKey, RunRecord, RunStatus},
};

/// The header that makes a trigger idempotent.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The path of the trigger, whose documented operation is the template of
/// each job's own (see [`super::openapi`]).
pub(super) const TRIGGER_PATH: &str = "/jobs/{name}";

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(trigger))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::pubsub::MAX_BODY_BYTES,
        ))
}

/// `GET /jobs`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct JobList {
    /// The jobs, sorted by name.
    jobs: Vec<JobInfo>,
}

/// A run's answer to `POST /jobs/{name}`: its output, or on a repeat of an
/// `Idempotency-Key`, the first run's.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RunResult {
    /// The run (the first run's, on a repeat).
    run_id: Uuid,
    /// The job.
    job: String,
    /// `succeeded`; on a repeat, the first run's status (`dead_lettered`
    /// is done too).
    status: RunStatus,
    /// What the job returned; `null` on a repeat whose record no longer
    /// holds it.
    #[schema(value_type = Option<serde_json::Value>)]
    output: Option<serde_json::Value>,
    /// How long the job took.
    duration_ms: Option<u64>,
    /// On a repeat: the output was left out of the record for its size.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[schema(value_type = Option<bool>)]
    output_truncated: bool,
}

/// The jobs, with their descriptions and payload schemas.
#[utoipa::path(
    get,
    path = "/jobs",
    tag = "jobs",
    operation_id = "list_jobs",
    security(("clerk_session" = []), ("google_oidc" = [])),
    responses(
        (status = 200, description = "Every job, with its description and the JSON Schema of its payload (and of its output, when it declares one).", body = JobList),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ),
)]
#[tracing::instrument(skip_all, fields(principal = %principal.kind()))]
async fn list(State(state): State<AppState>, Authenticated(principal): Authenticated) -> Response {
    Json(JobList {
        jobs: state.jobs.list(),
    })
    .into_response()
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
    let body = match original {
        Some(run) if run.status == RunStatus::Succeeded => RunResult {
            run_id: run.run_id,
            job: run.job.clone(),
            status: RunStatus::Succeeded,
            output: run
                .output
                .as_ref()
                .and_then(|o| serde_json::to_value(o).ok()),
            duration_ms: run.duration_ms,
            output_truncated: run.output_truncated,
        },
        // Dead-lettered, or the record was pruned while its key was kept.
        other => RunResult {
            run_id: original_run_id,
            job: job.to_owned(),
            status: other.map_or(RunStatus::Succeeded, |r| r.status),
            output: other
                .and_then(|r| r.output.as_ref())
                .and_then(|o| serde_json::to_value(o).ok()),
            duration_ms: other.and_then(|r| r.duration_ms),
            output_truncated: false,
        },
    };
    let mut response = (StatusCode::OK, Json(body)).into_response();
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
///
/// The document gives this operation once per registered job, as `POST
/// /jobs/<job>` with that job's payload and output schemas.
#[utoipa::path(
    post,
    path = "/jobs/{name}",
    tag = "jobs",
    operation_id = "trigger",
    summary = "Run a job",
    description = "Runs the job with the request body as payload and answers once it has finished, with its output. People need `TRIGGER_PERMISSION` (or a `TRIGGER_ROLES` role); allowed service accounts (Cloud Scheduler, Cloud Tasks) may too. With an `Idempotency-Key`, a repeat answers the first run's result without running again (409 while it runs); a failed run's key may run again.",
    params(
        ("name" = String, Path, description = "The job."),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
            description = "Makes the trigger idempotent, per job and caller: a repeat answers the first run's result (with `Idempotent-Replayed: true`) without running again, or 409 while it runs. 1 to 255 visible ASCII characters (a UUID is a good key)."),
        ("X-CloudTasks-TaskRetryCount" = Option<u32>, Header, nullable = false,
            description = "Sent by Cloud Tasks: the retry count, recorded as the attempt (one more)."),
    ),
    request_body(content = serde_json::Value, content_type = "application/json",
        description = "The job's payload (an empty body is `{}`)."),
    security(("clerk_session" = []), ("google_oidc" = [])),
    responses(
        (status = 200, description = "The job ran and succeeded (or, on a repeat of an `Idempotency-Key`, the first run's result).", body = RunResult,
            headers(("Idempotent-Replayed" = String, description = "`true` on a repeat of an `Idempotency-Key`: the first run's answer, not run again."))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = RunConflict),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = RunUnprocessable),
        (status = 500, response = RunPanicked),
        (status = 503, response = RunUnavailable),
        (status = 504, response = RunTimedOut),
    ),
)]
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
            rerun_of: None,
        })
        .await?;
    answer(name, digest, outcome)
}

/// The answer to a manual run (`POST /jobs/{name}`, and the re-run of a
/// recorded one) whose payload had `digest`.
pub(super) fn answer(
    name: String,
    digest: crate::runs::PayloadDigest,
    outcome: Outcome,
) -> Result<Response, Error> {
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
            Ok(Json(RunResult {
                run_id,
                job: name,
                status: RunStatus::Succeeded,
                output: Some(output),
                duration_ms: Some(duration_ms),
                output_truncated: false,
            })
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
                DispatchError::Cancelled => (
                    "cancelled",
                    "the run was cancelled on request before the job finished".to_owned(),
                ),
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
            let mut response = (
                status,
                Json(RunFailure {
                    run_id,
                    job: name,
                    status: run_status,
                    error: e.kind(),
                    message,
                    duration_ms,
                }),
            )
                .into_response();
            if status == StatusCode::SERVICE_UNAVAILABLE {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, retry_after());
            }
            Ok(response)
        }
    }
}
