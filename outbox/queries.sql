-- Named queries of the library a web app calls. Every one runs in the caller's transaction.
-- `now` is a parameter everywhere time matters: NULL means the database's now().
-- A document named by the caller is found by its id alone: its owner is compared with
-- `IS NOT DISTINCT FROM` (the same as `=` on this NOT NULL column), which no index can
-- serve. With `=`, statistics that have not seen an owner yet (a new owner, a table not
-- analysed since a burst) estimate one row through the owner's indexes as through the
-- primary key, and a plan that took the owner's walked all its live documents per call
-- (tests/integration/test_stale_statistics.py).
-- Status and topic literals here are DocumentStatus / EventStatus / Topic values
-- (tests/test_sql_names.py checks that).

-- name: lock_quota
-- Create the owner's quota row if new, and lock it until the caller's transaction ends.
-- This serialises one owner's upload requests: de-duplication and reservation cannot race.
INSERT INTO s3outbox.quotas AS q (owner_id, limit_bytes)
VALUES (%(owner_id)s, %(default_limit)s)
ON CONFLICT (owner_id) DO UPDATE SET owner_id = q.owner_id
RETURNING q.owner_id, q.limit_bytes, q.used_bytes, q.reserved_bytes;

-- name: request_upload
-- The usual request (content new to its owner) in one statement, without a savepoint: it
-- never raises for a refusal (`outcome`, s3outbox.request_upload in schema.sql). The
-- document's columns come out flat, as every other query returns them.
SELECT r.outcome, r.limit_bytes AS quota_limit_bytes, r.used_bytes AS quota_used_bytes,
       r.quota_reserved_bytes,
       (r.document).*
FROM s3outbox.request_upload(
    %(owner_id)s, %(default_limit)s, %(id)s, %(object_key)s, %(filename)s, %(content_type)s,
    %(size)s, %(sha256)s, %(expires_at)s, %(trace_id)s, %(now)s::timestamptz
) r;

-- name: find_owner_content
-- The owner's live documents of this content (SHA-256), with their blob's state, locked in id
-- order (after the owner's quota row: the order of every path), so a confirm or delete of one
-- of them committing meanwhile is either seen here or waits for the caller's commit.
SELECT d.*, b.status AS blob_status
FROM s3outbox.documents d
JOIN s3outbox.blobs b ON b.object_key = d.object_key
WHERE d.owner_id = %(owner_id)s
  AND d.sha256 = %(sha256)s
  AND d.status IN ('pending', 'uploaded', 'waiting', 'available')
ORDER BY d.id
FOR UPDATE OF d;

-- name: refresh_pending_upload
-- A second request for content still pending gets a fresh URL for the same document.
-- Every URL issued stays valid until its own expiry, so the document's expiry is the latest
-- of them: never shorten it, or the sweeper would expire the upload while an earlier, longer
-- URL can still recreate the object. The caller signed the fresh URL to expire by the
-- document's creation + upload_url_max_ttl_seconds, so repeated requests cannot extend the
-- expiry without bound (the bucket walk's horizon counts on that).
UPDATE s3outbox.documents d
SET upload_expires_at = greatest(d.upload_expires_at, %(expires_at)s),
    expire_requested_at = NULL,
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE d.id = %(id)s AND d.status = 'pending'
RETURNING d.*;

-- name: reserve_and_insert_document
-- One statement: the reservation, the new blob (uploading) and the document that uploads it
-- exist together or not at all.
WITH reserved AS (
    UPDATE s3outbox.quotas q
    SET reserved_bytes = q.reserved_bytes + %(size)s,
        updated_at = coalesce(%(now)s::timestamptz, now())
    WHERE q.owner_id = %(owner_id)s
      AND q.used_bytes + q.reserved_bytes + %(size)s <= q.limit_bytes
    RETURNING q.owner_id
), blob AS (
    INSERT INTO s3outbox.blobs (object_key, size, sha256, content_type, status, created_at,
                                updated_at)
    SELECT %(object_key)s, %(size)s, %(sha256)s, %(content_type)s, 'uploading',
           coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now())
    FROM reserved
    RETURNING object_key
)
INSERT INTO s3outbox.documents AS d (
    id, owner_id, object_key, filename, content_type, declared_size, sha256,
    reserved_bytes, upload_expires_at, trace_id, created_at, updated_at
)
SELECT %(id)s, reserved.owner_id, blob.object_key, %(filename)s, %(content_type)s, %(size)s,
       %(sha256)s, %(size)s, %(expires_at)s, %(trace_id)s,
       coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now())
FROM reserved, blob
RETURNING d.*;

-- name: share_verified_blob
-- The same owner's content is stored and verified: a new document that references that blob
-- (its own name and type), available at once (nothing to upload or verify) and charged its
-- size, quota permitting, in one statement. The caller locked the blob (verified) first. It
-- has no upload URL: its upload_expires_at is its creation.
WITH charged AS (
    UPDATE s3outbox.quotas q
    SET used_bytes = q.used_bytes + %(size)s,
        updated_at = coalesce(%(now)s::timestamptz, now())
    WHERE q.owner_id = %(owner_id)s
      AND q.used_bytes + q.reserved_bytes + %(size)s <= q.limit_bytes
    RETURNING q.owner_id
)
INSERT INTO s3outbox.documents AS d (
    id, owner_id, object_key, filename, content_type, declared_size, sha256, status,
    verified_size, charged_bytes, upload_expires_at, trace_id, created_at, updated_at,
    verified_at
)
SELECT %(id)s, charged.owner_id, %(object_key)s, %(filename)s, %(content_type)s, %(size)s,
       %(sha256)s, 'available', %(size)s, %(size)s, coalesce(%(now)s::timestamptz, now()),
       %(trace_id)s, coalesce(%(now)s::timestamptz, now()),
       coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now())
FROM charged
RETURNING d.*;

-- name: reserve_and_insert_waiting
-- The same owner's content is being uploaded by another document: a new document that waits
-- on that blob (its own name and type, no URL), its size reserved like any request, in one
-- statement. The blob's verify makes it available (charged); its end makes it rejected.
WITH reserved AS (
    UPDATE s3outbox.quotas q
    SET reserved_bytes = q.reserved_bytes + %(size)s,
        updated_at = coalesce(%(now)s::timestamptz, now())
    WHERE q.owner_id = %(owner_id)s
      AND q.used_bytes + q.reserved_bytes + %(size)s <= q.limit_bytes
    RETURNING q.owner_id
)
INSERT INTO s3outbox.documents AS d (
    id, owner_id, object_key, filename, content_type, declared_size, sha256, status,
    reserved_bytes, upload_expires_at, trace_id, created_at, updated_at
)
SELECT %(id)s, reserved.owner_id, %(object_key)s, %(filename)s, %(content_type)s, %(size)s,
       %(sha256)s, 'waiting', %(size)s, coalesce(%(now)s::timestamptz, now()), %(trace_id)s,
       coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now())
FROM reserved
RETURNING d.*;

-- name: lock_owner_quota
-- Lock an owner's quota row (if any) before touching their documents: the same order as
-- request_upload (quota, then document), so a delete and a request cannot deadlock.
SELECT q.owner_id FROM s3outbox.quotas q WHERE q.owner_id = %(owner_id)s FOR UPDATE;

-- name: get_document
SELECT d.* FROM s3outbox.documents d
WHERE d.id = %(id)s AND d.owner_id IS NOT DISTINCT FROM %(owner_id)s;

-- name: confirm_document
-- pending -> uploaded and its verify event, in one statement. A multipart document only
-- once every part of its plan was reported (PartsMissing otherwise, outbox/multipart.py).
WITH confirmed AS (
    UPDATE s3outbox.documents d
    SET status = 'uploaded',
        confirmed_at = coalesce(%(now)s::timestamptz, now()),
        updated_at = coalesce(%(now)s::timestamptz, now()),
        trace_id = coalesce(%(trace_id)s, d.trace_id)
    WHERE d.id = %(id)s AND d.owner_id IS NOT DISTINCT FROM %(owner_id)s
      AND d.status = 'pending'
      AND (d.part_count IS NULL
           OR (SELECT count(*) FROM s3outbox.document_parts p
               WHERE p.document_id = d.id AND p.etag IS NOT NULL
                 AND p.part_number <= d.part_count) = d.part_count)
    RETURNING d.*
), event AS (
    INSERT INTO s3outbox.events (topic, document_id, trace_id, available_at, created_at, updated_at)
    SELECT 'verify', c.id, c.trace_id, coalesce(%(now)s::timestamptz, now()),
           coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now())
    FROM confirmed c
)
SELECT * FROM confirmed;

-- name: delete_live_document
-- A live document -> deleting, its unverified reservation released, and a purge event;
-- the worker deletes the blob's object only after this commits (invariant 3), and only if no
-- live document references it then (the caller's next statements, outbox/blobs.py).
-- Returns the row and the state it left (`left_status`).
WITH target AS (
    SELECT d.id, d.owner_id, d.reserved_bytes, d.status
    FROM s3outbox.documents d
    WHERE d.id = %(id)s AND d.owner_id IS NOT DISTINCT FROM %(owner_id)s
      AND d.status IN ('pending', 'uploaded', 'waiting', 'available')
    FOR UPDATE
), deleting AS (
    UPDATE s3outbox.documents d
    SET status = 'deleting',
        reserved_bytes = 0,
        delete_requested_at = coalesce(%(now)s::timestamptz, now()),
        updated_at = coalesce(%(now)s::timestamptz, now()),
        trace_id = coalesce(%(trace_id)s, d.trace_id)
    FROM target
    WHERE d.id = target.id
    RETURNING d.*
), released AS (
    UPDATE s3outbox.quotas q
    SET reserved_bytes = q.reserved_bytes - target.reserved_bytes,
        updated_at = coalesce(%(now)s::timestamptz, now())
    FROM target
    WHERE q.owner_id = target.owner_id AND target.reserved_bytes > 0
), parts AS (
    -- A multipart document's parts are needed only while it is live.
    DELETE FROM s3outbox.document_parts p USING target WHERE p.document_id = target.id
), event AS (
    INSERT INTO s3outbox.events (topic, document_id, trace_id, available_at, created_at, updated_at)
    SELECT 'purge', x.id, x.trace_id, coalesce(%(now)s::timestamptz, now()),
           coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now())
    FROM deleting x
)
SELECT deleting.*, target.status AS left_status FROM deleting JOIN target USING (id);

-- name: hide_finished_document
-- A rejected or expired document (it no longer references a live blob: its own was purged or
-- is being purged, or it waited on one that failed) -> deleted.
UPDATE s3outbox.documents d
SET status = 'deleted',
    delete_requested_at = coalesce(%(now)s::timestamptz, now()),
    updated_at = coalesce(%(now)s::timestamptz, now())
WHERE d.id = %(id)s AND d.owner_id IS NOT DISTINCT FROM %(owner_id)s
  AND d.status IN ('rejected', 'expired')
RETURNING d.*;

-- name: list_documents
-- Keyset pagination, newest first, deleted documents included (when asked for them).
SELECT d.*
FROM s3outbox.documents d
WHERE d.owner_id = %(owner_id)s
  AND (%(status)s::text IS NULL OR d.status = %(status)s::text)
  AND (d.created_at, d.id) < (%(after_created)s::timestamptz, %(after_id)s::uuid)
ORDER BY d.created_at DESC, d.id DESC
LIMIT %(limit)s;

-- name: list_live_documents
-- The same without deleted documents, through the partial index that holds no deleted row
-- (documents_owner_live_created): a page costs the same whatever an owner deleted. The
-- condition is spelled as the index's, so every plan (generic ones too) can use it.
SELECT d.*
FROM s3outbox.documents d
WHERE d.owner_id = %(owner_id)s
  AND d.status <> 'deleted'
  AND (%(status)s::text IS NULL OR d.status = %(status)s::text)
  AND (d.created_at, d.id) < (%(after_created)s::timestamptz, %(after_id)s::uuid)
ORDER BY d.created_at DESC, d.id DESC
LIMIT %(limit)s;

-- name: get_quota
SELECT q.owner_id, q.limit_bytes, q.used_bytes, q.reserved_bytes
FROM s3outbox.quotas q WHERE q.owner_id = %(owner_id)s;

-- name: set_quota_limit
-- Never below what is used and reserved (invariant 4); no row back means refused.
INSERT INTO s3outbox.quotas AS q (owner_id, limit_bytes)
VALUES (%(owner_id)s, %(limit)s)
ON CONFLICT (owner_id) DO UPDATE
SET limit_bytes = EXCLUDED.limit_bytes, updated_at = now()
WHERE q.used_bytes + q.reserved_bytes <= EXCLUDED.limit_bytes
RETURNING q.owner_id, q.limit_bytes, q.used_bytes, q.reserved_bytes;
