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
//! Only allowed Google service accounts may push ([`CanPush`]): a delivery
//! claims its message id, and a person who could post an envelope could
//! claim the id of a message Pub/Sub has yet to deliver and have the real
//! one acked unrun. A Clerk token here is a 403 `insufficient_scope` that
//! names `POST /jobs/{name}`, the route for running a job by hand.
//!
//! Pub/Sub delivers at least once, sometimes to two instances at the same
//! moment, so each delivery is recorded and claimed in the run ledger by
//! (subscription, message id) before its job runs (see [`crate::runs`]).
//! The claim carries a digest of the job and the decoded data
//! ([`crate::runs::message_digest`]); a redelivery is unchanged, so another
//! digest under a held message id is a conflict:
//!
//! | the message's run | answer | |
//! |---|---|---|
//! | none, failed, or lease expired | the job runs | as above |
//! | succeeded (or dead-lettered), same digest | 204, recorded as `duplicate` | ack, not run again |
//! | running, lease live, same digest | 409 `run_in_progress`, recorded as `duplicate` | nack: it comes back, and runs if that run failed or died |
//! | succeeded or running, other digest | 409 `message_conflict`, recorded as `conflict`, logged at error level with both runs | a permanent failure (below): nack, or dead-lettered and acked |
//! | ledger unreachable | 503 `store_unavailable` + `Retry-After` | nack; nothing runs unrecorded |
//! | cancelled on request while it ran (`POST /runs/{id}/cancel`) | 204, recorded as `cancelled` | ack: cancel means "don't retry"; a redelivery is a `duplicate` |
//!
//! With `DEAD_LETTER_TOPIC` set, every permanent failure (a conflict
//! included) is instead published there (with the reason) and only then
//! acked (204); if that publish fails, 503 `dead_letter_failed`, a nack.
//!
//! 409 rather than 503 for "in progress": both are nacks to Pub/Sub, but 409
//! says "this message is being handled" to operators and dashboards, where
//! a 5xx would read as the worker failing.

use std::sync::Arc;

use std::collections::BTreeMap;

use axum::{
    body::Bytes,
    extract::{FromRequest, Path, Request, State},
    http::{HeaderMap, StatusCode},
};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState, Error, content_length,
    extract::CanPush,
    jobs::payload_or_empty_object,
    openapi::responses::{
        BadRequest, Conflict, Forbidden, GatewayTimeout, Internal, NotFound, PayloadTooLarge,
        Unauthorized, Unavailable, Unprocessable,
    },
};
use crate::{
    auth::Principal,
    events::EventContext,
    jobs::{DispatchError, RunSource},
    pubsub::{self, MessageMeta, dead_letter::Reason},
    runner::{Outcome, RunRequest},
    runs::{DedupKey, Finish, RunStatus, message_digest},
    telemetry::metrics::OTHER,
};
use tracing::Instrument as _;
use uuid::Uuid;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(push_by_attribute))
        .routes(routes!(push_to_job))
}

/// A wrapped push delivery, as Pub/Sub POSTs it: the document's description
/// of what [`pubsub::parse_wrapped`] reads (a test checks that the envelope
/// Pub/Sub sends fits it). Unwrapped (`no_wrapper`) deliveries send the raw
/// data instead, with the metadata in `x-goog-pubsub-*` headers.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[schema(examples(json!({
    "message": {
        "data": "eyJtZXNzYWdlIjoiaGVsbG8ifQ==",
        "attributes": { "job": "echo" },
        "messageId": "2070443601311540",
        "message_id": "2070443601311540",
        "publishTime": "2026-11-28T10:00:00.123Z",
        "publish_time": "2026-11-28T10:00:00.123Z",
    },
    "subscription": "projects/acme-prod/subscriptions/work-push",
})))]
// Described, never built: the parser borrows from the body instead.
#[allow(dead_code)]
pub(super) struct PushEnvelope {
    /// The message.
    message: PubsubMessage,
    /// `projects/P/subscriptions/S`: with the message id, the key that makes
    /// a redelivery run once.
    subscription: Option<String>,
    /// The delivery attempt (1 on the first), with a dead-letter policy.
    #[serde(rename = "deliveryAttempt")]
    #[schema(minimum = 1)]
    delivery_attempt: Option<u32>,
}

/// A Pub/Sub message in a wrapped push.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[allow(dead_code)]
pub(super) struct PubsubMessage {
    /// The data, base64 (standard alphabet, padding optional): the job's
    /// JSON payload. Absent or empty means `{}`.
    #[schema(content_encoding = "base64")]
    data: Option<String>,
    /// The attributes; `job` (`JOB_ATTRIBUTE`) names the job on
    /// `/pubsub/push`.
    attributes: Option<BTreeMap<String, String>>,
    /// The message id (Pub/Sub sends it in both casings; either will do).
    #[serde(rename = "messageId")]
    message_id: String,
    /// The message id again, as Pub/Sub also sends it.
    #[serde(rename = "message_id")]
    message_id_snake: Option<String>,
    /// When it was published (RFC 3339).
    #[serde(rename = "publishTime")]
    publish_time: Option<String>,
    /// The same, as Pub/Sub also sends it.
    #[serde(rename = "publish_time")]
    publish_time_snake: Option<String>,
    /// The ordering key, if any.
    #[serde(rename = "orderingKey")]
    ordering_key: Option<String>,
}

/// A push whose job is named by the message attribute (`JOB_ATTRIBUTE`).
#[utoipa::path(
    post,
    path = "/pubsub/push",
    tag = "pubsub",
    operation_id = "push",
    request_body(content = PushEnvelope, content_type = "application/json",
        description = "A wrapped push delivery. The `Content-Type` is not relied on (the emulator sends another)."),
    security(("google_oidc" = [])),
    responses(
        (status = 204, description = "Acknowledged: the job ran and succeeded, the message was a duplicate of one done, or it failed for good and was dead-lettered (`DEAD_LETTER_TOPIC`)."),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = Unprocessable),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
        (status = 504, response = GatewayTimeout),
    ),
)]
async fn push_by_attribute(
    State(state): State<AppState>,
    CanPush(principal): CanPush,
    PushBody { headers, body }: PushBody,
) -> Result<StatusCode, Error> {
    handle(state, None, principal, headers, body).await
}

/// A push to a subscription that carries one job type.
#[utoipa::path(
    post,
    path = "/pubsub/push/{job}",
    tag = "pubsub",
    operation_id = "push_to_job",
    params(("job" = String, Path, example = "echo", description = "The job every message of this subscription runs.")),
    request_body(content = PushEnvelope, content_type = "application/json",
        description = "A wrapped push delivery. The `Content-Type` is not relied on (the emulator sends another)."),
    security(("google_oidc" = [])),
    responses(
        (status = 204, description = "Acknowledged: the job ran and succeeded, the message was a duplicate of one done, or it failed for good and was dead-lettered (`DEAD_LETTER_TOPIC`)."),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = Unprocessable),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
        (status = 504, response = GatewayTimeout),
    ),
)]
async fn push_to_job(
    State(state): State<AppState>,
    Path(job): Path<String>,
    CanPush(principal): CanPush,
    PushBody { headers, body }: PushBody,
) -> Result<StatusCode, Error> {
    handle(state, Some(job), principal, headers, body).await
}

/// The request body, read into one buffer sized by `Content-Length`: the
/// envelope is held once, where collecting chunks and then joining them would
/// hold it twice. Larger than [`pubsub::MAX_BODY_BYTES`] is a 413. The
/// headers come with it, moved out of the request rather than copied.
pub(super) struct PushBody {
    pub(super) headers: HeaderMap,
    pub(super) body: Result<Bytes, Error>,
}

impl<S: Send + Sync> FromRequest<S> for PushBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(request: Request, _: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let body = read_body(&parts.headers, body).await;
        Ok(Self {
            headers: parts.headers,
            body,
        })
    }
}

async fn read_body(headers: &HeaderMap, body: axum::body::Body) -> Result<Bytes, Error> {
    use futures::StreamExt as _;
    let limit = pubsub::MAX_BODY_BYTES;
    let too_large = || Error::PayloadTooLarge(limit);
    let declared = content_length(headers).and_then(|n| usize::try_from(n).ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut buffer = Vec::with_capacity(declared.unwrap_or(0));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| Error::BadBody)?;
        if buffer.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buffer))
}

/// Processes a push and records its `messaging_process_duration_seconds`
/// sample: by subscription, with the error's code as `error_type` unless it
/// was acknowledged.
async fn handle(
    state: AppState,
    path_job: Option<String>,
    principal: Arc<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, Error>,
) -> Result<StatusCode, Error> {
    let started = std::time::Instant::now();
    let metrics = Arc::clone(&state.metrics);
    let mut seen = None;
    let result = process(state, path_job, principal, headers, body, &mut seen).await;
    let subscription = seen.as_deref().and_then(|m| m.subscription.as_deref());
    metrics.pushes.record(
        subscription_label(subscription),
        result.as_ref().err().map(Error::code),
        started.elapsed().as_secs_f64(),
    );
    result
}

/// A subscription's id (`projects/P/subscriptions/ID`) as a label value, if
/// it is one; else [`OTHER`].
fn subscription_label(subscription: Option<&str>) -> &str {
    let Some(full) = subscription else {
        return OTHER;
    };
    let id = full.rsplit('/').next().unwrap_or(full);
    let valid = (3..=255).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~+%".contains(&b));
    if valid { id } else { OTHER }
}

/// Records its fields on the request's span (see `trace_request` in
/// [`crate::http`]): a push that succeeds logs one line, the request line.
/// The decoded message lands in `seen`, for the caller's metrics.
async fn process(
    state: AppState,
    path_job: Option<String>,
    principal: Arc<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, Error>,
    seen: &mut Option<Arc<MessageMeta>>,
) -> Result<StatusCode, Error> {
    let span = tracing::Span::current();
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            span.record("principal", principal.kind());
            return Err(e);
        }
    };
    let message = match pubsub::parse_push(&headers, &body) {
        Ok(m) => m,
        Err(e) => {
            span.record("principal", principal.kind());
            // Nothing decodable (and nothing recorded, as nothing was
            // dispatched): dead-letter the raw body so it can be inspected.
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
            return permanent_failure(&state, &meta, &body, reason, e.into(), None).await;
        }
    };
    drop(body);
    // Shared with the run (no copy); kept for dead-lettering after it.
    let data = Bytes::from(message.data);
    let meta = Arc::new(message.meta);
    *seen = Some(Arc::clone(&meta));
    let job = path_job.or_else(|| meta.attributes.get(&state.config.job_attribute).cloned());
    super::record_fields(
        &span,
        [
            ("principal", Some(&principal.kind() as &dyn tracing::Value)),
            ("message_id", Some(&meta.message_id.as_str())),
            (
                "subscription",
                meta.subscription.as_ref().map(|s| s as &dyn tracing::Value),
            ),
            ("attempt", Some(&meta.delivery_attempt.unwrap_or(1))),
            ("job", job.as_ref().map(|j| j as &dyn tracing::Value)),
        ],
    );
    let Some(job) = job else {
        let err = Error::NoJob {
            attribute: state.config.job_attribute.clone(),
        };
        let reason = Reason {
            kind: "no_job",
            text: err.to_string(),
            job: None,
        };
        return permanent_failure(&state, &meta, &data, reason, err, None).await;
    };
    let dedup = DedupKey::push(
        meta.subscription.as_deref(),
        &meta.message_id,
        message_digest(&job, &data),
    );
    deliver(
        &state,
        Delivery {
            job,
            source: RunSource::Push,
            principal,
            message: Some(Arc::clone(&meta)),
            meta,
            event: None,
            data,
            dedup,
        },
    )
    .await
}

/// A delivery ready to run: a push, or an event ([`super::events`]).
pub(super) struct Delivery {
    /// The job it runs.
    pub(super) job: String,
    /// `push` or `event`.
    pub(super) source: RunSource,
    /// The service account that delivered it.
    pub(super) principal: Arc<Principal>,
    /// The message as a dead-letter publish sends it on.
    pub(super) meta: Arc<MessageMeta>,
    /// The Pub/Sub message the job sees, if it came as one.
    pub(super) message: Option<Arc<MessageMeta>>,
    /// The event's context, on an event.
    pub(super) event: Option<Arc<EventContext>>,
    /// The decoded data (shared with the run, kept for dead-lettering).
    pub(super) data: Bytes,
    /// What makes a redelivery run once, claiming the job and data.
    pub(super) dedup: DedupKey,
}

/// Runs a delivery once and answers with its acknowledgement: the table in
/// the module docs, for pushes and events alike.
pub(super) async fn deliver(state: &AppState, delivery: Delivery) -> Result<StatusCode, Error> {
    let Delivery {
        job,
        source,
        principal,
        meta,
        message,
        event,
        data,
        dedup,
    } = delivery;
    let attempt = meta.delivery_attempt.unwrap_or(1);
    // Named in a conflict's text only: built then.
    let described = event.clone();
    // Push keys always carry one; the fallback only keeps this total.
    let content = dedup
        .content()
        .unwrap_or_else(|| message_digest(&job, &data));
    // Recorded and claimed by its key before anything runs: a store outage
    // is a 503 (nack), never an ack without a record.
    let outcome = state
        .runner()
        .run(RunRequest {
            dedup: Some(dedup),
            job: job.clone(),
            source,
            principal,
            message,
            event,
            attempt,
            idempotency_key: None,
            payload: payload_or_empty_object(data.clone()),
            rerun_of: None,
        })
        .await?;
    match outcome {
        // Acked: the request line (204, with the job, message and run) says so.
        Outcome::Ran { result: Ok(_), .. } => Ok(StatusCode::NO_CONTENT),
        // Cancel means "don't retry": the run is recorded `cancelled`.
        Outcome::Ran {
            result: Err(DispatchError::Cancelled),
            ..
        } => {
            tracing::info!("run cancelled on request (acked, not retried)");
            Ok(StatusCode::NO_CONTENT)
        }
        Outcome::Ran {
            run_id,
            result: Err(e),
            ..
        } if e.is_permanent() => {
            // The run is recorded `failed_permanent`; once dead-lettered it
            // becomes `dead_lettered`.
            let reason = Reason {
                kind: e.kind(),
                text: e.to_string(),
                job: Some(&job),
            };
            permanent_failure(state, &meta, &data, reason, e.into(), Some(run_id)).await
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
        Outcome::Conflict {
            run_id,
            original_run_id,
            claimed,
        } => {
            // Pub/Sub never changes a message it redelivers: kept (nacked or
            // dead-lettered) for an operator, never acked as a duplicate.
            // The record stays `conflict`; the error line carries both runs.
            let what = match &described {
                Some(e) => format!("event {} from {}", e.id, e.source),
                None => format!("message {}", meta.message_id),
            };
            let reason = Reason {
                kind: "message_conflict",
                text: format!(
                    "{what} was already claimed by run {original_run_id} with other content ({claimed}); this delivery, run {run_id} ({content}), was not run"
                ),
                job: Some(&job),
            };
            let err = Error::MessageConflict {
                run_id: original_run_id,
            };
            let span = tracing::error_span!(
                "message_conflict",
                claimed_run_id = %original_run_id,
                conflict_run_id = %run_id,
                claimed_digest = %claimed,
                digest = %content,
            );
            permanent_failure(state, &meta, &data, reason, err, None)
                .instrument(span)
                .await
        }
    }
}

/// A message that will never succeed: dead-letter it and ack when a
/// dead-letter topic is configured (nack if that publish fails); otherwise
/// nack with `err` and leave it to the subscription's dead-letter policy.
/// Either way it is logged at error level with the message id; a recorded
/// run becomes `dead_lettered`.
pub(super) async fn permanent_failure(
    state: &AppState,
    meta: &MessageMeta,
    data: &[u8],
    reason: Reason<'_>,
    err: Error,
    run_id: Option<Uuid>,
) -> Result<StatusCode, Error> {
    let Some(dead_letter) = &state.dead_letter else {
        tracing::error!(
            kind = reason.kind,
            reason = reason.text.as_str(),
            "push failed permanently (nacked; the subscription's dead-letter policy will catch it)"
        );
        return Err(err);
    };
    if data.len() > pubsub::MAX_MESSAGE_BYTES {
        tracing::error!(
            kind = reason.kind,
            reason = reason.text.as_str(),
            "push failed permanently and is too large to dead-letter (nacked)"
        );
        return Err(err);
    }
    match dead_letter.publish(meta, data, &reason).await {
        Ok(id) => {
            tracing::error!(kind = reason.kind, reason = reason.text.as_str(), topic = dead_letter.topic(), dead_letter_message_id = %id, "push failed permanently; dead-lettered (acked)");
            if let Some(run_id) = run_id
                && let Err(e) = state
                    .runs
                    .finish(run_id, Finish::status(RunStatus::DeadLettered))
                    .await
            {
                // Published and acked all the same: the record stays
                // `failed_permanent`, so a redelivery would dead-letter again.
                tracing::warn!(%run_id, error = %e, "could not record the run as dead-lettered");
            }
            Ok(StatusCode::NO_CONTENT)
        }
        Err(publish_error) => {
            tracing::error!(kind = reason.kind, reason = reason.text.as_str(), error = %format!("{publish_error:#}"), "push failed permanently and dead-lettering failed (nacked; will retry)");
            Err(Error::DeadLetterFailed(format!("{publish_error:#}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_labels_are_ids_or_other() {
        assert_eq!(
            subscription_label(Some("projects/acme/subscriptions/work-push")),
            "work-push"
        );
        assert_eq!(subscription_label(Some("work-push")), "work-push");
        for bad in [
            None,
            Some(""),
            Some("projects/acme/subscriptions/"),
            Some("projects/acme/subscriptions/1abc"),
            Some("projects/acme/subscriptions/a b c"),
            Some("projects/acme/subscriptions/x\"}"),
        ] {
            assert_eq!(subscription_label(bad), OTHER, "{bad:?}");
        }
    }
}
