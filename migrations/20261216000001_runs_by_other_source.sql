-- no-transaction
-- GET /runs?source=: newest first. Partial on the sources other than push: a
-- push never writes it, and a search for pushes, most of the table, reads the
-- primary key newest first and finds its page at once.
-- CONCURRENTLY, one index per file: it cannot run inside the transaction a file of several statements is.
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_other_source_idx ON runs (source, run_id DESC)
    WHERE source <> 'push';
