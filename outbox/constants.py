"""States, topics and names used across s3-outbox: the one place they are spelled."""

from __future__ import annotations

from enum import StrEnum


class DocumentStatus(StrEnum):
    """Where a document is in its lifecycle (see DESIGN.md, "Document states")."""

    PENDING = "pending"
    UPLOADED = "uploaded"
    #: No upload of its own: it waits on the blob another document of the same owner is
    #: uploading (same content, another name or type), and becomes available when that blob
    #: is verified, or rejected with it.
    WAITING = "waiting"
    AVAILABLE = "available"
    REJECTED = "rejected"
    EXPIRED = "expired"
    DELETING = "deleting"
    DELETED = "deleted"


#: States in which a document's blob must be kept (invariant 3 and 7): a live document
#: references its blob, and a blob lives exactly while a live document references it.
LIVE_STATUSES: frozenset[DocumentStatus] = frozenset(
    {
        DocumentStatus.PENDING,
        DocumentStatus.UPLOADED,
        DocumentStatus.WAITING,
        DocumentStatus.AVAILABLE,
    }
)

#: The states of a document that uploads its blob (it holds the upload URLs): at most one
#: per blob, and only while the blob is ``uploading``.
UPLOADING_STATUSES: frozenset[DocumentStatus] = frozenset(
    {DocumentStatus.PENDING, DocumentStatus.UPLOADED}
)


class BlobStatus(StrEnum):
    """Where a blob (one stored object, shared by the documents that reference it) is::

        uploading --its uploading document verified--> verified
        uploading | verified --its last live document gone--> deleting
        deleting --purge done (object deleted)--> deleted

    A blob never comes back from ``deleting``: a new document of the same content then gets
    a new blob and a new upload URL.
    """

    UPLOADING = "uploading"
    VERIFIED = "verified"
    DELETING = "deleting"
    DELETED = "deleted"


#: Blob states in which its object must be kept: exactly while a live document references it.
LIVE_BLOB_STATUSES: frozenset[BlobStatus] = frozenset({BlobStatus.UPLOADING, BlobStatus.VERIFIED})


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
    #: Across owners: a document's blob was just verified and another verified blob holds the
    #: same content; its documents move to that blob and the duplicate object is purged.
    DEDUP = "dedup"


#: The LISTEN/NOTIFY channel the schema's trigger notifies on every new event.
NOTIFY_CHANNEL = "s3outbox_events"

#: The PostgreSQL schema that holds every s3-outbox table.
DB_SCHEMA = "s3outbox"


class RequestOutcome(StrEnum):
    """What the one-statement upload request (``s3outbox.request_upload``) did."""

    #: The blob and its pending document, the size reserved.
    CREATED = "created"
    #: Nothing written; the quota's figures come back for the error.
    QUOTA_EXCEEDED = "quota_exceeded"
    #: The owner has live documents of this SHA-256: the library's general path takes it.
    SAME_CONTENT = "same_content"
