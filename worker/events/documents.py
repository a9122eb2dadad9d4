"""The document, blob and quota changes a handler makes, in the transaction that completes its
event, after ``lifecycle.lock`` took the event, quota and document locks (in that order; the
blob's, and those of the documents waiting on it, come after).

Each is a compare-and-set on the document's (or blob's) state, so a change made twice applies
once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from outbox import blobs
from outbox.constants import UPLOADING_STATUSES, DocumentStatus, Topic
from outbox.settings import Settings
from worker import metrics
from worker.events.lifecycle import sql
from worker.events.observe import Observation
from worker.pool import Cursor, Row
from worker.storage import ObjectInfo

log = logging.getLogger("s3outbox.worker")


def accept(
    cur: Cursor,
    settings: Settings,
    doc: Row,
    observation: Observation,
    refused: DocumentStatus,
    now: datetime | None,
) -> None:
    """Charge the quota (reservation -> used) and make the document available, or refuse it
    (as ``refused``) when the quota cannot take it. Its blob is then verified: the documents
    waiting on it become available too (``blob_verified``)."""
    assert observation.info is not None
    q = sql()
    size = observation.info.size
    charged = cur.execute(
        q["charge_quota"],
        {"owner_id": doc["owner_id"], "charge": size, "release": doc["reserved_bytes"], "now": now},
    ).fetchone()
    if charged is None:
        refuse(cur, doc, refused, "over quota", observation.info, now)
        return
    cur.execute(
        q["mark_available"],
        {
            "id": doc["id"],
            "expected": doc["status"],
            "verified_size": size,
            "charge": size,
            "now": now,
        },
    )
    metrics.DOCUMENT_OUTCOMES.labels(DocumentStatus.AVAILABLE.value).inc()
    blob_verified(cur, settings, doc, size, now)


def blob_verified(
    cur: Cursor, settings: Settings, doc: Row, size: int, now: datetime | None
) -> None:
    """The uploading document ``doc`` was just made available: the documents waiting on its
    blob become available (charged), any left over (the quota refused them) rejected, then
    the blob is locked and verified. Across owners (``dedup_across_owners``), a ``dedup``
    event is queued when another verified blob holds the same content."""
    q = sql()
    key = doc["object_key"]
    waited = cur.execute(q["accept_waiting"], {"key": key, "size": size, "now": now}).fetchone()
    if waited is not None and waited["available"]:
        metrics.DOCUMENT_OUTCOMES.labels(DocumentStatus.AVAILABLE.value).inc(waited["available"])
    cur.execute(
        blobs.sql()["reject_waiting"],
        {"key": key, "reason": "over quota when the upload it waited on was verified", "now": now},
    )
    cur.execute(blobs.sql()["lock_blob"], {"key": key})
    cur.execute(q["mark_blob_verified"], {"key": key, "now": now})
    if settings.dedup_across_owners and doc["sha256"] is not None:
        cur.execute(
            q["queue_dedup"],
            {
                "document_id": doc["id"],
                "trace_id": doc["trace_id"],
                "key": key,
                "sha256": doc["sha256"],
                "size": size,
                "now": now,
            },
        )


def refuse(
    cur: Cursor,
    doc: Row,
    status: DocumentStatus,
    reason: str | None,
    info: ObjectInfo | None,
    now: datetime | None,
) -> None:
    """-> rejected/expired with a reason; reservation released; the documents waiting on its
    blob rejected with it, and the blob ``deleting`` (no live document references it any
    more); purge queued."""
    cur.execute(
        sql()["mark_refused"],
        {
            "id": doc["id"],
            "expected": doc["status"],
            "status": status.value,
            "reason": reason,
            "verified_size": info.size if info else None,
            "now": now,
        },
    )
    release(cur, doc, charged=0, reserved=doc["reserved_bytes"], now=now)
    forget_parts(cur, doc)
    blobs.drop_reference(
        cur,
        key=doc["object_key"],
        uploader_left=doc["status"] in UPLOADING_STATUSES,
        reason=f"the upload it waited on was {status.value}: {reason}",
        now=now,
    )
    queue_purge(cur, doc, None, now)
    metrics.DOCUMENT_OUTCOMES.labels(status.value).inc()
    log.info("document %s: %s", status.value, reason)


def forget_parts(cur: Cursor, doc: Row) -> None:
    """A multipart document left a live state: its parts' rows are no longer needed."""
    if doc["part_size"] is not None:
        cur.execute(sql()["delete_parts"], {"id": doc["id"]})


def release(cur: Cursor, doc: Row, *, charged: int, reserved: int, now: datetime | None) -> None:
    """Give back what the document holds of its owner's quota (never below zero)."""
    if charged or reserved:
        cur.execute(
            sql()["release_quota"],
            {"owner_id": doc["owner_id"], "charged": charged, "reserved": reserved, "now": now},
        )


def queue_purge(cur: Cursor, doc: Row, available_at: datetime | None, now: datetime | None) -> None:
    """A purge event for the document's blob, due now or at ``available_at``."""
    cur.execute(
        sql()["insert_event"],
        {
            "topic": Topic.PURGE.value,
            "document_id": doc["id"],
            "trace_id": doc["trace_id"],
            "available_at": available_at,
            "now": now,
        },
    )


def finish_purge(
    cur: Cursor, settings: Settings, doc: Row, clock: datetime, now: datetime | None
) -> None:
    """The blob's object is gone (no live document references it): ``deleting -> deleted``
    with its charge released (or, for a rejected or expired document, the purge time noted),
    the blob ``deleted``, and a second purge for when no PUT can land any more: a URL that is
    still valid, or a PUT that started before the URL expired (storage checks expiry when a
    request starts) and is still sending, can recreate the object after this purge
    (invariant 7); so can a verify that was completing a deleted multipart document's upload.
    Every way out of a live state (delete, reject, expire) ends here, or in
    ``finish_document`` while other documents keep the blob.
    """
    q = sql()
    if doc["status"] == DocumentStatus.DELETING:
        cur.execute(q["mark_deleted"], {"id": doc["id"], "now": now})
        release(cur, doc, charged=doc["charged_bytes"], reserved=doc["reserved_bytes"], now=now)
        metrics.DOCUMENT_OUTCOMES.labels(DocumentStatus.DELETED.value).inc()
    else:
        cur.execute(q["mark_purged"], {"id": doc["id"], "now": now})
    cur.execute(q["mark_blob_deleted"], {"key": doc["object_key"], "now": now})
    expiry = last_url_expiry(cur, doc["object_key"], doc["id"])
    recheck_at = last_put_landing(settings, expiry or doc["upload_expires_at"])
    if doc["upload_id"] is not None and doc["delete_requested_at"] is not None:
        recheck_at = max(recheck_at, last_complete_landing(settings, doc["delete_requested_at"]))
    if recheck_at > clock:
        queue_purge(cur, doc, recheck_at, now)


def finish_document(cur: Cursor, doc: Row, now: datetime | None) -> None:
    """A document left its live state while other live documents still reference its blob:
    the object stays (their purge deletes it later); a ``deleting`` document is ``deleted``,
    its charge released."""
    if doc["status"] == DocumentStatus.DELETING:
        cur.execute(sql()["mark_deleted"], {"id": doc["id"], "now": now})
        release(cur, doc, charged=doc["charged_bytes"], reserved=doc["reserved_bytes"], now=now)
        metrics.DOCUMENT_OUTCOMES.labels(DocumentStatus.DELETED.value).inc()


def last_url_expiry(cur: Cursor, key: str, document_id: object) -> datetime | None:
    """The latest expiry of any upload URL for ``key`` (documents referencing it, and
    ``document_id``, which may have uploaded it before a dedup moved it to another blob);
    None when no such document exists (an orphan key)."""
    row = cur.execute(sql()["last_url_expiry"], {"key": key, "document_id": document_id}).fetchone()
    return None if row is None else row["expires_at"]


def queue_key_purge(
    cur: Cursor, event: Row, key: str, available_at: datetime | None, now: datetime | None
) -> None:
    """A purge naming ``key`` (not a document), due now or at ``available_at``; nothing if
    one is unfinished (at most one per key)."""
    cur.execute(
        sql()["queue_key_purge"],
        {
            "document_id": event["document_id"],
            "key": key,
            "trace_id": event["trace_id"],
            "available_at": available_at,
            "now": now,
        },
    )


def last_complete_landing(settings: Settings, delete_requested_at: datetime) -> datetime:
    """The latest a verify that saw a multipart document ``uploaded`` before its delete may
    still complete the upload (making its object after the purge): an attempt runs at most
    ``redispatch_after_seconds`` (kept above the actor time limit), plus the clock-skew
    margin."""
    return delete_requested_at + timedelta(
        seconds=settings.redispatch_after_seconds + settings.purge_grace_seconds
    )


def last_put_landing(settings: Settings, upload_expires_at: datetime) -> datetime:
    """The latest a PUT with any of a document's URLs can create its object: the URLs'
    expiry (the signing instant + TTL, the latest of them), plus the longest a started PUT
    may take, plus the clock-skew margin (database, storage and API clocks)."""
    return upload_expires_at + timedelta(
        seconds=settings.max_upload_seconds + settings.purge_grace_seconds
    )
