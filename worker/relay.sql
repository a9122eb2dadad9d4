-- Named queries of the relay (worker/relay.py).
-- `now` is a parameter wherever time matters: NULL means the database's now().

-- name: claim_events
-- Due pending events -> dispatched. SKIP LOCKED lets several relays claim side by side.
-- Back-pressure: at most `max_in_flight` events dispatched and unfinished, so a backlog waits
-- here, visible as lag, and not in Redis (several relays may overshoot by one batch each).
-- Each claimed event gets the id of the broker message that will carry this attempt.
-- A verify event also returns its document's declared fields (immutable once created): the
-- message carries them so the worker can look at the object before reading the database.
WITH room AS (
    SELECT greatest(%(max_in_flight)s - count(*), 0) AS n
    FROM s3outbox.events WHERE status = 'dispatched'
)
UPDATE s3outbox.events e
SET status = 'dispatched',
    attempts = e.attempts + 1,
    message_id = gen_random_uuid()::text,
    dispatched_at = coalesce(%(now)s::timestamptz, now()),
    updated_at = coalesce(%(now)s::timestamptz, now())
FROM (
    SELECT ev.id, d.object_key, d.declared_size, d.sha256, d.content_type
    FROM s3outbox.events ev
    -- No hint for a multipart document: its verify lists, completes and HEADs (no fast path).
    LEFT JOIN s3outbox.documents d
        ON d.id = ev.document_id AND ev.topic = 'verify' AND d.part_size IS NULL
    WHERE ev.status = 'pending' AND ev.available_at <= coalesce(%(now)s::timestamptz, now())
    ORDER BY ev.available_at, ev.id
    LIMIT least(%(limit)s, (SELECT n FROM room))
    FOR UPDATE OF ev SKIP LOCKED
) due
WHERE e.id = due.id
RETURNING e.id, e.topic, e.document_id, e.attempts, e.trace_id,
          due.object_key, due.declared_size, due.sha256, due.content_type, e.rescues,
          e.message_id;

-- name: set_message_ids
-- Events packed into one message share that message's id (the claim gave each its own).
UPDATE s3outbox.events e
SET message_id = m.message_id
FROM unnest(%(ids)s::bigint[], %(message_ids)s::text[]) AS m(id, message_id)
WHERE e.id = m.id;

-- name: next_due_in
-- Seconds until the next pending event is due (NULL when none), and how many events are in
-- flight: how long a relay may sleep (not long while back-pressure holds due events back).
SELECT extract(epoch FROM min(available_at) - coalesce(%(now)s::timestamptz, now()))::float8
           AS seconds,
       (SELECT count(*) FROM s3outbox.events WHERE status = 'dispatched')::bigint AS in_flight
FROM s3outbox.events WHERE status = 'pending';
