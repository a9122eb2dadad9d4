"""The Dramatiq broker (Redis) and the actor names per topic. Redis is only a transport:
the outbox table is the truth, so messages carry the event id and attempt (a verify message
also a hint: its document's declared fields, which the worker checks against the table)."""

from __future__ import annotations

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

ACTOR_NAMES: dict[Topic, str] = {topic: f"s3outbox_{topic.value}" for topic in Topic}
#: The actor of a message that carries several verify events (a backlog, packed by the relay).
VERIFY_MANY_ACTOR = "s3outbox_verify_many"


def make_broker(settings: Settings) -> RedisBroker:
    """A Redis broker without Dramatiq's Retries middleware: retries are the outbox's job
    (backoff recorded in PostgreSQL survives a Redis that lost its data)."""
    middleware = [AgeLimit(), TimeLimit(), ShutdownNotifications(), Callbacks(), Pipelines()]
    return RedisBroker(  # type: ignore[no-untyped-call]
        url=settings.redis_url,
        middleware=middleware,
        namespace="s3outbox",
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
