"""The relay: outbox table -> Dramatiq queues on Redis.

Claims due pending events in batches (``FOR UPDATE SKIP LOCKED``, so several relays can run),
sends one message per event (the whole batch in one Redis pipeline), and marks them
dispatched in the same transaction: if sending fails, the transaction rolls back and the
events stay pending. Wakes on LISTEN/NOTIFY the moment an event commits, and also polls.
Dispatched events not finished in time are sent again (Redis is a transport, the table is
the truth).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any
from uuid import uuid4

import psycopg
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis
from psycopg import sql

from outbox import queries
from outbox.constants import NOTIFY_CHANNEL, Topic
from outbox.settings import Settings
from worker import metrics
from worker.broker import ACTOR_NAMES, VERIFY_MANY_ACTOR, make_broker
from worker.maintenance.rescue_stale import rescue_stale
from worker.pool import connect
from worker.service import Stop

log = logging.getLogger("s3outbox.relay")

# A packed batch still spreads over this many messages, so every thread of a few worker
# processes has work: packing only thins out a real backlog.
SPREAD_MESSAGES = 32
#: How often a relay held back by ``relay_max_in_flight`` looks for room.
BACK_PRESSURE_POLL_SECONDS = 0.05


class Relay:
    """One relay. ``run_once`` dispatches one batch; ``wait`` sleeps until woken or due."""

    name = "relay"

    def __init__(self, settings: Settings, broker: RedisBroker | None = None) -> None:
        self.settings = settings
        self.broker = broker or make_broker(settings)
        self._q = queries.load("worker", "relay.sql")
        self._conn: psycopg.Connection[Any] | None = None
        self._listen: psycopg.Connection[Any] | None = None
        self._last_batch = 0
        # When the last rescue ran: on the real clock (time.monotonic()) for calls without
        # ``now``, and on the caller's clock for calls with it, so a caller that drives time
        # with ``now=`` (tests, simulations) decides when rescues run.
        self._last_rescue: float | None = None
        self._last_rescue_at: datetime | None = None

    # -- the work ------------------------------------------------------------------------

    def run_once(self, now: datetime | None = None) -> int:
        """Claim and send one batch of due events. Returns how many were sent."""
        # LISTEN before the first claim, so no event committed in between waits for a poll.
        self._listener()
        conn = self._connection()
        with conn.transaction():
            rows = conn.execute(
                self._q["claim_events"],
                {
                    "limit": self.settings.relay_batch_size,
                    "max_in_flight": self.settings.relay_max_in_flight,
                    "now": now,
                },
            ).fetchall()
            if rows:
                messages, packed = self._messages(rows)
                if packed:
                    # Events packed into one message take that message's id.
                    ids, message_ids = zip(*packed, strict=True)
                    conn.execute(
                        self._q["set_message_ids"],
                        {"ids": list(ids), "message_ids": list(message_ids)},
                    )
                self._send(messages)
        for _id, topic, *_ in rows:
            metrics.EVENTS_DISPATCHED.labels(topic).inc()
        metrics.RELAY_BATCHES.inc()
        if rows:
            log.debug("dispatched %d events", len(rows))
        self._last_batch = len(rows)
        if self._rescue_due(now):
            self.rescue(now)
        return len(rows)

    def rescue(self, now: datetime | None = None) -> int:
        """Dispatched events whose message was lost or whose worker died -> pending."""
        if now is None:
            self._last_rescue = time.monotonic()
        else:
            self._last_rescue_at = now
        return rescue_stale(self._connection(), self.settings, self.broker.client, now)

    def _rescue_due(self, now: datetime | None) -> bool:
        """Has ``_rescue_interval()`` passed since the last rescue, on the clock of ``now``?"""
        interval = self._rescue_interval()
        if now is None:
            return self._last_rescue is None or time.monotonic() - self._last_rescue >= interval
        last = self._last_rescue_at
        return last is None or (now - last).total_seconds() >= interval

    def _messages(
        self, rows: list[tuple[Any, ...]]
    ) -> tuple[list[Message[Any]], list[tuple[int, str]]]:
        """The messages of one claimed batch, and (event id, message id) of each packed event.

        One message per event, except in a backlog: verify events with a hint that were never
        rescued are then packed, up to ``relay_events_per_message`` per message. A backlog is
        a batch big enough to still make ``SPREAD_MESSAGES`` messages, or any batch while the
        workers are behind (that many messages already wait in Redis). A message costs a
        worker more CPU than the verify itself (Dramatiq's fetch, decode, middleware and
        ack); the events of a packed message are still handled one by one, each in its own
        transaction. A rescued event (its message was lost, or its worker died) always
        travels alone, so an event that kills its worker cannot use up its neighbours'
        rescues.
        """
        most = self.settings.relay_events_per_message
        packable = [r for r in rows if r[1] == Topic.VERIFY and r[5] is not None and not r[9]]
        per_message = 1
        if most > 1 and len(packable) > 1:
            per_message = min(most, max(1, len(packable) // SPREAD_MESSAGES))
            if per_message < most and self._waiting_messages() >= SPREAD_MESSAGES:
                per_message = most
        if per_message == 1:
            return [self._message(row) for row in rows], []
        in_packs = {id(r) for r in packable}
        messages = [self._message(row) for row in rows if id(row) not in in_packs]
        packed: list[tuple[int, str]] = []
        for start in range(0, len(packable), per_message):
            pack = packable[start : start + per_message]
            items = [[row[0], row[3], _hint(row)] for row in pack]
            message_id = str(uuid4())
            messages.append(self._new_message(VERIFY_MANY_ACTOR, (items,), {}, message_id))
            packed.extend((row[0], message_id) for row in pack)
        return messages, packed

    def _waiting_messages(self) -> int:
        """Messages waiting in Redis for a worker (not yet fetched): how far behind they are."""
        broker: Any = self.broker
        return int(broker.client.llen(f"{broker.namespace}:{self.settings.queue_name}"))

    def _message(self, row: tuple[Any, ...]) -> Message[Any]:
        """The message of one claimed event: (event id, attempt), and for a verify the
        document's declared fields as a hint (the worker checks them against the database
        before it changes anything, so a stale or wrong hint costs time, never correctness).
        """
        event_id, topic, _document_id, attempt, *_ = row
        kwargs: dict[str, Any] = {}
        if topic == Topic.VERIFY and row[5] is not None:
            kwargs["hint"] = _hint(row)
        message_id = row[10]
        return self._new_message(ACTOR_NAMES[Topic(topic)], (event_id, attempt), kwargs, message_id)

    def _new_message(
        self, actor_name: str, args: tuple[Any, ...], kwargs: dict[str, Any], message_id: str
    ) -> Message[Any]:
        # redis_message_id: what RedisBroker.enqueue adds; ours is the one the claim recorded
        # on the event (a new one per attempt), so a rescue can ask Redis whether it still
        # holds the message.
        return Message(
            queue_name=self.settings.queue_name,
            actor_name=actor_name,
            args=args,
            kwargs=kwargs,
            options={"redis_message_id": message_id},
        )

    def _send(self, messages: list[Message[Any]]) -> None:
        """Send a batch in one Redis pipeline (one round trip, not one per message).

        Each message is stored exactly as ``RedisBroker.enqueue`` stores it: the broker's
        ``dispatch`` Lua script with the ``enqueue`` command and the same arguments as
        ``RedisBroker._dispatch``. The broker's before/after_enqueue middleware hooks are
        skipped: none of our middleware uses them. Raises if any send fails (the caller's
        transaction then rolls back and the events stay pending).
        """
        broker: Any = self.broker
        dispatch = broker.scripts["dispatch"]
        keys = [broker.namespace]
        with broker.client.pipeline(transaction=False) as pipe:
            for message in messages:
                args = [
                    "enqueue",
                    current_millis(),
                    message.queue_name,
                    broker.broker_id,
                    broker.heartbeat_timeout,
                    broker.dead_message_ttl,
                    broker._should_do_maintenance("enqueue"),
                    broker._max_unpack_size(),
                    message.options["redis_message_id"],
                    message.encode(),
                ]
                dispatch(keys=keys, args=args, client=pipe)
            pipe.execute(raise_on_error=True)

    def _rescue_interval(self) -> float:
        return max(self.settings.redispatch_after_seconds / 4, 1.0)

    # -- waiting -------------------------------------------------------------------------

    def wait(self, stop: Stop) -> None:
        """Return at once after a full batch; otherwise wait for a NOTIFY, the next due
        event, or the poll interval, whichever comes first."""
        if self._last_batch >= self.settings.relay_batch_size or stop.is_set():
            return
        timeout = self.settings.relay_poll_seconds
        due = self._connection().execute(self._q["next_due_in"], {"now": None}).fetchone()
        if due is not None and due[0] is not None:
            timeout = max(0.0, min(timeout, float(due[0])))
            if timeout == 0 and due[1] >= self.settings.relay_max_in_flight:
                # Due events wait for room: finishing workers send no NOTIFY, so look again
                # soon (a cheap count), not after a whole poll interval.
                timeout = min(BACK_PRESSURE_POLL_SECONDS, self.settings.relay_poll_seconds)
        if timeout == 0:
            return
        listen = self._listener()
        for _notify in listen.notifies(timeout=timeout, stop_after=1):
            break
        # Drain the burst: one claim serves every notification that came with it.
        for _notify in listen.notifies(timeout=0):
            pass

    # -- connections ---------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.settings)
        return self._conn

    def _listener(self) -> psycopg.Connection[Any]:
        if self._listen is None or self._listen.closed:
            self._listen = psycopg.connect(
                self.settings.database_url, autocommit=True, connect_timeout=10
            )
            self._listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
        return self._listen

    def reset(self) -> None:
        self.close()

    def close(self) -> None:
        for conn in (self._conn, self._listen):
            if conn is not None and not conn.closed:
                conn.close()
        self._conn = self._listen = None


def _hint(row: tuple[Any, ...]) -> dict[str, Any]:
    """A claimed verify event's document fields, as its message carries them."""
    _id, _topic, document_id, _attempt, trace_id, key, size, sha256, ctype, *_ = row
    return {
        "document_id": str(document_id),
        "trace_id": trace_id,
        "object_key": key,
        "declared_size": size,
        "sha256": sha256,
        "content_type": ctype,
    }
