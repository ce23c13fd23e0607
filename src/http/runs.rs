//! `GET /runs` and `GET /runs/{id}`: the run ledger, for the admin page and
//! operators (Clerk users with the view or trigger permission).
//!
//! `GET /runs?job=&status=&source=&limit=&cursor=` lists runs newest first
//! (`status` may name several, separated by commas);
//! `next_cursor` is opaque (pass it back as `cursor`) and `null` on the last
//! page. A filter with a value outside its allowed set is a 400 that lists the
//! allowed values, so a typo never reads as "no runs".
//!
//! Searches: `message_id=` (push runs of that Pub/Sub message),
//! `idempotency_key=` (runs of that `Idempotency-Key`), and a time range of
//! `started_at`, `since=` (inclusive) and `until=` (exclusive), RFC 3339.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
};
use serde::Serialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    AppState, Error,
    extract::CanViewRuns,
    openapi::responses::{BadRequest, Forbidden, NotFound, Unauthorized, Unavailable},
};
use crate::{
    jobs::RunSource,
    runs::{RunQuery, RunRecord, RunStatus},
};

/// Default page size.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page size.
pub const MAX_LIMIT: usize = 200;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(one))
}

/// A page of runs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RunPage {
    /// The runs.
    runs: Vec<RunRecord>,
    /// Pass it back as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<String>,
}

pub(super) fn invalid(message: String) -> Error {
    Error::BadRequest {
        code: "invalid_query",
        message,
    }
}

/// Validates the query string into a [`RunQuery`].
fn parse_query(params: &HashMap<String, String>) -> Result<RunQuery, Error> {
    only(params, &ALLOWED)?;
    let text = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let status = text("status")
        .map(statuses)
        .transpose()?
        .unwrap_or_default();
    let source = text("source").map(source).transpose()?;
    let limit = match text("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| invalid(format!("limit must be a number from 1 to {MAX_LIMIT}")))?,
    };
    let before = text("cursor")
        .map(|v| {
            Uuid::try_parse(v).map_err(|_| {
                invalid(
                    "cursor is not one this API returned; pass next_cursor back as is".to_owned(),
                )
            })
        })
        .transpose()?;
    let job = text("job").map(str::to_owned);
    if job.as_ref().is_some_and(|j| j.len() > 200) {
        return Err(invalid("job must be at most 200 characters".to_owned()));
    }
    let message_id = text("message_id").map(str::to_owned);
    if message_id.as_ref().is_some_and(|m| m.len() > 200) {
        return Err(invalid(
            "message_id must be at most 200 characters".to_owned(),
        ));
    }
    let idempotency_key = text("idempotency_key").map(str::to_owned);
    if idempotency_key.as_ref().is_some_and(|k| k.len() > 255) {
        return Err(invalid(
            "idempotency_key must be at most 255 characters".to_owned(),
        ));
    }
    let since = text("since").map(|v| rfc3339("since", v)).transpose()?;
    let until = text("until").map(|v| rfc3339("until", v)).transpose()?;
    if let (Some(since), Some(until)) = (since, until)
        && since >= until
    {
        return Err(invalid(
            "since must be before until (the range is since inclusive to until exclusive)"
                .to_owned(),
        ));
    }
    Ok(RunQuery {
        job,
        status,
        source,
        before,
        limit,
        message_id,
        idempotency_key,
        since,
        until,
        run_ids: Vec::new(),
    })
}

/// A source's name.
pub(super) fn source(text: &str) -> Result<RunSource, Error> {
    RunSource::parse(text)
        .ok_or_else(|| invalid("source must be one of push, manual, service, event".to_owned()))
}

/// A run id in a path.
pub(super) fn run_id(text: &str) -> Result<Uuid, Error> {
    Uuid::try_parse(text).map_err(|_| invalid("a run id is a UUID, as in run_id".to_owned()))
}

/// One status, or several separated by commas.
pub(super) fn statuses(text: &str) -> Result<Vec<RunStatus>, Error> {
    text.split(',')
        .map(|name| {
            RunStatus::parse(name.trim()).ok_or_else(|| {
                let allowed: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                invalid(format!(
                    "status must be one of {} (or several, separated by commas)",
                    allowed.join(", ")
                ))
            })
        })
        .collect()
}

/// The query parameters `GET /runs` takes.
const ALLOWED: [&str; 9] = [
    "job",
    "status",
    "source",
    "limit",
    "cursor",
    "message_id",
    "idempotency_key",
    "since",
    "until",
];

/// A 400 naming the first parameter not in `allowed`.
pub(super) fn only(params: &HashMap<String, String>, allowed: &[&str]) -> Result<(), Error> {
    match params.keys().find(|n| !allowed.contains(&n.as_str())) {
        Some(name) => Err(invalid(format!(
            "unknown parameter `{name}`; allowed: {}",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

/// A query parameter's RFC 3339 time.
pub(super) fn rfc3339(name: &str, value: &str) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::parse(value, &Rfc3339).map_err(|_| {
        invalid(format!(
            "{name} must be an RFC 3339 time such as 2026-12-07T09:30:00Z (a `+` offset is sent as %2B)"
        ))
    })
}

/// Runs, newest first, filtered and paginated.
#[utoipa::path(
    get,
    path = "/runs",
    tag = "runs",
    operation_id = "list_runs",
    params(
        ("job" = Option<String>, Query, max_length = 200, description = "Only runs of this job."),
        ("status" = Option<String>, Query, description = "Only runs with this status, or one of several separated by commas (`failed_permanent,dead_lettered`)."),
        ("source" = Option<RunSource>, Query, description = "Only runs from this source."),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 200, description = "Page size (default 50)."),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the page before, as it was returned."),
        ("message_id" = Option<String>, Query, max_length = 200, description = "Only push runs of this Pub/Sub message id (every delivery of it: runs, duplicates, conflicts)."),
        ("idempotency_key" = Option<String>, Query, max_length = 255, description = "Only runs triggered with this `Idempotency-Key`."),
        ("since" = Option<String>, Query, format = DateTime, description = "Only runs started at or after this RFC 3339 time."),
        ("until" = Option<String>, Query, format = DateTime, description = "Only runs started before this RFC 3339 time (after `since`)."),
    ),
    security(("clerk_session" = [])),
    responses(
        (status = 200, description = "A page of runs, newest first.", body = RunPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ),
)]
#[tracing::instrument(skip_all, fields(principal = %principal.kind()))]
async fn list(
    State(state): State<AppState>,
    CanViewRuns(principal): CanViewRuns,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<RunPage>, Error> {
    let Query(params) =
        params.map_err(|_| invalid("the query string could not be decoded".to_owned()))?;
    let query = parse_query(&params)?;
    let page = state.runs.list(query).await?;
    Ok(Json(RunPage {
        runs: page.runs,
        next_cursor: page.next.map(|id| id.simple().to_string()),
    }))
}

/// One run.
#[utoipa::path(
    get,
    path = "/runs/{id}",
    tag = "runs",
    operation_id = "get_run",
    params(("id" = Uuid, Path, description = "The run's id (`run_id`).")),
    security(("clerk_session" = [])),
    responses(
        (status = 200, description = "The run.", body = RunRecord),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
#[tracing::instrument(skip_all, fields(principal = %principal.kind(), run_id = %id))]
async fn one(
    State(state): State<AppState>,
    CanViewRuns(principal): CanViewRuns,
    Path(id): Path<String>,
) -> Result<Json<RunRecord>, Error> {
    let run_id = run_id(&id)?;
    match state.runs.get(run_id).await? {
        Some(run) => Ok(Json(run)),
        None => Err(Error::NotFound(format!("no run {run_id}"))),
    }
}
