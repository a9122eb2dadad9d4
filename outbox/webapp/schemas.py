"""Request and response bodies of the reference HTTP API (pydantic models, shown in OpenAPI)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from outbox.constants import DocumentStatus
from outbox.models import Document, DocumentPage, DownloadTicket, Quota, UploadTicket


class UploadRequest(BaseModel):
    """What the browser declares before it uploads. Storage will refuse any other body."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field(description="Original file name; kept as data, never part of a key.")
    content_type: str = Field(description="MIME type, e.g. application/pdf; must be allowed.")
    size: int = Field(description="Exact size of the file in bytes.")
    sha256: str = Field(description="Hex SHA-256 of the file, computed by the client.")


class DocumentOut(BaseModel):
    """A document as its owner sees it (internal fields such as the object key left out)."""

    id: UUID
    filename: str
    content_type: str
    status: DocumentStatus
    size: int = Field(description="Declared size in bytes.")
    verified_size: int | None = None
    sha256: str
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
    then confirm. ``url`` is null when the same content is already stored (``deduplicated``)."""

    document: DocumentOut
    url: str | None
    method: str = "PUT"
    headers: dict[str, str]
    expires_at: datetime | None
    deduplicated: bool

    @classmethod
    def of(cls, ticket: UploadTicket) -> UploadUrlOut:
        return cls(
            document=DocumentOut.of(ticket.document),
            url=ticket.url,
            method=ticket.method,
            headers=dict(ticket.headers),
            expires_at=ticket.expires_at,
            deduplicated=ticket.deduplicated,
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


class ErrorBody(BaseModel):
    """Every error response: ``error`` is a stable code, ``message`` is for people. Some errors
    carry more fields, e.g. quota_exceeded has used, reserved, limit and requested bytes."""

    model_config = ConfigDict(extra="allow")

    error: str
    message: str
