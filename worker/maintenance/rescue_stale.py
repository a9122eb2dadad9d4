"""Send again what Redis lost: dispatched events unfinished after
``redispatch_after_seconds`` go back to pending (with a NOTIFY), or dead after too many
rescues. The relay runs it too, between batches."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import psycopg

from outbox.constants import EventStatus
from outbox.settings import Settings
from worker import metrics
from worker.maintenance.job import drain, sql

log = logging.getLogger("s3outbox.sweeper")


def rescue_stale(
    conn: psycopg.Connection[Any], settings: Settings, now: datetime | None = None
) -> int:
    """Rescue every stale dispatched event; returns how many."""
    params = {
        "now": now,
        "stale_after": settings.redispatch_after_seconds,
        "max_rescues": settings.max_failures,
    }
    rows = drain(conn, sql()["rescue_stale_events"], params, settings.sweeper_batch_size)
    for _id, topic, status in rows:
        metrics.EVENTS_REDISPATCHED.labels(topic).inc()
        if status == EventStatus.DEAD:
            metrics.EVENTS_DEAD.labels(topic).inc()
    if rows:
        log.warning("re-dispatching %d stale events", len(rows))
    return len(rows)


class RescueStale:
    name = "rescue_stale"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def run_once(self, conn: psycopg.Connection[Any], now: datetime | None) -> int:
        return rescue_stale(conn, self.settings, now)
