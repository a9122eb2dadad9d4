-- Named queries of orphan objects (worker/orphans.py), shared by `s3-outbox reconcile` and
-- the sweeper's bucket walk.
-- `now` is a parameter wherever time matters: NULL means the database's now().

-- name: orphans_documents_by_keys
-- One page of listed keys -> the documents that reference each (several may share a blob):
-- whether one is live, one is deleting, whether a document's own purge (object_key NULL) is
-- already queued, and the latest of them (for the report).
SELECT d.object_key,
       (array_agg(d.id ORDER BY d.created_at DESC, d.id))[1] AS id,
       (array_agg(d.status ORDER BY d.created_at DESC, d.id))[1] AS status,
       bool_or(d.status IN ('pending', 'uploaded', 'waiting', 'available')) AS live,
       bool_or(d.status = 'deleting') AS deleting,
       bool_or(EXISTS (
           SELECT 1 FROM s3outbox.events e
           WHERE e.document_id = d.id AND e.topic = 'purge' AND e.object_key IS NULL
             AND e.status IN ('pending', 'dispatched')
       )) AS purge_queued
FROM s3outbox.documents d
WHERE d.object_key = ANY(%(keys)s::text[])
GROUP BY d.object_key;

-- name: orphans_key_purges_queued
SELECT e.object_key FROM s3outbox.events e
WHERE e.object_key = ANY(%(keys)s::text[]) AND e.topic = 'purge'
  AND e.status IN ('pending', 'dispatched');

-- name: orphans_queue_key_purges
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

-- name: orphan_uploads_documents_by_keys
-- One page of listed multipart uploads -> the documents of their keys: an upload is still
-- wanted only while a pending or uploaded document holds its id (a multipart blob has one
-- document).
SELECT d.object_key, d.id, d.status, d.upload_id
FROM s3outbox.documents d
WHERE d.object_key = ANY(%(keys)s::text[]) AND d.part_size IS NOT NULL;
