"""States, topics and names used across s3-outbox: the one place they are spelled."""

from __future__ import annotations

from enum import StrEnum


class DocumentStatus(StrEnum):
    """Where a document is in its lifecycle (see DESIGN.md, "Document states")."""

    PENDING = "pending"
    UPLOADED = "uploaded"
    AVAILABLE = "available"
    REJECTED = "rejected"
    EXPIRED = "expired"
    DELETING = "deleting"
    DELETED = "deleted"


#: States in which a document's object must be kept (invariant 3 and 7).
LIVE_STATUSES: frozenset[DocumentStatus] = frozenset(
    {DocumentStatus.PENDING, DocumentStatus.UPLOADED, DocumentStatus.AVAILABLE}
)


class EventStatus(StrEnum):
    """Where an outbox event is: ``pending -> dispatched -> done | dead``."""

    PENDING = "pending"
    DISPATCHED = "dispatched"
    DONE = "done"
    DEAD = "dead"


class Topic(StrEnum):
    """What an outbox event asks a worker to do; each topic has one Dramatiq actor."""

    VERIFY = "verify"
    PURGE = "purge"
    EXPIRE = "expire"
    #: Create the multipart upload of a document above ``multipart_threshold_bytes``.
    MULTIPART_CREATE = "multipart_create"


#: The LISTEN/NOTIFY channel the schema's trigger notifies on every new event.
NOTIFY_CHANNEL = "s3outbox_events"

#: The PostgreSQL schema that holds every s3-outbox table.
DB_SCHEMA = "s3outbox"
