//! `sleep`: waits, honouring cancellation. Shows how a long job watches
//! [`JobContext::cancel`]; tests of timeouts and graceful shutdown use it.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Job, JobContext, JobError};

/// Waits for a while.
#[derive(Debug, Clone, Copy)]
pub struct Sleep;

/// How long to wait.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepPayload {
    /// Milliseconds to wait (at most 3,600,000).
    #[schemars(range(max = 3_600_000))]
    pub millis: u64,
}

/// What the wait came to.
#[derive(Debug, Serialize)]
pub struct SleepOutput {
    /// Milliseconds waited.
    pub slept_ms: u64,
}

impl Job for Sleep {
    const NAME: &'static str = "sleep";
    const DESCRIPTION: &'static str = "Waits `millis` milliseconds, stopping early if cancelled.";
    type Payload = SleepPayload;
    type Output = SleepOutput;

    #[tracing::instrument(name = "job.sleep", skip_all, fields(run_id = %ctx.run_id, millis = payload.millis))]
    async fn run(&self, payload: SleepPayload, ctx: JobContext) -> Result<SleepOutput, JobError> {
        if payload.millis > 3_600_000 {
            return Err(JobError::Permanent("millis must be at most 3600000".into()));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(payload.millis)) => Ok(SleepOutput { slept_ms: payload.millis }),
            () = ctx.cancel.cancelled() => Err(JobError::Transient("cancelled before the wait was over".into())),
        }
    }
}
