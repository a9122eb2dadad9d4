"""The upload helper's settings for retries, and what an upload returns."""

from __future__ import annotations

import random
from dataclasses import dataclass
from uuid import UUID

from outbox.constants import DocumentStatus


@dataclass(frozen=True)
class Backoff:
    """How often and how patiently a failed step is tried again: ``attempts`` in all (the
    first included), waiting a jittered exponential delay between them (half to all of
    ``base_seconds * 2 ** (attempt - 1)``, at most ``max_seconds``), so parts that failed
    together do not hammer storage together again."""

    attempts: int = 6
    base_seconds: float = 0.5
    max_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_seconds < 0 or self.max_seconds < 0:
            raise ValueError("attempts must be >= 1 and the delays >= 0")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        cap = min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1))
        return random.uniform(cap / 2, cap)


@dataclass(frozen=True)
class UploadResult:
    """What one ``upload`` or ``resume`` did.

    ``status`` is the document's after the confirm (``uploaded``: a worker verifies it next;
    or ``available`` when it already was). ``parts_sent`` counts the parts (or the one
    file) this run PUT to storage, ``parts_skipped`` those already reported by an earlier
    run (same SHA-256), ``retries`` the attempts that failed and were tried again, and
    ``bytes_sent`` the bytes storage accepted in this run.
    """

    document_id: UUID
    status: DocumentStatus
    size: int
    multipart: bool
    part_count: int
    parts_sent: int
    parts_skipped: int
    retries: int
    bytes_sent: int
    deduplicated: bool = False
