//! What every handler can reach.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{
    auth::Authenticator,
    config::Config,
    jobs::JobRegistry,
    pubsub::dead_letter::DeadLetter,
    runner::{RunLimits, Runner},
    runs::RunStore,
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
