"""``expire``: a pending upload whose URL expired unconfirmed. Verified once: a matching
object means only the confirm was lost -> ``available``; anything else -> ``expired``, with
its reservation released and its blob (if any) purged. A pending multipart document has no
object yet (only a worker completes it, after a confirm): ``expired``, and its purge aborts
the upload."""

from __future__ import annotations

from datetime import datetime, timedelta

from outbox.constants import DocumentStatus
from worker.events import documents, lifecycle
from worker.events.context import Context
from worker.events.lifecycle import Outcome
from worker.events.observe import observe
from worker.pool import Row, transaction


def handle(
    ctx: Context, event: Row, doc: Row | None, attempt: int, now: datetime | None
) -> Outcome:
    observation = None
    if doc is not None and doc["status"] == DocumentStatus.PENDING and doc["part_size"] is None:
        observation = observe(ctx.storage, ctx.settings, doc)
    with transaction(ctx.pool) as cur:
        locked = lifecycle.lock(cur, event, now)
        if locked is None:
            return Outcome.SKIPPED
        doc = locked.document
        grace = timedelta(seconds=ctx.settings.purge_grace_seconds)
        if (
            doc is None
            or doc["status"] != DocumentStatus.PENDING
            # A fresh URL was issued for this upload since the sweeper looked.
            or doc["upload_expires_at"] + grace > locked.clock
        ):
            return lifecycle.complete(cur, event, now)
        if doc["part_size"] is not None:
            # Only a worker completes a multipart upload, after a confirm: a pending one has
            # no object. Expired; the purge it queues aborts the upload.
            reason = "upload window expired before every part was uploaded and confirmed"
            documents.refuse(cur, doc, DocumentStatus.EXPIRED, reason, None, now)
            return lifecycle.complete(cur, event, now)
        if observation is None:  # not pending when read: it never is again
            return lifecycle.complete(cur, event, now)
        if observation.matches:
            documents.accept(cur, ctx.settings, doc, observation, DocumentStatus.EXPIRED, now)
        else:
            reason = observation.problem or "upload URL expired and no object was uploaded"
            documents.refuse(cur, doc, DocumentStatus.EXPIRED, reason, observation.info, now)
        return lifecycle.complete(cur, event, now)
