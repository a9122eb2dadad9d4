"""Upload requests: ``Outbox.request_upload`` and the paths it takes.

The usual request (content new to its owner) is one statement in the caller's transaction
(``s3outbox.request_upload``, schema.sql); a request that meets content the owner already
has (a retry, content to share or to wait on) takes the general path, in a savepoint.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from outbox import blobs, multipart, validation
from outbox.constants import BlobStatus, DocumentStatus, RequestOutcome
from outbox.db import atomic, one_statement
from outbox.errors import InvalidInput, InvalidState, QuotaExceeded
from outbox.logs import current_trace_id, log_context, new_trace_id
from outbox.models import Document, MultipartPlan, UploadTicket
from outbox.presign import Presigner, Signed, Signer, object_key, sign_for, sign_within
from outbox.settings import Settings
from outbox.windows import REFRESH_MIN_SECONDS, window_closed, window_end

log = logging.getLogger("s3outbox.api")
Conn = psycopg.Connection[Any]
Cursor = psycopg.Cursor[dict[str, Any]]


def caller_trace(trace_id: str | None) -> str:
    """The caller's trace id (validated), else the one in the log context, else a new one."""
    return validation.trace_id(trace_id) or current_trace_id() or new_trace_id()


class UploadRequests:
    """The upload requests of ``Outbox`` (a mixin: it needs ``settings``, ``presigner`` and
    the library's named queries ``_q``)."""

    settings: Settings
    presigner: Presigner
    _q: dict[str, str]

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
        trace = caller_trace(trace_id)
        doc_id = uuid.uuid4()
        key = object_key(self.settings, doc_id)
        if digest is None:
            assert plan is not None
            return self._request_multipart(
                conn, owner, doc_id, key, name, ctype, plan, ttl, trace, now
            )
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
        # Signed before the statement (local HMAC work): the expiry stored is the URL's own,
        # however long the statement then waits for the owner's quota lock.
        signed = self._sign(key, ctype, nbytes, digest, ttl, now)
        # The usual request (content new to its owner): one statement, no savepoint. It
        # never raises for a refusal, so the caller's transaction stays usable without one.
        started = time.monotonic()
        with one_statement(conn) as cur:
            row = cur.execute(
                self._q["request_upload"],
                {
                    **params,
                    "default_limit": self.settings.default_quota_bytes,
                    "expires_at": signed.expires_at,
                },
            ).fetchone()
        assert row is not None  # the function returns exactly one row
        waited = time.monotonic() - started
        outcome = RequestOutcome(row["outcome"])
        if outcome == RequestOutcome.QUOTA_EXCEEDED:
            raise QuotaExceeded(
                used=row["quota_used_bytes"],
                reserved=row["quota_reserved_bytes"],
                limit=row["quota_limit_bytes"],
                requested=nbytes,
            )
        if outcome == RequestOutcome.CREATED:
            doc = Document.from_row(row)
            if now is None and waited >= _RESIGN_AFTER_SECONDS:
                signed, doc = self._resign_after_wait(conn, doc, signed, ttl)
            ticket = UploadTicket(
                document=doc,
                url=signed.url,
                headers=signed.headers,
                expires_at=signed.expires_at,
            )
        else:
            ticket = self._request_known_content(conn, params, ttl, now)
        doc = ticket.document
        with log_context(trace_id=trace, document_id=doc.id):
            if ticket.deduplicated:
                log.info("upload deduplicated", extra={"status": doc.status.value})
            else:
                log.info("upload requested", extra={"size": doc.declared_size})
        return ticket

    def _request_multipart(
        self,
        conn: Conn,
        owner: str,
        doc_id: UUID,
        key: str,
        name: str,
        ctype: str,
        plan: MultipartPlan,
        ttl: int,
        trace: str,
        now: datetime | None,
    ) -> UploadTicket:
        """A new multipart document, its size reserved, and its ``multipart_create`` event.

        Raises:
            QuotaExceeded: the document does not fit the quota.
        """
        with atomic(conn) as cur:
            quota = _lock_quota(cur, self._q, owner, self.settings)
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
                raise _quota_exceeded(quota, plan.size)
        doc = Document.from_row(row)
        with log_context(trace_id=trace, document_id=doc.id):
            log.info(
                "multipart upload requested", extra={"size": plan.size, "parts": plan.part_count}
            )
        return UploadTicket(document=doc, url=None, headers={}, expires_at=None, multipart=plan)

    def _resign_after_wait(
        self, conn: Conn, doc: Document, signed: Signed, ttl: int
    ) -> tuple[Signed, Document]:
        """The statement waited (for the owner's quota lock: another request of theirs, or a
        long transaction holding it): the URL signed before it has lost that time, maybe all
        of it. Sign it again, within the document's upload window, and store the new expiry
        (later: never shorten it), so the URL handed out lives its ``ttl`` from now."""
        fresh = sign_within(
            self._signer_of(doc), ttl, None, window=window_end(self.settings, doc), least=1
        )
        if fresh is None or fresh.expires_at <= signed.expires_at:
            return signed, doc
        with one_statement(conn) as cur:
            row = cur.execute(
                self._q["refresh_pending_upload"],
                {"id": doc.id, "expires_at": fresh.expires_at, "now": None},
            ).fetchone()
        assert row is not None  # inserted and locked by this transaction, still pending
        return fresh, Document.from_row(row)

    def _request_known_content(
        self,
        conn: Conn,
        params: dict[str, Any],
        ttl: int,
        now: datetime | None,
    ) -> UploadTicket:
        """The owner has live documents of this content: the general path, in a savepoint.
        A retry gets its document back, content is shared or waited on (``_same_content``),
        or, when none of those applies any more, a new upload.

        Raises:
            InvalidInput: the same SHA-256 already declared with another size.
            QuotaExceeded: the new document does not fit the quota.
            UploadWindowClosed: a retry of a pending upload whose window is closing.
        """
        with atomic(conn) as cur:
            quota = _lock_quota(cur, self._q, params["owner_id"], self.settings)
            found = cur.execute(
                self._q["find_owner_content"],
                {"owner_id": params["owner_id"], "sha256": params["sha256"]},
            ).fetchall()
            for same in found:
                _check_same_size(same, params["size"])
            ticket = self._same_content(cur, found, params, quota, ttl, now)
            if ticket is not None:
                return ticket
            # Signed after the locks (local HMAC work): the expiry stored is the URL's own,
            # and the URL has its whole TTL however long the locks took.
            signed = self._sign(
                params["object_key"],
                params["content_type"],
                params["size"],
                params["sha256"],
                ttl,
                now,
            )
            created = cur.execute(
                self._q["reserve_and_insert_document"],
                {**params, "expires_at": signed.expires_at},
            ).fetchone()
            if created is None:
                raise _quota_exceeded(quota, params["size"])
        return UploadTicket(
            document=Document.from_row(created),
            url=signed.url,
            headers=signed.headers,
            expires_at=signed.expires_at,
        )

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

    def _signer_of(self, doc: Document) -> Signer:
        """Signs PUT URLs of a pending single-PUT document, for the seconds asked."""
        sha256 = doc.sha256
        assert sha256 is not None  # a single PUT declares its SHA-256

        def sign(seconds: int) -> tuple[str, dict[str, str]]:
            return self.presigner.put_url(
                key=doc.object_key,
                content_type=doc.content_type,
                size=doc.declared_size,
                sha256_hex=sha256,
                expires_in=seconds,
            )

        return sign

    def _sign_refresh(self, doc: Document, ttl: int, now: datetime | None) -> Signed:
        """A fresh URL for a pending document, expiring no later than its upload window (its
        creation + the longest TTL): signed for what remains, at most ``ttl``
        (``presign.sign_within``).

        Raises:
            UploadWindowClosed: less than ``min(ttl, REFRESH_MIN_SECONDS)`` remains.
        """
        least = min(ttl, REFRESH_MIN_SECONDS)
        signed = sign_within(
            self._signer_of(doc), ttl, now, window=window_end(self.settings, doc), least=least
        )
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


def _lock_quota(cur: Cursor, q: dict[str, str], owner: str, settings: Settings) -> dict[str, Any]:
    """Create the owner's quota row if new and lock it until the caller's transaction ends."""
    quota = cur.execute(
        q["lock_quota"], {"owner_id": owner, "default_limit": settings.default_quota_bytes}
    ).fetchone()
    assert quota is not None
    return quota


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


#: A statement that took this long waited for a lock: the URL signed ahead of it is signed
#: again, so it keeps its whole TTL.
_RESIGN_AFTER_SECONDS = 1.0

#: A document the same request again finds and returns (rather than a new one): one still
#: uploading its blob, or waiting on one.
_RETRYABLE = frozenset({DocumentStatus.PENDING, DocumentStatus.UPLOADED, DocumentStatus.WAITING})
