"""s3-outbox: keep PostgreSQL rows and S3 objects consistent for user uploads.

The web app imports this package. Every call writes rows and outbox events in the app's own
transaction; workers (the ``worker`` package) make the side effects on storage later.
"""

from outbox.api import Outbox
from outbox.constants import LIVE_STATUSES, DocumentStatus, EventStatus, Topic
from outbox.errors import (
    EventNotFound,
    FileChanged,
    FileTooLarge,
    HttpApiError,
    InvalidInput,
    InvalidState,
    MigrationLocked,
    NotFound,
    OutboxError,
    PartsMissing,
    QuotaBelowUsage,
    QuotaExceeded,
    SchemaOutOfDate,
    UnsupportedContentType,
    UploadFailed,
    UploadInterrupted,
    UploadNotReady,
    UploadWindowClosed,
    ValidationFailed,
)
from outbox.logs import log_context
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
from outbox.schema import migrate
from outbox.settings import Settings

__all__ = [
    "LIVE_STATUSES",
    "Document",
    "DocumentPage",
    "DocumentStatus",
    "DownloadTicket",
    "EventNotFound",
    "EventStatus",
    "FileChanged",
    "FileTooLarge",
    "HttpApiError",
    "InvalidInput",
    "InvalidState",
    "MigrationLocked",
    "MultipartPlan",
    "NotFound",
    "Outbox",
    "OutboxError",
    "PartTicket",
    "PartsMissing",
    "Quota",
    "QuotaBelowUsage",
    "QuotaExceeded",
    "SchemaOutOfDate",
    "Settings",
    "Topic",
    "UnsupportedContentType",
    "UploadFailed",
    "UploadInterrupted",
    "UploadNotReady",
    "UploadStatus",
    "UploadTicket",
    "UploadWindowClosed",
    "UploadedPart",
    "ValidationFailed",
    "log_context",
    "migrate",
]
