//! What every handler can reach.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{
    auth::Authenticator,
    config::Config,
    jobs::JobRegistry,
    pubsub::dead_letter::DeadLetter,
    runner::{RunLimits, RunMetrics, Runner},
    runs::RunStore,
    telemetry::metrics::{HistogramTable, Metrics, names},
};

/// Distinct subscriptions counted apart in
/// `messaging_process_duration_seconds`; any more are
/// [`OTHER`](crate::telemetry::metrics::OTHER).
const MAX_SUBSCRIPTIONS: usize = 64;

/// What the HTTP layer and the runner record, over one recorder.
#[derive(Debug)]
pub struct Instruments {
    /// The recorder (or none: metrics off).
    pub metrics: Metrics,
    /// The runner's series.
    pub runs: Arc<RunMetrics>,
    /// `http_server_request_duration_seconds` by route, then method and
    /// status.
    pub requests: HistogramTable<(&'static str, u16)>,
    /// `messaging_process_duration_seconds` by subscription, then error type
    /// (none: acknowledged).
    pub pushes: HistogramTable<Option<&'static str>>,
}

impl Instruments {
    /// The series of this worker, over `metrics`.
    pub fn new(metrics: &Metrics, jobs: &JobRegistry) -> Self {
        Self {
            metrics: metrics.clone(),
            runs: Arc::new(RunMetrics::new(metrics, jobs)),
            requests: HistogramTable::new(
                metrics,
                names::HTTP_SERVER_REQUEST_DURATION,
                &[],
                "http_route",
                |(method, status)| {
                    vec![
                        ("http_request_method", (*method).to_owned()),
                        ("http_response_status_code", status.to_string()),
                    ]
                },
                // Route templates come from the router: a fixed set.
                usize::MAX,
            ),
            pushes: HistogramTable::new(
                metrics,
                names::MESSAGING_PROCESS_DURATION,
                &[("messaging_system", "gcp_pubsub")],
                "messaging_destination_subscription_name",
                // OpenTelemetry sets error.type only on a failure.
                |error| {
                    error
                        .map(|e| vec![("error_type", e.to_owned())])
                        .unwrap_or_default()
                },
                MAX_SUBSCRIPTIONS,
            ),
        }
    }

    /// Off: nothing is recorded.
    pub fn disabled() -> Self {
        Self::new(&Metrics::disabled(), &JobRegistry::new())
    }
}

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
    /// The metrics the handlers, the request layer and the runner record.
    pub metrics: Arc<Instruments>,
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
            Arc::clone(&self.metrics.runs),
        )
    }
}
