//! `POST /events`: CloudEvents 1.0 from Eventarc (binary or structured mode,
//! see [`crate::events`]).
//!
//! The same auth core as a push ([`CanPush`]): the trigger's service account
//! must be an allowed one and the token's audience ours. An event claims its
//! (source, id) in the run ledger, so a person who could post one could
//! claim an event that is still to come, exactly as with a message id.
//!
//! Routing: a Pub/Sub event ([`PUBSUB_MESSAGE_PUBLISHED`]) is unwrapped into
//! its message, which runs the job its `job` attribute names (`JOB_ATTRIBUTE`)
//! with its data, as on `/pubsub/push`; any other event runs the job
//! `EVENT_ROUTES` gives its type and subject, with the event's data. The job's
//! [`crate::jobs::JobContext`] carries the event's context either way.
//!
//! Each (source, id) runs once (CloudEvents' rule of uniqueness), recorded
//! with source `event` and the event's type and subject. The answer is the
//! push path's acknowledgement ([`super::push`]), so Eventarc's retry and
//! dead-letter policy apply: 204 once done or for a duplicate, 409 while it
//! runs elsewhere, 503 on a transient failure, and for an event that can
//! never run (no route, data the job's type refuses, a permanent job error)
//! what a push of such a payload gets: a 4xx, or dead-lettered (its context
//! as `ce-` attributes) and acked with `DEAD_LETTER_TOPIC` set. A request
//! that is not a CloudEvent at all is answered 400 or 415 and not
//! dead-lettered: nothing in it could be run or sent on.

use std::sync::Arc;

use axum::{body::Bytes, extract::State, http::StatusCode};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState, Error,
    extract::CanPush,
    openapi::responses::{
        BadRequest, Conflict, Forbidden, GatewayTimeout, Internal, NotFound, PayloadTooLarge,
        Unauthorized, Unavailable, Unprocessable, UnsupportedMediaType,
    },
    push::{Delivery, PushBody, deliver, permanent_failure},
};
use crate::{
    events::{self, EventContext, PUBSUB_MESSAGE_PUBLISHED},
    jobs::RunSource,
    pubsub::dead_letter::Reason,
    runs::{DedupKey, message_digest},
};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(receive))
}

/// A structured-mode CloudEvent (`application/cloudevents+json`): the
/// document's description of what [`events::parse`] reads. Other members
/// are extension attributes.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[schema(examples(json!({
    "specversion": "1.0",
    "id": "8245139052340451",
    "source": "//storage.googleapis.com/projects/_/buckets/acme-uploads",
    "type": "google.cloud.storage.object.v1.finalized",
    "subject": "objects/reports/2026-11.csv",
    "time": "2026-11-28T10:00:00.123Z",
    "datacontenttype": "application/json",
    "data": { "bucket": "acme-uploads", "name": "reports/2026-11.csv", "size": "1024" },
})))]
// Described, never built: the parser reads a JSON map.
#[allow(dead_code)]
pub(super) struct StructuredEvent {
    /// `1.0`.
    specversion: SpecVersion,
    /// Unique within `source`: with it, the key that makes a redelivery run once.
    #[schema(min_length = 1)]
    id: String,
    /// Where the event happened (a URI-reference).
    #[schema(min_length = 1)]
    source: String,
    /// The event type; `EVENT_ROUTES` maps it (and the subject) to a job.
    #[serde(rename = "type")]
    #[schema(min_length = 1)]
    event_type: String,
    /// What the event is about, within `source` (`objects/…` for Cloud Storage).
    #[schema(min_length = 1)]
    subject: Option<String>,
    /// When it happened (RFC 3339).
    #[schema(format = DateTime)]
    time: Option<String>,
    /// The media type of `data`: JSON (`application/json`, `text/json`, `…+json`).
    datacontenttype: Option<String>,
    /// A URI of the data's schema.
    dataschema: Option<String>,
    /// The data: the job's JSON payload.
    #[schema(value_type = Option<serde_json::Value>)]
    data: Option<serde_json::Value>,
    /// Or the data as base64, holding JSON.
    #[schema(content_encoding = "base64")]
    data_base64: Option<String>,
}

/// The CloudEvents version taken.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[allow(dead_code)]
pub(super) enum SpecVersion {
    /// CloudEvents 1.0.
    #[serde(rename = "1.0")]
    V1,
}

/// One CloudEvent, in binary or structured mode.
#[utoipa::path(
    post,
    path = "/events",
    tag = "events",
    operation_id = "receive_event",
    params(
        ("ce-id" = Option<String>, Header, nullable = false, description = "Binary mode (required there): the event's id, unique within its source."),
        ("ce-source" = Option<String>, Header, nullable = false, description = "Binary mode (required there): where the event happened."),
        ("ce-type" = Option<String>, Header, nullable = false, example = "google.cloud.storage.object.v1.finalized",
            description = "Binary mode (required there): the event type, which `EVENT_ROUTES` maps to a job."),
        ("ce-specversion" = Option<SpecVersion>, Header, nullable = false, description = "Binary mode (required there): `1.0`."),
        ("ce-subject" = Option<String>, Header, nullable = false, description = "Binary mode: the subject, when the event has one."),
        ("ce-time" = Option<String>, Header, nullable = false, description = "Binary mode: when it happened (RFC 3339)."),
    ),
    request_body(
        description = "Binary mode: the `ce-*` headers carry the context and the body is the event's data (JSON). Structured mode: `Content-Type: application/cloudevents+json` and the event as one JSON object. Batches are refused (415).",
        content(
            (serde_json::Value = "application/json"),
            (StructuredEvent = "application/cloudevents+json"),
        ),
    ),
    security(("google_oidc" = [])),
    responses(
        (status = 204, description = "Acknowledged: the job ran and succeeded, the event was a duplicate of one done, or it failed for good and was dead-lettered (`DEAD_LETTER_TOPIC`)."),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
        (status = 504, response = GatewayTimeout),
    ),
)]
async fn receive(
    State(state): State<AppState>,
    CanPush(principal): CanPush,
    PushBody { headers, body }: PushBody,
) -> Result<StatusCode, Error> {
    let span = tracing::Span::current();
    span.record("principal", principal.kind());
    span.record("source", RunSource::Event.as_str());
    let body = body?;
    let event = events::parse(&headers, &body)?;
    drop(body);
    let context = Arc::new(event.context);
    span.record("message_id", context.id.as_str());
    span.record("event_type", context.event_type.as_str());

    // Either kind comes down to a message, its data and the job it names;
    // an event that names none is a permanent failure, as a push would be.
    let (data, meta, message, job) = if context.event_type == PUBSUB_MESSAGE_PUBLISHED {
        let message = events::pubsub_message(&event.data)?;
        let meta = Arc::new(message.meta);
        if let Some(s) = &meta.subscription {
            span.record("subscription", s.as_str());
        }
        let job = meta
            .attributes
            .get(&state.config.job_attribute)
            .cloned()
            .ok_or_else(|| {
                let attribute = state.config.job_attribute.clone();
                ("no_job", Error::EventNoJob { attribute })
            });
        (
            Bytes::from(message.data),
            Arc::clone(&meta),
            Some(meta),
            job,
        )
    } else {
        let job = state
            .config
            .events
            .route(&context.event_type, context.subject.as_deref())
            .map(str::to_owned)
            .ok_or_else(|| {
                let (event_type, subject) = (context.event_type.clone(), context.subject.clone());
                (
                    "no_route",
                    Error::NoRoute {
                        event_type,
                        subject,
                    },
                )
            });
        let meta = Arc::new(events::as_message(&context));
        (Bytes::from(event.data), meta, None, job)
    };
    let job = match job {
        Ok(job) => job,
        Err((kind, err)) => {
            let reason = Reason {
                kind,
                text: err.to_string(),
                job: None,
            };
            return permanent_failure(&state, &meta, &data, reason, err, None).await;
        }
    };
    span.record("job", job.as_str());
    span.record("attempt", meta.delivery_attempt.unwrap_or(1));
    deliver(
        &state,
        Delivery {
            dedup: event_key(&context, &job, &data),
            job,
            source: RunSource::Event,
            principal,
            message,
            meta,
            event: Some(context),
            data,
        },
    )
    .await
}

/// (source, id), claiming the job and data as a push claims its message.
fn event_key(context: &EventContext, job: &str, data: &[u8]) -> DedupKey {
    DedupKey::event(&context.source, &context.id, message_digest(job, data))
}
