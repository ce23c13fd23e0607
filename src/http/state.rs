//! What every handler can reach.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
};

use serde::Serialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    auth::Authenticator,
    config::Config,
    jobs::JobRegistry,
    pubsub::dead_letter::DeadLetter,
    runner::{RunControl, RunLimits, RunMetrics, Runner},
    runs::{RunPrincipal, RunStore},
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
    /// The runs in flight here, for cancel requests.
    pub control: Arc<RunControl>,
    /// The bulk re-runs started here, for their progress.
    pub reruns: Arc<BulkReruns>,
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
            Arc::clone(&self.control),
        )
    }
}

/// How many bulk re-runs' progress an instance keeps (the oldest go first).
const KEPT_RERUNS: usize = 100;

/// The progress of a bulk re-run (`POST /runs/rerun`), as
/// `GET /runs/rerun/{bulk_id}` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RerunProgress {
    /// The bulk re-run's id.
    pub bulk_id: Uuid,
    /// Who started it.
    pub requested_by: RunPrincipal,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// How many runs matched the filter (each is re-run once).
    pub matched: u64,
    /// How many have been dealt with so far (re-run or skipped).
    pub done: u64,
    /// Re-runs whose job succeeded.
    pub succeeded: u64,
    /// Re-runs whose job failed (or could not be recorded).
    pub failed: u64,
    /// Matched runs not re-run: their payload was not kept, their job no
    /// longer exists, or the worker was shutting down.
    pub skipped: u64,
    /// Whether every matched run has been dealt with (`done == matched`,
    /// worked out when read).
    pub finished: bool,
    /// The new runs, in the order they started.
    pub runs: Vec<Uuid>,
}

/// The bulk re-runs of this instance, the latest [`KEPT_RERUNS`].
#[derive(Debug, Default)]
pub struct BulkReruns {
    kept: Mutex<VecDeque<Arc<Mutex<RerunProgress>>>>,
}

impl BulkReruns {
    /// Keeps `progress`, dropping the oldest past the bound; returns its
    /// handle for the task that updates it.
    pub fn start(&self, progress: RerunProgress) -> Arc<Mutex<RerunProgress>> {
        let progress = Arc::new(Mutex::new(progress));
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() >= KEPT_RERUNS {
            kept.pop_front();
        }
        kept.push_back(Arc::clone(&progress));
        progress
    }

    /// The progress of bulk re-run `bulk_id`, if kept.
    pub fn get(&self, bulk_id: Uuid) -> Option<RerunProgress> {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.iter()
            .map(|p| p.lock().unwrap_or_else(PoisonError::into_inner))
            .find(|p| p.bulk_id == bulk_id)
            .map(|p| RerunProgress {
                finished: p.done == p.matched,
                ..p.clone()
            })
    }
}
