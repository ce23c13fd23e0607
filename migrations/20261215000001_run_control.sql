-- Run control: the status `cancelled`, the cancel request (polled by the
-- instance running the run), who asked for it, and the run a re-run repeats.
-- Nullable columns without defaults: added without rewriting the table.
-- NOT VALID: every existing row passed the narrower check, so the table is
-- not scanned under the lock while older instances serve.
ALTER TABLE runs ADD COLUMN rerun_of uuid;
ALTER TABLE runs ADD COLUMN cancel_requested_at timestamptz;
ALTER TABLE runs ADD COLUMN cancelled_by_kind text;
ALTER TABLE runs ADD COLUMN cancelled_by_id text;
ALTER TABLE runs DROP CONSTRAINT runs_status_check;
ALTER TABLE runs ADD CONSTRAINT runs_status_check CHECK (status IN ('running', 'succeeded',
    'failed_transient', 'failed_permanent', 'dead_lettered', 'duplicate', 'conflict',
    'cancelled')) NOT VALID;
