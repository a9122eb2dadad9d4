-- Named queries of the operator views: `s3-outbox status`, `events show|retry`, and the
-- database gauges of the metrics collector (worker/metrics.py).

-- name: event_counts
SELECT topic, status, count(*)::bigint AS n FROM s3outbox.events GROUP BY topic, status;

-- name: document_counts
SELECT status, count(*)::bigint AS n FROM s3outbox.documents GROUP BY status;

-- name: unfinished_event_counts
-- The metrics' exact counts: the states that stay small (pending, dispatched, dead) by topic,
-- each through its partial index, so a scrape never reads the finished events.
SELECT topic, 'pending' AS status, count(*)::bigint AS n
FROM s3outbox.events WHERE status = 'pending' GROUP BY topic
UNION ALL
SELECT topic, 'dispatched', count(*)::bigint FROM s3outbox.events
WHERE status = 'dispatched' GROUP BY topic
UNION ALL
SELECT topic, 'dead', count(*)::bigint FROM s3outbox.events WHERE status = 'dead' GROUP BY topic;

-- name: done_event_sample
-- Finished events by topic among at most `cap` + 1 of them: the exact counts while there
-- are no more than `cap` (the walk is bounded whatever the table holds).
SELECT topic, count(*)::bigint AS n
FROM (SELECT topic FROM s3outbox.events WHERE status = 'done' LIMIT %(cap)s + 1) AS sample
GROUP BY topic;

-- name: done_event_estimate
-- The planner's estimate of finished events: the entries of the partial index of done events
-- (pg_class.reltuples, refreshed by VACUUM and ANALYZE; -1 when never measured), and the
-- topics' frequencies among all events (pg_stats; none before the first ANALYZE).
-- `column`: the events' topic column.
SELECT i.reltuples::float8 AS total, f.topic, f.freq::float8 AS freq
FROM pg_class i
LEFT JOIN (
    SELECT v.topic, v.freq
    FROM pg_stats s
    JOIN pg_class t ON t.oid = 's3outbox.events'::regclass AND s.tablename = t.relname
    CROSS JOIN LATERAL unnest(s.most_common_vals::text::text[], s.most_common_freqs)
        AS v(topic, freq)
    WHERE s.schemaname = 's3outbox' AND s.attname = %(column)s
) f ON true
WHERE i.oid = 's3outbox.events_done_age'::regclass;

-- name: document_counts_capped
-- Documents of each state, counted exactly up to `cap` + 1 (a bounded walk of the status
-- index per state, whatever the table holds).
SELECT s.status,
       (SELECT count(*) FROM (SELECT 1 FROM s3outbox.documents d
                              WHERE d.status = s.status LIMIT %(cap)s + 1) AS x)::bigint AS n
FROM unnest(%(statuses)s::text[]) AS s(status);

-- name: document_estimates
-- The planner's estimate of documents by state: the table's rows (pg_class.reltuples) times
-- each state's frequency (pg_stats; none before the first ANALYZE). `column`: the documents'
-- status column.
SELECT v.status, (greatest(c.reltuples, 0) * v.freq)::float8 AS estimate
FROM pg_class c
JOIN pg_stats s ON s.schemaname = 's3outbox' AND s.tablename = c.relname
CROSS JOIN LATERAL unnest(s.most_common_vals::text::text[], s.most_common_freqs)
    AS v(status, freq)
WHERE c.oid = 's3outbox.documents'::regclass AND s.attname = %(column)s;

-- name: event_lag
-- How far behind we are: the age of the oldest due pending event (the relay's lag), of the
-- oldest dispatched one, and, since its creation, of the oldest event in flight (a message
-- sent again keeps its age), plus the oldest confirmed document not verified yet (the
-- workers' lag as users see it). Each is the first entry of a partial index (dispatched events
-- are few: relay_max_in_flight), so it is cheap at any table size, finished events included.
SELECT
    coalesce((SELECT extract(epoch FROM now() - min(e.available_at))
              FROM s3outbox.events e
              WHERE e.status = 'pending' AND e.available_at <= now()), 0)::float8
        AS oldest_pending_seconds,
    coalesce((SELECT extract(epoch FROM now() - min(e.dispatched_at))
              FROM s3outbox.events e WHERE e.status = 'dispatched'), 0)::float8
        AS oldest_dispatched_seconds,
    coalesce((SELECT extract(epoch FROM now() - min(e.created_at))
              FROM s3outbox.events e WHERE e.status = 'dispatched'), 0)::float8
        AS oldest_in_flight_seconds,
    coalesce((SELECT extract(epoch FROM now() - min(d.confirmed_at))
              FROM s3outbox.documents d WHERE d.status = 'uploaded'), 0)::float8
        AS oldest_unverified_seconds;

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

-- name: blob_counts_capped
-- Blobs of each state, counted exactly up to `cap` + 1 (a bounded walk of an index per
-- state): the metrics' count. `verified` walks blobs_verified_content, the other states
-- blobs_unverified_status (whose predicate the `<> 'verified'` below proves).
SELECT 'verified' AS status,
       (SELECT count(*) FROM (SELECT 1 FROM s3outbox.blobs b
                              WHERE b.status = 'verified' LIMIT %(cap)s + 1) AS x)::bigint AS n
WHERE 'verified' = ANY(%(statuses)s::text[])
UNION ALL
SELECT s.status,
       (SELECT count(*) FROM (SELECT 1 FROM s3outbox.blobs b
                              WHERE b.status = s.status AND b.status <> 'verified'
                              LIMIT %(cap)s + 1) AS x)::bigint AS n
FROM unnest(%(statuses)s::text[]) AS s(status)
WHERE s.status <> 'verified';

-- name: blob_estimates
-- The planner's estimate of blobs by state, as document_estimates. `column`: the status column.
SELECT v.status, (greatest(c.reltuples, 0) * v.freq)::float8 AS estimate
FROM pg_class c
JOIN pg_stats s ON s.schemaname = 's3outbox' AND s.tablename = c.relname
CROSS JOIN LATERAL unnest(s.most_common_vals::text::text[], s.most_common_freqs)
    AS v(status, freq)
WHERE c.oid = 's3outbox.blobs'::regclass AND s.attname = %(column)s;

-- name: storage_bytes
-- What storage holds against what owners are charged: the bytes of verified blobs (each
-- stored once) and the sum of the documents' charges (each document pays its size); the
-- difference is what sharing blobs saves.
SELECT coalesce((SELECT sum(size) FROM s3outbox.blobs WHERE status = 'verified'), 0)::bigint
           AS stored_bytes,
       coalesce((SELECT sum(used_bytes) FROM s3outbox.quotas), 0)::bigint AS charged_bytes;
