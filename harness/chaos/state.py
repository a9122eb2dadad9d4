"""What the client threads of one run share: the work queue, the results, the errors, the
counters and the deletes that wait for their document to become available."""

from __future__ import annotations

import queue
import threading
import time
import uuid

from harness.chaos.client import Client, Counters
from harness.chaos.config import ChaosConfig
from harness.chaos.items import Item, ItemResult
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
        self.work: queue.Queue[Item] = queue.Queue()
        # Documents to delete once they are available: (owner, id, give-up time).
        self.deferred: list[tuple[str, uuid.UUID, float]] = []
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
