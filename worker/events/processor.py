"""Handle an outbox event by id: read it with its document, pick its topic's handler, and
record how it ended. A failure of the work is recorded on the event (retry with backoff,
or dead), never raised; so is an attempt that Dramatiq's TimeLimit interrupted."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from dramatiq.middleware.time_limit import TimeLimitExceeded
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from outbox.constants import EventStatus, Topic
from outbox.logs import log_context
from outbox.settings import Settings
from worker.events import expire, lifecycle, purge, verify
from worker.events.context import Context
from worker.events.lifecycle import Outcome
from worker.pool import Row
from worker.storage import Storage

log = logging.getLogger("s3outbox.worker")

Handler = Callable[[Context, Row, Row | None, int, datetime | None], Outcome]
HANDLERS: dict[str, Handler] = {
    Topic.VERIFY: verify.handle,
    Topic.EXPIRE: expire.handle,
    Topic.PURGE: purge.handle,
}


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

        Never raises for a failure of the work itself, nor when Dramatiq's TimeLimit
        interrupts it: the failure is recorded on the event (retry with backoff, or dead).
        Raises only when even that cannot be written (the
        database is down); the event then stays dispatched and is sent again later.
        """
        started = time.monotonic()
        try:
            return self._process(event_id, attempt, now, hint, started)
        except TimeLimitExceeded:
            # Dramatiq's TimeLimit raised in this thread (wherever it was: a slow storage
            # call, most likely) after ``actor_time_limit_seconds``. It is a BaseException,
            # so no handler below caught it: the attempt failed, and it is recorded like any
            # other failure (retried after a backoff, dead after max_failures) instead of
            # leaving the event dispatched until a rescue finds it.
            return self._interrupted(event_id, attempt, now, started)

    def _process(
        self,
        event_id: int,
        attempt: int,
        now: datetime | None,
        hint: Mapping[str, Any] | None,
        started: float,
    ) -> Outcome:
        if hint is not None and verify.handle_hinted(self.context, event_id, hint, now, started):
            return Outcome.DONE
        event, doc = self._read_event_and_document(event_id)
        if event is None or event["status"] in (EventStatus.DONE, EventStatus.DEAD):
            return Outcome.SKIPPED
        topic = event["topic"]
        with log_context(trace_id=event["trace_id"], document_id=event["document_id"]):
            try:
                outcome = HANDLERS[topic](self.context, event, doc, attempt, now)
            except Exception as exc:
                log.warning(
                    "event %s (%s) attempt %s failed: %s",
                    event_id,
                    topic,
                    attempt,
                    exc,
                    extra={"event_id": event_id, "topic": topic},
                )
                outcome = lifecycle.fail(self.pool, self.settings, event, attempt, exc, now)
            lifecycle.record(event_id, topic, outcome, started)
        return outcome

    def _interrupted(
        self, event_id: int, attempt: int, now: datetime | None, started: float
    ) -> Outcome:
        """Record attempt ``attempt`` of an event as failed: its time limit interrupted it.
        A compare-and-set, so an event that finished first stays as it is."""
        event, _doc = self._read_event_and_document(event_id)
        if event is None or event["status"] in (EventStatus.DONE, EventStatus.DEAD):
            return Outcome.SKIPPED
        topic = event["topic"]
        limit = self.settings.actor_time_limit_seconds
        error = TimeLimitExceeded(
            f"the attempt ran longer than actor_time_limit_seconds ({limit:g})"
        )
        with log_context(trace_id=event["trace_id"], document_id=event["document_id"]):
            log.warning(
                "event %s (%s) attempt %s interrupted: %s",
                event_id,
                topic,
                attempt,
                error,
                extra={"event_id": event_id, "topic": topic},
            )
            outcome = lifecycle.fail(self.pool, self.settings, event, attempt, error, now)
            lifecycle.record(event_id, topic, outcome, started)
        return outcome

    def process_many(self, items: list[list[Any]], *, now: datetime | None = None) -> list[Outcome]:
        """Handle the events of a packed message, ``[event_id, attempt, hint]`` each, one by
        one (each in its own transaction, as if each had its own message). A malformed item
        is skipped with a warning: its event stays dispatched and is sent again later."""
        outcomes: list[Outcome] = []
        for item in items:
            try:
                event_id, attempt, hint = item
                event_id, attempt = int(event_id), int(attempt)
            except (TypeError, ValueError):
                log.warning("skipping a malformed item of a packed message: %r", item)
                continue
            outcomes.append(
                self.process(
                    event_id, attempt, now=now, hint=hint if isinstance(hint, dict) else None
                )
            )
        return outcomes

    def _read_event_and_document(self, event_id: int) -> tuple[Row | None, Row | None]:
        """The event and its document (no locks), both queries in one pipeline: one round
        trip and one pool checkout."""
        q = lifecycle.sql()
        with self.pool.connection() as conn:
            with conn.pipeline():
                events = conn.cursor(row_factory=dict_row).execute(
                    q["read_event"], {"id": event_id}
                )
                docs = conn.cursor(row_factory=dict_row).execute(
                    q["read_document_of_event"], {"id": event_id}
                )
            event: Row | None = events.fetchone()
            doc: Row | None = docs.fetchone()
        return event, doc
