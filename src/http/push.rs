//! `POST /pubsub/push` and `POST /pubsub/push/{job}`: Pub/Sub push delivery.
//!
//! The answer is the acknowledgement: 204 only once the job has finished (on
//! Cloud Run the CPU is throttled after the response, so work is never done
//! after an ack). Every failure is a non-2xx, which Pub/Sub redelivers and its
//! dead-letter policy eventually catches: transient ones as 5xx, permanent
//! ones (undecodable, unknown job, payload that does not fit, a job's own
//! permanent error) as 4xx, logged at error level with the message id. A
//! permanent failure is never dropped silently: with `DEAD_LETTER_TOPIC` set
//! it is published there (with the reason) and only then acked; without, it
//! is nacked and left to the subscription's dead-letter policy.

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use uuid::Uuid;

use super::{
    AppState, Error,
    jobs::{body_error, payload_or_empty_object},
};
use crate::{
    auth::{CanTrigger, Principal},
    jobs::{JobContext, RunSource},
    pubsub::{self, MessageMeta, dead_letter::Reason},
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
            // Nothing decodable: dead-letter the raw body so it can be inspected.
            let meta = MessageMeta {
                message_id: headers
                    .get("x-goog-pubsub-message-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
                ..MessageMeta::default()
            };
            let reason = Reason {
                kind: "invalid_envelope",
                text: e.to_string(),
                job: path_job.as_deref(),
            };
            return permanent_failure(&state, &meta, &body, reason, e.into()).await;
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
        let reason = Reason {
            kind: "no_job",
            text: err.to_string(),
            job: None,
        };
        return permanent_failure(&state, &meta, &message.data, reason, err).await;
    };
    span.record("job", job.as_str());
    let run_id = Uuid::now_v7();
    span.record("run_id", tracing::field::display(run_id));

    let ctx = JobContext {
        run_id,
        source: RunSource::Push,
        principal: Arc::new(principal),
        message: Some(Arc::clone(&meta)),
        attempt,
        cancel: CancellationToken::new(),
    };
    let started = Instant::now();
    let result = state
        .jobs
        .dispatch(
            &job,
            payload_or_empty_object(&message.data),
            ctx,
            state.config.job_timeout,
        )
        .await;
    let duration_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(_) => {
            tracing::info!(duration_ms, "push done (acked)");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(e) if e.is_permanent() => {
            let reason = Reason {
                kind: e.kind(),
                text: e.to_string(),
                job: Some(&job),
            };
            permanent_failure(&state, &meta, &message.data, reason, e.into()).await
        }
        Err(e) => Err(e.into()),
    }
}

/// A message that will never succeed: dead-letter it and ack when a
/// dead-letter topic is configured (nack if that publish fails); otherwise
/// nack with `err` and leave it to the subscription's dead-letter policy.
/// Either way it is logged at error level with the message id.
async fn permanent_failure(
    state: &AppState,
    meta: &MessageMeta,
    data: &[u8],
    reason: Reason<'_>,
    err: Error,
) -> Result<StatusCode, Error> {
    let Some(dead_letter) = &state.dead_letter else {
        tracing::error!(kind = reason.kind, reason = %reason.text, "push failed permanently (nacked; the subscription's dead-letter policy will catch it)");
        return Err(err);
    };
    if data.len() > pubsub::MAX_MESSAGE_BYTES {
        tracing::error!(kind = reason.kind, reason = %reason.text, "push failed permanently and is too large to dead-letter (nacked)");
        return Err(err);
    }
    match dead_letter.publish(meta, data, &reason).await {
        Ok(id) => {
            tracing::error!(kind = reason.kind, reason = %reason.text, topic = dead_letter.topic(), dead_letter_message_id = %id, "push failed permanently; dead-lettered (acked)");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(publish_error) => {
            tracing::error!(kind = reason.kind, reason = %reason.text, error = %format!("{publish_error:#}"), "push failed permanently and dead-lettering failed (nacked; will retry)");
            Err(Error::DeadLetterFailed(format!("{publish_error:#}")))
        }
    }
}
