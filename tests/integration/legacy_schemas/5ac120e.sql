-- s3-outbox schema. Safe to apply twice: every statement is idempotent.
-- Apply with `s3-outbox migrate` (which also takes an advisory lock) or with psql.

CREATE SCHEMA IF NOT EXISTS s3outbox;

-- One row per owner: the quota. Invariant 4 is also a CHECK, as a last line of defence:
-- the library's conditional UPDATEs keep it true without ever tripping it.
CREATE TABLE IF NOT EXISTS s3outbox.quotas (
    owner_id        text        PRIMARY KEY,
    limit_bytes     bigint      NOT NULL,
    used_bytes      bigint      NOT NULL DEFAULT 0,
    reserved_bytes  bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT quotas_bounds CHECK (
        limit_bytes >= 0 AND used_bytes >= 0 AND reserved_bytes >= 0
        AND used_bytes + reserved_bytes <= limit_bytes
    )
);

CREATE TABLE IF NOT EXISTS s3outbox.documents (
    id                  uuid        PRIMARY KEY,
    owner_id            text        NOT NULL,
    -- Server-made, UUID based (invariant 8); the user's filename is only data.
    object_key          text        NOT NULL UNIQUE,
    filename            text        NOT NULL,
    content_type        text        NOT NULL,
    declared_size       bigint      NOT NULL CHECK (declared_size > 0),
    sha256              text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    status              text        NOT NULL DEFAULT 'pending' CHECK (status IN (
                            'pending', 'uploaded', 'available', 'rejected',
                            'expired', 'deleting', 'deleted')),
    verified_size       bigint,
    -- What this document holds of its owner's quota: reserved until verified, then charged.
    reserved_bytes      bigint      NOT NULL DEFAULT 0 CHECK (reserved_bytes >= 0),
    charged_bytes       bigint      NOT NULL DEFAULT 0 CHECK (charged_bytes >= 0),
    reason              text,
    upload_expires_at   timestamptz NOT NULL,
    expire_requested_at timestamptz,
    trace_id            text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    confirmed_at        timestamptz,
    verified_at         timestamptz,
    delete_requested_at timestamptz,
    purged_at           timestamptz
);

CREATE INDEX IF NOT EXISTS documents_owner_created
    ON s3outbox.documents (owner_id, created_at DESC, id DESC);
-- Per-owner de-duplication of live content; the library also serialises an owner's
-- requests on the quota row, so this index is a backstop, not the mechanism.
CREATE UNIQUE INDEX IF NOT EXISTS documents_owner_live_sha256
    ON s3outbox.documents (owner_id, sha256)
    WHERE status IN ('pending', 'uploaded', 'available');
CREATE INDEX IF NOT EXISTS documents_pending_expiry
    ON s3outbox.documents (upload_expires_at)
    WHERE status = 'pending' AND expire_requested_at IS NULL;
CREATE INDEX IF NOT EXISTS documents_status
    ON s3outbox.documents (status);

-- The outbox. pending -> dispatched -> done | dead.
CREATE TABLE IF NOT EXISTS s3outbox.events (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic           text        NOT NULL CHECK (topic IN ('verify', 'purge', 'expire')),
    document_id     uuid        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN (
                        'pending', 'dispatched', 'done', 'dead')),
    -- Times sent to the broker; a message carries it, so a stale handler cannot
    -- overwrite a newer attempt's outcome (compare-and-set).
    attempts        integer     NOT NULL DEFAULT 0,
    failures        integer     NOT NULL DEFAULT 0,
    available_at    timestamptz NOT NULL DEFAULT now(),
    dispatched_at   timestamptz,
    finished_at     timestamptz,
    last_error      text,
    trace_id        text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS events_pending_due
    ON s3outbox.events (available_at, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS events_dispatched_age
    ON s3outbox.events (dispatched_at) WHERE status = 'dispatched';
CREATE INDEX IF NOT EXISTS events_done_age
    ON s3outbox.events (finished_at) WHERE status = 'done';
CREATE INDEX IF NOT EXISTS events_document
    ON s3outbox.events (document_id);
CREATE INDEX IF NOT EXISTS events_dead
    ON s3outbox.events (id) WHERE status = 'dead';

-- Wake relays as soon as the inserting transaction commits (NOTIFY is transactional).
-- Per statement, so a batch insert sends one notification.
CREATE OR REPLACE FUNCTION s3outbox.notify_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('s3outbox_events', '');
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS events_notify ON s3outbox.events;
CREATE TRIGGER events_notify
    AFTER INSERT ON s3outbox.events
    FOR EACH STATEMENT EXECUTE FUNCTION s3outbox.notify_event();

-- Repairs (`s3-outbox reconcile`): a purge event may name an orphan object's key instead of
-- a document's. The purge actor deletes that key only when no live document owns it.
-- At most one unfinished purge per key, so repeated or concurrent reconcile runs queue one.
ALTER TABLE s3outbox.events ADD COLUMN IF NOT EXISTS object_key text;
CREATE UNIQUE INDEX IF NOT EXISTS events_unfinished_object_key
    ON s3outbox.events (object_key)
    WHERE object_key IS NOT NULL AND status IN ('pending', 'dispatched');
