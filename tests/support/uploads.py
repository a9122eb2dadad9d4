"""Helpers for the upload helper's tests: an in-process worker running beside the upload,
the reference API under a real uvicorn on a free port, and a front end that watches calls."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

from outbox import OutboxError, Settings
from outbox.constants import DocumentStatus
from outbox.models import PartTicket
from outbox.uploader import RemoteUpload, Started, UploadApi
from tests.support.core import InlineWorker
from tests.support.util import wait_for


@contextlib.contextmanager
def worker_running(
    worker: InlineWorker, *, gate: threading.Event | None = None, interval: float = 0.02
) -> Iterator[None]:
    """The inline worker (relay + event processor) stepping in a thread while the block runs:
    it creates multipart uploads while the helper waits on ``UploadNotReady``, and verifies
    what is confirmed; with ``gate``, only once the gate is set. Its errors fail the test
    at the end of the block."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        while gate is not None and not gate.is_set() and not stop.is_set():
            gate.wait(interval)
        while not stop.is_set():
            try:
                worker.step()
            except BaseException as exc:  # reported to the test below
                errors.append(exc)
                return
            stop.wait(interval)

    thread = threading.Thread(target=loop, name="inline-worker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def uvicorn_api(settings: Settings) -> Iterator[str]:
    """The reference HTTP API (``create_app``) served by a real uvicorn on a free port of
    127.0.0.1, in a thread; its base URL."""
    import uvicorn

    from outbox.webapp import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=30, message="uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class Watched:
    """A front end that passes every call through to ``api`` and records it (thread-safe);
    ``before_part_url`` runs in the calling thread before each ``part_url``, and
    ``on_error`` when one raises (its code is recorded as ``part_url_error``)."""

    def __init__(
        self,
        api: UploadApi,
        *,
        before_part_url: Callable[[int], None] | None = None,
        on_error: Callable[[OutboxError], None] | None = None,
    ) -> None:
        self.api = api
        self.before_part_url = before_part_url
        self.on_error = on_error
        self.calls: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def _record(self, name: str, arg: Any = None) -> None:
        with self._lock:
            self.calls.append((name, arg))

    def named(self, name: str) -> list[Any]:
        with self._lock:
            return [arg for n, arg in self.calls if n == name]

    def start(
        self, *, filename: str, content_type: str, size: int, sha256: Callable[[], str]
    ) -> Started:
        self._record("start", size)
        return self.api.start(
            filename=filename, content_type=content_type, size=size, sha256=sha256
        )

    def part_url(self, document_id: UUID, part_number: int, sha256: str) -> PartTicket:
        self._record("part_url", part_number)
        if self.before_part_url is not None:
            self.before_part_url(part_number)
        try:
            return self.api.part_url(document_id, part_number, sha256)
        except OutboxError as exc:
            self._record("part_url_error", exc.code)
            if self.on_error is not None:
                self.on_error(exc)
            raise

    def report_part(self, document_id: UUID, part_number: int, etag: str) -> None:
        self.api.report_part(document_id, part_number, etag)
        self._record("report_part", part_number)

    def status(self, document_id: UUID) -> RemoteUpload:
        self._record("status", document_id)
        return self.api.status(document_id)

    def confirm(self, document_id: UUID) -> DocumentStatus:
        self._record("confirm", document_id)
        return self.api.confirm(document_id)
