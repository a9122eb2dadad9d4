-- Named queries of the relay (worker/relay.py).
-- `now` is a parameter wherever time matters: NULL means the database's now().

-- name: claim_events
-- Due pending events -> dispatched. SKIP LOCKED lets several relays claim side by side.
-- A verify event also returns its document's declared fields (immutable once created): the
-- message carries them so the worker can look at the object before reading the database.
UPDATE s3outbox.events e
SET status = 'dispatched',
    attempts = e.attempts + 1,
    dispatched_at = coalesce(%(now)s::timestamptz, now()),
    updated_at = coalesce(%(now)s::timestamptz, now())
FROM (
    SELECT ev.id, d.object_key, d.declared_size, d.sha256, d.content_type
    FROM s3outbox.events ev
    LEFT JOIN s3outbox.documents d ON d.id = ev.document_id AND ev.topic = 'verify'
    WHERE ev.status = 'pending' AND ev.available_at <= coalesce(%(now)s::timestamptz, now())
    ORDER BY ev.available_at, ev.id
    LIMIT %(limit)s
    FOR UPDATE OF ev SKIP LOCKED
) due
WHERE e.id = due.id
RETURNING e.id, e.topic, e.document_id, e.attempts, e.trace_id,
          due.object_key, due.declared_size, due.sha256, due.content_type, e.rescues;

-- name: next_due_in
-- Seconds until the next pending event is due (NULL when none): how long a relay may sleep.
SELECT extract(epoch FROM min(available_at) - coalesce(%(now)s::timestamptz, now()))::float8
    AS seconds
FROM s3outbox.events WHERE status = 'pending';
