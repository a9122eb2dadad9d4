"""What the upload helper needs from a front end (the library, or the HTTP API): the calls
of one upload, and the two shapes they answer with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from outbox.constants import DocumentStatus
from outbox.models import MultipartPlan, PartTicket, UploadedPart


class Transient(Exception):
    """A front end's call failed in a way worth trying again: the server unreachable, a
    5xx, the database briefly away. The helper retries it with backoff and raises
    ``UploadFailed`` after its last attempt; callers of the helper never see it.

    ``repeatable`` is False when the call may have taken effect (the response was lost
    after the server acted, or a commit failed halfway): the helper then repeats only calls
    that are harmless twice (not the request that creates a document). ``retry_after``:
    what the server asked for, in seconds.
    """

    def __init__(
        self, message: str, *, repeatable: bool = True, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.repeatable = repeatable
        self.retry_after = retry_after


@dataclass(frozen=True)
class Started:
    """The answer to a request for an upload: the document, and either one PUT (``url``
    with ``headers``), a parts plan (``plan``; one URL per part, asked for later), or
    nothing to send (``deduplicated``: the same content is already stored)."""

    document_id: UUID
    status: DocumentStatus
    plan: MultipartPlan | None
    url: str | None
    headers: dict[str, str]
    deduplicated: bool


@dataclass(frozen=True)
class RemoteUpload:
    """Where an upload stands on the server, for a resume: the document, its plan (None: a
    single PUT), whether part URLs can be asked for (``ready``), and the parts reported."""

    document_id: UUID
    status: DocumentStatus
    filename: str
    content_type: str
    size: int
    plan: MultipartPlan | None
    ready: bool
    parts: tuple[UploadedPart, ...]


class UploadApi(Protocol):
    """The calls of one upload, made for one owner. Implementations: ``LibraryApi`` and
    ``HttpApi``. Every call must be safe from several threads at once. They raise the
    library's typed errors (``OutboxError`` subclasses: ``UploadNotReady``, ``NotFound``,
    ``QuotaExceeded``...), and ``Transient`` for a failure worth trying again."""

    def start(
        self, *, filename: str, content_type: str, size: int, sha256: Callable[[], str]
    ) -> Started:
        """Request an upload of ``size`` bytes. ``sha256`` computes the whole file's hex
        SHA-256 (a read of the whole file): call it only for a single PUT."""
        ...

    def part_url(self, document_id: UUID, part_number: int, sha256: str) -> PartTicket:
        """A presigned PUT for one part, signed for that part's size and SHA-256."""
        ...

    def report_part(self, document_id: UUID, part_number: int, etag: str) -> None:
        """Record a part's successful PUT (the ETag storage answered)."""
        ...

    def status(self, document_id: UUID) -> RemoteUpload:
        """Where the upload stands (reads only)."""
        ...

    def confirm(self, document_id: UUID) -> DocumentStatus:
        """Every byte is sent: the document's status after the confirm."""
        ...
