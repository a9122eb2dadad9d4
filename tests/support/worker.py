"""Helpers for the worker and process tests: uploads, database probes, time-driven draining."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from outbox import Outbox, Settings
from outbox.models import UploadTicket
from outbox.presign import make_client
from tests.support.core import Processes, dispatched_events, put, sha256_hex
from tests.support.util import wait_for
from worker.events import EventProcessor, Outcome
from worker.relay import Relay

Row = dict[str, Any]


def body_of(n: int) -> bytes:
    """A random PDF-like body of ``n`` bytes (n >= 9)."""
    head = b"%PDF-1.7\n"
    return head + os.urandom(n - len(head))


def request(
    outbox: Outbox,
    conn: psycopg.Connection[Any],
    owner: str,
    body: bytes,
    *,
    content_type: str = "application/pdf",
    filename: str = "file.pdf",
    **kwargs: Any,
) -> UploadTicket:
    """request_upload + commit."""
    ticket = outbox.request_upload(
        conn,
        owner_id=owner,
        filename=filename,
        content_type=content_type,
        size=len(body),
        sha256=sha256_hex(body),
        **kwargs,
    )
    conn.commit()
    return ticket


def upload(
    outbox: Outbox,
    conn: psycopg.Connection[Any],
    owner: str,
    body: bytes,
    *,
    confirm: bool = True,
    **kwargs: Any,
) -> UploadTicket:
    """request_upload, a real HTTP PUT to the presigned URL, and (by default) confirm."""
    ticket = request(outbox, conn, owner, body, **kwargs)
    resp = put(ticket, body)
    assert resp.status_code == 200, (resp.status_code, resp.text[:500])
    if confirm:
        outbox.confirm(conn, owner_id=owner, document_id=ticket.document.id)
        conn.commit()
    return ticket


def confirm(outbox: Outbox, conn: psycopg.Connection[Any], owner: str, doc_id: object) -> None:
    outbox.confirm(conn, owner_id=owner, document_id=doc_id)  # type: ignore[arg-type]
    conn.commit()


def query(settings: Settings, sql: str, params: Any = None) -> list[Row]:
    with (
        psycopg.connect(settings.database_url, autocommit=True) as c,
        c.cursor(row_factory=dict_row) as cur,
    ):
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def doc_row(settings: Settings, doc_id: object) -> Row:
    rows = query(settings, "SELECT * FROM s3outbox.documents WHERE id = %s", (doc_id,))
    assert rows, f"no document {doc_id}"
    return rows[0]


def events_of(settings: Settings, doc_id: object, topic: str | None = None) -> list[Row]:
    return query(
        settings,
        "SELECT * FROM s3outbox.events WHERE document_id = %s"
        " AND (%s::text IS NULL OR topic = %s::text) ORDER BY id",
        (doc_id, topic, topic),
    )


def all_events(settings: Settings) -> list[Row]:
    return query(settings, "SELECT * FROM s3outbox.events ORDER BY id")


def quota_row(settings: Settings, owner: str) -> Row:
    rows = query(settings, "SELECT * FROM s3outbox.quotas WHERE owner_id = %s", (owner,))
    assert rows, f"no quota row for {owner}"
    return rows[0]


def charged_sum(settings: Settings, owner: str) -> int:
    rows = query(
        settings,
        "SELECT coalesce(sum(charged_bytes), 0)::bigint AS s FROM s3outbox.documents"
        " WHERE owner_id = %s",
        (owner,),
    )
    return int(rows[0]["s"])


def db_now(settings: Settings) -> datetime:
    rows = query(settings, "SELECT now() AS now")
    value: datetime = rows[0]["now"]
    return value


def s3_client(settings: Settings) -> Any:
    """A plain boto3 client: to change objects behind the system's back."""
    return make_client(settings, settings.s3_endpoint_url)


def blob_exists(settings: Settings, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3_client(settings).head_object(Bucket=settings.s3_bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return False
        raise
    return True


def due_unfinished(settings: Settings, now: datetime | None) -> int:
    rows = query(
        settings,
        "SELECT count(*) AS n FROM s3outbox.events WHERE status = 'dispatched'"
        " OR (status = 'pending' AND available_at <= coalesce(%s::timestamptz, now()))",
        (now,),
    )
    return int(rows[0]["n"])


def drain_at(
    settings: Settings,
    relay: Relay,
    processor: EventProcessor,
    now: datetime,
    rounds: int = 30,
) -> list[Outcome]:
    """Like InlineWorker.drain, but the relay and the handlers all decide with ``now``."""
    outcomes: list[Outcome] = []
    for _ in range(rounds):
        relay.run_once(now=now)
        for event_id, attempt in dispatched_events(settings):
            outcomes.append(processor.process(event_id, attempt, now=now))
        if due_unfinished(settings, now) == 0:
            return outcomes
    raise AssertionError(f"outbox not drained at {now} after {rounds} rounds: {outcomes}")


def drain_past_verify_deadline(
    settings: Settings, relay: Relay, processor: EventProcessor, now: datetime
) -> list[Outcome]:
    """Drain at ``now``, then once the verify deadline after it has passed: an object that
    never came is first found missing (snoozed), then rejected (the deadline counts from
    the first attempt that found it missing)."""
    first = drain_at(settings, relay, processor, now)
    later = now + timedelta(seconds=settings.verify_deadline_seconds + 1)
    return first + drain_at(settings, relay, processor, later)


def lock_waiters(settings: Settings, pattern: str) -> int:
    """Backends waiting on a lock while running a statement that matches ``pattern``."""
    rows = query(
        settings,
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND query ILIKE %s",
        (pattern,),
    )
    return int(rows[0]["n"])


LOCK_EVENT_SQL = "%FROM s3outbox.events e WHERE e.id%FOR UPDATE%"
LOCK_DOCUMENT_SQL = "%SELECT d.* FROM s3outbox.documents d WHERE d.id%FOR UPDATE%"
# The verify fast path: one call that takes the same locks inside s3outbox.accept_verified.
ACCEPT_VERIFIED_SQL = "%s3outbox.accept_verified(%"
# The packed message's fast path: one statement for its matching verifies.
ACCEPT_VERIFIED_MANY_SQL = "%s3outbox.accept_verified_many(%"
# The start of an attempt waits for the event's row lock first (worker/events/queries.sql
# lock_events), then compares and sets.
START_ATTEMPTS_SQL = "%FROM s3outbox.events WHERE id = ANY(%FOR UPDATE%"


@contextlib.contextmanager
def row_locked(settings: Settings, table: str, ident: object) -> Iterator[psycopg.Connection[Any]]:
    """Hold ``SELECT ... FOR UPDATE`` on one row of s3outbox.<table> until the block ends."""
    assert table in ("events", "documents")
    conn = psycopg.connect(settings.database_url)
    try:
        conn.execute(f"SELECT 1 FROM s3outbox.{table} WHERE id = %s FOR UPDATE", (ident,))
        yield conn
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        conn.close()


class Background:
    """Run a call in a thread and collect its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self, timeout: float = 30.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background call did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def wait_blocked(settings: Settings, pattern: str, count: int = 1, timeout: float = 15.0) -> None:
    wait_for(
        lambda: lock_waiters(settings, pattern) >= count,
        timeout=timeout,
        message=f"{count} backend(s) blocked on {pattern}",
    )


def after(moment: datetime, seconds: float) -> datetime:
    return moment + timedelta(seconds=seconds)


# -- real processes ----------------------------------------------------------------------


class NamedProcesses(Processes):
    """Processes that may run several copies of one service: "relay2" runs a second relay."""

    def command(self, name: str) -> list[str]:
        return super().command(name.rstrip("0123456789"))


def tails(processes: Processes, lines: int = 30) -> str:
    """The last lines of every process log, for assertion messages."""
    names = sorted(p.stem for p in processes.logdir.glob("*.log"))
    parts = []
    for name in names:
        text = processes.log(name).splitlines()[-lines:]
        parts.append(f"--- {name}.log (last {lines} lines) ---\n" + "\n".join(text))
    return "\n".join(parts)


def outbox_snapshot(settings: Settings) -> str:
    try:
        events = query(
            settings,
            "SELECT topic, status, count(*) AS n, max(attempts) AS max_attempts,"
            " max(failures) AS max_failures FROM s3outbox.events GROUP BY 1, 2 ORDER BY 1, 2",
        )
        docs = query(
            settings,
            "SELECT status, count(*) AS n FROM s3outbox.documents GROUP BY 1 ORDER BY 1",
        )
    except psycopg.Error as exc:
        return f"(database unreachable: {exc})"
    return f"events: {events}\ndocuments: {docs}"


def wait_procs(
    processes: Processes,
    predicate: Callable[[], Any],
    *,
    timeout: float,
    what: str,
) -> Any:
    """wait_for, with process logs and the outbox state in the failure message. Fails at
    once when a started process has exited."""

    def check() -> Any:
        exited = {n: p.returncode for n, p in processes.procs.items() if p.poll() is not None}
        if exited:
            raise AssertionError(f"processes exited while waiting for {what}: {exited}")
        return predicate()

    try:
        return wait_for(check, timeout=timeout, interval=0.2, message=what, ignore=(psycopg.Error,))
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n{outbox_snapshot(processes.settings)}\n{tails(processes)}"
        ) from None


def statuses(settings: Settings, doc_ids: list[Any]) -> dict[str, str]:
    rows = query(
        settings,
        "SELECT id::text AS id, status FROM s3outbox.documents WHERE id = ANY(%s)",
        ([str(i) for i in doc_ids],),
    )
    return {r["id"]: r["status"] for r in rows}


def all_in(settings: Settings, doc_ids: list[Any], status: str) -> bool:
    found = statuses(settings, doc_ids)
    return len(found) == len(doc_ids) and set(found.values()) == {status}


def outbox_idle(settings: Settings) -> bool:
    """No event dispatched or due: everything that can be done now is done."""
    return due_unfinished(settings, None) == 0


def dead_events(settings: Settings) -> list[Row]:
    return query(settings, "SELECT * FROM s3outbox.events WHERE status = 'dead'")


def lose_messages(settings: Settings) -> None:
    """Redis loses every message of the test's queue (as a restart without persistence
    does): waiting, and fetched but not acknowledged."""
    import redis

    from worker.broker import NAMESPACE

    client = redis.Redis.from_url(settings.redis_url)
    try:
        client.delete(
            f"{NAMESPACE}:{settings.queue_name}", f"{NAMESPACE}:{settings.queue_name}.msgs"
        )
    finally:
        client.close()


def held_messages(settings: Settings) -> dict[str, Any]:
    """The messages Redis holds on the test's queue (waiting or unacknowledged), decoded, by
    message id."""
    import redis
    from dramatiq import Message

    from worker.broker import NAMESPACE

    client = redis.Redis.from_url(settings.redis_url)
    try:
        stored = client.hgetall(f"{NAMESPACE}:{settings.queue_name}.msgs")
    finally:
        client.close()
    return {key.decode(): Message.decode(data) for key, data in stored.items()}


def deliver_held(
    settings: Settings, processor: EventProcessor, now: datetime | None = None
) -> list[Outcome]:
    """Workers come back: every message Redis holds is handled once, as an actor would
    (packed messages too), and acknowledged."""
    import redis

    from worker.broker import NAMESPACE, VERIFY_MANY_ACTOR

    outcomes: list[Outcome] = []
    client = redis.Redis.from_url(settings.redis_url)
    try:
        for message_id, message in held_messages(settings).items():
            if message.actor_name == VERIFY_MANY_ACTOR:
                outcomes.extend(processor.process_many(message.args[0], now=now))
            else:
                outcomes.append(processor.process(*message.args, now=now, **message.kwargs))
            client.hdel(f"{NAMESPACE}:{settings.queue_name}.msgs", message_id)
    finally:
        client.close()
    return outcomes
