-- CloudEvents (POST /events): the source `event`, and the event's source,
-- type and subject beside its id (kept in message_id). NOT VALID: every
-- existing row passed the narrower check, so the table is not scanned under
-- the lock while older instances serve; new and updated rows are checked.
ALTER TABLE runs ADD COLUMN event_source text;
ALTER TABLE runs ADD COLUMN event_type text;
ALTER TABLE runs ADD COLUMN event_subject text;
ALTER TABLE runs DROP CONSTRAINT runs_source_check;
ALTER TABLE runs ADD CONSTRAINT runs_source_check
    CHECK (source IN ('push', 'manual', 'service', 'event')) NOT VALID;
