-- no-transaction
-- GET /runs?idempotency_key=: the runs of an Idempotency-Key.
-- Partial on runs that carry a key (manual and service triggers): a push never writes it, so the hot path pays nothing.
-- CONCURRENTLY, one index per file: it cannot run inside the transaction a file of several statements is.
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_idempotency_key_idx ON runs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
