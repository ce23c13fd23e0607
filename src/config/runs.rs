//! The run ledger's settings, validated.

use std::time::Duration;

use anyhow::bail;

use super::ServeArgs;
use crate::runs::settings::{RunsConfig, Secret};

/// Validates the run ledger's settings.
pub(super) fn runs_config(args: &ServeArgs) -> anyhow::Result<RunsConfig> {
    let database_url = args
        .runs.database_url
        .as_ref()
        .filter(|u| !u.expose().trim().is_empty())
        .map(|u| {
            let url = u.expose().trim();
            // Parsed as the driver will; the value is never echoed.
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                bail!("DATABASE_URL: must be a postgres:// or postgresql:// URL");
            }
            <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url).map_err(|_| {
                anyhow::anyhow!("DATABASE_URL: not a valid PostgreSQL connection URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE)")
            })?;
            Ok(Secret::new(url))
        })
        .transpose()?;
    let lease_secs = args
        .runs
        .run_lease_secs
        .unwrap_or(args.job_timeout_secs.saturating_add(30));
    if lease_secs <= args.job_timeout_secs || lease_secs > 86_400 {
        bail!(
            "RUN_LEASE_SECS: {lease_secs} is out of range; use more than JOB_TIMEOUT_SECS ({}) and at most 86400, so that a live run never loses its message",
            args.job_timeout_secs
        );
    }
    if args.runs.runs_max_records == 0 || args.runs.runs_max_records > 10_000_000 {
        bail!(
            "RUNS_MAX_RECORDS: {} is out of range; use 1 to 10000000",
            args.runs.runs_max_records
        );
    }
    if args.runs.runs_retention_hours == 0 || args.runs.runs_retention_hours > 24 * 366 {
        bail!(
            "RUNS_RETENTION_HOURS: {} is out of range; use 1 to 8784",
            args.runs.runs_retention_hours
        );
    }
    if args.runs.runs_prune_interval_secs == 0 || args.runs.runs_prune_interval_secs > 86_400 {
        bail!(
            "RUNS_PRUNE_INTERVAL_SECS: {} is out of range; use 1 to 86400",
            args.runs.runs_prune_interval_secs
        );
    }
    if args.runs.runs_view_permission.trim().is_empty() {
        bail!("RUNS_VIEW_PERMISSION: must not be empty (e.g. org:jobs:read)");
    }
    for (var, value) in [
        ("RUN_PAYLOAD_CAP_BYTES", args.runs.run_payload_cap_bytes),
        ("RUN_OUTPUT_CAP_BYTES", args.runs.run_output_cap_bytes),
    ] {
        if value > crate::pubsub::MAX_MESSAGE_BYTES {
            bail!(
                "{var}: {value} is too large; use at most {}",
                crate::pubsub::MAX_MESSAGE_BYTES
            );
        }
    }
    if args.runs.database_pool_size < 2 || args.runs.database_pool_size > 1000 {
        bail!(
            "DATABASE_POOL_SIZE: {} is out of range; use 2 to 1000 (and keep instances × pool within PostgreSQL's max_connections)",
            args.runs.database_pool_size
        );
    }
    if args.runs.database_statement_timeout_secs == 0
        || args.runs.database_statement_timeout_secs > 600
    {
        bail!(
            "DATABASE_STATEMENT_TIMEOUT_SECS: {} is out of range; use 1 to 600",
            args.runs.database_statement_timeout_secs
        );
    }
    if args.runs.database_batch_max_rows == 0 || args.runs.database_batch_max_rows > 1000 {
        bail!(
            "DATABASE_BATCH_MAX_ROWS: {} is out of range; use 1 (no batching) to 1000",
            args.runs.database_batch_max_rows
        );
    }
    if args.runs.database_batch_max_wait_ms > 1000 {
        bail!(
            "DATABASE_BATCH_MAX_WAIT_MS: {} is out of range; use 0 to 1000",
            args.runs.database_batch_max_wait_ms
        );
    }
    Ok(RunsConfig {
        database_url,
        postgres: crate::runs::postgres::PgSettings {
            pool_size: args.runs.database_pool_size,
            statement_timeout: Duration::from_secs(args.runs.database_statement_timeout_secs),
            batch_max_rows: args.runs.database_batch_max_rows,
            batch_max_wait: Duration::from_millis(args.runs.database_batch_max_wait_ms),
        },
        lease: Duration::from_secs(lease_secs),
        max_records: args.runs.runs_max_records,
        retention: Duration::from_secs(args.runs.runs_retention_hours * 3600),
        prune_every: Duration::from_secs(args.runs.runs_prune_interval_secs),
        view_permission: args.runs.runs_view_permission.trim().to_owned(),
        payload_cap: args.runs.run_payload_cap_bytes,
        output_cap: args.runs.run_output_cap_bytes,
    })
}
