"""The sweeper: periodic maintenance as small named jobs (River's rescuer/cleaner style).

- expire_abandoned: pending uploads whose URL expired get one expire event (the expire actor
  verifies once: a lost confirm ends available, anything else expired and purged);
- rescue_stale: dispatched events unfinished for too long are sent again;
- prune_done: done events older than the retention period are deleted.

Each job drains in bounded batches, each batch in its own short transaction.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg

from outbox import queries
from outbox.settings import Settings
from worker import metrics
from worker.relay import rescue_stale

log = logging.getLogger("s3outbox.sweeper")


class Job(Protocol):
    name: str

    def run_once(self, conn: psycopg.Connection[Any], now: datetime | None) -> int: ...


@dataclass
class _BatchJob:
    """A job that runs one named query in batches until a batch comes back short."""

    name: str
    query: str
    settings: Settings

    def params(self, now: datetime | None) -> dict[str, Any]:
        return {"now": now, "limit": self.settings.sweeper_batch_size}

    def run_once(self, conn: psycopg.Connection[Any], now: datetime | None) -> int:
        sql = queries.load("worker")[self.query]
        total = 0
        while True:
            with conn.transaction():
                n = len(conn.execute(sql, self.params(now)).fetchall())
            total += n
            if n < self.settings.sweeper_batch_size:
                return total


class ExpireAbandoned(_BatchJob):
    def __init__(self, settings: Settings) -> None:
        super().__init__("expire_abandoned", "request_expiry", settings)

    def params(self, now: datetime | None) -> dict[str, Any]:
        return {**super().params(now), "grace": self.settings.purge_grace_seconds}


class PruneDone(_BatchJob):
    def __init__(self, settings: Settings) -> None:
        super().__init__("prune_done", "prune_done_events", settings)

    def params(self, now: datetime | None) -> dict[str, Any]:
        return {**super().params(now), "retention": self.settings.done_retention_seconds}


@dataclass
class RescueStale:
    settings: Settings
    name: str = "rescue_stale"

    def run_once(self, conn: psycopg.Connection[Any], now: datetime | None) -> int:
        return rescue_stale(conn, self.settings, now)


class Sweeper:
    """Runs every job once per ``sweeper_interval_seconds``."""

    name = "sweeper"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.jobs: list[Job] = [
            ExpireAbandoned(settings),
            RescueStale(settings),
            PruneDone(settings),
        ]
        self._conn: psycopg.Connection[Any] | None = None

    def run_once(self, now: datetime | None = None) -> int:
        """Run each job once (to exhaustion). Returns the rows handled by all jobs."""
        total = 0
        for job in self.jobs:
            n = job.run_once(self._connection(), now)
            if n:
                metrics.SWEEPS.labels(job.name).inc(n)
                log.info("%s: %d rows", job.name, n)
            total += n
        return total

    def run_job(self, name: str, now: datetime | None = None) -> int:
        """Run one job by name (tests and the CLI)."""
        for job in self.jobs:
            if job.name == name:
                return job.run_once(self._connection(), now)
        raise KeyError(name)

    def wait(self, stop: threading.Event) -> None:
        stop.wait(self.settings.sweeper_interval_seconds)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.settings.database_url, autocommit=True, connect_timeout=10
            )
        return self._conn

    def reset(self) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None
