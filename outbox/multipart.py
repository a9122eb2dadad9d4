"""Multipart uploads in the library: the plan, part URLs, part reports and the upload status.

A document above ``multipart_threshold_bytes`` is uploaded in parts. ``request_upload``
fixes the plan (part size and count), reserves the whole size and queues a
``multipart_create`` event; a worker creates the multipart upload (the API never calls
storage) and records its id. The client then asks ``part_url`` for each part with that part's
SHA-256: the URL signs Content-Length and ``x-amz-checksum-sha256``, so storage refuses any
other body. It reports each finished part (``report_part``: its ETag, so a reload can resume
from ``upload_status``) and confirms once all are reported. A worker then checks every part,
completes the upload and verifies the composite checksum before the document is available.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import cache
from typing import Any
from uuid import UUID

import psycopg

from outbox import queries, validation
from outbox.constants import DocumentStatus
from outbox.db import atomic, reading
from outbox.errors import InvalidInput, InvalidState, NotFound, PartsMissing, UploadNotReady
from outbox.logs import log_context
from outbox.models import Document, MultipartPlan, PartTicket, UploadedPart, UploadStatus
from outbox.presign import Presigner, sign_within
from outbox.settings import MIB, Settings
from outbox.windows import REFRESH_MIN_SECONDS, window_closed, window_end

log = logging.getLogger("s3outbox.api")
Conn = psycopg.Connection[Any]
Cursor = psycopg.Cursor[dict[str, Any]]

#: Seconds a client waits before asking again for a part URL of an upload not created yet:
#: a worker creates it moments after ``request_upload`` commits.
NOT_READY_RETRY_SECONDS = 1
#: Most missing part numbers a ``PartsMissing`` error lists (its ``missing_count`` is exact).
MISSING_LISTED = 1000


@cache
def sql() -> dict[str, str]:
    """The named queries of multipart uploads (``outbox/multipart.sql``)."""
    return queries.load("outbox", "multipart.sql")


def plan_for(size: int, settings: Settings) -> MultipartPlan | None:
    """The parts of a ``size``-byte upload, or None when it is one PUT (at most the
    threshold). Parts are ``multipart_part_size_bytes``, raised in whole MiB when that is
    needed to keep within 10,000 parts; the last part holds what remains."""
    if size <= settings.multipart_threshold_bytes:
        return None
    part_size = settings.multipart_part_size_bytes
    smallest = -(-size // validation.MAX_PARTS)
    if smallest > part_size:
        part_size = -(-smallest // MIB) * MIB
    return MultipartPlan(size=size, part_size=part_size, part_count=-(-size // part_size))


def whole_file_sha256(value: object, plan: MultipartPlan | None, settings: Settings) -> str | None:
    """The declared SHA-256 of a single PUT (required), or None for a multipart document
    (where one is refused: each part's is sent with its URL).

    Raises:
        InvalidInput: a SHA-256 missing or malformed for a single PUT, or given for a
            multipart document; a missing or refused one carries
            ``multipart_threshold_bytes``.
    """
    if plan is None:
        if value is None:
            # The threshold tells a client that asked without a hash (as the upload page
            # does, not knowing it) that this file is sent with one PUT: hash it, ask again.
            raise InvalidInput(
                "sha256 is required: the hex SHA-256 of the file",
                multipart_threshold_bytes=settings.multipart_threshold_bytes,
            )
        return validation.sha256_hex(value)
    if value is not None:
        raise InvalidInput(
            f"a file above {settings.multipart_threshold_bytes} bytes is uploaded in parts:"
            " send no sha256 for the whole file, send each part's SHA-256 when asking for"
            " that part's URL",
            multipart_threshold_bytes=settings.multipart_threshold_bytes,
        )
    return None


def insert_document(
    cur: Cursor,
    *,
    id: UUID,
    owner: str,
    key: str,
    filename: str,
    content_type: str,
    plan: MultipartPlan,
    ttl: int,
    trace: str,
    now: datetime | None,
) -> dict[str, Any] | None:
    """Reserve the whole size, insert the pending multipart document and its
    ``multipart_create`` event, in one statement. None when the quota cannot take it."""
    return cur.execute(
        sql()["reserve_and_insert_multipart"],
        {
            "id": id,
            "owner_id": owner,
            "object_key": key,
            "filename": filename,
            "content_type": content_type,
            "size": plan.size,
            "part_size": plan.part_size,
            "part_count": plan.part_count,
            "ttl": ttl,
            "trace_id": trace,
            "now": now,
        },
    ).fetchone()


def check_all_reported(cur: Cursor, doc: Document) -> None:
    """Raise ``PartsMissing`` unless every part of this multipart document was reported.
    Run after the document's row lock, in a new statement: it sees every report committed
    before that lock was granted."""
    plan = doc.multipart
    assert plan is not None
    rows = cur.execute(
        sql()["missing_parts"],
        {"id": doc.id, "part_count": plan.part_count, "limit": MISSING_LISTED},
    ).fetchall()
    if rows:
        count = int(rows[0]["missing_count"])
        raise PartsMissing(
            f"{count} of {plan.part_count} parts are not reported yet: upload and report"
            " them, then confirm",
            document_id=str(doc.id),
            missing=[int(r["part_number"]) for r in rows],
            missing_count=count,
        )


def _pending_multipart(row: dict[str, Any] | None, *, need_upload: bool) -> Document:
    """The locked row as a pending multipart document whose upload exists.

    Raises:
        NotFound: no row (no such document for this owner).
        InvalidState: not a multipart document, or no longer pending.
        UploadNotReady: its multipart upload is not created yet (``need_upload``).
    """
    if row is None:
        raise NotFound("document not found")
    doc = Document.from_row(row)
    if doc.multipart is None:
        raise InvalidState(
            "this document is uploaded with one PUT, not in parts", status=doc.status.value
        )
    if doc.status != DocumentStatus.PENDING:
        raise InvalidState(
            f"the document is {doc.status.value}: its parts can no longer change",
            status=doc.status.value,
        )
    if need_upload and row["upload_id"] is None:
        raise UploadNotReady(
            "the multipart upload is being created: ask again in a moment",
            document_id=str(doc.id),
            retry_after=NOT_READY_RETRY_SECONDS,
        )
    return doc


def _in_plan(doc: Document, number: int) -> tuple[int, int]:
    """``(offset, size)`` of part ``number`` of the document's plan.

    Raises:
        InvalidInput: the number is above the plan's part count.
    """
    plan = doc.multipart
    assert plan is not None
    if number > plan.part_count:
        raise InvalidInput(
            f"part_number {number} is out of range: this upload has parts 1..{plan.part_count}",
            part_count=plan.part_count,
        )
    return plan.part_range(number)


class MultipartCalls:
    """The multipart calls of ``Outbox`` (a mixin: it needs ``settings`` and ``presigner``)."""

    settings: Settings
    presigner: Presigner

    def part_url(
        self,
        conn: Conn,
        *,
        owner_id: str,
        document_id: UUID | str,
        part_number: int,
        sha256: str,
        expires_in: int | None = None,
        now: datetime | None = None,
    ) -> PartTicket:
        """A presigned PUT for one part of a pending multipart document: it signs the part's
        Content-Length (from the plan) and ``x-amz-checksum-sha256`` (``sha256``, the hex
        SHA-256 of exactly that part's bytes), so storage refuses any other body. The part's
        SHA-256 is recorded (asking again with another one replaces it, and forgets the
        ETag reported for the old one). The URL is valid ``expires_in`` seconds (default
        ``upload_url_ttl_seconds``), never past the document's creation +
        ``multipart_upload_window_seconds``; the document's expiry becomes the latest of its
        URLs' (never shortened). ``now`` (tests) stands for the signing instant.

        Raises:
            InvalidInput (400): bad owner id, document id, part number (not an integer in
                1..10,000, or above the plan's part count), SHA-256 or ``expires_in``.
            NotFound (404): no such document for this owner.
            InvalidState (409): not a multipart document, or no longer pending (confirmed,
                expired, deleted...); carries ``status``.
            UploadNotReady (409): the multipart upload is not created yet; carries
                ``retry_after`` (seconds).
            UploadWindowClosed (409): less than ``expires_in`` (or 60 s, if smaller) is
                left of the upload window; carries ``expires_at`` and ``retry_after``.
        """
        owner = validation.owner_id(owner_id)
        doc_id = validation.document_id(document_id)
        number = validation.part_number(part_number)
        digest = validation.sha256_hex(sha256)
        ttl = validation.ttl(
            self.settings.upload_url_ttl_seconds if expires_in is None else expires_in,
            self.settings.upload_url_max_ttl_seconds,
        )
        with atomic(conn) as cur:
            row = cur.execute(
                sql()["lock_owned_document"], {"id": doc_id, "owner_id": owner}
            ).fetchone()
            doc = _pending_multipart(row, need_upload=True)
            assert row is not None
            _offset, size = _in_plan(doc, number)
            upload_id: str = row["upload_id"]

            def sign(seconds: int) -> tuple[str, dict[str, str]]:
                return self.presigner.part_url(
                    key=doc.object_key,
                    upload_id=upload_id,
                    part_number=number,
                    size=size,
                    sha256_hex=digest,
                    expires_in=seconds,
                )

            signed = sign_within(
                sign,
                ttl,
                now,
                window=window_end(self.settings, doc),
                least=min(ttl, REFRESH_MIN_SECONDS),
            )
            if signed is None:
                raise window_closed(
                    self.settings,
                    doc,
                    now,
                    "the upload window of this document is closing: confirm it if every part"
                    " was uploaded and reported, or start a new upload once it has expired",
                )
            cur.execute(
                sql()["record_part_url"],
                {
                    "id": doc.id,
                    "part_number": number,
                    "size": size,
                    "sha256": digest,
                    "expires_at": signed.expires_at,
                    "now": now,
                },
            )
        return PartTicket(
            document_id=doc.id,
            part_number=number,
            size=size,
            url=signed.url,
            headers=signed.headers,
            expires_at=signed.expires_at,
        )

    def report_part(
        self,
        conn: Conn,
        *,
        owner_id: str,
        document_id: UUID | str,
        part_number: int,
        etag: str,
        now: datetime | None = None,
    ) -> UploadedPart:
        """The client's PUT of a part succeeded: record the ETag storage answered, so a
        client that reloads can resume from ``upload_status`` (the worker takes the ETags
        from storage itself, not from here). Reporting again replaces it.

        Raises:
            InvalidInput (400): bad owner id, document id, part number (as for
                ``part_url``) or ETag (1-256 printable ASCII characters, no spaces).
            NotFound (404): no such document for this owner.
            InvalidState (409): not a multipart document, no longer pending, or no URL was
                issued for this part.
            UploadNotReady (409): the multipart upload is not created yet.
        """
        owner = validation.owner_id(owner_id)
        doc_id = validation.document_id(document_id)
        number = validation.part_number(part_number)
        tag = validation.etag(etag)
        with atomic(conn) as cur:
            row = cur.execute(
                sql()["share_owned_document"], {"id": doc_id, "owner_id": owner}
            ).fetchone()
            doc = _pending_multipart(row, need_upload=True)
            _in_plan(doc, number)
            part = cur.execute(
                sql()["report_part"],
                {"id": doc.id, "part_number": number, "etag": tag, "now": now},
            ).fetchone()
            if part is None:
                raise InvalidState(
                    f"no upload URL was issued for part {number}: ask for one (part_url),"
                    " PUT the part, then report it",
                    status=doc.status.value,
                    part_number=number,
                )
        with log_context(document_id=doc.id):
            log.debug("part %d reported", number)
        return UploadedPart.model_validate(part)

    def upload_status(self, conn: Conn, *, owner_id: str, document_id: UUID | str) -> UploadStatus:
        """Where an upload stands, for a client that resumes (after a reload, say): the
        document, its multipart plan (None for a single PUT), whether the multipart upload
        exists yet (``ready``), and the parts reported so far with their size, SHA-256 and
        ETag. A client that picks the same file again re-sends only the parts missing, or
        those whose SHA-256 differs from its own. Reads only.

        Raises:
            InvalidInput (400): bad owner id or document id.
            NotFound (404): no such document for this owner.
        """
        owner = validation.owner_id(owner_id)
        doc_id = validation.document_id(document_id)
        with reading(conn) as cur:
            row = cur.execute(
                queries.load("outbox")["get_document"], {"id": doc_id, "owner_id": owner}
            ).fetchone()
            if row is None:
                raise NotFound("document not found")
            doc = Document.from_row(row)
            parts = []
            if doc.multipart is not None:
                parts = cur.execute(sql()["reported_parts"], {"id": doc.id}).fetchall()
        return UploadStatus(
            document=doc,
            multipart=doc.multipart,
            ready=row["upload_id"] is not None,
            parts=[UploadedPart.model_validate(p) for p in parts],
        )
