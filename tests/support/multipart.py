"""Helpers for multipart tests: small settings, a request, part PUTs over real HTTP, and what
storage shows of a key's uploads in progress."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
import requests

from outbox import Outbox, Settings
from outbox.models import MultipartPlan, PartTicket, UploadTicket
from outbox.settings import MIB
from worker.storage import Storage

#: Storage's smallest part (all but the last): the smallest plan the settings allow.
PART = 5 * MIB
#: Settings of a multipart test: anything above one part is uploaded in parts of 5 MiB.
MULTIPART_SETTINGS: dict[str, Any] = {
    "max_upload_bytes": 64 * MIB,
    "multipart_threshold_bytes": PART,
    "multipart_part_size_bytes": PART,
}
#: Three parts: two full ones and a short last one.
THREE_PARTS = 2 * PART + 1234


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclass
class Upload:
    """A multipart document being uploaded: its ticket, body and plan."""

    ticket: UploadTicket
    body: bytes
    owner: str

    @property
    def id(self) -> UUID:
        return self.ticket.document.id

    @property
    def key(self) -> str:
        return self.ticket.document.object_key

    @property
    def plan(self) -> MultipartPlan:
        assert self.ticket.multipart is not None
        return self.ticket.multipart

    def part(self, number: int) -> bytes:
        offset, size = self.plan.part_range(number)
        return self.body[offset : offset + size]


def request(
    outbox: Outbox,
    conn: psycopg.Connection[Any],
    size: int = THREE_PARTS,
    *,
    owner: str = "alice",
    content_type: str = "application/octet-stream",
    **kwargs: Any,
) -> Upload:
    """request_upload of ``size`` random bytes (above the threshold: multipart) + commit."""
    body = os.urandom(size)
    ticket = outbox.request_upload(
        conn,
        owner_id=owner,
        filename="big.bin",
        content_type=content_type,
        size=size,
        **kwargs,
    )
    conn.commit()
    assert ticket.multipart is not None and ticket.url is None
    return Upload(ticket, body, owner)


def part_url(
    outbox: Outbox,
    conn: psycopg.Connection[Any],
    up: Upload,
    number: int,
    body: bytes | None = None,
) -> PartTicket:
    """part_url for part ``number`` with the SHA-256 of ``body`` (default: the part's) + commit."""
    ticket = outbox.part_url(
        conn,
        owner_id=up.owner,
        document_id=up.id,
        part_number=number,
        sha256=sha(up.part(number) if body is None else body),
    )
    conn.commit()
    return ticket


def put_part(ticket: PartTicket, body: bytes) -> requests.Response:
    """PUT a part as a browser would: the signed headers, Content-Length set from the body."""
    headers = {k: v for k, v in ticket.headers.items() if k.lower() != "content-length"}
    return requests.put(ticket.url, data=body, headers=headers, timeout=60)


def send_parts(
    outbox: Outbox,
    conn: psycopg.Connection[Any],
    up: Upload,
    numbers: list[int] | None = None,
    *,
    report: bool = True,
) -> dict[int, str]:
    """Ask a URL for each part, PUT it over HTTP, report its ETag; returns the ETags."""
    etags = {}
    for number in numbers or list(range(1, up.plan.part_count + 1)):
        response = put_part(part_url(outbox, conn, up, number), up.part(number))
        assert response.status_code == 200, response.text
        etags[number] = response.headers["ETag"]
        if report:
            outbox.report_part(
                conn, owner_id=up.owner, document_id=up.id, part_number=number, etag=etags[number]
            )
            conn.commit()
    return etags


def uploads_of(settings: Settings, key: str) -> list[str]:
    """The upload ids storage lists in progress for ``key``."""
    storage = Storage(settings)
    found: list[str] = []
    markers: dict[str, str] | None = {}
    while markers is not None:
        page, markers = storage.list_uploads_page(key, markers, 1000)
        found.extend(u.upload_id for u in page if u.key == key)
    return found


def keys_listed(settings: Settings, key: str) -> list[str]:
    """The object keys storage lists under ``key`` (the object itself, if it exists)."""
    resp = Storage(settings).client.list_objects_v2(Bucket=settings.s3_bucket, Prefix=key)
    return [str(o["Key"]) for o in resp.get("Contents", [])]
