"""Helpers shared by the repair tests (reconcile, quota audit): documents in a given state,
objects put behind the library's back, and snapshots of everything a dry run must not touch."""

from __future__ import annotations

import os
import uuid
from typing import Any

import psycopg

from outbox import Outbox, Settings
from outbox.models import Document
from tests.support.core import InlineWorker, put, sha256_hex
from worker.storage import Storage


def body_for(tag: str, size: int = 1000) -> bytes:
    """A distinct body per tag (documents of one owner are de-duplicated by content)."""
    head = f"{tag}:{uuid.uuid4()}\n".encode()
    return head + os.urandom(max(size - len(head), 1))


def uploaded(
    outbox: Outbox, conn: psycopg.Connection[Any], owner: str, body: bytes, *, confirm: bool = True
) -> Document:
    """Request, PUT over HTTP, and (by default) confirm; the caller drains to verify."""
    ticket = outbox.request_upload(
        conn,
        owner_id=owner,
        filename=f"{owner}.bin",
        content_type="application/octet-stream",
        size=len(body),
        sha256=sha256_hex(body),
    )
    conn.commit()
    assert put(ticket, body).status_code == 200
    if confirm:
        outbox.confirm(conn, owner_id=owner, document_id=ticket.document.id)
        conn.commit()
    return ticket.document


def available(
    outbox: Outbox,
    conn: psycopg.Connection[Any],
    worker: InlineWorker,
    owner: str,
    body: bytes,
) -> Document:
    """A verified, available document."""
    doc = uploaded(outbox, conn, owner, body)
    worker.drain()
    got = outbox.get(conn, owner_id=owner, document_id=doc.id)
    conn.commit()
    assert got.status == "available", got
    return got


def raw_put(storage: Storage, key: str, body: bytes = b"stray") -> None:
    """Put an object straight into the bucket, as a bug or a person might."""
    storage.client.put_object(Bucket=storage.bucket, Key=key, Body=body)


def execute(settings: Settings, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on its own autocommit connection (tests only: direct tampering)."""
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        cur = c.execute(sql, params)
        return cur.fetchall() if cur.description else []


def db_snapshot(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the four tables, in a stable order."""
    return {
        "documents": execute(settings, "SELECT * FROM s3outbox.documents ORDER BY id"),
        "blobs": execute(settings, "SELECT * FROM s3outbox.blobs ORDER BY object_key"),
        "events": execute(settings, "SELECT * FROM s3outbox.events ORDER BY id"),
        "quotas": execute(settings, "SELECT * FROM s3outbox.quotas ORDER BY owner_id"),
    }


def bucket_snapshot(settings: Settings, storage: Storage) -> list[tuple[str, str]]:
    """(key, ETag) of every object under the test's prefix."""
    out: list[tuple[str, str]] = []
    paginator = storage.client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=storage.bucket, Prefix=settings.key_prefix):
        out += [(o["Key"], o["ETag"]) for o in page.get("Contents", [])]
    return sorted(out)
