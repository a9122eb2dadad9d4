"""The library a web app calls. Every call takes the app's psycopg connection and works inside
the app's transaction: it writes rows and outbox events, never commits, and makes no network
call to storage (presigning is local HMAC work)."""

from __future__ import annotations

import base64
import binascii
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg

from outbox import blobs, multipart, validation
from outbox.constants import UPLOADING_STATUSES, DocumentStatus
from outbox.db import atomic, library_queries, one_statement, reading
from outbox.errors import (
    InvalidInput,
    InvalidState,
    NotFound,
    QuotaBelowUsage,
)
from outbox.logs import log_context
from outbox.models import Document, DocumentPage, DownloadTicket, Quota
from outbox.presign import Presigner
from outbox.requests import UploadRequests, caller_trace
from outbox.settings import Settings

log = logging.getLogger("s3outbox.api")
Conn = psycopg.Connection[Any]


class Outbox(UploadRequests, multipart.MultipartCalls):
    """Entry point of the library. Create one per process and share it (thread-safe).

    >>> outbox = Outbox()                      # settings from S3OUTBOX_* variables
    >>> with psycopg.connect(url) as conn:     # your connection, your transaction
    ...     ticket = outbox.request_upload(conn, owner_id="u1", filename="a.pdf",
    ...                                    content_type="application/pdf", size=123,
    ...                                    sha256="...")
    ...     conn.commit()
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.presigner = Presigner(self.settings)
        self._q = library_queries()

    # -- uploads (request_upload: outbox/requests.py) ------------------------------------

    def confirm(
        self,
        conn: Conn,
        *,
        owner_id: str,
        document_id: UUID | str,
        now: datetime | None = None,
        trace_id: str | None = None,
    ) -> Document:
        """The client says the upload finished: ``pending -> uploaded`` and a verify event.
        A multipart document is confirmed only once every part was reported
        (``report_part``). Confirming twice is harmless (returns the document as it is), and
        so is confirming a document that had nothing to upload (``waiting`` or
        ``available`` from the start: the same owner's content).

        Raises:
            InvalidInput (400): bad owner id or document id.
            NotFound (404): no such document for this owner.
            InvalidState (409): the document was rejected, expired or is being deleted.
            PartsMissing (409): a multipart document with parts not reported yet; carries
                ``missing`` (the first 1,000 numbers) and ``missing_count``.
        """
        owner = validation.owner_id(owner_id)
        doc_id = validation.document_id(document_id)
        trace = caller_trace(trace_id)
        params = {"id": doc_id, "owner_id": owner, "now": now, "trace_id": trace}
        # The usual confirm (a pending upload) is one statement, without a savepoint: it
        # raises nothing when it finds nothing to confirm, so the caller's transaction stays
        # usable without one.
        with one_statement(conn) as cur:
            row = cur.execute(self._q["confirm_document"], params).fetchone()
        if row is None:
            with atomic(conn) as cur:
                row = cur.execute(multipart.sql()["lock_owned_document"], params).fetchone()
                if row is None:
                    raise NotFound("document not found")
                doc = Document.from_row(row)
                if doc.status == DocumentStatus.PENDING and doc.multipart is not None:
                    # Under the row lock, a new statement sees every report committed
                    # before it: the first look may have raced one.
                    multipart.check_all_reported(cur, doc)
                    row = cur.execute(self._q["confirm_document"], params).fetchone()
                    assert row is not None  # locked, pending, every part reported
                elif doc.status in _CONFIRMED:
                    return doc
                else:
                    raise InvalidState(
                        f"cannot confirm a document that is {doc.status.value}",
                        status=doc.status.value,
                    )
        doc = Document.from_row(row)
        with log_context(trace_id=trace, document_id=doc.id):
            log.info("upload confirmed")
        return doc

    def delete(
        self,
        conn: Conn,
        *,
        owner_id: str,
        document_id: UUID | str,
        now: datetime | None = None,
        trace_id: str | None = None,
    ) -> Document:
        """Delete a document: ``deleting`` plus a purge event, its reservation released; a
        worker finishes it (``deleted``, charge released) after this commits. Its blob's
        object is deleted, by that purge, only when no live document references it any more
        (``outbox.blobs``): deleting one of two documents that share content keeps the other
        downloadable. Deleting a document that was still uploading its blob also rejects the
        documents waiting on it. A rejected or expired document becomes ``deleted`` at once.
        Deleting twice is harmless.

        Raises:
            InvalidInput (400): bad owner id or document id.
            NotFound (404): no such document for this owner.
        """
        owner = validation.owner_id(owner_id)
        doc_id = validation.document_id(document_id)
        trace = caller_trace(trace_id)
        params = {"id": doc_id, "owner_id": owner, "now": now, "trace_id": trace}
        with atomic(conn) as cur:
            cur.execute(self._q["lock_owner_quota"], {"owner_id": owner})
            row = cur.execute(self._q["delete_live_document"], params).fetchone()
            if row is not None:
                blobs.drop_reference(
                    cur,
                    key=row["object_key"],
                    uploader_left=row["left_status"] in UPLOADING_STATUSES,
                    reason="the upload it waited on was deleted before it finished",
                    now=now,
                )
            if row is None:
                row = cur.execute(self._q["hide_finished_document"], params).fetchone()
            if row is None:
                row = self._get_row(cur, owner, doc_id)
        doc = Document.from_row(row)
        with log_context(trace_id=trace, document_id=doc.id):
            log.info("delete requested", extra={"status": doc.status.value})
        return doc

    # -- reads ---------------------------------------------------------------------------

    def get(self, conn: Conn, *, owner_id: str, document_id: UUID | str) -> Document:
        """One document of this owner.

        Raises:
            InvalidInput (400): bad owner id or document id.
            NotFound (404): no such document for this owner.
        """
        owner = validation.owner_id(owner_id)
        doc_id = validation.document_id(document_id)
        with reading(conn) as cur:
            return Document.from_row(self._get_row(cur, owner, doc_id))

    def download_url(
        self,
        conn: Conn,
        *,
        owner_id: str,
        document_id: UUID | str,
        expires_in: int | None = None,
    ) -> DownloadTicket:
        """A short-lived presigned GET, only for an ``available`` document of this owner.
        The response's headers are set by the URL, not by what the stored object carries:
        the declared Content-Type, Content-Disposition ``attachment`` with the original
        filename (RFC 6266), Content-Encoding ``identity`` and Cache-Control ``private,
        no-store`` (invariant 2: exactly the verified bytes, never cached).

        Raises:
            InvalidInput (400): bad ids, or ``expires_in`` above ``download_url_ttl_seconds``.
            NotFound (404): no such document for this owner.
            InvalidState (409): the document is not available (yet, or any more).
        """
        doc = self.get(conn, owner_id=owner_id, document_id=document_id)
        ttl = validation.ttl(
            self.settings.download_url_ttl_seconds if expires_in is None else expires_in,
            self.settings.download_url_ttl_seconds,
        )
        if doc.status != DocumentStatus.AVAILABLE:
            raise InvalidState(
                f"document is {doc.status.value}, not available", status=doc.status.value
            )
        url = self.presigner.get_url(
            key=doc.object_key,
            filename=doc.filename,
            content_type=doc.content_type,
            expires_in=ttl,
        )
        return DownloadTicket(
            document_id=doc.id, url=url, expires_at=datetime.now(UTC) + timedelta(seconds=ttl)
        )

    def list(
        self,
        conn: Conn,
        *,
        owner_id: str,
        limit: int = 50,
        cursor: str | None = None,
        status: DocumentStatus | str | None = None,
        include_deleted: bool = False,
    ) -> DocumentPage:
        """An owner's documents, newest first, ``limit`` at a time.

        Raises:
            InvalidInput (400): bad owner id, limit (1..500), cursor, status or include_deleted.
        """
        owner = validation.owner_id(owner_id)
        size = validation.page_limit(limit)
        if not isinstance(include_deleted, bool):
            raise InvalidInput("include_deleted must be a boolean")
        after_created, after_id = _decode_cursor(cursor)
        if status is not None:
            try:
                status = DocumentStatus(status)
            except ValueError:
                raise InvalidInput(f"unknown status {status!r}") from None
        if after_created is None or after_id is None:
            after_created, after_id = _BEFORE_ALL  # the first page
        # Without deleted documents (the usual list), through an index that holds none.
        live = not include_deleted and status != DocumentStatus.DELETED
        query = self._q["list_live_documents"] if live else self._q["list_documents"]
        with reading(conn) as cur:
            rows = cur.execute(
                query,
                {
                    "owner_id": owner,
                    "status": status.value if status is not None else None,
                    "after_created": after_created,
                    "after_id": after_id,
                    "limit": size + 1,
                },
            ).fetchall()
        items = [Document.from_row(r) for r in rows[:size]]
        next_cursor = _encode_cursor(items[-1]) if len(rows) > size else None
        return DocumentPage(items=items, next_cursor=next_cursor)

    # -- quotas --------------------------------------------------------------------------

    def quota(self, conn: Conn, *, owner_id: str) -> Quota:
        """An owner's quota. An owner never seen has the default limit and nothing used.

        Raises:
            InvalidInput (400): bad owner id.
        """
        owner = validation.owner_id(owner_id)
        with reading(conn) as cur:
            row = cur.execute(self._q["get_quota"], {"owner_id": owner}).fetchone()
        if row is None:
            return Quota(
                owner_id=owner,
                limit_bytes=self.settings.default_quota_bytes,
                used_bytes=0,
                reserved_bytes=0,
            )
        return Quota.model_validate(row)

    def set_limit(self, conn: Conn, *, owner_id: str, limit_bytes: int) -> Quota:
        """Set an owner's quota limit.

        Raises:
            InvalidInput (400): bad owner id or limit.
            QuotaBelowUsage (409): the limit is below what the owner uses and reserves now.
        """
        owner = validation.owner_id(owner_id)
        limit = validation.limit_bytes(limit_bytes)
        with atomic(conn) as cur:
            row = cur.execute(
                self._q["set_quota_limit"], {"owner_id": owner, "limit": limit}
            ).fetchone()
            if row is None:
                current = cur.execute(self._q["get_quota"], {"owner_id": owner}).fetchone()
                assert current is not None
                raise QuotaBelowUsage(
                    f"limit {limit} is below used + reserved bytes",
                    used=current["used_bytes"],
                    reserved=current["reserved_bytes"],
                    limit=limit,
                )
        return Quota.model_validate(row)

    # -- helpers -------------------------------------------------------------------------

    def _get_row(
        self, cur: psycopg.Cursor[dict[str, Any]], owner: str, doc_id: UUID
    ) -> dict[str, Any]:
        row = cur.execute(self._q["get_document"], {"id": doc_id, "owner_id": owner}).fetchone()
        if row is None:
            # The same answer whether the id is unknown or another owner's: reveal nothing.
            raise NotFound("document not found")
        return row


#: The keyset position of a first page: after every document, newest first.
_BEFORE_ALL = (datetime.max.replace(tzinfo=UTC), UUID(int=(1 << 128) - 1))

#: States a confirm leaves as they are (confirmed already, or nothing to upload).
_CONFIRMED = frozenset({DocumentStatus.UPLOADED, DocumentStatus.WAITING, DocumentStatus.AVAILABLE})


def _encode_cursor(doc: Document) -> str:
    raw = f"{doc.created_at.isoformat()}|{doc.id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str | None) -> tuple[datetime | None, UUID | None]:
    if cursor is None:
        return None, None
    try:
        if not isinstance(cursor, str) or len(cursor) > 200:
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, ident = raw.partition("|")
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError
        return when, UUID(ident)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("invalid page cursor") from None
