-- no-transaction
-- GET /runs?status=: newest first. Partial on the statuses other than running
-- and succeeded, which every run passes through: a run that succeeds never
-- writes it, while failures, dead letters, duplicates, conflicts and cancels,
-- the ones an operator looks for, are found by it. A search for running or
-- succeeded runs reads the primary key newest first.
-- CONCURRENTLY, one index per file: it cannot run inside the transaction a file of several statements is.
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_other_status_idx ON runs (status, run_id DESC)
    WHERE status NOT IN ('running', 'succeeded');
