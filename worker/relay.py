"""The relay: outbox table -> Dramatiq queues on Redis.

Claims due pending events in batches (``FOR UPDATE SKIP LOCKED``, so several relays can run)
and marks them dispatched, then, once that committed, sends one message per event (the whole
batch in one Redis pipeline): if sending fails the events go back to pending, and if the relay
dies in between, the rescue finds their messages missing. Wakes on LISTEN/NOTIFY the moment an
event commits, and also polls.
Dispatched events not finished in time are sent again (Redis is a transport, the table is
the truth).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import psycopg
from dramatiq import get_encoder
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
from worker.wakeup import wake_channel

log = logging.getLogger("s3outbox.relay")

# A packed batch still spreads over this many messages, so that a burst keeps several worker
# threads busy at once; and once this many messages wait in Redis the workers are behind and
# every batch is packed whole. At 32, a burst of 1,000 confirms (50 per commit) went out at
# 2-4 events per message; at 8 at 6-7, and 2 processes verified it 1.14x faster with 12% less
# CPU per document and a lower backlog latency (p50 349 -> 196 ms; README "How it got here").
SPREAD_MESSAGES = 8
#: How often a relay held back by ``relay_max_in_flight`` looks for room.
BACK_PRESSURE_POLL_SECONDS = 0.05
#: Inside a backlog, a walk of the pending index from its start comes at most once per this
#: many times its own duration (and at least every relay_poll_seconds).
FULL_PICK_SPACING = 20
#: Outside a backlog a pick starts this long before the newest position this relay claimed,
#: not at the start of the pending index: an event whose transaction began earlier than the
#: last claimed one's but committed later (a late commit: its position is its transaction's
#: start) is found at once when its transaction took less than this. Anything older waits
#: for the next walk from the start (see ``_pick``).
LOOKBACK = timedelta(seconds=2)
#: A position before every event of the pending index (available_at, id).
_START = (datetime(1, 1, 1, tzinfo=UTC), 0)


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
        # Back-pressure: the room last counted, and what this relay claimed since.
        self._room: int | None = None
        self._claimed_since_count = 0
        self._held_back = False
        # Inside a backlog: where the last batch ended in the pending index, and when a
        # pick last walked the index from its start.
        self._floor: tuple[datetime, int] | None = None
        # The newest position this relay claimed (None: walk from the start next time).
        self._newest: tuple[datetime, int] | None = None
        self._last_full_pick = 0.0
        self._full_pick_took = 0.0

    # -- the work ------------------------------------------------------------------------

    def run_once(self, now: datetime | None = None) -> int:
        """Claim and send one batch of due events. Returns how many were sent."""
        # LISTEN before the first claim, so no event committed in between waits for a poll.
        self._listener()
        conn = self._connection()
        batch = self.settings.relay_batch_size
        messages: list[tuple[str, bytes]] = []
        ids: list[int] = []
        message_ids: list[str] = []
        try:
            with _pipelined_transaction(conn):
                limit = self._limit(conn)
                rows = self._pick(conn, limit, now) if limit > 0 else []
                if rows:
                    messages, ids, message_ids = self._messages(rows)
                    conn.execute(
                        self._q["mark_dispatched"],
                        {"ids": ids, "message_ids": message_ids, "now": now},
                    )
        except BaseException:
            # Nothing was claimed: count the room and walk the whole index next time.
            self._room = None
            self._floor = self._newest = None
            raise
        if messages:
            self._send_committed(messages, ids, message_ids)
        self._claimed_since_count += len(rows)
        self._held_back = limit < batch and len(rows) == limit
        if rows:
            topics = Counter(row[1] for row in rows)
            for topic, n in topics.items():
                metrics.EVENTS_DISPATCHED.labels(topic).inc(n)
            log.debug("dispatched %d events", len(rows))
        metrics.RELAY_BATCHES.inc()
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

    def _limit(self, conn: psycopg.Connection[Any]) -> int:
        """How many events this batch may claim: the batch size, or less when back-pressure
        leaves less room (``relay_max_in_flight``).

        Counting what is in flight walks up to ``relay_max_in_flight`` index entries, so it
        is skipped while this relay has claimed, since its last count, less than a quarter of
        the room it counted (it counts again before it could claim more): up to four relays
        side by side then stay within the limit, give or take a batch each, as when every
        batch counted."""
        batch = self.settings.relay_batch_size
        if self._room is None or self._claimed_since_count + batch > self._room // 4:
            row = conn.execute(
                self._q["room"], {"max_in_flight": self.settings.relay_max_in_flight}
            ).fetchone()
            self._room = int(row[0]) if row else 0
            self._claimed_since_count = 0
        return max(0, min(batch, self._room - self._claimed_since_count))

    def _pick(
        self, conn: psycopg.Connection[Any], limit: int, now: datetime | None
    ) -> list[tuple[Any, ...]]:
        """Lock up to ``limit`` due pending events, oldest first.

        The index entries of claimed events are dead, and not removable while any
        transaction anywhere holds back the xmin horizon: a pick that walked them all from
        the start of the index made every claim slower than the last (each one visits the
        heap to find them dead). So a pick starts:

        * inside a backlog (the last batch was full), right after the last batch;
        * outside one, ``LOOKBACK`` before the newest position this relay claimed, where an
          event that committed late with an older position (its transaction began before
          the others) still is; the rest of a batch that ends a backlog comes from there too;
        * at the start of the index every ``relay_poll_seconds`` or, when longer, every
          ``FULL_PICK_SPACING`` times as long as the last such walk took (a held horizon
          makes it slow: its cost stays a small share of the relay's time), and whenever
          this relay has claimed nothing yet or its last claim failed. That walk finds what
          nothing else does: an event that committed later than ``LOOKBACK`` after its
          transaction began, events another relay put back after a failed send, an event
          skipped while another transaction held its lock.

        A caller that drives time with ``now`` (tests, simulations) may give events positions
        on a clock unrelated to the last claim (a snooze far ahead, then a confirm on the
        database's clock): outside a backlog its picks start at the start of the index.
        """
        started = time.monotonic()
        spacing = max(self.settings.relay_poll_seconds, FULL_PICK_SPACING * self._full_pick_took)
        lookback: tuple[datetime, int] | None = None
        if self._newest is not None and now is None:
            lookback = (self._newest[0] - LOOKBACK, 0)
        backlog = self._floor
        if started - self._last_full_pick >= spacing:
            backlog = lookback = None
        after_at, after_id = backlog or lookback or _START
        params: dict[str, Any] = {"now": now, "limit": limit, "exclude": []}
        rows = conn.execute(
            self._q["pick_events"], {**params, "after_at": after_at, "after_id": after_id}
        ).fetchall()
        self._floor = None
        if backlog is None and lookback is None:
            self._full_picked(started)
        if len(rows) == limit:
            self._floor = (rows[-1][10], rows[-1][0])
        elif backlog is not None:
            # The backlog ends: the rest of the batch from before it.
            rest_from = lookback or _START
            rest_started = time.monotonic()
            rows += conn.execute(
                self._q["pick_events"],
                {
                    **params,
                    "limit": limit - len(rows),
                    "after_at": rest_from[0],
                    "after_id": rest_from[1],
                    "exclude": [row[0] for row in rows],
                },
            ).fetchall()
            if lookback is None:
                self._full_picked(rest_started)
        if rows:
            newest = max((row[10], row[0]) for row in rows)
            self._newest = newest if self._newest is None else max(self._newest, newest)
        return rows

    def _full_picked(self, started: float) -> None:
        """A pick walked the pending index from its start, beginning at ``started``."""
        self._last_full_pick = started
        self._full_pick_took = time.monotonic() - started

    def _messages(
        self, rows: list[tuple[Any, ...]]
    ) -> tuple[list[tuple[str, bytes]], list[int], list[str]]:
        """The encoded messages of one claimed batch ``(message id, body)``, and the id of
        each event with the id of the message that carries it.

        One message per event, except in a backlog: verify events with a hint that were never
        rescued are then packed, up to ``relay_events_per_message`` per message. A backlog is
        a batch big enough to still make ``SPREAD_MESSAGES`` messages, or any batch while the
        workers are behind (Redis already holds that many messages for them). A message costs a
        worker more CPU than the verify itself (Dramatiq's fetch, decode, middleware and
        ack); the matching verifies of a packed message are accepted in one statement
        (worker/events/verify_packed.py), every other event alone in its own transaction, as
        if it had its own message. A rescued event (its message was lost, or its worker
        died) always travels alone, so an event that kills its worker cannot use up its
        neighbours' rescues.
        """
        most = self.settings.relay_events_per_message
        packable = [r for r in rows if r[1] == Topic.VERIFY and r[5] is not None and not r[9]]
        per_message = 1
        if most > 1 and len(packable) > 1:
            per_message = min(most, max(1, len(packable) // SPREAD_MESSAGES))
            if per_message < most and self._waiting_messages() >= SPREAD_MESSAGES:
                per_message = most
        if per_message == 1:
            packable = []
        encode = get_encoder().encode
        stamp = current_millis()
        messages: list[tuple[str, bytes]] = []
        ids: list[int] = []
        message_ids: list[str] = []
        in_packs = {r[0] for r in packable}
        for row in rows:
            if row[0] in in_packs:
                continue
            event_id, topic, attempt = row[0], row[1], row[3]
            kwargs = {"hint": _hint(row)} if topic == Topic.VERIFY and row[5] is not None else {}
            message_id = str(uuid4())
            body = self._body(
                ACTOR_NAMES[Topic(topic)], [event_id, attempt], kwargs, message_id, stamp
            )
            messages.append((message_id, encode(body)))
            ids.append(event_id)
            message_ids.append(message_id)
        for start in range(0, len(packable), per_message):
            pack = packable[start : start + per_message]
            message_id = str(uuid4())
            items = [[row[0], row[3], _hint(row)] for row in pack]
            body = self._body(VERIFY_MANY_ACTOR, [items], {}, message_id, stamp)
            messages.append((message_id, encode(body)))
            ids.extend(row[0] for row in pack)
            message_ids.extend([message_id] * len(pack))
        return messages, ids, message_ids

    def _body(
        self, actor_name: str, args: list[Any], kwargs: dict[str, Any], message_id: str, stamp: int
    ) -> dict[str, Any]:
        """A Dramatiq message as ``Message.asdict`` gives it (what a worker decodes), built
        without a ``Message`` object per message. ``redis_message_id`` is what
        ``RedisBroker.enqueue`` adds: the id the claim records on the event (a new one per
        attempt), so a rescue can ask Redis whether it still holds the message."""
        return {
            "queue_name": self.settings.queue_name,
            "actor_name": actor_name,
            "args": args,
            "kwargs": kwargs,
            "options": {"redis_message_id": message_id},
            "message_id": message_id,
            "message_timestamp": stamp,
        }

    def _send_committed(
        self, messages: list[tuple[str, bytes]], ids: list[int], message_ids: list[str]
    ) -> None:
        """Send the messages of events whose claim committed.

        After the commit, never before: a worker that gets a message must find its event
        dispatched with that attempt, or it takes the message for a stale copy and drops it
        (under load a worker could start before the claim committed). When sending fails the
        events go back to pending (compare-and-set on their message id; those already in
        Redis become stale copies). If the relay dies in between, their messages are missing
        and the rescue sends them again after ``redispatch_after_seconds``.
        """
        try:
            self._send(messages)
        except BaseException:
            # The events go back to pending at their old positions: walk from the start.
            self._room = None
            self._floor = self._newest = None
            with contextlib.suppress(psycopg.Error):
                self._connection().execute(
                    self._q["release_unsent"], {"ids": ids, "message_ids": message_ids}
                )
            raise

    def _waiting_messages(self) -> int:
        """Messages Redis holds for the workers, waiting or fetched and not acknowledged yet:
        how far behind they are. The queue's length alone misses what sits in the workers'
        prefetch buffers (8 per thread: a process takes up to 64 off the queue at once), so
        a relay that claims each commit's events at once saw no backlog and never packed."""
        broker: Any = self.broker
        return int(broker.client.hlen(f"{broker.namespace}:{self.settings.queue_name}.msgs"))

    def _send(self, messages: list[tuple[str, bytes]]) -> None:
        """Send a batch in one Redis pipeline (one round trip, not one per message), with a
        wake for the idle consumers.

        Each message is stored exactly as ``RedisBroker.enqueue`` stores it: the broker's
        ``dispatch`` Lua script with the ``enqueue`` command and the same arguments as
        ``RedisBroker._dispatch``. The broker's before/after_enqueue middleware hooks are
        skipped: none of our middleware uses them. Raises if any send fails (the caller's
        transaction then rolls back and the events stay pending).
        """
        broker: Any = self.broker
        dispatch = broker.scripts["dispatch"]
        keys = [broker.namespace]
        queue = self.settings.queue_name
        head = [broker.broker_id, broker.heartbeat_timeout, broker.dead_message_ttl]
        max_unpack = broker._max_unpack_size()
        with broker.client.pipeline(transaction=False) as pipe:
            for message_id, body in messages:
                args = [
                    "enqueue",
                    current_millis(),
                    queue,
                    *head,
                    broker._should_do_maintenance("enqueue"),
                    max_unpack,
                    message_id,
                    body,
                ]
                dispatch(keys=keys, args=args, client=pipe)
            # Idle consumers wait on this channel (worker.wakeup): they fetch now, not at
            # their next poll. In the same round trip as the messages.
            pipe.publish(wake_channel(broker.namespace, queue), b"")
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
        if self._held_back:
            # Due events wait for room: finishing workers send no NOTIFY, so look again
            # soon (a bounded count), not after a whole poll interval.
            timeout = min(BACK_PRESSURE_POLL_SECONDS, timeout)
        due = self._connection().execute(self._q["next_due_in"], {"now": None}).fetchone()
        if due is not None and due[0] is not None:
            timeout = max(0.0, min(timeout, float(due[0])))
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
            self._conn = connect(self.settings, index_walks=True)
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


@contextlib.contextmanager
def _pipelined_transaction(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """A transaction on an autocommit connection whose BEGIN goes with its first query and
    whose COMMIT with its last statement: a claim costs three round trips (BEGIN + room,
    pick, mark + COMMIT), not five, and every confirm waits for them. (psycopg's
    ``transaction()`` inside a ``pipeline()`` syncs at BEGIN and twice at the end.)
    Rolled back on any error, so the connection is left outside a transaction."""
    try:
        with conn.pipeline():
            conn.execute("BEGIN")
            yield
            conn.execute("COMMIT")
    except BaseException:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
        raise


def _hint(row: tuple[Any, ...]) -> dict[str, Any]:
    """A claimed verify event's document fields, as its message carries them."""
    _id, _topic, document_id, _attempt, trace_id, key, size, sha256, ctype, *_ = row
    return {
        "document_id": document_id,
        "trace_id": trace_id,
        "object_key": key,
        "declared_size": size,
        "sha256": sha256,
        "content_type": ctype,
    }
