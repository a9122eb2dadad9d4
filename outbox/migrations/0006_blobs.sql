-- Migration 0006: documents and blobs (issue 12).
--
-- A document is what an owner sees (name, type, status, its own id); a blob is a stored
-- object (its key, size, SHA-256, the content type it was uploaded with, whether a worker
-- verified it). Every document references one blob through its object_key (now a foreign
-- key, no longer unique); a blob is referenced by one or more documents, and lives exactly
-- while one of them is live.
--
-- Each existing document gets its own blob (keys were unique): uploading while the document
-- is pending or uploaded, verified when available, deleting while a purge of the document
-- is due (deleting, or rejected/expired with an unfinished purge), deleted otherwise.
--
-- Locks: documents is locked in SHARE mode first (reads go on; writes wait while the table
-- is copied into blobs and the new indexes are built, so no document is left without its
-- blob). The catalog-only changes (dropped unique constraint and index, widened CHECKs, the
-- foreign key NOT VALID) come last: they take ACCESS EXCLUSIVE, held only for the moment
-- before the commit. Migration 0007 validates the CHECKs and the foreign key under SHARE
-- UPDATE EXCLUSIVE, which lets reads and writes go on.
LOCK TABLE s3outbox.documents IN SHARE MODE;

CREATE TABLE s3outbox.blobs (
    object_key      text        PRIMARY KEY,
    size            bigint      NOT NULL CHECK (size > 0),
    -- NULL for a multipart object (no whole-file SHA-256; its parts' are in document_parts).
    sha256          text        CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    -- The type the object was uploaded with (signed into its PUT): what storage holds. Each
    -- document that shares the blob keeps its own type, served by its download URL.
    content_type    text        NOT NULL,
    status          text        NOT NULL CHECK (status IN (
                        'uploading', 'verified', 'deleting', 'deleted')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    verified_at     timestamptz,
    purged_at       timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- De-duplication: a verified blob with this content (an owner's own, or across owners).
CREATE INDEX blobs_verified_content
    ON s3outbox.blobs (sha256, size) WHERE status = 'verified';
-- Blobs by state: the metrics count each state through it, up to a cap (worker/ops/counts.py).
CREATE INDEX blobs_status ON s3outbox.blobs (status);

INSERT INTO s3outbox.blobs (
    object_key, size, sha256, content_type, status, created_at, verified_at, purged_at,
    updated_at
)
SELECT d.object_key, d.declared_size, d.sha256, d.content_type,
       CASE
           WHEN d.status IN ('pending', 'uploaded') THEN 'uploading'
           WHEN d.status = 'available' THEN 'verified'
           WHEN d.status = 'deleting' OR EXISTS (
               SELECT 1 FROM s3outbox.events e
               WHERE e.document_id = d.id AND e.topic = 'purge' AND e.object_key IS NULL
                 AND e.status IN ('pending', 'dispatched')
           ) THEN 'deleting'
           ELSE 'deleted'
       END,
       d.created_at,
       CASE WHEN d.status = 'available' THEN d.verified_at END,
       CASE WHEN d.status NOT IN ('pending', 'uploaded', 'available', 'deleting')
            THEN d.purged_at END,
       d.updated_at
FROM s3outbox.documents d;

-- The documents of a blob (counting its live references, the purge's re-check).
CREATE INDEX documents_object_key ON s3outbox.documents (object_key);
-- At most one document uploads a blob: the one that holds its URLs.
CREATE UNIQUE INDEX documents_one_uploader
    ON s3outbox.documents (object_key) WHERE status IN ('pending', 'uploaded');
-- An owner's live documents of one content: several now (each upload keeps its own name).
CREATE INDEX documents_owner_live_content
    ON s3outbox.documents (owner_id, sha256)
    WHERE status IN ('pending', 'uploaded', 'waiting', 'available');

-- The usual end of a verify, in ONE statement (worker/events/verify.py, accept_verified), now
-- with the blob: the object is the blob's, so the documents waiting on it become available
-- too, and a `dedup` event is queued when another verified blob holds the same content.
DROP FUNCTION s3outbox.accept_verified(bigint, uuid, text, bigint, text, text, bigint, timestamptz);
-- Locks the event, the owner's quota row, the document and the same owner's documents
-- waiting on its blob (in id order), then the blob: the order of every path (no deadlock
-- with web requests or other workers). Then compare-and-set: the declared fields are compared
-- again (they may come from the message), the document must still be `uploaded`, its blob
-- `uploading`, its verify event unfinished and the quota able to take it -> quota charged for
-- the document and each waiting one (reservation -> used, invariant 4), all of them
-- available, the blob verified, event done. Returns the event id, or NULL when nothing
-- changed (the worker then takes its general path, which says why).
CREATE FUNCTION s3outbox.accept_verified(
    p_event_id bigint,
    p_document_id uuid,
    p_object_key text,
    p_declared_size bigint,
    p_sha256 text,
    p_content_type text,
    p_size bigint,
    p_now timestamptz,
    p_dedup boolean
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_done bigint;
BEGIN
    PERFORM 1 FROM s3outbox.events WHERE id = p_event_id FOR UPDATE;
    -- A document's owner never changes: finding the quota row unlocked is safe.
    PERFORM 1 FROM s3outbox.quotas
    WHERE owner_id = (SELECT owner_id FROM s3outbox.documents WHERE id = p_document_id)
    FOR UPDATE;
    PERFORM 1 FROM s3outbox.documents
    WHERE id = p_document_id OR (object_key = p_object_key AND status = 'waiting')
    ORDER BY id
    FOR UPDATE;
    PERFORM 1 FROM s3outbox.blobs WHERE object_key = p_object_key FOR UPDATE;

    WITH doc AS (
        SELECT d.id, d.owner_id, d.reserved_bytes, d.trace_id
        FROM s3outbox.documents d
        JOIN s3outbox.blobs b ON b.object_key = d.object_key AND b.status = 'uploading'
        WHERE d.id = p_document_id
          AND d.status = 'uploaded'
          AND d.object_key = p_object_key
          AND d.declared_size = p_declared_size
          AND d.sha256 = p_sha256
          AND d.content_type = p_content_type
          AND EXISTS (SELECT 1 FROM s3outbox.events e
                      WHERE e.id = p_event_id AND e.document_id = d.id AND e.topic = 'verify'
                        AND e.status IN ('pending', 'dispatched'))
    ), waiting AS (
        SELECT count(*) AS n, coalesce(sum(w.reserved_bytes), 0) AS reserved
        FROM s3outbox.documents w
        JOIN doc ON w.owner_id = doc.owner_id
        WHERE w.object_key = p_object_key AND w.status = 'waiting'
          AND w.declared_size = p_size
    ), charged AS (
        UPDATE s3outbox.quotas q
        SET used_bytes = q.used_bytes + p_size * (1 + waiting.n),
            reserved_bytes = q.reserved_bytes - doc.reserved_bytes - waiting.reserved,
            updated_at = v_now
        FROM doc, waiting
        WHERE q.owner_id = doc.owner_id
          AND q.reserved_bytes >= doc.reserved_bytes + waiting.reserved
          AND q.used_bytes + p_size * (1 + waiting.n) + q.reserved_bytes - doc.reserved_bytes
              - waiting.reserved <= q.limit_bytes
        RETURNING doc.id, doc.owner_id, doc.trace_id
    ), available AS (
        UPDATE s3outbox.documents d
        SET status = 'available',
            verified_size = p_size,
            charged_bytes = p_size,
            reserved_bytes = 0,
            reason = NULL,
            verified_at = v_now,
            updated_at = v_now
        FROM charged
        WHERE d.id = charged.id
           OR (d.owner_id = charged.owner_id AND d.object_key = p_object_key
               AND d.status = 'waiting' AND d.declared_size = p_size)
    ), verified AS (
        UPDATE s3outbox.blobs b
        SET status = 'verified', verified_at = v_now, updated_at = v_now
        FROM charged
        WHERE b.object_key = p_object_key
    ), dedup AS (
        INSERT INTO s3outbox.events
            (topic, document_id, trace_id, available_at, created_at, updated_at)
        SELECT 'dedup', charged.id, charged.trace_id, v_now, v_now, v_now
        FROM charged
        WHERE p_dedup AND EXISTS (
            SELECT 1 FROM s3outbox.blobs o
            WHERE o.sha256 = p_sha256 AND o.size = p_size AND o.status = 'verified'
              AND o.object_key <> p_object_key)
    )
    UPDATE s3outbox.events e
    SET status = 'done', running = false, finished_at = v_now, updated_at = v_now
    FROM charged
    WHERE e.id = p_event_id
    RETURNING e.id INTO v_done;
    RETURN v_done;
END;
$$;

-- The catalog-only changes, last (ACCESS EXCLUSIVE until the commit that follows at once).
ALTER TABLE s3outbox.events
    DROP CONSTRAINT events_topic_check,
    ADD CONSTRAINT events_topic_check CHECK (topic IN (
        'verify', 'purge', 'expire', 'multipart_create', 'dedup')) NOT VALID;

DROP INDEX s3outbox.documents_owner_live_sha256;
ALTER TABLE s3outbox.documents
    DROP CONSTRAINT documents_object_key_key,
    DROP CONSTRAINT documents_status_check,
    ADD CONSTRAINT documents_status_check CHECK (status IN (
        'pending', 'uploaded', 'waiting', 'available', 'rejected', 'expired', 'deleting',
        'deleted')) NOT VALID,
    ADD CONSTRAINT documents_object_key_fkey FOREIGN KEY (object_key)
        REFERENCES s3outbox.blobs (object_key) NOT VALID;
