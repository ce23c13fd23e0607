//! `pushworker replay`: deliver messages to a worker exactly as a Pub/Sub push
//! would, from files or from a subscription.
//!
//! - **From files** (`replay PATH...`): JSON files (one message or an array),
//!   JSON-lines files, or folders of them. A message is
//!   `{"data": …, "attributes": {…}, "messageId": "…", "orderingKey": "…"}`,
//!   where `data` is the payload as JSON, or a JSON string holding base64
//!   (for bytes that are not JSON: poison messages). `$TARGET` in JSON data
//!   becomes the worker's base URL. A file may also hold CloudEvents, sent
//!   to `POST /events` instead: `{"headers": {"ce-type": …, "content-type":
//!   …}, "body": …}` in binary mode, or a structured event (an object with
//!   `specversion`) sent as `application/cloudevents+json`. Without an id
//!   (`ce-id`, `id`) an event gets a fresh one on each replay.
//! - **From a subscription** (`replay --subscription projects/P/subscriptions/S`):
//!   pulls with google-cloud-pubsub's streaming subscriber and delivers each
//!   message with its delivery attempt, acking on 2xx and nacking otherwise.
//!   Works against real Pub/Sub (Application Default Credentials) and the
//!   emulator (`PUBSUB_EMULATOR_HOST`). The emulator's own push never carries a
//!   token, so this bridge is how the full loop runs locally with auth on.
//!
//! Each delivery carries a Google-shaped bearer token: the development
//! identity's when the target is on loopback, otherwise a real Google ID token
//! for `--audience` minted by google-cloud-auth from the user's credentials
//! (ADC, including service-account impersonation), so a developer can replay
//! into a deployed Cloud Run service.
//!
//! [`files`] reads messages from files, [`subscription`] pulls them from a
//! subscription, and [`tokens`] mints the bearer token each delivery carries.

mod files;
mod subscription;
mod tokens;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    auth::dev::DevIdentity,
    pubsub::{MessageMeta, wrap},
};

use self::tokens::TokenSource;
pub use self::{
    files::{read_messages, replay_files},
    subscription::replay_subscription,
};

/// `replay` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Files or folders of messages (.json, .jsonl, .ndjson).
    pub paths: Vec<PathBuf>,
    /// Pull from this subscription instead of files.
    #[arg(long, conflicts_with = "paths")]
    pub subscription: Option<String>,
    /// The worker's base URL.
    #[arg(long, env = "REPLAY_TARGET", default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Push to `/pubsub/push/{job}` instead of naming the job by attribute.
    #[arg(long)]
    pub job: Option<String>,
    /// Deliver unwrapped (`no_wrapper` + `write_metadata`) instead of the JSON envelope.
    #[arg(long)]
    pub unwrapped: bool,
    /// Deliveries in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Print the envelopes instead of sending them.
    #[arg(long)]
    pub dry_run: bool,
    /// Token audience. Default: the development audience on loopback targets,
    /// the target URL otherwise.
    #[arg(long)]
    pub audience: Option<String>,
    /// Service account in development tokens.
    #[arg(long, default_value = DevIdentity::SERVICE_ACCOUNT)]
    pub service_account: String,
    /// Folder of the development key.
    #[arg(long, env = "DEV_DIR", default_value = ".pushworker-dev")]
    pub dev_dir: PathBuf,
    /// With --subscription: stop after this many messages.
    #[arg(long)]
    pub max: Option<usize>,
    /// With --subscription: stop after this many seconds without a message.
    #[arg(long, default_value_t = 10)]
    pub idle_timeout: u64,
    /// Pub/Sub emulator `host:port` (for --subscription).
    #[arg(long, env = "PUBSUB_EMULATOR_HOST")]
    pub emulator_host: Option<String>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// A message ready to deliver.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Metadata (id, attributes, …); for an event, its id.
    pub meta: MessageMeta,
    /// Raw data; for an event, the request body.
    pub data: Vec<u8>,
    /// Where it came from (file and index), for messages.
    pub origin: String,
    /// Set for a CloudEvent, which goes to `POST /events` rather than as a
    /// push (`--job` and `--unwrapped` do not apply to it).
    pub event: Option<OutgoingEvent>,
}

/// How a CloudEvent is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingEvent {
    /// The request's headers: `ce-*` and `content-type` in binary mode,
    /// `content-type: application/cloudevents+json` in structured mode.
    pub headers: Vec<(String, String)>,
    /// Its type, for the summary.
    pub event_type: String,
}

/// What a delivery came to.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The job it named (attribute or `--job`), or `-`; an event's type.
    pub job: String,
    /// HTTP status, or `None` when the request failed.
    pub status: Option<u16>,
    /// Time to answer.
    pub latency: Duration,
}

impl Delivery {
    /// Whether Pub/Sub would count this as an ack.
    pub fn acked(&self) -> bool {
        matches!(self.status, Some(102 | 200 | 201 | 202 | 204))
    }
}

/// Totals of a replay.
#[derive(Debug, Default)]
pub struct Summary {
    /// Every delivery.
    pub deliveries: Vec<Delivery>,
    /// Wall time.
    pub elapsed: Duration,
}

impl Summary {
    /// The deliveries of `tasks`, once every one has ended.
    async fn gather(
        mut tasks: tokio::task::JoinSet<anyhow::Result<Delivery>>,
    ) -> anyhow::Result<Self> {
        let mut summary = Self::default();
        while let Some(joined) = tasks.join_next().await {
            summary
                .deliveries
                .push(joined.context("delivery task failed")??);
        }
        Ok(summary)
    }

    /// Deliveries acked.
    pub fn acked(&self) -> usize {
        self.deliveries.iter().filter(|d| d.acked()).count()
    }

    /// Deliveries nacked (non-2xx or failed).
    pub fn nacked(&self) -> usize {
        self.deliveries.len() - self.acked()
    }

    /// A human-readable report.
    pub fn report(&self) -> String {
        let mut per_job: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
        for d in &self.deliveries {
            let entry = per_job.entry(&d.job).or_default();
            if d.acked() {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
            let key = d
                .status
                .map_or_else(|| "error".to_owned(), |s| s.to_string());
            *statuses.entry(key).or_default() += 1;
        }
        let mut latencies: Vec<Duration> = self.deliveries.iter().map(|d| d.latency).collect();
        latencies.sort();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        let mut out = format!(
            "replayed {} message(s) in {:.2} s: {} acked, {} nacked\n",
            self.deliveries.len(),
            self.elapsed.as_secs_f64(),
            self.acked(),
            self.nacked()
        );
        out.push_str(&format!("{:<24} {:>7} {:>7}\n", "job", "acked", "nacked"));
        for (job, (acked, nacked)) in &per_job {
            out.push_str(&format!("{job:<24} {acked:>7} {nacked:>7}\n"));
        }
        let codes: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}×{n}")).collect();
        out.push_str(&format!("status codes: {}\n", codes.join(" ")));
        out.push_str(&format!(
            "latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
            pct(0.50),
            pct(0.99),
            latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        ));
        out
    }
}

/// Delivers one message as a push and returns the outcome.
async fn deliver(
    client: &reqwest::Client,
    args: &ReplayArgs,
    tokens: &TokenSource,
    message: &Outgoing,
) -> anyhow::Result<Delivery> {
    let base = args.target.trim_end_matches('/');
    if let Some(event) = &message.event {
        let token = tokens.token().await?;
        let mut request = client.post(format!("{base}/events")).bearer_auth(token);
        for (name, value) in &event.headers {
            request = request.header(name, value);
        }
        let request = request.body(message.data.clone());
        return Ok(send(request, event.event_type.clone(), &message.origin).await);
    }
    let job = args
        .job
        .clone()
        .or_else(|| message.meta.attributes.get("job").cloned())
        .unwrap_or_else(|| "-".to_owned());
    let url = match &args.job {
        Some(job) => format!("{base}/pubsub/push/{job}"),
        None => format!("{base}/pubsub/push"),
    };
    let token = tokens.token().await?;
    let mut request = client.post(url).bearer_auth(token);
    if args.unwrapped {
        request = request
            .header("x-goog-pubsub-message-id", &message.meta.message_id)
            .header("content-type", "application/octet-stream");
        if let Some(t) = &message.meta.publish_time {
            request = request.header("x-goog-pubsub-publish-time", t);
        }
        if let Some(s) = &message.meta.subscription {
            request = request.header("x-goog-pubsub-subscription-name", s);
        }
        if let Some(k) = &message.meta.ordering_key {
            request = request.header("x-goog-pubsub-ordering-key", k);
        }
        for (k, v) in &message.meta.attributes {
            request = request.header(k, v);
        }
        request = request.body(message.data.clone());
    } else {
        request = request.json(&wrap(&message.meta, &message.data));
    }
    Ok(send(request, job, &message.origin).await)
}

/// Sends one delivery and times it.
async fn send(request: reqwest::RequestBuilder, job: String, origin: &str) -> Delivery {
    let started = Instant::now();
    let status = match request.send().await {
        Ok(response) => Some(response.status().as_u16()),
        Err(e) => {
            tracing::warn!(origin = %origin, error = %e.without_url(), "delivery failed");
            None
        }
    };
    Delivery {
        job,
        status,
        latency: started.elapsed(),
    }
}

fn http_client(args: &ReplayArgs) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout))
        .build()
        .context("building the HTTP client")
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
    if len < 20 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// Runs `pushworker replay` and prints the summary. Errors when any message
/// was nacked, so the exit code says so.
pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let summary = match &args.subscription {
        Some(sub) => replay_subscription(&args, sub).await?,
        None => {
            if args.paths.is_empty() {
                bail!(
                    "nothing to replay: give files or folders of messages, or --subscription projects/P/subscriptions/S"
                );
            }
            replay_files(&args).await?
        }
    };
    if args.dry_run {
        return Ok(());
    }
    eprint!("{}", summary.report());
    if summary.nacked() > 0 {
        bail!(
            "{} of {} message(s) were nacked",
            summary.nacked(),
            summary.deliveries.len()
        );
    }
    Ok(())
}
