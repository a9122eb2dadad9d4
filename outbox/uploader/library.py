"""The upload helper's front end that calls the library directly: each call in its own
transaction, committed before the helper goes on (a part URL must be recorded before the
part is sent, a report committed before the next run reads it)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar
from uuid import UUID

import psycopg

from outbox.api import Outbox
from outbox.constants import DocumentStatus
from outbox.models import PartTicket
from outbox.uploader.frontend import RemoteUpload, Started, Transient

T = TypeVar("T")
Conn = psycopg.Connection[Any]
#: Gives a connection for one call, as a context manager: ``pool.connection`` (a
#: psycopg_pool ``ConnectionPool``), or ``lambda: psycopg.connect(url)``.
Connect = Callable[[], AbstractContextManager[Conn]]


class LibraryApi:
    """The library's calls for one owner, each in its own transaction on a connection from
    ``connect`` (thread-safe when ``connect`` is: a pool is, and so is a new connection per
    call). Give the pool the uploader's ``threads`` + 2 connections (its parts being
    prepared call too).

    Raises (from every call): the library's typed errors, and ``Transient`` when PostgreSQL
    is unreachable or a statement fails with an operational error (a lock or statement
    timeout, a serialisation failure): the helper tries those again.
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        owner_id: str,
        connect: Connect,
        trace_id: str | None = None,
    ) -> None:
        self.outbox = outbox
        self.owner_id = owner_id
        self._connect = connect
        self._trace_id = trace_id

    def _call(self, call: Callable[[Conn], T]) -> T:
        committing = False
        try:
            with self._connect() as conn:
                with conn.transaction():
                    result = call(conn)
                    committing = True  # the block's end commits: an error there is unclear
                return result
        except psycopg.OperationalError as exc:
            raise Transient(f"database: {exc}", repeatable=not committing) from exc

    def start(
        self, *, filename: str, content_type: str, size: int, sha256: Callable[[], str]
    ) -> Started:
        """``request_upload``; the whole file is hashed only when it is one PUT (at most
        the library's ``multipart_threshold_bytes``)."""
        single = size <= self.outbox.settings.multipart_threshold_bytes
        digest = sha256() if single else None
        ticket = self._call(
            lambda conn: self.outbox.request_upload(
                conn,
                owner_id=self.owner_id,
                filename=filename,
                content_type=content_type,
                size=size,
                sha256=digest,
                trace_id=self._trace_id,
            )
        )
        return Started(
            document_id=ticket.document.id,
            status=ticket.document.status,
            plan=ticket.multipart,
            url=ticket.url,
            headers=dict(ticket.headers),
            deduplicated=ticket.deduplicated,
        )

    def part_url(self, document_id: UUID, part_number: int, sha256: str) -> PartTicket:
        return self._call(
            lambda conn: self.outbox.part_url(
                conn,
                owner_id=self.owner_id,
                document_id=document_id,
                part_number=part_number,
                sha256=sha256,
            )
        )

    def report_part(self, document_id: UUID, part_number: int, etag: str) -> None:
        self._call(
            lambda conn: self.outbox.report_part(
                conn,
                owner_id=self.owner_id,
                document_id=document_id,
                part_number=part_number,
                etag=etag,
            )
        )

    def status(self, document_id: UUID) -> RemoteUpload:
        st = self._call(
            lambda conn: self.outbox.upload_status(
                conn, owner_id=self.owner_id, document_id=document_id
            )
        )
        doc = st.document
        return RemoteUpload(
            document_id=doc.id,
            status=doc.status,
            filename=doc.filename,
            content_type=doc.content_type,
            size=doc.declared_size,
            plan=st.multipart,
            ready=st.ready,
            parts=tuple(st.parts),
        )

    def confirm(self, document_id: UUID) -> DocumentStatus:
        doc = self._call(
            lambda conn: self.outbox.confirm(
                conn, owner_id=self.owner_id, document_id=document_id, trace_id=self._trace_id
            )
        )
        return doc.status
