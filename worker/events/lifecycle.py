"""An event's own life: lock it, then complete, snooze or fail it (River's JobCompleteTx).

Every change is a compare-and-set: ``complete`` only finishes an unfinished event, and
``snooze``/``fail`` only apply to the attempt that is current (``attempts`` = the number the
message carries), so a repeated, stale or late handler changes nothing.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any

from psycopg import ClientCursor
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from outbox import queries
from outbox.constants import EventStatus
from outbox.logs import redact
from outbox.settings import Settings
from worker import metrics
from worker.pool import Cursor, Row, transaction

log = logging.getLogger("s3outbox.worker")


@cache
def sql() -> dict[str, str]:
    """The named queries of event handling (``worker/events/queries.sql``)."""
    return queries.load("worker.events")


class Outcome(StrEnum):
    """How handling one event ended."""

    DONE = "done"  # the work is done and the event is marked done
    SKIPPED = "skipped"  # the event was already finished: nothing changed
    SNOOZED = "snoozed"  # the object is not visible yet: try again later
    POSTPONED = "postponed"  # storage unavailable (an outage, a refused request): try later
    RETRY = "retry"  # the attempt failed; the event will be retried after a backoff
    DEAD = "dead"  # the attempt failed and it was the last one
    STALE = "stale"  # another attempt owns the event now; this one changed nothing


@dataclass(frozen=True)
class Locked:
    """An event locked for its final transaction, with the clock it decides by and its
    document (locked too; None when the row is gone)."""

    clock: datetime
    document: Row | None
    #: When an attempt first found the object (or the upload) missing; None before.
    missing_since: datetime | None = None

    def verify_deadline(self, settings: Settings, confirmed_at: datetime) -> datetime:
        """Until when a missing object is retried: ``verify_deadline_seconds`` after the
        first attempt that found it missing (this one, when none did before), never before
        the confirm's. From the first look, not from the confirm: a backlog or an outage
        that held the first attempt back must not use up the store's time to show it."""
        start = max(confirmed_at, self.missing_since or self.clock)
        return start + timedelta(seconds=settings.verify_deadline_seconds)


def backoff_seconds(settings: Settings, failures: int) -> float:
    """Exponential backoff with full jitter, capped at ``retry_max_seconds``."""
    ceiling = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** max(failures, 0))
    return random.uniform(ceiling / 2, ceiling)


#: Outcomes logged at DEBUG: the usual end of an event. A log line costs about 80 us of
#: CPU (two passes of secret redaction, formatting, a locked write), a tenth of a verify's
#: whole budget; the metrics count these, and every other outcome is logged at INFO.
_QUIET = frozenset({Outcome.DONE, Outcome.SKIPPED})


def record(event_id: int, topic: str, outcome: Outcome, started: float) -> None:
    """How handling an event ended: its duration metric and one log line (DEBUG for done
    and skipped, INFO otherwise)."""
    metrics.ACTOR_DURATION.labels(topic, outcome.value).observe(time.monotonic() - started)
    level = logging.DEBUG if outcome in _QUIET else logging.INFO
    if log.isEnabledFor(level):
        log.log(
            level,
            "event %s (%s) %s",
            event_id,
            topic,
            outcome.value,
            extra={"event_id": event_id, "topic": topic},
        )


def start(
    pool: ConnectionPool[Any],
    settings: Settings,
    attempts: list[tuple[int, int]],
    now: datetime | None,
) -> dict[int, Row]:
    """Begin the attempts ``(event id, attempt)`` of one message: the event rows of those
    that may start (current attempt, unfinished), by id. An event whose last start's worker
    died is charged a failure first, and comes back ``dead`` when that was its last. A
    missing id: a stale or repeated message, or a finished event.

    Two statements in one transaction and one round trip (a simple query of both, bound on
    the client, runs as one implicit transaction; psycopg's pipeline with a transaction
    block took five): the events are locked first, and only then does the compare-and-set
    read them, with a snapshot taken after the lock. A message can reach a worker while a
    transaction that changes its event (a claim, a rescue) has not committed yet; a single
    UPDATE would judge the row by its statement snapshot (still pending, the previous
    attempt), skip it without waiting for the lock, and drop the message. (Each statement
    of a simple query takes its own snapshot, as separate ones would.)
    """
    if not attempts:
        return {}
    ids = [event_id for event_id, _ in attempts]
    params = {
        "ids": ids,
        "attempts": [attempt for _, attempt in attempts],
        "max_failures": settings.max_failures,
        "stale_after": settings.redispatch_after_seconds,
        "now": now,
    }
    with pool.connection() as conn, ClientCursor(conn, row_factory=dict_row) as cur:
        cur.execute(_start_sql(), params)
        cur.nextset()  # past the locks, to the started rows
        rows = cur.fetchall()
    return {row["id"]: row for row in rows}


@cache
def _start_sql() -> str:
    """``lock_events`` then ``start_attempts``, one query string (see ``start``)."""
    q = sql()
    return queries.one_query(q["lock_events"], q["start_attempts"])


def lock(cur: Cursor, event: Row, now: datetime | None) -> Locked | None:
    """Lock the event, the owner's quota row, then the document: always in that order, the
    library's too (quota before document), so workers and web requests cannot deadlock.
    None when the event was finished meanwhile: the caller must change nothing."""
    q = sql()
    locked = cur.execute(q["lock_event"], {"id": event["id"], "now": now}).fetchone()
    if locked is None or locked["status"] not in (EventStatus.PENDING, EventStatus.DISPATCHED):
        return None
    cur.execute(q["lock_quota_of_document"], {"id": event["document_id"]})
    doc = cur.execute(q["lock_document"], {"id": event["document_id"]}).fetchone()
    return Locked(locked["clock"], doc, locked["missing_since"])


def complete(cur: Cursor, event: Row, now: datetime | None) -> Outcome:
    """Mark the event done, in the caller's transaction (with the writes it completes)."""
    done = cur.execute(sql()["complete_event"], {"id": event["id"], "now": now}).fetchone()
    if done is None:
        return Outcome.SKIPPED
    metrics.EVENTS_DONE.labels(event["topic"]).inc()
    return Outcome.DONE


def snooze(
    cur: Cursor,
    event: Row,
    attempt: int,
    delay: float,
    now: datetime | None,
    why: str,
    *,
    missing: bool = False,
) -> Outcome:
    """Not a failure (the object is not visible yet): pending again after ``delay``. With
    ``missing``, the first such attempt's time is kept (:meth:`Locked.verify_deadline`)."""
    params = {"id": event["id"], "attempt": attempt, "delay": delay, "now": now, "error": why}
    row = cur.execute(sql()["snooze_event"], {**params, "missing": missing}).fetchone()
    if row is None:
        return Outcome.STALE
    metrics.EVENTS_SNOOZED.labels(event["topic"]).inc()
    return Outcome.SNOOZED


def postpone(
    pool: ConnectionPool[Any],
    settings: Settings,
    event: Row,
    attempt: int,
    reason: str,
    exc: BaseException,
    now: datetime | None,
) -> Outcome:
    """Storage was unavailable (down, throttling, refusing our credentials): not a failure of
    this event, so it never counts toward ``dead`` however long the outage lasts. Pending
    again after a backoff that grows with the attempts (up to ``retry_max_seconds``)."""
    error = redact(f"storage unavailable ({reason}): {type(exc).__name__}: {exc}")[:2000]
    delay = backoff_seconds(settings, min(attempt, 32))
    with transaction(pool) as cur:
        row = cur.execute(
            sql()["snooze_event"],
            {
                "id": event["id"],
                "attempt": attempt,
                "delay": delay,
                "now": now,
                "error": error,
                "missing": False,
            },
        ).fetchone()
    if row is None:
        return Outcome.STALE
    metrics.EVENTS_POSTPONED.labels(event["topic"], reason).inc()
    log.warning("event %s postponed %.1fs: %s", event["id"], delay, error)
    return Outcome.POSTPONED


def fail(
    pool: ConnectionPool[Any],
    settings: Settings,
    event: Row,
    attempt: int,
    exc: BaseException,
    now: datetime | None,
) -> Outcome:
    """Record a failed attempt in its own transaction: pending again after a backoff, or
    dead after ``max_failures``. The error text is redacted (no secrets in ``last_error``)."""
    error = redact(f"{type(exc).__name__}: {exc}")[:2000]
    delay = backoff_seconds(settings, event["failures"])
    with transaction(pool) as cur:
        row = cur.execute(
            sql()["fail_event"],
            {
                "id": event["id"],
                "attempt": attempt,
                "delay": delay,
                "error": error,
                "max_failures": settings.max_failures,
                "now": now,
            },
        ).fetchone()
    if row is None:
        return Outcome.STALE
    if row["status"] == EventStatus.DEAD:
        metrics.EVENTS_DEAD.labels(event["topic"]).inc()
        log.error("event %s is dead after %s failures: %s", event["id"], row["failures"], error)
        return Outcome.DEAD
    metrics.EVENTS_RETRIED.labels(event["topic"]).inc()
    return Outcome.RETRY
