-- Named queries of the chaos run (harness/chaos/run.py): read-only, never shipped.

-- name: chaos_unsettled
-- Documents in a transitional state plus unfinished events, including events scheduled for
-- later (e.g. the purge re-check after a URL expires): the run has settled at 0.
SELECT (SELECT count(*) FROM s3outbox.documents
        WHERE status IN ('pending', 'uploaded', 'deleting'))
     + (SELECT count(*) FROM s3outbox.events
        WHERE status IN ('pending', 'dispatched'));

-- name: chaos_document_outcomes
SELECT id, status, reason FROM s3outbox.documents WHERE id = ANY(%(ids)s);

-- name: chaos_hold_quota
-- A slow app transaction: it locks an owner's quota row and keeps it until it ends.
SELECT owner_id FROM s3outbox.quotas WHERE owner_id = %(owner)s FOR UPDATE;

-- name: chaos_figures
-- The figures a run prints every minute: documents in a final state; dead events; documents
-- lost (in a transitional state for over %(margin)s seconds with nothing left that could
-- move them: no unfinished event); rows still waiting (as chaos_unsettled).
SELECT (SELECT count(*) FROM s3outbox.documents
        WHERE status IN ('available', 'rejected', 'expired', 'deleted')) AS finished,
       (SELECT count(*) FROM s3outbox.events WHERE status = 'dead') AS dead,
       (SELECT count(*) FROM s3outbox.documents d
        WHERE (d.status IN ('uploaded', 'deleting')
               OR (d.status = 'pending'
                   AND d.upload_expires_at < now() - make_interval(secs => %(margin)s)))
          AND d.updated_at < now() - make_interval(secs => %(margin)s)
          AND NOT EXISTS (SELECT 1 FROM s3outbox.events e
                          WHERE e.document_id = d.id AND e.status IN ('pending', 'dispatched'))
       ) AS lost,
       (SELECT count(*) FROM s3outbox.documents
        WHERE status IN ('pending', 'uploaded', 'deleting'))
     + (SELECT count(*) FROM s3outbox.events
        WHERE status IN ('pending', 'dispatched')) AS waiting;

-- name: chaos_failure_stats
-- What the events went through (read once the run settled). A lock timeout or a 403 shows
-- in last_error while nothing later overwrote it, so those two counts are lower bounds.
SELECT coalesce(sum(failures), 0) AS failed_attempts,
       coalesce(max(failures), 0) AS most_failures,
       count(*) FILTER (WHERE failures > 0) AS events_that_failed,
       count(*) FILTER (WHERE last_error LIKE '%lock timeout%') AS lock_timeouts,
       count(*) FILTER (WHERE last_error LIKE '%access_denied%') AS access_denied,
       count(*) FILTER (WHERE rescues > 0) AS rescued,
       count(*) FILTER (WHERE status = 'dead') AS dead
FROM s3outbox.events;

-- name: chaos_waiting
-- What is still waiting while the run settles, by kind, with the latest due time of each
-- (seconds from now; a document's: its URL's expiry).
SELECT what, n, extract(epoch FROM due - now())::float8 AS due_in
FROM (
    SELECT 'document ' || status AS what, count(*) AS n, max(upload_expires_at) AS due
    FROM s3outbox.documents WHERE status IN ('pending', 'uploaded', 'deleting')
    GROUP BY status
    UNION ALL
    SELECT 'event ' || topic || ' ' || status, count(*), max(available_at)
    FROM s3outbox.events WHERE status IN ('pending', 'dispatched')
    GROUP BY topic, status
) w
ORDER BY what;
