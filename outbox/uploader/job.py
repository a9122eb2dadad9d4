"""One upload in progress: its file and document, its counters, when it must stop (its
owner's stop flag, or another part's failure), and a front end's calls retried."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar
from uuid import UUID

from outbox.errors import UploadFailed, UploadInterrupted, UploadNotReady
from outbox.uploader.files import LocalFile
from outbox.uploader.frontend import Transient
from outbox.uploader.models import Backoff
from outbox.uploader.progress import Progress

log = logging.getLogger("s3outbox.uploader")
T = TypeVar("T")

#: How often a wait looks at the stop flag.
_TICK_SECONDS = 0.1


class StopSignal(Protocol):
    """What ``stop`` may be: a ``threading.Event``, a ``worker.service.StopFlag``..."""

    def is_set(self) -> bool: ...


class Abandoned(Exception):
    """A part stopped because another part failed (the first failure is what is raised)."""


class JobSettings(Protocol):
    """What a job needs from its uploader."""

    @property
    def stop(self) -> StopSignal | None: ...
    @property
    def backoff(self) -> Backoff: ...
    @property
    def not_ready_timeout(self) -> float: ...


class Job:
    """One upload in progress: the file, the document, the counters, and the flag that
    stops every part once one has failed."""

    def __init__(self, settings: JobSettings, file: LocalFile) -> None:
        self.up = settings
        self.file = file
        self.document_id: UUID | None = None
        self.failed = threading.Event()
        self.progress: Progress | None = None
        self._lock = threading.Lock()
        self.retries = 0
        self.parts_sent = 0
        self.parts_skipped = 0
        self.bytes_sent = 0

    def details(self, part_number: int | None = None) -> dict[str, object]:
        return {
            "document_id": None if self.document_id is None else str(self.document_id),
            "part_number": part_number,
        }

    def check(self) -> None:
        """Raise if the upload must stop: stopped by its owner, or another part failed."""
        stop = self.up.stop
        if stop is not None and stop.is_set():
            raise UploadInterrupted(
                "the upload was stopped before it was confirmed: resume it with its"
                " document id (only the parts not reported are sent again)",
                **self.details(),
            )
        if self.failed.is_set():
            raise Abandoned

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, ending early (raising) when the upload must stop."""
        deadline = time.monotonic() + seconds
        while True:
            self.check()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.failed.wait(min(left, _TICK_SECONDS))

    def count(self, *, retries: int = 0, sent: int = 0, skipped: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.retries += retries
            self.parts_sent += sent
            self.parts_skipped += skipped
            self.bytes_sent += nbytes

    @contextlib.contextmanager
    def naming_failures(self) -> Iterator[None]:
        """Failures raised inside carry this upload's document id (a resume needs it)."""
        try:
            yield
        except UploadFailed as exc:
            if exc.details.get("document_id") is None and self.document_id is not None:
                exc.details["document_id"] = str(self.document_id)
            raise

    def moved(self, nbytes: int) -> None:
        if self.progress is not None:
            self.progress.add(nbytes)

    def call(self, fn: Callable[[], T], *, idempotent: bool, part_number: int | None = None) -> T:
        """A front end's call: ``UploadNotReady`` waited out (its ``retry_after``, for at
        most the uploader's ``not_ready_timeout``), ``Transient`` retried with backoff
        (only where repeating it is harmless)."""
        attempt = 0
        not_ready_until: float | None = None
        while True:
            # No stop check before the first try: a part already sent is still reported
            # when the upload is being stopped (a resume then skips it). Waits check.
            try:
                return fn()
            except UploadNotReady as exc:
                now = time.monotonic()
                if not_ready_until is None:
                    not_ready_until = now + self.up.not_ready_timeout
                if now >= not_ready_until:
                    raise
                wait_s = exc.details.get("retry_after")
                self.sleep(float(wait_s) if isinstance(wait_s, int | float) else 1.0)
            except Transient as exc:
                attempt += 1
                if not (idempotent or exc.repeatable) or attempt >= self.up.backoff.attempts:
                    raise UploadFailed(
                        f"gave up after {attempt} attempt(s): {exc}",
                        attempts=attempt,
                        **self.details(part_number),
                    ) from exc
                self.count(retries=1)
                delay = self.up.backoff.delay(attempt)
                if exc.retry_after is not None:
                    delay = min(max(exc.retry_after, delay), self.up.backoff.max_seconds)
                log.info("retrying in %.1fs: %s", delay, exc)
                self.sleep(delay)
