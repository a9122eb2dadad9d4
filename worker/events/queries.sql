-- Named queries of event handling (worker/events/): reading and locking an event and its
-- document, the event's lifecycle (complete, snooze, fail) and the document and quota changes.
-- `now` is a parameter wherever time matters: NULL means the database's now().

-- name: read_event
SELECT e.* FROM s3outbox.events e WHERE e.id = %(id)s;

-- name: lock_events
-- Wait for the events' row locks (the relay's claim may not have committed yet), so the
-- start below reads them as committed. Ordered: two messages never lock in opposite orders.
SELECT id FROM s3outbox.events WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id FOR UPDATE;

-- name: start_attempts
-- Workers begin attempts (one event, or every event of a packed message): only the current
-- attempt of an unfinished event may start (a stale or repeated message stops here, before
-- any storage call). A start of an event still marked running means the worker of its last
-- start died before it recorded an outcome: a failed attempt, counted as one, and after
-- max_failures of them the event is dead instead of starting again.
UPDATE s3outbox.events e
SET running = NOT (e.running AND e.failures + 1 >= %(max_failures)s),
    started_at = coalesce(%(now)s::timestamptz, now()),
    failures = e.failures + CASE WHEN e.running THEN 1 ELSE 0 END,
    status = CASE WHEN e.running AND e.failures + 1 >= %(max_failures)s THEN 'dead'
                  ELSE e.status END,
    finished_at = CASE WHEN e.running AND e.failures + 1 >= %(max_failures)s
                       THEN coalesce(%(now)s::timestamptz, now()) ELSE e.finished_at END,
    last_error = CASE WHEN e.running
                      THEN 'the worker of an earlier attempt died before it finished'
                           || ' (killed, or out of memory)'
                      ELSE e.last_error END,
    updated_at = coalesce(%(now)s::timestamptz, now())
FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS t(id, attempt)
WHERE e.id = t.id AND e.attempts = t.attempt AND e.status = 'dispatched'
  -- Another worker started it less than redispatch_after ago (a duplicate delivery): it may
  -- still be at work (the setting is kept above the actor time limit), so this one stops
  -- here, charging nobody. Past that, the rescue sends it again and the start below counts.
  AND NOT (e.running AND e.started_at > coalesce(%(now)s::timestamptz, now())
                                         - make_interval(secs => %(stale_after)s))
RETURNING e.*;

-- name: lock_event
-- Also returns the clock the handler decides with (the `now` parameter or the database's).
SELECT e.*, coalesce(%(now)s::timestamptz, now()) AS clock
FROM s3outbox.events e WHERE e.id = %(id)s FOR UPDATE;

-- name: complete_event
-- Compare-and-set: a repeated or stale completion of a finished event changes nothing.
UPDATE s3outbox.events
SET status = 'done',
    running = false,
    finished_at = coalesce(%(now)s::timestamptz, now()),
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE id = %(id)s AND status IN ('pending', 'dispatched')
RETURNING id;

-- name: snooze_event
-- Not a failure: the object is not visible yet (eventually consistent store), or storage or
-- the database is unavailable (an outage of any length never kills an event). Try later.
-- `missing`: the object was not there; the first such attempt's time is kept (the verify
-- deadline counts from it).
UPDATE s3outbox.events
SET status = 'pending',
    running = false,
    available_at = coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(delay)s),
    missing_since = CASE WHEN %(missing)s
                         THEN coalesce(missing_since, coalesce(%(now)s::timestamptz, now()))
                         ELSE missing_since END,
    last_error = %(error)s,
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE id = %(id)s AND status = 'dispatched' AND attempts = %(attempt)s
RETURNING id;

-- name: fail_event
-- A failed attempt: back to pending after a backoff, or dead after the last one.
-- Only the attempt that is current may record its failure (compare-and-set on attempts).
UPDATE s3outbox.events
SET failures = failures + 1,
    running = false,
    status = CASE WHEN failures + 1 >= %(max_failures)s THEN 'dead' ELSE 'pending' END,
    available_at = coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(delay)s),
    finished_at = CASE WHEN failures + 1 >= %(max_failures)s
                       THEN coalesce(%(now)s::timestamptz, now()) END,
    last_error = %(error)s,
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE id = %(id)s AND status = 'dispatched' AND attempts = %(attempt)s
RETURNING id, status, failures;

-- name: insert_event
INSERT INTO s3outbox.events (topic, document_id, trace_id, available_at, created_at, updated_at)
VALUES (%(topic)s, %(document_id)s, %(trace_id)s,
        coalesce(%(available_at)s::timestamptz, %(now)s::timestamptz, now()),
        coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now()))
RETURNING id;

-- name: read_document
SELECT d.* FROM s3outbox.documents d WHERE d.id = %(id)s;

-- name: lock_quota_of_document
-- A document's owner never changes, so reading it unlocked to find the quota row is safe.
SELECT q.owner_id FROM s3outbox.quotas q
WHERE q.owner_id = (SELECT d.owner_id FROM s3outbox.documents d WHERE d.id = %(id)s)
FOR UPDATE;

-- name: lock_document
SELECT d.* FROM s3outbox.documents d WHERE d.id = %(id)s FOR UPDATE;

-- name: charge_quota
-- Move a verified document's reservation to used, in one conditional UPDATE (invariant 4).
UPDATE s3outbox.quotas
SET used_bytes = used_bytes + %(charge)s,
    reserved_bytes = reserved_bytes - %(release)s,
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE owner_id = %(owner_id)s
  AND reserved_bytes >= %(release)s
  AND used_bytes + %(charge)s + reserved_bytes - %(release)s <= limit_bytes
RETURNING owner_id;

-- name: release_quota
-- Give back a document's reservation and/or charge; never below zero.
UPDATE s3outbox.quotas
SET used_bytes = greatest(used_bytes - %(charged)s, 0),
    reserved_bytes = greatest(reserved_bytes - %(reserved)s, 0),
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE owner_id = %(owner_id)s
RETURNING owner_id;

-- name: mark_available
UPDATE s3outbox.documents
SET status = 'available',
    verified_size = %(verified_size)s,
    charged_bytes = %(charge)s,
    reserved_bytes = 0,
    reason = NULL,
    verified_at = coalesce(%(now)s::timestamptz, now()),
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE id = %(id)s AND status = %(expected)s
RETURNING id;

-- name: accept_verified
-- One statement, its own transaction (autocommit): see s3outbox.accept_verified in schema.sql.
SELECT s3outbox.accept_verified(
    %(event_id)s, %(document_id)s, %(object_key)s, %(declared_size)s, %(sha256)s,
    %(content_type)s, %(size)s, %(now)s::timestamptz, %(dedup)s
) AS event_id;

-- name: accept_verified_many
-- One statement, its own transaction (autocommit), for the matching verifies of a packed
-- message: the events it accepted (s3outbox.accept_verified_many in schema.sql).
SELECT event_id FROM s3outbox.accept_verified_many(
    %(event_ids)s::bigint[], %(document_ids)s::uuid[], %(object_keys)s::text[],
    %(declared_sizes)s::bigint[], %(sha256s)s::text[], %(content_types)s::text[],
    %(sizes)s::bigint[], %(now)s::timestamptz, %(dedup)s
) AS event_id;

-- name: mark_refused
-- uploaded -> rejected, or pending -> expired: reservation released, blob to be purged.
UPDATE s3outbox.documents
SET status = %(status)s,
    reason = %(reason)s,
    verified_size = %(verified_size)s,
    reserved_bytes = 0,
    verified_at = coalesce(%(now)s::timestamptz, now()),
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE id = %(id)s AND status = %(expected)s
RETURNING id;

-- name: mark_deleted
UPDATE s3outbox.documents
SET status = 'deleted',
    charged_bytes = 0,
    reserved_bytes = 0,
    purged_at = coalesce(%(now)s::timestamptz, now()),
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE id = %(id)s AND status = 'deleting'
RETURNING id;

-- name: mark_purged
UPDATE s3outbox.documents
SET purged_at = coalesce(%(now)s::timestamptz, now()),
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE id = %(id)s AND status IN ('rejected', 'expired', 'deleted')
RETURNING id;


-- name: set_upload_id
-- The multipart upload a worker created, recorded only if the document is still pending and
-- has none (compare-and-set: deleted meanwhile, or another worker won, and the worker aborts
-- the one it created). The client may now ask for part URLs: the document gets the usual URL
-- TTL from now to start (never shortened, never past its upload window).
UPDATE s3outbox.documents d
SET upload_id = %(upload_id)s,
    upload_expires_at = greatest(
        d.upload_expires_at,
        least(coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(ttl)s),
              d.created_at + make_interval(secs => %(window)s))),
    expire_requested_at = NULL,
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE d.id = %(id)s AND d.status = 'pending' AND d.upload_id IS NULL
  AND d.part_size IS NOT NULL
RETURNING d.id;

-- name: recorded_parts
-- A multipart document's parts as the library recorded them (size and signed SHA-256), and
-- the ETag its client reported (which of several uploads of one part number it means).
SELECT p.part_number, p.size, p.sha256, p.etag
FROM s3outbox.document_parts p
WHERE p.document_id = %(id)s
ORDER BY p.part_number;

-- name: delete_parts
-- A document left a live state: its parts' rows are no longer needed.
DELETE FROM s3outbox.document_parts WHERE document_id = %(id)s;

-- name: accept_waiting
-- The blob was verified (its uploading document is available, same transaction): the
-- documents waiting on it become available, each charged its size (its reservation becomes
-- used: the same bytes, so it always fits), in one statement. They belong to the uploader's
-- owner, whose quota row the caller holds; they are locked in id order, before the blob.
WITH waiting AS (
    SELECT d.id, d.owner_id, d.reserved_bytes
    FROM s3outbox.documents d
    WHERE d.object_key = %(key)s AND d.status = 'waiting' AND d.declared_size = %(size)s
    ORDER BY d.id
    FOR UPDATE
), charged AS (
    UPDATE s3outbox.quotas q
    SET used_bytes = q.used_bytes + s.n * %(size)s,
        reserved_bytes = q.reserved_bytes - s.reserved,
        updated_at = coalesce(%(now)s::timestamptz, now())
    FROM (SELECT owner_id, count(*) AS n, sum(reserved_bytes) AS reserved
          FROM waiting GROUP BY owner_id) s
    WHERE q.owner_id = s.owner_id
      AND q.reserved_bytes >= s.reserved
      AND q.used_bytes + s.n * %(size)s + q.reserved_bytes - s.reserved <= q.limit_bytes
    RETURNING q.owner_id
), available AS (
    UPDATE s3outbox.documents d
    SET status = 'available',
        verified_size = %(size)s,
        charged_bytes = %(size)s,
        reserved_bytes = 0,
        reason = NULL,
        verified_at = coalesce(%(now)s::timestamptz, now()),
        updated_at = coalesce(%(now)s::timestamptz, now())
    FROM waiting
    WHERE d.id = waiting.id AND waiting.owner_id IN (SELECT owner_id FROM charged)
    RETURNING d.id
)
SELECT count(*) AS available FROM available;

-- name: mark_blob_verified
-- Run after lock_blob (outbox/blobs.sql): the uploading document's object matched.
UPDATE s3outbox.blobs
SET status = 'verified',
    verified_at = coalesce(%(now)s::timestamptz, now()),
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE object_key = %(key)s AND status = 'uploading'
RETURNING object_key;

-- name: queue_dedup
-- Across owners: the blob just verified has the content of another verified blob, so a
-- `dedup` event is queued for its document (worker/events/dedup.py decides under locks).
INSERT INTO s3outbox.events (topic, document_id, trace_id, available_at, created_at, updated_at)
SELECT 'dedup', %(document_id)s, %(trace_id)s, coalesce(%(now)s::timestamptz, now()),
       coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now())
WHERE EXISTS (
    SELECT 1 FROM s3outbox.blobs o
    WHERE o.sha256 = %(sha256)s AND o.size = %(size)s AND o.status = 'verified'
      AND o.object_key <> %(key)s
)
RETURNING id;

-- name: read_blob
SELECT b.* FROM s3outbox.blobs b WHERE b.object_key = %(key)s;

-- name: mark_blob_deleted
-- The blob's object was deleted (by the purge of a document of it, or of its key): the
-- blob is gone. A re-check deletes it again (the time is updated).
UPDATE s3outbox.blobs
SET status = 'deleted',
    purged_at = coalesce(%(now)s::timestamptz, now()),
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE object_key = %(key)s AND status IN ('deleting', 'deleted')
RETURNING object_key;

-- name: last_url_expiry
-- The latest expiry of any upload URL for the key: of the documents that reference it, and of
-- the document a purge names (after a dedup, the one that uploaded it references another).
SELECT max(d.upload_expires_at) AS expires_at
FROM s3outbox.documents d
WHERE d.object_key = %(key)s OR d.id = %(document_id)s;

-- name: queue_key_purge
-- A purge naming a key (a blob no document references any more, or its re-check), unless one
-- is unfinished (the partial unique index events_unfinished_object_key).
INSERT INTO s3outbox.events AS e
    (topic, document_id, object_key, trace_id, available_at, created_at, updated_at)
VALUES ('purge', %(document_id)s, %(key)s, %(trace_id)s,
        coalesce(%(available_at)s::timestamptz, %(now)s::timestamptz, now()),
        coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now()))
ON CONFLICT (object_key) WHERE object_key IS NOT NULL AND status IN ('pending', 'dispatched')
DO NOTHING
RETURNING e.id;

-- name: dedup_target
-- Across owners: the verified blob a blob's documents move to, if any: of the same SHA-256 and
-- size, verified before it (the earliest, by verification time, then creation, then key: a
-- total order, so every blob of one content moves to the same one, and never back; the
-- creation time before the random key, so blobs verified at one instant move the same way
-- every time), and referenced by a live document.
SELECT o.object_key
FROM s3outbox.blobs o
JOIN s3outbox.blobs b ON b.object_key = %(key)s
WHERE o.sha256 = b.sha256 AND o.size = b.size AND o.status = 'verified'
  AND b.status = 'verified'
  AND (o.verified_at, o.created_at, o.object_key) < (b.verified_at, b.created_at, b.object_key)
  AND EXISTS (
      SELECT 1 FROM s3outbox.documents d
      WHERE d.object_key = o.object_key
        AND d.status IN ('pending', 'uploaded', 'waiting', 'available')
  )
ORDER BY o.verified_at, o.created_at, o.object_key
LIMIT 1;

-- name: lock_live_documents_of_blob
SELECT d.id FROM s3outbox.documents d
WHERE d.object_key = %(key)s AND d.status IN ('pending', 'uploaded', 'waiting', 'available')
ORDER BY d.id
FOR UPDATE;

-- name: lock_blobs
-- Several blobs, in key order (the lock order of every path), with their state.
SELECT b.* FROM s3outbox.blobs b
WHERE b.object_key = ANY(%(keys)s::text[])
ORDER BY b.object_key
FOR UPDATE;

-- name: move_to_blob
-- Across owners: the live (available) documents of a duplicate blob reference the kept one.
UPDATE s3outbox.documents
SET object_key = %(to_key)s,
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE object_key = %(from_key)s AND status = 'available'
RETURNING id;
