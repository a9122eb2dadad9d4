"""Blobs: the stored objects that documents reference, and the rule of their lifetime.

A document is what an owner sees (name, type, status); a blob is one object in the bucket
(``s3outbox.blobs``: key, size, SHA-256, the type it was uploaded with). Several documents may
reference one blob; a blob lives (``uploading`` or ``verified``) exactly while a live document
references it, and goes ``deleting`` in the transaction that removes its last live reference,
which also holds the purge that deletes the object after the commit.

Race-free by row locks and compare-and-set, like the quota, in one lock order for every path:
(event,) quota rows, document rows, blob rows (several: in key order).

- A transaction that **adds** a reference locks the blob ``FOR SHARE`` and requires its state
  (``verified`` to share it, ``uploading`` to wait on it) in the same statement
  (``lock_for_reference``); the foreign key of the new row takes a key-share lock on it too.
- A transaction that **removes** one changes its document first, then locks the blob ``FOR
  UPDATE`` and, in a new statement, moves it to ``deleting`` only if no live document
  references it (``drop_reference``).

The two locks conflict, so one waits for the other's commit. If the adder locked first, the
remover's count (a new statement under READ COMMITTED, after its lock was granted) sees the
new reference and the blob stays. If the remover locked first, the adder's lock is granted
after the commit, on the row as it is then: ``deleting``, which its condition rejects, so it
gets no blob and uploads anew. Never a live document pointing at a purged object.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

import psycopg

from outbox import queries
from outbox.constants import BlobStatus

Cursor = psycopg.Cursor[dict[str, Any]]


@cache
def sql() -> dict[str, str]:
    """The named queries of blobs (``outbox/blobs.sql``)."""
    return queries.load("outbox", "blobs.sql")


def lock_for_reference(cur: Cursor, key: str, status: BlobStatus) -> bool:
    """Lock the blob ``key`` for a new reference (``FOR SHARE``, after the documents): True
    when it is in ``status`` (the reference may be made), False when it is not (any more)."""
    row = cur.execute(
        sql()["lock_blob_for_reference"], {"key": key, "status": status.value}
    ).fetchone()
    return row is not None


def drop_reference(
    cur: Cursor,
    *,
    key: str,
    uploader_left: bool,
    reason: str,
    now: datetime | None,
) -> bool:
    """A document referencing ``key`` just left its live state, in this transaction (its
    row already changed). If it was the blob's uploading document, the documents waiting on
    the blob are rejected with ``reason`` (reservations released). Then the blob is locked
    and goes ``deleting`` if no live document references it any more. True when it did: a
    purge queued in the same transaction deletes its object after the commit."""
    q = sql()
    if uploader_left:
        cur.execute(q["reject_waiting"], {"key": key, "reason": reason, "now": now})
    cur.execute(q["lock_blob"], {"key": key})
    released = cur.execute(q["release_unreferenced_blob"], {"key": key, "now": now}).fetchone()
    return released is not None
