-- no-transaction
-- Replaced by runs_other_source_idx: every push wrote this one twice, at its
-- claim and again at its finish (which changes the indexed status, so it is
-- never a HOT update).
DROP INDEX CONCURRENTLY IF EXISTS runs_source_idx;
