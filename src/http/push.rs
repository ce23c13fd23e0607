//! `POST /pubsub/push` and `POST /pubsub/push/{job}`: Pub/Sub push delivery.
//!
//! The answer is the acknowledgement: 204 only once the job has finished (on
//! Cloud Run the CPU is throttled after the response, so work is never done
//! after an ack). Every failure is a non-2xx, which Pub/Sub redelivers and its
//! dead-letter policy eventually catches: transient ones as 5xx, permanent
//! ones (undecodable, unknown job, payload that does not fit, a job's own
//! permanent error) as 4xx, logged at error level with the message id. A
//! permanent failure is never dropped silently.
//!
//! Pub/Sub delivers at least once, sometimes to two instances at the same
//! moment, so each delivery is recorded and claimed in the run ledger by
//! (subscription, message id) before its job runs (see [`crate::runs`]):
//!
//! | the message's run | answer | |
//! |---|---|---|
//! | none, failed, or lease expired | the job runs | as above |
//! | succeeded (or dead-lettered) | 204, recorded as `duplicate` | ack, not run again |
//! | running, lease live | 409 `run_in_progress`, recorded as `duplicate` | nack: it comes back, and runs if that run failed or died |
//! | ledger unreachable | 503 `store_unavailable` + `Retry-After` | nack; nothing runs unrecorded |
//!
//! 409 rather than 503 for "in progress": both are nacks to Pub/Sub, but 409
//! says "this message is being handled" to operators and dashboards, where
//! a 5xx would read as the worker failing.

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use tracing::field::Empty;

use super::{
    AppState, Error,
    jobs::{body_error, payload_or_empty_object},
};
use crate::{
    auth::{CanTrigger, Principal},
    jobs::RunSource,
    pubsub,
    runs::{
        DedupKey,
        runner::{Outcome, RunRequest},
    },
};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/pubsub/push", post(push_by_attribute))
        .route("/pubsub/push/{job}", post(push_to_job))
        .layer(axum::extract::DefaultBodyLimit::max(pubsub::MAX_BODY_BYTES))
}

/// A push whose job is named by the message attribute (`JOB_ATTRIBUTE`).
async fn push_by_attribute(
    State(state): State<AppState>,
    CanTrigger(principal): CanTrigger,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, Error> {
    handle(state, None, principal, headers, body).await
}

/// A push to a subscription that carries one job type.
async fn push_to_job(
    State(state): State<AppState>,
    Path(job): Path<String>,
    CanTrigger(principal): CanTrigger,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, Error> {
    handle(state, Some(job), principal, headers, body).await
}

#[tracing::instrument(
    name = "push",
    skip_all,
    fields(principal = %principal.kind(), job = Empty, message_id = Empty, attempt = Empty, subscription = Empty, run_id = Empty)
)]
async fn handle(
    state: AppState,
    path_job: Option<String>,
    principal: Principal,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, Error> {
    let span = tracing::Span::current();
    let body = body.map_err(body_error)?;
    let message = match pubsub::parse_push(&headers, &body) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(reason = %e, "push refused: undecodable delivery (nacked; the dead-letter policy will catch it)");
            return Err(e.into());
        }
    };
    drop(body);
    let meta = Arc::new(message.meta);
    span.record("message_id", meta.message_id.as_str());
    if let Some(s) = &meta.subscription {
        span.record("subscription", s.as_str());
    }
    let attempt = meta.delivery_attempt.unwrap_or(1);
    span.record("attempt", attempt);

    let job = path_job.or_else(|| meta.attributes.get(&state.config.job_attribute).cloned());
    let Some(job) = job else {
        let err = Error::NoJob {
            attribute: state.config.job_attribute.clone(),
        };
        tracing::error!(reason = %err, "push refused: permanent failure (nacked; the dead-letter policy will catch it)");
        return Err(err);
    };
    span.record("job", job.as_str());

    // Recorded and claimed by (subscription, message id) before anything
    // runs: a store outage is a 503 (nack), never an ack without a record.
    let outcome = state
        .runner()
        .run(RunRequest {
            dedup: Some(DedupKey::push(
                meta.subscription.as_deref(),
                &meta.message_id,
            )),
            job,
            source: RunSource::Push,
            principal: Arc::new(principal),
            message: Some(Arc::clone(&meta)),
            attempt,
            idempotency_key: None,
            payload: payload_or_empty_object(&message.data).to_vec(),
        })
        .await?;
    match outcome {
        Outcome::Ran {
            result: Ok(_),
            duration_ms,
            ..
        } => {
            tracing::info!(duration_ms, "push done (acked)");
            Ok(StatusCode::NO_CONTENT)
        }
        Outcome::Ran {
            result: Err(e),
            duration_ms,
            ..
        } if e.is_permanent() => {
            // The run is recorded `failed_permanent`; a dead-letter step
            // would publish here, ack, and record `RunStatus::DeadLettered`
            // with `state.runs.finish(run_id, Finish::status(..))`.
            tracing::error!(kind = e.kind(), reason = %e, duration_ms, "push failed permanently (nacked; the dead-letter policy will catch it)");
            Err(e.into())
        }
        Outcome::Ran { result: Err(e), .. } => Err(e.into()),
        Outcome::Duplicate {
            original_run_id, ..
        } => {
            tracing::info!(%original_run_id, "duplicate delivery of a message already done (acked, not run again)");
            Ok(StatusCode::NO_CONTENT)
        }
        Outcome::InProgress {
            original_run_id, ..
        } => {
            tracing::info!(%original_run_id, "delivery of a message in progress elsewhere (nacked with 409)");
            Err(Error::RunInProgress {
                run_id: original_run_id,
            })
        }
    }
}
