//! `webhook`: posts JSON to an HTTP endpoint. The example of a job doing real
//! I/O and classifying its failures for Pub/Sub:
//! - connection errors, timeouts, 5xx, 408 and 429 are **transient** (nack,
//!   redelivered later);
//! - other 4xx, and URLs outside `WEBHOOK_ALLOWED_HOSTS`, are **permanent**
//!   (dead-lettered).
//!
//! The host allow-list matters: a job that fetches caller-chosen URLs from
//! inside Cloud Run could otherwise reach the metadata server or internal
//! services.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Job, JobContext, JobError};

/// Posts JSON to an allowed URL.
#[derive(Debug, Clone)]
pub struct Webhook {
    client: reqwest::Client,
    allowed_hosts: Vec<String>,
}

impl Webhook {
    /// A webhook job using `client`, allowed to call `allowed_hosts`
    /// (`host` or `host:port`).
    pub fn new(client: reqwest::Client, allowed_hosts: Vec<String>) -> Self {
        Self {
            client,
            allowed_hosts,
        }
    }
}

/// Where and what to post.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPayload {
    /// The endpoint; its host must be in WEBHOOK_ALLOWED_HOSTS.
    pub url: String,
    /// HTTP method: `POST` (default, with the body) or `GET`.
    #[serde(default)]
    pub method: WebhookMethod,
    /// JSON body to send with `POST`.
    #[serde(default)]
    pub body: serde_json::Value,
    /// Request timeout in milliseconds (default 10000, at most 60000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// The request method.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum WebhookMethod {
    /// POST the body as JSON.
    #[default]
    Post,
    /// GET, no body.
    Get,
}

/// What the endpoint answered.
#[derive(Debug, Serialize)]
pub struct WebhookOutput {
    /// HTTP status.
    pub status: u16,
    /// Bytes in the response body.
    pub response_bytes: usize,
}

impl Webhook {
    fn check_url(&self, url: &str) -> Result<reqwest::Url, JobError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| JobError::Permanent(format!("url: not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(JobError::Permanent(
                "url: only http and https are allowed".into(),
            ));
        }
        let host = parsed.host_str().unwrap_or_default();
        let with_port = parsed
            .port_or_known_default()
            .map(|p| format!("{host}:{p}"));
        let allowed = self
            .allowed_hosts
            .iter()
            .any(|a| a == host || Some(a) == with_port.as_ref());
        if !allowed {
            return Err(JobError::Permanent(format!(
                "url: host `{host}` is not in WEBHOOK_ALLOWED_HOSTS"
            )));
        }
        Ok(parsed)
    }
}

impl Job for Webhook {
    const NAME: &'static str = "webhook";
    const DESCRIPTION: &'static str = "Calls `url` (an allowed host), POSTing `body` as JSON by default; 5xx and timeouts are retried, 4xx are not.";
    type Payload = WebhookPayload;
    type Output = WebhookOutput;

    #[tracing::instrument(name = "job.webhook", skip_all, fields(run_id = %ctx.run_id, status))]
    async fn run(
        &self,
        payload: WebhookPayload,
        ctx: JobContext,
    ) -> Result<WebhookOutput, JobError> {
        let url = self.check_url(&payload.url)?;
        let timeout = Duration::from_millis(payload.timeout_ms.unwrap_or(10_000).clamp(1, 60_000));
        let request = match payload.method {
            WebhookMethod::Post => self.client.post(url).json(&payload.body),
            WebhookMethod::Get => self.client.get(url),
        }
        .timeout(timeout)
        .header("x-pushworker-run-id", ctx.run_id.to_string());
        let response = tokio::select! {
            r = request.send() => r,
            () = ctx.cancel.cancelled() => return Err(JobError::Transient("cancelled".into())),
        };
        let response = response.map_err(|e| {
            if e.is_timeout() {
                JobError::Transient(format!("webhook timed out after {timeout:?}"))
            } else {
                JobError::Transient(format!("webhook unreachable: {}", e.without_url()))
            }
        })?;
        let status = response.status();
        tracing::Span::current().record("status", status.as_u16());
        let body = response.bytes().await.map_err(|e| {
            JobError::Transient(format!("reading the response failed: {}", e.without_url()))
        })?;
        if status.is_success() {
            Ok(WebhookOutput {
                status: status.as_u16(),
                response_bytes: body.len(),
            })
        } else if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(JobError::Transient(format!("webhook answered {status}")))
        } else {
            Err(JobError::Permanent(format!("webhook answered {status}")))
        }
    }
}
