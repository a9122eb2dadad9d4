"""Orphan objects: objects in the bucket that no live document owns, older than a horizon.

One listed page at a time (ListObjectsV2 ``Contents``: one query per page, so memory stays
flat), shared by ``s3-outbox reconcile`` (``worker.ops.reconcile``) and the sweeper's bucket
walk (``worker.maintenance.bucket_walk``).

An object is an orphan when no live document references its key (no row names it, or every
document of its blob is rejected, expired, deleting or deleted), and it was last modified
before the cutoff (the clock minus the horizon): a newer one may belong to an upload whose
transaction has not committed yet, or to a PUT still allowed to land. Its repair goes
through the outbox: a purge event that names the key (``events.object_key``), which the
purge actor carries out only if no live document references the key then (its blob goes
``deleting`` under the blob's lock first: invariant 3). A unique index allows one unfinished
purge per key, so repeated or concurrent runs queue one. The object of a ``deleting``
document is left to that document's own purge (it releases the charge too).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import Any

import psycopg
from psycopg.rows import dict_row

from outbox import queries

_ORPHAN_NAMESPACE = uuid.UUID("5b0c1f8e-2a41-4d0a-9c53-3e1f0b7d6a10")


@cache
def sql() -> dict[str, str]:
    """The named queries of orphan objects (``worker/orphans.sql``)."""
    return queries.load("worker", "orphans.sql")


class Disposition(StrEnum):
    """What an orphan needs."""

    QUEUE = "queue"  # a purge of its key
    QUEUED = "queued"  # nothing: a purge of the key, or of its document, is unfinished
    DOCUMENT = "document"  # nothing: its document is deleting, and its own purge removes it


@dataclass(frozen=True)
class Orphan:
    """An object no live document owns, older than the horizon."""

    key: str
    size: int
    last_modified: datetime
    document_id: uuid.UUID | None  # the latest (non-live) row that names this key, if any
    document_status: str | None
    disposition: Disposition


@dataclass(frozen=True)
class Findings:
    """The orphans of one listed page, and how many unowned objects were too young."""

    orphans: list[Orphan]
    young: int


def examine(
    conn: psycopg.Connection[Any], objects: Sequence[Mapping[str, Any]], cutoff: datetime
) -> Findings:
    """The orphans among ``objects`` (ListObjectsV2 ``Contents`` entries: Key, Size,
    LastModified), those last modified at or before ``cutoff``. Two reads, no locks."""
    keys = [str(obj["Key"]) for obj in objects]
    if not keys:
        return Findings([], 0)
    q = sql()
    with conn.cursor(row_factory=dict_row) as cur:
        rows = {
            r["object_key"]: r for r in cur.execute(q["orphans_documents_by_keys"], {"keys": keys})
        }
        queued = {
            r["object_key"] for r in cur.execute(q["orphans_key_purges_queued"], {"keys": keys})
        }
    found: list[Orphan] = []
    young = 0
    for obj in objects:
        key = str(obj["Key"])
        row = rows.get(key)
        if row is not None and row["live"]:
            continue
        if obj["LastModified"] > cutoff:
            young += 1
            continue
        if row is not None and row["deleting"]:
            disposition = Disposition.DOCUMENT
        elif key in queued or (row is not None and row["purge_queued"]):
            disposition = Disposition.QUEUED
        else:
            disposition = Disposition.QUEUE
        found.append(
            Orphan(
                key=key,
                size=int(obj["Size"]),
                last_modified=obj["LastModified"],
                document_id=row["id"] if row is not None else None,
                document_status=row["status"] if row is not None else None,
                disposition=disposition,
            )
        )
    return Findings(found, young)


def queue_purges(
    conn: psycopg.Connection[Any],
    orphans: Sequence[Orphan],
    *,
    trace_id: str,
    now: datetime | None,
) -> set[str]:
    """Queue a purge naming the key of each orphan that needs one (``Disposition.QUEUE``),
    in one transaction. Returns the keys queued: a key another run queued meanwhile is
    skipped. ``conn`` must be in autocommit mode."""
    todo = [o for o in orphans if o.disposition == Disposition.QUEUE]
    if not todo:
        return set()
    with conn.transaction():
        inserted = conn.execute(
            sql()["orphans_queue_key_purges"],
            {
                "keys": [o.key for o in todo],
                "document_ids": [o.document_id or purge_document_id(o.key) for o in todo],
                "trace_id": trace_id,
                "now": now,
            },
        ).fetchall()
    return {key for _id, key in inserted}


def purge_document_id(key: str) -> uuid.UUID:
    """The document id an orphan purge event carries when no row names the key: the key's
    UUID tail (keys are prefix + document id), else a stable UUID made from the key."""
    tail = key.rsplit("/", 1)[-1]
    try:
        return uuid.UUID(tail)
    except ValueError:
        return uuid.uuid5(_ORPHAN_NAMESPACE, key)
