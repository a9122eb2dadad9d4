"""What a maintenance job is, and the one way they all work: a named query run in bounded
batches, each batch its own short transaction, until a batch comes back short."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from functools import cache
from typing import Any, Protocol

import psycopg

from outbox import queries
from outbox.settings import Settings
from worker.storage import Storage


class Job(Protocol):
    """A maintenance job: ``run_once`` drains its work and returns the rows it handled."""

    name: str

    def run_once(self, conn: psycopg.Connection[Any], now: datetime | None) -> int: ...


class StorageJob:
    """Base of a job that talks to storage (the walks): its client is made on first use, in
    the process that runs the job (after any fork), unless one is given (tests)."""

    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        self.settings = settings
        self._storage = storage

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = Storage(self.settings)
        return self._storage


@cache
def sql() -> dict[str, str]:
    """The named queries of maintenance jobs (``worker/maintenance/queries.sql``)."""
    return queries.load("worker.maintenance")


def drain(
    conn: psycopg.Connection[Any], query: str, params: Mapping[str, Any], batch_size: int
) -> list[tuple[Any, ...]]:
    """Run ``query`` (which takes ``limit``) batch after batch until one comes back short.
    Returns every row handled. ``conn`` must be in autocommit mode."""
    handled: list[tuple[Any, ...]] = []
    while True:
        with conn.transaction():
            rows = conn.execute(query, {**params, "limit": batch_size}).fetchall()
        handled.extend(rows)
        if len(rows) < batch_size:
            return handled
