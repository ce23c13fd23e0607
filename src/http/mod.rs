//! The HTTP surface: shared state, the router, the error type and one module
//! per resource, each exporting its own `router()`.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /healthz` | anyone | liveness |
//! | `GET /readyz` | anyone | keys loaded for every configured issuer |
//! | `GET /auth/whoami` | any verified caller | the principal, and whether it may trigger |
//! | `GET /jobs` | any verified caller | jobs with description and payload schema |
//! | `POST /jobs/{name}` | trigger permission / allowed service account | run a job by hand |
//! | `POST /pubsub/push[/{job}]` | allowed service account only (people: `POST /jobs/{name}`) | Pub/Sub push |
//! | `GET /admin` (+ `app.js`, `app.css`, `config.json`) | anyone | the admin page (signs in with Clerk) |
//! | `POST /admin/dev/session` | dev mode, loopback only | a development sign-in token |
//! | `GET /runs`, `GET /runs/{id}` | Clerk users with the view or trigger permission | the run ledger |
//!
//! With `CORS_ALLOWED_ORIGINS` set, a CORS layer wraps every route so that an
//! admin page hosted on another origin can call the API.

pub mod admin;
mod error;
mod health;
mod jobs;
mod push;
mod runs;
pub mod server;
mod whoami;

use std::sync::Arc;

use axum::Router;
use tokio_util::sync::CancellationToken;

pub use error::{Error, dispatch_status};

use crate::{
    auth::Authenticator,
    config::Config,
    jobs::JobRegistry,
    pubsub::dead_letter::DeadLetter,
    runs::{
        RunStore,
        runner::{RunLimits, Runner},
    },
};

/// What every handler can reach. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The authentication core.
    pub auth: Arc<Authenticator>,
    /// The jobs.
    pub jobs: Arc<JobRegistry>,
    /// The dead-letter publisher, when `DEAD_LETTER_TOPIC` is set.
    pub dead_letter: Option<Arc<DeadLetter>>,
    /// The run ledger (memory, or PostgreSQL with `DATABASE_URL`).
    pub runs: Arc<dyn RunStore>,
    /// Cancelled when the shutdown grace period is over: every job still
    /// running is cancelled and its request answered 503 (a nack).
    ///
    /// Behind an `Arc`: cloning or dropping a `CancellationToken` locks the
    /// mutex of its token tree, and the state is cloned for every request
    /// (by each extractor and the handler); an `Arc` clone is one atomic
    /// add instead of a lock every thread would contend for.
    pub stop: Arc<CancellationToken>,
}

impl AppState {
    /// The record-claim-run-finish sequence over this state's ledger and jobs.
    pub fn runner(&self) -> Runner {
        Runner::new(
            Arc::clone(&self.runs),
            Arc::clone(&self.jobs),
            Arc::clone(&self.stop),
            RunLimits {
                job_timeout: self.config.job_timeout,
                payload_cap: self.config.runs.payload_cap,
                output_cap: self.config.runs.output_cap,
            },
        )
    }
}

/// The application's router over `state`.
pub fn router(state: AppState) -> Router {
    let cors = admin::cors_layer(&state.config);
    let app = Router::new()
        .merge(health::router())
        .merge(whoami::router())
        .merge(jobs::router())
        .merge(push::router())
        .merge(runs::router())
        .merge(admin::router(&state.config))
        .fallback(no_route)
        .layer(axum::middleware::from_fn(trace_request));
    // Outermost, so that preflights are answered before authentication.
    let app = match cors {
        Some(cors) => app.layer(cors),
        None => app,
    };
    // On every answer, preflights and errors included: error bodies echo
    // what the client sent, and must never be sniffed into HTML.
    app.layer(
        tower_http::set_header::SetResponseHeaderLayer::if_not_present(
            axum::http::header::X_CONTENT_TYPE_OPTIONS,
            axum::http::HeaderValue::from_static("nosniff"),
        ),
    )
    .with_state(state)
}

/// An unknown path: 404 with the JSON error body every other error has.
async fn no_route() -> Error {
    Error::NotFound(
        "no such route (the API serves /healthz, /readyz, /auth/whoami, /jobs, /pubsub/push, /runs and /admin)"
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
/// `httpRequest` fields when it is answered. Headers and bodies are never
/// logged.
///
/// The span also carries the run's fields, which the push and trigger
/// handlers record on it (`principal`, `job`, `source`, `message_id`,
/// `subscription`, `attempt`, `run_id`): a run that succeeds writes exactly
/// this one line, with its job, message, run and outcome, and a failure's
/// own lines carry the same fields. At `info`, logging is a large share of a
/// push's work (`RUST_LOG=warn` against `info` under
/// `scripts/callgrind-push.sh`; docs/performance.md), so a run writes one
/// line, not two.
async fn trace_request(
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
        attempt = tracing::field::Empty,
        run_id = tracing::field::Empty,
    );
    let method = request.method().clone();
    // A clone of the parsed URI shares its bytes: no copy of the path.
    let uri = request.uri().clone();
    let path = uri.path();
    let user_agent = request
        .headers()
        .get(axum::http::header::USER_AGENT)
        .cloned();
    let request_size = content_length(request.headers()).unwrap_or(0);
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let latency = Latency::new(started.elapsed());
    let response_size = content_length(response.headers()).unwrap_or(0);
    span.in_scope(|| {
        let quiet = matches!(path, "/healthz" | "/readyz");
        if quiet {
            tracing::debug!(
                http.requestMethod = method.as_str(),
                http.requestUrl = path,
                http.status = status,
                http.latency = latency.as_str(),
                message = "request",
            );
        } else {
            let user_agent = user_agent
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            // At most 200 characters of it (ASCII, as to_str checked).
            let user_agent = &user_agent[..user_agent.len().min(200)];
            tracing::info!(
                http.requestMethod = method.as_str(),
                http.requestUrl = path,
                http.status = status,
                http.latency = latency.as_str(),
                http.userAgent = user_agent,
                // Cloud Logging's LogEntry wants sizes as decimal strings.
                http.requestSize = itoa::Buffer::new().format(request_size),
                http.responseSize = itoa::Buffer::new().format(response_size),
                // A plain string, not format arguments: no `fmt` on the
                // line every request writes.
                message = "request",
            );
        }
    });
    response
}

/// A request's latency as Cloud Logging's `httpRequest.latency` wants it:
/// seconds with six decimals (`0.000123s`, the microseconds truncated), in
/// a buffer on the stack.
struct Latency {
    text: [u8; 28],
    len: usize,
}

impl Latency {
    fn new(elapsed: std::time::Duration) -> Self {
        let mut text = [0u8; 28];
        let mut secs = itoa::Buffer::new();
        // At most 20 digits, then `.`, six digits and `s`: 28 bytes.
        let secs = secs.format(elapsed.as_secs()).as_bytes();
        text[..secs.len()].copy_from_slice(secs);
        let mut len = secs.len();
        text[len] = b'.';
        len += 1;
        let micros = elapsed.subsec_micros();
        for place in (0..6).rev() {
            text[len] = b'0' + (micros / 10u32.pow(place) % 10) as u8;
            len += 1;
        }
        text[len] = b's';
        Self { text, len: len + 1 }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text[..self.len]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Latency;

    #[test]
    fn latency_reads_as_cloud_logging_wants() {
        let text = |d| Latency::new(d).as_str().to_owned();
        assert_eq!(text(Duration::ZERO), "0.000000s");
        assert_eq!(text(Duration::from_nanos(123_456_789)), "0.123456s");
        assert_eq!(text(Duration::from_micros(61_000_001)), "61.000001s");
        assert_eq!(text(Duration::MAX), "18446744073709551615.999999s");
    }
}
