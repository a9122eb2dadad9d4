-- Migration 0009: a verify's cost that does not depend on the planner's statistics (issue 13).
--
-- After a quiet spell (a new install, a pruned outbox) the statistics say the tables are
-- small and a state is rare. A burst then met plans made for that: a session's cached plan of
-- `events WHERE id = $1` was a sequential scan (made while the table was empty), the
-- document was found through the status index (`uploaded` looked rare) and the de-duplication
-- check walked every verified blob through the status index, until autovacuum analysed the
-- tables. Measured at a 10,000-document burst: 680 buffers and 5.9 ms a verify, PostgreSQL at
-- one core.
--
-- accept_verified: the same locks in the same order, the same compare-and-set and the same
-- writes, but every row is found through its key (the event and document by id, the
-- documents of a blob by its key) and compared in the function, and sequential scans are off
-- for its statements, so a plan cached on an empty table is still an index walk.
--
-- request_upload (the web app's sessions cache its plans too): sequential scans off as well;
-- every statement in it finds its rows through a key.
--
-- events.missing_since: when an attempt first found the verified object (or the multipart
-- upload) missing. The verify deadline counts from it, not from the confirm: a backlog or an
-- outage that held the first attempt back past the deadline made one stale 404 of an
-- eventually consistent store reject a complete upload (seen in a 30-minute soak).

-- The usual end of a verify (the object matched what the document declares) in ONE statement,
-- so a worker pays one round trip for it (worker/events/verify.py, accept_verified).
-- Locks the event, the owner's quota row, the document and the documents waiting on its blob
-- (in id order), then the blob: the order of every path (no deadlock with web requests or
-- other workers). Then compare-and-set: the declared fields are compared again (they may come
-- from the message), the document must still be `uploaded`, its blob `uploading`, its verify
-- event unfinished and the quota able to take it -> quota charged for the document and each
-- of the same owner's documents waiting on the blob (reservation -> used, invariant 4), all
-- of them available, the blob verified, a `dedup` event when another verified blob holds the
-- same content, event done. Returns the event id, or NULL when nothing changed (the worker
-- then takes its general path, which says why). Every row is found through a key, and
-- sequential scans are off: its cost does not depend on the statistics (migration 0009).
CREATE OR REPLACE FUNCTION s3outbox.accept_verified(
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
LANGUAGE plpgsql
-- Every statement below finds its rows through a key; a plan cached while a table was
-- nearly empty must not turn into a scan of the whole table once it has grown.
SET enable_seqscan = off
AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_event record;
    v_doc record;
    v_found boolean := false;
    v_any_waiting boolean := false;
    v_row record;
    v_blob_status text;
    v_waiting bigint := 0;
    v_waiting_reserved bigint := 0;
BEGIN
    SELECT e.document_id, e.topic, e.status INTO v_event
    FROM s3outbox.events e WHERE e.id = p_event_id
    FOR UPDATE;
    IF NOT FOUND OR v_event.document_id IS DISTINCT FROM p_document_id
       OR v_event.topic <> 'verify' OR v_event.status NOT IN ('pending', 'dispatched') THEN
        RETURN NULL;
    END IF;
    -- A document's owner never changes: finding the quota row unlocked is safe.
    PERFORM 1 FROM s3outbox.quotas
    WHERE owner_id = (SELECT d.owner_id FROM s3outbox.documents d WHERE d.id = p_document_id)
    FOR UPDATE;
    -- The document and the documents waiting on its blob, in id order. Through the blob's
    -- key, so a state's stale statistics can't send this through the status index.
    FOR v_row IN
        SELECT d.id, d.owner_id, d.status, d.object_key, d.declared_size, d.sha256,
               d.content_type, d.reserved_bytes, d.trace_id
        FROM s3outbox.documents d
        WHERE d.object_key = p_object_key AND (d.id = p_document_id OR d.status = 'waiting')
        ORDER BY d.id
        FOR UPDATE
    LOOP
        IF v_row.id = p_document_id THEN
            v_doc := v_row;
            v_found := true;
        ELSE
            v_any_waiting := true;
        END IF;
    END LOOP;
    IF NOT v_found OR v_doc.status <> 'uploaded' OR v_doc.declared_size <> p_declared_size
       OR v_doc.sha256 <> p_sha256 OR v_doc.content_type <> p_content_type THEN
        RETURN NULL;
    END IF;
    SELECT b.status INTO v_blob_status
    FROM s3outbox.blobs b WHERE b.object_key = p_object_key
    FOR UPDATE;
    IF v_blob_status IS DISTINCT FROM 'uploading' THEN
        RETURN NULL;
    END IF;
    -- The same owner's documents waiting on this blob with its size (locked above).
    IF v_any_waiting THEN
        SELECT count(*), coalesce(sum(w.reserved_bytes), 0) INTO v_waiting, v_waiting_reserved
        FROM s3outbox.documents w
        WHERE w.object_key = p_object_key AND w.owner_id = v_doc.owner_id
          AND w.status = 'waiting' AND w.declared_size = p_size;
    END IF;

    UPDATE s3outbox.quotas q
    SET used_bytes = q.used_bytes + p_size * (1 + v_waiting),
        reserved_bytes = q.reserved_bytes - v_doc.reserved_bytes - v_waiting_reserved,
        updated_at = v_now
    WHERE q.owner_id = v_doc.owner_id
      AND q.reserved_bytes >= v_doc.reserved_bytes + v_waiting_reserved
      AND q.used_bytes + p_size * (1 + v_waiting) + q.reserved_bytes - v_doc.reserved_bytes
          - v_waiting_reserved <= q.limit_bytes;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    UPDATE s3outbox.documents d
    SET status = 'available', verified_size = p_size, charged_bytes = p_size,
        reserved_bytes = 0, reason = NULL, verified_at = v_now, updated_at = v_now
    WHERE d.id = p_document_id;
    IF v_waiting > 0 THEN
        UPDATE s3outbox.documents d
        SET status = 'available', verified_size = p_size, charged_bytes = p_size,
            reserved_bytes = 0, reason = NULL, verified_at = v_now, updated_at = v_now
        WHERE d.object_key = p_object_key AND d.owner_id = v_doc.owner_id
          AND d.status = 'waiting' AND d.declared_size = p_size;
    END IF;
    UPDATE s3outbox.blobs b
    SET status = 'verified', verified_at = v_now, updated_at = v_now
    WHERE b.object_key = p_object_key;
    IF p_dedup AND EXISTS (
        SELECT 1 FROM s3outbox.blobs o
        WHERE o.sha256 = p_sha256 AND o.size = p_size AND o.status = 'verified'
          AND o.object_key <> p_object_key) THEN
        INSERT INTO s3outbox.events
            (topic, document_id, trace_id, available_at, created_at, updated_at)
        VALUES ('dedup', p_document_id, v_doc.trace_id, v_now, v_now, v_now);
    END IF;
    UPDATE s3outbox.events e
    SET status = 'done', running = false, finished_at = v_now, updated_at = v_now
    WHERE e.id = p_event_id;
    RETURN p_event_id;
END;
$$;

-- Blobs by state for the metrics' capped counts, without the verified ones: `verified` is
-- the common state (counted through blobs_verified_content), and an index of every state
-- let the de-duplication check (sha256, size, verified) walk all verified blobs whenever the
-- statistics said there were few. The build reads the whole table once and keeps only the
-- unverified blobs; inserts into blobs wait for it (0.24 s for 3,000,000 blobs, 586 MB in
-- cache; the reads of a table not in memory on top).
CREATE INDEX blobs_unverified_status ON s3outbox.blobs (status) WHERE status <> 'verified';
DROP INDEX s3outbox.blobs_status;

ALTER FUNCTION s3outbox.request_upload(
    text, bigint, uuid, text, text, text, bigint, text, timestamptz, text, timestamptz)
    SET enable_seqscan = off;

-- Catalog only (a nullable column without a default): no table rewrite.
ALTER TABLE s3outbox.events ADD COLUMN missing_since timestamptz;
