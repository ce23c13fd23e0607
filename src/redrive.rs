//! `pushworker redrive`: send dead-lettered messages back to work.
//!
//! Pulls from a dead-letter subscription (real Pub/Sub, or the emulator with
//! `PUBSUB_EMULATOR_HOST`) and republishes each message to a topic with its
//! data, attributes and ordering key, plus [`REDRIVEN_FROM`]: the full name of
//! the subscription it came from. A message is acked only once its publish is
//! confirmed. The first failed publish stops the pull and the run ends with
//! an error; the message stays on the subscription.
//!
//! `--filter job=NAME` picks messages by job: the `JOB_ATTRIBUTE` attribute,
//! else the `pushworker.job` one the dead-letter publisher adds. The others,
//! every message of a `--dry-run` and any whose publish failed are held
//! (their leases extended) until the run ends, so each is looked at once, and
//! are then nacked, once the pull has closed, so they return to the
//! subscription at once. The run ends after `--limit`
//! messages, or once no new message has come for `--idle-secs`.

use std::{
    collections::{BTreeMap, HashSet},
    io::{IsTerminal as _, Write as _},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::{
    client::Publisher, model::Message, subscriber::ShutdownBehavior, subscriber::handler::Handler,
};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::{sync::Semaphore, task::JoinSet};

use crate::pubsub::{
    dead_letter::attr,
    gcp::{self, PubsubTarget, Resource},
};

/// The attribute added to a redriven message: the full name of the
/// subscription it was pulled from.
pub const REDRIVEN_FROM: &str = "redriven_from";

/// Messages leased at once. Held messages (skipped, or listed by a dry run)
/// count, so past this many the pull stalls and the run ends idle.
const MAX_OUTSTANDING: i64 = 10_000;

/// The shortest wait for the first message: opening the stream takes a while.
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(10);

/// `redrive` options.
#[derive(Debug, Clone, clap::Args)]
pub struct RedriveArgs {
    /// The dead-letter subscription to pull from (`projects/P/subscriptions/S`).
    #[arg(long = "from", value_name = "SUBSCRIPTION", value_parser = subscription_name)]
    pub from: String,
    /// The topic to republish to (`projects/P/topics/T`): the one the worker's
    /// subscription reads.
    #[arg(long = "to", value_name = "TOPIC", value_parser = topic_name)]
    pub to: String,
    /// Stop after this many messages redriven (listed, with --dry-run).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Only messages for this job, as `job=NAME`; repeat it for several jobs.
    /// The others are skipped and returned to the subscription.
    #[arg(long = "filter", value_name = "job=NAME")]
    pub filters: Vec<JobFilter>,
    /// List what would be sent, one JSON line per message; publish nothing,
    /// ack nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop once no new message has come for this many seconds (the first
    /// may take up to 10 s while the stream opens).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub idle_secs: u64,
    /// Publishes awaiting confirmation at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Seconds to wait for Pub/Sub to confirm a publish.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub publish_timeout_secs: u64,
    /// Message attribute that names the job (as the worker's `JOB_ATTRIBUTE`).
    #[arg(long, env = "JOB_ATTRIBUTE", default_value = "job")]
    pub job_attribute: String,
    /// Pub/Sub emulator `host:port`; unset: real Pub/Sub with Application
    /// Default Credentials.
    #[arg(long, env = "PUBSUB_EMULATOR_HOST")]
    pub emulator_host: Option<String>,
}

fn subscription_name(s: &str) -> Result<String, String> {
    Resource::Subscription.full_name(s)
}

fn topic_name(s: &str) -> Result<String, String> {
    Resource::Topic.full_name(s)
}

/// One `--filter`: messages for the job of this name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFilter(pub String);

impl std::str::FromStr for JobFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some((key, value)) = s.split_once('=') else {
            return Err(format!("`{s}` is not KEY=VALUE: use job=NAME"));
        };
        if key.trim() != "job" {
            return Err(format!(
                "unknown filter key `{}`: the only key is `job` (job=NAME)",
                key.trim()
            ));
        }
        let value = value.trim();
        if value.is_empty() {
            return Err("`job=` needs a job name: use job=NAME".to_owned());
        }
        Ok(Self(value.to_owned()))
    }
}

impl RedriveArgs {
    /// Whether a message for `job` is to be redriven.
    fn wants(&self, job: Option<&str>) -> bool {
        self.filters.is_empty() || job.is_some_and(|j| self.filters.iter().any(|f| f.0 == j))
    }
}

/// A message whose publish failed; it was nacked and stays on the subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Its message id on the dead-letter subscription.
    pub message_id: String,
    /// Why.
    pub error: String,
}

/// What a run came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Published and acked; with a dry run, listed.
    pub redriven: u64,
    /// Left on the subscription by the filter.
    pub skipped: u64,
    /// Publishes that failed.
    pub failed: Vec<Failure>,
    /// Whether it was a dry run.
    pub dry_run: bool,
}

impl Summary {
    /// The one line printed at the end.
    pub fn line(&self) -> String {
        if self.dry_run {
            format!(
                "dry run: would redrive {}, skipped {}, failed 0 (nothing published or acked)",
                self.redriven, self.skipped
            )
        } else {
            format!(
                "redriven {}, skipped {}, failed {}",
                self.redriven,
                self.skipped,
                self.failed.len()
            )
        }
    }
}

/// The job a message is for: the job attribute, else the one the
/// dead-letter publisher recorded.
fn job_of<'m>(message: &'m Message, job_attribute: &str) -> Option<&'m str> {
    message
        .attributes
        .get(job_attribute)
        .or_else(|| message.attributes.get(attr::JOB))
        .map(String::as_str)
}

/// The copy that is published: same data, attributes and ordering key, plus
/// where it came from.
pub fn republished(message: &Message, from: &str) -> Message {
    let mut attributes = message.attributes.clone();
    attributes.insert(REDRIVEN_FROM.to_owned(), from.to_owned());
    Message::new()
        .set_data(message.data.clone())
        .set_attributes(attributes)
        .set_ordering_key(message.ordering_key.clone())
}

/// The progress bar: on a terminal only.
struct Progress(ProgressBar);

impl Progress {
    fn new(limit: Option<u64>) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(ProgressBar::hidden());
        }
        let (bar, template) = match limit {
            Some(n) => (ProgressBar::new(n), "{bar:40} {pos}/{len} redriven {msg}"),
            None => (ProgressBar::new_spinner(), "{spinner} {pos} redriven {msg}"),
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Self(bar)
    }

    fn show(&self, summary: &Summary) {
        self.0.set_position(summary.redriven);
        self.0.set_message(format!(
            "· skipped {} · failed {}",
            summary.skipped,
            summary.failed.len()
        ));
    }

    /// Writes a line to stdout without tearing the bar.
    fn stdout(&self, line: &str) {
        self.0.suspend(|| {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        });
    }

    /// Writes a line to stderr without tearing the bar.
    fn stderr(&self, line: &str) {
        self.0.suspend(|| {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        });
    }
}

/// The error for a resource that does not exist, saying what to check.
fn missing(kind: Resource, name: &str, flag: &str, target: &PubsubTarget) -> anyhow::Error {
    let at = target.emulator_host.as_deref().map_or_else(
        || "Pub/Sub".to_owned(),
        |host| format!("the emulator at {host}"),
    );
    anyhow::anyhow!(
        "{} {name} does not exist (NOT_FOUND from {at}): check {flag}, its project and name, \
         and PUBSUB_EMULATOR_HOST",
        kind.noun()
    )
}

fn permission_denied(error: &google_cloud_pubsub::Error) -> bool {
    error
        .status()
        .is_some_and(|s| s.code == Code::PermissionDenied)
}

/// Checks that the subscription and the topic exist, and that the topic is
/// not the one the subscription reads (the messages would come straight
/// back). Without the permission to read them, it goes on: the pull and the
/// publish say what is wrong.
pub async fn check(target: &PubsubTarget, args: &RedriveArgs) -> anyhow::Result<()> {
    let subscriptions = target.subscription_admin().await?;
    match subscriptions
        .get_subscription()
        .set_subscription(args.from.clone())
        .send()
        .await
    {
        Ok(sub) if sub.topic == args.to => bail!(
            "--to {} is the topic that --from {} reads: the messages would come straight back; \
             give the topic the worker's subscription reads",
            args.to,
            args.from
        ),
        Ok(_) => {}
        Err(e) if gcp::is_not_found(&e) => {
            return Err(missing(
                Resource::Subscription,
                &args.from,
                "--from",
                target,
            ));
        }
        Err(e) if permission_denied(&e) => {
            tracing::debug!(error = %e, "cannot read the subscription; pulling anyway");
        }
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("reading subscription {}", args.from))
            );
        }
    }
    let topics = target.topic_admin().await?;
    match topics.get_topic().set_topic(args.to.clone()).send().await {
        Ok(_) => Ok(()),
        Err(e) if gcp::is_not_found(&e) => Err(missing(Resource::Topic, &args.to, "--to", target)),
        Err(e) if permission_denied(&e) => {
            tracing::debug!(error = %e, "cannot read the topic; publishing anyway");
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading topic {}", args.to))),
    }
}

/// One run's state.
struct Run<'a> {
    args: &'a RedriveArgs,
    publisher: Option<Publisher>,
    progress: Progress,
    summary: Summary,
    /// Skipped and dry-run messages, nacked when the run ends.
    held: Vec<Handler>,
    /// Message ids already handled: a redelivery is held, not counted again.
    seen: HashSet<String>,
    /// Each publish, ending in a failure with its message's handler, held
    /// rather than nacked so it is not redelivered to this run.
    publishes: JoinSet<Result<(), (Failure, Handler)>>,
    in_flight: Arc<Semaphore>,
    /// Messages handed to the publisher (or listed), for `--limit`.
    started: u64,
}

impl Run<'_> {
    fn done(&self) -> bool {
        !self.summary.failed.is_empty() || self.args.limit.is_some_and(|l| self.started >= l)
    }

    fn record(&mut self, joined: Result<Result<(), (Failure, Handler)>, tokio::task::JoinError>) {
        match joined {
            Ok(Ok(())) => self.summary.redriven += 1,
            Ok(Err((failure, handler))) => {
                self.held.push(handler);
                self.progress.stderr(&format!(
                    "failed: {}: {} (nacked; it stays on {})",
                    failure.message_id, failure.error, self.args.from
                ));
                self.summary.failed.push(failure);
            }
            Err(e) => self.summary.failed.push(Failure {
                message_id: "?".to_owned(),
                error: format!("publish task ended: {e}"),
            }),
        }
        self.progress.show(&self.summary);
    }

    fn collect_finished(&mut self) {
        while let Some(joined) = self.publishes.try_join_next() {
            self.record(joined);
        }
    }

    async fn handle(&mut self, message: Message, handler: Handler) -> anyhow::Result<()> {
        if !self.seen.insert(message.message_id.clone()) {
            self.held.push(handler);
            return Ok(());
        }
        let job = job_of(&message, &self.args.job_attribute);
        if !self.args.wants(job) {
            self.summary.skipped += 1;
            self.held.push(handler);
            self.progress.show(&self.summary);
            return Ok(());
        }
        let outgoing = republished(&message, &self.args.from);
        self.started += 1;
        let Some(publisher) = &self.publisher else {
            let attributes: BTreeMap<&String, &String> = outgoing.attributes.iter().collect();
            let line = serde_json::json!({
                "message_id": message.message_id,
                "job": job,
                "ordering_key": Some(&message.ordering_key).filter(|k| !k.is_empty()),
                "data_bytes": message.data.len(),
                "attributes": attributes,
            });
            self.progress.stdout(&line.to_string());
            self.summary.redriven += 1;
            self.held.push(handler);
            self.progress.show(&self.summary);
            return Ok(());
        };
        let permit = Arc::clone(&self.in_flight).acquire_owned().await?;
        // Handed over here, in pull order, so the publisher keeps each
        // ordering key's order; confirmed in the task.
        let publish = publisher.publish(outgoing);
        let topic = self.args.to.clone();
        let timeout = Duration::from_secs(self.args.publish_timeout_secs);
        let message_id = message.message_id;
        self.publishes.spawn(async move {
            let result = gcp::confirm(publish, &topic, timeout).await;
            drop(permit);
            match result {
                Ok(_) => {
                    handler.ack();
                    Ok(())
                }
                Err(e) => Err((
                    Failure {
                        message_id,
                        error: e.to_string(),
                    },
                    handler,
                )),
            }
        });
        Ok(())
    }

    /// Waits for every publish, then returns the held messages. Call once
    /// the stream is closed, so they are not handed straight back to it.
    async fn finish(mut self) -> Summary {
        while let Some(joined) = self.publishes.join_next().await {
            self.record(joined);
        }
        for handler in self.held.drain(..) {
            handler.nack();
        }
        self.progress.0.finish_and_clear();
        self.summary
    }
}

/// Pulls from `--from` and republishes to `--to` until `--limit` or
/// `--idle-secs`, or the first failed publish. Does not [`check`] the names.
pub async fn redrive(target: &PubsubTarget, args: &RedriveArgs) -> anyhow::Result<Summary> {
    let subscriber = target.subscriber().await?;
    let publisher = if args.dry_run {
        None
    } else {
        Some(target.publisher(&args.to).await?)
    };
    // Without a filter, nothing past the limit is leased; held messages
    // count against the bound, so with one the bound stays wide.
    let outstanding = match args.limit {
        Some(limit) if args.filters.is_empty() => {
            i64::try_from(limit).map_or(MAX_OUTSTANDING, |l| l.min(MAX_OUTSTANDING))
        }
        _ => MAX_OUTSTANDING,
    };
    let mut stream = subscriber
        .subscribe(args.from.clone())
        .set_max_outstanding_messages(outstanding)
        // Messages sent to the stream but not read when it closes come back
        // after this, rather than after the default minute.
        .set_max_lease_extension(Duration::from_secs(10))
        // Keeps the leases of the handlers still held once the stream closes.
        .set_shutdown_behavior(ShutdownBehavior::WaitForProcessing)
        .build();
    let shutdown = stream.shutdown_token();
    let mut run = Run {
        args,
        publisher,
        progress: Progress::new(args.limit),
        summary: Summary {
            dry_run: args.dry_run,
            ..Summary::default()
        },
        held: Vec::new(),
        seen: HashSet::new(),
        publishes: JoinSet::new(),
        in_flight: Arc::new(Semaphore::new(usize::from(args.concurrency))),
        started: 0,
    };
    let idle = Duration::from_secs(args.idle_secs);
    let mut wait = idle.max(FIRST_MESSAGE_WAIT);
    let mut pulled: anyhow::Result<()> = Ok(());
    loop {
        run.collect_finished();
        if run.done() {
            break;
        }
        let next = match tokio::time::timeout(wait, stream.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(next)) => next,
        };
        wait = idle;
        match next {
            Ok((message, handler)) => {
                if let Err(e) = run.handle(message, handler).await {
                    pulled = Err(e);
                    break;
                }
            }
            Err(e) => {
                pulled = Err(if gcp::is_not_found(&e) {
                    missing(Resource::Subscription, &args.from, "--from", target)
                } else {
                    anyhow::Error::new(e).context(format!("pulling from {}", args.from))
                });
                break;
            }
        }
    }
    // Close the pull first: nacked messages go back to the subscription, not
    // to this stream.
    drop(stream);
    let summary = run.finish().await;
    // Let the acks and nacks reach the server before returning.
    shutdown.shutdown().await;
    pulled.map(|()| summary)
}

/// Runs `pushworker redrive`: checks the names, redrives, prints the summary
/// on stdout, and errors when any publish failed, so the exit code says so.
pub async fn run(args: RedriveArgs) -> anyhow::Result<()> {
    let target = PubsubTarget::new(args.emulator_host.clone());
    check(&target, &args).await?;
    let summary = redrive(&target, &args).await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", summary.line()).context("writing the summary")?;
    if let Some(first) = summary.failed.first() {
        bail!(
            "{} publish(es) to {} failed and were nacked, so they stay on {}; first: {}",
            summary.failed.len(),
            args.to,
            args.from,
            first.error
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_or_say_what_to_fix() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("job=echo", Ok("echo")),
            ("job = echo ", Ok("echo")),
            ("job=a=b", Ok("a=b")),
            ("echo", Err("use job=NAME")),
            ("", Err("use job=NAME")),
            ("status=failed", Err("unknown filter key `status`")),
            ("=echo", Err("unknown filter key ``")),
            ("job=", Err("needs a job name")),
            ("job=  ", Err("needs a job name")),
        ];
        for (input, expected) in cases {
            let parsed = input.parse::<JobFilter>();
            match (expected, parsed) {
                (Ok(name), Ok(f)) => assert_eq!(f.0, *name, "{input:?}"),
                (Err(text), Err(e)) => assert!(e.contains(text), "{input:?}: {e}"),
                (expected, parsed) => panic!("{input:?}: expected {expected:?}, got {parsed:?}"),
            }
        }
    }

    #[test]
    fn a_message_is_wanted_by_its_job_attribute_or_the_dead_letter_one() {
        use clap::Parser as _;
        let args = |filters: &[&str]| {
            let mut argv = vec![
                "pushworker",
                "redrive",
                "--from",
                "projects/p-1/subscriptions/dead-sub",
                "--to",
                "projects/p-1/topics/work",
            ];
            for f in filters {
                argv.extend(["--filter", f]);
            }
            match crate::cli::Cli::try_parse_from(argv)
                .expect("parses")
                .command
            {
                crate::cli::Command::Redrive(args) => *args,
                _ => unreachable!("parsed as redrive"),
            }
        };
        let message = |attrs: &[(&str, &str)]| {
            Message::new().set_attributes(
                attrs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<std::collections::HashMap<_, _>>(),
            )
        };
        let echo = message(&[("job", "echo")]);
        let recorded = message(&[(attr::JOB, "echo")]);
        let none = message(&[]);
        let all = args(&[]);
        let some = args(&["job=echo", "job=sleep"]);
        let other = args(&["job=sleep"]);
        for (args, m, wanted) in [
            (&all, &none, true),
            (&all, &echo, true),
            (&some, &echo, true),
            (&some, &recorded, true),
            (&some, &none, false),
            (&other, &echo, false),
        ] {
            assert_eq!(
                args.wants(job_of(m, &args.job_attribute)),
                wanted,
                "{:?} {:?}",
                args.filters,
                m.attributes
            );
        }
    }

    #[test]
    fn the_copy_keeps_data_attributes_and_ordering_key() {
        let original = Message::new()
            .set_data(b"payload".to_vec())
            .set_attributes([("job".to_owned(), "echo".to_owned())])
            .set_ordering_key("k1");
        let copy = republished(&original, "projects/p-1/subscriptions/dead");
        assert_eq!(copy.data, original.data);
        assert_eq!(copy.ordering_key, "k1");
        assert_eq!(copy.attributes["job"], "echo");
        assert_eq!(
            copy.attributes[REDRIVEN_FROM],
            "projects/p-1/subscriptions/dead"
        );
        assert_eq!(copy.attributes.len(), 2);
    }

    #[test]
    fn the_summary_line() {
        let mut summary = Summary {
            redriven: 3,
            skipped: 1,
            ..Summary::default()
        };
        assert_eq!(summary.line(), "redriven 3, skipped 1, failed 0");
        summary.dry_run = true;
        assert!(
            summary
                .line()
                .starts_with("dry run: would redrive 3, skipped 1")
        );
    }
}
