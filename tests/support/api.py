"""Helpers shared by the tests/test_api_*.py modules (not fixtures: plain functions)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import psycopg

from outbox import Outbox, Settings
from outbox.models import UploadTicket

TABLES = (
    "s3outbox.documents",
    "s3outbox.quotas",
    "s3outbox.events",
    "s3outbox.document_parts",
    "s3outbox.blobs",
)


def body_of(size: int, seed: bytes = b"") -> bytes:
    """A body of ``size`` bytes, unique per call (random tail) unless ``seed`` fixes it."""
    if seed:
        return (seed * (size // len(seed) + 1))[:size]
    return os.urandom(size)


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def request(
    outbox: Outbox,
    conn: psycopg.Connection[Any],
    body: bytes,
    *,
    owner: str = "alice",
    filename: str = "file.bin",
    content_type: str = "application/octet-stream",
    **kwargs: Any,
) -> UploadTicket:
    """request_upload for ``body`` with sensible defaults (does not commit)."""
    return outbox.request_upload(
        conn,
        owner_id=owner,
        filename=filename,
        content_type=content_type,
        size=len(body),
        sha256=sha(body),
        **kwargs,
    )


def snapshot(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the three s3-outbox tables, in a stable order, from a fresh connection
    (so it sees only committed data)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        for table in TABLES:
            rows = c.execute(f"SELECT * FROM {table}").fetchall()
            out[table] = sorted(rows, key=repr)
    return out


def counts(settings: Settings) -> dict[str, int]:
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        return {
            t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
            for t in TABLES
        }


def quota_row(settings: Settings, owner: str) -> tuple[int, int, int] | None:
    """(limit, used, reserved) as committed, or None when the owner has no row."""
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        row = c.execute(
            "SELECT limit_bytes, used_bytes, reserved_bytes FROM s3outbox.quotas"
            " WHERE owner_id = %s",
            (owner,),
        ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def sql(settings: Settings, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on a fresh autocommit connection and return its rows (if any)."""
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        cur = c.execute(query, params)
        return cur.fetchall() if cur.description else []
