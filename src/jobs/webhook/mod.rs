//! `webhook`: posts JSON to an HTTP endpoint. The example of a job doing real
//! I/O and classifying its failures for Pub/Sub:
//! - connection errors, timeouts, 5xx, 408 and 429 are **transient** (nack,
//!   redelivered later);
//! - other 4xx, any 3xx, a response body over `WEBHOOK_MAX_RESPONSE_BYTES`,
//!   and URLs or addresses outside `WEBHOOK_ALLOWED_HOSTS` are **permanent**
//!   (dead-lettered).
//!
//! The allow-list matters: a job that fetches caller-chosen URLs from inside
//! Cloud Run could otherwise reach the metadata server or internal services.
//! So the job has a client of its own: it follows no redirect (a redirect
//! would lead off the list; webhook senders such as Stripe and GitHub do not
//! follow them either), uses no proxy, and connects only to the addresses its
//! resolver allows ([`allow`]).

pub mod allow;
pub mod settings;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use self::allow::{AddressRefused, AllowList, GuardedResolver, Refusal};
pub use self::settings::{WebhookArgs, WebhookConfig};
use super::{Job, JobContext, JobError};

/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest a Location header is quoted in an error.
const MAX_QUOTED_LOCATION: usize = 300;

/// Posts JSON to an allowed URL.
#[derive(Debug, Clone)]
pub struct Webhook {
    client: reqwest::Client,
    allowed_hosts: Arc<AllowList>,
    max_response_bytes: u64,
}

impl Webhook {
    /// A webhook job with these settings and an HTTP client of its own:
    /// redirects off, no proxy, the allow-list's resolver.
    pub fn new(config: &WebhookConfig) -> anyhow::Result<Self> {
        let allowed_hosts = Arc::new(config.allowed_hosts.clone());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(GuardedResolver::new(Arc::clone(&allowed_hosts)))
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("pushworker/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the webhook job's HTTP client")?;
        Ok(Self {
            client,
            allowed_hosts,
            max_response_bytes: config.max_response_bytes,
        })
    }
}

/// Where and what to post.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPayload {
    /// The endpoint; its host and port must be in WEBHOOK_ALLOWED_HOSTS.
    /// Redirects are not followed: give the final URL.
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
    pub response_bytes: u64,
}

impl Webhook {
    fn check_url(&self, url: &str) -> Result<reqwest::Url, JobError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            JobError::Permanent(format!(
                "url: `{url}` is not a URL ({e}); give an absolute http or https URL"
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(JobError::Permanent(format!(
                "url: scheme `{}` is not allowed; use http or https",
                parsed.scheme()
            )));
        }
        match self.allowed_hosts.check_url(&parsed) {
            Ok(()) => Ok(parsed),
            Err(Refusal::Empty) => Err(JobError::Permanent(
                "url: WEBHOOK_ALLOWED_HOSTS is empty, so the webhook job may call no host; list the hosts it may call there".into(),
            )),
            Err(Refusal::NotListed { target }) => Err(JobError::Permanent(format!(
                "url: `{target}` is not in WEBHOOK_ALLOWED_HOSTS; call a listed host and port, or add this one (an entry without a port allows only the scheme's default port)"
            ))),
        }
    }

    async fn call(
        &self,
        url: reqwest::Url,
        payload: &WebhookPayload,
        ctx: &JobContext,
    ) -> Result<WebhookOutput, JobError> {
        let timeout = Duration::from_millis(payload.timeout_ms.unwrap_or(10_000).clamp(1, 60_000));
        let request = match payload.method {
            WebhookMethod::Post => self.client.post(url.clone()).json(&payload.body),
            WebhookMethod::Get => self.client.get(url.clone()),
        }
        .timeout(timeout)
        .header("x-pushworker-run-id", ctx.run_id.to_string());
        let response = request
            .send()
            .await
            .map_err(|e| request_error(&e, timeout))?;
        let status = response.status();
        tracing::Span::current().record("status", status.as_u16());
        if status.is_redirection() {
            return Err(redirect_error(&url, &response));
        }
        if !status.is_success() {
            // The body of a failure is not needed: dropping the response
            // closes the connection without reading it.
            return Err(
                if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                    JobError::Transient(format!("webhook answered {status}"))
                } else {
                    JobError::Permanent(format!(
                        "webhook answered {status}; check the URL and the body the endpoint expects"
                    ))
                },
            );
        }
        let response_bytes = read_capped(response, self.max_response_bytes, timeout).await?;
        Ok(WebhookOutput {
            status: status.as_u16(),
            response_bytes,
        })
    }
}

/// Counts the body chunk by chunk, keeping none of it, and stops past `cap`.
async fn read_capped(
    mut response: reqwest::Response,
    cap: u64,
    timeout: Duration,
) -> Result<u64, JobError> {
    let over = |what: String| {
        JobError::Permanent(format!(
            "webhook response {what}, over WEBHOOK_MAX_RESPONSE_BYTES ({cap} bytes); make the endpoint answer with less, or raise WEBHOOK_MAX_RESPONSE_BYTES"
        ))
    };
    if let Some(length) = response.content_length()
        && length > cap
    {
        return Err(over(format!("is {length} bytes (Content-Length)")));
    }
    let mut total: u64 = 0;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                total = total.saturating_add(chunk.len() as u64);
                if total > cap {
                    return Err(over(format!("went past {cap} bytes (read {total})")));
                }
            }
            Ok(None) => return Ok(total),
            Err(e) if e.is_timeout() => {
                return Err(JobError::Transient(format!(
                    "webhook timed out after {timeout:?} while sending its response"
                )));
            }
            Err(e) => {
                return Err(JobError::Transient(format!(
                    "reading the webhook response failed: {}",
                    causes(&e)
                )));
            }
        }
    }
}

/// A failed send: an address the allow-list refuses is permanent, anything
/// else (timeouts, refused connections, DNS failures) transient.
fn request_error(err: &reqwest::Error, timeout: Duration) -> JobError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<AddressRefused>() {
            return JobError::Permanent(refused.to_string());
        }
        source = e.source();
    }
    if err.is_timeout() {
        JobError::Transient(format!("webhook timed out after {timeout:?}"))
    } else {
        JobError::Transient(format!("webhook unreachable: {}", causes(err)))
    }
}

/// The error and its causes, without the URL, on one line.
fn causes(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        text = text.replace(&format!(" for url ({url})"), "");
    }
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// A 3xx answer: never followed, so the message says where it pointed.
fn redirect_error(url: &reqwest::Url, response: &reqwest::Response) -> JobError {
    let status = response.status();
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|value| match value.to_str() {
            Ok(text) => url
                .join(text)
                .map(String::from)
                .unwrap_or_else(|_| text.to_owned()),
            Err(_) => "(a Location that is not text)".to_owned(),
        });
    let code = status.as_u16();
    JobError::Permanent(match location {
        Some(location) => {
            let quoted: String = location.chars().take(MAX_QUOTED_LOCATION).collect();
            format!(
                "redirect {code} to {quoted} not followed: webhook redirects are never followed; point the job at the final URL"
            )
        }
        None => format!(
            "webhook answered {status} (a redirect status, no Location); webhook redirects are never followed; point the job at the final URL"
        ),
    })
}

impl Job for Webhook {
    const NAME: &'static str = "webhook";
    const DESCRIPTION: &'static str = "Calls `url` (an allowed host and port), POSTing `body` as JSON by default; redirects are not followed; 5xx and timeouts are retried, 3xx and 4xx are not.";
    type Payload = WebhookPayload;
    type Output = WebhookOutput;

    #[tracing::instrument(name = "job.webhook", skip_all, fields(run_id = %ctx.run_id, status))]
    async fn run(
        &self,
        payload: WebhookPayload,
        ctx: JobContext,
    ) -> Result<WebhookOutput, JobError> {
        let url = self.check_url(&payload.url)?;
        tokio::select! {
            result = self.call(url, &payload, &ctx) => result,
            () = ctx.cancel.cancelled() => Err(JobError::Transient("cancelled".into())),
        }
    }
}
