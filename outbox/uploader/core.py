"""The upload helper's core: one file through a front end (``UploadApi``) and storage, as
one PUT or in parallel parts, with retries, resume and a progress bar."""

from __future__ import annotations

import functools
import logging
import mimetypes
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from uuid import UUID

from outbox import validation
from outbox.constants import DocumentStatus
from outbox.errors import FileChanged, InvalidState, UploadFailed
from outbox.models import MultipartPlan, PartTicket, UploadedPart
from outbox.uploader.files import CHUNK_BYTES, LocalFile
from outbox.uploader.frontend import Started, UploadApi
from outbox.uploader.job import Abandoned, Job, StopSignal
from outbox.uploader.models import Backoff, UploadResult
from outbox.uploader.progress import Progress, ProgressCallback, require_bar
from outbox.uploader.transport import PutFailure, StorageClient

log = logging.getLogger("s3outbox.uploader")

#: A part URL this close to its expiry is asked for again before a (re)try.
URL_MARGIN = timedelta(seconds=60)
#: Parts being prepared (read and hashed, their URL asked for, or being reported) beside
#: the ``threads`` being sent, so that storage always has ``threads`` PUTs in flight (a
#: thread that hashed, asked for a URL and reported between its own PUTs reached 0.77 of
#: boto3's MB/s on a 6 GiB file; with 2 ahead, 1.25 in the same bench).
AHEAD = 2


class Uploader:
    """Uploads local files through s3-outbox: a ticket from the front end (``api``), the
    bytes PUT straight to storage through presigned URLs, then the confirm.

    Above the server's multipart threshold the file goes in parts, ``threads`` sent at
    once while the next ``AHEAD`` are read and hashed (SHA-256) and their URLs asked for,
    in chunks of ``chunk_bytes`` (memory holds one chunk per thread, whatever the file and
    part sizes),
    and reported once storage took it. A failed PUT (no answer, 5xx, throttling, an expired
    URL, a body storage refused) is tried again with ``backoff``, with a fresh URL where
    that helps; ``UploadNotReady`` (the upload is being created by a worker) is waited out
    for up to ``not_ready_timeout`` seconds, honouring its ``retry_after``. A file up to
    the threshold is hashed as a stream and sent with one PUT.

    ``progress``: show a tqdm bar on stderr (None: only when stderr is a terminal and
    tqdm, the ``progress`` extra, is installed; True raises ``ImportError`` without it);
    ``on_progress(done, total)``: bytes sent so far, from the upload threads. ``stop``: an
    event that, once set, ends the upload (``UploadInterrupted``) at the next chunk;
    ``resume`` finishes it later. ``timeout``: seconds to wait for storage to answer.

    Thread-safe; reuse one for many files (its connections are pooled), ``close()`` it
    (or use it as a context manager) when done.

    Raises:
        ValueError: ``threads`` < 1.
        ImportError: ``progress=True`` and tqdm is not installed.
    """

    def __init__(
        self,
        api: UploadApi,
        *,
        threads: int = 4,
        backoff: Backoff | None = None,
        not_ready_timeout: float = 600.0,
        timeout: float = 300.0,
        progress: bool | None = None,
        on_progress: ProgressCallback | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        stop: StopSignal | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        require_bar(progress)
        self.api = api
        self.threads = threads
        self.backoff = backoff or Backoff()
        self.not_ready_timeout = not_ready_timeout
        self.show_progress = progress
        self.on_progress = on_progress
        self.chunk_bytes = chunk_bytes
        self.stop = stop
        self._storage = StorageClient(connections=threads, timeout=timeout)

    def close(self) -> None:
        """Close the pooled connections to storage."""
        self._storage.close()

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public calls -----------------------------------------------------------------------

    def upload(
        self,
        path: str | os.PathLike[str],
        *,
        filename: str | None = None,
        content_type: str | None = None,
        on_started: Callable[[UUID], None] | None = None,
    ) -> UploadResult:
        """Upload the file at ``path`` as a new document and confirm it.

        ``filename`` defaults to the file's name, ``content_type`` to the type its name
        suggests (else ``application/octet-stream``). ``on_started(document_id)`` is called
        once the document exists, before any byte is sent: keep the id to ``resume`` an
        upload that is interrupted (a crash, Ctrl-C, ``stop``).

        Raises:
            FileNotFoundError, IsADirectoryError, PermissionError, OSError: the file
                cannot be read.
            The front end's typed errors (``OutboxError``): ``QuotaExceeded``,
                ``FileTooLarge``, ``UnsupportedContentType``, ``ValidationFailed``... as
                ``request_upload`` raises them; ``UploadNotReady`` when no worker created
                the upload within ``not_ready_timeout``.
            UploadFailed: storage or the API kept failing after every attempt, or storage
                refused a part for good (e.g. 404 NoSuchUpload: the document expired or
                was deleted meanwhile); carries ``document_id`` and ``part_number``.
            FileChanged: the file changed while it was being sent (nothing confirmed).
            UploadInterrupted: ``stop`` was set; carries ``document_id``.
            KeyboardInterrupt: as usual (a bare Ctrl-C), once the parts in flight stopped;
                the id came to ``on_started``.
        """
        file = LocalFile(path, chunk_bytes=self.chunk_bytes)
        name = filename or file.path.name
        ctype = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        job = Job(self, file)
        with job.naming_failures():
            return self._new_document(job, name, ctype, on_started)

    def resume(self, path: str | os.PathLike[str], document_id: UUID | str) -> UploadResult:
        """Finish the upload of document ``document_id`` from the file at ``path``: its
        status says which parts were reported; each of them is hashed again and skipped
        when its SHA-256 is the one recorded, and the rest are sent, then the confirm.
        A document already ``uploaded`` or ``available`` needs nothing (returned as it
        is). A single-PUT document is sent again with a fresh URL (asking for the same
        pending content returns the same document).

        Raises:
            InvalidInput: a malformed document id.
            NotFound: no such document for this owner.
            InvalidState: the document can no longer take bytes (expired, rejected,
                deleted); start a new upload.
            FileChanged: the file's size is not the document's declared size.
            Every error of ``upload``.
        """
        doc_id = validation.document_id(document_id)
        file = LocalFile(path, chunk_bytes=self.chunk_bytes)
        job = Job(self, file)
        job.document_id = doc_id
        with job.naming_failures():
            return self._resume(job, doc_id)

    def _resume(self, job: Job, doc_id: UUID) -> UploadResult:
        file = job.file
        remote = job.call(lambda: self.api.status(doc_id), idempotent=True)
        if remote.status in (DocumentStatus.UPLOADED, DocumentStatus.AVAILABLE):
            return self._result(job, remote.status, remote.plan)
        if remote.status != DocumentStatus.PENDING:
            raise InvalidState(
                f"the document is {remote.status.value}: it can no longer be resumed;"
                " start a new upload",
                status=remote.status.value,
                document_id=str(doc_id),
            )
        if remote.size != file.size:
            raise FileChanged(
                f"{file.path} has {file.size} bytes, the document declared {remote.size}:"
                " not the file this upload started with",
                **job.details(),
            )
        if remote.plan is None:
            return self._new_document(job, remote.filename, remote.content_type, None)
        reported = {p.part_number: p for p in remote.parts if p.etag is not None}
        return self._multipart(job, remote.plan, reported)

    # -- the two roads ----------------------------------------------------------------------

    def _new_document(
        self,
        job: Job,
        filename: str,
        content_type: str,
        on_started: Callable[[UUID], None] | None,
    ) -> UploadResult:
        file = job.file
        digest: list[str] = []

        def whole_sha256() -> str:
            # The whole file, as a stream; once per upload (a URL refresh asks again).
            if not digest:
                digest.append(file.sha256(0, file.size, job.check))
            return digest[0]

        def start() -> Started:
            return job.call(
                lambda: self.api.start(
                    filename=filename,
                    content_type=content_type,
                    size=file.size,
                    sha256=whole_sha256,
                ),
                idempotent=False,
            )

        started = start()
        job.document_id = started.document_id
        if on_started is not None:
            on_started(started.document_id)
        if started.deduplicated:
            return self._result(job, started.status, None, deduplicated=True)
        if started.plan is not None:
            return self._multipart(job, started.plan, {})
        return self._single(job, started, start)

    def _single(self, job: Job, started: Started, start: Callable[[], Started]) -> UploadResult:
        """One PUT of the whole file (streamed), retried; a fresh URL is a new request for
        the same content (the same pending document comes back with a new URL)."""
        file = job.file
        job.progress = self._progress(job, file.size)
        try:
            attempt = 0
            while True:
                if started.url is None:  # the same content finished meanwhile
                    return self._result(job, started.status, None, deduplicated=True)
                job.document_id = started.document_id
                try:
                    self._put(job, started.url, started.headers, 0, file.size)
                    break
                except PutFailure as exc:
                    attempt += 1
                    if exc.rehash:  # storage got other bytes than the ones hashed
                        file.check_unchanged()
                    self._give_up_or_wait(job, exc, attempt, None)
                    if exc.fresh_url:
                        started = start()
            job.count(sent=1, nbytes=file.size)
            file.check_unchanged()
            status = self._confirm(job)
        finally:
            job.progress.close()
        return self._result(job, status, None)

    def _multipart(
        self, job: Job, plan: MultipartPlan, reported: Mapping[int, UploadedPart]
    ) -> UploadResult:
        """Every part not already reported (with the same SHA-256), ``threads`` at once;
        the first failure stops the others; then the confirm."""
        job.progress = self._progress(job, plan.size)
        try:
            self._run_parts(job, plan, reported)
            job.file.check_unchanged()
            status = self._confirm(job)
        finally:
            job.progress.close()
        return self._result(job, status, plan)

    def _run_parts(
        self, job: Job, plan: MultipartPlan, reported: Mapping[int, UploadedPart]
    ) -> None:
        pool = ThreadPoolExecutor(
            max_workers=min(self.threads + AHEAD, plan.part_count),
            thread_name_prefix="s3outbox-upload",
        )
        sending = threading.Semaphore(self.threads)
        futures: list[Future[None]] = []
        try:
            futures = [
                pool.submit(self._part, job, plan, n, reported.get(n), sending)
                for n in range(1, plan.part_count + 1)
            ]
            pending: set[Future[None]] = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    exc = fut.exception()
                    if exc is not None and not isinstance(exc, Abandoned):
                        raise exc
        except BaseException:
            # The first failure (or Ctrl-C here) stops the parts in flight at their next
            # chunk; those not started never start.
            job.failed.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _part(
        self,
        job: Job,
        plan: MultipartPlan,
        number: int,
        known: UploadedPart | None,
        sending: threading.Semaphore,
    ) -> None:
        """Hash part ``number``, skip it if it was reported with this SHA-256, else get its
        URL, PUT it (retried; holding one of the ``sending`` slots only while it sends) and
        report it."""
        job.check()
        doc = job.document_id
        assert doc is not None
        offset, size = plan.part_range(number)
        digest = job.file.sha256(offset, size, job.check)
        if known is not None and known.sha256 == digest and known.size == size:
            job.count(skipped=1)
            job.moved(size)
            return
        ticket: PartTicket | None = None
        attempt = 0
        while True:
            if ticket is None or ticket.expires_at - datetime.now(UTC) < URL_MARGIN:
                ticket = job.call(
                    functools.partial(self.api.part_url, doc, number, digest),
                    idempotent=True,
                    part_number=number,
                )
            try:
                with sending:
                    job.check()  # no PUT starts once the upload is stopping
                    etag = self._put(job, ticket.url, ticket.headers, offset, size)
                break
            except PutFailure as exc:
                attempt += 1
                if exc.rehash:  # storage got other bytes than the ones hashed
                    job.file.check_unchanged()
                    digest = job.file.sha256(offset, size, job.check)
                self._give_up_or_wait(job, exc, attempt, number)
                if exc.fresh_url:
                    ticket = None
        job.call(
            lambda: self.api.report_part(doc, number, etag), idempotent=True, part_number=number
        )
        job.count(sent=1, nbytes=size)

    # -- shared steps ------------------------------------------------------------------------

    def _put(self, job: Job, url: str, headers: Mapping[str, str], offset: int, size: int) -> str:
        """One PUT of a range, streamed from the file; its bytes counted in the progress
        as they go, and taken back if the attempt fails."""
        sent = 0

        def body() -> Iterator[memoryview]:
            nonlocal sent
            for chunk in job.file.chunks(offset, size, job.check):
                yield chunk
                sent += len(chunk)
                job.moved(len(chunk))

        try:
            return self._storage.put(url, headers, body(), size)
        except BaseException:
            job.moved(-sent)
            raise

    def _give_up_or_wait(
        self, job: Job, exc: PutFailure, attempt: int, part_number: int | None
    ) -> None:
        """After failed attempt ``attempt``: raise ``UploadFailed`` if it is final, else
        wait the backoff."""
        what = "the file" if part_number is None else f"part {part_number}"
        if not exc.retryable or attempt >= self.backoff.attempts:
            raise UploadFailed(
                f"storage did not take {what} after {attempt} attempt(s): {exc}",
                attempts=attempt,
                storage_status=exc.status,
                storage_code=exc.code,
                **job.details(part_number),
            ) from exc
        job.count(retries=1)
        delay = self.backoff.delay(attempt)
        log.info("PUT of %s failed (%s): attempt %d in %.1fs", what, exc, attempt + 1, delay)
        job.sleep(delay)

    def _confirm(self, job: Job) -> DocumentStatus:
        doc = job.document_id
        assert doc is not None
        job.check()
        return job.call(lambda: self.api.confirm(doc), idempotent=True)

    def _progress(self, job: Job, total: int) -> Progress:
        return Progress(
            total,
            label=job.file.path.name[:40],
            enabled=self.show_progress,
            callback=self.on_progress,
        )

    @staticmethod
    def _result(
        job: Job,
        status: DocumentStatus,
        plan: MultipartPlan | None,
        *,
        deduplicated: bool = False,
    ) -> UploadResult:
        assert job.document_id is not None
        return UploadResult(
            document_id=job.document_id,
            status=status,
            size=job.file.size,
            multipart=plan is not None,
            part_count=1 if plan is None else plan.part_count,
            parts_sent=job.parts_sent,
            parts_skipped=job.parts_skipped,
            retries=job.retries,
            bytes_sent=job.bytes_sent,
            deduplicated=deduplicated,
        )
