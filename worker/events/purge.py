"""``purge``: finish a document that is no longer live, and delete its blob's object (and abort
its multipart upload, if any) only when no live document references the blob any more:
``deleting -> deleted`` with its charge released. Never touches an object a live document
references (invariant 3).

Whether the object goes is the blob's state, set under the blob's lock by the transaction
that removed its last live reference (``outbox.blobs``): ``deleting`` (or ``deleted``, for a
re-check) means no live document references it, and a blob never comes back from there, so a
look before the storage call cannot go stale. A ``verified`` or ``uploading`` blob has live
documents: this document is finished and the object stays for them.

A purge may instead name an object key (``events.object_key``): queued by ``s3-outbox
reconcile`` or the bucket walk for an orphan object, or by a dedup for the duplicate blob no
document references any more. The key is deleted only when no live document references it:
its blob, if any, first goes ``deleting`` under its lock (or the purge stops), and the purge
is re-checked once no PUT with one of its URLs can land any more.
"""

from __future__ import annotations

import logging
from datetime import datetime

from outbox import blobs
from outbox.constants import LIVE_BLOB_STATUSES, LIVE_STATUSES
from worker.events import documents, lifecycle
from worker.events.context import Context
from worker.events.lifecycle import Outcome
from worker.pool import Row, read_one, transaction

log = logging.getLogger("s3outbox.worker")


def handle(
    ctx: Context, event: Row, doc: Row | None, attempt: int, now: datetime | None
) -> Outcome:
    if event.get("object_key") is not None:
        return _purge_key(ctx, event, now)
    deleted_blob = False
    # A document never returns to a live state, nor a blob from `deleting`: these checks
    # cannot go stale.
    if doc is not None and doc["status"] not in LIVE_STATUSES and _blob_gone(ctx, doc):
        if doc["part_size"] is not None:
            # First, so no Complete can make the object after the delete below; a part PUT
            # still streaming may outlive an abort: the re-check aborts again. Every upload
            # of the key, not only the recorded one: a create whose answer was lost left
            # another that no row names.
            if doc["upload_id"] is not None:
                ctx.storage.abort_multipart(doc["object_key"], doc["upload_id"])
            ctx.storage.abort_uploads_of(doc["object_key"])
        ctx.storage.delete(doc["object_key"])
        deleted_blob = True
    with transaction(ctx.pool) as cur:
        locked = lifecycle.lock(cur, event, now)
        if locked is None:
            return Outcome.SKIPPED
        doc = locked.document
        if doc is not None and doc["status"] not in LIVE_STATUSES:
            if deleted_blob:
                documents.finish_purge(cur, ctx.settings, doc, locked.clock, now)
            else:
                documents.finish_document(cur, doc, now)
        return lifecycle.complete(cur, event, now)


def _blob_gone(ctx: Context, doc: Row) -> bool:
    """No live document references the document's blob (any more)."""
    blob = read_one(ctx.pool, lifecycle.sql()["read_blob"], {"key": doc["object_key"]})
    return blob is None or blob["status"] not in LIVE_BLOB_STATUSES


def _purge_key(ctx: Context, event: Row, now: datetime | None) -> Outcome:
    key: str = event["object_key"]
    if not key.startswith(ctx.settings.key_prefix):
        raise ValueError(f"refusing to purge {key!r}: not under key_prefix")
    referenced = False
    with transaction(ctx.pool) as cur:
        # A blob still live without a live reference (drift, a bug) goes `deleting` under its
        # lock first: a document that starts referencing it meanwhile either committed before
        # this lock (then the blob stays) or finds it `deleting` (then it uploads anew).
        blob = cur.execute(blobs.sql()["lock_blob"], {"key": key}).fetchone()
        if blob is not None and blob["status"] in LIVE_BLOB_STATUSES:
            released = cur.execute(
                blobs.sql()["release_unreferenced_blob"], {"key": key, "now": now}
            ).fetchone()
            referenced = released is None
    if referenced:
        log.warning("purge of %s skipped: a live document references it", key)
    else:
        ctx.storage.abort_uploads_of(key)  # none, unless the key had a multipart upload
        ctx.storage.delete(key)
    with transaction(ctx.pool) as cur:
        locked = lifecycle.lock(cur, event, now)
        if locked is None:
            return Outcome.SKIPPED
        outcome = lifecycle.complete(cur, event, now)
        if not referenced:
            cur.execute(lifecycle.sql()["mark_blob_deleted"], {"key": key, "now": now})
            expiry = documents.last_url_expiry(cur, key, event["document_id"])
            if expiry is not None:
                recheck_at = documents.last_put_landing(ctx.settings, expiry)
                if recheck_at > locked.clock:
                    documents.queue_key_purge(cur, event, key, recheck_at, now)
        return outcome
