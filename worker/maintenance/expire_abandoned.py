"""Pending uploads whose URL expired (plus a grace for clock skew) get one ``expire`` event
each. The expire actor verifies once: a lost confirm ends available, the rest expired."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from outbox.settings import Settings
from worker.maintenance.job import drain, sql


class ExpireAbandoned:
    name = "expire_abandoned"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def run_once(self, conn: psycopg.Connection[Any], now: datetime | None) -> int:
        params = {"now": now, "grace": self.settings.purge_grace_seconds}
        return len(drain(conn, sql()["request_expiry"], params, self.settings.sweeper_batch_size))
