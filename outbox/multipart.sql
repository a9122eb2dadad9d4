-- Named queries of multipart uploads in the library (outbox/multipart.py). Every one runs in
-- the caller's transaction. `now` is a parameter everywhere time matters: NULL means the
-- database's now(). Literals are DocumentStatus / Topic values. A document the caller names
-- is found by its id alone, its owner a filter (`IS NOT DISTINCT FROM`: see queries.sql).

-- name: reserve_and_insert_multipart
-- One statement: the reservation (the whole declared size), the blob (uploading; no whole-file
-- SHA-256, so never shared), the document and the event asking a worker to create its
-- multipart upload exist together or not at all. No URL yet: the document expires `ttl`
-- seconds from now unless part URLs extend it.
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
    SELECT %(object_key)s, %(size)s, NULL, %(content_type)s, 'uploading',
           coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now())
    FROM reserved
    RETURNING object_key
), doc AS (
    INSERT INTO s3outbox.documents AS d (
        id, owner_id, object_key, filename, content_type, declared_size, sha256,
        part_size, part_count, reserved_bytes, upload_expires_at, trace_id,
        created_at, updated_at
    )
    SELECT %(id)s, reserved.owner_id, blob.object_key, %(filename)s, %(content_type)s,
           %(size)s, NULL, %(part_size)s, %(part_count)s, %(size)s,
           coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(ttl)s),
           %(trace_id)s, coalesce(%(now)s::timestamptz, now()),
           coalesce(%(now)s::timestamptz, now())
    FROM reserved, blob
    RETURNING d.*
), event AS (
    INSERT INTO s3outbox.events (topic, document_id, trace_id, available_at, created_at, updated_at)
    SELECT 'multipart_create', doc.id, doc.trace_id, coalesce(%(now)s::timestamptz, now()),
           coalesce(%(now)s::timestamptz, now()), coalesce(%(now)s::timestamptz, now())
    FROM doc
)
SELECT * FROM doc;

-- name: lock_owned_document
-- The document, locked until the caller's transaction ends: a part URL extends its expiry,
-- and a confirm that follows sees every part recorded before it.
SELECT d.* FROM s3outbox.documents d
WHERE d.id = %(id)s AND d.owner_id IS NOT DISTINCT FROM %(owner_id)s
FOR UPDATE;

-- name: share_owned_document
-- The document, share-locked: reports of several parts go on side by side, and a confirm
-- (which updates the row) waits for them, so it sees every report committed before it.
SELECT d.* FROM s3outbox.documents d
WHERE d.id = %(id)s AND d.owner_id IS NOT DISTINCT FROM %(owner_id)s
FOR SHARE;

-- name: record_part_url
-- A part URL was signed: record its size and SHA-256 (the latest URL's wins; a new digest
-- forgets the ETag reported for the old one), and extend the document's expiry to the
-- URL's (never shortened: every URL issued stays valid until its own expiry).
WITH part AS (
    INSERT INTO s3outbox.document_parts AS p
        (document_id, part_number, size, sha256, url_issued_at)
    VALUES (%(id)s, %(part_number)s, %(size)s, %(sha256)s, coalesce(%(now)s::timestamptz, now()))
    ON CONFLICT (document_id, part_number) DO UPDATE
    SET size = EXCLUDED.size,
        sha256 = EXCLUDED.sha256,
        url_issued_at = EXCLUDED.url_issued_at,
        etag = CASE WHEN p.sha256 = EXCLUDED.sha256 THEN p.etag END,
        reported_at = CASE WHEN p.sha256 = EXCLUDED.sha256 THEN p.reported_at END
    RETURNING p.*
), extended AS (
    UPDATE s3outbox.documents d
    SET upload_expires_at = greatest(d.upload_expires_at, %(expires_at)s),
        expire_requested_at = NULL,
        updated_at = coalesce(%(now)s::timestamptz, now())
    WHERE d.id = %(id)s AND d.status = 'pending'
)
SELECT * FROM part;

-- name: report_part
-- The client's PUT of a part succeeded: its ETag (kept for a client that resumes).
UPDATE s3outbox.document_parts p
SET etag = %(etag)s,
    reported_at = coalesce(%(now)s::timestamptz, now())
WHERE p.document_id = %(id)s AND p.part_number = %(part_number)s
RETURNING p.*;

-- name: reported_parts
SELECT p.* FROM s3outbox.document_parts p
WHERE p.document_id = %(id)s AND p.etag IS NOT NULL
ORDER BY p.part_number;

-- name: missing_parts
-- The part numbers of a plan not reported yet (the first `limit`), and how many.
SELECT n.part_number, count(*) OVER () AS missing_count
FROM generate_series(1, %(part_count)s::integer) AS n(part_number)
WHERE NOT EXISTS (
    SELECT 1 FROM s3outbox.document_parts p
    WHERE p.document_id = %(id)s AND p.part_number = n.part_number AND p.etag IS NOT NULL
)
ORDER BY n.part_number
LIMIT %(limit)s;
