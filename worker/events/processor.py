"""Handle the events of one message: start each attempt, pick the topic's handler, and record
how it ended. A failure of the work is recorded on the event (retry with backoff, or dead),
and so is an attempt that Dramatiq's TimeLimit interrupted; storage being unavailable only
postpones it; none of them is raised."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import psycopg
from dramatiq.middleware.time_limit import TimeLimitExceeded
from psycopg_pool import ConnectionPool

from outbox.constants import EventStatus, Topic
from outbox.logs import log_context
from outbox.settings import Settings
from worker import metrics
from worker.events import (
    dedup,
    expire,
    lifecycle,
    multipart_create,
    purge,
    verify,
    verify_packed,
)
from worker.events.context import Context
from worker.events.lifecycle import Outcome
from worker.pool import Row, read_one
from worker.storage import Storage, unavailable

log = logging.getLogger("s3outbox.worker")

Handler = Callable[[Context, Row, Row | None, int, datetime | None], Outcome]
HANDLERS: dict[str, Handler] = {
    Topic.VERIFY: verify.handle,
    Topic.EXPIRE: expire.handle,
    Topic.PURGE: purge.handle,
    Topic.MULTIPART_CREATE: multipart_create.handle,
    Topic.DEDUP: dedup.handle,
}
#: Timeouts of our own statements (db_lock_timeout_seconds, db_statement_timeout_seconds):
#: the attempt failed and is retried; unlike a lost connection, they can be recorded.
_TIMEOUTS = (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled)


def _verifying(event: Row | None) -> bool:
    """An event whose attempt started and that is a verify still to do (not dead)."""
    return (
        event is not None and event["topic"] == Topic.VERIFY and event["status"] != EventStatus.DEAD
    )


class EventProcessor:
    """Handles outbox events by id. One per process; thread-safe."""

    def __init__(self, settings: Settings, pool: ConnectionPool[Any], storage: Storage) -> None:
        self.settings = settings
        self.pool = pool
        self.storage = storage
        self.context = Context(settings, pool, storage)

    def process(
        self,
        event_id: int,
        attempt: int,
        *,
        now: datetime | None = None,
        hint: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """Handle one event. ``attempt`` is the dispatch number the message carries; ``hint``
        the document's declared fields a verify message carries (``verify.handle_hinted``).

        Never raises for a failure of the work itself. Raises only when the database cannot
        be reached to start the attempt or record its outcome; the event is then sent again
        later (see ``maintenance.rescue_stale``).
        """
        started = time.monotonic()
        events = lifecycle.start(self.pool, self.settings, [(event_id, attempt)], now)
        return self.handle_started(events.get(event_id), event_id, attempt, now, hint, started)

    def process_many(self, items: list[list[Any]], *, now: datetime | None = None) -> list[Outcome]:
        """Handle the events of a packed message, ``[event_id, attempt, hint]`` each: their
        attempts start in one statement; the verifies whose object matches are accepted
        together in one more (``verify_packed``); every other event is then handled alone, in
        its own transaction, as if it had its own message. A malformed item is skipped with
        a warning: its event stays dispatched and is sent again later."""
        started = time.monotonic()
        parsed: list[tuple[int, int, Mapping[str, Any] | None]] = []
        for item in items:
            try:
                event_id, attempt, hint = item
                parsed.append(
                    (int(event_id), int(attempt), hint if isinstance(hint, dict) else None)
                )
            except (TypeError, ValueError):
                log.warning("skipping a malformed item of a packed message: %r", item)
        events = lifecycle.start(self.pool, self.settings, [(e, a) for e, a, _ in parsed], now)
        packed = [
            (event_id, hint)
            for event_id, _, hint in parsed
            if hint is not None and _verifying(events.get(event_id))
        ]
        accepted: set[int] = set()
        if len(packed) > 1:
            try:
                accepted = verify_packed.accept_packed(self.context, packed, now)
            except TimeLimitExceeded:
                # Interrupted before it knew: each event takes its own path, which finds
                # any the statement accepted done (compare-and-set) and skips it.
                accepted = set()
        outcomes = []
        for event_id, attempt, hint in parsed:
            if event_id in accepted:
                accepted.discard(event_id)  # an id twice in the message: done once
                lifecycle.record(event_id, Topic.VERIFY, Outcome.DONE, started)
                outcomes.append(Outcome.DONE)
                continue
            if len(packed) > 1:
                hint = None  # its fast path was tried: the general path
            outcomes.append(
                self.handle_started(events.get(event_id), event_id, attempt, now, hint, started)
            )
        return outcomes

    def handle_started(
        self,
        event: Row | None,
        event_id: int,
        attempt: int,
        now: datetime | None,
        hint: Mapping[str, Any] | None,
        started: float,
    ) -> Outcome:
        """Handle an event whose attempt ``lifecycle.start`` began (``event`` is the row it
        returned; None: it did not start). ``started``: a ``time.monotonic()`` reading."""
        if event is None:  # stale, repeated, or already finished: nothing to do
            return Outcome.SKIPPED
        topic = event["topic"]
        with log_context(trace_id=event["trace_id"], document_id=event["document_id"]):
            if event["status"] == EventStatus.DEAD:
                metrics.EVENTS_DEAD.labels(topic).inc()
                log.error("event %s is dead: %s", event_id, event["last_error"])
                lifecycle.record(event_id, topic, Outcome.DEAD, started)
                return Outcome.DEAD
            try:
                outcome = self._run(event, attempt, now, hint)
            except Exception as exc:
                outcome = self._failed(event, attempt, exc, now)
            except TimeLimitExceeded:
                # Dramatiq's TimeLimit raised in this thread (a slow storage call, most
                # likely) after actor_time_limit_seconds. A BaseException, so nothing above
                # caught it: the attempt failed, recorded like any other failure instead of
                # leaving the event running until a rescue finds it.
                outcome = self._interrupted(event, attempt, now)
            lifecycle.record(event_id, topic, outcome, started)
        return outcome

    def _interrupted(self, event: Row, attempt: int, now: datetime | None) -> Outcome:
        limit = self.settings.actor_time_limit_seconds
        error = TimeLimitExceeded(
            f"the attempt ran longer than actor_time_limit_seconds ({limit:g})"
        )
        log.warning(
            "event %s (%s) attempt %s interrupted: %s",
            event["id"],
            event["topic"],
            attempt,
            error,
            extra={"event_id": event["id"], "topic": event["topic"]},
        )
        return lifecycle.fail(self.pool, self.settings, event, attempt, error, now)

    def _run(
        self, event: Row, attempt: int, now: datetime | None, hint: Mapping[str, Any] | None
    ) -> Outcome:
        topic = event["topic"]
        if (
            hint is not None
            and topic == Topic.VERIFY
            and verify.handle_hinted(self.context, event["id"], hint, now)
        ):
            return Outcome.DONE
        doc = read_one(self.pool, lifecycle.sql()["read_document"], {"id": event["document_id"]})
        return HANDLERS[topic](self.context, event, doc, attempt, now)

    def _failed(self, event: Row, attempt: int, exc: Exception, now: datetime | None) -> Outcome:
        event_id, topic = event["id"], event["topic"]
        if isinstance(exc, psycopg.OperationalError) and not isinstance(exc, _TIMEOUTS):
            # The database went away: nothing can be recorded now. The event stays
            # dispatched and is sent again once a rescue finds its message gone.
            raise exc
        reason = unavailable(exc)
        if reason is not None:
            return lifecycle.postpone(self.pool, self.settings, event, attempt, reason, exc, now)
        log.warning(
            "event %s (%s) attempt %s failed: %s",
            event_id,
            topic,
            attempt,
            exc,
            extra={"event_id": event_id, "topic": topic},
        )
        return lifecycle.fail(self.pool, self.settings, event, attempt, exc, now)
