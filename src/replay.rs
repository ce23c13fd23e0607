//! `pushworker replay`: deliver messages to a worker exactly as a Pub/Sub push
//! would, from files or from a subscription.
//!
//! - **From files** (`replay PATH...`): JSON files (one message or an array),
//!   JSON-lines files, or folders of them. A message is
//!   `{"data": …, "attributes": {…}, "messageId": "…", "orderingKey": "…"}`,
//!   where `data` is the payload as JSON, or a JSON string holding base64
//!   (for bytes that are not JSON: poison messages). `$TARGET` in JSON data
//!   becomes the worker's base URL.
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

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use base64::Engine as _;
use serde::Deserialize;

use crate::{
    auth::dev::DevIdentity,
    pubsub::{MessageMeta, gcp::PubsubTarget, wrap},
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

/// One message from a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMessage {
    data: Option<serde_json::Value>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(rename = "messageId", alias = "message_id")]
    message_id: Option<String>,
    #[serde(rename = "orderingKey", alias = "ordering_key")]
    ordering_key: Option<String>,
    #[serde(rename = "publishTime", alias = "publish_time")]
    publish_time: Option<String>,
}

/// A message ready to deliver.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Metadata (id, attributes, …).
    pub meta: MessageMeta,
    /// Raw data.
    pub data: Vec<u8>,
    /// Where it came from (file and index), for messages.
    pub origin: String,
}

/// What a delivery came to.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The job it named (attribute or `--job`), or `-`.
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

/// Reads messages from files and folders. `$TARGET` inside JSON data is
/// replaced by `target` (the worker's base URL), so fixtures that call back
/// into the worker work wherever it runs.
pub fn read_messages(paths: &[PathBuf], target: &str) -> anyhow::Result<Vec<Outgoing>> {
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files)?;
    }
    if files.is_empty() {
        bail!("no message files (.json, .jsonl, .ndjson) found in the given paths");
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let is_lines = matches!(
            file.extension().and_then(|e| e.to_str()),
            Some("jsonl" | "ndjson")
        );
        let parsed: Vec<(String, FileMessage)> = if is_lines {
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, line)| {
                    serde_json::from_str(line)
                        .map(|m| (format!("{}:{}", file.display(), i + 1), m))
                        .with_context(|| {
                            format!("{}:{}: not a message object", file.display(), i + 1)
                        })
                })
                .collect::<anyhow::Result<_>>()?
        } else {
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", file.display()))?;
            let items = match value {
                serde_json::Value::Array(items) => items,
                other => vec![other],
            };
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    serde_json::from_value(v)
                        .map(|m| (format!("{}#{}", file.display(), i), m))
                        .with_context(|| {
                            format!(
                                "{} item {i}: not a message (expected data, attributes, messageId, orderingKey, publishTime)",
                                file.display()
                            )
                        })
                })
                .collect::<anyhow::Result<_>>()?
        };
        for (origin, message) in parsed {
            out.push(to_outgoing(origin, message, target)?);
        }
    }
    Ok(out)
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{}: no such file or folder", path.display()))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            if entry.is_dir()
                || matches!(
                    entry.extension().and_then(|e| e.to_str()),
                    Some("json" | "jsonl" | "ndjson")
                )
            {
                collect_files(&entry, files)?;
            }
        }
    } else {
        files.push(path.to_owned());
    }
    Ok(())
}

fn to_outgoing(origin: String, message: FileMessage, target: &str) -> anyhow::Result<Outgoing> {
    let data = match message.data {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .with_context(|| format!("{origin}: `data` is a string, so it must be base64 (use a JSON object for JSON payloads)"))?,
        Some(json) => serde_json::to_string(&json)?
            .replace("$TARGET", target.trim_end_matches('/'))
            .into_bytes(),
    };
    // Without an id of its own a message gets a fresh one on every replay, so
    // replaying a fixture runs it again instead of being deduplicated. An
    // empty id is refused here: the worker refuses an envelope without one,
    // so the message could never be delivered.
    let id = match message.message_id {
        Some(id) if id.is_empty() => {
            bail!("{origin}: `messageId` is empty (leave it out for a fresh id per replay)")
        }
        Some(id) => id,
        None => format!("replay-{}", uuid::Uuid::now_v7()),
    };
    Ok(Outgoing {
        meta: MessageMeta {
            message_id: id,
            publish_time: message.publish_time,
            subscription: Some("projects/local/subscriptions/replay".to_owned()),
            attributes: message.attributes,
            ordering_key: message.ordering_key,
            delivery_attempt: None,
            unwrapped: false,
        },
        data,
        origin,
    })
}

/// Where bearer tokens come from.
enum TokenSource {
    Dev {
        identity: DevIdentity,
        email: String,
        audience: String,
        cached: Mutex<Option<(String, Instant)>>,
    },
    Google(google_cloud_auth::credentials::idtoken::IDTokenCredentials),
}

impl TokenSource {
    fn for_target(args: &ReplayArgs) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(&args.target)
            .with_context(|| format!("--target: `{}` is not a URL", args.target))?;
        let loopback = match url.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        if loopback {
            let identity = DevIdentity::load_or_create(&args.dev_dir).with_context(|| {
                format!(
                    "DEV_DIR: cannot use the development key in `{}`",
                    args.dev_dir.display()
                )
            })?;
            Ok(Self::Dev {
                identity,
                email: args.service_account.clone(),
                audience: args
                    .audience
                    .clone()
                    .unwrap_or_else(|| DevIdentity::GOOGLE_AUDIENCE.to_owned()),
                cached: Mutex::new(None),
            })
        } else {
            let audience = args
                .audience
                .clone()
                .unwrap_or_else(|| args.target.trim_end_matches('/').to_owned());
            let creds = google_cloud_auth::credentials::idtoken::Builder::new(audience)
                .with_include_email()
                .build()
                .context("cannot get Google credentials for an ID token (run `gcloud auth application-default login`, or impersonate a service account)")?;
            Ok(Self::Google(creds))
        }
    }

    async fn token(&self) -> anyhow::Result<String> {
        match self {
            Self::Dev {
                identity,
                email,
                audience,
                cached,
            } => {
                if let Ok(guard) = cached.lock()
                    && let Some((token, minted)) = guard.as_ref()
                    && minted.elapsed() < Duration::from_secs(1800)
                {
                    return Ok(token.clone());
                }
                let token = identity.google_token(email, audience, 3600)?;
                if let Ok(mut guard) = cached.lock() {
                    *guard = Some((token.clone(), Instant::now()));
                }
                Ok(token)
            }
            Self::Google(creds) => creds.id_token().await.context("minting a Google ID token"),
        }
    }
}

/// Delivers one message as a push and returns the outcome.
async fn deliver(
    client: &reqwest::Client,
    args: &ReplayArgs,
    tokens: &TokenSource,
    message: &Outgoing,
) -> anyhow::Result<Delivery> {
    let job = args
        .job
        .clone()
        .or_else(|| message.meta.attributes.get("job").cloned())
        .unwrap_or_else(|| "-".to_owned());
    let base = args.target.trim_end_matches('/');
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
    let started = Instant::now();
    let status = match request.send().await {
        Ok(response) => Some(response.status().as_u16()),
        Err(e) => {
            tracing::warn!(origin = %message.origin, error = %e.without_url(), "delivery failed");
            None
        }
    };
    Ok(Delivery {
        job,
        status,
        latency: started.elapsed(),
    })
}

fn http_client(args: &ReplayArgs) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout))
        .build()
        .context("building the HTTP client")
}

/// Replays messages from files. Returns the summary; the caller decides the
/// exit code.
pub async fn replay_files(args: &ReplayArgs) -> anyhow::Result<Summary> {
    let messages = read_messages(&args.paths, &args.target)?;
    if args.dry_run {
        for m in &messages {
            #[allow(clippy::print_stdout)]
            {
                println!("{}", serde_json::to_string(&wrap(&m.meta, &m.data))?);
            }
        }
        return Ok(Summary::default());
    }
    let tokens = Arc::new(TokenSource::for_target(args)?);
    let client = http_client(args)?;
    let progress = progress_bar(messages.len() as u64);
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(usize::from(args.concurrency)));
    let mut tasks = tokio::task::JoinSet::new();
    for message in messages {
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let (client, args, tokens, progress) = (
            client.clone(),
            args.clone(),
            Arc::clone(&tokens),
            progress.clone(),
        );
        tasks.spawn(async move {
            let result = deliver(&client, &args, &tokens, &message).await;
            progress.inc(1);
            drop(permit);
            result
        });
    }
    let mut summary = Summary::default();
    while let Some(joined) = tasks.join_next().await {
        summary
            .deliveries
            .push(joined.context("delivery task failed")??);
    }
    progress.finish_and_clear();
    summary.elapsed = started.elapsed();
    Ok(summary)
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

/// Pulls from `--subscription` and delivers each message, acking on 2xx and
/// nacking otherwise, until `--max` messages or `--idle-timeout` seconds
/// without one.
pub async fn replay_subscription(args: &ReplayArgs, subscription: &str) -> anyhow::Result<Summary> {
    let target = PubsubTarget::new(args.emulator_host.clone());
    let subscriber = target.subscriber().await?;
    let mut stream = subscriber
        .subscribe(subscription.to_owned())
        .set_max_outstanding_messages(i64::from(args.concurrency))
        .set_shutdown_behavior(google_cloud_pubsub::subscriber::ShutdownBehavior::WaitForProcessing)
        .build();
    let shutdown = stream.shutdown_token();
    let tokens = Arc::new(TokenSource::for_target(args)?);
    let client = http_client(args)?;
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(usize::from(args.concurrency)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut received = 0usize;
    let idle = Duration::from_secs(args.idle_timeout);
    while args.max.is_none_or(|max| received < max) {
        let next = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => break,
            Ok(None) => break,
            Ok(Some(next)) => next,
        };
        let (message, handler) = next.with_context(|| format!("pulling from {subscription}"))?;
        received += 1;
        let outgoing = Outgoing {
            meta: MessageMeta {
                message_id: message.message_id.clone(),
                publish_time: message
                    .publish_time
                    .as_ref()
                    .and_then(|t| serde_json::to_value(t).ok())
                    .and_then(|v| v.as_str().map(str::to_owned)),
                subscription: Some(subscription.to_owned()),
                attributes: message
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                ordering_key: Some(message.ordering_key.clone()).filter(|k| !k.is_empty()),
                delivery_attempt: handler
                    .delivery_attempt()
                    .and_then(|a| u32::try_from(a).ok()),
                unwrapped: args.unwrapped,
            },
            data: message.data.to_vec(),
            origin: format!("{subscription}/{}", message.message_id),
        };
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let (client, args, tokens) = (client.clone(), args.clone(), Arc::clone(&tokens));
        tasks.spawn(async move {
            let result = deliver(&client, &args, &tokens, &outgoing).await;
            match &result {
                Ok(d) if d.acked() => handler.ack(),
                _ => handler.nack(),
            }
            drop(permit);
            result
        });
    }
    let mut summary = Summary::default();
    while let Some(joined) = tasks.join_next().await {
        summary
            .deliveries
            .push(joined.context("delivery task failed")??);
    }
    // Let pending acks and nacks reach the server before returning.
    shutdown.shutdown().await;
    summary.elapsed = started.elapsed();
    Ok(summary)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(value: serde_json::Value) -> FileMessage {
        serde_json::from_value(value).unwrap()
    }

    /// Regression (found by the property tests): an empty `messageId` made an
    /// envelope the worker refuses (no message id), so the message could
    /// never run; it is now refused when the file is read.
    #[test]
    fn an_empty_message_id_is_refused_when_read() {
        let err = to_outgoing(
            "f.json#0".into(),
            message(serde_json::json!({"messageId": ""})),
            "",
        )
        .unwrap_err();
        assert!(err.to_string().contains("`messageId` is empty"), "{err}");
    }

    #[test]
    fn a_message_without_an_id_gets_a_fresh_one() {
        let out = to_outgoing(
            "f.json#0".into(),
            message(serde_json::json!({"data": {"a": 1}})),
            "",
        )
        .unwrap();
        assert!(out.meta.message_id.starts_with("replay-"));
        let body = serde_json::to_vec(&wrap(&out.meta, &out.data)).unwrap();
        assert_eq!(
            crate::pubsub::parse_wrapped(&body).unwrap().data,
            br#"{"a":1}"#
        );
    }
}
