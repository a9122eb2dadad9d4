"""Helpers for the property-based tests (tests/integration/test_properties.py): a real
storage wrapper with an interleaving point, and a small model of what the test did to each
document."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal
from uuid import UUID

from outbox.models import UploadTicket
from outbox.settings import Settings
from worker.storage import ObjectInfo, Storage

Write = Literal["none", "good", "bad"]


class InterleavingStorage(Storage):
    """The real storage (every call goes to the server), plus one optional callback that runs
    right after the next HeadObject or DeleteObject returns.

    A handler looks at storage *outside* its transaction and decides *inside* it; the callback
    puts another real action (a delete, a confirm, a late PUT...) into exactly that window,
    deterministically, without threads.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._hook: Callable[[], None] | None = None
        self.fired = 0

    def arm(self, hook: Callable[[], None]) -> None:
        self._hook = hook

    def disarm(self) -> None:
        self._hook = None

    def _fire(self) -> None:
        hook, self._hook = self._hook, None
        if hook is not None:
            self.fired += 1
            hook()

    def head(self, key: str) -> ObjectInfo | None:
        info = super().head(key)
        self._fire()
        return info

    def delete(self, key: str) -> None:
        super().delete(key)
        self._fire()


@dataclass
class IssuedUrl:
    """An upload URL the test holds, with when it expires in simulated and in real time.

    The one place the property tests need the real clock: boto3 signs the URL with the real
    time, and storage checks the signature's date and lifetime against its own real clock,
    which a test cannot move. So the simulated clock decides whether the *model* allows a
    PUT, and the real deadline only keeps the test from sending a PUT that storage would
    refuse because the example ran longer than the URL's real lifetime.
    """

    ticket: UploadTicket
    body: bytes
    expires_at: datetime  # simulated clock: request time + TTL (what the signature says)
    real_deadline: float  # time.monotonic() after which the real signature may be dead

    def usable(self, now: datetime, grace_seconds: float) -> bool:
        """Would storage still take a PUT? Up to ``grace`` after expiry, as with a storage
        clock that lags by the clock-skew margin the design allows for; and never after
        the real signature may have died (see the class docstring)."""
        return (
            now < self.expires_at + timedelta(seconds=grace_seconds)
            and time.monotonic() < self.real_deadline
        )


@dataclass
class DocModel:
    """What the test knows about one document."""

    id: UUID
    owner: str
    key: str
    body: bytes
    content_type: str
    last_write: Write = "none"
    # The last write to the object was the right body, sent while the document was pending
    # (so nothing had verified the document yet): it must end available unless deleted.
    good_while_pending: bool = False
    deleted_by_test: bool = False
    tampered: int = 0
    last_status: str = "pending"  # as the last check saw it
    urls: list[IssuedUrl] = field(default_factory=list)


def sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
