-- Migration 0007: validate what 0006 added NOT VALID (as 0004 does for 0003). VALIDATE
-- CONSTRAINT scans under SHARE UPDATE EXCLUSIVE only (and ROW SHARE on blobs for the foreign
-- key): reads and writes go on meanwhile.
ALTER TABLE s3outbox.documents VALIDATE CONSTRAINT documents_status_check;
ALTER TABLE s3outbox.documents VALIDATE CONSTRAINT documents_object_key_fkey;
ALTER TABLE s3outbox.events VALIDATE CONSTRAINT events_topic_check;
