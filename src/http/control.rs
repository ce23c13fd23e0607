//! Run control, for Clerk users with the trigger permission
//! ([`CanControlRuns`]); each action is recorded with who did it.
//!
//! - `POST /runs/{id}/cancel`: marks a running run in the ledger and fires
//!   its job's token, here at once or on the instance running it within
//!   [`crate::runner::CANCEL_POLL`]. 202 with the run as marked; it ends
//!   `cancelled` unless its job finishes first. A cancelled push is acked.
//! - `POST /runs/{id}/rerun`: runs the recorded payload again as a new
//!   manual run that carries `rerun_of`, answered as `POST /jobs/{name}`
//!   is; 409 `payload_not_kept` when the payload was over the cap.
//! - `POST /runs/rerun`: re-runs the runs a filter matches (or the ones
//!   selected), at most `limit`, [`RERUN_CONCURRENCY`] at a time, in a task
//!   of its own: 202 with a `bulk_id` and the count. `GET
//!   /runs/rerun/{bulk_id}` reads its progress on the instance that took it.

use std::sync::{Arc, Mutex, PoisonError};

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::JsonRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    AppState, Error,
    extract::{CanControlRuns, CanViewRuns},
    jobs::answer,
    openapi::responses::{
        BadRequest, Conflict, Forbidden, NotFound, RunConflict, RunPanicked, RunTimedOut,
        RunUnavailable, RunUnprocessable, Unauthorized, Unavailable,
    },
    runs::{invalid, rfc3339, run_id, source, statuses},
    state::RerunProgress,
};
use crate::{
    auth::Principal,
    jobs::{DispatchError, RunSource},
    runner::{Outcome, RunRequest},
    runs::{CancelRequest, RunPrincipal, RunQuery, RunRecord, now_micros},
};

/// How many runs of one bulk re-run run at once.
pub const RERUN_CONCURRENCY: usize = 4;
/// Most runs one bulk re-run takes.
pub const MAX_RERUN: usize = 200;
/// Runs a bulk re-run takes when it names no `limit`.
const DEFAULT_RERUN: usize = 50;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(cancel))
        .routes(routes!(rerun_one))
        .routes(routes!(rerun_many))
        .routes(routes!(rerun_progress))
}

/// Asks a running run to stop.
#[utoipa::path(
    post,
    path = "/runs/{id}/cancel",
    tag = "runs",
    operation_id = "cancel_run",
    params(("id" = Uuid, Path, description = "The run's id (`run_id`).")),
    security(("clerk_session" = [])),
    responses(
        (status = 202, description = "The run is marked as asked to stop (`cancel_requested_at`, `cancelled_by`); its job's token fires, and the run ends `cancelled` unless the job finishes first.", body = RunRecord),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    ),
)]
#[tracing::instrument(skip_all, fields(principal = %principal.kind(), run_id = %id))]
async fn cancel(
    State(state): State<AppState>,
    CanControlRuns(principal): CanControlRuns,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let run_id = run_id(&id)?;
    match state
        .runs
        .request_cancel(run_id, RunPrincipal::from(&*principal))
        .await?
    {
        CancelRequest::NotFound => Err(Error::NotFound(format!("no run {run_id}"))),
        CancelRequest::NotRunning(run) => Err(Error::RunNotRunning {
            run_id,
            status: run.status,
        }),
        CancelRequest::Requested(run) => {
            let here = state.control.cancel(run_id);
            tracing::info!(
                here,
                "cancel requested (the instance running it stops it within its poll)"
            );
            Ok((StatusCode::ACCEPTED, Json(*run)).into_response())
        }
    }
}

/// The recorded payload of `run`, to run again.
fn kept_payload(run: &RunRecord) -> Option<Bytes> {
    run.payload
        .as_ref()
        .map(|p| Bytes::copy_from_slice(p.as_str().as_bytes()))
}

/// Runs `run`'s job again on its recorded payload, as a manual run by
/// `principal`.
async fn rerun(
    state: &AppState,
    principal: Arc<Principal>,
    run: &RunRecord,
    payload: Bytes,
) -> Result<Outcome, Error> {
    Ok(state
        .runner()
        .run(RunRequest {
            job: run.job.clone(),
            source: RunSource::Manual,
            principal,
            message: None,
            event: None,
            attempt: 1,
            idempotency_key: None,
            dedup: None,
            payload,
            rerun_of: Some(run.run_id),
        })
        .await?)
}

/// Runs a recorded run's payload again, as a new manual run.
#[utoipa::path(
    post,
    path = "/runs/{id}/rerun",
    tag = "runs",
    operation_id = "rerun_run",
    summary = "Run a recorded run again",
    description = "Runs the job of run `id` again on its recorded payload, as a new manual run that carries `rerun_of`, and answers as `POST /jobs/{name}` does once it has finished. 409 `payload_not_kept` when the payload was not kept (over `RUN_PAYLOAD_CAP_BYTES`).",
    params(("id" = Uuid, Path, description = "The run to run again (`run_id`).")),
    security(("clerk_session" = [])),
    responses(
        (status = 200, description = "The new run succeeded: its id, job and output, as `POST /jobs/{name}` answers.", body = super::jobs::RunResult),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = RunConflict),
        (status = 422, response = RunUnprocessable),
        (status = 500, response = RunPanicked),
        (status = 503, response = RunUnavailable),
        (status = 504, response = RunTimedOut),
    ),
)]
async fn rerun_one(
    State(state): State<AppState>,
    CanControlRuns(principal): CanControlRuns,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let original = run_id(&id)?;
    let span = tracing::Span::current();
    span.record("principal", principal.kind());
    span.record("source", RunSource::Manual.as_str());
    let Some(run) = state.runs.get(original).await? else {
        return Err(Error::NotFound(format!("no run {original}")));
    };
    if !state.jobs.contains(&run.job) {
        return Err(DispatchError::UnknownJob(run.job).into());
    }
    span.record("job", run.job.as_str());
    let Some(payload) = kept_payload(&run) else {
        return Err(Error::PayloadNotKept { run_id: original });
    };
    let digest = crate::runs::digest(&payload);
    let outcome = rerun(&state, principal, &run, payload).await?;
    tracing::info!(rerun_of = %original, "re-ran a recorded run");
    answer(run.job, digest, outcome)
}

/// What `POST /runs/rerun` re-runs: the runs selected, or those a filter
/// matches, newest first.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RerunFilter {
    /// Exactly these runs (the admin page's selection), at most 200; the
    /// other fields narrow them further.
    #[schema(max_items = 200)]
    run_ids: Option<Vec<Uuid>>,
    /// Only runs of this job.
    #[schema(max_length = 200)]
    job: Option<String>,
    /// Only runs with one of these statuses.
    #[schema(value_type = Option<Vec<crate::runs::RunStatus>>)]
    status: Option<Vec<String>>,
    /// Only runs from this source.
    #[schema(value_type = Option<RunSource>)]
    source: Option<String>,
    /// Only runs started at or after this RFC 3339 time.
    #[schema(format = DateTime)]
    since: Option<String>,
    /// Only runs started before this RFC 3339 time.
    #[schema(format = DateTime)]
    until: Option<String>,
    /// At most this many runs (1 to 200, default 50), newest first.
    #[schema(minimum = 1, maximum = 200)]
    limit: Option<usize>,
}

impl RerunFilter {
    /// The ledger query, once checked.
    fn query(&self) -> Result<RunQuery, Error> {
        let limit = self.limit.unwrap_or(DEFAULT_RERUN);
        if !(1..=MAX_RERUN).contains(&limit) {
            return Err(invalid(format!("limit must be from 1 to {MAX_RERUN}")));
        }
        if self
            .run_ids
            .as_ref()
            .is_some_and(|ids| ids.len() > MAX_RERUN)
        {
            return Err(invalid(format!("run_ids takes at most {MAX_RERUN} runs")));
        }
        if self.run_ids.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid(
                "run_ids is empty: select at least one run".to_owned(),
            ));
        }
        if self.run_ids.is_none()
            && self.job.is_none()
            && self.status.is_none()
            && self.source.is_none()
        {
            return Err(invalid(
                "name the runs to re-run: run_ids, or a filter with at least one of job, status and source"
                    .to_owned(),
            ));
        }
        if self.job.as_ref().is_some_and(|j| j.len() > 200) {
            return Err(invalid("job must be at most 200 characters".to_owned()));
        }
        let status = match &self.status {
            Some(names) if names.is_empty() => {
                return Err(invalid(
                    "status is empty: name at least one status, or leave it out".to_owned(),
                ));
            }
            Some(names) => statuses(&names.join(","))?,
            None => Vec::new(),
        };
        let source = self.source.as_deref().map(source).transpose()?;
        let since = self
            .since
            .as_deref()
            .map(|v| rfc3339("since", v))
            .transpose()?;
        let until = self
            .until
            .as_deref()
            .map(|v| rfc3339("until", v))
            .transpose()?;
        if let (Some(since), Some(until)) = (since, until)
            && since >= until
        {
            return Err(invalid("since must be before until".to_owned()));
        }
        Ok(RunQuery {
            job: self.job.clone(),
            status,
            source,
            // A selection is taken whole (at most MAX_RERUN).
            limit: self.run_ids.as_ref().map_or(limit, |ids| ids.len().max(1)),
            since,
            until,
            run_ids: self.run_ids.clone().unwrap_or_default(),
            ..RunQuery::default()
        })
    }
}

/// `POST /runs/rerun`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RerunStarted {
    /// Read the progress at `GET /runs/rerun/{bulk_id}`.
    bulk_id: Uuid,
    /// How many runs matched: each is re-run once.
    matched: u64,
}

/// Re-runs the runs selected, or those a filter matches.
#[utoipa::path(
    post,
    path = "/runs/rerun",
    tag = "runs",
    operation_id = "rerun_runs",
    summary = "Re-run many runs",
    description = "Re-runs the runs named in `run_ids`, or the newest `limit` runs a filter matches (at least one of job, status and source), each once on its recorded payload as a new manual run with `rerun_of`, a few at a time. Answers at once with the count; the progress is at `GET /runs/rerun/{bulk_id}` on the same instance. Runs whose payload was not kept are skipped.",
    request_body(content = RerunFilter, content_type = "application/json"),
    security(("clerk_session" = [])),
    responses(
        (status = 202, description = "Started: the id to read its progress by, and how many runs matched.", body = RerunStarted,
            headers(("Location" = String, description = "`/runs/rerun/{bulk_id}`, its progress."))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ),
)]
#[tracing::instrument(skip_all, fields(principal = %principal.kind()))]
async fn rerun_many(
    State(state): State<AppState>,
    CanControlRuns(principal): CanControlRuns,
    body: Result<Json<RerunFilter>, JsonRejection>,
) -> Result<Response, Error> {
    let Json(filter) = body.map_err(|e| Error::BadRequest {
        code: "invalid_body",
        message: format!("the body is not a re-run filter: {}", e.body_text()),
    })?;
    let query = filter.query()?;
    let matched = state.runs.list(query).await?.runs;
    let bulk_id = Uuid::now_v7();
    let count = matched.len() as u64;
    let progress = state.reruns.start(RerunProgress {
        bulk_id,
        requested_by: RunPrincipal::from(&*principal),
        started_at: now_micros(),
        matched: count,
        done: 0,
        succeeded: 0,
        failed: 0,
        skipped: 0,
        finished: false,
        runs: Vec::new(),
    });
    tracing::info!(%bulk_id, matched = count, "bulk re-run started");
    tokio::spawn(run_all(state, principal, matched, progress));
    let mut response = (
        StatusCode::ACCEPTED,
        Json(RerunStarted {
            bulk_id,
            matched: count,
        }),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/runs/rerun/{bulk_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// How one run of a bulk re-run went.
enum Rerun {
    Succeeded(Uuid),
    Failed(Option<Uuid>),
    Skipped,
}

/// Re-runs `runs`, [`RERUN_CONCURRENCY`] at a time, into `progress`.
async fn run_all(
    state: AppState,
    principal: Arc<Principal>,
    runs: Vec<RunRecord>,
    progress: Arc<Mutex<RerunProgress>>,
) {
    futures::stream::iter(runs)
        .for_each_concurrent(RERUN_CONCURRENCY, |run| {
            let (state, principal, progress) = (state.clone(), Arc::clone(&principal), &progress);
            async move {
                let payload = kept_payload(&run).filter(|_| state.jobs.contains(&run.job));
                let result = match payload {
                    // Shutting down: no new work.
                    _ if state.stop.is_cancelled() => Rerun::Skipped,
                    None => Rerun::Skipped,
                    Some(payload) => match rerun(&state, principal, &run, payload).await {
                        Ok(Outcome::Ran {
                            run_id,
                            result: Ok(_),
                            ..
                        }) => Rerun::Succeeded(run_id),
                        Ok(Outcome::Ran { run_id, .. }) => Rerun::Failed(Some(run_id)),
                        Ok(_) | Err(_) => Rerun::Failed(None),
                    },
                };
                let mut p = progress.lock().unwrap_or_else(PoisonError::into_inner);
                p.done += 1;
                match result {
                    Rerun::Succeeded(id) => {
                        p.succeeded += 1;
                        p.runs.push(id);
                    }
                    Rerun::Failed(id) => {
                        p.failed += 1;
                        p.runs.extend(id);
                    }
                    Rerun::Skipped => p.skipped += 1,
                }
            }
        })
        .await;
    let p = progress.lock().unwrap_or_else(PoisonError::into_inner);
    tracing::info!(
        bulk_id = %p.bulk_id,
        succeeded = p.succeeded,
        failed = p.failed,
        skipped = p.skipped,
        "bulk re-run finished"
    );
}

/// The progress of a bulk re-run.
#[utoipa::path(
    get,
    path = "/runs/rerun/{bulk_id}",
    tag = "runs",
    operation_id = "rerun_progress",
    params(("bulk_id" = Uuid, Path, description = "`bulk_id`, as `POST /runs/rerun` answered it.")),
    security(("clerk_session" = [])),
    responses(
        (status = 200, description = "How far it has got: counts, the new runs, and whether it is finished.", body = RerunProgress),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    ),
)]
#[tracing::instrument(skip_all, fields(principal = %principal.kind(), bulk_id = %id))]
async fn rerun_progress(
    State(state): State<AppState>,
    CanViewRuns(principal): CanViewRuns,
    Path(id): Path<String>,
) -> Result<Json<RerunProgress>, Error> {
    let bulk_id = Uuid::try_parse(&id)
        .map_err(|_| invalid("a bulk id is a UUID, as in bulk_id".to_owned()))?;
    state.reruns.get(bulk_id).map(Json).ok_or_else(|| {
        Error::NotFound(format!(
            "no bulk re-run {bulk_id} on this instance (progress is kept where it started, for the latest 100)"
        ))
    })
}
