-- no-transaction
-- Keys are pruned by their holder's run id (UUIDv7, ordered by time), which
-- changes only on a takeover: unlike `updated_at`, releasing a key then
-- leaves every indexed column alone, so the release is a HOT update.
-- CONCURRENTLY: instances already serving keep claiming during the build.
CREATE INDEX CONCURRENTLY IF NOT EXISTS run_claims_run_id_idx ON run_claims (run_id);
