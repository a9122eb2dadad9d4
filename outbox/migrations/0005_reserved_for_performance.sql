-- Migration 0005: a placeholder on the blobs branch (issue 12) only. Version 5 is the
-- performance work's migration (issue 13), developed at the same time; the runner refuses a
-- gap in the versions (outbox/schema.py), so this branch holds the number with a migration
-- that changes nothing. Replace this file with that migration when the branches merge.
SELECT 1;
