-- Migration 0003: multipart uploads (issue 11).
--
-- documents: a document larger than multipart_threshold_bytes is uploaded in parts.
--   part_size / part_count: the plan the library fixed (NULL: one PUT);
--   upload_id: the multipart upload a worker created for it (NULL until then);
--   sha256 becomes NULL-able: a multipart document has no whole-file SHA-256 (each part's
--   is in document_parts). Adding columns without a default is a catalog change only.
-- document_parts: each part's signed SHA-256 (the latest URL's) and the ETag its client
--   reported (for resume after a reload).
-- events.topic: the new `multipart_create` topic.
--
-- The new and changed CHECKs are added NOT VALID: that takes ACCESS EXCLUSIVE only for a
-- catalog change, with no scan of the table (new rows are checked at once). Migration 0004
-- validates them under SHARE UPDATE EXCLUSIVE, which lets reads and writes go on.
ALTER TABLE s3outbox.documents
    ALTER COLUMN sha256 DROP NOT NULL,
    ADD COLUMN part_size bigint,
    ADD COLUMN part_count integer,
    ADD COLUMN upload_id text;

ALTER TABLE s3outbox.documents
    ADD CONSTRAINT documents_sha256_or_parts
        CHECK (sha256 IS NOT NULL OR part_size IS NOT NULL) NOT VALID,
    ADD CONSTRAINT documents_multipart_plan CHECK (
        (part_size IS NULL) = (part_count IS NULL)
        AND (part_size IS NULL OR part_size > 0)
        AND (part_count IS NULL OR part_count BETWEEN 1 AND 10000)
        AND (upload_id IS NULL OR part_size IS NOT NULL)
    ) NOT VALID;

ALTER TABLE s3outbox.events
    DROP CONSTRAINT events_topic_check,
    ADD CONSTRAINT events_topic_check
        CHECK (topic IN ('verify', 'purge', 'expire', 'multipart_create')) NOT VALID;

-- One row per part a URL was issued for; kept while the document is live (verify,
-- reconcile and the invariant checker compute the expected composite checksum from them),
-- deleted when it leaves a live state.
CREATE TABLE s3outbox.document_parts (
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
