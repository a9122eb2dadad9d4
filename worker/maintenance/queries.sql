-- Named queries of the sweeper's maintenance jobs (worker/maintenance/).
-- `now` is a parameter wherever time matters: NULL means the database's now().

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

-- name: prune_done_events
DELETE FROM s3outbox.events
WHERE id IN (
    SELECT id FROM s3outbox.events
    WHERE status = 'done'
      AND finished_at <= coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(retention)s)
    LIMIT %(limit)s
)
RETURNING id;
