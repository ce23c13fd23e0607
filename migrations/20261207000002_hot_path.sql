-- A small hot path: every index on `runs` is written by every push, and an
-- index on a column a finish changes (`status`) makes that update write every
-- index again. Kept: the primary key (finish, GET /runs/{id}, pruning and
-- finding abandoned runs by run id, which is ordered by time) and the three
-- GET /runs filters (job, status, source). Dropped: the message lookup (no
-- API reads it), started_at (run ids are time-ordered), the partial index
-- on running runs (the status index serves it), and run_claims.updated_at
-- (pruning goes by run id).
-- A short lock wait, so that a busy table fails the start-up (and it is
-- retried) rather than queueing every query behind the drop.
SET LOCAL lock_timeout = '10s';
DROP INDEX IF EXISTS runs_message_idx;
DROP INDEX IF EXISTS runs_started_at_idx;
DROP INDEX IF EXISTS runs_running_idx;
DROP INDEX IF EXISTS run_claims_updated_at_idx;
-- Room on each page for the finish's new row version (HOT on run_claims).
ALTER TABLE runs SET (fillfactor = 85);
ALTER TABLE run_claims SET (fillfactor = 80);
