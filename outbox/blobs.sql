-- Named queries of blobs (outbox/blobs.py), shared by the library and the workers: the
-- statements that add or remove a document's reference to a blob, and the blob's own
-- compare-and-set transitions. `now` is a parameter wherever time matters: NULL means the
-- database's now(). Literals are DocumentStatus / BlobStatus values.
--
-- The lock order of every path: (event,) quota rows, document rows (in id order), blob rows
-- (in key order). A path may skip a level, never go back up one.

-- name: lock_blob_for_reference
-- A new document is about to reference this blob: lock it (after the documents) and say
-- whether it is still in the state that reference needs (`verified` to share it, `uploading`
-- to wait on it). FOR SHARE: references are added side by side, while a transaction that
-- removes the last one (lock_blob, FOR UPDATE) waits for them to commit, then counts them;
-- or they wait for it, and the row they then lock is `deleting`, so nothing comes back and
-- the caller uploads anew.
SELECT b.object_key, b.status, b.size, b.sha256
FROM s3outbox.blobs b
WHERE b.object_key = %(key)s AND b.status = %(status)s
FOR SHARE;

-- name: lock_blob
-- A transaction that removed a reference (or changes the blob's state) locks the blob after
-- its documents; the next statement then sees every reference committed before this lock.
SELECT b.* FROM s3outbox.blobs b WHERE b.object_key = %(key)s FOR UPDATE;

-- name: release_unreferenced_blob
-- Run after lock_blob, as a new statement: the blob goes `deleting` when no live document
-- references it any more (compare-and-set). The caller's transaction also holds a purge that
-- deletes the object after it commits (invariant 3).
UPDATE s3outbox.blobs b
SET status = 'deleting',
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE b.object_key = %(key)s
  AND b.status IN ('uploading', 'verified')
  AND NOT EXISTS (
      SELECT 1 FROM s3outbox.documents d
      WHERE d.object_key = b.object_key
        AND d.status IN ('pending', 'uploaded', 'waiting', 'available')
  )
RETURNING b.object_key;

-- name: reject_waiting
-- The document uploading a blob left its live state before the blob was verified (deleted,
-- rejected, expired): the documents waiting on that blob are rejected with it, their
-- reservations released, in one statement. They belong to the uploader's owner, whose quota
-- row the caller holds; they are locked in id order.
WITH waiting AS (
    SELECT d.id, d.owner_id, d.reserved_bytes
    FROM s3outbox.documents d
    WHERE d.object_key = %(key)s AND d.status = 'waiting'
    ORDER BY d.id
    FOR UPDATE
), rejected AS (
    UPDATE s3outbox.documents d
    SET status = 'rejected',
        reason = %(reason)s,
        reserved_bytes = 0,
        updated_at = coalesce(%(now)s::timestamptz, now())
    FROM waiting
    WHERE d.id = waiting.id
    RETURNING d.id
), released AS (
    UPDATE s3outbox.quotas q
    SET reserved_bytes = greatest(q.reserved_bytes - s.reserved, 0),
        updated_at = coalesce(%(now)s::timestamptz, now())
    FROM (SELECT owner_id, sum(reserved_bytes) AS reserved FROM waiting GROUP BY owner_id) s
    WHERE q.owner_id = s.owner_id
)
SELECT count(*) AS rejected FROM rejected;
