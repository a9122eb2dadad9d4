"""Waking idle Dramatiq consumers the moment the relay sends.

Dramatiq's Redis consumer polls: after an empty fetch it sleeps, backing off exponentially up
to the worker's timeout (``worker_idle_poll_seconds``). At a steady load that sleep was the
largest part of the confirm-to-available time: at 100 confirms/s a message waited in Redis a
median 8 ms (p99 20-30 ms) for its consumer to look again. Here an idle consumer waits on a
Redis pub/sub channel instead of sleeping, and the relay publishes on it in the same pipeline
as each batch it sends, so a waiting consumer fetches at once.

The poll stays, as the fallback: pub/sub is at most once (a consumer that is reconnecting
misses a wake), so a lost wake costs at most one poll interval, never a message.

Dramatiq has no hook in its consumer's idle wait: ``RedisBroker.consumer_class`` is the
extension point, and ``_WakingConsumer`` wraps the stock consumer's ``__next__``.
``tests/integration/test_wakeup.py`` pins the behaviour of the installed Dramatiq this
relies on (an empty fetch returns ``None`` after sleeping the backoff of ``timeout``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff

log = logging.getLogger("s3outbox.wakeup")

#: How long a consumer waits for Redis to confirm its subscription before it polls instead.
SUBSCRIBE_TIMEOUT_SECONDS = 5.0
#: After a pub/sub error, how long a consumer only polls before it subscribes again.
RESUBSCRIBE_AFTER_SECONDS = 5.0


def wake_channel(namespace: str, queue_name: str) -> str:
    """The pub/sub channel the relay publishes on after sending to ``queue_name``."""
    return f"{namespace}:{queue_name}.wake"


class WakingRedisBroker(RedisBroker):
    """A ``RedisBroker`` whose consumers wait for a wake instead of sleeping when idle."""

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _WakingConsumer


class _WakingConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer, whose idle wait ends early when the relay publishes.

    The stock consumer sleeps ``compute_backoff(misses, max_backoff=timeout)`` after an
    empty fetch, then returns ``None``. It is given a timeout of 0, so that sleep is
    ``sleep(0)``, and the wait happens here: on the wake channel, up to the same backoff
    of the real timeout.
    """

    def __init__(self, broker: RedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, 0)  # type: ignore[no-untyped-call]
        self.idle_timeout_ms = timeout
        self._idle_misses = 0
        self._pubsub: Any = None
        self._failed_at: float | None = None

    def __next__(self) -> Any:
        # Subscribed before the fetch: a wake published after an empty fetch is buffered on
        # the subscription and ends the wait at once, never lost in between.
        self._subscribe()
        message = super().__next__()  # type: ignore[no-untyped-call]
        if message is None:
            self._idle_misses, backoff_ms = compute_backoff(
                self._idle_misses, max_backoff=self.idle_timeout_ms
            )
            self._wait(backoff_ms / 1000)
        else:
            self._idle_misses = 0
        return message

    def close(self) -> None:
        self._unsubscribe()
        super().close()

    def _subscribe(self) -> None:
        failed = self._failed_at
        if self._pubsub is not None or (
            failed is not None and time.monotonic() - failed < RESUBSCRIBE_AFTER_SECONDS
        ):
            return
        pubsub = None
        try:
            pubsub = self.broker.client.pubsub()
            pubsub.subscribe(wake_channel(self.broker.namespace, self.queue_name))
            # The confirmation, so that Redis has registered the subscription before the
            # first fetch (a command on another connection could otherwise overtake it).
            reply = pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_SECONDS)
            if reply is None or reply["type"] != "subscribe":
                raise redis.TimeoutError("no confirmation of the wake subscription")
        except (redis.RedisError, OSError) as exc:
            log.warning("wake channel unavailable, polling instead: %s", exc)
            self._failed_at = time.monotonic()
            if pubsub is not None:
                _close_quietly(pubsub)
            return
        self._pubsub = pubsub
        self._failed_at = None

    def _wait(self, seconds: float) -> None:
        """Until a wake arrives or ``seconds`` passed; a plain sleep without a subscription."""
        pubsub = self._pubsub
        if pubsub is None:
            time.sleep(seconds)
            return
        try:
            if pubsub.get_message(timeout=seconds) is not None:
                # One fetch serves every wake already buffered.
                while pubsub.get_message(timeout=0) is not None:
                    pass
        except (redis.RedisError, OSError) as exc:
            log.warning("wake channel lost, polling until it is back: %s", exc)
            self._failed_at = time.monotonic()
            self._unsubscribe()

    def _unsubscribe(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            _close_quietly(pubsub)


def _close_quietly(pubsub: Any) -> None:
    try:
        pubsub.close()
    except (redis.RedisError, OSError):
        log.debug("closing the wake subscription failed", exc_info=True)
