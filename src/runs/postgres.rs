//! The shared run store: PostgreSQL (Cloud SQL, AlloyDB or any PostgreSQL),
//! used when `DATABASE_URL` is set, so that every instance sees every key.
//!
//! The claim is one `INSERT … ON CONFLICT DO UPDATE … WHERE` on
//! `run_claims`: it inserts the key, or takes it over when its run failed or
//! its lease has expired, and otherwise changes nothing and returns no row.
//! PostgreSQL makes that decision under the row's lock, so two instances
//! claiming the same message at the same moment cannot both win: there is no
//! read-then-write window. The run's record is written in the same
//! transaction, so a key is never held by a run that has no record. When the
//! claim returns no row, the conflicting row stays locked by the statement
//! until the transaction ends, so the follow-up read sees the state that
//! refused it.
//!
//! Schema migrations (`migrations/`) are embedded and applied at start-up
//! under sqlx's advisory lock. Every operation has a deadline: a store that
//! does not answer is [`StoreError::Unavailable`] (a 503, a nack), and the pool
//! opens fresh connections when the database comes back, without a restart.

use std::{str::FromStr as _, time::Duration};

use anyhow::{Context as _, anyhow};
use futures::FutureExt as _;
use sqlx::{
    Postgres, QueryBuilder, Row as _,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow},
};
use uuid::Uuid;

use super::RunSource;
use super::{
    ABANDONED, Claim, Finish, JsonText, LEASE_EXPIRED, NewRun, PayloadDigest, RunPage,
    RunPrincipal, RunQuery, RunRecord, RunStatus, RunStore, StoreError, StoreFuture, StoreSettings,
    conflict_error,
};

/// The embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Longest a request waits for a pooled connection before answering 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest one store operation may take, connection included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections per instance (Cloud Run's default concurrency is 80; each
/// request holds a connection only for a claim or a finish).
const MAX_CONNECTIONS: u32 = 10;

const RUN_COLUMNS: &str = "run_id, job, source, principal_kind, principal_id, message_id, \
    subscription, idempotency_key, dedup_key, duplicate_of, attempt, payload_digest, \
    payload::text AS payload, payload_truncated, status, started_at, finished_at, duration_ms, \
    error, error_kind, output::text AS output, output_truncated";

const INSERT_RUN: &str = "INSERT INTO runs (run_id, job, source, principal_kind, principal_id, \
    message_id, subscription, idempotency_key, dedup_key, duplicate_of, attempt, payload_digest, \
    payload, payload_truncated, status, started_at, finished_at, duration_ms, error, error_kind, \
    output, output_truncated) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
    $13::json, $14, $15, $16, $17, $18, $19, $20, $21::json, $22)";

/// The claim: insert the key, or take it over from a failed run or an
/// expired lease. No row back means the key is done or running elsewhere.
const CLAIM: &str = "INSERT INTO run_claims AS c \
        (dedup_key, run_id, state, lease_until, previous_run_id, updated_at, content_digest) \
    VALUES ($1, $2, 'running', now() + make_interval(secs => $3), NULL, now(), $4) \
    ON CONFLICT (dedup_key) DO UPDATE \
        SET run_id = EXCLUDED.run_id, state = 'running', lease_until = EXCLUDED.lease_until, \
            previous_run_id = c.run_id, updated_at = now(), \
            content_digest = EXCLUDED.content_digest \
        WHERE c.state = 'failed' OR (c.state = 'running' AND c.lease_until <= now()) \
    RETURNING previous_run_id";

/// The run a claim took over from, if its lease expired while it ran.
const MARK_LEASE_EXPIRED: &str = "UPDATE runs SET status = 'failed_transient', error = $2, \
    error_kind = 'lease_expired', finished_at = now() WHERE run_id = $1 AND status = 'running'";

const HOLDER: &str = "SELECT run_id, state, content_digest FROM run_claims WHERE dedup_key = $1";

const FINISH_RUN: &str = "UPDATE runs SET status = $2, \
        finished_at = COALESCE($3, finished_at), duration_ms = COALESCE($4, duration_ms), \
        error = COALESCE($5, error), error_kind = COALESCE($6, error_kind), \
        output = COALESCE($7::json, output), output_truncated = output_truncated OR $8 \
    WHERE run_id = $1 RETURNING dedup_key";

const RELEASE_CLAIM: &str = "UPDATE run_claims SET state = $3, updated_at = now() \
    WHERE dedup_key = $1 AND run_id = $2";

const MARK_ABANDONED: &str = "UPDATE runs SET status = 'failed_transient', error = $1, \
    error_kind = 'abandoned', finished_at = now() \
    WHERE status = 'running' AND started_at < now() - make_interval(secs => $2)";

const PRUNE_CLAIMS: &str = "DELETE FROM run_claims \
    WHERE updated_at < now() - make_interval(secs => $1) \
      AND (state <> 'running' OR lease_until < now())";

const PRUNE_BATCH: i64 = 5_000;
const PRUNE_RUNS: &str = "DELETE FROM runs WHERE run_id IN (SELECT run_id FROM runs \
    WHERE started_at < now() - make_interval(secs => $1) LIMIT $2)";

/// Runs and keys in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    settings: StoreSettings,
}

fn unavailable(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| StoreError::Unavailable(anyhow!(e).context(what))
}

/// PostgreSQL text cannot hold NUL; a job's error text might.
fn clean(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

fn clean_opt(text: Option<&str>) -> Option<String> {
    text.map(clean)
}

fn json_text(value: Option<&JsonText>) -> Option<&str> {
    value.map(JsonText::as_str)
}

fn millis(d: Option<u64>) -> Option<i64> {
    d.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX))
}

fn from_row(row: &PgRow) -> Result<RunRecord, StoreError> {
    let bad = |e: sqlx::Error| StoreError::Unavailable(anyhow!(e).context("reading a run row"));
    let source: String = row.try_get("source").map_err(bad)?;
    let status: String = row.try_get("status").map_err(bad)?;
    let payload: Option<String> = row.try_get("payload").map_err(bad)?;
    let output: Option<String> = row.try_get("output").map_err(bad)?;
    let attempt: i32 = row.try_get("attempt").map_err(bad)?;
    let duration_ms: Option<i64> = row.try_get("duration_ms").map_err(bad)?;
    let parse_json = |text: Option<String>| -> Result<Option<JsonText>, StoreError> {
        text.map(JsonText::from_text)
            .transpose()
            .map_err(|e| StoreError::Unavailable(anyhow!(e).context("a run's JSON column")))
    };
    Ok(RunRecord {
        run_id: row.try_get("run_id").map_err(bad)?,
        job: row.try_get("job").map_err(bad)?,
        source: RunSource::parse(&source)
            .ok_or_else(|| StoreError::Unavailable(anyhow!("unknown run source `{source}`")))?,
        principal: RunPrincipal {
            kind: row.try_get("principal_kind").map_err(bad)?,
            id: row.try_get("principal_id").map_err(bad)?,
        },
        message_id: row.try_get("message_id").map_err(bad)?,
        subscription: row.try_get("subscription").map_err(bad)?,
        idempotency_key: row.try_get("idempotency_key").map_err(bad)?,
        attempt: u32::try_from(attempt).unwrap_or(0),
        payload_digest: {
            let text: String = row.try_get("payload_digest").map_err(bad)?;
            PayloadDigest::parse(&text).ok_or_else(|| {
                StoreError::Unavailable(anyhow!(
                    "a run's payload_digest `{text}` is not sha256:<hex>"
                ))
            })?
        },
        payload: parse_json(payload)?,
        payload_truncated: row.try_get("payload_truncated").map_err(bad)?,
        status: RunStatus::parse(&status)
            .ok_or_else(|| StoreError::Unavailable(anyhow!("unknown run status `{status}`")))?,
        started_at: row.try_get("started_at").map_err(bad)?,
        finished_at: row.try_get("finished_at").map_err(bad)?,
        duration_ms: duration_ms.map(|d| u64::try_from(d).unwrap_or(0)),
        error: row.try_get("error").map_err(bad)?,
        error_kind: row.try_get("error_kind").map_err(bad)?,
        output: parse_json(output)?,
        output_truncated: row.try_get("output_truncated").map_err(bad)?,
        duplicate_of: row.try_get("duplicate_of").map_err(bad)?,
        dedup_key: row.try_get("dedup_key").map_err(bad)?,
    })
}

async fn insert_run(conn: &mut sqlx::PgConnection, r: &RunRecord) -> Result<(), StoreError> {
    sqlx::query(INSERT_RUN)
        .bind(r.run_id)
        .bind(clean(&r.job))
        .bind(r.source.as_str())
        .bind(clean(&r.principal.kind))
        .bind(clean(&r.principal.id))
        .bind(clean_opt(r.message_id.as_deref()))
        .bind(clean_opt(r.subscription.as_deref()))
        .bind(clean_opt(r.idempotency_key.as_deref()))
        .bind(clean_opt(r.dedup_key.as_deref()))
        .bind(r.duplicate_of)
        .bind(i32::try_from(r.attempt).unwrap_or(i32::MAX))
        .bind(r.payload_digest.to_string())
        .bind(json_text(r.payload.as_ref()))
        .bind(r.payload_truncated)
        .bind(r.status.as_str())
        .bind(r.started_at)
        .bind(r.finished_at)
        .bind(millis(r.duration_ms))
        .bind(clean_opt(r.error.as_deref()))
        .bind(clean_opt(r.error_kind.as_deref()))
        .bind(json_text(r.output.as_ref()))
        .bind(r.output_truncated)
        .execute(conn)
        .await
        .map_err(unavailable("recording a run"))?;
    Ok(())
}

async fn fetch_run(
    conn: &mut sqlx::PgConnection,
    run_id: Uuid,
) -> Result<Option<RunRecord>, StoreError> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(run_id)
        .fetch_optional(conn)
        .await
        .map_err(unavailable("reading a run"))?;
    row.as_ref().map(from_row).transpose()
}

/// Bounds `operation` by [`OPERATION_TIMEOUT`].
async fn deadline<T>(
    operation: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(OPERATION_TIMEOUT, operation)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(anyhow!(
                "no answer from PostgreSQL within {OPERATION_TIMEOUT:?}"
            )))
        })
}

impl PgStore {
    /// Connects to `url`, applies the migrations and returns the store.
    /// Fails (naming `DATABASE_URL`, never printing it) when PostgreSQL cannot
    /// be reached or migrated.
    pub async fn connect(url: &str, settings: StoreSettings) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| anyhow!("DATABASE_URL: not a valid PostgreSQL connection URL"))?
            .application_name("pushworker");
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Duration::from_secs(300))
            .max_lifetime(Duration::from_secs(1800))
            .connect_with(options)
            .await
            .context("DATABASE_URL: cannot connect to PostgreSQL")?;
        MIGRATOR
            .run(&pool)
            .await
            .context("DATABASE_URL: cannot apply the run ledger's migrations")?;
        Ok(Self { pool, settings })
    }

    /// The connection pool (tests and operators' tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_tx(&self, new: NewRun) -> Result<Claim, StoreError> {
        let mut record = new.record;
        record.dedup_key = new.dedup.as_ref().map(|k| k.as_str().to_owned());
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(unavailable("starting a transaction"))?;
        let Some(key) = new.dedup else {
            record.status = RunStatus::Running;
            insert_run(&mut tx, &record).await?;
            tx.commit().await.map_err(unavailable("committing a run"))?;
            return Ok(Claim::Started);
        };
        let content = key.content();
        let claimed = sqlx::query(CLAIM)
            .bind(key.as_str())
            .bind(record.run_id)
            .bind(self.settings.lease.as_secs_f64())
            .bind(content.map(|c| c.to_string()))
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable("claiming a key"))?;
        let claim = match claimed {
            Some(row) => {
                let previous: Option<Uuid> = row
                    .try_get("previous_run_id")
                    .map_err(unavailable("reading a claim"))?;
                if let Some(previous) = previous {
                    sqlx::query(MARK_LEASE_EXPIRED)
                        .bind(previous)
                        .bind(LEASE_EXPIRED)
                        .execute(&mut *tx)
                        .await
                        .map_err(unavailable("ending an expired run"))?;
                }
                record.status = RunStatus::Running;
                Claim::Started
            }
            None => {
                let holder = sqlx::query(HOLDER)
                    .bind(key.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(unavailable("reading a claim"))?;
                let holder_id: Uuid = holder
                    .try_get("run_id")
                    .map_err(unavailable("reading a claim"))?;
                let state: String = holder
                    .try_get("state")
                    .map_err(unavailable("reading a claim"))?;
                // NULL for manual keys and for claims older than the column.
                let claimed: Option<String> = holder
                    .try_get("content_digest")
                    .map_err(unavailable("reading a claim"))?;
                let claimed = claimed.as_deref().and_then(PayloadDigest::parse);
                record.duplicate_of = Some(holder_id);
                record.finished_at = Some(record.started_at);
                record.duration_ms = Some(0);
                if let (Some(claimed), Some(content)) = (claimed, content)
                    && claimed != content
                {
                    record.status = RunStatus::Conflict;
                    record.error_kind = Some("message_conflict".to_owned());
                    record.error = Some(conflict_error(holder_id, claimed, content));
                    insert_run(&mut tx, &record).await?;
                    tx.commit().await.map_err(unavailable("committing a run"))?;
                    return Ok(Claim::Conflict {
                        original_run_id: holder_id,
                        claimed,
                    });
                }
                let original = fetch_run(&mut tx, holder_id).await?.map(Box::new);
                record.status = RunStatus::Duplicate;
                if state == "done" {
                    Claim::Done {
                        original_run_id: holder_id,
                        original,
                    }
                } else {
                    record.error_kind = Some("run_in_progress".to_owned());
                    record.error = Some(format!(
                        "run {holder_id} was in progress; answered 409 so the delivery comes back"
                    ));
                    Claim::InProgress {
                        original_run_id: holder_id,
                        original,
                    }
                }
            }
        };
        insert_run(&mut tx, &record).await?;
        tx.commit().await.map_err(unavailable("committing a run"))?;
        Ok(claim)
    }

    async fn finish_tx(&self, run_id: Uuid, finish: Finish) -> Result<bool, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(unavailable("starting a transaction"))?;
        let row = sqlx::query(FINISH_RUN)
            .bind(run_id)
            .bind(finish.status.as_str())
            .bind(finish.finished_at)
            .bind(millis(finish.duration_ms))
            .bind(clean_opt(finish.error.as_deref()))
            .bind(clean_opt(finish.error_kind.as_deref()))
            .bind(json_text(finish.output.as_ref()))
            .bind(finish.output_truncated)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable("finishing a run"))?;
        let Some(row) = row else {
            return Ok(false);
        };
        let key: Option<String> = row
            .try_get("dedup_key")
            .map_err(unavailable("finishing a run"))?;
        if let (Some(key), Some(state)) = (key, finish.status.claim_state()) {
            sqlx::query(RELEASE_CLAIM)
                .bind(key)
                .bind(run_id)
                .bind(state.as_str())
                .execute(&mut *tx)
                .await
                .map_err(unavailable("releasing a key"))?;
        }
        tx.commit()
            .await
            .map_err(unavailable("committing a finish"))?;
        Ok(true)
    }

    async fn list_runs(&self, query: RunQuery) -> Result<RunPage, StoreError> {
        let mut sql =
            QueryBuilder::<Postgres>::new(format!("SELECT {RUN_COLUMNS} FROM runs WHERE TRUE"));
        if let Some(job) = query.job {
            sql.push(" AND job = ").push_bind(job);
        }
        if let Some(status) = query.status {
            sql.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(source) = query.source {
            sql.push(" AND source = ").push_bind(source.as_str());
        }
        if let Some(before) = query.before {
            sql.push(" AND run_id < ").push_bind(before);
        }
        let limit = i64::try_from(query.limit).unwrap_or(200);
        sql.push(" ORDER BY run_id DESC LIMIT ")
            .push_bind(limit + 1);
        let rows = sql
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable("listing runs"))?;
        let mut runs = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
        let next = if runs.len() > query.limit {
            runs.truncate(query.limit);
            runs.last().map(|r| r.run_id)
        } else {
            None
        };
        Ok(RunPage { runs, next })
    }

    async fn prune_now(&self) -> Result<u64, StoreError> {
        sqlx::query(MARK_ABANDONED)
            .bind(ABANDONED)
            .bind(self.settings.lease.as_secs_f64())
            .execute(&self.pool)
            .await
            .map_err(unavailable("marking abandoned runs"))?;
        let retention = self.settings.retention.as_secs_f64();
        sqlx::query(PRUNE_CLAIMS)
            .bind(retention)
            .execute(&self.pool)
            .await
            .map_err(unavailable("pruning keys"))?;
        let mut deleted = 0;
        loop {
            let batch = sqlx::query(PRUNE_RUNS)
                .bind(retention)
                .bind(PRUNE_BATCH)
                .execute(&self.pool)
                .await
                .map_err(unavailable("pruning runs"))?
                .rows_affected();
            deleted += batch;
            if batch < PRUNE_BATCH as u64 {
                return Ok(deleted);
            }
        }
    }
}

impl RunStore for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn begin(&self, new: NewRun) -> StoreFuture<'_, Claim> {
        deadline(self.begin_tx(new)).boxed()
    }

    fn finish(&self, run_id: Uuid, finish: Finish) -> StoreFuture<'_, bool> {
        deadline(self.finish_tx(run_id, finish)).boxed()
    }

    fn get(&self, run_id: Uuid) -> StoreFuture<'_, Option<RunRecord>> {
        deadline(async move {
            let mut conn = self
                .pool
                .acquire()
                .await
                .map_err(unavailable("getting a connection"))?;
            fetch_run(&mut conn, run_id).await
        })
        .boxed()
    }

    fn list(&self, query: RunQuery) -> StoreFuture<'_, RunPage> {
        deadline(self.list_runs(query)).boxed()
    }

    fn prune(&self) -> StoreFuture<'_, u64> {
        // Pruning may delete many rows: no per-operation deadline.
        self.prune_now().boxed()
    }
}
