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

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};

use super::{
    AppState, Error,
    extract::CanPush,
    push::{Delivery, PushBody, deliver, permanent_failure},
};
use crate::{
    events::{self, EventContext, PUBSUB_MESSAGE_PUBLISHED},
    jobs::RunSource,
    pubsub::dead_letter::Reason,
    runs::{DedupKey, message_digest},
};

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/events", post(receive))
}

/// One CloudEvent, in binary or structured mode.
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
