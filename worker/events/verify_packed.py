"""The fast path of a packed message (``verify_many``): a HeadObject for each of its verify
events, then ONE statement and one transaction (``s3outbox.accept_verified_many``) for
every document whose object matched, instead of one each.

A packed message is a backlog's (worker/relay.py), where a worker's per-event costs count
most: each statement costs a round trip, a snapshot, a commit and a pool checkout.
Accepting four in one statement took a quarter less of PostgreSQL's CPU per document
(migration 0011). Each document is still accepted by ``s3outbox.accept_verified`` with its
compare-and-set; an event not accepted here (a mismatch, a missing object, a stale hint, a
storage or database error) changed nothing and takes the general path, as alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from outbox.constants import DocumentStatus, Topic
from outbox.logs import log_context
from worker import metrics
from worker.events import lifecycle
from worker.events.context import Context
from worker.events.observe import observe
from worker.events.verify import declared_by

log = logging.getLogger("s3outbox.worker")


def accept_packed(
    ctx: Context, items: Sequence[tuple[int, Mapping[str, Any]]], now: datetime | None
) -> set[int]:
    """The events of ``items`` (``(event id, hint)``, their attempts started) whose document
    was made available and event completed. Never raises for a failure of storage or of
    the statement: those events are simply not in the result."""
    matched: list[tuple[int, str, dict[str, Any], int]] = []
    for event_id, hint in items:
        parsed = declared_by(hint)
        if parsed is None:
            continue
        document_id, trace_id, declared = parsed
        with log_context(trace_id=trace_id, document_id=document_id):
            try:
                observation = observe(ctx.storage, ctx.settings, declared)
            except Exception as exc:
                log.debug("event %s: fast verify gave way to the general path: %s", event_id, exc)
                continue
        if observation.matches and observation.info is not None:
            matched.append((event_id, document_id, declared, observation.info.size))
    if not matched:
        return set()
    try:
        with ctx.pool.connection() as conn:
            rows = conn.execute(
                lifecycle.sql()["accept_verified_many"],
                {
                    "event_ids": [m[0] for m in matched],
                    "document_ids": [m[1] for m in matched],
                    "object_keys": [m[2]["object_key"] for m in matched],
                    "declared_sizes": [m[2]["declared_size"] for m in matched],
                    "sha256s": [m[2]["sha256"] for m in matched],
                    "content_types": [m[2]["content_type"] for m in matched],
                    "sizes": [m[3] for m in matched],
                    "now": now,
                    "dedup": ctx.settings.dedup_across_owners,
                },
            ).fetchall()
    except Exception as exc:
        # Rolled back as a whole (a lock timeout, a deadlock, the connection): nothing
        # changed, and each event takes its own path.
        log.debug("%d verifies gave way to the general path: %s", len(matched), exc)
        return set()
    accepted = {int(row[0]) for row in rows}
    if accepted:
        metrics.DOCUMENT_OUTCOMES.labels(DocumentStatus.AVAILABLE.value).inc(len(accepted))
        metrics.EVENTS_DONE.labels(Topic.VERIFY.value).inc(len(accepted))
    return accepted
