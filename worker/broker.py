"""The Dramatiq broker (Redis) and the actor names per topic. Redis is only a transport:
the outbox table is the truth, so messages carry the event id and attempt (a verify message
also a hint: its document's declared fields, which the worker checks against the table)."""

from __future__ import annotations

from collections.abc import Sequence

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)

from outbox.constants import Topic
from outbox.settings import Settings
from worker.wakeup import WakingRedisBroker

#: The prefix of every Redis key the broker writes.
NAMESPACE = "s3outbox"
#: A consumer silent this long is dead: the messages it fetched go back to the queue.
HEARTBEAT_TIMEOUT_MS = 15_000
#: Per million broker commands, how many run the maintenance that requeues them (1%).
MAINTENANCE_CHANCE = 10_000

ACTOR_NAMES: dict[Topic, str] = {topic: f"s3outbox_{topic.value}" for topic in Topic}
#: The actor of a message that carries several verify events (a backlog, packed by the relay).
VERIFY_MANY_ACTOR = "s3outbox_verify_many"


def make_broker(settings: Settings) -> RedisBroker:
    """A Redis broker without Dramatiq's Retries middleware: retries are the outbox's job
    (backoff recorded in PostgreSQL survives a Redis that lost its data). Its idle
    consumers wake when the relay sends (``worker.wakeup``)."""
    middleware = [AgeLimit(), TimeLimit(), ShutdownNotifications(), Callbacks(), Pipelines()]
    return WakingRedisBroker(  # type: ignore[no-untyped-call]
        url=settings.redis_url,
        middleware=middleware,
        namespace=NAMESPACE,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
        # Messages a killed worker had fetched come back to the queue once its heartbeat is
        # this old and Redis runs the broker's maintenance (a chance per command). Dramatiq's
        # defaults (60 s, 0.1%) left them for 1-2.5 minutes after a SIGKILL; a live worker
        # beats on every fetch (every worker_idle_poll_seconds when idle), so 15 s is safe.
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
    )


def held_messages(client: redis.Redis, settings: Settings, message_ids: Sequence[str]) -> set[str]:
    """Which of these messages the broker still holds: waiting in the queue, or fetched by
    a worker and not acknowledged yet (Dramatiq's Redis broker keeps both in the queue's
    ``.msgs`` hash until the ack). A message it does not hold is gone: acknowledged, dead
    lettered, or lost with Redis's data."""
    if not message_ids:
        return set()
    found = client.hmget(f"{NAMESPACE}:{settings.queue_name}.msgs", list(message_ids))
    return {mid for mid, data in zip(message_ids, found, strict=True) if data is not None}
