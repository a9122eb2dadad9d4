-- Named queries of the repairs: `s3-outbox reconcile` (worker/ops/reconcile.py) and
-- `s3-outbox quota audit` (worker/ops/quota_audit.py).
-- `now` is a parameter wherever time matters: NULL means the database's now().

-- name: reconcile_clock
SELECT coalesce(%(now)s::timestamptz, now()) AS now;

-- name: reconcile_available_blob_page
-- The blobs that available documents reference, in keyset pages by key, with those documents
-- (id, owner, charge) and what the object must be: the blob's size, SHA-256 and the type it
-- was uploaded with; a multipart blob's part digests, in part order, from its document (its
-- composite checksum is computed from them; a multipart blob has one document).
SELECT g.object_key, g.size AS declared_size, g.sha256, g.content_type, g.blob_status,
       g.document_ids, g.owner_ids, g.charged, g.part_count,
       (SELECT array_agg(p.sha256 ORDER BY p.part_number)
        FROM s3outbox.document_parts p
        WHERE p.document_id = g.document_ids[1] AND g.part_count IS NOT NULL) AS part_digests
FROM (
    SELECT b.object_key, b.size, b.sha256, b.content_type, b.status AS blob_status,
           array_agg(d.id ORDER BY d.id) AS document_ids,
           array_agg(d.owner_id ORDER BY d.id) AS owner_ids,
           array_agg(d.charged_bytes ORDER BY d.id) AS charged,
           max(d.part_count) AS part_count
    FROM s3outbox.blobs b
    JOIN s3outbox.documents d ON d.object_key = b.object_key AND d.status = 'available'
    WHERE b.object_key > %(after)s
    GROUP BY b.object_key
    ORDER BY b.object_key
    LIMIT %(limit)s
) g
ORDER BY g.object_key;

-- name: reconcile_lock_quotas_of_blob
-- The quota rows of the owners of a blob's available documents, in owner order (the first
-- locks of a repair of a broken blob: the order of every path).
SELECT q.owner_id FROM s3outbox.quotas q
WHERE q.owner_id IN (
    SELECT d.owner_id FROM s3outbox.documents d
    WHERE d.object_key = %(key)s AND d.status = 'available'
)
ORDER BY q.owner_id
FOR UPDATE;

-- name: reconcile_lock_available_of_blob
-- Then the blob's available documents, in id order (a new statement after the quota locks:
-- it sees every change committed before them).
SELECT d.id, d.charged_bytes FROM s3outbox.documents d
WHERE d.object_key = %(key)s AND d.status = 'available'
ORDER BY d.id
FOR UPDATE;

-- name: reconcile_reject_available
-- available -> rejected: its object is missing or differs. Compare-and-set; returns the
-- charge it held (the caller releases it from the quota in the same transaction).
UPDATE s3outbox.documents d
SET status = 'rejected',
    reason = %(reason)s,
    verified_size = %(verified_size)s,
    charged_bytes = 0,
    reserved_bytes = 0,
    updated_at = coalesce(%(now)s::timestamptz, now())
FROM (SELECT id, charged_bytes FROM s3outbox.documents WHERE id = %(id)s) prior
WHERE d.id = prior.id AND d.status = 'available'
RETURNING d.id, d.owner_id, d.trace_id, prior.charged_bytes;

-- name: reconcile_stuck_page
-- Documents waiting for an event that no longer exists (lost, dead or pruned):
-- uploaded well past the verification deadline without an unfinished verify event,
-- deleting without an unfinished purge of the document, pending past expiry (and a
-- sweeper round) without an unfinished expire event.
SELECT d.id, d.owner_id, d.status, d.trace_id, s.topic,
       CASE d.status WHEN 'uploaded' THEN d.confirmed_at
                     WHEN 'deleting' THEN d.delete_requested_at
                     ELSE d.upload_expires_at END AS since
FROM s3outbox.documents d
CROSS JOIN LATERAL (
    SELECT CASE d.status WHEN 'uploaded' THEN 'verify'
                         WHEN 'deleting' THEN 'purge'
                         ELSE 'expire' END AS topic
) s
WHERE d.id > %(after)s::uuid
  AND d.status IN ('uploaded', 'deleting', 'pending')
  AND (
      (d.status = 'uploaded' AND d.confirmed_at
          <= coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(uploaded_after)s))
      OR d.status = 'deleting'
      OR (d.status = 'pending' AND d.upload_expires_at
          <= coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(pending_after)s))
  )
  AND NOT EXISTS (
      SELECT 1 FROM s3outbox.events e
      WHERE e.document_id = d.id AND e.topic = s.topic AND e.object_key IS NULL
        AND e.status IN ('pending', 'dispatched')
  )
ORDER BY d.id LIMIT %(limit)s;

-- name: reconcile_requeue_event
-- Queue the document's missing event unless one is unfinished. Run after lock_document, in
-- the same transaction: every writer of a document's events holds that row lock.
INSERT INTO s3outbox.events (topic, document_id, trace_id, available_at, created_at, updated_at)
SELECT %(topic)s, %(id)s, %(trace_id)s, coalesce(%(now)s::timestamptz, now()),
       coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now())
WHERE NOT EXISTS (
    SELECT 1 FROM s3outbox.events e
    WHERE e.document_id = %(id)s AND e.topic = %(topic)s AND e.object_key IS NULL
      AND e.status IN ('pending', 'dispatched')
)
RETURNING id;

-- name: reconcile_mark_expire_requested
UPDATE s3outbox.documents
SET expire_requested_at = coalesce(%(now)s::timestamptz, now()),
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE id = %(id)s AND status = 'pending'
RETURNING id;

-- name: quota_audit_page
-- Quota rows in keyset pages, each with the sums over its owner's documents.
SELECT q.owner_id, q.limit_bytes, q.used_bytes, q.reserved_bytes,
       coalesce(sum(d.charged_bytes), 0)::bigint AS charged_sum,
       coalesce(sum(d.reserved_bytes), 0)::bigint AS reserved_sum
FROM (
    SELECT * FROM s3outbox.quotas
    WHERE owner_id > %(after)s ORDER BY owner_id LIMIT %(limit)s
) q
LEFT JOIN s3outbox.documents d ON d.owner_id = q.owner_id
GROUP BY q.owner_id, q.limit_bytes, q.used_bytes, q.reserved_bytes
ORDER BY q.owner_id;

-- name: quota_audit_missing_rows
-- Owners whose documents hold bytes but who have no quota row.
SELECT d.owner_id,
       sum(d.charged_bytes)::bigint AS charged_sum,
       sum(d.reserved_bytes)::bigint AS reserved_sum
FROM s3outbox.documents d
WHERE NOT EXISTS (SELECT 1 FROM s3outbox.quotas q WHERE q.owner_id = d.owner_id)
GROUP BY d.owner_id
HAVING sum(d.charged_bytes) > 0 OR sum(d.reserved_bytes) > 0
ORDER BY d.owner_id;

-- name: quota_audit_lock
-- The quota row, locked: every writer of an owner's document charges and reservations
-- updates this row in the same transaction, so sums read after this lock are consistent.
SELECT owner_id, limit_bytes, used_bytes, reserved_bytes
FROM s3outbox.quotas WHERE owner_id = %(owner_id)s FOR UPDATE;

-- name: quota_audit_sums
SELECT coalesce(sum(charged_bytes), 0)::bigint AS charged_sum,
       coalesce(sum(reserved_bytes), 0)::bigint AS reserved_sum
FROM s3outbox.documents WHERE owner_id = %(owner_id)s;

-- name: quota_audit_fix
-- Set used/reserved to the documents' sums; refused (no row back) when that would not fit
-- the limit, so the quotas_bounds CHECK is never tripped.
UPDATE s3outbox.quotas
SET used_bytes = %(used)s,
    reserved_bytes = %(reserved)s,
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE owner_id = %(owner_id)s
  AND %(used)s::bigint + %(reserved)s::bigint <= limit_bytes
RETURNING owner_id;

-- name: quota_audit_create_row
-- A missing quota row, created with the default limit (as the library would) and the
-- documents' sums; nothing when another transaction created it first or it would not fit.
INSERT INTO s3outbox.quotas (owner_id, limit_bytes, used_bytes, reserved_bytes,
                             created_at, updated_at)
SELECT %(owner_id)s, %(limit)s, %(used)s, %(reserved)s,
       coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now())
WHERE %(used)s::bigint + %(reserved)s::bigint <= %(limit)s::bigint
ON CONFLICT (owner_id) DO NOTHING
RETURNING owner_id;

-- name: quota_audit_storage
-- Documents and blobs: how many blobs are live, the bytes verified blobs hold (each content
-- once), and the bytes the documents are charged (each document its size).
SELECT count(*) FILTER (WHERE b.status IN ('uploading', 'verified'))::bigint AS blobs,
       coalesce(sum(b.size) FILTER (WHERE b.status = 'verified'), 0)::bigint AS stored_bytes,
       (SELECT coalesce(sum(d.charged_bytes), 0) FROM s3outbox.documents d)::bigint
           AS charged_bytes
FROM s3outbox.blobs b;
