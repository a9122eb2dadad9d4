"""``verify``: an uploaded document's object is checked, then the document is made
``available`` (quota charged) or ``rejected`` (reservation released, blob purged).

Two paths. The *fast* one starts from the declared fields the relay put in the message: a
HeadObject, then ONE statement (``s3outbox.accept_verified``) that accepts the document only
if the database still declares exactly those fields. Anything else (a stale or malformed
hint, a mismatch, a missing object, a finished event) takes the *general* path: read, look,
then lock and decide in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from outbox.constants import DocumentStatus, Topic
from outbox.logs import log_context
from worker import metrics
from worker.events import documents, lifecycle, verify_multipart
from worker.events.context import Context
from worker.events.lifecycle import Outcome
from worker.events.observe import Observation, observe
from worker.pool import Row, transaction

log = logging.getLogger("s3outbox.worker")


def handle(
    ctx: Context, event: Row, doc: Row | None, attempt: int, now: datetime | None
) -> Outcome:
    """The general path. A missing object is snoozed with backoff until
    ``verify_deadline_seconds`` after the first attempt that found it missing, then
    rejected. A multipart document is verified by ``verify_multipart``."""
    if doc is not None and doc["part_size"] is not None:
        return verify_multipart.handle(ctx, event, doc, attempt, now)
    observation = None
    if doc is not None and doc["status"] == DocumentStatus.UPLOADED:
        observation = observe(ctx.storage, ctx.settings, doc)
        if observation.matches and accept_verified(
            ctx, event["id"], doc["id"], doc, observation, now
        ):
            return Outcome.DONE
    with transaction(ctx.pool) as cur:
        locked = lifecycle.lock(cur, event, now)
        if locked is None:
            return Outcome.SKIPPED
        doc = locked.document
        if doc is None or doc["status"] != DocumentStatus.UPLOADED or observation is None:
            # Deleted, already verified, or never confirmed: nothing left to do.
            return lifecycle.complete(cur, event, now)
        if observation.missing:
            deadline = locked.verify_deadline(ctx.settings, doc["confirmed_at"])
            remaining = (deadline - locked.clock).total_seconds()
            if remaining > 0:
                delay = min(lifecycle.backoff_seconds(ctx.settings, attempt - 1), remaining)
                why = "object not visible in storage yet"
                return lifecycle.snooze(cur, event, attempt, delay, now, why, missing=True)
            documents.refuse(
                cur,
                doc,
                DocumentStatus.REJECTED,
                "object not found in storage before the verification deadline",
                None,
                now,
            )
        elif observation.matches:
            documents.accept(cur, ctx.settings, doc, observation, DocumentStatus.REJECTED, now)
        else:
            documents.refuse(
                cur, doc, DocumentStatus.REJECTED, observation.problem, observation.info, now
            )
        return lifecycle.complete(cur, event, now)


def declared_by(hint: Mapping[str, Any]) -> tuple[str, Any, dict[str, Any]] | None:
    """A verify message's hint as ``(document id, trace id, declared fields)``; None when it
    is malformed (the event then takes the general path)."""
    try:
        declared = {
            "object_key": str(hint["object_key"]),
            "declared_size": int(hint["declared_size"]),
            "sha256": str(hint["sha256"]),
            "content_type": str(hint["content_type"]),
        }
        return str(hint["document_id"]), hint.get("trace_id"), declared
    except (KeyError, TypeError, ValueError):
        return None


def handle_hinted(
    ctx: Context, event_id: int, hint: Mapping[str, Any], now: datetime | None
) -> bool:
    """The fast path: HeadObject with the hint's declared fields, then ``accept_verified``.

    True when the document was made available and the event completed. False in every other
    case (a malformed or stale hint, a mismatch, a missing object, a storage error, a
    finished event): nothing was changed and the caller takes the general path, which reads
    what the database says.
    """
    parsed = declared_by(hint)
    if parsed is None:
        return False
    document_id, trace_id, declared = parsed
    with log_context(trace_id=trace_id, document_id=document_id):
        try:
            observation = observe(ctx.storage, ctx.settings, declared)
            accepted = observation.matches and accept_verified(
                ctx, event_id, document_id, declared, observation, now
            )
        except Exception as exc:
            log.debug("event %s: fast verify gave way to the general path: %s", event_id, exc)
            return False
        return accepted


def accept_verified(
    ctx: Context,
    event_id: int,
    document_id: object,
    declared: Mapping[str, Any],
    observation: Observation,
    now: datetime | None,
) -> bool:
    """The usual verify outcome (object matches, quota takes it) in ONE round trip.

    One statement in its own transaction (``s3outbox.accept_verified``): the locks in the
    order of every path (event, quota, documents, blob), the compare-and-set against
    ``declared`` (key, size, SHA-256 and type), the charge, ``available`` (the document and
    those waiting on its blob), the blob verified, a ``dedup`` event when another verified
    blob holds the same content (``dedup_across_owners``) and the event done. False
    when the accept did not apply (already handled, deleted, another object, over quota):
    nothing changed and the caller takes the general path.
    """
    assert observation.info is not None
    with ctx.pool.connection() as conn:
        row = conn.execute(
            lifecycle.sql()["accept_verified"],
            {
                "event_id": event_id,
                "document_id": document_id,
                "object_key": declared["object_key"],
                "declared_size": declared["declared_size"],
                "sha256": declared["sha256"],
                "content_type": declared["content_type"],
                "size": observation.info.size,
                "now": now,
                "dedup": ctx.settings.dedup_across_owners,
            },
        ).fetchone()
    if row is None or row[0] is None:
        return False
    metrics.DOCUMENT_OUTCOMES.labels(DocumentStatus.AVAILABLE.value).inc()
    metrics.EVENTS_DONE.labels(Topic.VERIFY.value).inc()
    return True
