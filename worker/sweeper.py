"""The sweeper: runs every maintenance job (``worker.maintenance``) once per
``sweeper_interval_seconds``, each on the service loop (``worker.service``): expire abandoned
uploads, rescue lost messages, prune done events, and walk the bucket for orphan objects and
orphan multipart uploads."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import psycopg

from outbox.settings import Settings
from worker import metrics
from worker.maintenance import (
    BucketWalk,
    ExpireAbandoned,
    Job,
    MultipartWalk,
    PruneDone,
    RescueStale,
)
from worker.pool import connect
from worker.service import Stop

log = logging.getLogger("s3outbox.sweeper")


class Sweeper:
    """A service (``run_once``/``wait``) that runs each job to exhaustion per round."""

    name = "sweeper"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.jobs: list[Job] = [
            ExpireAbandoned(settings),
            RescueStale(settings),
            PruneDone(settings),
            # Last: the backstops of invariant 7, a bounded number of listed pages per round
            # (objects, then multipart uploads in progress).
            BucketWalk(settings),
            MultipartWalk(settings),
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

    def wait(self, stop: Stop) -> None:
        stop.wait(self.settings.sweeper_interval_seconds)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.settings)
        return self._conn

    def reset(self) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None
