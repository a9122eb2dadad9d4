-- Named queries of the workers: relay, actors, sweeper, metrics and the operator CLI.
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

-- name: rescue_stale_events
-- Dispatched too long ago and not finished: the message was lost (Redis restarted empty,
-- a worker was SIGKILLed). Back to pending so a relay sends it again; dead after being lost
-- max_rescues times (a message that kills its worker every time must end somewhere).
WITH stale AS (
    SELECT id FROM s3outbox.events
    WHERE status = 'dispatched'
      AND dispatched_at <= coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(stale_after)s)
    ORDER BY dispatched_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), rescued AS (
    UPDATE s3outbox.events e
    SET rescues = e.rescues + 1,
        status = CASE WHEN e.rescues + 1 >= %(max_rescues)s THEN 'dead' ELSE 'pending' END,
        available_at = coalesce(%(now)s::timestamptz, now()),
        finished_at = CASE WHEN e.rescues + 1 >= %(max_rescues)s
                           THEN coalesce(%(now)s::timestamptz, now()) END,
        last_error = CASE WHEN e.rescues + 1 >= %(max_rescues)s
                          THEN 'gave up: dispatched and never finished ' || (e.rescues + 1)
                               || ' times (message lost or worker killed each time)'
                          ELSE e.last_error END,
        updated_at = coalesce(%(now)s::timestamptz, now())
    FROM stale
    WHERE e.id = stale.id
    RETURNING e.id, e.topic, e.status
), wake AS (
    SELECT pg_notify('s3outbox_events', '') FROM (SELECT 1 FROM rescued LIMIT 1) any_rescued
)
SELECT r.id, r.topic, r.status FROM rescued r LEFT JOIN wake ON true;

-- name: read_event
SELECT e.* FROM s3outbox.events e WHERE e.id = %(id)s;

-- name: lock_event
-- Also returns the clock the handler decides with (the `now` parameter or the database's).
SELECT e.*, coalesce(%(now)s::timestamptz, now()) AS clock
FROM s3outbox.events e WHERE e.id = %(id)s FOR UPDATE;

-- name: complete_event
-- Compare-and-set: a repeated or stale completion of a finished event changes nothing.
UPDATE s3outbox.events
SET status = 'done',
    finished_at = coalesce(%(now)s::timestamptz, now()),
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE id = %(id)s AND status IN ('pending', 'dispatched')
RETURNING id;

-- name: snooze_event
-- Not a failure: the object is not visible yet (eventually consistent store). Try later.
UPDATE s3outbox.events
SET status = 'pending',
    available_at = coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(delay)s),
    last_error = %(error)s,
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE id = %(id)s AND status = 'dispatched' AND attempts = %(attempt)s
RETURNING id;

-- name: fail_event
-- A failed attempt: back to pending after a backoff, or dead after the last one.
-- Only the attempt that is current may record its failure (compare-and-set on attempts).
UPDATE s3outbox.events
SET failures = failures + 1,
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

-- name: read_document_of_event
SELECT d.* FROM s3outbox.documents d
WHERE d.id = (SELECT e.document_id FROM s3outbox.events e WHERE e.id = %(id)s);

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
    %(content_type)s, %(size)s, %(now)s::timestamptz
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

-- name: request_expiry
-- Pending uploads whose URL expired (plus a grace for clock skew): queue one expire event
-- each. The expire actor verifies once: a lost confirm ends available, the rest expired.
WITH due AS (
    SELECT id FROM s3outbox.documents
    WHERE status = 'pending' AND expire_requested_at IS NULL
      AND upload_expires_at <= coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(grace)s)
    ORDER BY upload_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), marked AS (
    UPDATE s3outbox.documents d
    SET expire_requested_at = coalesce(%(now)s::timestamptz, now()),
        updated_at = coalesce(%(now)s::timestamptz, now())
    FROM due
    WHERE d.id = due.id
    RETURNING d.id, d.trace_id
)
INSERT INTO s3outbox.events (topic, document_id, trace_id, available_at, created_at, updated_at)
SELECT 'expire', m.id, m.trace_id, coalesce(%(now)s::timestamptz, now()),
       coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now())
FROM marked m
RETURNING document_id;

-- name: prune_done_events
DELETE FROM s3outbox.events
WHERE id IN (
    SELECT id FROM s3outbox.events
    WHERE status = 'done'
      AND finished_at <= coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(retention)s)
    LIMIT %(limit)s
)
RETURNING id;

-- name: retry_events
-- Operator: dead (or any unfinished) events back to pending, failures reset.
WITH picked AS (
    UPDATE s3outbox.events
    SET status = 'pending', failures = 0, rescues = 0, finished_at = NULL,
        available_at = now(), updated_at = now()
    WHERE status = ANY(%(statuses)s::text[])
      AND (%(topic)s::text IS NULL OR topic = %(topic)s::text)
      AND (%(id)s::bigint IS NULL OR id = %(id)s::bigint)
    RETURNING id
), wake AS (
    SELECT pg_notify('s3outbox_events', '') FROM (SELECT 1 FROM picked LIMIT 1) any_picked
)
SELECT p.id FROM picked p LEFT JOIN wake ON true;

-- name: event_counts
SELECT topic, status, count(*)::bigint AS n FROM s3outbox.events GROUP BY topic, status;

-- name: document_counts
SELECT status, count(*)::bigint AS n FROM s3outbox.documents GROUP BY status;

-- name: event_lag
-- Age of the oldest due pending event and of the oldest dispatched one: how far behind we are.
SELECT
    coalesce(extract(epoch FROM now() - min(available_at) FILTER (
        WHERE status = 'pending' AND available_at <= now())), 0)::float8 AS oldest_pending_seconds,
    coalesce(extract(epoch FROM now() - min(dispatched_at) FILTER (
        WHERE status = 'dispatched')), 0)::float8 AS oldest_dispatched_seconds
FROM s3outbox.events
WHERE status IN ('pending', 'dispatched');

-- name: dead_events
SELECT id, topic, document_id, attempts, failures, last_error, finished_at
FROM s3outbox.events WHERE status = 'dead' ORDER BY id DESC LIMIT %(limit)s;

-- name: quota_top
SELECT owner_id, limit_bytes, used_bytes, reserved_bytes
FROM s3outbox.quotas ORDER BY used_bytes + reserved_bytes DESC LIMIT %(limit)s;

-- name: invariant_quota_drift
-- Invariant 4: per owner, used/reserved equal the sums over their documents and stay in bounds.
SELECT q.owner_id, q.limit_bytes, q.used_bytes, q.reserved_bytes,
       coalesce(d.charged, 0)::bigint AS charged_sum,
       coalesce(d.reserved, 0)::bigint AS reserved_sum
FROM s3outbox.quotas q
LEFT JOIN (
    SELECT owner_id, sum(charged_bytes) AS charged, sum(reserved_bytes) AS reserved
    FROM s3outbox.documents GROUP BY owner_id
) d ON d.owner_id = q.owner_id
WHERE q.used_bytes < 0 OR q.reserved_bytes < 0
   OR q.used_bytes + q.reserved_bytes > q.limit_bytes
   OR q.used_bytes <> coalesce(d.charged, 0)
   OR q.reserved_bytes <> coalesce(d.reserved, 0);

-- name: invariant_documents_without_quota
SELECT d.owner_id FROM s3outbox.documents d
LEFT JOIN s3outbox.quotas q ON q.owner_id = d.owner_id
WHERE q.owner_id IS NULL AND (d.charged_bytes > 0 OR d.reserved_bytes > 0)
GROUP BY d.owner_id;

-- name: invariant_bad_charges
-- Only available (or deleting, until purged) documents hold a charge; only pending/uploaded a
-- reservation; an available document was verified at its declared size.
SELECT id, status, charged_bytes, reserved_bytes, declared_size, verified_size
FROM s3outbox.documents
WHERE (charged_bytes > 0 AND status NOT IN ('available', 'deleting'))
   OR (reserved_bytes > 0 AND status NOT IN ('pending', 'uploaded'))
   OR (status = 'available' AND (verified_at IS NULL OR verified_size IS DISTINCT FROM declared_size
                                 OR charged_bytes <> declared_size))
   OR (status IN ('pending', 'uploaded') AND reserved_bytes <> declared_size);

-- name: invariant_unfinished_events
-- Events that should have finished by now; a pending one scheduled for later is not late.
SELECT id, topic, status, document_id, attempts, failures, last_error
FROM s3outbox.events
WHERE status = 'dispatched'
   OR (status = 'pending' AND available_at <= coalesce(%(now)s::timestamptz, now()))
ORDER BY id;

-- name: invariant_unsettled_documents
-- Once everything settled, no document waits in a transitional state.
SELECT id, status FROM s3outbox.documents
WHERE status IN ('uploaded', 'deleting')
   OR (status = 'pending' AND upload_expires_at <= coalesce(%(now)s::timestamptz, now()));

-- name: invariant_documents_by_keys
SELECT object_key, id, status, declared_size, sha256
FROM s3outbox.documents WHERE object_key = ANY(%(keys)s::text[]);

-- name: invariant_available_page
SELECT id, object_key, declared_size, sha256, content_type
FROM s3outbox.documents
WHERE status = 'available' AND id > %(after)s::uuid
ORDER BY id LIMIT %(limit)s;

-- name: reconcile_clock
-- Repairs, from here to the end: `s3-outbox reconcile` (worker/reconcile.py), `s3-outbox
-- quota audit` (worker/quota_audit.py) and the purge of an orphan object by key (handlers).
SELECT coalesce(%(now)s::timestamptz, now()) AS now;

-- name: reconcile_documents_by_keys
-- One page of listed keys -> their document rows, and whether the document's own purge
-- (object_key NULL) is already queued.
SELECT d.object_key, d.id, d.status,
       EXISTS (
           SELECT 1 FROM s3outbox.events e
           WHERE e.document_id = d.id AND e.topic = 'purge' AND e.object_key IS NULL
             AND e.status IN ('pending', 'dispatched')
       ) AS purge_queued
FROM s3outbox.documents d
WHERE d.object_key = ANY(%(keys)s::text[]);

-- name: reconcile_key_purges_queued
SELECT e.object_key FROM s3outbox.events e
WHERE e.object_key = ANY(%(keys)s::text[]) AND e.topic = 'purge'
  AND e.status IN ('pending', 'dispatched');

-- name: reconcile_queue_key_purges
-- Purge events for orphan objects, one per key; a key already queued is skipped (the
-- partial unique index events_unfinished_object_key makes this safe under concurrency).
INSERT INTO s3outbox.events AS e
    (topic, document_id, object_key, trace_id, available_at, created_at, updated_at)
SELECT 'purge', t.document_id, t.object_key, %(trace_id)s,
       coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now()),
       coalesce(%(now)s::timestamptz, now())
FROM unnest(%(document_ids)s::uuid[], %(keys)s::text[]) AS t(document_id, object_key)
ON CONFLICT (object_key) WHERE object_key IS NOT NULL AND status IN ('pending', 'dispatched')
DO NOTHING
RETURNING e.id, e.object_key;

-- name: live_document_by_key
SELECT d.id, d.status FROM s3outbox.documents d
WHERE d.object_key = %(key)s AND d.status IN ('pending', 'uploaded', 'available');

-- name: reconcile_available_page
SELECT d.id, d.owner_id, d.object_key, d.declared_size, d.sha256, d.content_type,
       d.charged_bytes
FROM s3outbox.documents d
WHERE d.status = 'available' AND d.id > %(after)s::uuid
ORDER BY d.id LIMIT %(limit)s;

-- name: reconcile_reject_available
-- available -> rejected: its object is missing or differs. Compare-and-set; the caller
-- releases the charge from the quota in the same transaction.
UPDATE s3outbox.documents
SET status = 'rejected',
    reason = %(reason)s,
    verified_size = %(verified_size)s,
    charged_bytes = 0,
    reserved_bytes = 0,
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE id = %(id)s AND status = 'available'
RETURNING id;

-- name: reconcile_stuck_page
-- Documents waiting for an event that no longer exists (lost, dead or pruned):
-- uploaded well past the verification deadline without an unfinished verify event,
-- deleting without an unfinished purge of the document, pending past expiry (and a
-- sweeper round) without an unfinished expire event.
SELECT d.id, d.owner_id, d.status, d.trace_id, s.topic,
       CASE d.status WHEN 'uploaded' THEN d.confirmed_at
                     WHEN 'deleting' THEN d.delete_requested_at
                     ELSE d.upload_expires_at END AS since
FROM s3outbox.documents d
CROSS JOIN LATERAL (
    SELECT CASE d.status WHEN 'uploaded' THEN 'verify'
                         WHEN 'deleting' THEN 'purge'
                         ELSE 'expire' END AS topic
) s
WHERE d.id > %(after)s::uuid
  AND d.status IN ('uploaded', 'deleting', 'pending')
  AND (
      (d.status = 'uploaded' AND d.confirmed_at
          <= coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(uploaded_after)s))
      OR d.status = 'deleting'
      OR (d.status = 'pending' AND d.upload_expires_at
          <= coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(pending_after)s))
  )
  AND NOT EXISTS (
      SELECT 1 FROM s3outbox.events e
      WHERE e.document_id = d.id AND e.topic = s.topic AND e.object_key IS NULL
        AND e.status IN ('pending', 'dispatched')
  )
ORDER BY d.id LIMIT %(limit)s;

-- name: reconcile_requeue_event
-- Queue the document's missing event unless one is unfinished. Run after lock_document, in
-- the same transaction: every writer of a document's events holds that row lock.
INSERT INTO s3outbox.events (topic, document_id, trace_id, available_at, created_at, updated_at)
SELECT %(topic)s, %(id)s, %(trace_id)s, coalesce(%(now)s::timestamptz, now()),
       coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now())
WHERE NOT EXISTS (
    SELECT 1 FROM s3outbox.events e
    WHERE e.document_id = %(id)s AND e.topic = %(topic)s AND e.object_key IS NULL
      AND e.status IN ('pending', 'dispatched')
)
RETURNING id;

-- name: reconcile_mark_expire_requested
UPDATE s3outbox.documents
SET expire_requested_at = coalesce(%(now)s::timestamptz, now()),
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE id = %(id)s AND status = 'pending'
RETURNING id;

-- name: quota_audit_page
-- Quota rows in keyset pages, each with the sums over its owner's documents.
SELECT q.owner_id, q.limit_bytes, q.used_bytes, q.reserved_bytes,
       coalesce(sum(d.charged_bytes), 0)::bigint AS charged_sum,
       coalesce(sum(d.reserved_bytes), 0)::bigint AS reserved_sum
FROM (
    SELECT * FROM s3outbox.quotas
    WHERE owner_id > %(after)s ORDER BY owner_id LIMIT %(limit)s
) q
LEFT JOIN s3outbox.documents d ON d.owner_id = q.owner_id
GROUP BY q.owner_id, q.limit_bytes, q.used_bytes, q.reserved_bytes
ORDER BY q.owner_id;

-- name: quota_audit_missing_rows
-- Owners whose documents hold bytes but who have no quota row.
SELECT d.owner_id,
       sum(d.charged_bytes)::bigint AS charged_sum,
       sum(d.reserved_bytes)::bigint AS reserved_sum
FROM s3outbox.documents d
WHERE NOT EXISTS (SELECT 1 FROM s3outbox.quotas q WHERE q.owner_id = d.owner_id)
GROUP BY d.owner_id
HAVING sum(d.charged_bytes) > 0 OR sum(d.reserved_bytes) > 0
ORDER BY d.owner_id;

-- name: quota_audit_lock
-- The quota row, locked: every writer of an owner's document charges and reservations
-- updates this row in the same transaction, so sums read after this lock are consistent.
SELECT owner_id, limit_bytes, used_bytes, reserved_bytes
FROM s3outbox.quotas WHERE owner_id = %(owner_id)s FOR UPDATE;

-- name: quota_audit_sums
SELECT coalesce(sum(charged_bytes), 0)::bigint AS charged_sum,
       coalesce(sum(reserved_bytes), 0)::bigint AS reserved_sum
FROM s3outbox.documents WHERE owner_id = %(owner_id)s;

-- name: quota_audit_fix
-- Set used/reserved to the documents' sums; refused (no row back) when that would not fit
-- the limit, so the quotas_bounds CHECK is never tripped.
UPDATE s3outbox.quotas
SET used_bytes = %(used)s,
    reserved_bytes = %(reserved)s,
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE owner_id = %(owner_id)s
  AND %(used)s::bigint + %(reserved)s::bigint <= limit_bytes
RETURNING owner_id;

-- name: quota_audit_create_row
-- A missing quota row, created with the default limit (as the library would) and the
-- documents' sums; nothing when another transaction created it first or it would not fit.
INSERT INTO s3outbox.quotas (owner_id, limit_bytes, used_bytes, reserved_bytes,
                             created_at, updated_at)
SELECT %(owner_id)s, %(limit)s, %(used)s, %(reserved)s,
       coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now())
WHERE %(used)s::bigint + %(reserved)s::bigint <= %(limit)s::bigint
ON CONFLICT (owner_id) DO NOTHING
RETURNING owner_id;
