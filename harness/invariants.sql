-- Named queries of the invariant checker (harness/invariants.py): read-only, never shipped.
-- The judge keeps its own queries: it reuses nothing of the code it judges.

-- name: invariant_document_counts
SELECT status, count(*)::bigint AS n FROM s3outbox.documents GROUP BY status;

-- name: invariant_event_counts
SELECT status, count(*)::bigint AS n FROM s3outbox.events GROUP BY status;

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

-- name: invariant_foreign_keys
-- Invariant 8: a document's key is exactly the prefix + its own id (uuid::text is the
-- canonical lower-case form); anything else is another document's key or not server-made.
SELECT id, status, object_key FROM s3outbox.documents
WHERE object_key IS DISTINCT FROM %(prefix)s::text || id::text
ORDER BY id;

-- name: invariant_documents_by_keys
SELECT object_key, status FROM s3outbox.documents WHERE object_key = ANY(%(keys)s::text[]);

-- name: invariant_available_page
-- A multipart document's recorded part digests, in order, make its composite checksum.
SELECT d.id, d.object_key, d.declared_size, d.sha256, d.content_type, d.part_count,
       (SELECT array_agg(p.sha256 ORDER BY p.part_number)
        FROM s3outbox.document_parts p
        WHERE p.document_id = d.id AND d.part_count IS NOT NULL) AS part_digests
FROM s3outbox.documents d
WHERE d.status = 'available' AND d.id > %(after)s::uuid
ORDER BY d.id LIMIT %(limit)s;

-- name: invariant_uploads_by_keys
-- Invariant 7 for multipart uploads: the documents of listed uploads' keys.
SELECT object_key, status, upload_id
FROM s3outbox.documents WHERE object_key = ANY(%(keys)s::text[]);
