-- Migration 0004: validate the CHECKs that 0003 added NOT VALID. VALIDATE CONSTRAINT scans
-- the table under SHARE UPDATE EXCLUSIVE only: reads and writes go on meanwhile (it is a
-- separate migration, so a separate transaction, unless the caller runs every migration in
-- one transaction, as Django or Alembic may).
ALTER TABLE s3outbox.documents VALIDATE CONSTRAINT documents_sha256_or_parts;
ALTER TABLE s3outbox.documents VALIDATE CONSTRAINT documents_multipart_plan;
ALTER TABLE s3outbox.events VALIDATE CONSTRAINT events_topic_check;
