//! Metrics: Prometheus text at `GET /metrics` on a listener of its own
//! (`METRICS_ADDR`, loopback by default), never on the public port. On Cloud
//! Run the Managed Service for Prometheus sidecar scrapes it over localhost.
//!
//! Each [`Metrics`] owns its recorder (`metrics-exporter-prometheus`), and
//! the layers record through handles they were given at start-up, not
//! through the `metrics` macros and a process-wide recorder: two workers in
//! one process (as the tests run them) count apart, and a handle registered
//! once costs one atomic operation per record. With `METRICS_ADDR=off` there
//! is no recorder at all and every handle is a no-op.
//!
//! Names follow OpenTelemetry's semantic conventions where one exists
//! ([`names`]). Label values are bounded: they come from the job registry,
//! the router's route templates, and fixed sets of reasons and outcomes,
//! never from what a caller sent (an unknown value is [`OTHER`]).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use ::metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder as _, Unit};
use anyhow::Context as _;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio_util::sync::CancellationToken;

/// The label value that stands for any value outside the bounded set.
pub const OTHER: &str = "_other";

/// The metrics' names.
pub mod names {
    /// OpenTelemetry's `http.server.request.duration`.
    pub const HTTP_SERVER_REQUEST_DURATION: &str = "http_server_request_duration_seconds";
    /// OpenTelemetry's `messaging.process.duration`, for Pub/Sub pushes.
    pub const MESSAGING_PROCESS_DURATION: &str = "messaging_process_duration_seconds";
    /// Runs by job, source and status.
    pub const RUNS: &str = "pushworker_runs_total";
    /// How long jobs ran.
    pub const RUN_DURATION: &str = "pushworker_run_duration_seconds";
    /// Jobs running now.
    pub const RUNS_IN_FLIGHT: &str = "pushworker_runs_in_flight";
    /// Refused requests by issuer and reason.
    pub const AUTH_REJECTIONS: &str = "pushworker_auth_rejections_total";
    /// Signing-key fetches by issuer and outcome.
    pub const KEY_FETCHES: &str = "pushworker_key_fetches_total";
    /// Tokens found in the verified-token cache.
    pub const TOKEN_CACHE_HITS: &str = "pushworker_token_cache_hits_total";
    /// Tokens verified because the cache did not have them.
    pub const TOKEN_CACHE_MISSES: &str = "pushworker_token_cache_misses_total";
    /// Run-ledger operations by operation and store.
    pub const LEDGER_OPERATION_DURATION: &str = "pushworker_ledger_operation_duration_seconds";
}

/// OpenTelemetry's advice for `http.server.request.duration`, in seconds;
/// also the default of the other histograms.
const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Jobs may run up to the job timeout (an hour at most).
const RUN_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
    3600.0,
];

/// Ledger operations take from microseconds (memory) to milliseconds
/// (PostgreSQL).
const LEDGER_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// How often histogram samples are folded into their buckets when nobody
/// scrapes (a scrape folds them too). Until then every sample waits in a
/// queue of its own, so under load the period sets how much memory they hold.
const UPKEEP_EVERY: Duration = Duration::from_millis(250);

/// Metrics (`METRICS_ADDR`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Metrics")]
pub struct MetricsArgs {
    /// Where to serve Prometheus metrics at `/metrics` (`host:port`), apart
    /// from the public port; `off` records none. Keep it on loopback: the
    /// Cloud Run sidecar scrapes it over localhost.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: String,
}

/// The validated metrics settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    /// The listener's address; `None`: metrics are off.
    pub addr: Option<SocketAddr>,
}

impl MetricsConfig {
    /// Metrics off.
    pub const OFF: Self = Self { addr: None };

    /// Parses `METRICS_ADDR`.
    pub fn from_args(args: &MetricsArgs) -> anyhow::Result<Self> {
        let text = args.metrics_addr.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Self::OFF);
        }
        let addr = text.parse::<SocketAddr>().map_err(|_| {
            anyhow::anyhow!(
                "METRICS_ADDR: `{text}` is not an address; use host:port (e.g. 127.0.0.1:9464) or off"
            )
        })?;
        Ok(Self { addr: Some(addr) })
    }
}

/// The recorder of one worker, or none (metrics off). Cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics(Option<Arc<PrometheusRecorder>>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

/// What the `metrics` crate asks of a registration; nothing here reads it.
static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

impl Metrics {
    /// No recorder: every handle is a no-op.
    pub fn disabled() -> Self {
        Self(None)
    }

    /// A recorder with this service's buckets and descriptions.
    pub fn new() -> anyhow::Result<Self> {
        let full = |name: &str| Matcher::Full(name.to_owned());
        let recorder = PrometheusBuilder::new()
            .set_buckets(REQUEST_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(full(names::RUN_DURATION), RUN_BUCKETS))
            .and_then(|b| {
                b.set_buckets_for_metric(full(names::LEDGER_OPERATION_DURATION), LEDGER_BUCKETS)
            })
            .context("metrics buckets")?
            .build_recorder();
        for (name, unit, text) in [
            (
                names::HTTP_SERVER_REQUEST_DURATION,
                Some(Unit::Seconds),
                "Duration of HTTP server requests, to the last byte of the response.",
            ),
            (
                names::MESSAGING_PROCESS_DURATION,
                Some(Unit::Seconds),
                "Duration of processing a Pub/Sub push, to its acknowledgement (2xx) or not.",
            ),
            (
                names::RUN_DURATION,
                Some(Unit::Seconds),
                "How long jobs ran.",
            ),
            (
                names::LEDGER_OPERATION_DURATION,
                Some(Unit::Seconds),
                "Duration of run-ledger operations.",
            ),
        ] {
            recorder.describe_histogram(name.into(), unit, text.into());
        }
        for (name, text) in [
            (
                names::RUNS,
                "Runs by job, source and status (a duplicate or a conflict ran nothing).",
            ),
            (
                names::AUTH_REJECTIONS,
                "Requests refused by authentication or authorization.",
            ),
            (names::KEY_FETCHES, "Signing-key (JWKS) fetches."),
            (
                names::TOKEN_CACHE_HITS,
                "Bearer tokens accepted from the verified-token cache.",
            ),
            (
                names::TOKEN_CACHE_MISSES,
                "Bearer tokens the verified-token cache did not have.",
            ),
        ] {
            recorder.describe_counter(name.into(), None, text.into());
        }
        recorder.describe_gauge(
            names::RUNS_IN_FLIGHT.into(),
            None,
            "Jobs running now.".into(),
        );
        Ok(Self(Some(Arc::new(recorder))))
    }

    /// Whether a recorder is installed.
    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The counter `name{labels}` (a no-op when off). Register once and keep
    /// it: registering looks the series up.
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        match &self.0 {
            Some(r) => r.register_counter(&key(name, labels), &METADATA),
            None => Counter::noop(),
        }
    }

    /// The histogram `name{labels}` (a no-op when off).
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        match &self.0 {
            Some(r) => r.register_histogram(&key(name, labels), &METADATA),
            None => Histogram::noop(),
        }
    }

    /// The gauge `name{labels}` (a no-op when off).
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        match &self.0 {
            Some(r) => r.register_gauge(&key(name, labels), &METADATA),
            None => Gauge::noop(),
        }
    }

    /// The exposition text, if on.
    pub fn render(&self) -> Option<String> {
        self.0.as_ref().map(|r| r.handle().render())
    }

    fn handle(&self) -> Option<PrometheusHandle> {
        self.0.as_ref().map(|r| r.handle())
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, (*v).to_owned()))
        .collect();
    Key::from_parts(name, labels)
}

/// Histograms of one name by a bounded outer label value (a route, a
/// subscription) and a small inner key of static values, registered on first
/// use. Past `max_outer` distinct outer values, new ones are counted as
/// [`OTHER`], so no caller can grow the set of series.
pub struct HistogramTable<I> {
    metrics: Metrics,
    name: &'static str,
    outer_label: &'static str,
    fixed: &'static [(&'static str, &'static str)],
    inner_labels: fn(&I) -> Vec<(&'static str, String)>,
    max_outer: usize,
    table: RwLock<HashMap<Box<str>, HashMap<I, Histogram>>>,
}

impl<I> std::fmt::Debug for HistogramTable<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistogramTable")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<I: Copy + Eq + std::hash::Hash> HistogramTable<I> {
    /// A table of `name` over `metrics`: each series has the `fixed` labels,
    /// `outer_label`, and the labels `inner_labels` gives its inner key.
    pub fn new(
        metrics: &Metrics,
        name: &'static str,
        fixed: &'static [(&'static str, &'static str)],
        outer_label: &'static str,
        inner_labels: fn(&I) -> Vec<(&'static str, String)>,
        max_outer: usize,
    ) -> Self {
        Self {
            metrics: metrics.clone(),
            name,
            outer_label,
            fixed,
            inner_labels,
            max_outer,
            table: RwLock::new(HashMap::new()),
        }
    }

    /// Records `seconds` under (`outer`, `inner`). The common case, a series
    /// seen before, takes a read lock and two lookups.
    pub fn record(&self, outer: &str, inner: I, seconds: f64) {
        if !self.metrics.is_enabled() {
            return;
        }
        {
            let table = self.table.read().unwrap_or_else(|e| e.into_inner());
            if let Some(h) = table.get(outer).and_then(|m| m.get(&inner)) {
                h.record(seconds);
                return;
            }
        }
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let outer = if table.contains_key(outer) || table.len() < self.max_outer {
            outer
        } else {
            OTHER
        };
        let series = table.entry(outer.into()).or_default();
        let histogram = series.entry(inner).or_insert_with(|| {
            let inner_labels = (self.inner_labels)(&inner);
            let mut labels: Vec<(&'static str, &str)> = self.fixed.to_vec();
            labels.push((self.outer_label, outer));
            labels.extend(inner_labels.iter().map(|(k, v)| (*k, v.as_str())));
            self.metrics.histogram(self.name, &labels)
        });
        histogram.record(seconds);
    }
}

/// The metrics listener, bound and not yet serving.
#[derive(Debug)]
pub struct MetricsListener {
    listener: tokio::net::TcpListener,
}

impl MetricsListener {
    /// Binds `config`'s address, or nothing when metrics are off.
    pub async fn bind(config: &MetricsConfig) -> anyhow::Result<Option<Self>> {
        let Some(addr) = config.addr else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("METRICS_ADDR: cannot listen on {addr}"))?;
        Ok(Some(Self { listener }))
    }

    /// The bound address (port 0 picks a free one, as tests do).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves `GET /metrics` from `metrics` until `stop` is cancelled, and
    /// folds histogram samples into their buckets every [`UPKEEP_EVERY`].
    pub fn spawn(self, metrics: &Metrics, stop: CancellationToken) {
        let Some(handle) = metrics.handle() else {
            return;
        };
        let upkeep = handle.clone();
        let upkeep_stop = stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tokio::select! {
                    () = upkeep_stop.cancelled() => return,
                    _ = every.tick() => upkeep.run_upkeep(),
                }
            }
        });
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let handle = handle.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        handle.render(),
                    )
                }
            }),
        );
        let addr = self.local_addr();
        tokio::spawn(async move {
            tracing::info!(addr = ?addr, "serving metrics at /metrics");
            if let Err(error) = axum::serve(self.listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!(%error, "the metrics listener failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_addr_is_an_address_or_off() {
        let parse = |text: &str| {
            MetricsConfig::from_args(&MetricsArgs {
                metrics_addr: text.to_owned(),
            })
        };
        assert_eq!(parse("off").unwrap(), MetricsConfig::OFF);
        assert_eq!(parse(" OFF ").unwrap(), MetricsConfig::OFF);
        assert_eq!(
            parse("127.0.0.1:9464").unwrap().addr,
            Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
        for bad in ["", "9464", "localhost:9464", "127.0.0.1", "on"] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.starts_with("METRICS_ADDR: "), "{error}");
            assert!(error.contains("or off"), "{error}");
        }
    }

    #[test]
    fn disabled_metrics_render_nothing_and_record_nowhere() {
        let metrics = Metrics::disabled();
        metrics
            .counter(names::RUNS, &[("job_name", "echo")])
            .increment(1);
        assert_eq!(metrics.render(), None);
    }

    #[test]
    fn a_table_bounds_its_outer_values() {
        let metrics = Metrics::new().unwrap();
        let table: HistogramTable<u16> = HistogramTable::new(
            &metrics,
            names::HTTP_SERVER_REQUEST_DURATION,
            &[("fixed", "yes")],
            "http_route",
            |_| vec![("inner", "x".to_owned())],
            2,
        );
        for route in ["/a", "/b", "/c", "/d", "/a"] {
            table.record(route, 1, 0.001);
        }
        let text = metrics.render().unwrap();
        let count = |route: &str| {
            let series = format!(
                "http_server_request_duration_seconds_count{{fixed=\"yes\",http_route=\"{route}\",inner=\"x\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .unwrap_or_else(|| panic!("no {series} in {text}"))
                .to_owned()
        };
        assert_eq!(count("/a"), "2");
        assert_eq!(count("/b"), "1");
        assert_eq!(count(OTHER), "2");
        assert!(!text.contains("/c"), "{text}");
    }
}
