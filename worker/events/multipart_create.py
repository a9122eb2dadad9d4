"""``multipart_create``: create the multipart upload of a pending multipart document.

CreateMultipartUpload (SHA-256 part checksums, the declared content type) outside any
transaction, then, in one transaction, record its upload id only if the document is still
pending and has none (compare-and-set) and complete the event. When the compare-and-set fails
(the document was deleted meanwhile, or another worker's upload won) the upload just created
is aborted. A crash between the create and the commit leaves an upload that no row holds:
the sweeper's multipart walk (``worker.maintenance.multipart_walk``) aborts it once it is
older than the orphan horizon.
"""

from __future__ import annotations

import logging
from datetime import datetime

from botocore.exceptions import BotoCoreError, ClientError

from outbox.constants import DocumentStatus
from worker.events import lifecycle
from worker.events.context import Context
from worker.events.lifecycle import Outcome
from worker.pool import Row, transaction

log = logging.getLogger("s3outbox.worker")


def handle(
    ctx: Context, event: Row, doc: Row | None, attempt: int, now: datetime | None
) -> Outcome:
    upload_id = None
    if (
        doc is not None
        and doc["status"] == DocumentStatus.PENDING
        and doc["part_size"] is not None
        and doc["upload_id"] is None
    ):
        upload_id = ctx.storage.create_multipart(doc["object_key"], doc["content_type"])
    recorded = False
    with transaction(ctx.pool) as cur:
        locked = lifecycle.lock(cur, event, now)
        if locked is None:
            outcome = Outcome.SKIPPED
        else:
            if upload_id is not None:
                row = cur.execute(
                    lifecycle.sql()["set_upload_id"],
                    {
                        "id": event["document_id"],
                        "upload_id": upload_id,
                        "ttl": ctx.settings.upload_url_ttl_seconds,
                        "window": ctx.settings.multipart_upload_window_seconds,
                        "now": now,
                    },
                ).fetchone()
                recorded = row is not None
            outcome = lifecycle.complete(cur, event, now)
    # Committed: the row holds the upload, or it never will (an exception above leaves
    # it to the sweeper: whether the commit happened is unknown).
    if upload_id is not None and not recorded:
        assert doc is not None
        discard(ctx, doc["object_key"], upload_id)
    return outcome


def discard(ctx: Context, key: str, upload_id: str) -> None:
    """Abort an upload nobody will use; a failure is left to the sweeper's multipart walk."""
    try:
        ctx.storage.abort_multipart(key, upload_id)
        log.info("aborted a multipart upload no document holds (%s)", key)
    except (ClientError, BotoCoreError) as exc:
        log.warning("could not abort the multipart upload of %s (the sweeper will): %s", key, exc)
