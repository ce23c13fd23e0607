-- A push claim remembers what it claimed: the SHA-256 of the job and the
-- decoded data (`sha256:<hex>`). A later delivery of the same message id with
-- another digest is recorded as a `conflict`, never acked as a duplicate.
-- NULL for manual keys (they compare payloads on the run) and for claims
-- made before this column existed (compared as before: by key alone).
ALTER TABLE run_claims ADD COLUMN content_digest text;

-- The new status. NOT VALID: every existing row passed the narrower check,
-- so the table is not scanned under the lock while older instances serve;
-- new and updated rows are checked all the same.
ALTER TABLE runs DROP CONSTRAINT runs_status_check;
ALTER TABLE runs ADD CONSTRAINT runs_status_check CHECK (status IN ('running', 'succeeded',
    'failed_transient', 'failed_permanent', 'dead_lettered', 'duplicate', 'conflict')) NOT VALID;
