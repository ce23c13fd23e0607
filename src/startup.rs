//! Building and running the application: [`Application::build`] validates
//! nothing further (the [`Config`] is already valid), wires the state, starts
//! prefetching keys, opens the run ledger (PostgreSQL with `DATABASE_URL`,
//! migrated here; memory otherwise) and binds the listeners, the public one
//! and the metrics one (port 0 picks a free port, as tests do);
//! [`Application::run`] serves until the shutdown future completes.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::{
    auth::{
        Authenticator, clerk::ClerkVerifier, google::GoogleVerifier, keys::KeyCache,
        token_cache::TokenCache,
    },
    config::Config,
    http::{AppState, Instruments, router},
    jobs::{JobDeps, JobRegistry},
    pubsub::dead_letter::DeadLetter,
    runs::{RunStore, memory::MemoryStore, metered::Metered, postgres::PgStore, spawn_pruner},
    telemetry::metrics::{Metrics, MetricsListener},
};

/// A bound, ready-to-serve worker.
pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<MetricsListener>,
    state: AppState,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("addr", &self.listener.local_addr().ok())
            .field("metrics_addr", &self.metrics_addr())
            .finish_non_exhaustive()
    }
}

/// The runtime the binary runs on: tokio's multi-threaded scheduler, one
/// worker per core.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// How long the binary waits, once `main`'s future is done, for the
/// runtime's threads to stop (a blocking task that never returns must not
/// keep the process alive).
pub const RUNTIME_STOP: Duration = Duration::from_secs(2);

/// The HTTP client shared by key fetches and jobs.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("pushworker/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

impl Application {
    /// Builds the worker with the built-in jobs.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_jobs(config, None).await
    }

    /// Builds the worker with `jobs` instead of the built-in ones (tests
    /// register jobs that fail on purpose).
    pub async fn build_with_jobs(
        config: Config,
        jobs: Option<JobRegistry>,
    ) -> anyhow::Result<Self> {
        let http = http_client()?;
        // Off: no recorder at all, and every handle below is a no-op.
        let metrics = match config.metrics.addr {
            Some(_) => Metrics::new()?,
            None => Metrics::disabled(),
        };
        let google = config.google.clone().map(|g| {
            let keys = KeyCache::metered(
                "google",
                g.keys.clone(),
                http.clone(),
                config.key_cache.clone(),
                &metrics,
            );
            keys.prefetch();
            GoogleVerifier::new(g, keys, config.leeway)
        });
        let clerk = config.clerk.clone().map(|c| {
            let keys = KeyCache::metered(
                "clerk",
                c.keys.clone(),
                http.clone(),
                config.key_cache.clone(),
                &metrics,
            );
            keys.prefetch();
            ClerkVerifier::new(c, keys, config.leeway)
        });
        let jobs = match jobs {
            Some(jobs) => jobs,
            None => JobRegistry::builtin(&JobDeps {
                http: http.clone(),
                webhook: config.webhook.clone(),
            })?,
        };
        jobs.check()?;
        // A job whose schema the API document cannot carry stops start-up
        // here, saying which job and keyword, rather than on the first request.
        crate::http::document(&jobs)?;
        let names: Vec<&str> = jobs.list().iter().map(|j| j.name).collect();
        config
            .events
            .check_jobs(|name| jobs.contains(name), &names)?;
        let dead_letter = match &config.dead_letter_topic {
            Some(topic) => Some(Arc::new(
                DeadLetter::new(&config.pubsub, topic, Duration::from_secs(10))
                    .await
                    .context("DEAD_LETTER_TOPIC: cannot create the publisher")?,
            )),
            None => None,
        };
        let settings = config.runs.store_settings();
        let runs: Arc<dyn RunStore> = match &config.runs.database_url {
            Some(url) => Arc::new(PgStore::connect(url.expose(), settings).await?),
            None => Arc::new(MemoryStore::new(settings)),
        };
        let runs: Arc<dyn RunStore> = if metrics.is_enabled() {
            Arc::new(Metered::new(runs, &metrics))
        } else {
            runs
        };
        spawn_pruner(Arc::clone(&runs), config.runs.prune_every);
        let tokens = TokenCache::new(config.token_cache_max_entries, config.leeway)
            .map(|t| t.with_metrics(&metrics));
        let addr = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("PORT: cannot listen on {addr}"))?;
        let metrics_listener = MetricsListener::bind(&config.metrics).await?;
        let instruments = Arc::new(Instruments::new(&metrics, &jobs));
        Ok(Self {
            listener,
            metrics_listener,
            state: AppState {
                config: Arc::new(config),
                auth: Arc::new(
                    Authenticator::new(google, clerk)
                        .with_token_cache(tokens)
                        .with_metrics(&metrics),
                ),
                jobs: Arc::new(jobs),
                dead_letter,
                runs,
                stop: Arc::new(tokio_util::sync::CancellationToken::new()),
                metrics: instruments,
                control: Arc::default(),
                reruns: Arc::default(),
            },
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The metrics listener's bound address; `None` with `METRICS_ADDR=off`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(MetricsListener::local_addr)
    }

    /// The shared state (tests inspect key caches through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes; then stops accepting, lets
    /// in-flight requests finish for up to the grace period, cancels the jobs
    /// still running (their pushes are answered 503, a nack, never an ack),
    /// and flushes the dead-letter publisher. Connections are served under
    /// the header and idle timeouts and the bound of
    /// [`crate::server::HttpServerConfig`].
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let dead_letter = self.state.dead_letter.clone();
        let stop = self.state.stop.clone();
        let grace = self.state.config.shutdown_grace;
        let signal = async move {
            shutdown.await;
            tracing::info!(
                grace_secs = grace.as_secs(),
                "shutting down: no new connections; in-flight jobs may finish within the grace period"
            );
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                if !stop.is_cancelled() {
                    tracing::warn!(
                        "grace period over: cancelling the jobs still running (their pushes are nacked)"
                    );
                    stop.cancel();
                }
            });
        };
        let http = self.state.config.http.clone();
        // Serves through the drain, so the last scrape sees the last runs.
        let metrics_stop = tokio_util::sync::CancellationToken::new();
        let _stop_metrics = metrics_stop.clone().drop_guard();
        if let Some(listener) = self.metrics_listener {
            listener.spawn(&self.state.metrics.metrics, metrics_stop);
        }
        // Cancel requests reach the runs held here until serving ends.
        let poll_stop = Arc::new(tokio_util::sync::CancellationToken::new());
        let _stop_polling = (*poll_stop).clone().drop_guard();
        self.state
            .control
            .spawn_poller(Arc::clone(&self.state.runs), poll_stop);
        let app = router(self.state)?;
        crate::server::serve(self.listener, app, &http, signal).await;
        if let Some(dl) = dead_letter {
            dl.flush().await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}
