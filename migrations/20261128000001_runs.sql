-- The run ledger: one row per dispatch (duplicates included), and one claim
-- per idempotency key. Applied at start-up by `sqlx::migrate!` (under an
-- advisory lock, so instances starting together apply it once).

CREATE TABLE runs (
    run_id            uuid PRIMARY KEY,          -- UUIDv7: ordered by time
    job               text        NOT NULL,
    source            text        NOT NULL CHECK (source IN ('push', 'manual', 'service')),
    principal_kind    text        NOT NULL,
    principal_id      text        NOT NULL,
    message_id        text,
    subscription      text,
    idempotency_key   text,
    dedup_key         text,
    duplicate_of      uuid,
    attempt           integer     NOT NULL,
    payload_digest    text        NOT NULL,
    -- json, not jsonb: jsonb refuses \u0000 in strings, and a payload must
    -- never make its record unwritable.
    payload           json,
    payload_truncated boolean     NOT NULL DEFAULT false,
    status            text        NOT NULL CHECK (status IN ('running', 'succeeded',
                          'failed_transient', 'failed_permanent', 'dead_lettered', 'duplicate')),
    started_at        timestamptz NOT NULL,
    finished_at       timestamptz,
    duration_ms       bigint,
    error             text,
    error_kind        text,
    output            json,
    output_truncated  boolean     NOT NULL DEFAULT false
);

-- GET /runs: newest first, optionally by job, status or source.
CREATE INDEX runs_job_idx    ON runs (job, run_id DESC);
CREATE INDEX runs_status_idx ON runs (status, run_id DESC);
CREATE INDEX runs_source_idx ON runs (source, run_id DESC);
-- Operators looking up a message.
CREATE INDEX runs_message_idx ON runs (message_id) WHERE message_id IS NOT NULL;
-- Retention pruning, and finding runs left running.
CREATE INDEX runs_started_at_idx ON runs (started_at);
CREATE INDEX runs_running_idx ON runs (started_at) WHERE status = 'running';

CREATE TABLE run_claims (
    dedup_key       text PRIMARY KEY,
    run_id          uuid        NOT NULL,        -- the run holding the key
    state           text        NOT NULL CHECK (state IN ('running', 'done', 'failed')),
    lease_until     timestamptz NOT NULL,
    previous_run_id uuid,                        -- the holder it took over from
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX run_claims_updated_at_idx ON run_claims (updated_at);
