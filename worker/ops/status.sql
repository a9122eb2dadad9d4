-- Named queries of the operator views: `s3-outbox status`, `events show|retry`, and the
-- database gauges of the metrics collector (worker/metrics.py).

-- name: event_counts
SELECT topic, status, count(*)::bigint AS n FROM s3outbox.events GROUP BY topic, status;

-- name: document_counts
SELECT status, count(*)::bigint AS n FROM s3outbox.documents GROUP BY status;

-- name: event_lag
-- How far behind we are: the age of the oldest due pending event (the relay's lag), of the
-- oldest dispatched one, and, since its creation, of the oldest event in flight (a message
-- sent again keeps its age), plus the oldest confirmed document not verified yet (the
-- workers' lag as users see it). Dispatched events are few (relay_max_in_flight) and the
-- unverified document is one entry of a partial index: cheap at any table size.
SELECT
    coalesce(extract(epoch FROM now() - min(available_at) FILTER (
        WHERE status = 'pending' AND available_at <= now())), 0)::float8 AS oldest_pending_seconds,
    coalesce(extract(epoch FROM now() - min(dispatched_at) FILTER (
        WHERE status = 'dispatched')), 0)::float8 AS oldest_dispatched_seconds,
    coalesce(extract(epoch FROM now() - min(created_at) FILTER (
        WHERE status = 'dispatched')), 0)::float8 AS oldest_in_flight_seconds,
    coalesce((SELECT extract(epoch FROM now() - min(d.confirmed_at))
              FROM s3outbox.documents d WHERE d.status = 'uploaded'), 0)::float8
        AS oldest_unverified_seconds
FROM s3outbox.events
WHERE status IN ('pending', 'dispatched');

-- name: lag_by_topic
-- Per topic: age of the oldest due pending event and of the oldest dispatched one.
SELECT topic,
    coalesce(extract(epoch FROM now() - min(available_at) FILTER (
        WHERE status = 'pending' AND available_at <= now())), 0)::float8 AS oldest_pending_seconds,
    coalesce(extract(epoch FROM now() - min(dispatched_at) FILTER (
        WHERE status = 'dispatched')), 0)::float8 AS oldest_dispatched_seconds,
    count(*) FILTER (WHERE status = 'pending' AND available_at > now())::bigint AS scheduled
FROM s3outbox.events
WHERE status IN ('pending', 'dispatched')
GROUP BY topic
ORDER BY topic;

-- name: dead_events
SELECT id, topic, document_id, attempts, failures, last_error, finished_at
FROM s3outbox.events WHERE status = 'dead' ORDER BY id DESC LIMIT %(limit)s;

-- name: quota_top
SELECT owner_id, limit_bytes, used_bytes, reserved_bytes
FROM s3outbox.quotas ORDER BY used_bytes + reserved_bytes DESC LIMIT %(limit)s;

-- name: quota_totals
-- Quota bytes summed over every owner, and how many owners use 90% or more of a non-zero limit.
SELECT coalesce(sum(used_bytes), 0)::bigint AS used_bytes,
       coalesce(sum(reserved_bytes), 0)::bigint AS reserved_bytes,
       coalesce(sum(limit_bytes), 0)::bigint AS limit_bytes,
       count(*)::bigint AS owners,
       count(*) FILTER (
           WHERE limit_bytes > 0
             AND (used_bytes + reserved_bytes)::numeric >= 0.9 * limit_bytes
       )::bigint AS owners_above_90_percent
FROM s3outbox.quotas;

-- name: retry_candidates
-- The events `events retry` is about to send again, locked, with their state before it.
SELECT id, topic, document_id, status, attempts, failures, rescues, last_error
FROM s3outbox.events
WHERE status = ANY(%(statuses)s::text[])
  AND (%(topic)s::text IS NULL OR topic = %(topic)s::text)
  AND (%(id)s::bigint IS NULL OR id = %(id)s::bigint)
ORDER BY id
FOR UPDATE;

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

-- name: document_events
-- Every event of one document, oldest first (for `events show`).
SELECT id, topic, status, attempts, failures, created_at, finished_at
FROM s3outbox.events WHERE document_id = %(document_id)s ORDER BY id;

-- name: bucket_walk_progress
-- Where the sweeper's bucket walk is (worker/maintenance/bucket_walk.py), and the age of its
-- last completed pass (of the current one while none has completed).
SELECT position, pass_started_at, last_pass_finished_at, last_pass_seconds,
       extract(epoch FROM now() - coalesce(last_pass_finished_at, pass_started_at, updated_at))
           ::float8 AS last_pass_age_seconds
FROM s3outbox.maintenance_cursors
WHERE name = %(name)s;

-- name: blob_counts
-- Blobs (stored objects) by state (issue 12).
SELECT status, count(*)::bigint AS n FROM s3outbox.blobs GROUP BY status;

-- name: storage_bytes
-- What storage holds against what owners are charged: the bytes of verified blobs (each
-- stored once) and the sum of the documents' charges (each document pays its size); the
-- difference is what sharing blobs saves.
SELECT coalesce((SELECT sum(size) FROM s3outbox.blobs WHERE status = 'verified'), 0)::bigint
           AS stored_bytes,
       coalesce((SELECT sum(used_bytes) FROM s3outbox.quotas), 0)::bigint AS charged_bytes;
