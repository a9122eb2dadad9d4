-- Named queries of the versioned migrations (outbox/schema.py). The migrations themselves are
-- the ordered files in outbox/migrations/; schema.sql is the result of applying them all.

-- name: version_table_exists
SELECT to_regclass('s3outbox.schema_migrations') IS NOT NULL AS present;

-- name: applied_versions
SELECT version FROM s3outbox.schema_migrations ORDER BY version;

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS s3outbox;

-- name: create_version_table
-- Created by the first `migrate` (and by schema.sql); schema.sql holds the same definition.
CREATE TABLE IF NOT EXISTS s3outbox.schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: record_version
INSERT INTO s3outbox.schema_migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: lock_migrations
-- Session lock: concurrent `migrate` runs wait for each other (not for lock_timeout).
SELECT pg_advisory_lock(hashtext('s3outbox.migrate'));

-- name: unlock_migrations
SELECT pg_advisory_unlock(hashtext('s3outbox.migrate'));

-- name: lock_migrations_xact
-- The same lock, held to the end of the caller's transaction (migrate inside a transaction).
SELECT pg_advisory_xact_lock(hashtext('s3outbox.migrate'));

-- name: set_lock_timeout
-- For this transaction only: a migration's DDL waits at most this long for a table lock
-- (a deploy behind one long transaction must fail fast, not stall every write).
SELECT set_config('lock_timeout', %(timeout)s, true);

-- name: get_lock_timeout
SELECT current_setting('lock_timeout');
