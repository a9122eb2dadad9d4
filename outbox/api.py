"""The library a web app calls. Every call takes the app's psycopg connection and works inside
the app's transaction: it writes rows and outbox events, never commits, and makes no network
call to storage (presigning is local HMAC work)."""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg

from outbox import blobs, multipart, validation
from outbox.constants import UPLOADING_STATUSES, BlobStatus, DocumentStatus
from outbox.db import atomic, library_queries, reading
from outbox.errors import (
    InvalidInput,
    InvalidState,
    NotFound,
    QuotaBelowUsage,
    QuotaExceeded,
)
from outbox.logs import current_trace_id, log_context, new_trace_id
from outbox.models import Document, DocumentPage, DownloadTicket, Quota, UploadTicket
from outbox.presign import Presigner, Signed, object_key, sign_for, sign_within
from outbox.settings import Settings
from outbox.windows import REFRESH_MIN_SECONDS, window_closed, window_end

log = logging.getLogger("s3outbox.api")
Conn = psycopg.Connection[Any]


def _trace(trace_id: str | None) -> str:
    """The caller's trace id (validated), else the one in the log context, else a new one."""
    return validation.trace_id(trace_id) or current_trace_id() or new_trace_id()


class Outbox(multipart.MultipartCalls):
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

    # -- uploads -------------------------------------------------------------------------

    def request_upload(
        self,
        conn: Conn,
        *,
        owner_id: str,
        filename: str,
        content_type: str,
        size: int,
        sha256: str | None = None,
        expires_in: int | None = None,
        now: datetime | None = None,
        trace_id: str | None = None,
    ) -> UploadTicket:
        """Reserve ``size`` bytes of the owner's quota and return a presigned PUT, or, above
        ``multipart_threshold_bytes``, a multipart plan.

        **Single PUT** (``sha256`` required). A new document and a new blob (its object, at
        a server-made key) with a presigned PUT. The document's ``upload_expires_at`` is the
        URL's real expiry: the instant it was signed (this process's clock) + its TTL;
        ``now`` (tests) stands for that instant.

        **The same owner's content** (SHA-256 and size) is stored once, and every request
        keeps its own document (filename, type, id); ``deduplicated`` is then True:

        - the same request again (same filename, content type and size: a retry) of a
          document still uploading or waiting returns that document: with a fresh URL and no
          second reservation while it is pending, without a URL after its confirm. A fresh
          URL never reaches past the document's creation + ``upload_url_max_ttl_seconds``
          (it is signed for what remains of that, at most ``expires_in``), and never
          shortens the document's expiry;
        - the content verified (a live document of the owner references its verified blob):
          a new document that references that blob, ``available`` in this transaction and
          charged its size; no URL;
        - the content still being uploaded by another document of the owner: a new document
          ``waiting`` on that blob (reserved, no URL); it becomes ``available`` (charged) in
          the transaction that verifies the blob, or ``rejected`` (reservation released) if
          the upload is rejected, expires, or its document is deleted first.

        Another owner's content is never looked at here: their request uploads its own copy
        (no one learns that a file exists by asking), which a worker may de-duplicate once
        it is verified (``dedup_across_owners``).

        **Multipart** (``size`` above ``multipart_threshold_bytes``; no ``sha256``: each
        part's is sent with ``part_url``). A new document every time (no de-duplication: the
        whole file's hash is not known before the upload), the whole size reserved, and a
        ``multipart_create`` event in the same statement: a worker creates the multipart
        upload, then ``part_url`` signs each part. The ticket has no URL; ``multipart`` is
        the plan (part size and count). The document expires ``expires_in`` seconds from now
        unless part URLs are asked for (each one extends it, up to its creation +
        ``multipart_upload_window_seconds``).

        Raises:
            InvalidInput (400): bad owner id, size or SHA-256; a SHA-256 missing for a single
                PUT, or given for a multipart document (both carry
                ``multipart_threshold_bytes``); or the same SHA-256 already declared with
                another size.
            ValidationFailed (422): bad filename (empty, too long, control/bidi characters,
                path separators, only dots).
            UnsupportedContentType (415): malformed or not allowed content type.
            FileTooLarge (413): size above ``max_upload_bytes``.
            QuotaExceeded (413): used + reserved + size > limit; carries the figures.
            UploadWindowClosed (409): a retry of a pending upload, with less than
                ``expires_in`` (or ``REFRESH_MIN_SECONDS``, if smaller) left of its upload
                window; carries ``expires_at`` and ``retry_after``.
        """
        owner = validation.owner_id(owner_id)
        name = validation.filename(filename, self.settings)
        ctype = validation.content_type(content_type, self.settings)
        nbytes = validation.size(size, self.settings)
        plan = multipart.plan_for(nbytes, self.settings)
        digest = multipart.whole_file_sha256(sha256, plan, self.settings)
        ttl = validation.ttl(
            self.settings.upload_url_ttl_seconds if expires_in is None else expires_in,
            self.settings.upload_url_max_ttl_seconds,
        )
        trace = _trace(trace_id)
        with atomic(conn) as cur:
            quota = cur.execute(
                self._q["lock_quota"],
                {"owner_id": owner, "default_limit": self.settings.default_quota_bytes},
            ).fetchone()
            assert quota is not None
            doc_id = uuid.uuid4()
            key = object_key(self.settings, doc_id)
            if digest is None:
                assert plan is not None
                row = multipart.insert_document(
                    cur,
                    id=doc_id,
                    owner=owner,
                    key=key,
                    filename=name,
                    content_type=ctype,
                    plan=plan,
                    ttl=ttl,
                    trace=trace,
                    now=now,
                )
                if row is None:
                    raise _quota_exceeded(quota, nbytes)
                doc = Document.from_row(row)
                with log_context(trace_id=trace, document_id=doc.id):
                    log.info(
                        "multipart upload requested",
                        extra={"size": nbytes, "parts": plan.part_count},
                    )
                return UploadTicket(
                    document=doc, url=None, headers={}, expires_at=None, multipart=plan
                )
            found = cur.execute(
                self._q["find_owner_content"], {"owner_id": owner, "sha256": digest}
            ).fetchall()
            for row in found:
                _check_same_size(row, nbytes)
            params = {
                "id": doc_id,
                "owner_id": owner,
                "object_key": key,
                "filename": name,
                "content_type": ctype,
                "size": nbytes,
                "sha256": digest,
                "trace_id": trace,
                "now": now,
            }
            ticket = self._same_content(cur, found, params, quota, ttl, now)
            if ticket is None:
                # Signed before the row is written (local HMAC work, after the quota lock
                # was granted): the expiry stored is the URL's own, however long it took.
                signed = self._sign(key, ctype, nbytes, digest, ttl, now)
                row = cur.execute(
                    self._q["reserve_and_insert_document"],
                    {**params, "expires_at": signed.expires_at},
                ).fetchone()
                if row is None:
                    raise _quota_exceeded(quota, nbytes)
                ticket = UploadTicket(
                    document=Document.from_row(row),
                    url=signed.url,
                    headers=signed.headers,
                    expires_at=signed.expires_at,
                )
        doc = ticket.document
        with log_context(trace_id=trace, document_id=doc.id):
            if ticket.deduplicated:
                log.info("upload deduplicated", extra={"status": doc.status.value})
            else:
                log.info("upload requested", extra={"size": doc.declared_size})
        return ticket

    def _same_content(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        found: list[dict[str, Any]],
        params: dict[str, Any],
        quota: dict[str, Any],
        ttl: int,
        now: datetime | None,
    ) -> UploadTicket | None:
        """The owner already has live documents of this content (``found``, locked): the
        ticket that answers the request, or None when it needs an upload of its own.

        The same request again (same filename, type and size: a retry) gets its document
        back, with a fresh URL while it is pending. Otherwise, a verified blob is shared by a
        new document, available and charged at once; a blob still being uploaded is waited
        on by a new document, reserved. The blob is locked for the new reference and its
        state required (``blobs.lock_for_reference``): a blob that went ``deleting``
        meanwhile gives nothing, and the request uploads anew.

        Raises:
            QuotaExceeded: the new document does not fit the quota.
            UploadWindowClosed: a retry of a pending upload whose window is closing.
        """
        asked = (params["filename"], params["content_type"])
        retry = next(
            (
                r
                for r in found
                if r["status"] in _RETRYABLE and (r["filename"], r["content_type"]) == asked
            ),
            None,
        )
        if retry is not None:
            doc = Document.from_row(retry)
            if doc.status != DocumentStatus.PENDING:
                return UploadTicket(
                    document=doc, url=None, headers={}, expires_at=None, deduplicated=True
                )
            signed = self._sign_refresh(doc, ttl, now)
            row = cur.execute(
                self._q["refresh_pending_upload"],
                {"id": doc.id, "expires_at": signed.expires_at, "now": now},
            ).fetchone()
            if row is None:  # cannot happen: the document is locked (kept for safety)
                raise InvalidState("the pending upload changed meanwhile: ask again")
            return UploadTicket(
                document=Document.from_row(row),
                url=signed.url,
                headers=signed.headers,
                expires_at=signed.expires_at,  # this URL's; the document's may be later
                deduplicated=True,
            )
        for wanted, query in (
            (BlobStatus.VERIFIED, self._q["share_verified_blob"]),
            (BlobStatus.UPLOADING, self._q["reserve_and_insert_waiting"]),
        ):
            holder = next((r for r in found if r["blob_status"] == wanted), None)
            if holder is None or not blobs.lock_for_reference(cur, holder["object_key"], wanted):
                continue
            row = cur.execute(query, {**params, "object_key": holder["object_key"]}).fetchone()
            if row is None:
                raise _quota_exceeded(quota, params["size"])
            return UploadTicket(
                document=Document.from_row(row),
                url=None,
                headers={},
                expires_at=None,
                deduplicated=True,
            )
        return None

    def _sign(
        self, key: str, ctype: str, size: int, sha256: str, ttl: int, now: datetime | None
    ) -> Signed:
        """A PUT URL valid ``ttl`` seconds, and its real expiry (``presign.sign_for``)."""

        def sign(seconds: int) -> tuple[str, dict[str, str]]:
            return self.presigner.put_url(
                key=key, content_type=ctype, size=size, sha256_hex=sha256, expires_in=seconds
            )

        return sign_for(sign, ttl, now)

    def _sign_refresh(self, doc: Document, ttl: int, now: datetime | None) -> Signed:
        """A fresh URL for a pending document, expiring no later than its upload window (its
        creation + the longest TTL): signed for what remains, at most ``ttl``
        (``presign.sign_within``).

        Raises:
            UploadWindowClosed: less than ``min(ttl, REFRESH_MIN_SECONDS)`` remains.
        """
        assert doc.sha256 is not None  # found by its SHA-256

        def sign(seconds: int) -> tuple[str, dict[str, str]]:
            assert doc.sha256 is not None
            return self.presigner.put_url(
                key=doc.object_key,
                content_type=doc.content_type,
                size=doc.declared_size,
                sha256_hex=doc.sha256,
                expires_in=seconds,
            )

        least = min(ttl, REFRESH_MIN_SECONDS)
        signed = sign_within(sign, ttl, now, window=window_end(self.settings, doc), least=least)
        if signed is not None:
            return signed
        # The sweeper expires it (or finds its object: a lost confirm) after its expiry + grace.
        raise window_closed(
            self.settings,
            doc,
            now,
            "this content is already pending and its upload window is closing: confirm it if"
            " it was uploaded, or ask again once it has expired",
        )

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
        trace = _trace(trace_id)
        params = {"id": doc_id, "owner_id": owner, "now": now, "trace_id": trace}
        with atomic(conn) as cur:
            row = cur.execute(self._q["confirm_document"], params).fetchone()
            if row is None:
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
        trace = _trace(trace_id)
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


def _quota_exceeded(quota: dict[str, Any], requested: int) -> QuotaExceeded:
    return QuotaExceeded(
        used=quota["used_bytes"],
        reserved=quota["reserved_bytes"],
        limit=quota["limit_bytes"],
        requested=requested,
    )


def _check_same_size(row: dict[str, Any], size: int) -> None:
    """A live document with this SHA-256 declares the same size.

    Raises:
        InvalidInput (400): the same SHA-256 declared with another size (one of the two
            declarations is false; nothing changes).
    """
    if row["declared_size"] != size:
        raise InvalidInput(
            f"this SHA-256 is already declared with another size ({row['declared_size']}"
            f" bytes, not {size})",
            document_id=str(row["id"]),
        )


#: The keyset position of a first page: after every document, newest first.
_BEFORE_ALL = (datetime.max.replace(tzinfo=UTC), UUID(int=(1 << 128) - 1))

#: States a confirm leaves as they are (confirmed already, or nothing to upload).
_CONFIRMED = frozenset({DocumentStatus.UPLOADED, DocumentStatus.WAITING, DocumentStatus.AVAILABLE})

#: A document the same request again finds and returns (rather than a new one): one still
#: uploading its blob, or waiting on one.
_RETRYABLE = frozenset({DocumentStatus.PENDING, DocumentStatus.UPLOADED, DocumentStatus.WAITING})


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
