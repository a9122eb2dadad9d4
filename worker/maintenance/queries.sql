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

-- name: stale_dispatched
-- Dispatched long ago and not finished: what a rescue looks at (keyset pages, no locks).
-- `worker_gone`: a worker started this attempt longer ago than any attempt may run (the
-- setting is kept above the actor time limit), so it died.
SELECT id, topic, attempts, message_id,
       (running AND started_at <= coalesce(%(now)s::timestamptz, now())
                                   - make_interval(secs => %(stale_after)s)) AS worker_gone
FROM s3outbox.events
WHERE status = 'dispatched'
  AND dispatched_at <= coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(stale_after)s)
  AND id > %(after)s
ORDER BY id
LIMIT %(limit)s;

-- name: resend_events
-- Back to pending, so a relay sends them again: their message is lost (the broker no longer
-- holds it) or their worker died. Never a failure by itself, so no outage or backlog can
-- make an event dead: a worker that died is counted when the event next starts (it is still
-- marked running). Compare-and-set on the attempt the rescue looked at; wakes the relays.
WITH resent AS (
    UPDATE s3outbox.events e
    SET status = 'pending',
        rescues = e.rescues + 1,
        available_at = coalesce(%(now)s::timestamptz, now()),
        updated_at = coalesce(%(now)s::timestamptz, now())
    FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS t(id, attempts)
    WHERE e.id = t.id AND e.attempts = t.attempts AND e.status = 'dispatched'
    RETURNING e.id, e.topic
), wake AS (
    SELECT pg_notify('s3outbox_events', '') FROM (SELECT 1 FROM resent LIMIT 1) any_resent
)
SELECT r.id, r.topic FROM resent r LEFT JOIN wake ON true;

-- name: prune_done_events
DELETE FROM s3outbox.events
WHERE id IN (
    SELECT id FROM s3outbox.events
    WHERE status = 'done'
      AND finished_at <= coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(retention)s)
    LIMIT %(limit)s
)
RETURNING id;

-- name: walk_cursor
-- Where the bucket walk is (a row created at the start of the bucket when missing), and the
-- clock this page decides with. The INSERT's row is invisible to the second SELECT of the
-- same statement, so exactly one row comes back either way.
WITH clock AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS clock
), created AS (
    INSERT INTO s3outbox.maintenance_cursors AS m (name, position, updated_at)
    SELECT %(name)s, '', clock.clock FROM clock
    ON CONFLICT (name) DO NOTHING
    RETURNING m.position, m.pass_started_at
)
SELECT c.position, c.pass_started_at, clock.clock FROM created c CROSS JOIN clock
UNION ALL
SELECT m.position, m.pass_started_at, clock.clock
FROM s3outbox.maintenance_cursors m CROSS JOIN clock
WHERE m.name = %(name)s;

-- name: walk_advance
-- Move the cursor past a page the walk has examined: compare-and-set on the position it
-- listed from, so of two sweepers that listed the same page one moves it (their purges are
-- queued once: a unique index). The last page of a pass wraps the cursor to the start ('')
-- and records the pass: when it started (its first page was listed), ended, and took.
UPDATE s3outbox.maintenance_cursors m
SET position = %(next)s,
    pass_started_at = CASE WHEN %(finished)s THEN NULL
                           ELSE coalesce(m.pass_started_at, %(listed_at)s) END,
    last_pass_finished_at = CASE WHEN %(finished)s THEN coalesce(%(now)s::timestamptz, now())
                                 ELSE m.last_pass_finished_at END,
    last_pass_seconds = CASE WHEN %(finished)s
        THEN greatest(extract(epoch FROM coalesce(%(now)s::timestamptz, now())
                                         - coalesce(m.pass_started_at, %(listed_at)s)), 0)
        ELSE m.last_pass_seconds END,
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE m.name = %(name)s AND m.position = %(position)s
RETURNING m.last_pass_seconds;
