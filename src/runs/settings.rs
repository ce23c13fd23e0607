//! The run ledger's settings: the flags and environment variables, and
//! what [`crate::config`] validates them into.

use std::time::Duration;

/// The run ledger (`DATABASE_*`, `RUN_*`, `RUNS_*`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Run ledger")]
pub struct RunsArgs {
    /// PostgreSQL URL of the run ledger (`postgres://USER:PASSWORD@HOST/DB`;
    /// Cloud SQL, AlloyDB or any PostgreSQL), shared by every instance. Unset:
    /// runs are kept in memory, per instance. Secret: never printed.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,

    /// Connections each instance opens to PostgreSQL. Keep instances × pool
    /// within the server's `max_connections` minus its reserve (Cloud SQL:
    /// by tier; Cloud Run: `--max-instances`).
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 10)]
    pub database_pool_size: u32,

    /// Longest one ledger statement may run on PostgreSQL, in seconds
    /// (`statement_timeout`, per connection); past it the request is a 503.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT_SECS", default_value_t = 5)]
    pub database_statement_timeout_secs: u64,

    /// Most claims (or finishes) written together in one statement and one
    /// commit.
    #[arg(long, env = "DATABASE_BATCH_MAX_ROWS", default_value_t = 32)]
    pub database_batch_max_rows: usize,

    /// Longest a claim (or finish) waits for others to share its statement,
    /// in milliseconds, while another batch is being written; an idle
    /// instance writes at once. With 0, requests still share a statement
    /// with those that arrived while they waited for a free connection.
    #[arg(long, env = "DATABASE_BATCH_MAX_WAIT_MS", default_value_t = 0)]
    pub database_batch_max_wait_ms: u64,

    /// How long a run holds its message (or `Idempotency-Key`) without
    /// finishing before a redelivery may take over, in seconds: how long a
    /// crashed instance blocks a message. Must exceed `JOB_TIMEOUT_SECS`
    /// (default: the job timeout + 30).
    #[arg(long, env = "RUN_LEASE_SECS")]
    pub run_lease_secs: Option<u64>,

    /// Most run records the in-memory ledger keeps (the oldest go first).
    #[arg(long, env = "RUNS_MAX_RECORDS", default_value_t = 10_000)]
    pub runs_max_records: usize,

    /// How long run records are kept, in hours (both ledgers).
    #[arg(long, env = "RUNS_RETENTION_HOURS", default_value_t = 168)]
    pub runs_retention_hours: u64,

    /// How often each instance deletes the records past the retention, in
    /// seconds (in batches, each its own short transaction).
    #[arg(long, env = "RUNS_PRUNE_INTERVAL_SECS", default_value_t = 600)]
    pub runs_prune_interval_secs: u64,

    /// Clerk permission that allows reading the run ledger (`GET /runs`);
    /// users who may trigger jobs may read it too.
    #[arg(long, env = "RUNS_VIEW_PERMISSION", default_value = "org:jobs:read")]
    pub runs_view_permission: String,

    /// Largest payload kept in a run record, in bytes; larger ones are
    /// recorded by digest only.
    #[arg(long, env = "RUN_PAYLOAD_CAP_BYTES", default_value_t = 65_536)]
    pub run_payload_cap_bytes: usize,

    /// Largest job output kept in a run record, in bytes.
    #[arg(long, env = "RUN_OUTPUT_CAP_BYTES", default_value_t = 65_536)]
    pub run_output_cap_bytes: usize,
}

/// A secret setting (`DATABASE_URL`): `Debug` shows `<set>`, never the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<set>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// The run ledger's settings.
#[derive(Debug, Clone)]
pub struct RunsConfig {
    /// PostgreSQL URL; `None` keeps runs in memory.
    pub database_url: Option<Secret>,
    /// How long a run holds its key without finishing.
    pub lease: Duration,
    /// The in-memory ledger's bound on records.
    pub max_records: usize,
    /// How long records are kept.
    pub retention: Duration,
    /// How often records past the retention are deleted.
    pub prune_every: Duration,
    /// The PostgreSQL ledger's pool and batching.
    pub postgres: crate::runs::postgres::PgSettings,
    /// The Clerk permission that allows reading runs.
    pub view_permission: String,
    /// Largest payload kept in a record.
    pub payload_cap: usize,
    /// Largest output kept in a record.
    pub output_cap: usize,
}

impl RunsConfig {
    /// The defaults, for a job timeout of `job_timeout`: in memory, a lease
    /// half a minute past the timeout, and the defaults the flags document.
    pub fn defaults(job_timeout: Duration) -> Self {
        Self {
            database_url: None,
            lease: job_timeout + Duration::from_secs(30),
            max_records: 10_000,
            retention: Duration::from_secs(168 * 3600),
            prune_every: Duration::from_secs(600),
            postgres: crate::runs::postgres::PgSettings::default(),
            view_permission: "org:jobs:read".to_owned(),
            payload_cap: 64 * 1024,
            output_cap: 64 * 1024,
        }
    }

    /// What the stores need.
    pub fn store_settings(&self) -> crate::runs::StoreSettings {
        crate::runs::StoreSettings {
            lease: self.lease,
            retention: self.retention,
            max_records: self.max_records,
            postgres: self.postgres,
        }
    }
}
