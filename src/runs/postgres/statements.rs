//! The ledger's SQL. Each hot-path phase is one statement (one round trip,
//! one commit) for a whole batch: the rows travel as arrays and `unnest`
//! turns them back into rows. sqlx prepares each text once per connection
//! and keeps it (`query()` is persistent by default).

pub const RUN_COLUMNS: &str = "run_id, job, source, principal_kind, principal_id, message_id, \
    subscription, idempotency_key, dedup_key, duplicate_of, attempt, payload_digest, \
    payload::text AS payload, payload_truncated, status, started_at, finished_at, duration_ms, \
    error, error_kind, output::text AS output, output_truncated, event_source, event_type, \
    event_subject, rerun_of, cancel_requested_at, cancelled_by_kind, cancelled_by_id";

/// The claim of a batch, in one statement:
///
/// - `leaders`: the first request of each key in the batch (the batch comes
///   in arrival order, `ord`); later ones are resolved against it below, as
///   if they had come one after the other.
/// - `claimed`: inserts each leader's key, or takes it over when its run
///   failed or its lease expired. When it may not, the row is "updated" to
///   itself: PostgreSQL locks the row it conflicted with and `RETURNING`
///   gives that row's latest committed version, the one that refused it
///   (a sibling `SELECT` would see the statement's older snapshot). Keys go
///   in key order, so two batches never lock the same keys in two orders.
///   A request holds its key when the row names its run.
/// - `expired`: the run a leader took over from is marked as lease expired
///   if it was still running.
/// - `outcome`: per request, `running`, or against the holder: `conflict`
///   (both sides carry a content digest and they differ), `done`, or
///   `in_progress`; `runs` gets every request's row, duplicates included.
pub const CLAIM_BATCH: &str = "WITH input AS ( \
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
        $6::text[], $7::text[], $8::text[], $9::text[], $10::int4[], $11::text[], $12::text[], \
        $13::bool[], $14::timestamptz[], $15::text[], $18::text[], $19::text[], \
        $20::text[], $21::uuid[]) WITH ORDINALITY \
        AS i(run_id, job, source, principal_kind, principal_id, message_id, subscription, \
            idempotency_key, dedup_key, attempt, payload_digest, payload, payload_truncated, \
            started_at, content_digest, event_source, event_type, event_subject, rerun_of, ord) \
), leaders AS ( \
    SELECT DISTINCT ON (dedup_key) dedup_key, run_id, content_digest \
    FROM input WHERE dedup_key IS NOT NULL ORDER BY dedup_key, ord \
), claimed AS ( \
    INSERT INTO run_claims AS c \
        (dedup_key, run_id, state, lease_until, previous_run_id, updated_at, content_digest) \
    SELECT dedup_key, run_id, 'running', now() + make_interval(secs => $16), NULL, now(), \
        content_digest \
    FROM leaders ORDER BY dedup_key \
    ON CONFLICT (dedup_key) DO UPDATE SET \
        run_id = CASE WHEN c.state = 'failed' OR (c.state = 'running' AND c.lease_until <= now()) \
            THEN EXCLUDED.run_id ELSE c.run_id END, \
        state = CASE WHEN c.state = 'failed' OR (c.state = 'running' AND c.lease_until <= now()) \
            THEN 'running' ELSE c.state END, \
        lease_until = CASE WHEN c.state = 'failed' \
            OR (c.state = 'running' AND c.lease_until <= now()) \
            THEN EXCLUDED.lease_until ELSE c.lease_until END, \
        previous_run_id = CASE WHEN c.state = 'failed' \
            OR (c.state = 'running' AND c.lease_until <= now()) \
            THEN c.run_id ELSE c.previous_run_id END, \
        updated_at = CASE WHEN c.state = 'failed' \
            OR (c.state = 'running' AND c.lease_until <= now()) \
            THEN now() ELSE c.updated_at END, \
        content_digest = CASE WHEN c.state = 'failed' \
            OR (c.state = 'running' AND c.lease_until <= now()) \
            THEN EXCLUDED.content_digest ELSE c.content_digest END \
    RETURNING c.dedup_key, c.run_id, c.state, c.content_digest, c.previous_run_id \
), expired AS ( \
    UPDATE runs r SET status = 'failed_transient', error = $17, error_kind = 'lease_expired', \
        finished_at = now() \
    FROM claimed cl JOIN leaders l ON l.dedup_key = cl.dedup_key \
    WHERE cl.run_id = l.run_id AND r.run_id = cl.previous_run_id AND r.status = 'running' \
), outcome AS ( \
    SELECT i.*, cl.run_id AS holder_id, cl.content_digest AS holder_content, \
        CASE WHEN i.dedup_key IS NULL OR cl.run_id = i.run_id THEN 'running' \
            WHEN i.content_digest IS NOT NULL \
                AND cl.content_digest ~ '^sha256:[0-9a-fA-F]{64}$' \
                AND lower(cl.content_digest) <> i.content_digest THEN 'conflict' \
            WHEN cl.state = 'done' THEN 'done' \
            ELSE 'in_progress' END AS outcome \
    FROM input i LEFT JOIN claimed cl ON cl.dedup_key = i.dedup_key \
), recorded AS ( \
    INSERT INTO runs (run_id, job, source, principal_kind, principal_id, message_id, \
        subscription, idempotency_key, dedup_key, duplicate_of, attempt, payload_digest, payload, \
        payload_truncated, status, started_at, finished_at, duration_ms, error, error_kind, \
        output, output_truncated, event_source, event_type, event_subject, rerun_of) \
    SELECT run_id, job, source, principal_kind, principal_id, message_id, subscription, \
        idempotency_key, dedup_key, \
        CASE WHEN outcome = 'running' THEN NULL ELSE holder_id END, \
        attempt, payload_digest, payload::json, payload_truncated, \
        CASE outcome WHEN 'running' THEN 'running' WHEN 'conflict' THEN 'conflict' \
            ELSE 'duplicate' END, \
        started_at, \
        CASE WHEN outcome = 'running' THEN NULL ELSE started_at END, \
        CASE WHEN outcome = 'running' THEN NULL ELSE 0 END, \
        CASE outcome \
            WHEN 'conflict' THEN format('message already claimed by run %s with other content \
                (%s; this delivery: %s); not run', holder_id, lower(holder_content), \
                content_digest) \
            WHEN 'in_progress' THEN format('run %s was in progress; answered 409 so the \
                delivery comes back', holder_id) END, \
        CASE outcome WHEN 'conflict' THEN 'message_conflict' \
            WHEN 'in_progress' THEN 'run_in_progress' END, \
        NULL, false, event_source, event_type, event_subject, rerun_of \
    FROM outcome \
) \
SELECT ord, outcome, holder_id, holder_content FROM outcome";

/// The finish of a batch, in one statement: each run's end, and the release
/// of its key (done or failed) if it still holds it. Returns the runs found.
pub const FINISH_BATCH: &str = "WITH input AS ( \
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::int8[], $5::text[], \
        $6::text[], $7::text[], $8::bool[], $9::text[]) \
        AS i(run_id, status, finished_at, duration_ms, error, error_kind, output, \
            output_truncated, claim_state) \
), finished AS ( \
    UPDATE runs r SET status = i.status, \
        finished_at = COALESCE(i.finished_at, r.finished_at), \
        duration_ms = COALESCE(i.duration_ms, r.duration_ms), \
        error = COALESCE(i.error, r.error), error_kind = COALESCE(i.error_kind, r.error_kind), \
        output = COALESCE(i.output::json, r.output), \
        output_truncated = r.output_truncated OR i.output_truncated \
    FROM input i WHERE r.run_id = i.run_id \
    RETURNING r.run_id, r.dedup_key, i.claim_state \
), released AS ( \
    UPDATE run_claims c SET state = f.claim_state, updated_at = now() \
    FROM finished f \
    WHERE f.claim_state IS NOT NULL AND c.dedup_key = f.dedup_key AND c.run_id = f.run_id \
) \
SELECT run_id FROM finished";

/// The smallest UUIDv7 of the millisecond `$n` seconds ago (by the
/// database's clock): run ids are UUIDv7, so "started before then" is a
/// range of the primary key.
macro_rules! boundary {
    ($n:literal) => {
        concat!(
            "(lpad(to_hex(floor(extract(epoch FROM now() - make_interval(secs => ",
            $n,
            ")) * 1000)::bigint), 12, '0') || '70000000000000000000')::uuid"
        )
    };
}

/// Runs left running past the lease (their instance died before recording
/// an end, and no redelivery took their key over).
pub const MARK_ABANDONED: &str = concat!(
    "UPDATE runs SET status = 'failed_transient', error = $1, error_kind = 'abandoned', \
    finished_at = now() WHERE status = 'running' AND run_id < ",
    boundary!("$2")
);

/// One batch of keys past the retention (by their holder's run id), unless
/// still held by a live run.
pub const PRUNE_CLAIMS: &str = concat!(
    "DELETE FROM run_claims WHERE ctid = ANY(ARRAY(SELECT ctid FROM run_claims WHERE run_id < ",
    boundary!("$1"),
    " AND (state <> 'running' OR lease_until < now()) LIMIT $2))"
);

/// One batch of runs past the retention.
pub const PRUNE_RUNS: &str = concat!(
    "DELETE FROM runs WHERE ctid = ANY(ARRAY(SELECT ctid FROM runs WHERE run_id < ",
    boundary!("$1"),
    " LIMIT $2))"
);

/// `GET /runs/stats`: per bucket (`date_bin` from `$2`, the first bucket's
/// start), job and status, the count and the median and 95th percentile
/// duration of the runs started in `[$2, $3)`. The time range is a range of
/// the primary key (`$4`, `$5`: run ids are UUIDv7), then exact on
/// `started_at`. Sorted bytewise (`"C"`), as the memory store sorts.
pub const RUN_STATS: &str = "SELECT date_bin(make_interval(secs => $1), started_at, $2) AS bucket, \
    job, status, count(*) AS count, \
    percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms, \
    percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms \
    FROM runs \
    WHERE run_id >= $4 AND run_id < $5 AND started_at >= $2 AND started_at < $3 \
    GROUP BY 1, 2, 3 ORDER BY 1, job COLLATE \"C\", status COLLATE \"C\"";

/// A cancel request: marks a running run (keeping an earlier request's time
/// and author) and returns it; no row when it is not running.
pub const REQUEST_CANCEL: &str = "UPDATE runs SET \
    cancelled_by_kind = CASE WHEN cancel_requested_at IS NULL THEN $2 ELSE cancelled_by_kind END, \
    cancelled_by_id = CASE WHEN cancel_requested_at IS NULL THEN $3 ELSE cancelled_by_id END, \
    cancel_requested_at = COALESCE(cancel_requested_at, now()) \
    WHERE run_id = $1 AND status = 'running' RETURNING run_id";

/// Which of the runs in flight here someone asked to cancel (polled).
pub const CANCEL_REQUESTS: &str =
    "SELECT run_id FROM runs WHERE run_id = ANY($1) AND cancel_requested_at IS NOT NULL";
