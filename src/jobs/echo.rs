//! `echo`: returns its payload. The smallest job, used by tests, docs and the
//! benchmark; also a handy smoke test of a deployment.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Job, JobContext, JobError};

/// Returns its payload.
#[derive(Debug, Clone, Copy)]
pub struct Echo;

/// Any JSON object; `message` is the conventional field.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct EchoPayload {
    /// Text to echo back.
    pub message: String,
    /// Anything else to echo back.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Job for Echo {
    const NAME: &'static str = "echo";
    const DESCRIPTION: &'static str = "Returns its payload unchanged.";
    type Payload = EchoPayload;
    type Output = EchoPayload;

    fn output_schema() -> Option<schemars::Schema> {
        Some(schemars::schema_for!(EchoPayload))
    }

    // Debug level: echo logs nothing of its own, and the request's span
    // already carries the run id; a span per push costs for nothing.
    #[tracing::instrument(name = "job.echo", level = "debug", skip_all, fields(run_id = %ctx.run_id))]
    async fn run(&self, payload: EchoPayload, ctx: JobContext) -> Result<EchoPayload, JobError> {
        tracing::debug!(bytes = payload.message.len(), "echo");
        Ok(payload)
    }
}
