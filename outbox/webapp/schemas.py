"""Request and response bodies of the reference HTTP API (pydantic models, shown in OpenAPI)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from outbox.constants import DocumentStatus
from outbox.models import (
    Document,
    DocumentPage,
    DownloadTicket,
    MultipartPlan,
    PartTicket,
    Quota,
    UploadedPart,
    UploadStatus,
    UploadTicket,
)
from outbox.settings import Settings


class UploadRequest(BaseModel):
    """What the browser declares before it uploads. Storage will refuse any other body."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field(description="Original file name; kept as data, never part of a key.")
    content_type: str = Field(description="MIME type, e.g. application/pdf; must be allowed.")
    size: int = Field(description="Exact size of the file in bytes.")
    sha256: str | None = Field(
        None,
        description="Hex SHA-256 of the file, computed by the client. Required for a file up"
        " to the multipart threshold; must be absent above it (each part's SHA-256 is sent"
        " with that part's URL request instead).",
    )


class MultipartPlanOut(BaseModel):
    """How a multipart upload is cut: parts 1..part_count of part_size bytes, the last one
    last_part_size bytes (part n starts at byte (n - 1) * part_size)."""

    size: int
    part_size: int
    part_count: int
    last_part_size: int

    @classmethod
    def of(cls, plan: MultipartPlan | None) -> MultipartPlanOut | None:
        if plan is None:
            return None
        return cls(
            size=plan.size,
            part_size=plan.part_size,
            part_count=plan.part_count,
            last_part_size=plan.last_part_size,
        )


class DocumentOut(BaseModel):
    """A document as its owner sees it (internal fields such as the object key left out)."""

    id: UUID
    filename: str
    content_type: str
    status: DocumentStatus
    size: int = Field(description="Declared size in bytes.")
    verified_size: int | None = None
    sha256: str | None = Field(description="Declared SHA-256; null for a multipart upload.")
    multipart: MultipartPlanOut | None = Field(
        None, description="The parts plan of a multipart upload; null for a single PUT."
    )
    reason: str | None = Field(None, description="Why a document was rejected or expired.")
    created_at: datetime
    updated_at: datetime
    upload_expires_at: datetime
    confirmed_at: datetime | None = None
    verified_at: datetime | None = None
    delete_requested_at: datetime | None = None

    @classmethod
    def of(cls, doc: Document) -> DocumentOut:
        """The public view of a library document."""
        return cls(
            id=doc.id,
            filename=doc.filename,
            content_type=doc.content_type,
            status=doc.status,
            size=doc.declared_size,
            verified_size=doc.verified_size,
            sha256=doc.sha256,
            multipart=MultipartPlanOut.of(doc.multipart),
            reason=doc.reason,
            created_at=doc.created_at,
            updated_at=doc.updated_at,
            upload_expires_at=doc.upload_expires_at,
            confirmed_at=doc.confirmed_at,
            verified_at=doc.verified_at,
            delete_requested_at=doc.delete_requested_at,
        )


class UploadUrlOut(BaseModel):
    """PUT the file to ``url`` with exactly ``headers`` (a browser sets Content-Length itself),
    then confirm. ``url`` is null when the same content is already stored (``deduplicated``),
    and for a multipart upload (``multipart`` is then its plan: ask a URL for each part)."""

    document: DocumentOut
    url: str | None
    method: str = "PUT"
    headers: dict[str, str]
    expires_at: datetime | None
    deduplicated: bool
    multipart: MultipartPlanOut | None = None

    @classmethod
    def of(cls, ticket: UploadTicket) -> UploadUrlOut:
        return cls(
            document=DocumentOut.of(ticket.document),
            url=ticket.url,
            method=ticket.method,
            headers=dict(ticket.headers),
            expires_at=ticket.expires_at,
            deduplicated=ticket.deduplicated,
            multipart=MultipartPlanOut.of(ticket.multipart),
        )


class PartUrlRequest(BaseModel):
    """The SHA-256 of exactly one part's bytes (the slice the plan gives it)."""

    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(description="Hex SHA-256 of this part's bytes.")
    expires_in: int | None = Field(
        None, description="URL lifetime in seconds (default: the upload URL TTL)."
    )


class PartUrlOut(BaseModel):
    """PUT exactly ``size`` bytes (this part) to ``url`` with ``headers`` (a browser sets
    Content-Length itself), then report the response's ETag."""

    document_id: UUID
    part_number: int
    size: int
    url: str
    method: str = "PUT"
    headers: dict[str, str]
    expires_at: datetime

    @classmethod
    def of(cls, ticket: PartTicket) -> PartUrlOut:
        return cls(
            document_id=ticket.document_id,
            part_number=ticket.part_number,
            size=ticket.size,
            url=ticket.url,
            method=ticket.method,
            headers=dict(ticket.headers),
            expires_at=ticket.expires_at,
        )


class PartReport(BaseModel):
    """A part's PUT succeeded: the ETag storage answered (kept so a reload can resume)."""

    model_config = ConfigDict(extra="forbid")

    etag: str = Field(description="The ETag response header of the part's PUT, as sent.")


class PartOut(BaseModel):
    """A part: its size, the SHA-256 signed into its latest URL, and the ETag reported."""

    part_number: int
    size: int
    sha256: str
    etag: str | None
    url_issued_at: datetime
    reported_at: datetime | None

    @classmethod
    def of(cls, part: UploadedPart) -> PartOut:
        return cls(
            part_number=part.part_number,
            size=part.size,
            sha256=part.sha256,
            etag=part.etag,
            url_issued_at=part.url_issued_at,
            reported_at=part.reported_at,
        )


class UploadStatusOut(BaseModel):
    """Where an upload stands, to resume it: the plan (null for a single PUT), whether part
    URLs can be asked for yet (``ready``), the parts reported and the numbers missing."""

    document: DocumentOut
    multipart: MultipartPlanOut | None
    ready: bool
    parts: list[PartOut]
    missing: list[int]

    @classmethod
    def of(cls, status: UploadStatus) -> UploadStatusOut:
        return cls(
            document=DocumentOut.of(status.document),
            multipart=MultipartPlanOut.of(status.multipart),
            ready=status.ready,
            parts=[PartOut.of(p) for p in status.parts],
            missing=status.missing,
        )


class DocumentPageOut(BaseModel):
    """One page of documents, newest first; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[DocumentOut]
    next_cursor: str | None

    @classmethod
    def of(cls, page: DocumentPage) -> DocumentPageOut:
        return cls(items=[DocumentOut.of(d) for d in page.items], next_cursor=page.next_cursor)


class DownloadOut(BaseModel):
    """A short-lived presigned GET (the JSON form of the download redirect)."""

    document_id: UUID
    url: str
    expires_at: datetime

    @classmethod
    def of(cls, ticket: DownloadTicket) -> DownloadOut:
        return cls(document_id=ticket.document_id, url=ticket.url, expires_at=ticket.expires_at)


class QuotaOut(BaseModel):
    """The owner's storage quota in bytes."""

    owner_id: str
    limit_bytes: int
    used_bytes: int
    reserved_bytes: int
    free_bytes: int

    @classmethod
    def of(cls, quota: Quota) -> QuotaOut:
        return cls(
            owner_id=quota.owner_id,
            limit_bytes=quota.limit_bytes,
            used_bytes=quota.used_bytes,
            reserved_bytes=quota.reserved_bytes,
            free_bytes=quota.free_bytes,
        )


class UploadLimitsOut(BaseModel):
    """How the server takes uploads, so a client knows before it asks: a file of at most
    ``multipart_threshold_bytes`` is sent with one PUT (declare its SHA-256), a larger one in
    parts (declare none). The server still decides: its upload-url answer has the plan."""

    max_upload_bytes: int
    multipart_threshold_bytes: int
    multipart_part_size_bytes: int = Field(
        description="The usual part size; a plan raises it so that no upload needs more than"
        " 10,000 parts, and each upload-url answer has the plan's own."
    )

    @classmethod
    def of(cls, settings: Settings) -> UploadLimitsOut:
        return cls(
            max_upload_bytes=settings.max_upload_bytes,
            multipart_threshold_bytes=settings.multipart_threshold_bytes,
            multipart_part_size_bytes=settings.multipart_part_size_bytes,
        )


class ErrorBody(BaseModel):
    """Every error response: ``error`` is a stable code, ``message`` is for people. Some errors
    carry more fields, e.g. quota_exceeded has used, reserved, limit and requested bytes."""

    model_config = ConfigDict(extra="allow")

    error: str
    message: str
