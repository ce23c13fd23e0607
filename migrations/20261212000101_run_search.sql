-- no-transaction
-- GET /runs?message_id=: the runs of a Pub/Sub message, on the hot table.
-- Partial on push runs (the predicate the search adds): events and triggers never write it; a push writes its begin's entry and its finish's (a non-HOT update already, for the status index).
-- CONCURRENTLY: instances already serving keep recording runs during the build.
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_push_message_idx ON runs (message_id)
    WHERE source = 'push' AND message_id IS NOT NULL;
