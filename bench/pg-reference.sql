-- The least a deduplicating ledger must write per push, as pgbench runs it
-- (`pgbench -M prepared -f bench/pg-reference.sql`, against a database the
-- worker has migrated): two prepared autocommit statements. The first claims
-- a new message id and records its run in one statement; the second records
-- the run's end and releases the claim.
WITH claim AS (
    INSERT INTO run_claims (dedup_key, run_id, state, lease_until, updated_at, content_digest)
    VALUES ('push' || chr(31) || 'projects/p/subscriptions/s' || chr(31) || gen_random_uuid(),
            gen_random_uuid(), 'running', now() + interval '90 seconds', now(),
            'sha256:4f1dbe4a1d5a4e4c1b08f2c36ad15e2c0c6d7f0c93b9b0e1f1a1b2c3d4e5f607')
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING dedup_key, run_id
)
INSERT INTO runs (run_id, job, source, principal_kind, principal_id, message_id, subscription,
    dedup_key, attempt, payload_digest, payload, status, started_at)
SELECT run_id, 'echo', 'push', 'google', 'pusher@example.iam.gserviceaccount.com',
    split_part(dedup_key, chr(31), 3), 'projects/p/subscriptions/s', dedup_key, 1,
    'sha256:4f1dbe4a1d5a4e4c1b08f2c36ad15e2c0c6d7f0c93b9b0e1f1a1b2c3d4e5f607',
    '{"message":"hello"}'::json, 'running', now()
FROM claim
RETURNING run_id, dedup_key \gset
WITH finished AS (
    UPDATE runs SET status = 'succeeded', finished_at = now(), duration_ms = 0,
        output = '{"message":"hello"}'::json
    WHERE run_id = :run_id
    RETURNING dedup_key
)
UPDATE run_claims SET state = 'done', updated_at = now()
WHERE dedup_key = (SELECT dedup_key FROM finished) AND run_id = :run_id;
