"""What the client threads of one run share: the items still to play, the results, the
errors, the counters, the deletes that wait for their document to become available, and the
background threads some scenarios start (a slow upload outlives its client's turn)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from harness.chaos.client import Client, Counters
from harness.chaos.config import ChaosConfig
from harness.chaos.items import Item, ItemResult, make_item
from outbox import Outbox, Settings


class ChaosRun:
    """State shared by the client threads of one run."""

    def __init__(self, config: ChaosConfig, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.outbox = Outbox(settings)
        self.counters = Counters()
        self.results: list[ItemResult] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._next = 0
        # Documents to delete once they are available: (owner, id, give-up time).
        self.deferred: list[tuple[str, uuid.UUID, float]] = []
        self.background: list[threading.Thread] = []
        #: When the load started (time.monotonic()); item i starts i / rate_per_second later.
        self.load_started = 0.0

    def client(self) -> Client:
        """A new client of this run (one per client thread)."""
        return Client(
            self.settings.database_url,
            self.outbox,
            self.counters,
            self.config.client_retry_seconds,
        )

    def start_at(self, index: int) -> float:
        """When item ``index`` starts (time.monotonic()), spreading the load over time."""
        rate = self.config.rate_per_second
        return self.load_started + (index / rate if rate else 0.0)

    def load_ends_at(self) -> float | None:
        """When a soak's load ends (time.monotonic()); None for a run of N documents."""
        minutes = self.config.duration_minutes
        return None if minutes is None else self.load_started + minutes * 60.0

    def next_item(self) -> Item | None:
        """The next item to play, or None when the run has played them all (its document
        count, or, for a soak, the first item that would start after the load's end)."""
        with self._lock:
            index = self._next
            ends = self.load_ends_at()
            if ends is None and index >= self.config.documents:
                return None
            if ends is not None and (self.start_at(index) >= ends or time.monotonic() >= ends):
                return None
            self._next += 1
        return make_item(self.config, index)

    @property
    def started(self) -> int:
        """Items handed out so far."""
        with self._lock:
            return self._next

    def spawn(self, target: Callable[[], None], name: str) -> None:
        """Run ``target`` in a background thread that the load waits for before it ends."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        with self._lock:
            self.background = [t for t in self.background if t.is_alive()]
            self.background.append(thread)
        thread.start()

    def background_alive(self) -> bool:
        with self._lock:
            return any(t.is_alive() for t in self.background)

    def error(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)

    def record(self, result: ItemResult) -> None:
        with self._lock:
            self.results.append(result)

    def defer_delete(self, owner: str, doc_id: uuid.UUID) -> None:
        with self._lock:
            self.deferred.append((owner, doc_id, time.monotonic() + 30.0))

    def take_deferred(self) -> tuple[str, uuid.UUID, float] | None:
        with self._lock:
            return self.deferred.pop(0) if self.deferred else None

    def return_deferred(self, entry: tuple[str, uuid.UUID, float]) -> None:
        with self._lock:
            self.deferred.append(entry)
