"""Upload windows: how long a pending document may be given fresh URLs.

A single-PUT document's window is its creation + ``upload_url_max_ttl_seconds``; a multipart
document's is its creation + ``multipart_upload_window_seconds``. No URL reaches past it, so
repeated requests cannot keep an upload pending without bound (the sweeper's expiry and the
bucket walk's horizon count on that).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from outbox.errors import UploadWindowClosed
from outbox.models import Document
from outbox.settings import Settings

#: A fresh URL gets what remains of its document's upload window, but never less than this
#: (or than the TTL asked for, if shorter): a URL that dies before an upload can finish helps
#: nobody.
REFRESH_MIN_SECONDS = 60


def window_end(settings: Settings, doc: Document) -> datetime:
    """The latest instant any URL of this pending document may expire."""
    seconds = (
        settings.multipart_upload_window_seconds
        if doc.multipart is not None
        else settings.upload_url_max_ttl_seconds
    )
    return doc.created_at + timedelta(seconds=seconds)


def window_closed(
    settings: Settings, doc: Document, now: datetime | None, message: str
) -> UploadWindowClosed:
    """The error for a document whose window leaves too little for a fresh URL: retry after
    the sweeper has expired it (its expiry + the clock-skew grace)."""
    start = now if now is not None else datetime.now(UTC)
    grace = timedelta(seconds=settings.purge_grace_seconds)
    return UploadWindowClosed(
        message,
        document_id=str(doc.id),
        expires_at=doc.upload_expires_at.isoformat(),
        retry_after=max(1, math.ceil((doc.upload_expires_at + grace - start).total_seconds())),
    )
