"""Idle consumers wake when the relay sends (worker/wakeup.py), and fall back to polling
without the wake channel. Also pins the behaviour of Dramatiq's Redis consumer that the
waking consumer relies on."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from typing import Any
from unittest import mock

import pytest
import redis
from dramatiq.brokers.redis import _RedisConsumer

from outbox import Settings
from tests.support.util import wait_for
from worker.broker import make_broker
from worker.relay import Relay
from worker.wakeup import _WakingConsumer, wake_channel

#: An idle wait far longer than any test may take: only a wake ends it in time.
LONG_POLL_MS = 120_000


@pytest.fixture
def queue_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"queue_name": f"wake-{uuid.uuid4().hex[:8]}"})


@pytest.fixture
def mine(queue_settings: Settings) -> Any:
    broker: Any = make_broker(queue_settings)
    yield broker
    key = f"{broker.namespace}:{queue_settings.queue_name}"
    broker.client.delete(key, f"{key}.msgs")
    broker.client.close()


def _send(relay_settings: Settings, broker: Any, n: int = 1) -> list[str]:
    """``n`` messages sent the way the relay sends a batch (one pipeline, one wake)."""
    relay = Relay(relay_settings, broker)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    bodies = [relay._body("a", [i, 1], {}, mid, 0) for i, mid in enumerate(ids)]
    from dramatiq import get_encoder

    relay._send([(mid, get_encoder().encode(b)) for mid, b in zip(ids, bodies, strict=True)])
    return ids


def _consume_in_thread(consumer: Any) -> queue.Queue[tuple[Any, float]]:
    """Calls ``next(consumer)`` in a thread until a message comes: (message, when)."""
    out: queue.Queue[tuple[Any, float]] = queue.Queue()

    def run() -> None:
        while True:
            message = next(consumer)
            if message is not None:
                out.put((message, time.monotonic()))
                return

    threading.Thread(target=run, daemon=True).start()
    return out


def test_an_idle_consumer_fetches_as_soon_as_the_relay_sends(
    queue_settings: Settings, mine: Any
) -> None:
    consumer = mine.consume(queue_settings.queue_name, prefetch=1, timeout=LONG_POLL_MS)
    assert isinstance(consumer, _WakingConsumer)
    # Deep in its backoff: without a wake, the next empty fetch waits a minute or more.
    consumer._idle_misses = 30
    waiting = threading.Event()
    wait = consumer._wait

    def watched_wait(seconds: float) -> None:
        assert seconds >= LONG_POLL_MS / 2000
        waiting.set()
        wait(seconds)

    consumer._wait = watched_wait
    try:
        got = _consume_in_thread(consumer)
        assert waiting.wait(10), "the consumer never went idle"
        sent_at = time.monotonic()
        (message_id,) = _send(queue_settings, mine)
        message, fetched_at = got.get(timeout=10)
        assert message.options["redis_message_id"] == message_id
        assert fetched_at - sent_at < 10
    finally:
        consumer.close()


def test_every_consumer_of_the_queue_wakes(queue_settings: Settings, mine: Any) -> None:
    """Pub/sub reaches every subscriber: with two idle consumers (two worker processes),
    one fetches the message and the other wakes, finds nothing, and waits again."""
    consumers = [
        mine.consume(queue_settings.queue_name, prefetch=1, timeout=LONG_POLL_MS) for _ in (1, 2)
    ]
    woken = [threading.Event(), threading.Event()]
    for consumer, event in zip(consumers, woken, strict=True):
        consumer._idle_misses = 30
        wait = consumer._wait

        def watched(seconds: float, wait: Any = wait, event: threading.Event = event) -> None:
            wait(seconds)
            event.set()

        consumer._wait = watched
    channel = wake_channel(mine.namespace, queue_settings.queue_name)
    try:
        # Each consumer's first empty fetch; both then wait a minute or more.
        for consumer in consumers:
            threading.Thread(target=next, args=(consumer,), daemon=True).start()
        wait_for(lambda: mine.client.pubsub_numsub(channel)[0][1] == 2, message="2 subscribers")
        assert not any(e.is_set() for e in woken)
        mine.client.publish(channel, b"")
        assert all(e.wait(10) for e in woken)
    finally:
        for consumer in consumers:
            consumer.close()


def test_a_consumer_polls_when_the_wake_channel_fails(
    queue_settings: Settings, mine: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    def refused() -> Any:
        raise redis.ConnectionError("pub/sub refused")

    monkeypatch.setattr(mine.client, "pubsub", refused)
    consumer = mine.consume(queue_settings.queue_name, prefetch=1, timeout=20)
    try:
        with caplog.at_level(logging.WARNING, logger="s3outbox.wakeup"):
            assert next(consumer) is None
        assert "polling instead" in caplog.text
        (message_id,) = _send(queue_settings, mine)
        message, _ = _consume_in_thread(consumer).get(timeout=10)
        assert message.options["redis_message_id"] == message_id
    finally:
        consumer.close()


def test_a_lost_wake_subscription_falls_back_to_polling_then_resubscribes(
    queue_settings: Settings, mine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = mine.consume(queue_settings.queue_name, prefetch=1, timeout=20)
    channel = wake_channel(mine.namespace, queue_settings.queue_name)
    try:
        assert next(consumer) is None
        assert mine.client.pubsub_numsub(channel)[0][1] == 1
        mine.client.client_kill_filter(_type="pubsub")
        next(consumer)  # the wait sees the connection gone: polls from now on
        assert consumer._pubsub is None
        (message_id,) = _send(queue_settings, mine)
        message, _ = _consume_in_thread(consumer).get(timeout=10)
        assert message.options["redis_message_id"] == message_id
        # After RESUBSCRIBE_AFTER_SECONDS it subscribes again.
        monkeypatch.setattr("worker.wakeup.RESUBSCRIBE_AFTER_SECONDS", 0.0)
        next(consumer)
        assert mine.client.pubsub_numsub(channel)[0][1] == 1
    finally:
        consumer.close()
    wait_for(lambda: mine.client.pubsub_numsub(channel)[0][1] == 0, message="unsubscribed")


@pytest.mark.parametrize("timeout_ms", [0, 1000])
def test_dramatiqs_consumer_sleeps_its_backoff_of_timeout_after_an_empty_fetch(
    queue_settings: Settings, mine: Any, timeout_ms: int
) -> None:
    """What ``_WakingConsumer`` relies on in the installed Dramatiq: an empty fetch returns
    None after one sleep of at most ``timeout`` (so 0 means no wait there), and a message
    is returned without one."""
    consumer = _RedisConsumer(mine, queue_settings.queue_name, 1, timeout_ms)
    with mock.patch("dramatiq.brokers.redis.time") as fake_time:
        for _ in range(12):
            assert next(consumer) is None
        naps = [c.args[0] for c in fake_time.sleep.call_args_list]
        assert len(naps) == 12
        assert all(0 <= nap <= timeout_ms / 1000 for nap in naps)
        assert max(naps) == 0 if timeout_ms == 0 else max(naps) > 0
        fake_time.sleep.reset_mock()
        (message_id,) = _send(queue_settings, mine)
        message = next(consumer)
        assert message.options["redis_message_id"] == message_id
        fake_time.sleep.assert_not_called()
