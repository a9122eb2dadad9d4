-- Named queries of the bench (benchmarks/) and its peers' job (benchmarks/peers.py).

-- name: table_exists
SELECT to_regclass(%(name)s);

-- name: reset_tables
TRUNCATE s3outbox.events, s3outbox.documents, s3outbox.quotas, s3outbox.document_parts,
    s3bench.docs;

-- name: reset_quotas
-- Owners <owner>-0 .. <owner>-<owners>, with a limit that never refuses.
INSERT INTO s3outbox.quotas (owner_id, limit_bytes)
SELECT %(owner)s || '-' || i, %(limit)s FROM generate_series(0, %(owners)s) i;

-- name: verified_documents
SELECT count(*) FROM s3outbox.documents WHERE verified_at IS NOT NULL;

-- name: verified_peer_docs
SELECT count(*) FROM s3bench.docs WHERE verified_at IS NOT NULL;

-- name: document_timings
-- Times from the database clock, so that client and server agree.
SELECT extract(epoch FROM confirmed_at)::float8, extract(epoch FROM verified_at)::float8, status
FROM s3outbox.documents WHERE confirmed_at IS NOT NULL;

-- name: peer_doc_timings
SELECT extract(epoch FROM confirmed_at)::float8, extract(epoch FROM verified_at)::float8, status
FROM s3bench.docs WHERE confirmed_at IS NOT NULL;

-- name: limits_row
-- The machine's limit: one small INSERT transaction (no parameters: a simple Query).
INSERT INTO s3bench.rows (owner_id, note) VALUES ('limits', 'x');

-- name: app_row
-- The web app's own INSERT, beside which the library's calls are measured.
INSERT INTO s3bench.rows (owner_id, note) VALUES (%(owner)s, %(note)s);

-- name: traced_app_row
-- The app's INSERT in the transaction whose round trips are counted.
INSERT INTO s3bench.rows (owner_id, note) VALUES ('a', 'b');

-- name: count_events
SELECT count(*) FROM s3outbox.events;

-- name: count_documents
SELECT count(*) FROM s3outbox.documents;

-- name: insert_peer_doc
INSERT INTO s3bench.docs (id, object_key, declared_size, sha256, content_type)
VALUES (%(id)s, %(key)s, %(size)s, %(sha256)s, %(content_type)s);

-- name: confirm_peer_docs
UPDATE s3bench.docs SET confirmed_at = clock_timestamp() WHERE id = ANY(%(ids)s);

-- name: peer_doc
SELECT object_key, declared_size, sha256, content_type, status
FROM s3bench.docs WHERE id = %(id)s;

-- name: verify_peer_doc
UPDATE s3bench.docs SET status = %(status)s, verified_at = now()
WHERE id = %(id)s AND status = 'uploaded';

-- name: document_timing
-- One document's confirm and verify instants (database clock), and its status.
SELECT extract(epoch FROM confirmed_at)::float8, extract(epoch FROM verified_at)::float8, status
FROM s3outbox.documents WHERE id = %(id)s;

-- name: document_events
-- A document's events, for a round that waited too long on it.
SELECT id, topic, status, attempts, failures, rescues, available_at, dispatched_at,
    finished_at, last_error
FROM s3outbox.events WHERE document_id = %(id)s ORDER BY id;
