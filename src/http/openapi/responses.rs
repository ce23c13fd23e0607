//! The error answers the routes share, as response components: each is the
//! [`ErrorBody`] of [`crate::http::Error`] with the headers its status
//! carries, named once and referenced by every route that answers it.
//!
//! `POST /jobs/{name}` answers a run that failed with the run (its id, job,
//! status and error, [`RunFailure`]) rather than a bare error, so its 422,
//! 500, 503 and 504 are components of their own that admit either body.

use utoipa::{
    ToSchema,
    openapi::{
        Content, Ref, RefOr, Response, ResponseBuilder,
        header::HeaderBuilder,
        schema::{AnyOfBuilder, ObjectBuilder, Type},
    },
};

use super::super::error::{ErrorBody, RunFailure};

fn www_authenticate(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::String))
        .description(Some(description))
        .build()
}

fn retry_after() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        )
        .description(Some("Seconds to wait before trying again."))
        .build()
}

fn error_body() -> RefOr<utoipa::openapi::schema::Schema> {
    RefOr::Ref(Ref::from_schema_name(ErrorBody::name()))
}

/// An [`ErrorBody`] or, from a run that failed, a [`RunFailure`].
fn error_or_run() -> RefOr<utoipa::openapi::schema::Schema> {
    AnyOfBuilder::new()
        .item(error_body())
        .item(Ref::from_schema_name(RunFailure::name()))
        .into()
}

fn response(
    description: &str,
    body: RefOr<utoipa::openapi::schema::Schema>,
    headers: &[(&str, utoipa::openapi::header::Header)],
) -> RefOr<Response> {
    let mut builder = ResponseBuilder::new()
        .description(description)
        .content("application/json", Content::new(Some(body)));
    for (name, header) in headers {
        builder = builder.header(*name, header.clone());
    }
    RefOr::T(builder.build())
}

macro_rules! responses {
    ($($(#[$doc:meta])* $name:ident => $build:expr;)*) => {
        $(
            $(#[$doc])*
            pub struct $name;

            impl<'r> utoipa::ToResponse<'r> for $name {
                fn response() -> (&'r str, RefOr<Response>) {
                    (stringify!($name), $build)
                }
            }
        )*

        /// Every response component, for the document's `components`.
        pub fn all() -> Vec<(&'static str, RefOr<Response>)> {
            vec![$((stringify!($name), $build)),*]
        }
    };
}

responses! {
    /// 400.
    BadRequest => response(
        "The request is malformed: a body that is not JSON (or not a push envelope, or not a CloudEvent), a bad query or header value, or a malformed `Authorization` header (`invalid_request`, with a `WWW-Authenticate` challenge).",
        error_body(),
        &[("WWW-Authenticate", www_authenticate("On `invalid_request`: `Bearer error=\"invalid_request\", error_description=\"…\"`."))],
    );
    /// 401.
    Unauthorized => response(
        "No bearer token, another scheme (`unauthorized`), or a token that was refused (`invalid_token`: bad signature, expired, wrong audience or authorized party, unknown key).",
        error_body(),
        &[("WWW-Authenticate", www_authenticate("`Bearer`, or `Bearer error=\"invalid_token\", error_description=\"…\"` (RFC 6750)."))],
    );
    /// 403.
    Forbidden => response(
        "A verified caller that may not do this (`insufficient_scope`): a Clerk user without the permission, a service account that is not allowed, a person on a service route or a service on a people's route.",
        error_body(),
        &[("WWW-Authenticate", www_authenticate("`Bearer error=\"insufficient_scope\", error_description=\"…\"` (RFC 6750)."))],
    );
    /// 404.
    NotFound => response(
        "No such resource (`not_found`), or a job that does not exist (`unknown_job`).",
        error_body(),
        &[],
    );
    /// 409.
    Conflict => response(
        "`run_in_progress`: a run holds this message, event or `Idempotency-Key` now (try again once it is over; `run_id` names it). On the delivery routes, `message_conflict`: the message id (or event) was claimed by a run of other content.",
        error_body(),
        &[],
    );
    /// 413.
    PayloadTooLarge => response(
        "The body, or the message data in it, is over the limit (`payload_too_large`).",
        error_body(),
        &[],
    );
    /// 415.
    UnsupportedMediaType => response(
        "Not a CloudEvent in binary or structured JSON mode, a batch, or data that is not JSON.",
        error_body(),
        &[],
    );
    /// 422.
    Unprocessable => response(
        "The request can never run: no job named (`no_job`), no route for the event (`no_route`), a payload that does not fit the job (`invalid_payload`, with `path` and `detail`), or the job failed for good (`job_failed_permanent`).",
        error_body(),
        &[],
    );
    /// 500.
    Internal => response(
        "An unexpected failure, or the job panicked (`job_panicked`); the body is opaque.",
        error_body(),
        &[],
    );
    /// 503.
    Unavailable => response(
        "Try again later: signing keys unavailable (`keys_unavailable`), the run ledger unreachable (`store_unavailable`), the job failed transiently (`job_failed_transient`) or dead-lettering failed (`dead_letter_failed`). On the delivery routes this is a nack.",
        error_body(),
        &[("Retry-After", retry_after())],
    );
    /// 504.
    GatewayTimeout => response(
        "The job ran past `JOB_TIMEOUT_SECS` and was cancelled (`job_timeout`).",
        error_body(),
        &[],
    );
    /// 422 of `POST /jobs/{name}`.
    RunUnprocessable => response(
        "The payload does not fit the job (`invalid_payload`, with `path` and `detail`; nothing ran), the `Idempotency-Key` was first used with another payload (`idempotency_key_reused`), or the job failed for good: then the body is the failed run (`job_failed_permanent`).",
        error_or_run(),
        &[],
    );
    /// 500 of `POST /jobs/{name}`.
    RunPanicked => response(
        "The job panicked: the body is the failed run (`job_panicked`); or an unexpected failure.",
        error_or_run(),
        &[],
    );
    /// 503 of `POST /jobs/{name}`.
    RunUnavailable => response(
        "The job failed transiently (the body is the failed run, `job_failed_transient`), or signing keys or the run ledger are unavailable. Try again later.",
        error_or_run(),
        &[("Retry-After", retry_after())],
    );
    /// 409 of `POST /jobs/{name}` and the re-runs.
    RunConflict => response(
        "`run_in_progress`: a run holds this `Idempotency-Key` now (try again once it is over; `run_id` names it); or the run was cancelled on request before the job finished: then the body is the run (`run_cancelled`).",
        error_or_run(),
        &[],
    );
    /// 504 of `POST /jobs/{name}`.
    RunTimedOut => response(
        "The job ran past `JOB_TIMEOUT_SECS` and was cancelled: the body is the failed run (`job_timeout`).",
        error_or_run(),
        &[],
    );
}
