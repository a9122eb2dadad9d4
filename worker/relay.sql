-- Named queries of the relay (worker/relay.py).
-- `now` is a parameter wherever time matters: NULL means the database's now().

-- name: room
-- Back-pressure: how many more events may be dispatched, relay_max_in_flight minus the events
-- dispatched and unfinished. Counts at most `max_in_flight` of them, so its cost is bounded
-- by the limit, never by a backlog (the relay also skips it while far from the limit).
SELECT greatest(%(max_in_flight)s - count(*), 0)::bigint AS room
FROM (SELECT 1 FROM s3outbox.events WHERE status = 'dispatched'
      LIMIT %(max_in_flight)s) AS in_flight;

-- name: pick_events
-- Due pending events, oldest first, locked for this transaction. SKIP LOCKED lets several
-- relays pick side by side. `after_at`/`after_id`: start after this position of the pending
-- index (year 1/0: from its start); inside a backlog the relay starts after its last batch,
-- and outside one shortly before the newest event it claimed, instead of walking the index
-- entries of everything it already claimed (dead, and not removable while any transaction
-- holds back the xmin horizon). `exclude`: ids this transaction already picked (its own locks
-- do not make them skipped).
-- A verify event also returns its document's declared fields (immutable once created): the
-- message carries them so the worker can look at the object before reading the database.
-- The events are locked and limited first, then joined: with the statistics of a table that
-- was small (a burst after a quiet spell, until autoanalyze), a join of the whole backlog
-- before the sort made every pick cost the backlog's size (48 ms for 20,000 pending).
WITH picked AS MATERIALIZED (
    SELECT ev.id, ev.topic, ev.document_id, ev.attempts, ev.trace_id, ev.rescues,
           ev.available_at
    FROM s3outbox.events ev
    WHERE ev.status = 'pending'
      AND ev.available_at <= coalesce(%(now)s::timestamptz, now())
      AND (ev.available_at, ev.id) > (%(after_at)s::timestamptz, %(after_id)s::bigint)
      AND ev.id <> ALL(%(exclude)s::bigint[])
    ORDER BY ev.available_at, ev.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
SELECT p.id, p.topic, p.document_id::text AS document_id, p.attempts + 1 AS attempt,
       p.trace_id, d.object_key, d.declared_size, d.sha256, d.content_type, p.rescues,
       p.available_at
FROM picked p
-- No hint for a multipart document: its verify lists, completes and HEADs (no fast path).
LEFT JOIN s3outbox.documents d
    ON d.id = p.document_id AND p.topic = 'verify' AND d.part_size IS NULL
ORDER BY p.available_at, p.id;

-- name: mark_dispatched
-- The picked events -> dispatched, each with the id of the broker message that carries this
-- attempt (a new one per attempt; events packed into one message share its id), so a rescue
-- can ask the broker whether it still holds the message.
UPDATE s3outbox.events e
SET status = 'dispatched',
    attempts = e.attempts + 1,
    message_id = m.message_id,
    dispatched_at = coalesce(%(now)s::timestamptz, now()),
    updated_at = coalesce(%(now)s::timestamptz, now())
FROM unnest(%(ids)b::bigint[], %(message_ids)b::text[]) AS m(id, message_id)
-- `= ANY` too: the rows are found through the primary key whatever the statistics say (a
-- hash join over every pending event was the plan of a freshly truncated table).
WHERE e.id = m.id AND e.id = ANY(%(ids)b::bigint[]);

-- name: release_unsent
-- Sending the messages of a committed claim failed: those events back to pending, unless
-- something moved them on meanwhile (compare-and-set on the message id of the claim). The
-- attempt number stays: a message that did reach Redis is now a stale copy.
UPDATE s3outbox.events e
SET status = 'pending', updated_at = now()
FROM unnest(%(ids)b::bigint[], %(message_ids)b::text[]) AS m(id, message_id)
WHERE e.id = m.id AND e.id = ANY(%(ids)b::bigint[])
  AND e.status = 'dispatched' AND e.message_id = m.message_id;

-- name: next_due_in
-- Seconds until the next pending event that is not due yet (NULL when none): how long a
-- relay may sleep. Starts at `now` in the pending index, so it never walks the entries of
-- events already claimed.
SELECT extract(epoch FROM min(available_at) - coalesce(%(now)s::timestamptz, now()))::float8
           AS seconds
FROM s3outbox.events
WHERE status = 'pending' AND available_at > coalesce(%(now)s::timestamptz, now());
