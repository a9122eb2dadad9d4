-- Named queries of the operator tools: `s3-outbox status`, `s3-outbox events show|retry`
-- and the quota gauges of the metrics collector. Read-mostly; the one write (retry) is in
-- worker/queries.sql.

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

-- name: document_events
-- Every event of one document, oldest first (for `events show`).
SELECT id, topic, status, attempts, failures, created_at, finished_at
FROM s3outbox.events WHERE document_id = %(document_id)s ORDER BY id;
