"""Send again what was lost. A dispatched event unfinished after ``redispatch_after_seconds``
goes back to pending when its broker message is gone (Redis lost it, or a worker acked it
without finishing) or when the worker that started it died. An event whose message still
waits in Redis is left alone: waiting, in an outage or a backlog of any length, is not lost.

A rescue is never a failure: an event becomes dead only through attempts a worker started
and that failed (``lifecycle.start`` counts a start whose worker died). The relay runs this
job too, between batches."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import psycopg
import redis

from outbox.settings import Settings
from worker import metrics
from worker.broker import held_messages
from worker.maintenance.job import sql

log = logging.getLogger("s3outbox.sweeper")


def rescue_stale(
    conn: psycopg.Connection[Any],
    settings: Settings,
    broker_client: redis.Redis,
    now: datetime | None = None,
) -> int:
    """Rescue every stale dispatched event whose message is lost or whose worker died;
    returns how many went back to pending. ``conn`` must be in autocommit mode."""
    q = sql()
    after, total = 0, 0
    while True:
        rows = conn.execute(
            q["stale_dispatched"],
            {
                "now": now,
                "stale_after": settings.redispatch_after_seconds,
                "after": after,
                "limit": settings.sweeper_batch_size,
            },
        ).fetchall()
        if not rows:
            return total
        after = rows[-1][0]
        asked = [r[3] for r in rows if r[3] is not None and not r[4]]
        held = held_messages(broker_client, settings, asked)
        lost = [(r[0], r[2]) for r in rows if r[4] or r[3] is None or r[3] not in held]
        if lost:
            with conn.transaction():
                resent = conn.execute(
                    q["resend_events"],
                    {
                        "ids": [i for i, _ in lost],
                        "attempts": [a for _, a in lost],
                        "now": now,
                    },
                ).fetchall()
            for _id, topic in resent:
                metrics.EVENTS_REDISPATCHED.labels(topic).inc()
            if resent:
                log.warning("sending %d events again (message lost or worker gone)", len(resent))
            total += len(resent)
        if len(rows) < settings.sweeper_batch_size:
            return total


class RescueStale:
    name = "rescue_stale"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: redis.Redis | None = None

    def run_once(self, conn: psycopg.Connection[Any], now: datetime | None) -> int:
        if self._client is None:
            self._client = redis.Redis.from_url(
                self.settings.redis_url, socket_timeout=10, socket_connect_timeout=5
            )
        return rescue_stale(conn, self.settings, self._client, now)
