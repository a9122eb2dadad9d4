-- s3-outbox: the full current schema, for reading and for a new database (`psql -f`).
-- It is what applying every migration of outbox/migrations/ gives (tests check the catalogs
-- are the same), and it records those versions, so `s3-outbox migrate` finds nothing to do.
-- Upgrade an existing database with `s3-outbox migrate`, never with this file.

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

-- One row per stored object (issue 12). A document is what an owner sees; a blob is the
-- object it references: several documents may share one (the same content, each with its
-- own name and type), and a blob lives exactly while a live document references it:
-- uploading -> verified -> deleting -> deleted (outbox/constants.py, BlobStatus).
CREATE TABLE IF NOT EXISTS s3outbox.blobs (
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
CREATE INDEX IF NOT EXISTS blobs_verified_content
    ON s3outbox.blobs (sha256, size) WHERE status = 'verified';
-- Blobs by state but the common `verified` (counted through blobs_verified_content): the
-- metrics count each state through it, up to a cap (worker/ops/counts.py). Not every state:
-- that index let the de-duplication check walk all verified blobs when the statistics said
-- there were few (migration 0009).
CREATE INDEX IF NOT EXISTS blobs_unverified_status
    ON s3outbox.blobs (status) WHERE status <> 'verified';

CREATE TABLE IF NOT EXISTS s3outbox.documents (
    id                  uuid        PRIMARY KEY,
    owner_id            text        NOT NULL,
    -- The blob this document references. Server-made, UUID based (invariant 8): the prefix +
    -- the id of the document that uploaded it; the user's filename is only data.
    object_key          text        NOT NULL REFERENCES s3outbox.blobs (object_key),
    filename            text        NOT NULL,
    content_type        text        NOT NULL,
    declared_size       bigint      NOT NULL CHECK (declared_size > 0),
    -- NULL for a multipart document (no whole-file SHA-256; each part's is in document_parts).
    sha256              text        CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    status              text        NOT NULL DEFAULT 'pending' CHECK (status IN (
                            'pending', 'uploaded', 'waiting', 'available', 'rejected',
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
    purged_at           timestamptz,
    -- Multipart (a document above multipart_threshold_bytes): the plan the library fixed
    -- (NULL: one PUT), and the upload a worker created (NULL until then).
    part_size           bigint,
    part_count          integer,
    upload_id           text,
    CONSTRAINT documents_sha256_or_parts CHECK (sha256 IS NOT NULL OR part_size IS NOT NULL),
    CONSTRAINT documents_multipart_plan CHECK (
        (part_size IS NULL) = (part_count IS NULL)
        AND (part_size IS NULL OR part_size > 0)
        AND (part_count IS NULL OR part_count BETWEEN 1 AND 10000)
        AND (upload_id IS NULL OR part_size IS NOT NULL)
    )
);

CREATE INDEX IF NOT EXISTS documents_owner_created
    ON s3outbox.documents (owner_id, created_at DESC, id DESC);
-- An owner's list without deleted documents walks only the others (deleted rows pile up).
CREATE INDEX IF NOT EXISTS documents_owner_live_created
    ON s3outbox.documents (owner_id, created_at DESC, id DESC)
    WHERE status <> 'deleted';
-- An owner's live documents of one content (the library serialises an owner's requests on
-- the quota row; several documents may hold the same content under their own names).
CREATE INDEX IF NOT EXISTS documents_owner_live_content
    ON s3outbox.documents (owner_id, sha256)
    WHERE status IN ('pending', 'uploaded', 'waiting', 'available');
-- The documents of a blob (counting its live references, the purge's re-check).
CREATE INDEX IF NOT EXISTS documents_object_key ON s3outbox.documents (object_key);
-- At most one document uploads a blob: the one that holds its URLs.
CREATE UNIQUE INDEX IF NOT EXISTS documents_one_uploader
    ON s3outbox.documents (object_key) WHERE status IN ('pending', 'uploaded');
CREATE INDEX IF NOT EXISTS documents_pending_expiry
    ON s3outbox.documents (upload_expires_at)
    WHERE status = 'pending' AND expire_requested_at IS NULL;
CREATE INDEX IF NOT EXISTS documents_status
    ON s3outbox.documents (status);
-- The worker lag: the oldest confirmed document not verified yet.
CREATE INDEX IF NOT EXISTS documents_uploaded_since
    ON s3outbox.documents (confirmed_at) WHERE status = 'uploaded';

-- The outbox. pending -> dispatched -> done | dead.
CREATE TABLE IF NOT EXISTS s3outbox.events (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic           text        NOT NULL CONSTRAINT events_topic_check CHECK (topic IN (
                        'verify', 'purge', 'expire', 'multipart_create', 'dedup')),
    document_id     uuid        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN (
                        'pending', 'dispatched', 'done', 'dead')),
    -- Times sent to the broker; a message carries it, so a stale handler cannot
    -- overwrite a newer attempt's outcome (compare-and-set).
    attempts        integer     NOT NULL DEFAULT 0,
    failures        integer     NOT NULL DEFAULT 0,
    -- Times sent again because the message was lost or its worker died (not failures).
    rescues         integer     NOT NULL DEFAULT 0,
    available_at    timestamptz NOT NULL DEFAULT now(),
    dispatched_at   timestamptz,
    finished_at     timestamptz,
    last_error      text,
    trace_id        text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- Repairs (`s3-outbox reconcile`, the bucket walk): a purge may name an orphan object's
    -- key instead of a document's; the purge actor deletes it only when no live document
    -- owns it.
    object_key      text,
    -- The broker message carrying the current attempt: a rescue asks the broker whether it
    -- still holds it, so waiting in a queue is never mistaken for a lost message.
    message_id      text,
    -- A worker began the current attempt and has not recorded its outcome. A new start of an
    -- event still running means the earlier worker died: a failed attempt.
    running         boolean     NOT NULL DEFAULT false,
    started_at      timestamptz,
    -- When an attempt first found the verified object (or multipart upload) missing: the
    -- verify deadline counts from it, so a backlog cannot use up a store's time to show it.
    missing_since   timestamptz
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

-- The outbox is a queue: every event is updated twice and its older versions are dead at
-- once. Vacuum it after a fixed number of dead rows, not after a fifth of a table that keeps
-- days of finished events (the default scale factor), so the partial indexes the relay and
-- the workers walk stay small.
ALTER TABLE s3outbox.events SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 100000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000
);

-- Wake relays as soon as the inserting transaction commits (NOTIFY is transactional).
-- Per statement, so a batch insert sends one notification, and only when the statement
-- inserted rows (the transition table): every NOTIFY takes a cluster-wide lock at commit.
CREATE OR REPLACE FUNCTION s3outbox.notify_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted_events) THEN
        PERFORM pg_notify('s3outbox_events', '');
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS events_notify ON s3outbox.events;
CREATE TRIGGER events_notify
    AFTER INSERT ON s3outbox.events
    REFERENCING NEW TABLE AS inserted_events
    FOR EACH STATEMENT EXECUTE FUNCTION s3outbox.notify_event();

-- At most one unfinished purge per orphan key, so repeated or concurrent repairs queue one.
CREATE UNIQUE INDEX IF NOT EXISTS events_unfinished_object_key
    ON s3outbox.events (object_key)
    WHERE object_key IS NOT NULL AND status IN ('pending', 'dispatched');

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

-- The matching verifies of a packed message in ONE statement (migration 0011).
-- Each document is accepted by accept_verified, unchanged: the same locks, compare-and-set
-- and writes, so a document is accepted here exactly when it would have been alone. Returns
-- the events that were accepted; the others changed nothing and take the worker's general
-- path. They are taken in the order of their owners' quota rows (then event id), so that two
-- workers' batches lock quota rows in one order and cannot deadlock on them; a web request
-- locks one owner's. An error rolls back the whole batch: every event then takes its own path
-- as if alone.
CREATE OR REPLACE FUNCTION s3outbox.accept_verified_many(
    p_event_ids bigint[],
    p_document_ids uuid[],
    p_object_keys text[],
    p_declared_sizes bigint[],
    p_sha256s text[],
    p_content_types text[],
    p_sizes bigint[],
    p_now timestamptz,
    p_dedup boolean
) RETURNS SETOF bigint
LANGUAGE plpgsql
-- The owners are read by primary key, whatever a cached plan was made on (migration 0009).
SET enable_seqscan = off
AS $$
DECLARE
    v_item record;
BEGIN
    FOR v_item IN
        SELECT u.*
        FROM unnest(p_event_ids, p_document_ids, p_object_keys, p_declared_sizes, p_sha256s,
                    p_content_types, p_sizes)
             AS u(event_id, document_id, object_key, declared_size, sha256, content_type, size)
        LEFT JOIN s3outbox.documents d ON d.id = u.document_id
        ORDER BY d.owner_id, u.event_id
    LOOP
        IF s3outbox.accept_verified(
            v_item.event_id, v_item.document_id, v_item.object_key, v_item.declared_size,
            v_item.sha256, v_item.content_type, v_item.size, p_now, p_dedup
        ) IS NOT NULL THEN
            RETURN NEXT v_item.event_id;
        END IF;
    END LOOP;
END;
$$;

-- request_upload's usual path (content new to its owner) in ONE statement, so a web request
-- pays one round trip for it inside its transaction (outbox/api.py). The same lock order as
-- every path (the owner's quota row first); each statement takes a new snapshot, so the
-- content lookup after the quota lock sees the owner's requests that committed meanwhile.
-- Never raises for a refusal: `outcome` is created, quota_exceeded (nothing written) or
-- same_content (a retry, or content to share or wait on: only the quota row, locked; the
-- library's general path takes it).
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
LANGUAGE plpgsql
-- Every statement finds its rows through a key, whatever a cached plan was made on
-- (migration 0009).
SET enable_seqscan = off
AS $$
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

-- The parts of a multipart document, one row per part a URL was issued for; kept while the
-- document is live (verify, reconcile and the invariant checker compute the expected
-- composite checksum from them), deleted when it leaves a live state.
CREATE TABLE IF NOT EXISTS s3outbox.document_parts (
    document_id     uuid        NOT NULL,
    part_number     integer     NOT NULL CHECK (part_number BETWEEN 1 AND 10000),
    size            bigint      NOT NULL CHECK (size > 0),
    -- The digest signed into this part's latest URL: storage refuses any other body.
    sha256          text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    -- What the client reported once its PUT succeeded (NULL: not reported yet).
    etag            text,
    url_issued_at   timestamptz NOT NULL,
    reported_at     timestamptz,
    PRIMARY KEY (document_id, part_number)
);

-- Where the sweeper's rolling walks are (the bucket walk: a key to start after).
CREATE TABLE IF NOT EXISTS s3outbox.maintenance_cursors (
    name                    text        PRIMARY KEY,
    position                text        NOT NULL DEFAULT '',
    pass_started_at         timestamptz,
    last_pass_finished_at   timestamptz,
    last_pass_seconds       float8,
    updated_at              timestamptz NOT NULL DEFAULT now()
);

-- Which migrations (outbox/migrations/NNNN_name.sql) this database has.
CREATE TABLE IF NOT EXISTS s3outbox.schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO s3outbox.schema_migrations (version, name, checksum) VALUES
    (1, 'initial', '373aa8880402e1343d2167329ab4770c8fdff45168e92e29043cbf87c8c11874'),
    (2, 'delivery_guarantees', '8b96e22cc6678d4a1aef0f0196e80ea91b0be649b5ad5c75445bdd16561b5692'),
    (3, 'multipart', '4dfba2ae63ad9226a3fb597d49ccf3be2f25da3e6c00aa3b12865f55671c16a3'),
    (4, 'validate_multipart_checks', 'd7521fdef37cda0cbc17920f40c4052bc8de313bff0d88a740d24046fa63d47c'),
    (5, 'flat_costs', 'c965da2d54b32239ee63e434badd0cbdf1b3ad4806abec1866ecb357ce100539'),
    (6, 'blobs', '6c04deb9eef952a622236b8d20548ab719b8ceecc5f4bba2748e297f093e0526'),
    (7, 'validate_blobs', 'aa13f2f9209bdeb19adc97057d3d766f90037eb9ed3e400bd59db7fdb922695b'),
    (8, 'one_statement_requests', '847eae0d1473eeab8a945fb0b6729c2759803f6ea14b6a5d4d90276fd83dd015'),
    (9, 'statistics_proof_verify', 'a9e3fa1ad8e985672011ee90a7adf7e3cf87ad04f1f8671d2d67547a0c6e0d6e'),
    (10, 'waiting_by_blob_key', '8944778961c56eab2ca4195702b63fd8bdc2dbb7a2faed0a87a6b93a669c8815'),
    (11, 'accept_verified_many', '2f3e2200d08f2ebc226a2a7d6ce829d5c68c9337577a53c577c98d8befedb559')
ON CONFLICT (version) DO NOTHING;
