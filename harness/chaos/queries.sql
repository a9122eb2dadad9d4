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
