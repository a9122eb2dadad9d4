-- Named queries of the bench (benchmarks/) and its peers' job (benchmarks/peers.py).

-- name: table_exists
SELECT to_regclass(%(name)s);

-- name: reset_tables
TRUNCATE s3outbox.events, s3outbox.documents, s3outbox.blobs, s3outbox.quotas,
    s3outbox.document_parts, s3bench.docs;

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

-- name: confirm_peer_doc
-- One document, as a web request's handler confirms it (ours: one library call each).
UPDATE s3bench.docs SET confirmed_at = clock_timestamp() WHERE id = %(id)s;

-- name: peer_doc
SELECT object_key, declared_size, sha256, content_type, status
FROM s3bench.docs WHERE id = %(id)s;

-- name: verify_peer_doc
UPDATE s3bench.docs SET status = %(status)s, verified_at = now()
WHERE id = %(id)s AND status = 'uploaded';

-- name: bulk_uploaded_documents
-- `count` uploaded documents of the bench owners (declared fields, no object behind them),
-- each with its blob (uploading): what verify events of a backlog point at, for the relay's
-- figures.
WITH doc AS (
    SELECT gen_random_uuid() AS id, %(owner)s || '-' || (i %% %(owners)s) AS owner_id,
           %(prefix)s || gen_random_uuid() AS object_key,
           encode(sha256(uuid_send(gen_random_uuid())), 'hex') AS sha256
    FROM generate_series(1, %(count)s) i
), blob AS (
    INSERT INTO s3outbox.blobs (object_key, size, sha256, content_type, status)
    SELECT object_key, 1024, sha256, %(content_type)s, 'uploading' FROM doc
)
INSERT INTO s3outbox.documents (id, owner_id, object_key, filename, content_type,
                                declared_size, sha256, status, upload_expires_at, confirmed_at)
SELECT id, owner_id, object_key, 'bulk.bin', %(content_type)s, 1024, sha256, 'uploaded',
       now() + interval '1 hour', now()
FROM doc;

-- name: bulk_owner_documents
-- `count` documents of one owner in one state, created one second apart, the newest
-- `before` seconds before now, each with its blob (deleted: these are deleted documents).
WITH doc AS (
    SELECT gen_random_uuid() AS id, %(prefix)s || gen_random_uuid() AS object_key,
           encode(sha256(uuid_send(gen_random_uuid())), 'hex') AS sha256,
           now() - make_interval(secs => %(before)s + i) AS created_at
    FROM generate_series(1, %(count)s) i
), blob AS (
    INSERT INTO s3outbox.blobs (object_key, size, sha256, content_type, status, created_at)
    SELECT object_key, 1024, sha256, %(content_type)s,
           CASE WHEN %(status)s::text = 'deleted' THEN 'deleted' ELSE 'verified' END, created_at
    FROM doc
)
INSERT INTO s3outbox.documents (id, owner_id, object_key, filename, content_type,
                                declared_size, sha256, status, upload_expires_at, created_at)
SELECT id, %(owner)s, object_key, 'bulk.bin', %(content_type)s, 1024, sha256, %(status)s,
       now(), created_at
FROM doc;

-- name: bulk_done_events
-- `count` finished events (a week of retention, as the sweeper keeps them). Their document
-- ids are in order (the i-th id), so ten million rows go into the document index at its end
-- instead of at random places: minutes less of setup, the same rows for a scrape.
INSERT INTO s3outbox.events (topic, document_id, status, attempts, created_at, updated_at,
                             dispatched_at, finished_at)
SELECT (ARRAY['verify', 'verify', 'verify', 'purge', 'expire'])[1 + i %% 5],
       lpad(to_hex(%(first)s + i), 32, '0')::uuid, 'done', 1, t, t, t, t
FROM generate_series(1, %(count)s) i,
     LATERAL (SELECT now() - make_interval(secs => (i %% 604800))) AS at(t);

-- name: verify_events_for_documents
-- A verify event for each uploaded document, `repeat` times over (one statement: one NOTIFY).
INSERT INTO s3outbox.events (topic, document_id)
SELECT 'verify', d.id FROM s3outbox.documents d, generate_series(1, %(repeat)s)
WHERE d.status = 'uploaded';

-- name: pending_events
SELECT count(*) FROM s3outbox.events WHERE status = 'pending';

-- name: complete_dispatched
-- Stands in for the workers: the next `limit` dispatched events after id `after` done,
-- found through the primary key (workers finish events by id, they walk no index of
-- states); how many, and the last id.
WITH done AS (
    UPDATE s3outbox.events SET status = 'done', finished_at = now(), updated_at = now()
    WHERE id IN (SELECT id FROM s3outbox.events
                 WHERE id > %(after)s AND status = 'dispatched' ORDER BY id LIMIT %(limit)s)
    RETURNING id
)
SELECT count(*), coalesce(max(id), %(after)s) FROM done;

-- name: truncate_events
TRUNCATE s3outbox.events;

-- name: notify_event_row
-- One event, as a confirm inserts it (a transaction of its own).
INSERT INTO s3outbox.events (topic, document_id) VALUES ('purge', gen_random_uuid());

-- name: disable_notify
ALTER TABLE s3outbox.events DISABLE TRIGGER events_notify;

-- name: enable_notify
ALTER TABLE s3outbox.events ENABLE TRIGGER events_notify;

-- name: vacuum_analyze_documents
VACUUM ANALYZE s3outbox.documents;

-- name: vacuum_analyze_events
VACUUM ANALYZE s3outbox.events;

-- name: events_dead_tuples
-- Dead row versions of the outbox table and its size, with the pending index's size.
SELECT coalesce(s.n_dead_tup, 0)::bigint,
       pg_total_relation_size('s3outbox.events'::regclass)::bigint,
       pg_relation_size('s3outbox.events_pending_due'::regclass)::bigint
FROM pg_stat_user_tables s WHERE s.relid = 's3outbox.events'::regclass;

-- name: hold_xmin
-- In a REPEATABLE READ transaction: its snapshot holds the xmin horizon back until it ends.
SELECT count(*) FROM s3outbox.quotas;

-- name: document_timing
-- One document's confirm and verify instants (database clock), and its status.
SELECT extract(epoch FROM confirmed_at)::float8, extract(epoch FROM verified_at)::float8, status
FROM s3outbox.documents WHERE id = %(id)s;

-- name: document_events
-- A document's events, for a round that waited too long on it.
SELECT id, topic, status, attempts, failures, rescues, available_at, dispatched_at,
    finished_at, last_error
FROM s3outbox.events WHERE document_id = %(id)s ORDER BY id;
