-- Migration 0010: a verify with waiting documents finds them through the blob's key, never
-- through the status or the owner's indexes (issue 13).
--
-- accept_verified counted and then updated the documents waiting on a blob with statements
-- naming the blob's key, the owner, `waiting` and the size. Statistics in which `waiting` looks
-- rare (any table where few documents wait, or one not analysed since a burst) sent both
-- through the status index: with 3,000 documents waiting on other blobs, one verify with two
-- waiting documents read 6,011 rows (tests/integration/test_stale_statistics.py). The loop
-- that locks the blob's documents (through its key, migration 0009) now also picks the
-- waiting ones, and they are updated by id: one statement fewer, and no statement about them
-- left for a plan to send through the status or the owner's indexes. The library's own
-- statements about a named document (outbox/queries.sql) compare its owner as a filter, for
-- the same reason: a confirm or a delete of one document of an owner the statistics had not
-- seen read all 3,000 of its documents.

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
-- The waiting documents are those the lock loop found, updated by id: no statement about
-- them for a plan to send through the status or the owner's indexes (migration 0010).
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
    v_owner text;
    v_row record;
    v_waiting_ids uuid[] := '{}';
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
    SELECT q.owner_id INTO v_owner FROM s3outbox.quotas q
    WHERE q.owner_id = (SELECT d.owner_id FROM s3outbox.documents d WHERE d.id = p_document_id)
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
        ELSIF v_row.owner_id = v_owner AND v_row.declared_size = p_size THEN
            -- The same owner's, waiting with this size: charged and made available below.
            v_waiting_ids := v_waiting_ids || v_row.id;
            v_waiting := v_waiting + 1;
            v_waiting_reserved := v_waiting_reserved + v_row.reserved_bytes;
        END IF;
    END LOOP;
    IF NOT v_found OR v_doc.owner_id IS DISTINCT FROM v_owner OR v_doc.status <> 'uploaded'
       OR v_doc.declared_size <> p_declared_size OR v_doc.sha256 <> p_sha256
       OR v_doc.content_type <> p_content_type THEN
        RETURN NULL;
    END IF;
    SELECT b.status INTO v_blob_status
    FROM s3outbox.blobs b WHERE b.object_key = p_object_key
    FOR UPDATE;
    IF v_blob_status IS DISTINCT FROM 'uploading' THEN
        RETURN NULL;
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
        WHERE d.id = ANY(v_waiting_ids);
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
