"""``dedup``: across owners, store one content once. Queued when a document's blob was
verified while another verified blob held the same SHA-256 and size (``dedup_across_owners``).

The documents of the new blob move to the kept one (the earliest verified blob of that
content, by verification time, then creation, then key: one total order, so every duplicate
moves to the same one and nothing moves back), the new blob goes
``deleting`` and a purge of its key is queued, all in one transaction. Nothing is revealed to
anyone: the owner uploaded the bytes, and a document that shares a blob serves its own name
and type. Invariant 1 holds for every moved document: it references a verified blob whose
object has its declared SHA-256 and size.

Under locks in the order of every path: the event, the owner's quota row and the document
(``lifecycle.lock``), the other live documents of the new blob, then both blobs in key order;
then compare-and-set: the document still ``available`` on the new blob, both blobs still
``verified`` with the same content. A kept blob that lost its last document meanwhile is
``deleting`` by then, and nothing moves.
"""

from __future__ import annotations

import logging
from datetime import datetime

from outbox import blobs
from outbox.constants import BlobStatus, DocumentStatus
from worker.events import documents, lifecycle
from worker.events.context import Context
from worker.events.lifecycle import Outcome
from worker.pool import Cursor, Row, read_one, transaction

log = logging.getLogger("s3outbox.worker")


def handle(
    ctx: Context, event: Row, doc: Row | None, attempt: int, now: datetime | None
) -> Outcome:
    target = None
    if ctx.settings.dedup_across_owners and doc is not None and _shareable(doc):
        found = read_one(ctx.pool, lifecycle.sql()["dedup_target"], {"key": doc["object_key"]})
        target = None if found is None else str(found["object_key"])
    with transaction(ctx.pool) as cur:
        locked = lifecycle.lock(cur, event, now)
        if locked is None:
            return Outcome.SKIPPED
        doc = locked.document
        if target is not None and doc is not None and _shareable(doc):
            move_documents(cur, event, doc, target, now)
        return lifecycle.complete(cur, event, now)


def _shareable(doc: Row) -> bool:
    return doc["status"] == DocumentStatus.AVAILABLE and doc["sha256"] is not None


def move_documents(cur: Cursor, event: Row, doc: Row, target: str, now: datetime | None) -> int:
    """Move the live documents of ``doc``'s blob to ``target`` and retire the duplicate
    blob (``deleting``, its key purged after the commit), in the caller's transaction, which
    holds the event's and ``doc``'s locks. Compare-and-set under the locks of the blob's live
    documents and both blobs (in key order): both still ``verified``, the same content.
    Returns how many documents moved (0: no longer possible, nothing changed)."""
    q = lifecycle.sql()
    source = str(doc["object_key"])
    if source == target:
        return 0
    cur.execute(q["lock_live_documents_of_blob"], {"key": source})
    rows = {r["object_key"]: r for r in cur.execute(q["lock_blobs"], {"keys": [source, target]})}
    kept, duplicate = rows.get(target), rows.get(source)
    if (
        kept is None
        or duplicate is None
        or kept["status"] != BlobStatus.VERIFIED
        or duplicate["status"] != BlobStatus.VERIFIED
        or (kept["sha256"], kept["size"]) != (duplicate["sha256"], duplicate["size"])
    ):
        log.info("dedup of %s into %s: no longer possible, nothing moved", source, target)
        return 0
    moved = cur.execute(
        q["move_to_blob"], {"from_key": source, "to_key": target, "now": now}
    ).fetchall()
    if cur.execute(
        blobs.sql()["release_unreferenced_blob"], {"key": source, "now": now}
    ).fetchone():
        documents.queue_key_purge(cur, event, source, None, now)
    log.info(
        "dedup: %d documents moved from %s to %s, duplicate object purged",
        len(moved),
        source,
        target,
    )
    return len(moved)
