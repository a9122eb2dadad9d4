-- Migration 0008: request_upload's usual path in one statement (issue 13, "an API as cheap as
-- a row").
--
-- A web request that asks to upload new content paid six round trips inside its transaction
-- (savepoint, quota lock, content lookup, insert, release): the function below does the same
-- work, in the same lock order, in one. Each statement in it takes a new snapshot (READ
-- COMMITTED), so the lookup after the quota lock sees every request of the owner that
-- committed while this one waited for that lock: the reason these are separate statements.
--
-- It never raises for an expected refusal, so the caller's transaction needs no savepoint
-- around it: `outcome` says what happened.
--   created         the blob (uploading) and the document (pending), the size reserved;
--   quota_exceeded  nothing written (a new owner's quota row is not created for a refusal);
--                   the quota's figures are returned for the error;
--   same_content    the owner has live documents of this SHA-256 (a retry, content to
--                   share or to wait on): nothing written but the quota row (created at the
--                   default limit if new, locked); the library's general path takes it.
CREATE OR REPLACE FUNCTION s3outbox.request_upload(
    p_owner_id text,
    p_default_limit bigint,
    p_id uuid,
    p_object_key text,
    p_filename text,
    p_content_type text,
    p_size bigint,
    p_sha256 text,
    p_expires_at timestamptz,
    p_trace_id text,
    p_now timestamptz,
    OUT outcome text,
    OUT limit_bytes bigint,
    OUT used_bytes bigint,
    OUT quota_reserved_bytes bigint,
    OUT document s3outbox.documents
)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_quota s3outbox.quotas;
BEGIN
    -- SELECT first: locking an existing row leaves no dead version behind (an upsert's
    -- no-op update writes one per request).
    SELECT * INTO v_quota FROM s3outbox.quotas q WHERE q.owner_id = p_owner_id FOR UPDATE;
    IF NOT FOUND THEN
        IF p_size > p_default_limit THEN
            -- No row, so no document either: refuse without creating anything.
            outcome := 'quota_exceeded';
            limit_bytes := p_default_limit;
            used_bytes := 0;
            quota_reserved_bytes := 0;
            RETURN;
        END IF;
        INSERT INTO s3outbox.quotas AS q (owner_id, limit_bytes)
        VALUES (p_owner_id, p_default_limit)
        ON CONFLICT (owner_id) DO UPDATE SET owner_id = q.owner_id
        RETURNING q.* INTO v_quota;
    END IF;
    limit_bytes := v_quota.limit_bytes;
    used_bytes := v_quota.used_bytes;
    quota_reserved_bytes := v_quota.reserved_bytes;

    -- Before the quota check: a retry of a request whose bytes are already reserved must not
    -- be refused for them.
    IF EXISTS (
        SELECT 1 FROM s3outbox.documents d
        WHERE d.owner_id = p_owner_id AND d.sha256 = p_sha256
          AND d.status IN ('pending', 'uploaded', 'waiting', 'available')
    ) THEN
        outcome := 'same_content';
        RETURN;
    END IF;

    IF v_quota.used_bytes + v_quota.reserved_bytes + p_size > v_quota.limit_bytes THEN
        outcome := 'quota_exceeded';
        RETURN;
    END IF;

    UPDATE s3outbox.quotas q
    SET reserved_bytes = q.reserved_bytes + p_size, updated_at = v_now
    WHERE q.owner_id = p_owner_id;
    INSERT INTO s3outbox.blobs (object_key, size, sha256, content_type, status, created_at,
                                updated_at)
    VALUES (p_object_key, p_size, p_sha256, p_content_type, 'uploading', v_now, v_now);
    INSERT INTO s3outbox.documents AS d (
        id, owner_id, object_key, filename, content_type, declared_size, sha256,
        reserved_bytes, upload_expires_at, trace_id, created_at, updated_at
    )
    VALUES (p_id, p_owner_id, p_object_key, p_filename, p_content_type, p_size, p_sha256,
            p_size, p_expires_at, p_trace_id, v_now, v_now)
    RETURNING d.* INTO document;
    outcome := 'created';
END;
$$;
