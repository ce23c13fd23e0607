//! Configuration: parsed and validated once, at start-up, from flags and the
//! environment.
//!
//! Every setting is an environment variable (the way Cloud Run passes
//! configuration) and also a flag of `pushworker serve`. [`ServeArgs`] is the raw
//! clap surface; [`Config::from_args`] turns it into a validated [`Config`] or an
//! error that names the variable and says what to fix. Nothing later in the
//! program re-reads the environment.
//!
//! Nothing secret is printed: [`Config`] implements `Debug` by hand and the
//! only secret-like values (a PEM key, the database URL) are shown as
//! `<set>`/`<unset>`.

mod auth;
mod runs;

use std::{net::IpAddr, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use clap::Args;

use crate::auth::dev::DevIdentity;
pub use crate::runs::settings::{RunsConfig, Secret};
// The settings types of the modules the configuration is made of.
pub use crate::auth::{
    TriggerPolicy, clerk::ClerkConfig, google::GoogleConfig, keys::KeyCacheConfig, keys::KeySource,
};

/// Flags and environment variables of `pushworker serve` (and of the commands
/// that need the same settings, such as `dev-token`).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on. Defaults to 0.0.0.0, or 127.0.0.1 in dev mode.
    #[arg(long, env = "HOST")]
    pub host: Option<IpAddr>,

    /// Port to listen on (Cloud Run sets it).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Longest a job may run, in seconds, before it is cancelled and the
    /// request answered 504 (a nack on the push path). Keep it below the
    /// subscription's ack deadline.
    #[arg(long, env = "JOB_TIMEOUT_SECS", default_value_t = 60)]
    pub job_timeout_secs: u64,

    /// The `webhook` job's settings (`WEBHOOK_*`).
    #[command(flatten)]
    pub webhook: crate::jobs::webhook::WebhookArgs,

    /// Origins (`https://admin.example.com`) whose pages may call this API
    /// from the browser (comma list). Empty: no CORS headers at all, which is
    /// right when the admin page is the one served at `/admin`.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,

    /// On SIGTERM, how long in-flight jobs may go on before they are
    /// cancelled and their requests answered 503 (a nack), in seconds. Cloud
    /// Run sends SIGKILL 10 s after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 8)]
    pub shutdown_grace_secs: u64,

    /// Set by Cloud Run; dev mode refuses to start when it is present.
    #[arg(long, env = "K_SERVICE", hide = true)]
    pub k_service: Option<String>,

    /// The HTTP server's timeouts and connection bound, and whether the API
    /// document is served.
    #[command(flatten)]
    pub http: crate::server::HttpServerArgs,

    /// The issuers, the trigger policy and the key cache.
    #[command(flatten)]
    pub auth: crate::auth::settings::AuthArgs,

    /// The run ledger.
    #[command(flatten)]
    pub runs: crate::runs::settings::RunsArgs,

    /// Pub/Sub.
    #[command(flatten)]
    pub pubsub: crate::pubsub::PubsubArgs,

    /// Events (`POST /events`).
    #[command(flatten)]
    pub events: crate::events::EventArgs,

    /// Logging.
    #[command(flatten)]
    pub log: crate::telemetry::LogArgs,

    /// Metrics (`METRICS_ADDR`).
    #[command(flatten)]
    pub metrics: crate::telemetry::metrics::MetricsArgs,

    /// Development mode.
    #[command(flatten)]
    pub dev: crate::auth::dev::DevArgs,
}

pub use crate::telemetry::LogFormat;

/// The validated configuration of a running worker.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub host: IpAddr,
    /// Listen port (0 picks a free one, as tests do).
    pub port: u16,
    /// Google issuer, if configured.
    pub google: Option<GoogleConfig>,
    /// Clerk issuer, if configured.
    pub clerk: Option<ClerkConfig>,
    /// Clock skew allowed on time claims.
    pub leeway: Duration,
    /// Bound of the verified-token cache (0: off).
    pub token_cache_max_entries: usize,
    /// Manual-trigger policy.
    pub trigger: TriggerPolicy,
    /// Attribute naming the job.
    pub job_attribute: String,
    /// Job timeout.
    pub job_timeout: Duration,
    /// Key cache settings.
    pub key_cache: KeyCacheConfig,
    /// The webhook job's settings.
    pub webhook: crate::jobs::webhook::WebhookConfig,
    /// Dead-letter topic, if set.
    pub dead_letter_topic: Option<String>,
    /// Where Pub/Sub is (real or emulator).
    pub pubsub: crate::pubsub::gcp::PubsubTarget,
    /// Which job each event type runs (`EVENT_ROUTES`); that the jobs exist
    /// is checked once the registry is built ([`crate::startup`]).
    pub events: crate::events::EventRoutes,
    /// Origins allowed to call the API cross-origin (empty: no CORS).
    pub cors_allowed_origins: Vec<String>,
    /// The run ledger.
    pub runs: RunsConfig,
    /// Grace period for in-flight jobs on shutdown.
    pub shutdown_grace: Duration,
    /// The HTTP server's timeouts and connection bound.
    pub http: crate::server::HttpServerConfig,
    /// Whether `GET /openapi.json` and `GET /docs` are served.
    pub openapi_enabled: bool,
    /// Where metrics are served (or off).
    pub metrics: crate::telemetry::metrics::MetricsConfig,
    /// Project id for trace fields in JSON logs.
    pub project_id: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Whether the development identity is trusted.
    pub dev_mode: bool,
    /// The development identity, loaded once in dev mode: the admin page's
    /// development sign-in mints its tokens with it.
    pub dev_identity: Option<Arc<DevIdentity>>,
}

fn clean_list(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Checks that every entry is an origin exactly as a browser sends it in
/// `Origin` (`scheme://host[:port]`, no path, no trailing slash): anything
/// else would never match and silently disable CORS for that page.
fn cors_origins(values: &[String]) -> anyhow::Result<Vec<String>> {
    let origins = clean_list(values);
    for origin in &origins {
        if origin == "*" {
            bail!(
                "CORS_ALLOWED_ORIGINS: `*` is not accepted; list the admin page's origins (e.g. https://admin.example.com)"
            );
        }
        let url = reqwest::Url::parse(origin).with_context(|| {
            format!("CORS_ALLOWED_ORIGINS: `{origin}` is not an origin (expected e.g. https://admin.example.com)")
        })?;
        let canonical = url.origin().ascii_serialization();
        if !matches!(url.scheme(), "https" | "http") || canonical != *origin {
            bail!(
                "CORS_ALLOWED_ORIGINS: `{origin}` is not an origin; write it as the browser sends it, scheme://host[:port] in lower case with no path or trailing slash (e.g. `{canonical}`)"
            );
        }
    }
    Ok(origins)
}

impl Config {
    /// Validates raw arguments into a [`Config`]. In dev mode this also
    /// creates (or loads) the development identity and fills every unset
    /// issuer setting from it.
    pub fn from_args(args: &ServeArgs) -> anyhow::Result<Self> {
        check_ranges(args)?;
        let runs = runs::runs_config(args)?;
        let dev = dev_identity(args)?;
        let google = auth::google_config(args, dev.as_deref())?;
        let clerk = auth::clerk_config(args, dev.as_deref())?;
        let dead_letter_topic = dead_letter_topic(args)?;
        let port = args.port;
        let host = args.host.unwrap_or(if args.dev.enabled {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from([0, 0, 0, 0])
        });
        let metrics = crate::telemetry::metrics::MetricsConfig::from_args(&args.metrics)?;
        if let Some(addr) = metrics.addr
            && addr.port() != 0
            && addr.port() == port
        {
            bail!(
                "METRICS_ADDR: {addr} uses the public port {port}; metrics must be served apart from it (e.g. 127.0.0.1:9464) or off"
            );
        }
        let log_format = args.log.log_format.unwrap_or(if args.k_service.is_some() {
            LogFormat::Json
        } else {
            LogFormat::Text
        });

        Ok(Self {
            host,
            port,
            google,
            clerk,
            leeway: Duration::from_secs(args.auth.auth_leeway_secs),
            token_cache_max_entries: args.auth.token_cache_max_entries,
            trigger: auth::trigger_policy(args),
            job_attribute: args.pubsub.job_attribute.trim().to_owned(),
            job_timeout: Duration::from_secs(args.job_timeout_secs),
            key_cache: auth::key_cache(args),
            webhook: crate::jobs::webhook::WebhookConfig::from_args(
                &args.webhook,
                args.dev.enabled.then_some(port),
            )?,
            dead_letter_topic,
            pubsub: crate::pubsub::gcp::PubsubTarget::new(args.pubsub.pubsub_emulator_host.clone()),
            events: crate::events::EventRoutes::parse(&args.events.event_routes)?,
            cors_allowed_origins: cors_origins(&args.cors_allowed_origins)?,
            runs,
            shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
            http: crate::server::HttpServerConfig::from_args(&args.http)?,
            openapi_enabled: args.http.openapi_enabled,
            metrics,
            project_id: args
                .log
                .google_cloud_project
                .as_deref()
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned),
            log_format,
            dev_mode: args.dev.enabled,
            dev_identity: dev,
        })
    }
}

/// The single-field rules: ranges, and values that must not be empty.
fn check_ranges(args: &ServeArgs) -> anyhow::Result<()> {
    if args.dev.enabled && args.k_service.is_some() {
        bail!(
            "PUSHWORKER_DEV: development mode trusts a local key and must not run on Cloud Run (K_SERVICE is set); unset PUSHWORKER_DEV / --dev"
        );
    }
    if args.auth.auth_leeway_secs > 60 {
        bail!(
            "AUTH_LEEWAY_SECS: {} is too large; clock skew allowance must be at most 60 seconds",
            args.auth.auth_leeway_secs
        );
    }
    if args.auth.token_cache_max_entries > 1_000_000 {
        bail!(
            "TOKEN_CACHE_MAX_ENTRIES: {} is too large; use 0 (off) to 1000000",
            args.auth.token_cache_max_entries
        );
    }
    if args.job_timeout_secs == 0 || args.job_timeout_secs > 3600 {
        bail!(
            "JOB_TIMEOUT_SECS: {} is out of range; use 1 to 3600 (and keep it below the subscription's ack deadline)",
            args.job_timeout_secs
        );
    }
    if args.auth.jwks_min_ttl_secs > args.auth.jwks_max_ttl_secs {
        bail!(
            "JWKS_MIN_TTL_SECS: {} is above JWKS_MAX_TTL_SECS ({}); the floor must not exceed the ceiling",
            args.auth.jwks_min_ttl_secs,
            args.auth.jwks_max_ttl_secs
        );
    }
    if args.auth.jwks_fetch_timeout_ms == 0 || args.auth.jwks_fetch_timeout_ms > 60_000 {
        bail!(
            "JWKS_FETCH_TIMEOUT_MS: {} is out of range; use 1 to 60000",
            args.auth.jwks_fetch_timeout_ms
        );
    }
    if args.shutdown_grace_secs > 3600 {
        bail!(
            "SHUTDOWN_GRACE_SECS: {} is out of range; use 0 to 3600 (Cloud Run allows 10 s after SIGTERM)",
            args.shutdown_grace_secs
        );
    }
    if args.auth.trigger_permission.trim().is_empty() {
        bail!("TRIGGER_PERMISSION: must not be empty (e.g. org:jobs:trigger)");
    }
    if args.pubsub.job_attribute.trim().is_empty() {
        bail!("JOB_ATTRIBUTE: must not be empty (e.g. job)");
    }
    Ok(())
}

/// The development identity, created or loaded in dev mode.
fn dev_identity(args: &ServeArgs) -> anyhow::Result<Option<Arc<DevIdentity>>> {
    if !args.dev.enabled {
        return Ok(None);
    }
    let dev = DevIdentity::load_or_create(&args.dev.dir).with_context(|| {
        format!(
            "DEV_DIR: cannot create or read the development key in `{}`",
            args.dev.dir.display()
        )
    })?;
    Ok(Some(Arc::new(dev)))
}

/// The dead-letter topic, if set: a full topic name.
fn dead_letter_topic(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    args.pubsub
        .dead_letter_topic
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            crate::pubsub::gcp::Resource::Topic
                .full_name(t)
                .map_err(|e| anyhow::anyhow!("DEAD_LETTER_TOPIC: {e}"))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(extra: &[&str]) -> ServeArgs {
        use clap::Parser as _;
        let mut argv = vec!["pushworker", "serve"];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Serve(args) => *args,
            _ => unreachable!("parsed as serve"),
        }
    }

    #[test]
    fn metrics_default_to_loopback_and_never_share_the_public_port() {
        let config = Config::from_args(&serve_args(&[])).unwrap();
        assert_eq!(
            config.metrics.addr,
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
        let off = Config::from_args(&serve_args(&["--metrics-addr", "off"])).unwrap();
        assert_eq!(off.metrics.addr, None);
        for (argv, needle) in [
            (
                vec!["--metrics-addr", "0.0.0.0:8080"],
                "uses the public port 8080",
            ),
            (vec!["--metrics-addr", "nine"], "is not an address"),
        ] {
            let error = Config::from_args(&serve_args(&argv))
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("METRICS_ADDR: "), "{error}");
            assert!(error.contains(needle), "{error}");
        }
        // Port 0 picks a free port for both, as tests do.
        let both_zero = Config::from_args(&serve_args(&[
            "--port",
            "0",
            "--metrics-addr",
            "127.0.0.1:0",
        ]));
        assert!(both_zero.is_ok());
    }

    #[test]
    fn ledger_defaults_and_a_secret_database_url() {
        let config = Config::from_args(&serve_args(&["--job-timeout-secs", "20"])).unwrap();
        assert!(config.runs.database_url.is_none(), "memory by default");
        assert_eq!(
            config.runs.lease,
            Duration::from_secs(50),
            "job timeout + 30 s"
        );
        assert_eq!(config.runs.max_records, 10_000);
        assert_eq!(config.runs.retention, Duration::from_secs(168 * 3600));
        assert_eq!(config.runs.view_permission, "org:jobs:read");
        assert_eq!(config.runs.payload_cap, 65_536);

        let url = "postgres://app:hunter2@10.0.0.5:5432/runs?sslmode=require";
        let config = Config::from_args(&serve_args(&["--database-url", url])).unwrap();
        assert_eq!(config.runs.database_url.as_ref().unwrap().expose(), url);
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("<set>"));
    }

    #[test]
    fn bad_ledger_settings_name_the_variable() {
        for (args, expect) in [
            (vec!["--database-url", "mysql://a:b@h/d"], "DATABASE_URL"),
            (vec!["--run-lease-secs", "60"], "RUN_LEASE_SECS"),
            (vec!["--runs-max-records", "0"], "RUNS_MAX_RECORDS"),
            (vec!["--runs-retention-hours", "0"], "RUNS_RETENTION_HOURS"),
            (
                vec!["--runs-prune-interval-secs", "0"],
                "RUNS_PRUNE_INTERVAL_SECS",
            ),
            (vec!["--runs-view-permission", ""], "RUNS_VIEW_PERMISSION"),
            (
                vec!["--run-output-cap-bytes", "99999999"],
                "RUN_OUTPUT_CAP_BYTES",
            ),
        ] {
            let err = Config::from_args(&serve_args(&args))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{args:?}: {err}");
            assert!(!err.contains("a:b@"), "{args:?}: {err}");
        }
    }

    #[test]
    fn event_routes_default_to_storage_and_bad_ones_name_the_variable() {
        let config = Config::from_args(&serve_args(&[])).unwrap();
        assert_eq!(
            config.events.route(
                "google.cloud.storage.object.v1.finalized",
                Some("objects/a")
            ),
            Some("storage-object")
        );
        let config = Config::from_args(&serve_args(&[
            "--event-routes",
            "com.example.a=echo,com.example.a:reports/=sleep",
        ]))
        .unwrap();
        assert_eq!(
            config.events.route("com.example.a", Some("reports/1")),
            Some("sleep")
        );
        let err = Config::from_args(&serve_args(&["--event-routes", "com.example.a"]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("EVENT_ROUTES: `com.example.a`"), "{err}");
    }

    #[test]
    fn cors_origins_must_be_exact_origins() {
        let ok = cors_origins(&[
            "https://admin.example.com".into(),
            " http://localhost:3000 ".into(),
        ])
        .unwrap();
        assert_eq!(ok, ["https://admin.example.com", "http://localhost:3000"]);
        for bad in [
            "*",
            "https://admin.example.com/",
            "https://admin.example.com/admin",
            "HTTPS://Admin.example.com",
            "admin.example.com",
            "ftp://admin.example.com",
            "https://admin.example.com:443",
        ] {
            let err = cors_origins(&[bad.into()]).unwrap_err().to_string();
            assert!(err.contains("CORS_ALLOWED_ORIGINS"), "{bad}: {err}");
        }
    }
}
