//! The one error type of the HTTP surface, and its mapping to responses.
//!
//! Every variant has one status ([`Error::status_code`]). Client errors carry a
//! stable machine-readable `error` code and a message that says what to fix;
//! 5xx bodies are opaque and the cause is logged once, here. Authentication
//! failures follow RFC 6750: `WWW-Authenticate: Bearer` with `invalid_token`,
//! `invalid_request` or `insufficient_scope`, and `Retry-After` on 503.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use uuid::Uuid;

use crate::{
    auth::AuthError, events::EventError, jobs::DispatchError, pubsub::EnvelopeError,
    runs::StoreError,
};

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Authentication or authorization failed: 400, 401, 403 or 503.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A push body that is not a usable delivery: 400 (413 when too large).
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A push that names no job: 422.
    #[error(
        "message names no job: set the `{attribute}` attribute or push to /pubsub/push/{{job}}"
    )]
    NoJob {
        /// The attribute that names jobs.
        attribute: String,
    },
    /// A request to `POST /events` that is not a usable CloudEvent: 400, or
    /// 415 for a content mode or data type we do not take.
    #[error(transparent)]
    Event(#[from] EventError),
    /// An event no `EVENT_ROUTES` entry takes: 422, the answer a push of a
    /// payload that cannot run gets.
    #[error(
        "no route for events of type `{event_type}`{}: add `{event_type}=JOB` (or `{event_type}:SUBJECT_PREFIX=JOB`) to EVENT_ROUTES",
        subject.as_ref().map(|s| format!(" with subject `{s}`")).unwrap_or_default()
    )]
    NoRoute {
        /// The event's type.
        event_type: String,
        /// Its subject, if any.
        subject: Option<String>,
    },
    /// A Pub/Sub event whose message names no job: 422, as a push that
    /// names none.
    #[error("the Pub/Sub event's message names no job: set its `{attribute}` attribute")]
    EventNoJob {
        /// The attribute that names jobs.
        attribute: String,
    },
    /// Dispatching a job failed (see [`DispatchError`] for each status).
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// The body is over the limit: 413.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// Could not read the body: 400.
    #[error("could not read the request body")]
    BadBody,
    /// A caller this route refuses for a reason other than its token (the
    /// development sign-in off loopback): 403.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A resource that does not exist: 404.
    #[error("{0}")]
    NotFound(String),
    /// A permanent failure could not be dead-lettered: 503, so Pub/Sub
    /// redelivers and the next attempt tries again.
    #[error("dead-lettering failed: {0}")]
    DeadLetterFailed(String),
    /// A query parameter or header with a bad value: 400 with `code` and a
    /// message that gives the allowed values.
    #[error("{message}")]
    BadRequest {
        /// The stable code (`invalid_query`, `invalid_idempotency_key`).
        code: &'static str,
        /// What to fix.
        message: String,
    },
    /// The request's message or `Idempotency-Key` is held by a run in
    /// progress: 409 with that `run_id`. On the push path this is the nack
    /// that brings the message back if that run dies (409, not 503, because
    /// nothing is wrong with this worker; Pub/Sub treats both as a nack).
    #[error(
        "run {run_id} is in progress for this message or Idempotency-Key; try again once it has finished"
    )]
    RunInProgress {
        /// The run holding the key.
        run_id: Uuid,
    },
    /// A push whose message id is held by a run of other content (job or
    /// data): 409, a nack, so the subscription's retry and dead-letter
    /// policy keep it (with `DEAD_LETTER_TOPIC` set it is dead-lettered and
    /// acked instead). `run_id` is the run that holds the message id.
    #[error(
        "this message id was already claimed by run {run_id} with other content (job or data); this delivery was not run and is left to the subscription's dead-letter policy"
    )]
    MessageConflict {
        /// The run holding the message id.
        run_id: Uuid,
    },
    /// An `Idempotency-Key` reused with a different payload: 422.
    #[error(
        "Idempotency-Key was first used with a different payload (run {run_id}); use a new key for a new request"
    )]
    IdempotencyKeyReused {
        /// The run that holds the key.
        run_id: Uuid,
    },
    /// A cancel of a run that is not running: 409 with its `run_id`.
    #[error("run {run_id} is not running (it is {status}); only a running run can be cancelled")]
    RunNotRunning {
        /// The run.
        run_id: Uuid,
        /// Its status.
        status: crate::runs::RunStatus,
    },
    /// A re-run of a run whose payload was not kept: 409 with its `run_id`.
    #[error(
        "run {run_id}'s payload was not kept (it was over RUN_PAYLOAD_CAP_BYTES, or not JSON), so it cannot be run again; trigger the job with the payload instead"
    )]
    PayloadNotKept {
        /// The run.
        run_id: Uuid,
    },
    /// The run ledger cannot be reached: 503 with `Retry-After`. Nothing ran
    /// unrecorded; on the push path it is a nack.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything unexpected: 500, opaque.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Error {
    /// The HTTP status of this error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Auth(
                AuthError::MissingToken | AuthError::WrongScheme | AuthError::InvalidToken(_),
            ) => StatusCode::UNAUTHORIZED,
            Self::Auth(AuthError::InvalidRequest(_)) => StatusCode::BAD_REQUEST,
            Self::Auth(AuthError::InsufficientScope(_)) => StatusCode::FORBIDDEN,
            Self::Auth(AuthError::KeysUnavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Envelope(EnvelopeError::TooLarge) | Self::PayloadTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::Envelope(_) | Self::BadBody => StatusCode::BAD_REQUEST,
            Self::NoJob { .. } | Self::NoRoute { .. } | Self::EventNoJob { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::Event(e) if e.is_unsupported_media() => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Event(_) => StatusCode::BAD_REQUEST,
            Self::Dispatch(d) => dispatch_status(d),
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::DeadLetterFailed(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::RunInProgress { .. }
            | Self::MessageConflict { .. }
            | Self::RunNotRunning { .. }
            | Self::PayloadNotKept { .. } => StatusCode::CONFLICT,
            Self::IdempotencyKeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable `error` code of the body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Auth(AuthError::MissingToken | AuthError::WrongScheme) => "unauthorized",
            Self::Auth(AuthError::InvalidRequest(_)) => "invalid_request",
            Self::Auth(AuthError::InvalidToken(_)) => "invalid_token",
            Self::Auth(AuthError::InsufficientScope(_)) => "insufficient_scope",
            Self::Auth(AuthError::KeysUnavailable(_)) => "keys_unavailable",
            Self::Envelope(EnvelopeError::TooLarge) | Self::PayloadTooLarge(_) => {
                "payload_too_large"
            }
            Self::Envelope(_) => "invalid_envelope",
            Self::BadBody => "bad_body",
            Self::NoJob { .. } | Self::EventNoJob { .. } => "no_job",
            Self::NoRoute { .. } => "no_route",
            Self::Event(e) => e.kind(),
            Self::Dispatch(d) => d.kind(),
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::DeadLetterFailed(_) => "dead_letter_failed",
            Self::BadRequest { code, .. } => code,
            Self::RunInProgress { .. } => "run_in_progress",
            Self::MessageConflict { .. } => "message_conflict",
            Self::IdempotencyKeyReused { .. } => "idempotency_key_reused",
            Self::RunNotRunning { .. } => "run_not_running",
            Self::PayloadNotKept { .. } => "payload_not_kept",
            Self::Store(_) => "store_unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

/// The status a dispatch failure answers with. Every one is a nack on the
/// push path; permanent ones are 4xx so they read as the caller's problem.
pub fn dispatch_status(err: &DispatchError) -> StatusCode {
    match err {
        DispatchError::UnknownJob(_) => StatusCode::NOT_FOUND,
        DispatchError::NotJson { .. } => StatusCode::BAD_REQUEST,
        DispatchError::InvalidPayload { .. } | DispatchError::Permanent(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        DispatchError::Transient(_) => StatusCode::SERVICE_UNAVAILABLE,
        DispatchError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        DispatchError::Panicked => StatusCode::INTERNAL_SERVER_ERROR,
        // Only the manual trigger answers it (a cancelled push is acked).
        DispatchError::Cancelled => StatusCode::CONFLICT,
    }
}

/// The `Retry-After` of every 503: each one is a condition that passes
/// (keys, the ledger, a dependency, the dead-letter topic).
pub fn retry_after() -> HeaderValue {
    HeaderValue::from_static("10")
}

fn challenge(error: Option<&str>, description: Option<&str>) -> HeaderValue {
    let mut value = String::from("Bearer");
    if let Some(error) = error {
        value.push_str(&format!(" error=\"{error}\""));
        if let Some(d) = description {
            // Descriptions are our own fixed strings; keep them header-safe.
            let d: String = d
                .chars()
                .filter(|c| *c != '"' && *c != '\\' && c.is_ascii())
                .collect();
            value.push_str(&format!(", error_description=\"{d}\""));
        }
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// The JSON body of every error answer. Client errors say what to fix in
/// `message`; 5xx messages are opaque.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The stable, machine-readable code (`invalid_token`,
    /// `insufficient_scope`, `invalid_payload`, `run_in_progress`, …).
    #[schema(example = "invalid_payload")]
    pub error: &'static str,
    /// What went wrong and what to fix (client errors); a fixed text on 5xx.
    pub message: String,
    /// On `invalid_payload`: the path of the field that does not fit (`.`
    /// for the root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// On `invalid_payload`: what is wrong at `path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// On `run_in_progress`, `message_conflict` and
    /// `idempotency_key_reused`: the run that holds the key; on
    /// `run_not_running` and `payload_not_kept`: the run asked about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<Uuid>,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let mut body = ErrorBody {
            error: self.code(),
            message: String::new(),
            path: None,
            detail: None,
            run_id: None,
        };
        if status.is_server_error() {
            // Opaque to the client; the cause is logged once, here.
            match &self {
                Self::Auth(e) => {
                    tracing::warn!(error = %e, "answered 503: signing keys unavailable")
                }
                Self::Dispatch(DispatchError::Transient(_) | DispatchError::Timeout(_)) => {
                    tracing::warn!(error = %self, "answered {status}: job failed transiently");
                }
                Self::Store(StoreError::Unavailable(cause)) => {
                    tracing::error!(error = %format!("{cause:#}"), "answered 503: run store unavailable (nothing ran unrecorded)");
                }
                _ => tracing::error!(error = %format!("{self:#}"), "answered {status}"),
            }
            body.message = match &self {
                Self::Auth(_) => "signing keys are unavailable; retry later",
                Self::Dispatch(DispatchError::Transient(_)) => {
                    "the job failed with a transient error; retry later"
                }
                Self::Dispatch(DispatchError::Timeout(_)) => "the job timed out",
                Self::DeadLetterFailed(_) => "the message could not be dead-lettered; retry later",
                Self::Store(_) => "the run ledger is unavailable; retry later",
                _ => "internal error",
            }
            .to_owned();
        } else {
            body.message = self.to_string();
            if let Self::Dispatch(DispatchError::InvalidPayload { path, message, .. }) = &self {
                body.path = Some(path.clone());
                body.detail = Some(message.clone());
            }
            if let Self::Auth(e) = &self {
                tracing::debug!(error = %e, status = status.as_u16(), "request refused");
            }
            if let Self::RunInProgress { run_id }
            | Self::IdempotencyKeyReused { run_id }
            | Self::MessageConflict { run_id }
            | Self::RunNotRunning { run_id, .. }
            | Self::PayloadNotKept { run_id } = &self
            {
                body.run_id = Some(*run_id);
            }
        }
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Auth(AuthError::MissingToken | AuthError::WrongScheme) => {
                headers.insert(header::WWW_AUTHENTICATE, challenge(None, None));
            }
            Self::Auth(AuthError::InvalidToken(d)) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    challenge(Some("invalid_token"), Some(d)),
                );
            }
            Self::Auth(AuthError::InvalidRequest(d)) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    challenge(Some("invalid_request"), Some(d)),
                );
            }
            Self::Auth(AuthError::InsufficientScope(d)) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    challenge(Some("insufficient_scope"), Some(d)),
                );
            }
            _ => {}
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, retry_after());
        }
        response
    }
}

/// A run of `POST /jobs/{name}` whose job failed: recorded, and answered
/// with the status of its failure.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RunFailure {
    /// The run.
    pub(super) run_id: Uuid,
    /// The job.
    pub(super) job: String,
    /// `failed_permanent`, `failed_transient`, `timed_out`, `panicked` or
    /// `cancelled`.
    #[schema(example = "failed_permanent")]
    pub(super) status: &'static str,
    /// The failure's kind (`job_failed_permanent`, `job_failed_transient`,
    /// `job_timeout`, `job_panicked`, `run_cancelled`).
    pub(super) error: &'static str,
    /// The job's own message on a permanent failure; a fixed text otherwise.
    pub(super) message: String,
    /// How long the job took.
    pub(super) duration_ms: u64,
}
