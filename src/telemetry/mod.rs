//! Logging, and the metrics listener ([`metrics`]).
//!
//! Logging: readable text locally; on Cloud Run (or with `LOG_FORMAT=json`)
//! one JSON object per line on stdout in Cloud Logging's structured format
//! (see [`format`] for its fields).
//!
//! Lines go to stdout through `tracing-appender`'s non-blocking writer in
//! lossless mode: a request hands its line over and a writer thread writes
//! what has queued up in one call, then rests a moment so that the next
//! lines queue up too; neither the thread nor a log collector on the pipe
//! is woken once per line. [`LogGuard`] holds that thread; dropping it (at the
//! end of `main`) writes every line still queued.
//!
//! Text lines escape control characters in every field and message, so no
//! caller's input can start a line of its own or reach a terminal as an
//! escape sequence; they are coloured only on a terminal, and never with
//! `NO_COLOR` set. Nothing here logs headers or bodies; tokens never reach a
//! log line. `RUST_LOG` filters (default `info`).

mod format;
pub mod metrics;
mod trace;

use std::io::IsTerminal as _;

pub use trace::trace_context;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{
    EnvFilter,
    filter::{LevelFilter, Targets},
    fmt,
    prelude::*,
};

/// Logging (`LOG_FORMAT`, and the project for trace fields).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Project id for Cloud Logging's trace field
    /// (`projects/P/traces/T`); Cloud Run's own variable for it is not set,
    /// so give it here (the Terraform does).
    #[arg(long, env = "GOOGLE_CLOUD_PROJECT")]
    pub google_cloud_project: Option<String>,

    /// Log format: `text` or `json` (Cloud Logging). Default: json on Cloud
    /// Run (`K_SERVICE` set), text elsewhere.
    #[arg(long, env = "LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// Lines queued for the writer thread before a request waits for it.
const LOG_QUEUE_LINES: usize = 8192;

/// How long the writer thread rests after each write to stdout.
const LOG_WRITE_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// Stdout as the writer thread sees it: buffered, and after each flush (the
/// thread flushes whenever its queue runs dry) the thread rests for
/// [`LOG_WRITE_PAUSE`]. Lines that come meanwhile queue up and go out in one
/// write, and a request hands its line over without waking the thread,
/// which under load would otherwise be woken, at the cost of a context
/// switch, for nearly every line.
struct Paced<W: std::io::Write>(std::io::BufWriter<W>);

impl<W: std::io::Write> std::io::Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        std::thread::sleep(LOG_WRITE_PAUSE);
        Ok(())
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, in Cloud Logging's format.
    Json,
}

/// Keeps the log writer's thread; dropping it writes every queued line.
/// `main` owns it and drops it last.
#[derive(Debug, Default)]
pub struct LogGuard(std::sync::OnceLock<WorkerGuard>);

/// Installs the global subscriber, its writer thread held by `guard`. Call
/// once; a second call changes nothing.
///
/// `RUST_LOG` of levels and targets (`info`, `warn,pushworker=debug`), the
/// usual case, is read as a static [`Targets`] filter; only a spec that needs
/// more (span or field directives) gets an [`EnvFilter`], which costs on
/// every entry into a span, i.e. on every poll of every request.
pub fn init(guard: &LogGuard, format: LogFormat, project_id: Option<String>) {
    if guard.0.get().is_some() {
        return;
    }
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let (targets, env_filter) = filter(&spec);
    let (writer, worker) = NonBlockingBuilder::default()
        .lossy(false)
        // The queue is allocated whole at start, and at its default size it
        // would be most of an idle worker's memory. Full, it makes requests
        // wait for stdout, never drops a line.
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("log-writer")
        .finish(Paced(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        )));
    let registry = tracing_subscriber::registry()
        .with(targets)
        .with(env_filter);
    let installed = match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .with_ansi(colour(
                        std::io::stdout().is_terminal(),
                        std::env::var_os("NO_COLOR"),
                    ))
                    .fmt_fields(format::EscapedFields)
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(format::SpanFields)
            .with(
                fmt::layer()
                    .with_ansi(false)
                    .fmt_fields(format::NoFields)
                    .event_format(format::CloudLogging::new(project_id))
                    .with_writer(writer),
            )
            .try_init(),
    };
    if installed.is_ok() {
        let _ = guard.0.set(worker);
    }
}

/// Whether text lines are coloured: only on a terminal, and not with
/// `NO_COLOR` set to anything but the empty string (no-color.org).
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The filter for a `RUST_LOG` spec: `info` when it is empty or unreadable.
fn filter(spec: &str) -> (Option<Targets>, Option<EnvFilter>) {
    let info = || (Some(Targets::new().with_default(LevelFilter::INFO)), None);
    let spec = spec.trim();
    if spec.is_empty() {
        return info();
    }
    if let Ok(targets) = spec.parse::<Targets>() {
        return (Some(targets), None);
    }
    match EnvFilter::try_new(spec) {
        Ok(env) => (None, Some(env)),
        Err(_) => info(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Levels and targets get the static filter; span directives need
    /// EnvFilter; nothing, or nonsense, is `info`.
    #[test]
    fn rust_log_picks_the_cheapest_filter_that_reads_it() {
        let is_targets = |spec: &str| matches!(filter(spec), (Some(_), None));
        assert!(is_targets(""));
        assert!(is_targets("warn"));
        assert!(is_targets("info,pushworker=debug,hyper=warn"));
        assert!(matches!(
            filter("[request{job=echo}]=debug"),
            (None, Some(_))
        ));
        let (targets, env) = filter("pushworker=notalevel[");
        assert!(env.is_none());
        let targets = targets.unwrap();
        assert!(targets.would_enable("pushworker", &tracing::Level::INFO));
        assert!(!targets.would_enable("pushworker", &tracing::Level::DEBUG));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())), "empty NO_COLOR is unset");
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None), "a pipe or a file");
        assert!(!colour(false, Some("1".into())));
    }
}
