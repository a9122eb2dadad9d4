"""Public types returned by the library. Immutable pydantic models."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from outbox.constants import DocumentStatus


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Document(_Model):
    """A document row as the owner may see it."""

    id: UUID
    owner_id: str
    filename: str
    content_type: str
    status: DocumentStatus
    declared_size: int
    verified_size: int | None = None
    #: The declared SHA-256 (hex); None for a multipart document (each part has its own).
    sha256: str | None
    #: The key of the blob (stored object) this document references; documents of the same
    #: content may share one.
    object_key: str
    reason: str | None = None
    trace_id: str | None = None
    created_at: datetime
    updated_at: datetime
    upload_expires_at: datetime
    confirmed_at: datetime | None = None
    verified_at: datetime | None = None
    delete_requested_at: datetime | None = None
    purged_at: datetime | None = None
    #: Multipart documents only: the part size and count the library fixed.
    part_size: int | None = None
    part_count: int | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Document:
        return cls.model_validate(row)

    @property
    def multipart(self) -> MultipartPlan | None:
        """The parts plan of a multipart document; None for a single PUT."""
        if self.part_size is None or self.part_count is None:
            return None
        return MultipartPlan(
            size=self.declared_size, part_size=self.part_size, part_count=self.part_count
        )


class MultipartPlan(_Model):
    """How a multipart document is cut: parts 1..``part_count`` of ``part_size`` bytes each,
    the last one holding what remains (``last_part_size``, 1..``part_size`` bytes)."""

    size: int
    part_size: int
    part_count: int

    @property
    def last_part_size(self) -> int:
        return self.size - self.part_size * (self.part_count - 1)

    def part_range(self, part_number: int) -> tuple[int, int]:
        """``(offset, size)`` of a part in the file. Raises ValueError out of 1..part_count."""
        if not 1 <= part_number <= self.part_count:
            raise ValueError(f"part number {part_number} is not within 1..{self.part_count}")
        offset = self.part_size * (part_number - 1)
        return offset, min(self.part_size, self.size - offset)


class UploadTicket(_Model):
    """What the browser needs to upload: PUT ``body`` to ``url`` with exactly ``headers``.

    ``url`` is None when there is nothing to upload, because the owner's same content is
    stored or being uploaded: ``deduplicated`` is then True, and ``document`` is a new
    document that shares it (``available``, or ``waiting`` on the upload in progress), or the
    one this same request made before (a retry; a pending one comes back with a fresh URL).
    ``url`` is None for a multipart document too: ``multipart`` is then its plan, and each
    part gets its own URL (``Outbox.part_url``).
    """

    document: Document
    url: str | None
    method: str = "PUT"
    headers: dict[str, str]
    expires_at: datetime | None
    deduplicated: bool = False
    multipart: MultipartPlan | None = None


class PartTicket(_Model):
    """One part of a multipart upload: PUT exactly ``size`` bytes (the part's slice of the
    file) to ``url`` with ``headers`` (Content-Length and ``x-amz-checksum-sha256``, both
    signed: storage refuses any other body), then report the response's ETag."""

    document_id: UUID
    part_number: int
    size: int
    url: str
    method: str = "PUT"
    headers: dict[str, str]
    expires_at: datetime


class UploadedPart(_Model):
    """A part of a multipart document: its size, the SHA-256 signed into its latest URL, and
    the ETag its client reported (None: not reported yet)."""

    part_number: int
    size: int
    sha256: str
    etag: str | None = None
    url_issued_at: datetime
    reported_at: datetime | None = None


class UploadStatus(_Model):
    """Where an upload stands, for a client that resumes: the document, its plan (None: a
    single PUT), whether its multipart upload exists yet (``ready``: part URLs can be asked
    for), and the parts reported so far, by number."""

    document: Document
    multipart: MultipartPlan | None
    ready: bool
    parts: list[UploadedPart]

    @property
    def missing(self) -> list[int]:
        """The part numbers not reported yet (empty for a single PUT)."""
        if self.multipart is None:
            return []
        reported = {p.part_number for p in self.parts}
        return [n for n in range(1, self.multipart.part_count + 1) if n not in reported]


class DownloadTicket(_Model):
    """A short-lived presigned GET for an ``available`` document."""

    document_id: UUID
    url: str
    expires_at: datetime


class Quota(_Model):
    """An owner's storage quota, in bytes."""

    owner_id: str
    limit_bytes: int
    used_bytes: int
    reserved_bytes: int

    @property
    def free_bytes(self) -> int:
        return max(self.limit_bytes - self.used_bytes - self.reserved_bytes, 0)


class DocumentPage(_Model):
    """One page of an owner's documents, newest first. Pass ``next_cursor`` for the next."""

    items: list[Document]
    next_cursor: str | None
