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
-- Only available (or deleting, until purged) documents hold a charge; only documents that
-- wait for a verification (pending, uploaded, waiting) a reservation; an available document
-- was verified at its declared size.
SELECT id, status, charged_bytes, reserved_bytes, declared_size, verified_size
FROM s3outbox.documents
WHERE (charged_bytes > 0 AND status NOT IN ('available', 'deleting'))
   OR (reserved_bytes > 0 AND status NOT IN ('pending', 'uploaded', 'waiting'))
   OR (status = 'available' AND (verified_at IS NULL OR verified_size IS DISTINCT FROM declared_size
                                 OR charged_bytes <> declared_size))
   OR (status IN ('pending', 'uploaded', 'waiting') AND reserved_bytes <> declared_size);

-- name: invariant_unfinished_events
-- Events that should have finished by now; a pending one scheduled for later is not late.
SELECT id, topic, status, document_id, attempts, failures, last_error
FROM s3outbox.events
WHERE status = 'dispatched'
   OR (status = 'pending' AND available_at <= coalesce(%(now)s::timestamptz, now()))
ORDER BY id;

-- name: invariant_unsettled_documents
-- Once everything settled, no document waits in a transitional state (a waiting one follows
-- the upload it waits on, judged here and by invariant_documents_on_wrong_blobs).
SELECT id, status FROM s3outbox.documents
WHERE status IN ('uploaded', 'deleting')
   OR (status = 'pending' AND upload_expires_at <= coalesce(%(now)s::timestamptz, now()));

-- name: invariant_blobs_deleting
-- Once everything settled, no blob is left being purged.
SELECT object_key FROM s3outbox.blobs WHERE status = 'deleting' ORDER BY object_key;

-- name: invariant_blob_keys
-- Invariant 8: a blob's key is exactly the prefix + the id of a document (uuid::text is the
-- canonical lower-case form): the document that uploaded it.
SELECT b.object_key, b.status
FROM s3outbox.blobs b
WHERE NOT EXISTS (
    SELECT 1 FROM s3outbox.documents d WHERE %(prefix)s::text || d.id::text = b.object_key
)
ORDER BY b.object_key;

-- name: invariant_document_keys
-- Invariant 8: a document that uploads a blob (pending, uploaded) holds exactly its own id's
-- key; every document's key names a blob.
SELECT d.id, d.status, d.object_key
FROM s3outbox.documents d
WHERE (d.status IN ('pending', 'uploaded') AND d.object_key <> %(prefix)s::text || d.id::text)
   OR NOT EXISTS (SELECT 1 FROM s3outbox.blobs b WHERE b.object_key = d.object_key)
ORDER BY d.id;

-- name: invariant_blob_liveness
-- Invariants 3 and 7 for documents and blobs: a blob is live (uploading, verified) exactly
-- while a live document references it.
SELECT r.object_key, r.status, r.live
FROM (
    SELECT b.object_key, b.status,
           count(d.id) FILTER (
               WHERE d.status IN ('pending', 'uploaded', 'waiting', 'available')) AS live
    FROM s3outbox.blobs b
    LEFT JOIN s3outbox.documents d ON d.object_key = b.object_key
    GROUP BY b.object_key, b.status
) r
WHERE (r.status IN ('uploading', 'verified')) <> (r.live > 0)
ORDER BY r.object_key;

-- name: invariant_documents_on_wrong_blobs
-- Invariant 1: an available document's blob is verified; a document that uploads a blob, or
-- waits on it, finds it uploading; a waiting document waits on an upload in progress (a
-- pending or uploaded document of the same blob).
SELECT d.id, d.status, b.object_key, b.status,
       EXISTS (SELECT 1 FROM s3outbox.documents u
               WHERE u.object_key = d.object_key AND u.status IN ('pending', 'uploaded'))
           AS uploading
FROM s3outbox.documents d
JOIN s3outbox.blobs b ON b.object_key = d.object_key
WHERE (d.status = 'available' AND b.status <> 'verified')
   OR (d.status IN ('pending', 'uploaded', 'waiting') AND b.status <> 'uploading')
   OR (d.status = 'waiting' AND NOT EXISTS (
           SELECT 1 FROM s3outbox.documents u
           WHERE u.object_key = d.object_key AND u.status IN ('pending', 'uploaded')))
ORDER BY d.id;

-- name: invariant_documents_unlike_blobs
-- Invariant 1: a live document declares its blob's size and SHA-256.
SELECT d.id, d.declared_size, d.sha256, b.object_key, b.size, b.sha256
FROM s3outbox.documents d
JOIN s3outbox.blobs b ON b.object_key = d.object_key
WHERE d.status IN ('pending', 'uploaded', 'waiting', 'available')
  AND (d.declared_size <> b.size OR d.sha256 IS DISTINCT FROM b.sha256)
ORDER BY d.id;

-- name: invariant_live_keys
-- Of the listed keys, those a live document references (the others are orphans once
-- settled: invariant 7).
SELECT DISTINCT object_key FROM s3outbox.documents
WHERE object_key = ANY(%(keys)s::text[])
  AND status IN ('pending', 'uploaded', 'waiting', 'available');

-- name: invariant_verified_blob_page
-- The blobs available documents reference (keyset pages by key), with those documents and
-- what the object must be: the blob's size, SHA-256 (a multipart blob's: the composite of
-- the part digests its document recorded) and the type it was uploaded with.
SELECT g.object_key, g.size, g.sha256, g.content_type, g.documents, g.part_count,
       (SELECT array_agg(p.sha256 ORDER BY p.part_number)
        FROM s3outbox.document_parts p
        WHERE p.document_id = g.first_document AND g.sha256 IS NULL) AS part_digests
FROM (
    SELECT b.object_key, b.size, b.sha256, b.content_type,
           array_agg(d.id::text ORDER BY d.id) AS documents,
           (array_agg(d.id ORDER BY d.id))[1] AS first_document,
           max(d.part_count) AS part_count
    FROM s3outbox.blobs b
    JOIN s3outbox.documents d ON d.object_key = b.object_key AND d.status = 'available'
    WHERE b.object_key > %(after)s
    GROUP BY b.object_key
    ORDER BY b.object_key LIMIT %(limit)s
) g
ORDER BY g.object_key;

-- name: invariant_uploads_by_keys
-- Invariant 7 for multipart uploads: per listed key, the upload ids its uploading documents
-- (pending, uploaded) hold.
SELECT object_key,
       array_agg(upload_id) FILTER (WHERE status IN ('pending', 'uploaded')
                                      AND upload_id IS NOT NULL) AS held,
       array_agg(DISTINCT status) AS statuses
FROM s3outbox.documents WHERE object_key = ANY(%(keys)s::text[])
GROUP BY object_key;
