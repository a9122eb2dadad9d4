"""The one error hierarchy of s3-outbox. Each error carries the HTTP status a web app should send.

A call that raises one of these has changed nothing in the caller's transaction.
"""

from __future__ import annotations

from typing import Any


class OutboxError(Exception):
    """Base of every error s3-outbox raises on purpose."""

    http_status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready body for an HTTP error response."""
        return {"error": self.code, "message": self.message, **self.details}


class InvalidInput(OutboxError):
    """A malformed argument: a bad id, hash, filename, size or page cursor (HTTP 400)."""

    http_status = 400
    code = "invalid_input"


class ValidationFailed(InvalidInput):
    """Well-formed but unacceptable input, e.g. a filename longer than allowed (HTTP 422)."""

    http_status = 422
    code = "validation_failed"


class UnsupportedContentType(OutboxError):
    """The content type is malformed or not in the allowed list (HTTP 415)."""

    http_status = 415
    code = "unsupported_content_type"


class FileTooLarge(OutboxError):
    """The declared size is above the configured maximum for one upload (HTTP 413)."""

    http_status = 413
    code = "file_too_large"


class QuotaExceeded(OutboxError):
    """The owner's quota cannot hold the requested bytes (HTTP 413).

    Carries ``used``, ``reserved``, ``limit`` and ``requested`` bytes.
    """

    http_status = 413
    code = "quota_exceeded"

    def __init__(self, *, used: int, reserved: int, limit: int, requested: int) -> None:
        super().__init__(
            f"quota exceeded: used {used} + reserved {reserved} + requested {requested}"
            f" > limit {limit} bytes",
            used=used,
            reserved=reserved,
            limit=limit,
            requested=requested,
        )
        self.used = used
        self.reserved = reserved
        self.limit = limit
        self.requested = requested


class NotFound(OutboxError):
    """No such document for this owner. Another owner's document is reported the same way (404)."""

    http_status = 404
    code = "not_found"


class InvalidState(OutboxError):
    """The document is in a state that does not allow this call, e.g. confirming an expired
    upload or downloading one not yet available (HTTP 409)."""

    http_status = 409
    code = "invalid_state"


class UploadWindowClosed(InvalidState):
    """The same content is pending for this owner, but its upload window (the document's
    creation + ``upload_url_max_ttl_seconds``) leaves too little time for a fresh URL (HTTP
    409). Confirm the document if an earlier PUT succeeded, or ask again after
    ``retry_after`` seconds, once it has expired. Carries ``document_id``, ``expires_at``
    and ``retry_after``."""

    code = "upload_window_closed"


class UploadNotReady(InvalidState):
    """The multipart upload of this document does not exist yet: a worker creates it from an
    outbox event moments after ``request_upload`` commits (HTTP 409 with ``Retry-After``).
    Ask again after ``retry_after`` seconds. Carries ``document_id`` and ``retry_after``."""

    code = "upload_not_ready"


class PartsMissing(InvalidState):
    """``confirm`` of a multipart document before every part was reported (HTTP 409).
    Carries ``missing`` (the part numbers not reported, the first 1,000 of them) and
    ``missing_count``."""

    code = "parts_missing"


class QuotaBelowUsage(OutboxError):
    """A new limit would be below what the owner already uses and reserves (HTTP 409)."""

    http_status = 409
    code = "quota_below_usage"


class EventNotFound(OutboxError):
    """No outbox event with this id (operator CLI; HTTP 404)."""

    http_status = 404
    code = "event_not_found"


class SchemaOutOfDate(OutboxError):
    """The database schema is older than this code needs: run ``s3-outbox migrate`` (HTTP 503,
    the service cannot work until it is migrated). Carries ``current`` and ``required``."""

    http_status = 503
    code = "schema_out_of_date"


class MigrationLocked(OutboxError):
    """A migration could not take its locks within ``lock_timeout`` (a long transaction holds
    the tables); nothing was changed by the migration that timed out (HTTP 503)."""

    http_status = 503
    code = "migration_locked"


class UploadFailed(OutboxError):
    """The upload helper (``outbox.uploader``) gave up: storage or the API kept failing after
    every retry, or refused a part for good (HTTP 502 for an app that relays it: an upstream
    failed). Carries ``document_id``, ``part_number`` (None: the single PUT or an API call),
    ``attempts`` and, when storage answered, its ``status``. The document stays pending:
    resume it with ``Uploader.resume`` while its upload window lasts."""

    http_status = 502
    code = "upload_failed"


class UploadInterrupted(UploadFailed):
    """The upload helper was stopped (its ``stop`` flag was set: ``s3-outbox run`` sets it
    on Ctrl-C) before it confirmed. Carries ``document_id`` (None: stopped before the
    document existed): resume it with ``Uploader.resume``, which sends only the parts not
    reported yet."""

    http_status = 499
    code = "upload_interrupted"


class FileChanged(UploadFailed):
    """The local file is not the one being uploaded: its size or modification time changed
    during the upload, or its size is not the document's when resuming (HTTP 409). Nothing
    was confirmed."""

    http_status = 409
    code = "file_changed"


class HttpApiError(OutboxError):
    """The reference HTTP API answered an error the library has no class for (e.g. the owner
    dependency's 401), or a body that is not one of its JSON errors. ``http_status`` and
    ``code`` are the response's (502 when not given: an upstream failed); carries ``body``."""

    http_status = 502
    code = "http_error"

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        code: str | None = None,
        **details: Any,
    ):
        super().__init__(message, **details)
        if http_status is not None:
            self.http_status = http_status
        if code is not None:
            self.code = code
