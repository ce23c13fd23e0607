-- no-transaction
-- Replaced by runs_other_status_idx: every push wrote this one twice, at its
-- claim and again at its finish.
DROP INDEX CONCURRENTLY IF EXISTS runs_status_idx;
