-- Migration 0002: guarantees that hold outside the harness (issue 10).
--
-- events.message_id: the broker message that carries the event's current attempt, so a
--   rescue can ask the broker whether it still holds it (waiting in a queue is not lost).
-- events.running / started_at: a worker began the current attempt and has not recorded its
--   outcome yet. A new start of an event still marked running means the earlier worker died:
--   that, and only that or a recorded failure, counts toward `dead`.
ALTER TABLE s3outbox.events
    ADD COLUMN message_id text,
    ADD COLUMN running boolean NOT NULL DEFAULT false,
    ADD COLUMN started_at timestamptz;

-- The worker lag: the oldest confirmed document not verified yet (a small partial index).
CREATE INDEX documents_uploaded_since
    ON s3outbox.documents (confirmed_at) WHERE status = 'uploaded';

-- Where the sweeper's rolling walks are (the bucket walk: a key to start after), so every
-- key is seen at least once per pass even across restarts.
CREATE TABLE s3outbox.maintenance_cursors (
    name                    text        PRIMARY KEY,
    position                text        NOT NULL DEFAULT '',
    pass_started_at         timestamptz,
    last_pass_finished_at   timestamptz,
    last_pass_seconds       float8,
    updated_at              timestamptz NOT NULL DEFAULT now()
);

-- The one-statement accept also ends the attempt's `running` mark.
-- The usual end of a verify (the object matched what the document declares) in ONE statement,
-- so a worker pays one round trip for it (worker/events/verify.py, accept_verified).
-- Locks the event, the owner's quota row and the document in that order (the order of every
-- path: no deadlock with web requests or other workers), then compare-and-set: the declared
-- fields are compared again (they may come from the message), the document must still be
-- `uploaded`, its verify event unfinished and the quota able to take it -> quota charged
-- (reservation -> used, invariant 4), document available, event done. Returns the event id,
-- or NULL when nothing changed (the worker then takes its general path, which says why).
CREATE OR REPLACE FUNCTION s3outbox.accept_verified(
    p_event_id bigint,
    p_document_id uuid,
    p_object_key text,
    p_declared_size bigint,
    p_sha256 text,
    p_content_type text,
    p_size bigint,
    p_now timestamptz
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
    PERFORM 1 FROM s3outbox.documents WHERE id = p_document_id FOR UPDATE;

    WITH doc AS (
        SELECT d.id, d.owner_id, d.reserved_bytes
        FROM s3outbox.documents d
        WHERE d.id = p_document_id
          AND d.status = 'uploaded'
          AND d.object_key = p_object_key
          AND d.declared_size = p_declared_size
          AND d.sha256 = p_sha256
          AND d.content_type = p_content_type
          AND EXISTS (SELECT 1 FROM s3outbox.events e
                      WHERE e.id = p_event_id AND e.document_id = d.id AND e.topic = 'verify'
                        AND e.status IN ('pending', 'dispatched'))
    ), charged AS (
        UPDATE s3outbox.quotas q
        SET used_bytes = q.used_bytes + p_size,
            reserved_bytes = q.reserved_bytes - doc.reserved_bytes,
            updated_at = v_now
        FROM doc
        WHERE q.owner_id = doc.owner_id
          AND q.reserved_bytes >= doc.reserved_bytes
          AND q.used_bytes + p_size + q.reserved_bytes - doc.reserved_bytes <= q.limit_bytes
        RETURNING doc.id
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
        RETURNING d.id
    )
    UPDATE s3outbox.events e
    SET status = 'done', running = false, finished_at = v_now, updated_at = v_now
    FROM available
    WHERE e.id = p_event_id
    RETURNING e.id INTO v_done;
    RETURN v_done;
END;
$$;
