//! The API described: an OpenAPI 3.1 document generated from the routes, at
//! `GET /openapi.json`, and Swagger UI over it at `GET /docs` ([`docs`]).
//!
//! Each route module registers its handlers with `utoipa_axum`, whose
//! `#[utoipa::path]` gives the route's parameters, body, security and every
//! answer; [`crate::http::document`] merges them under [`ApiDoc`] (the
//! security schemes, the shared error responses of [`responses`]). Then
//! [`finish`] replaces the generic `POST /jobs/{name}` with one operation per
//! registered job, whose request body is that job's payload schema (the
//! schemars schema `GET /jobs` serves, carried over by [`bridge`]) and whose
//! answer carries its output schema when the job declares one: a job added to
//! the registry appears with no other change.
//!
//! The document names no server, so it is the same on every host:
//! `pushworker openapi` prints it, and `docs/openapi.json` is that output,
//! checked by a test. The admin page's routes and `/docs` are HTML and
//! assets, not API, and are left out.

pub mod bridge;
mod docs;
pub mod responses;

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::{
        self, HttpMethod, Ref, RefOr,
        schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, Schema, Type},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use super::{
    AppState,
    error::{ErrorBody, RunFailure},
};
use crate::{config::Config, jobs::JobRegistry};
pub use bridge::BridgeError;

/// The security scheme of Google-signed OIDC tokens (service callers).
pub const GOOGLE_OIDC: &str = "google_oidc";
/// The security scheme of Clerk session tokens (people).
pub const CLERK_SESSION: &str = "clerk_session";

/// The document's frame: what no route states on its own.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "pushworker",
        description = "One Cloud Run service for Pub/Sub push, Eventarc events, Cloud Scheduler / Cloud Tasks calls and Clerk-signed manual triggers, with typed jobs behind one auth core.\n\nEvery route but the health checks and this document takes `Authorization: Bearer <token>`: a Google-signed OIDC token for service callers (`google_oidc`: Pub/Sub push, Eventarc, Scheduler, Tasks) or a Clerk session token for people (`clerk_session`). Errors are JSON (`ErrorBody`) with a stable `error` code; 401 and 403 carry an RFC 6750 `WWW-Authenticate` challenge and every 503 a `Retry-After`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(openapi_json),
    components(schemas(ErrorBody, RunFailure)),
    modifiers(&Shared),
    tags(
        (name = "jobs", description = "The jobs, and running one by hand (people with the trigger permission) or from Cloud Scheduler / Cloud Tasks (allowed service accounts)."),
        (name = "pubsub", description = "Pub/Sub push delivery: the answer is the acknowledgement (2xx acks, anything else is a nack)."),
        (name = "events", description = "CloudEvents 1.0 from Eventarc, acknowledged as a push is."),
        (name = "runs", description = "The run ledger: every dispatch, for people with the view or trigger permission."),
        (name = "auth", description = "Who the caller is."),
        (name = "health", description = "Liveness and readiness, without authentication."),
        (name = "meta", description = "This document."),
    ),
)]
pub struct ApiDoc;

/// The security schemes and the shared responses.
struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            GOOGLE_OIDC,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A Google-signed OIDC ID token (RS256) of an allowed service account (`GOOGLE_SERVICE_ACCOUNTS`), for one of `GOOGLE_AUDIENCES`: what Pub/Sub push, Eventarc, Cloud Scheduler and Cloud Tasks send.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            CLERK_SESSION,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A Clerk session token (`Clerk.session.getToken()`) of `CLERK_ISSUER`, minted for one of `CLERK_AUTHORIZED_PARTIES`. Running jobs needs `TRIGGER_PERMISSION` in the active organization; reading runs needs `RUNS_VIEW_PERMISSION` or that.",
                    ))
                    .build(),
            ),
        );
        for (name, response) in responses::all() {
            components.responses.insert(name.to_owned(), response);
        }
    }
}

/// The document itself.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    operation_id = "openapi",
    summary = "This OpenAPI 3.1 document",
    description = "Public: it holds no secret. Turned off (404) with `OPENAPI_ENABLED=false`.",
    responses((status = 200, description = "The OpenAPI 3.1 document.", content_type = "application/json",
        body = Object)),
)]
async fn openapi_json(State(document): State<Bytes>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document).into_response()
}

/// A job name as part of an operation id.
fn operation_name(job: &str) -> String {
    job.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A job name in `UpperCamelCase`, for its schemas' fallback names.
fn type_name(job: &str) -> String {
    job.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Replaces the generic trigger (`POST /jobs/{name}`) with one operation per
/// job of `jobs`: the same parameters (but the name), security and answers,
/// the job's payload schema as the body, and its output schema, when it
/// declares one, as the `output` of the 200.
pub fn finish(
    mut doc: openapi::OpenApi,
    jobs: &JobRegistry,
) -> Result<openapi::OpenApi, BridgeError> {
    let template = doc
        .paths
        .paths
        .remove(super::jobs::TRIGGER_PATH)
        .and_then(|item| item.post);
    let Some(template) = template else {
        return Ok(doc);
    };
    let mut components = doc.components.take().unwrap_or_default();
    for job in jobs.list() {
        let mut op = template.clone();
        op.operation_id = Some(format!("trigger_{}", operation_name(job.name)));
        op.summary = Some(format!("Run `{}`", job.name));
        op.description = Some(format!(
            "{}\n\n{}",
            job.description,
            template.description.as_deref().unwrap_or_default()
        ));
        if let Some(parameters) = &mut op.parameters {
            parameters.retain(|p| p.name != "name");
        }
        let payload = bridge::add_schema(
            &mut components,
            job.name,
            &format!("{}Payload", type_name(job.name)),
            &job.payload_schema,
        )?;
        if let Some(body) = &mut op.request_body
            && let Some(content) = body.content.get_mut("application/json")
        {
            content.schema = Some(payload);
        }
        // Unreachable here: the path names a job that exists.
        op.responses.responses.remove("404");
        if let Some(output) = &job.output_schema {
            let output = bridge::add_schema(
                &mut components,
                job.name,
                &format!("{}Output", type_name(job.name)),
                output,
            )?;
            let result: RefOr<Schema> = AllOfBuilder::new()
                .item(Ref::from_schema_name(super::jobs::RunResult::name()))
                .item(
                    ObjectBuilder::new().property(
                        "output",
                        AnyOfBuilder::new()
                            .item(output)
                            .item(ObjectBuilder::new().schema_type(Type::Null))
                            .description(Some(format!(
                                "What `{}` returned (`null` on a repeat whose record no longer holds it).",
                                job.name
                            ))),
                    ),
                )
                .into();
            if let Some(RefOr::T(ok)) = op.responses.responses.get_mut("200")
                && let Some(content) = ok.content.get_mut("application/json")
            {
                content.schema = Some(result);
            }
        }
        doc.paths
            .add_path_operation(format!("/jobs/{}", job.name), vec![HttpMethod::Post], op);
    }
    doc.components = Some(components);
    Ok(doc)
}

/// The document as `pushworker openapi` prints it and `docs/openapi.json`
/// holds it: pretty, with a final newline.
pub fn to_pretty_json(doc: &openapi::OpenApi) -> serde_json::Result<String> {
    let mut text = serde_json::to_string_pretty(doc)?;
    text.push('\n');
    Ok(text)
}

/// `GET /openapi.json` serving `doc`, and `/docs` over it, when
/// `OPENAPI_ENABLED` (a flag of the HTTP server's settings); nothing (404)
/// otherwise.
pub(super) fn router(doc: &openapi::OpenApi, config: &Config) -> anyhow::Result<Router<AppState>> {
    if !config.openapi_enabled {
        return Ok(Router::new());
    }
    let document = Bytes::from(serde_json::to_vec(doc)?);
    let api = Router::new()
        .route("/openapi.json", get(openapi_json))
        .with_state(document);
    Ok(api.merge(docs::router(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_as_identifiers() {
        assert_eq!(operation_name("storage-object"), "storage_object");
        assert_eq!(type_name("storage-object"), "StorageObject");
        assert_eq!(type_name("echo"), "Echo");
        assert_eq!(type_name("flaky_once"), "FlakyOnce");
    }
}
