//! The shared run store: PostgreSQL (Cloud SQL, AlloyDB or any PostgreSQL),
//! used when `DATABASE_URL` is set, so that every instance sees every key.
//!
//! Each phase of a run is one statement. The claim ([`statements::CLAIM_BATCH`])
//! dedupes, takes over a failed or expired key, and records the run, in one
//! `INSERT … ON CONFLICT DO UPDATE` with the run rows after it: PostgreSQL
//! decides under the key's row lock, so two instances claiming the same
//! message at the same moment cannot both win, and a key is never held by a
//! run that has no record. The finish ([`statements::FINISH_BATCH`]) records
//! the end and releases the key together.
//!
//! Concurrent requests on one instance share those statements ([`batcher`]):
//! claims (and finishes) arriving together are written as one multi-row
//! statement in one commit, and each request gets its own outcome; two
//! claims of one key in a batch resolve as if one came after the other. An
//! idle instance writes a lone request at once. A batch that fails fails
//! each of its requests ([`StoreError::Unavailable`]: a 503, a nack); one
//! refused for its data is retried request by request, so one bad row does
//! not fail the others. Commits stay synchronous: an answer is sent only
//! after its batch is durable.
//!
//! Schema migrations (`migrations/`) are embedded and applied at start-up
//! under sqlx's advisory lock. Every operation has a deadline, and every
//! statement `DATABASE_STATEMENT_TIMEOUT_SECS`: a store that does not answer
//! is [`StoreError::Unavailable`], and the pool opens fresh connections when
//! the database comes back, without a restart.

mod batcher;
pub mod statements;

use std::{str::FromStr as _, sync::Arc, time::Duration};

use anyhow::{Context as _, anyhow};
use futures::FutureExt as _;
use sqlx::{
    Connection as _, Executor as _, Postgres, QueryBuilder, Row as _,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow},
};
use time::OffsetDateTime;
use uuid::Uuid;

pub use batcher::BatchLimits;
use batcher::{Answers, Batcher, OrphanFn, WriteFn};
use statements::{
    CANCEL_REQUESTS, CLAIM_BATCH, FINISH_BATCH, MARK_ABANDONED, PRUNE_CLAIMS, PRUNE_RUNS,
    REQUEST_CANCEL, RUN_COLUMNS, RUN_STATS,
};

use super::RunSource;
use super::{
    ABANDONED, CancelRequest, Claim, Finish, JsonText, LEASE_EXPIRED, NewRun, PayloadDigest,
    RunPage, RunPrincipal, RunQuery, RunRecord, RunStatus, RunStore, StatsBucket, StatsQuery,
    StoreError, StoreFuture, StoreSettings,
};

/// The embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Longest a request waits for a pooled connection before answering 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest one store operation may take, queueing and connection included
/// (at least; a longer statement timeout lengthens it).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// The error text of a run claimed for a request that went away before its
/// claim was answered: the job never ran.
const CALLER_LEFT: &str =
    "the request went away before its run could begin; not run, and the message is free again";
/// Rows deleted per pruning statement: each is a short transaction of its own.
const PRUNE_BATCH: i64 = 5_000;

/// The PostgreSQL ledger's own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgSettings {
    /// Connections per instance (`DATABASE_POOL_SIZE`).
    pub pool_size: u32,
    /// Longest one statement may run (`DATABASE_STATEMENT_TIMEOUT_SECS`).
    pub statement_timeout: Duration,
    /// Most requests in one batch (`DATABASE_BATCH_MAX_ROWS`).
    pub batch_max_rows: usize,
    /// Longest a request waits for others to join its batch, under load
    /// (`DATABASE_BATCH_MAX_WAIT_MS`).
    pub batch_max_wait: Duration,
}

impl Default for PgSettings {
    fn default() -> Self {
        Self {
            pool_size: 10,
            statement_timeout: Duration::from_secs(5),
            batch_max_rows: 32,
            batch_max_wait: Duration::ZERO,
        }
    }
}

impl PgSettings {
    /// Connections for reads, pruning and cancels: a fifth of the pool, at
    /// least one. The rest are the batch pool's.
    fn other_connections(&self) -> u32 {
        (self.pool_size / 5).max(1)
    }

    /// Connections of the batch pool, for claims and finishes.
    fn batch_connections(&self) -> u32 {
        self.pool_size
            .saturating_sub(self.other_connections())
            .max(1)
    }

    /// Batches each batcher writes at once: half the batch pool each for
    /// claims and finishes.
    fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_rows: self.batch_max_rows,
            max_wait: self.batch_max_wait,
            in_flight: usize::try_from(self.batch_connections() / 2)
                .unwrap_or(1)
                .max(1),
        }
    }
}

/// A claim to write: the record (status `running`) and what its key claims.
struct ClaimItem {
    record: RunRecord,
    content: Option<PayloadDigest>,
}

/// A finish to write.
struct FinishItem {
    run_id: Uuid,
    finish: Finish,
}

/// Runs and keys in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    /// Reads, pruning and cancels, each statement planned for its values.
    pool: PgPool,
    /// The batched claims and finishes, on plans made once per connection.
    batch_pool: PgPool,
    settings: StoreSettings,
    claims: Batcher<ClaimItem, (Uuid, Claim)>,
    finishes: Batcher<FinishItem, bool>,
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
        event_source: row.try_get("event_source").map_err(bad)?,
        event_type: row.try_get("event_type").map_err(bad)?,
        event_subject: row.try_get("event_subject").map_err(bad)?,
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
        rerun_of: row.try_get("rerun_of").map_err(bad)?,
        cancel_requested_at: row.try_get("cancel_requested_at").map_err(bad)?,
        cancelled_by: {
            let kind: Option<String> = row.try_get("cancelled_by_kind").map_err(bad)?;
            let id: Option<String> = row.try_get("cancelled_by_id").map_err(bad)?;
            kind.zip(id).map(|(kind, id)| RunPrincipal { kind, id })
        },
        dedup_key: row.try_get("dedup_key").map_err(bad)?,
    })
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

/// Bounds `operation` by `limit`.
async fn deadline<T>(
    limit: Duration,
    operation: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, operation)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(anyhow!(
                "no answer from PostgreSQL within {limit:?}"
            )))
        })
}

/// Whether PostgreSQL refused a statement for its rows (bad data, a
/// constraint, a deadlock) rather than for being unreachable or slow: then
/// the batch is retried request by request.
fn refused_for_its_rows(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| ["22", "23", "40"].iter().any(|c| code.starts_with(c))),
        _ => false,
    }
}

/// The same failure for each of `n` requests.
fn fail_all<T>(n: usize, what: &str, e: &sqlx::Error) -> Answers<T> {
    (0..n)
        .map(|_| {
            Err(StoreError::Unavailable(anyhow!(
                "{what} (a batch of {n}): {e}"
            )))
        })
        .collect()
}

/// A claim's outcome as the statement answers it: `running`, `conflict`,
/// `done` or `in_progress`; the holder; the holder's claimed digest.
type Outcome = (String, Option<Uuid>, Option<String>);

/// Writes a batch of claims: one statement, one commit. Then, for the
/// requests whose key was done or running, the holders' records (a read).
async fn write_claims(
    pool: &PgPool,
    lease: Duration,
    items: &[ClaimItem],
) -> Result<Vec<(Uuid, Claim)>, sqlx::Error> {
    let n = items.len();
    let mut run_id = Vec::with_capacity(n);
    let mut job = Vec::with_capacity(n);
    let mut source = Vec::with_capacity(n);
    let mut principal_kind = Vec::with_capacity(n);
    let mut principal_id = Vec::with_capacity(n);
    let mut message_id = Vec::with_capacity(n);
    let mut subscription = Vec::with_capacity(n);
    let mut idempotency_key = Vec::with_capacity(n);
    let mut dedup_key = Vec::with_capacity(n);
    let mut attempt = Vec::with_capacity(n);
    let mut payload_digest = Vec::with_capacity(n);
    let mut payload = Vec::with_capacity(n);
    let mut payload_truncated = Vec::with_capacity(n);
    let mut started_at = Vec::with_capacity(n);
    let mut content = Vec::with_capacity(n);
    let mut event_source = Vec::with_capacity(n);
    let mut event_type = Vec::with_capacity(n);
    let mut event_subject = Vec::with_capacity(n);
    let mut rerun_of = Vec::with_capacity(n);
    for item in items {
        let r = &item.record;
        run_id.push(r.run_id);
        job.push(clean(&r.job));
        source.push(r.source.as_str());
        principal_kind.push(clean(&r.principal.kind));
        principal_id.push(clean(&r.principal.id));
        message_id.push(clean_opt(r.message_id.as_deref()));
        subscription.push(clean_opt(r.subscription.as_deref()));
        idempotency_key.push(clean_opt(r.idempotency_key.as_deref()));
        dedup_key.push(clean_opt(r.dedup_key.as_deref()));
        attempt.push(i32::try_from(r.attempt).unwrap_or(i32::MAX));
        payload_digest.push(r.payload_digest.to_string());
        payload.push(json_text(r.payload.as_ref()));
        payload_truncated.push(r.payload_truncated);
        started_at.push(r.started_at);
        content.push(item.content.map(|c| c.to_string()));
        event_source.push(clean_opt(r.event_source.as_deref()));
        event_type.push(clean_opt(r.event_type.as_deref()));
        event_subject.push(clean_opt(r.event_subject.as_deref()));
        rerun_of.push(r.rerun_of);
    }
    let mut conn = pool.acquire().await?;
    let rows = sqlx::query(CLAIM_BATCH)
        .bind(&run_id)
        .bind(job)
        .bind(source)
        .bind(principal_kind)
        .bind(principal_id)
        .bind(message_id)
        .bind(subscription)
        .bind(idempotency_key)
        .bind(dedup_key)
        .bind(attempt)
        .bind(payload_digest)
        .bind(payload)
        .bind(payload_truncated)
        .bind(started_at)
        .bind(content)
        .bind(lease.as_secs_f64())
        .bind(LEASE_EXPIRED)
        .bind(event_source)
        .bind(event_type)
        .bind(event_subject)
        .bind(rerun_of)
        .fetch_all(&mut *conn)
        .await?;
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    for row in &rows {
        let ord: i64 = row.try_get("ord")?;
        let at = usize::try_from(ord - 1)
            .ok()
            .filter(|&at| at < n)
            .ok_or_else(|| {
                sqlx::Error::Protocol(format!("the claim answered for request {ord} of {n}"))
            })?;
        outcomes[at] = Some((
            row.try_get("outcome")?,
            row.try_get("holder_id")?,
            row.try_get("holder_content")?,
        ));
    }
    let holders: Vec<Uuid> = outcomes
        .iter()
        .flatten()
        .filter(|(outcome, ..)| outcome == "done" || outcome == "in_progress")
        .filter_map(|(_, holder, _)| *holder)
        .collect();
    // After the commit: at least as fresh as the state that refused them.
    let mut originals = std::collections::HashMap::new();
    if !holders.is_empty() {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ANY($1)");
        for row in sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(holders)
            .fetch_all(&mut *conn)
            .await?
        {
            let record = from_row(&row).map_err(|e| sqlx::Error::Protocol(format!("{e}")))?;
            originals.insert(record.run_id, Box::new(record));
        }
    }
    outcomes
        .into_iter()
        .zip(run_id)
        .enumerate()
        .map(|(at, (outcome, run_id))| {
            let missing =
                || sqlx::Error::Protocol(format!("the claim gave no outcome for request {at}"));
            let (outcome, holder, claimed) = outcome.ok_or_else(missing)?;
            let holder = || holder.ok_or_else(missing);
            let claim = match outcome.as_str() {
                "running" => Claim::Started,
                "conflict" => Claim::Conflict {
                    original_run_id: holder()?,
                    claimed: claimed
                        .as_deref()
                        .and_then(PayloadDigest::parse)
                        .ok_or_else(missing)?,
                },
                "done" => Claim::Done {
                    original_run_id: holder()?,
                    original: originals.get(&holder()?).cloned(),
                },
                _ => Claim::InProgress {
                    original_run_id: holder()?,
                    original: originals.get(&holder()?).cloned(),
                },
            };
            Ok((run_id, claim))
        })
        .collect()
}

/// Writes a batch of finishes: one statement, one commit.
async fn write_finishes(pool: &PgPool, items: &[FinishItem]) -> Result<Vec<bool>, sqlx::Error> {
    let n = items.len();
    let mut run_id = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut finished_at: Vec<Option<OffsetDateTime>> = Vec::with_capacity(n);
    let mut duration_ms = Vec::with_capacity(n);
    let mut error = Vec::with_capacity(n);
    let mut error_kind = Vec::with_capacity(n);
    let mut output = Vec::with_capacity(n);
    let mut output_truncated = Vec::with_capacity(n);
    let mut claim_state = Vec::with_capacity(n);
    for FinishItem { run_id: id, finish } in items {
        run_id.push(*id);
        status.push(finish.status.as_str());
        finished_at.push(finish.finished_at);
        duration_ms.push(millis(finish.duration_ms));
        error.push(clean_opt(finish.error.as_deref()));
        error_kind.push(clean_opt(finish.error_kind.as_deref()));
        output.push(json_text(finish.output.as_ref()));
        output_truncated.push(finish.output_truncated);
        claim_state.push(finish.status.claim_state().map(|s| s.as_str()));
    }
    let rows = sqlx::query(FINISH_BATCH)
        .bind(run_id)
        .bind(status)
        .bind(finished_at)
        .bind(duration_ms)
        .bind(error)
        .bind(error_kind)
        .bind(output)
        .bind(output_truncated)
        .bind(claim_state)
        .fetch_all(pool)
        .await?;
    let found = rows
        .iter()
        .map(|row| row.try_get::<Uuid, _>("run_id"))
        .collect::<Result<std::collections::HashSet<_>, _>>()?;
    Ok(items.iter().map(|i| found.contains(&i.run_id)).collect())
}

/// Writes `items` with `write`; when PostgreSQL refuses the batch for its
/// rows, writes them one by one, so that only the refused one fails.
async fn write_or_split<I, O, F, Fut>(items: Vec<I>, what: &'static str, write: F) -> Answers<O>
where
    F: Fn(Vec<I>) -> Fut,
    Fut: Future<Output = (Vec<I>, Result<Vec<O>, sqlx::Error>)>,
{
    let n = items.len();
    let (items, result) = write(items).await;
    match result {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        Err(e) if n > 1 && refused_for_its_rows(&e) => {
            tracing::warn!(error = %e, batch = n, "{what}: batch refused; writing its requests one by one");
            let mut answers = Vec::with_capacity(n);
            for item in items {
                let (_, result) = write(vec![item]).await;
                answers.push(match result {
                    Ok(mut one) => one.pop().ok_or_else(|| {
                        StoreError::Unavailable(anyhow!("{what}: no answer for the request"))
                    }),
                    Err(e) => Err(StoreError::Unavailable(anyhow!("{what}: {e}"))),
                });
            }
            answers
        }
        Err(e) => fail_all(n, what, &e),
    }
}

impl PgStore {
    /// Connects to `url`, applies the migrations and returns the store.
    /// Fails (naming `DATABASE_URL`, never printing it) when PostgreSQL cannot
    /// be reached or migrated.
    pub async fn connect(url: &str, settings: StoreSettings) -> anyhow::Result<Self> {
        let pg = settings.postgres;
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| anyhow!("DATABASE_URL: not a valid PostgreSQL connection URL"))?
            .application_name("pushworker");
        // Migrations on a connection of their own, free of the statement
        // timeout (an index build may take longer).
        let mut migrations = sqlx::PgConnection::connect_with(&options)
            .await
            .context("DATABASE_URL: cannot connect to PostgreSQL")?;
        MIGRATOR
            .run(&mut migrations)
            .await
            .context("DATABASE_URL: cannot apply the run ledger's migrations")?;
        let _ = migrations.close().await;
        let timeout_ms = pg.statement_timeout.as_millis();
        let pool_of = |size: u32, options: PgConnectOptions| {
            PgPoolOptions::new()
                .max_connections(size)
                .min_connections(0)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .idle_timeout(Duration::from_secs(300))
                .max_lifetime(Duration::from_secs(1800))
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        conn.execute(sqlx::AssertSqlSafe(format!(
                            "SET statement_timeout = {timeout_ms}"
                        )))
                        .await
                        .map(|_| ())
                    })
                })
                .connect_with(options)
        };
        // A generic plan made while the tables are small would scan them
        // whole until the next analyze; the searches and sums are planned
        // for their values instead (docs/platform-notes.md).
        let pool = pool_of(
            pg.other_connections(),
            options
                .clone()
                .options([("plan_cache_mode", "force_custom_plan")]),
        )
        .await
        .context("DATABASE_URL: cannot connect to PostgreSQL")?;
        // Every claim and finish finds its rows by key, so its connection
        // plans each statement once, by index whatever the tables' size:
        // planning the batch statements anew each time costs more than
        // running them.
        let batch_pool = pool_of(
            pg.batch_connections(),
            options.options([
                ("plan_cache_mode", "force_generic_plan"),
                ("enable_seqscan", "off"),
            ]),
        )
        .await
        .context("DATABASE_URL: cannot connect to PostgreSQL")?;
        let lease = settings.lease;
        let finishes = {
            let pool = batch_pool.clone();
            let write: WriteFn<FinishItem, bool> = Arc::new(move |items| {
                let pool = pool.clone();
                Box::pin(async move { finish_distinct(&pool, items).await })
            });
            Batcher::spawn(pg.limits(), write, None)
        };
        let claims = {
            let pool = batch_pool.clone();
            let write: WriteFn<ClaimItem, (Uuid, Claim)> = Arc::new(move |items| {
                let pool = pool.clone();
                Box::pin(async move {
                    write_or_split(items, "claiming keys", |items| {
                        let pool = pool.clone();
                        async move {
                            let result = write_claims(&pool, lease, &items).await;
                            (items, result)
                        }
                    })
                    .await
                })
            });
            // A claim made for a request that went away while its batch was
            // written: its job will not run, so the key is freed at once
            // (rather than held until the lease expires).
            let finishes = finishes.clone();
            let orphan: OrphanFn<(Uuid, Claim)> = Arc::new(move |(run_id, claim)| {
                if claim != Claim::Started {
                    return;
                }
                let finishes = finishes.clone();
                tokio::spawn(async move {
                    let mut end = Finish::status(RunStatus::FailedTransient);
                    end.finished_at = Some(super::now_micros());
                    end.duration_ms = Some(0);
                    end.error = Some(CALLER_LEFT.to_owned());
                    end.error_kind = Some("caller_left".to_owned());
                    if let Err(e) = finishes
                        .submit(FinishItem {
                            run_id,
                            finish: end,
                        })
                        .await
                    {
                        tracing::warn!(%run_id, error = %e, "could not free the key of a request that went away (it is freed when its lease expires)");
                    }
                });
            });
            Batcher::spawn(pg.limits(), write, Some(orphan))
        };
        Ok(Self {
            pool,
            batch_pool,
            settings,
            claims,
            finishes,
        })
    }

    /// The pool of reads, pruning and cancels (tests and operators' tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The pool of the batched claims and finishes (tests).
    pub fn batch_pool(&self) -> &PgPool {
        &self.batch_pool
    }

    fn operation_timeout(&self) -> Duration {
        OPERATION_TIMEOUT.max(self.settings.postgres.statement_timeout + Duration::from_secs(1))
    }

    async fn begin_batched(&self, new: NewRun) -> Result<Claim, StoreError> {
        let mut record = new.record;
        record.dedup_key = new.dedup.as_ref().map(|k| k.as_str().to_owned());
        let content = new.dedup.as_ref().and_then(|k| k.content());
        let (_, claim) = self.claims.submit(ClaimItem { record, content }).await?;
        Ok(claim)
    }

    async fn list_runs(&self, query: RunQuery) -> Result<RunPage, StoreError> {
        let mut sql =
            QueryBuilder::<Postgres>::new(format!("SELECT {RUN_COLUMNS} FROM runs WHERE TRUE"));
        if let Some(job) = query.job {
            sql.push(" AND job = ").push_bind(job);
        }
        match query.status.as_slice() {
            [] => {}
            [status] => {
                sql.push(" AND status = ").push_bind(status.as_str());
            }
            statuses => {
                let names: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
                sql.push(" AND status = ANY(").push_bind(names).push(")");
            }
        }
        if let Some(source) = query.source {
            sql.push(" AND source = ").push_bind(source.as_str());
        }
        if let Some(before) = query.before {
            sql.push(" AND run_id < ").push_bind(before);
        }
        // The partial indexes of migrations/20261212000101_run_search.sql and
        // 20261212000102_run_search_keys.sql hold exactly these predicates.
        if let Some(message_id) = query.message_id {
            sql.push(" AND source = 'push' AND message_id = ")
                .push_bind(clean(&message_id));
        }
        if let Some(key) = query.idempotency_key {
            sql.push(" AND idempotency_key = ").push_bind(clean(&key));
        }
        // A time range is a range of the primary key, then exact on
        // started_at: no index of its own.
        let (low, high) = super::run_id_range(query.since, query.until);
        if let Some(low) = low {
            sql.push(" AND run_id >= ").push_bind(low);
        }
        if let Some(high) = high {
            sql.push(" AND run_id < ").push_bind(high);
        }
        if let Some(since) = query.since {
            sql.push(" AND started_at >= ").push_bind(since);
        }
        if let Some(until) = query.until {
            sql.push(" AND started_at < ").push_bind(until);
        }
        if !query.run_ids.is_empty() {
            sql.push(" AND run_id = ANY(")
                .push_bind(query.run_ids)
                .push(")");
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

    async fn stats_of(&self, query: StatsQuery) -> Result<Vec<StatsBucket>, StoreError> {
        let (low, high) = super::run_id_range(Some(query.since), Some(query.until));
        let rows = sqlx::query(RUN_STATS)
            .bind(query.bucket.as_secs_f64())
            .bind(query.since)
            .bind(query.until)
            .bind(low)
            .bind(high)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable("counting runs"))?;
        let bad = |e: sqlx::Error| StoreError::Unavailable(anyhow!(e).context("reading run stats"));
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status").map_err(bad)?;
                let count: i64 = row.try_get("count").map_err(bad)?;
                Ok(StatsBucket {
                    start: row.try_get("bucket").map_err(bad)?,
                    job: row.try_get("job").map_err(bad)?,
                    status: RunStatus::parse(&status).ok_or_else(|| {
                        StoreError::Unavailable(anyhow!("unknown run status `{status}`"))
                    })?,
                    count: u64::try_from(count).unwrap_or(0),
                    p50_ms: row.try_get("p50_ms").map_err(bad)?,
                    p95_ms: row.try_get("p95_ms").map_err(bad)?,
                })
            })
            .collect()
    }

    async fn request_cancel_of(
        &self,
        run_id: Uuid,
        by: RunPrincipal,
    ) -> Result<CancelRequest, StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(unavailable("getting a connection"))?;
        let marked = sqlx::query(REQUEST_CANCEL)
            .bind(run_id)
            .bind(clean(&by.kind))
            .bind(clean(&by.id))
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable("requesting a cancel"))?
            .is_some();
        Ok(match fetch_run(&mut conn, run_id).await? {
            None => CancelRequest::NotFound,
            Some(run) if marked => CancelRequest::Requested(Box::new(run)),
            Some(run) => CancelRequest::NotRunning(Box::new(run)),
        })
    }

    async fn prune_now(&self) -> Result<u64, StoreError> {
        sqlx::query(MARK_ABANDONED)
            .bind(ABANDONED)
            .bind(self.settings.lease.as_secs_f64())
            .execute(&self.pool)
            .await
            .map_err(unavailable("marking abandoned runs"))?;
        let retention = self.settings.retention.as_secs_f64();
        loop {
            let batch = sqlx::query(PRUNE_CLAIMS)
                .bind(retention)
                .bind(PRUNE_BATCH)
                .execute(&self.pool)
                .await
                .map_err(unavailable("pruning keys"))?
                .rows_affected();
            if batch < PRUNE_BATCH as u64 {
                break;
            }
        }
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

/// Writes finishes; a run finished twice in one batch (it cannot be updated
/// twice by one statement) has its second finish written after the first.
async fn finish_distinct(pool: &PgPool, items: Vec<FinishItem>) -> Answers<bool> {
    let mut seen = std::collections::HashSet::new();
    let (now, later): (Vec<_>, Vec<_>) = items
        .into_iter()
        .enumerate()
        .partition(|(_, item)| seen.insert(item.run_id));
    let mut answers: Vec<(usize, Result<bool, StoreError>)> = Vec::new();
    for group in [now, later] {
        if group.is_empty() {
            continue;
        }
        let (at, items): (Vec<usize>, Vec<FinishItem>) = group.into_iter().unzip();
        let written = Box::pin(finish_group(pool, items)).await;
        answers.extend(at.into_iter().zip(written));
    }
    answers.sort_by_key(|(at, _)| *at);
    answers.into_iter().map(|(_, a)| a).collect()
}

async fn finish_group(pool: &PgPool, items: Vec<FinishItem>) -> Answers<bool> {
    let mut seen = std::collections::HashSet::new();
    if items.iter().all(|i| seen.insert(i.run_id)) {
        write_or_split(items, "finishing runs", |items| async move {
            let result = write_finishes(pool, &items).await;
            (items, result)
        })
        .await
    } else {
        Box::pin(finish_distinct(pool, items)).await
    }
}

impl RunStore for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn begin(&self, new: NewRun) -> StoreFuture<'_, Claim> {
        deadline(self.operation_timeout(), self.begin_batched(new)).boxed()
    }

    fn finish(&self, run_id: Uuid, finish: Finish) -> StoreFuture<'_, bool> {
        deadline(
            self.operation_timeout(),
            self.finishes.submit(FinishItem { run_id, finish }),
        )
        .boxed()
    }

    fn get(&self, run_id: Uuid) -> StoreFuture<'_, Option<RunRecord>> {
        deadline(self.operation_timeout(), async move {
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
        deadline(self.operation_timeout(), self.list_runs(query)).boxed()
    }

    fn stats(&self, query: StatsQuery) -> StoreFuture<'_, Vec<StatsBucket>> {
        deadline(self.operation_timeout(), self.stats_of(query)).boxed()
    }

    fn request_cancel(&self, run_id: Uuid, by: RunPrincipal) -> StoreFuture<'_, CancelRequest> {
        deadline(self.operation_timeout(), self.request_cancel_of(run_id, by)).boxed()
    }

    fn cancel_requests(&self, run_ids: Vec<Uuid>) -> StoreFuture<'_, Vec<Uuid>> {
        deadline(self.operation_timeout(), async move {
            let rows = sqlx::query(CANCEL_REQUESTS)
                .bind(run_ids)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable("reading cancel requests"))?;
            rows.iter()
                .map(|row| row.try_get("run_id"))
                .collect::<Result<Vec<Uuid>, _>>()
                .map_err(unavailable("reading cancel requests"))
        })
        .boxed()
    }

    fn prune(&self) -> StoreFuture<'_, u64> {
        // Many short statements: no per-operation deadline.
        self.prune_now().boxed()
    }
}
