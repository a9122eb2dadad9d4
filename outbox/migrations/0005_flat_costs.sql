-- Migration 0005: costs that stay flat as data grows (issue 13).
--
-- NOTIFY only when an INSERT inserted rows. A FOR EACH STATEMENT trigger also fires for an
-- INSERT of no row (INSERT ... SELECT finding nothing, ON CONFLICT DO NOTHING), and every
-- NOTIFY takes a cluster-wide lock at commit: the transition table tells whether there was a
-- row, once per statement, without a trigger call per row.
CREATE OR REPLACE FUNCTION s3outbox.notify_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted_events) THEN
        PERFORM pg_notify('s3outbox_events', '');
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS events_notify ON s3outbox.events;
CREATE TRIGGER events_notify
    AFTER INSERT ON s3outbox.events
    REFERENCING NEW TABLE AS inserted_events
    FOR EACH STATEMENT EXECUTE FUNCTION s3outbox.notify_event();

-- An owner's list (Outbox.list) without deleted documents walks only the others: deleted
-- rows pile up for ever (anyone can make them for free: request, then delete) and the
-- owner index made a page of a heavy deleter's list walk all of them.
CREATE INDEX documents_owner_live_created
    ON s3outbox.documents (owner_id, created_at DESC, id DESC)
    WHERE status <> 'deleted';

-- The outbox is a queue: every event is updated twice and its older versions are dead at
-- once. Vacuum it after a fixed number of dead rows, not after a fifth of a table that keeps
-- days of finished events (the default scale factor), so the partial indexes the relay and
-- the workers walk stay small.
ALTER TABLE s3outbox.events SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 100000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000
);
