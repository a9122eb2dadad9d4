"""The event manager: what each actor does with one outbox event.

Every handler follows the same shape:
1. read the event and its document without locks; stop if there is nothing to do;
2. talk to storage (HeadObject, DeleteObject) outside any transaction;
3. in ONE transaction: lock the event, lock the document, re-check both (compare-and-set),
   make the document/quota change and mark the event done (River's JobCompleteTx).

So an event handled twice, late, or out of order has the effect of handling it once
(invariant 6), and a crash at any point leaves the event pending or dispatched, to be
handled again (invariant 5).
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from outbox import queries
from outbox.constants import LIVE_STATUSES, DocumentStatus, EventStatus, Topic
from outbox.logs import log_context, redact
from outbox.settings import Settings
from worker import metrics
from worker.storage import ObjectInfo, Storage
from worker.verification import Declared, mismatch

log = logging.getLogger("s3outbox.worker")
Row = dict[str, Any]
Cursor = psycopg.Cursor[Row]


class _Unread(Enum):
    UNREAD = "unread"


UNREAD = _Unread.UNREAD
# A document read together with its event (None: no such document), or UNREAD.
Prefetched = Row | None | _Unread


class Outcome(StrEnum):
    """How handling one event ended."""

    DONE = "done"  # the work is done and the event is marked done
    SKIPPED = "skipped"  # the event was already finished: nothing changed
    SNOOZED = "snoozed"  # the object is not visible yet: try again later
    RETRY = "retry"  # the attempt failed; the event will be retried after a backoff
    DEAD = "dead"  # the attempt failed and it was the last one
    STALE = "stale"  # another attempt owns the event now; this one changed nothing


@dataclass(frozen=True)
class Observation:
    """What storage showed of a document's object, and whether it matches."""

    info: ObjectInfo | None
    problem: str | None

    @property
    def missing(self) -> bool:
        return self.info is None

    @property
    def matches(self) -> bool:
        return self.info is not None and self.problem is None


def backoff_seconds(settings: Settings, failures: int) -> float:
    """Exponential backoff with full jitter, capped at ``retry_max_seconds``."""
    ceiling = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** max(failures, 0))
    return random.uniform(ceiling / 2, ceiling)


def _record(event_id: int, topic: str, outcome: Outcome, started: float) -> None:
    """How handling an event ended: its duration metric and one log line."""
    metrics.ACTOR_DURATION.labels(topic, outcome.value).observe(time.monotonic() - started)
    log.info(
        "event %s (%s) %s",
        event_id,
        topic,
        outcome.value,
        extra={"event_id": event_id, "topic": topic},
    )


def check_connection(conn: psycopg.Connection[Any]) -> None:
    """The pool's check on checkout, without a round trip while the connection is quiet.

    An idle connection has nothing to read. When the server goes away (restart, backend
    terminated) it sends a FATAL error and closes the socket, so the socket turns readable:
    only then is the full check done (one round trip, which raises and so makes the pool
    reconnect). A quiet socket costs one poll() instead of one round trip per checkout,
    which was 23% of a worker thread's time under a backlog (two checkouts per event).
    """
    if conn.closed or conn.pgconn.status != psycopg.pq.ConnStatus.OK:
        raise psycopg.OperationalError("connection is closed")
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    if poller.poll(0):
        ConnectionPool.check_connection(conn)


def make_pool(settings: Settings, max_size: int | None = None) -> ConnectionPool[Any]:
    """A connection pool whose connections are checked on checkout, so a PostgreSQL restart
    costs a reconnect, not a failed event."""
    return ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=max_size or settings.worker_pool_size,
        kwargs={"autocommit": True},
        check=check_connection,
        open=True,
        name="s3outbox-worker",
    )


class EventProcessor:
    """Handles outbox events by id. One per process; thread-safe."""

    def __init__(self, settings: Settings, pool: ConnectionPool[Any], storage: Storage) -> None:
        self.settings = settings
        self.pool = pool
        self.storage = storage
        self._q = queries.load("worker")
        self._handlers: dict[str, Callable[[Row, Prefetched, int, datetime | None], Outcome]] = {
            Topic.VERIFY: self._verify,
            Topic.EXPIRE: self._expire,
            Topic.PURGE: self._purge,
        }

    # -- entry point ---------------------------------------------------------------------

    def process(
        self,
        event_id: int,
        attempt: int,
        *,
        now: datetime | None = None,
        hint: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """Handle one event. ``attempt`` is the dispatch number the message carries; ``hint``
        the document's declared fields a verify message carries (see ``_verify_hinted``).

        Never raises for a failure of the work itself: the failure is recorded on the event
        (retry with backoff, or dead). Raises only when even that cannot be written (the
        database is down); the event then stays dispatched and is sent again later.
        """
        started = time.monotonic()
        if hint is not None and self._verify_hinted(event_id, hint, now, started):
            return Outcome.DONE
        event, doc = self._read_event_and_document(event_id)
        if event is None or event["status"] in (EventStatus.DONE, EventStatus.DEAD):
            return Outcome.SKIPPED
        topic = event["topic"]
        with log_context(trace_id=event["trace_id"], document_id=event["document_id"]):
            try:
                outcome = self._handlers[topic](event, doc, attempt, now)
            except Exception as exc:
                log.warning(
                    "event %s (%s) attempt %s failed: %s",
                    event_id,
                    topic,
                    attempt,
                    exc,
                    extra={"event_id": event_id, "topic": topic},
                )
                outcome = self._fail(event, attempt, exc, now)
            _record(event_id, topic, outcome, started)
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

    def _verify_hinted(
        self, event_id: int, hint: Mapping[str, Any], now: datetime | None, started: float
    ) -> bool:
        """The fast verify: HeadObject first, with the declared fields the relay put in the
        message, then one round trip that accepts the document only if the database still
        declares exactly those fields (``accept_verified``). Saves the read before the HEAD.

        True when the document was made available and the event completed. False in every
        other case (a malformed or stale hint, a mismatch, a missing object, a storage
        error, a finished event): nothing was changed and the caller handles the event the
        general way, from what the database says.
        """
        try:
            declared = {
                "object_key": str(hint["object_key"]),
                "declared_size": int(hint["declared_size"]),
                "sha256": str(hint["sha256"]),
                "content_type": str(hint["content_type"]),
            }
            document_id = str(hint["document_id"])
            trace_id = hint.get("trace_id")
        except (KeyError, TypeError, ValueError):
            return False
        with log_context(trace_id=trace_id, document_id=document_id):
            try:
                observation = self._observe(declared)
                accepted = observation.matches and self._accept_verified(
                    {"id": event_id, "topic": Topic.VERIFY.value, "document_id": document_id},
                    declared,
                    observation,
                    now,
                )
            except Exception as exc:
                log.debug("event %s: fast verify gave way to the general path: %s", event_id, exc)
                return False
            if accepted:
                _record(event_id, Topic.VERIFY.value, Outcome.DONE, started)
            return accepted

    # -- topics --------------------------------------------------------------------------

    def _verify(
        self, event: Row, prefetched: Prefetched, attempt: int, now: datetime | None
    ) -> Outcome:
        """uploaded -> available when the object matches and the quota takes it, else
        rejected (reservation released, purge queued). A missing object is retried with
        backoff until ``verify_deadline_seconds`` after the confirm."""
        observation = self._observe_if(event, prefetched, DocumentStatus.UPLOADED)
        if (
            observation is not None
            and observation.matches
            and isinstance(prefetched, dict)
            and self._try_accept_verified(event, prefetched, observation, now)
        ):
            return Outcome.DONE
        with self._transaction() as cur:
            locked = self._lock(cur, event, now)
            if locked is None:
                return Outcome.SKIPPED
            clock, doc = locked
            if doc is None or doc["status"] != DocumentStatus.UPLOADED or observation is None:
                # Deleted, already verified, or never confirmed: nothing left to do.
                return self._complete(cur, event, now)
            if observation.missing:
                deadline = doc["confirmed_at"] + timedelta(
                    seconds=self.settings.verify_deadline_seconds
                )
                remaining = (deadline - clock).total_seconds()
                if remaining > 0:
                    delay = min(backoff_seconds(self.settings, attempt - 1), remaining)
                    return self._snooze(cur, event, attempt, delay, now)
                self._refuse(
                    cur,
                    doc,
                    DocumentStatus.REJECTED,
                    "object not found in storage before the verification deadline",
                    None,
                    now,
                )
            elif observation.matches:
                self._accept(cur, doc, observation, DocumentStatus.REJECTED, now)
            else:
                self._refuse(
                    cur, doc, DocumentStatus.REJECTED, observation.problem, observation.info, now
                )
            return self._complete(cur, event, now)

    def _expire(
        self, event: Row, prefetched: Prefetched, attempt: int, now: datetime | None
    ) -> Outcome:
        """A pending upload whose URL expired: verify once. A matching object means only the
        confirm was lost -> available; anything else -> expired, blob purged if any."""
        observation = self._observe_if(event, prefetched, DocumentStatus.PENDING)
        with self._transaction() as cur:
            locked = self._lock(cur, event, now)
            if locked is None:
                return Outcome.SKIPPED
            clock, doc = locked
            grace = timedelta(seconds=self.settings.purge_grace_seconds)
            if (
                doc is None
                or doc["status"] != DocumentStatus.PENDING
                or observation is None
                # A fresh URL was issued for this upload since the sweeper looked.
                or doc["upload_expires_at"] + grace > clock
            ):
                return self._complete(cur, event, now)
            if observation.matches:
                self._accept(cur, doc, observation, DocumentStatus.EXPIRED, now)
            else:
                reason = observation.problem or "upload URL expired and no object was uploaded"
                self._refuse(cur, doc, DocumentStatus.EXPIRED, reason, observation.info, now)
            return self._complete(cur, event, now)

    def _purge(
        self, event: Row, prefetched: Prefetched, attempt: int, now: datetime | None
    ) -> Outcome:
        """Delete the blob of a document that is no longer live; then deleting -> deleted and
        its charge released. Never touches a live document's object (invariant 3)."""
        if event.get("object_key") is not None:
            return self._purge_key(event, now)
        doc = self._document(event, prefetched)
        deleted_blob = False
        # A document never returns to a live state, so this check cannot go stale.
        if doc is not None and doc["status"] not in LIVE_STATUSES:
            self.storage.delete(doc["object_key"])
            deleted_blob = True
        with self._transaction() as cur:
            locked = self._lock(cur, event, now)
            if locked is None:
                return Outcome.SKIPPED
            clock, doc = locked
            if doc is None or not deleted_blob or doc["status"] in LIVE_STATUSES:
                return self._complete(cur, event, now)
            if doc["status"] == DocumentStatus.DELETING:
                cur.execute(self._q["mark_deleted"], {"id": doc["id"], "now": now})
                self._release(
                    cur, doc, charged=doc["charged_bytes"], reserved=doc["reserved_bytes"], now=now
                )
                metrics.DOCUMENT_OUTCOMES.labels(DocumentStatus.DELETED.value).inc()
            else:
                cur.execute(self._q["mark_purged"], {"id": doc["id"], "now": now})
            # The upload URL may still be valid: a late PUT could recreate the object.
            # Purge once more after it expires (invariant 7).
            recheck_at = doc["upload_expires_at"] + timedelta(
                seconds=self.settings.purge_grace_seconds
            )
            if recheck_at > clock:
                cur.execute(
                    self._q["insert_event"],
                    {
                        "topic": Topic.PURGE.value,
                        "document_id": doc["id"],
                        "trace_id": doc["trace_id"],
                        "available_at": recheck_at,
                        "now": now,
                    },
                )
            return self._complete(cur, event, now)

    def _purge_key(self, event: Row, now: datetime | None) -> Outcome:
        """A purge that names an object key (queued by ``s3-outbox reconcile`` for an orphan
        object): delete the key only when no live document owns it (invariant 3). No
        document row changes."""
        key: str = event["object_key"]
        if not key.startswith(self.settings.key_prefix):
            raise ValueError(f"refusing to purge {key!r}: not under key_prefix")
        with self.pool.connection() as conn:
            owner = conn.execute(self._q["live_document_by_key"], {"key": key}).fetchone()
        if owner is None:
            self.storage.delete(key)
        else:
            log.warning("orphan purge of %s skipped: live document %s owns it", key, owner[0])
        with self._transaction() as cur:
            if self._lock(cur, event, now) is None:
                return Outcome.SKIPPED
            return self._complete(cur, event, now)

    # -- shared steps --------------------------------------------------------------------

    def _observe_if(
        self, event: Row, prefetched: Prefetched, status: DocumentStatus
    ) -> Observation | None:
        """Look at the object, outside any transaction, if the document is in ``status``."""
        doc = self._document(event, prefetched)
        if doc is None or doc["status"] != status:
            return None
        return self._observe(doc)

    def _observe(self, doc: Row) -> Observation:
        info = self.storage.head(doc["object_key"])
        if info is None:
            return Observation(None, None)
        computed = None
        if (
            info.sha256_b64 is None
            and self.settings.verify_full_read_fallback
            and info.size == doc["declared_size"]
        ):
            computed = self.storage.sha256_hex(doc["object_key"], doc["declared_size"])
        declared = Declared(doc["declared_size"], doc["sha256"], doc["content_type"])
        return Observation(info, mismatch(declared, info, computed))

    def _accept(
        self,
        cur: Cursor,
        doc: Row,
        observation: Observation,
        refused: DocumentStatus,
        now: datetime | None,
    ) -> None:
        """Charge the quota (reservation -> used) and make the document available, or refuse
        it when the quota cannot take it."""
        assert observation.info is not None
        size = observation.info.size
        charged = cur.execute(
            self._q["charge_quota"],
            {
                "owner_id": doc["owner_id"],
                "charge": size,
                "release": doc["reserved_bytes"],
                "now": now,
            },
        ).fetchone()
        if charged is None:
            self._refuse(cur, doc, refused, "over quota", observation.info, now)
            return
        cur.execute(
            self._q["mark_available"],
            {
                "id": doc["id"],
                "expected": doc["status"],
                "verified_size": size,
                "charge": size,
                "now": now,
            },
        )
        metrics.DOCUMENT_OUTCOMES.labels(DocumentStatus.AVAILABLE.value).inc()

    def _try_accept_verified(
        self, event: Row, declared: Row, observation: Observation, now: datetime | None
    ) -> bool:
        """``_accept_verified``, or False when it fails (e.g. a database not migrated yet to
        the schema with ``s3outbox.accept_verified``): the general path then does the same
        work in several statements, and records a failure only if that fails too."""
        try:
            return self._accept_verified(event, declared, observation, now)
        except psycopg.Error as exc:
            log.warning("one-statement accept failed, taking the general path: %s", exc)
            return False

    def _accept_verified(
        self, event: Row, declared: Row, observation: Observation, now: datetime | None
    ) -> bool:
        """The usual verify outcome (object matches, quota takes it) in ONE round trip.

        One statement in its own transaction (``s3outbox.accept_verified``): the locks in
        the order of every path (event, quota, document), the compare-and-set against
        ``declared``, the charge, ``available`` and the event done. The general path costs
        eight round trips; on a loaded machine each one is a wait for the scheduler and the
        GIL, which is what limits a worker process. False when the accept did not apply
        (already handled, deleted, another object, over quota): nothing changed and the
        caller takes the general path.
        """
        assert observation.info is not None
        with self.pool.connection() as conn:
            row = conn.execute(
                self._q["accept_verified"],
                {
                    "event_id": event["id"],
                    "document_id": event["document_id"],
                    "object_key": declared["object_key"],
                    "declared_size": declared["declared_size"],
                    "sha256": declared["sha256"],
                    "content_type": declared["content_type"],
                    "size": observation.info.size,
                    "now": now,
                },
            ).fetchone()
        if row is None or row[0] is None:
            return False
        metrics.DOCUMENT_OUTCOMES.labels(DocumentStatus.AVAILABLE.value).inc()
        metrics.EVENTS_DONE.labels(event["topic"]).inc()
        return True

    def _refuse(
        self,
        cur: Cursor,
        doc: Row,
        status: DocumentStatus,
        reason: str | None,
        info: ObjectInfo | None,
        now: datetime | None,
    ) -> None:
        """-> rejected/expired with a reason; reservation released; purge queued."""
        cur.execute(
            self._q["mark_refused"],
            {
                "id": doc["id"],
                "expected": doc["status"],
                "status": status.value,
                "reason": reason,
                "verified_size": info.size if info else None,
                "now": now,
            },
        )
        self._release(cur, doc, charged=0, reserved=doc["reserved_bytes"], now=now)
        cur.execute(
            self._q["insert_event"],
            {
                "topic": Topic.PURGE.value,
                "document_id": doc["id"],
                "trace_id": doc["trace_id"],
                "available_at": None,
                "now": now,
            },
        )
        metrics.DOCUMENT_OUTCOMES.labels(status.value).inc()
        log.info("document %s: %s", status.value, reason)

    def _release(
        self, cur: Cursor, doc: Row, *, charged: int, reserved: int, now: datetime | None
    ) -> None:
        if charged or reserved:
            cur.execute(
                self._q["release_quota"],
                {"owner_id": doc["owner_id"], "charged": charged, "reserved": reserved, "now": now},
            )

    def _lock(
        self, cur: Cursor, event: Row, now: datetime | None
    ) -> tuple[datetime, Row | None] | None:
        """Lock the event, the owner's quota row, then the document: always in that order, the
        library's too (quota before document), so workers and web requests cannot deadlock.
        None when the event was finished meanwhile: the caller must change nothing."""
        locked = cur.execute(self._q["lock_event"], {"id": event["id"], "now": now}).fetchone()
        if locked is None or locked["status"] not in (EventStatus.PENDING, EventStatus.DISPATCHED):
            return None
        cur.execute(self._q["lock_quota_of_document"], {"id": event["document_id"]})
        doc = cur.execute(self._q["lock_document"], {"id": event["document_id"]}).fetchone()
        return locked["clock"], doc

    def _complete(self, cur: Cursor, event: Row, now: datetime | None) -> Outcome:
        done = cur.execute(self._q["complete_event"], {"id": event["id"], "now": now}).fetchone()
        if done is None:
            return Outcome.SKIPPED
        metrics.EVENTS_DONE.labels(event["topic"]).inc()
        return Outcome.DONE

    def _snooze(
        self, cur: Cursor, event: Row, attempt: int, delay: float, now: datetime | None
    ) -> Outcome:
        row = cur.execute(
            self._q["snooze_event"],
            {
                "id": event["id"],
                "attempt": attempt,
                "delay": delay,
                "now": now,
                "error": "object not visible in storage yet",
            },
        ).fetchone()
        if row is None:
            return Outcome.STALE
        metrics.EVENTS_SNOOZED.labels(event["topic"]).inc()
        return Outcome.SNOOZED

    def _fail(self, event: Row, attempt: int, exc: BaseException, now: datetime | None) -> Outcome:
        error = redact(f"{type(exc).__name__}: {exc}")[:2000]
        delay = backoff_seconds(self.settings, event["failures"])
        with self._transaction() as cur:
            row = cur.execute(
                self._q["fail_event"],
                {
                    "id": event["id"],
                    "attempt": attempt,
                    "delay": delay,
                    "error": error,
                    "max_failures": self.settings.max_failures,
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

    # -- database helpers ----------------------------------------------------------------

    def _read_event_and_document(self, event_id: int) -> tuple[Row | None, Prefetched]:
        """The event and its document (no locks), both queries in one pipeline: one round
        trip and one pool checkout."""
        with self.pool.connection() as conn:
            with conn.pipeline():
                events = conn.cursor(row_factory=dict_row).execute(
                    self._q["read_event"], {"id": event_id}
                )
                docs = conn.cursor(row_factory=dict_row).execute(
                    self._q["read_document_of_event"], {"id": event_id}
                )
            event: Row | None = events.fetchone()
            doc: Row | None = docs.fetchone()
        if event is None or event["status"] in (EventStatus.DONE, EventStatus.DEAD):
            return event, UNREAD
        return event, doc

    def _document(self, event: Row, prefetched: Prefetched) -> Row | None:
        """The event's document as read with the event, or read now."""
        if prefetched is UNREAD:
            return self._read(self._q["read_document"], event["document_id"])
        return prefetched if isinstance(prefetched, dict) else None

    def _read(self, query: str, ident: object) -> Row | None:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row: Row | None = cur.execute(query, {"id": ident}).fetchone()
            return row

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        """A pooled connection in one transaction, with a dict-row cursor."""
        with (
            self.pool.connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cur,
        ):
            yield cur
