-- What tests/support/catalog.py reads of the s3outbox schema to compare two databases.
-- Every query is ordered, and names objects, never oids, so two databases compare equal.

-- name: relations
SELECT c.relname, c.relkind, c.relpersistence,
       coalesce(array_to_string(c.reloptions, ','), '')
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 's3outbox'
ORDER BY c.relname;

-- name: columns
SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
       coalesce(co.collname, '')
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> t.typcollation
WHERE n.nspname = 's3outbox' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.relname, a.attnum;

-- name: constraints
SELECT coalesce(c.relname, ty.typname), con.conname, con.contype,
       pg_get_constraintdef(con.oid, true)
FROM pg_constraint con
JOIN pg_namespace n ON n.oid = con.connamespace
LEFT JOIN pg_class c ON c.oid = con.conrelid
LEFT JOIN pg_type ty ON ty.oid = con.contypid
WHERE n.nspname = 's3outbox'
ORDER BY 1, 2;

-- name: indexes
SELECT indexname, indexdef
FROM pg_indexes
WHERE schemaname = 's3outbox'
ORDER BY indexname;

-- name: sequences
SELECT sequencename, data_type::text, start_value, increment_by, min_value, max_value,
       cycle, cache_size
FROM pg_sequences
WHERE schemaname = 's3outbox'
ORDER BY sequencename;

-- name: types
-- Enums and domains (a table's row type is the table, listed with the relations).
SELECT t.typname, t.typtype,
       CASE t.typtype
           WHEN 'e' THEN (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                          FROM pg_enum e WHERE e.enumtypid = t.oid)
           ELSE format_type(t.typbasetype, t.typtypmod)
       END
FROM pg_type t
JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname = 's3outbox' AND t.typtype IN ('e', 'd')
ORDER BY t.typname;

-- name: functions
SELECT p.oid::regprocedure::text,
       CASE WHEN p.prokind = 'a' THEN 'aggregate' ELSE pg_get_functiondef(p.oid) END
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 's3outbox'
ORDER BY 1;

-- name: triggers
SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid, true)
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 's3outbox' AND NOT t.tgisinternal
ORDER BY c.relname, t.tgname;

-- name: migration_rows
SELECT version, name, checksum
FROM s3outbox.schema_migrations
ORDER BY version;
