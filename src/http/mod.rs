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
//! | `POST /pubsub/push[/{job}]` | allowed service account / trigger permission | Pub/Sub push |
//! | `GET /runs`, `GET /runs/{id}` | Clerk users with the view or trigger permission | the run ledger |

mod error;
mod health;
mod jobs;
mod push;
mod runs;
mod whoami;

use std::sync::Arc;

use axum::Router;
use tower_http::trace::TraceLayer;

pub use error::{Error, dispatch_status};

use crate::{
    auth::Authenticator,
    config::Config,
    jobs::JobRegistry,
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
    /// The run ledger (memory, or PostgreSQL with `DATABASE_URL`).
    pub runs: Arc<dyn RunStore>,
}

impl AppState {
    /// The record-claim-run-finish sequence over this state's ledger and jobs.
    pub fn runner(&self) -> Runner {
        Runner::new(
            Arc::clone(&self.runs),
            Arc::clone(&self.jobs),
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
    Router::new()
        .merge(health::router())
        .merge(whoami::router())
        .merge(jobs::router())
        .merge(push::router())
        .merge(runs::router())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
