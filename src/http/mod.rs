//! The HTTP surface: the router, the shared state ([`AppState`]), the one
//! error type ([`Error`]), the extractors over auth ([`extract`]), the CORS
//! layer, the request log, and one module per resource, each exporting its
//! own `router()`.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /healthz` | anyone | liveness |
//! | `GET /readyz` | anyone | keys loaded for every configured issuer |
//! | `GET /auth/whoami` | any verified caller | the principal, and whether it may trigger |
//! | `GET /jobs` | any verified caller | jobs with description and payload schema |
//! | `POST /jobs/{name}` | trigger permission / allowed service account | run a job by hand |
//! | `POST /pubsub/push[/{job}]` | allowed service account only (people: `POST /jobs/{name}`) | Pub/Sub push |
//! | `POST /events` | allowed service account only | CloudEvents from Eventarc (binary or structured mode) |
//! | `GET /admin` (+ `app.js`, `app.css`, `config.json`) | anyone | the admin page (signs in with Clerk) |
//! | `POST /admin/dev/session` | dev mode, loopback only | a development sign-in token |
//! | `GET /runs`, `GET /runs/{id}` | Clerk users with the view or trigger permission | the run ledger |
//! | `GET /runs/stats` | the same | runs per bucket, job and status, with p50/p95 durations ([`run_stats`]) |
//! | `POST /runs/{id}/cancel`, `POST /runs/{id}/rerun`, `POST /runs/rerun` | Clerk users with the trigger permission | stop a run, run a recorded payload again, re-run many ([`control`]) |
//! | `GET /runs/rerun/{bulk_id}` | Clerk users with the view or trigger permission | a bulk re-run's progress |
//! | `GET /openapi.json`, `GET /docs` (+ assets) | anyone (`OPENAPI_ENABLED`) | the OpenAPI 3.1 document, and Swagger UI over it ([`openapi`]) |
//!
//! With `CORS_ALLOWED_ORIGINS` set, a CORS layer wraps every route so that an
//! admin page hosted on another origin can call the API.

pub mod admin;
mod control;
mod cors;
mod error;
mod events;
pub mod extract;
mod health;
mod jobs;
pub mod openapi;
mod push;
mod run_stats;
mod runs;
mod state;
mod whoami;

use std::sync::Arc;

use axum::{Router, extract::MatchedPath};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

pub use error::{Error, ErrorBody, dispatch_status};
pub use state::{AppState, Instruments};

use crate::jobs::JobRegistry;

/// The API's routes, each with its part of the document.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(health::router())
        .merge(whoami::router())
        .merge(jobs::router())
        .merge(push::router())
        .merge(events::router())
        .merge(runs::router())
        .merge(run_stats::router())
        .merge(control::router())
}

/// The OpenAPI document of the API serving `jobs` (see [`openapi`]).
pub fn document(jobs: &JobRegistry) -> Result<utoipa::openapi::OpenApi, openapi::BridgeError> {
    let (_, doc) = api().split_for_parts();
    openapi::finish(doc, jobs)
}

/// The application's router over `state`. Fails only if a job's schema
/// cannot be carried into the API document (see [`openapi::bridge`]).
pub fn router(state: AppState) -> anyhow::Result<Router> {
    let cors = cors::cors_layer(&state.config);
    let (api, doc) = api().split_for_parts();
    let doc = openapi::finish(doc, &state.jobs)?;
    let app = api
        .merge(openapi::router(&doc, &state.config)?)
        .merge(admin::router(&state.config))
        .fallback(no_route)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.metrics),
            trace_request,
        ));
    // Outermost, so that preflights are answered before authentication.
    let app = match cors {
        Some(cors) => app.layer(cors),
        None => app,
    };
    // On every answer, preflights and errors included: error bodies echo
    // what the client sent, and must never be sniffed into HTML.
    Ok(app
        .layer(
            tower_http::set_header::SetResponseHeaderLayer::if_not_present(
                axum::http::header::X_CONTENT_TYPE_OPTIONS,
                axum::http::HeaderValue::from_static("nosniff"),
            ),
        )
        .with_state(state))
}

/// An unknown path: 404 with the JSON error body every other error has.
async fn no_route() -> Error {
    Error::NotFound(
        "no such route (the API serves /healthz, /readyz, /auth/whoami, /jobs, /pubsub/push, /events, /runs, /admin, /openapi.json and /docs)"
            .to_owned(),
    )
}

/// A `Content-Length` header's value, if present and a number.
fn content_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Wraps each request in a span carrying its trace context (so every line it
/// logs joins its trace in Cloud Logging) and writes one request line with
/// `httpRequest` fields once its response body is sent (or dropped: a
/// client that goes away), with the bytes actually sent. Headers and bodies
/// are never logged.
///
/// The span also carries the run's fields, which the push and trigger
/// handlers record on it (`principal`, `job`, `source`, `message_id`,
/// `subscription`, `event_type`, `attempt`, `run_id`): a run that succeeds writes exactly
/// this one line, with its job, message, run and outcome, and a failure's
/// own lines carry the same fields. Logging is a large part of a push's
/// work, so a run writes one line, not two.
///
/// The same moment ends the request's `http_server_request_duration_seconds`
/// sample, labelled with the route's template (not the path a caller chose).
async fn trace_request(
    axum::extract::State(metrics): axum::extract::State<Arc<Instruments>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument as _;
    let (trace_id, span_id) = crate::telemetry::trace_context(request.headers());
    let span = tracing::info_span!(
        "request",
        trace_id = trace_id.as_deref(),
        span_id = span_id.as_deref(),
        principal = tracing::field::Empty,
        job = tracing::field::Empty,
        source = tracing::field::Empty,
        message_id = tracing::field::Empty,
        subscription = tracing::field::Empty,
        event_type = tracing::field::Empty,
        attempt = tracing::field::Empty,
        run_id = tracing::field::Empty,
    );
    let method = request.method().clone();
    // A clone of the parsed URI shares its bytes: no copy of the path.
    let uri = request.uri().clone();
    let user_agent = request
        .headers()
        .get(axum::http::header::USER_AGENT)
        .cloned();
    let request_size = content_length(request.headers()).unwrap_or(0);
    let route = if metrics.metrics.is_enabled() {
        request.extensions().get::<MatchedPath>().cloned()
    } else {
        None
    };
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let log = RequestLog {
        span,
        method,
        uri,
        user_agent,
        request_size,
        status: response.status().as_u16(),
        started,
        route,
        metrics,
    };
    response.map(|body| axum::body::Body::new(CountedBody::new(body, log)))
}

/// Records several fields of the request span (see [`trace_request`]) in
/// one call, `None` leaving a field unset: each `Span::record` is a lookup of
/// the span in every layer, and a push records many.
fn record_fields<const N: usize>(
    span: &tracing::Span,
    values: [(&str, Option<&dyn tracing::Value>); N],
) {
    let Some(fields) = span.metadata().map(tracing::Metadata::fields) else {
        return; // disabled: nothing records
    };
    let found: Option<Vec<_>> = values.iter().map(|(name, _)| fields.field(*name)).collect();
    let Some(Ok(found)) = found.map(<[tracing::field::Field; N]>::try_from) else {
        debug_assert!(false, "the request span lacks one of these fields");
        return;
    };
    let pairs: [(&tracing::field::Field, Option<&dyn tracing::Value>); N] =
        std::array::from_fn(|i| (&found[i], values[i].1));
    span.record_all(&fields.value_set(&pairs));
}

/// What the request line says, but for the bytes sent.
struct RequestLog {
    span: tracing::Span,
    method: axum::http::Method,
    uri: axum::http::Uri,
    user_agent: Option<axum::http::HeaderValue>,
    request_size: u64,
    status: u16,
    started: std::time::Instant,
    /// The matched route's template; none for an unknown path.
    route: Option<MatchedPath>,
    metrics: Arc<Instruments>,
}

/// OpenTelemetry's `http.request.method`: the known methods, else `_OTHER`.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

impl RequestLog {
    /// Writes the request line, `sent` bytes of body having gone out.
    fn write(self, sent: u64) {
        let elapsed = self.started.elapsed();
        self.metrics.requests.record(
            self.route
                .as_ref()
                .map_or(crate::telemetry::metrics::OTHER, MatchedPath::as_str),
            (method_label(&self.method), self.status),
            elapsed.as_secs_f64(),
        );
        let latency = latency(elapsed);
        let path = self.uri.path();
        let status = self.status;
        self.span.in_scope(|| {
            if matches!(path, "/healthz" | "/readyz") {
                tracing::debug!(
                    http.requestMethod = self.method.as_str(),
                    http.requestUrl = path,
                    http.status = status,
                    http.latency = latency.as_str(),
                    message = "request",
                );
            } else {
                let user_agent = self
                    .user_agent
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                // At most 200 characters of it (ASCII, as to_str checked).
                let user_agent = &user_agent[..user_agent.len().min(200)];
                tracing::info!(
                    http.requestMethod = self.method.as_str(),
                    http.requestUrl = path,
                    http.status = status,
                    http.latency = latency.as_str(),
                    http.userAgent = user_agent,
                    // Cloud Logging's LogEntry wants sizes as decimal strings.
                    http.requestSize = self.request_size.to_string().as_str(),
                    http.responseSize = sent.to_string().as_str(),
                    message = "request",
                );
            }
        });
    }
}

/// A response body that counts the bytes polled out of it and writes the
/// request line when it ends or is dropped.
///
/// Hand-written: a JSON answer's body states no size up front (no
/// `Content-Length` yet, a size hint of 0), so only counting gives the bytes
/// sent.
struct CountedBody {
    inner: axum::body::Body,
    sent: u64,
    log: Option<RequestLog>,
}

impl CountedBody {
    fn new(inner: axum::body::Body, log: RequestLog) -> Self {
        Self {
            inner,
            sent: 0,
            log: Some(log),
        }
    }

    fn finish(&mut self) {
        if let Some(log) = self.log.take() {
            log.write(self.sent);
        }
    }
}

impl http_body::Body for CountedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
            }
            std::task::Poll::Ready(None) => self.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A request's latency as Cloud Logging's `httpRequest.latency` wants it:
/// seconds with six decimals (`0.000123s`, the microseconds truncated).
fn latency(elapsed: std::time::Duration) -> String {
    format!("{}.{:06}s", elapsed.as_secs(), elapsed.subsec_micros())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::latency;

    #[test]
    fn latency_reads_as_cloud_logging_wants() {
        assert_eq!(latency(Duration::ZERO), "0.000000s");
        assert_eq!(latency(Duration::from_nanos(123_456_789)), "0.123456s");
        assert_eq!(latency(Duration::from_micros(61_000_001)), "61.000001s");
        assert_eq!(latency(Duration::MAX), "18446744073709551615.999999s");
    }
}
