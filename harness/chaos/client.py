"""One client thread's view of the web app: library calls in its own transactions, retried
across PostgreSQL restarts, and uploads over HTTP straight to storage."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any, TypeVar

import psycopg
import requests

from harness.chaos.items import Item
from outbox import DocumentStatus, Outbox, queries
from outbox.models import PartTicket, UploadTicket

T = TypeVar("T")


@cache
def _sql() -> dict[str, str]:
    return queries.load("harness.chaos")


class Counters:
    """Thread-safe counters of what the clients saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.c: Counter[str] = Counter()

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.c[name] += n


class Client:
    """One client thread's view of the web app: its own connection, retried across
    PostgreSQL restarts, and HTTP PUTs straight to storage."""

    def __init__(
        self, database_url: str, outbox: Outbox, counters: Counters, retry_seconds: float
    ) -> None:
        self.database_url = database_url
        self.outbox = outbox
        self.counters = counters
        self.retry_seconds = retry_seconds
        self._conn: psycopg.Connection[Any] | None = None
        self.http = requests.Session()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self.http.close()

    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.database_url, connect_timeout=5)
        return self._conn

    def tx(self, what: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn`` in a transaction and commit; on a lost connection, reconnect and run it
        again. A commit whose answer was lost may have happened: every call used here is
        safe to repeat (a repeated request dedupes, confirm and delete are idempotent)."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.1
        while True:
            conn = None
            try:
                conn = self.conn()
                result = fn(conn)
                conn.commit()
                return result
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self.counters.inc("db_retries")
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what}: database unreachable: {exc}") from exc
                time.sleep(delay)  # retry backoff while PostgreSQL restarts
                delay = min(delay * 2, 2.0)
            except BaseException:
                if conn is not None and not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        conn.rollback()
                raise

    def request(
        self, item: Item, expires_in: int | None = None, *, multipart_size: int | None = None
    ) -> UploadTicket:
        """request_upload of the item; with ``multipart_size``, of a file that large above the
        multipart threshold (no whole-file SHA-256: each part carries its own)."""
        return self.tx(
            "request_upload",
            lambda c: self.outbox.request_upload(
                c,
                owner_id=item.owner,
                filename=f"chaos file {item.index}.bin",
                content_type=item.content_type,
                size=len(item.body) if multipart_size is None else multipart_size,
                sha256=item.sha256 if multipart_size is None else None,
                expires_in=expires_in,
            ),
        )

    def part_url(self, owner: str, doc_id: uuid.UUID, number: int, data: bytes) -> PartTicket:
        digest = hashlib.sha256(data).hexdigest()
        return self.tx(
            "part_url",
            lambda c: self.outbox.part_url(
                c, owner_id=owner, document_id=doc_id, part_number=number, sha256=digest
            ),
        )

    def report_part(self, owner: str, doc_id: uuid.UUID, number: int, etag: str) -> None:
        self.tx(
            "report_part",
            lambda c: self.outbox.report_part(
                c, owner_id=owner, document_id=doc_id, part_number=number, etag=etag
            ),
        )

    def confirm(self, item: Item, doc_id: uuid.UUID) -> None:
        self.tx(
            "confirm",
            lambda c: self.outbox.confirm(c, owner_id=item.owner, document_id=doc_id),
        )

    def delete(self, owner: str, doc_id: uuid.UUID) -> None:
        self.tx("delete", lambda c: self.outbox.delete(c, owner_id=owner, document_id=doc_id))

    def status(self, owner: str, doc_id: uuid.UUID) -> DocumentStatus:
        return self.tx(
            "get", lambda c: self.outbox.get(c, owner_id=owner, document_id=doc_id).status
        )

    def peek_status(self, owner: str, doc_id: uuid.UUID) -> DocumentStatus | None:
        """The document's status in one try (None while PostgreSQL is away): for polling."""
        try:
            conn = self.conn()
            status = self.outbox.get(conn, owner_id=owner, document_id=doc_id).status
            conn.rollback()
            return status
        except (psycopg.OperationalError, psycopg.InterfaceError):
            with contextlib.suppress(psycopg.Error):
                if self._conn is not None:
                    self._conn.close()
            return None

    @contextlib.contextmanager
    def quota_held(self, owner: str) -> Iterator[bool]:
        """Another app transaction (its own connection) that holds ``owner``'s quota row
        (``SELECT ... FOR UPDATE``) until the block ends, then rolls back: a slow web request
        that locked it. Yields False when PostgreSQL was away (no hold); a restart during the
        hold simply ends it early."""
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = psycopg.connect(self.database_url, connect_timeout=5)
            conn.execute(_sql()["chaos_hold_quota"], {"owner": owner}).fetchall()
        except psycopg.OperationalError:
            if conn is not None:
                conn.close()
            conn = None
        try:
            yield conn is not None
        finally:
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
                conn.close()

    def put(
        self, ticket: UploadTicket, body: bytes, extra_headers: dict[str, str] | None = None
    ) -> None:
        """PUT as a browser does. ``extra_headers``: unsigned headers a hostile uploader adds
        to the signed ones."""
        assert ticket.url is not None
        self.put_url(ticket.url, {**ticket.headers, **(extra_headers or {})}, body)

    def put_url(self, url: str, headers: dict[str, str], body: bytes) -> str:
        """PUT ``body`` to a presigned URL with its signed headers (Content-Length comes from
        the body); returns the ETag. Storage is not behind the fault proxy, but a refused or
        broken PUT is retried anyway (the URL may be reused until it expires)."""
        sent = {k: v for k, v in headers.items() if k.lower() != "content-length"}
        last = ""
        for attempt in range(6):
            try:
                resp = self.http.put(url, data=body, headers=sent, timeout=60)
            except requests.RequestException as exc:
                last = repr(exc)
            else:
                if resp.status_code == 200:
                    return str(resp.headers.get("ETag", ""))
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            self.counters.inc("put_retries")
            time.sleep(0.2 * 2**attempt)  # retry backoff
        raise RuntimeError(f"PUT failed: {last}")
