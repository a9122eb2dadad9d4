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
    sha256: str
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

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Document:
        return cls.model_validate(row)


class UploadTicket(_Model):
    """What the browser needs to upload: PUT ``body`` to ``url`` with exactly ``headers``.

    ``url`` is None when the same content is already uploaded or available for this owner
    (``deduplicated`` is then True and ``document`` is the existing one).
    """

    document: Document
    url: str | None
    method: str = "PUT"
    headers: dict[str, str]
    expires_at: datetime | None
    deduplicated: bool = False


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
