"""``purge``: delete the blob of a document that is no longer live (and abort its multipart
upload, if any), then ``deleting -> deleted`` with its charge released. Never touches a live
document's object or upload (invariant 3).

A purge may instead name an object key (queued by ``s3-outbox reconcile`` for an orphan
object): the key is deleted only when no live document owns it.
"""

from __future__ import annotations

import logging
from datetime import datetime

from outbox.constants import LIVE_STATUSES
from worker.events import documents, lifecycle
from worker.events.context import Context
from worker.events.lifecycle import Outcome
from worker.pool import Row, transaction

log = logging.getLogger("s3outbox.worker")


def handle(
    ctx: Context, event: Row, doc: Row | None, attempt: int, now: datetime | None
) -> Outcome:
    if event.get("object_key") is not None:
        return _purge_key(ctx, event, now)
    deleted_blob = False
    # A document never returns to a live state, so this check cannot go stale.
    if doc is not None and doc["status"] not in LIVE_STATUSES:
        if doc["upload_id"] is not None:
            # First, so no Complete can make the object after the delete below; a part PUT
            # still streaming may outlive an abort: the re-check aborts again.
            ctx.storage.abort_multipart(doc["object_key"], doc["upload_id"])
        ctx.storage.delete(doc["object_key"])
        deleted_blob = True
    with transaction(ctx.pool) as cur:
        locked = lifecycle.lock(cur, event, now)
        if locked is None:
            return Outcome.SKIPPED
        doc = locked.document
        if doc is not None and deleted_blob and doc["status"] not in LIVE_STATUSES:
            documents.finish_purge(cur, ctx.settings, doc, locked.clock, now)
        return lifecycle.complete(cur, event, now)


def _purge_key(ctx: Context, event: Row, now: datetime | None) -> Outcome:
    key: str = event["object_key"]
    if not key.startswith(ctx.settings.key_prefix):
        raise ValueError(f"refusing to purge {key!r}: not under key_prefix")
    with ctx.pool.connection() as conn:
        owner = conn.execute(lifecycle.sql()["live_document_by_key"], {"key": key}).fetchone()
    if owner is None:
        ctx.storage.delete(key)
    else:
        log.warning("orphan purge of %s skipped: live document %s owns it", key, owner[0])
    with transaction(ctx.pool) as cur:
        if lifecycle.lock(cur, event, now) is None:
            return Outcome.SKIPPED
        return lifecycle.complete(cur, event, now)
