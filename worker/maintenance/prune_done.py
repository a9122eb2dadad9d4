"""Done events older than ``done_retention_seconds`` are deleted."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from outbox.settings import Settings
from worker.maintenance.job import drain, sql


class PruneDone:
    name = "prune_done"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def run_once(self, conn: psycopg.Connection[Any], now: datetime | None) -> int:
        params = {"now": now, "retention": self.settings.done_retention_seconds}
        return len(
            drain(conn, sql()["prune_done_events"], params, self.settings.sweeper_batch_size)
        )
