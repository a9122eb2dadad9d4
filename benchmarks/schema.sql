-- The bench's own tables, beside s3outbox's (applied by benchmarks/prepare.py, idempotent):
-- the peers' document rows and the rows of the bare INSERT transactions.
CREATE SCHEMA IF NOT EXISTS s3bench;
CREATE TABLE IF NOT EXISTS s3bench.docs (
    id            uuid        PRIMARY KEY,
    object_key    text        NOT NULL,
    declared_size bigint      NOT NULL,
    sha256        text        NOT NULL,
    content_type  text        NOT NULL,
    status        text        NOT NULL DEFAULT 'uploaded',
    confirmed_at  timestamptz,
    verified_at   timestamptz
);
CREATE TABLE IF NOT EXISTS s3bench.rows (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id text NOT NULL,
    note text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
