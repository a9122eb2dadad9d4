"""The real processes: relay, ``dramatiq worker.actors`` and sweeper as child processes with
the test's settings, against the real servers, including crashes and server restarts."""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from outbox import DocumentStatus, Outbox, Settings
from tests.support.core import Processes
from tests.support.util import wait_for
from tests.support.worker import (
    ACCEPT_VERIFIED_SQL,
    LOCK_DOCUMENT_SQL,
    NamedProcesses,
    all_events,
    all_in,
    blob_exists,
    body_of,
    charged_sum,
    dead_events,
    outbox_idle,
    quota_row,
    request,
    row_locked,
    statuses,
    tails,
    upload,
    wait_procs,
)
from worker.embedded import EmbeddedStack

pytestmark = pytest.mark.slow
Conn = psycopg.Connection[Any]


def upload_many(outbox: Outbox, conn: Conn, owner: str, n: int, size: int = 2000) -> list[Any]:
    return [upload(outbox, conn, owner, body_of(size + i)).document.id for i in range(n)]


def assert_quota_consistent(settings: Settings, owner: str, processes: Processes) -> None:
    q = quota_row(settings, owner)
    charged = charged_sum(settings, owner)
    assert q["used_bytes"] == charged and q["reserved_bytes"] == 0, (
        f"{q} charged={charged}\n{tails(processes)}"
    )


def assert_nothing_lost(settings: Settings, processes: Processes) -> None:
    """Every event done, or pending for later (follow-up purges); none dead or dispatched."""
    dead = dead_events(settings)
    assert dead == [], f"dead events: {dead}\n{tails(processes)}"
    assert outbox_idle(settings), tails(processes)


def test_full_lifecycle(
    outbox: Outbox, conn: Conn, settings: Settings, processes: Processes
) -> None:
    processes.start("relay", "worker", "sweeper")
    alice = upload_many(outbox, conn, "alice", 4)
    bob = upload_many(outbox, conn, "bob", 3, size=3000)
    wait_procs(
        processes,
        lambda: all_in(settings, alice + bob, DocumentStatus.AVAILABLE),
        timeout=60,
        what="all documents available",
    )
    for owner in ("alice", "bob"):
        assert_quota_consistent(settings, owner, processes)
    assert quota_row(settings, "alice")["used_bytes"] == sum(2000 + i for i in range(4))

    gone = [alice[0], alice[2], bob[1]]
    keys = {}
    for doc_id in gone:
        owner = "alice" if doc_id in alice else "bob"
        keys[doc_id] = outbox.delete(conn, owner_id=owner, document_id=doc_id).object_key
    conn.commit()
    wait_procs(
        processes,
        lambda: all_in(settings, gone, DocumentStatus.DELETED),
        timeout=60,
        what="deleted documents",
    )
    assert not any(blob_exists(settings, key) for key in keys.values())
    kept = [d for d in alice + bob if d not in gone]
    assert all_in(settings, kept, DocumentStatus.AVAILABLE)
    for doc_id in kept:
        doc = outbox.get(conn, owner_id="alice" if doc_id in alice else "bob", document_id=doc_id)
        assert blob_exists(settings, doc.object_key)
    conn.commit()
    for owner in ("alice", "bob"):
        assert_quota_consistent(settings, owner, processes)
    assert quota_row(settings, "alice")["used_bytes"] == 2001 + 2003
    wait_procs(processes, lambda: outbox_idle(settings), timeout=30, what="an idle outbox")
    assert_nothing_lost(settings, processes)


def test_worker_sigkill_mid_task(
    outbox: Outbox, conn: Conn, settings: Settings, processes: Processes
) -> None:
    """The purge actor has deleted the blob and is blocked on the document's row lock (held
    by the test) inside its transaction when its worker is SIGKILLed: nothing was committed.
    The event is sent again and a new worker finishes it: nothing is lost. The death counts
    as one failed attempt (an event that kills its worker every time must end dead)."""
    ticket = upload(outbox, conn, "alice", body_of(2500))
    doc_id = ticket.document.id
    processes.start("relay", "worker")
    wait_procs(
        processes,
        lambda: all_in(settings, [doc_id], DocumentStatus.AVAILABLE),
        timeout=60,
        what="the document available",
    )
    processes.stop("worker")
    outbox.delete(conn, owner_id="alice", document_id=doc_id)
    conn.commit()
    with row_locked(settings, "documents", doc_id) as holder:
        processes.start("worker")
        wait_procs(
            processes,
            lambda: _blocked(settings),
            timeout=60,
            what="the purge actor blocked on the document lock",
        )
        processes.kill("worker", signal.SIGKILL)
        holder.rollback()
    assert statuses(settings, [doc_id]) == {str(doc_id): DocumentStatus.DELETING}
    processes.start("worker")
    wait_procs(
        processes,
        lambda: all_in(settings, [doc_id], DocumentStatus.DELETED) and outbox_idle(settings),
        timeout=60,
        what="the document deleted after the worker was killed",
    )
    # The first purge; a second one waits for the upload URL to expire (invariant 7).
    purge = min((e for e in all_events(settings) if e["topic"] == "purge"), key=lambda e: e["id"])
    assert purge["status"] == "done" and purge["failures"] == 1, purge
    assert "died before it finished" in purge["last_error"], purge
    assert purge["attempts"] >= 2, purge  # it was sent again after the kill
    assert not blob_exists(settings, ticket.document.object_key)
    assert_quota_consistent(settings, "alice", processes)


def test_worker_sigkill_with_its_verify_transaction_sent(
    outbox: Outbox, conn: Conn, settings: Settings, processes: Processes
) -> None:
    """A matching verify ends in one statement (s3outbox.accept_verified), its own
    transaction. Killed while that statement waits on a lock, the worker is gone but the
    server has the whole statement: it commits as one unit when the lock is released. The
    document is available exactly once and its quota charged once."""
    with _verify_blocked_on_its_document(outbox, conn, settings, processes, 2700) as (
        ticket,
        body,
        holder,
    ):
        doc_id = ticket.document.id
        processes.kill("worker", signal.SIGKILL)
        holder.rollback()
    wait_procs(
        processes,
        lambda: all_in(settings, [doc_id], DocumentStatus.AVAILABLE) and outbox_idle(settings),
        timeout=60,
        what="the killed worker's transaction committed",
    )
    (event,) = all_events(settings)
    assert event["status"] == "done" and event["failures"] == 0, event
    assert quota_row(settings, "alice")["used_bytes"] == len(body)
    assert_quota_consistent(settings, "alice", processes)


def test_a_worker_stopped_with_sigterm_finishes_the_message_in_hand(
    outbox: Outbox, conn: Conn, settings: Settings, processes: Processes
) -> None:
    """SIGTERM is a graceful stop: the Dramatiq parent passes it to its worker process, which
    finishes the verify it is blocked in, acknowledges it and exits 0. The event is done in
    its first attempt: nothing was left for a rescue."""
    with _verify_blocked_on_its_document(outbox, conn, settings, processes, 2900) as (
        ticket,
        body,
        holder,
    ):
        doc_id = ticket.document.id
        proc = processes.procs["worker"]
        stopper = threading.Thread(target=processes.stop, args=("worker",))
        stopper.start()
        wait_for(
            lambda: "Stopping worker process" in processes.log("worker"),
            timeout=30,
            message="the worker process to begin its stop",
        )
        assert proc.poll() is None  # still finishing the verify: the lock is held
        holder.rollback()
        stopper.join(timeout=60)
    assert not stopper.is_alive()
    log = processes.log("worker")
    assert proc.returncode == 0, log[-3000:]
    assert "Killing worker process" not in log, log[-3000:]
    assert all_in(settings, [doc_id], DocumentStatus.AVAILABLE)
    (event,) = all_events(settings)
    assert event["status"] == "done", event
    assert (event["attempts"], event["failures"], event["rescues"]) == (1, 0, 0), event
    assert quota_row(settings, "alice")["used_bytes"] == len(body)


@contextlib.contextmanager
def _verify_blocked_on_its_document(
    outbox: Outbox, conn: Conn, settings: Settings, processes: Processes, size: int
) -> Iterator[tuple[Any, bytes, Conn]]:
    """A document of alice's uploaded, relay and worker started, and its verify blocked on
    the document's row lock: ``(ticket, body, holder)``; the lock is held until ``holder``
    rolls back or the block ends."""
    body = body_of(size)
    ticket = upload(outbox, conn, "alice", body)
    with row_locked(settings, "documents", ticket.document.id) as holder:
        processes.start("relay", "worker")
        wait_procs(
            processes,
            lambda: _blocked(settings),
            timeout=60,
            what="the verify actor blocked on the document lock",
        )
        yield ticket, body, holder


def _blocked(settings: Settings) -> bool:
    from tests.support.worker import lock_waiters

    waiting = lock_waiters(settings, LOCK_DOCUMENT_SQL)
    return waiting + lock_waiters(settings, ACCEPT_VERIFIED_SQL) >= 1


def _dispatched_all(settings: Settings, topic: str, n: int) -> bool:
    rows = [e for e in all_events(settings) if e["topic"] == topic]
    return len(rows) == n and all(e["status"] == "dispatched" for e in rows)


def test_redis_flushed_with_events_in_flight(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    processes: Processes,
    embedded_stack: EmbeddedStack,
) -> None:
    """Messages are on Redis (no worker consumes yet) when Redis loses everything: the
    relay's rescue sends them again and every document still ends where it should."""
    processes.start("relay", "sweeper")
    docs = upload_many(outbox, conn, "alice", 5)
    wait_procs(
        processes,
        lambda: _dispatched_all(settings, "verify", 5),
        timeout=30,
        what="5 verify events dispatched",
    )
    embedded_stack.valkey.flushall()
    processes.start("worker")
    wait_procs(
        processes,
        lambda: all_in(settings, docs, DocumentStatus.AVAILABLE),
        timeout=60,
        what="all documents available after FLUSHALL",
    )

    processes.stop("worker")
    gone = docs[:2]
    for doc_id in gone:
        outbox.delete(conn, owner_id="alice", document_id=doc_id)
    conn.commit()
    wait_procs(
        processes,
        lambda: _purges_dispatched(settings, 2),
        timeout=30,
        what="2 purge events dispatched",
    )
    embedded_stack.valkey.flushall()
    processes.start("worker")
    wait_procs(
        processes,
        lambda: all_in(settings, gone, DocumentStatus.DELETED) and outbox_idle(settings),
        timeout=60,
        what="deleted documents after FLUSHALL",
    )
    assert all_in(settings, docs[2:], DocumentStatus.AVAILABLE)
    assert_nothing_lost(settings, processes)
    assert max(e["attempts"] for e in all_events(settings)) >= 2  # rescue did the work
    assert_quota_consistent(settings, "alice", processes)


def _purges_dispatched(settings: Settings, n: int) -> bool:
    rows = [e for e in all_events(settings) if e["topic"] == "purge"]
    return len(rows) == n and all(e["status"] == "dispatched" for e in rows)


# Longer than any wait of these tests: a dispatched event is never stale while they run, so
# an event sent twice is a relay's bug, not a rescue after a slow start of Dramatiq.
NO_RESCUE = {"redispatch_after_seconds": 600.0}


def test_relay_sigterm_exits_cleanly_and_another_takes_over(
    outbox: Outbox, conn: Conn, make_settings: Any, settings: Settings, tmp_path: Path
) -> None:
    processes = Processes(make_settings(**NO_RESCUE), logdir=tmp_path)
    try:
        processes.start("relay")
        wait_procs(
            processes,
            lambda: "relay started" in processes.log("relay"),
            timeout=30,
            what="the relay to start",
        )
        proc = processes.procs["relay"]
        processes.stop("relay")
        assert proc.returncode == 0, tails(processes)
        assert "relay stopped" in processes.log("relay")

        docs = upload_many(outbox, conn, "alice", 3)
        assert {e["status"] for e in all_events(settings)} == {"pending"}
        processes.start("relay", "worker")
        wait_procs(
            processes,
            lambda: all_in(settings, docs, DocumentStatus.AVAILABLE) and outbox_idle(settings),
            timeout=60,
            what="a new relay to dispatch the pending events",
        )
        assert_nothing_lost(settings, processes)
        # The new relay sent each event the stopped one left exactly once, however long the
        # worker took to start (no rescue can happen within redispatch_after_seconds).
        assert {e["attempts"] for e in all_events(settings)} == {1}, tails(processes)
        assert {e["rescues"] for e in all_events(settings)} == {0}
    finally:
        processes.stop_all()


def _relays_that_dispatched(procs: Processes, names: tuple[str, ...]) -> set[str]:
    """The relays that logged a batch they sent (their DEBUG line per batch)."""
    return {name for name in names if re.search(r"dispatched \d+ events", procs.log(name))}


def test_two_relays_never_dispatch_one_event_twice(
    outbox: Outbox,
    conn: Conn,
    make_settings: Any,
    settings: Settings,
    tmp_path: Path,
) -> None:
    """Two relays claim side by side (SKIP LOCKED): no event is sent twice. The guarantee is
    "once per event"; that both relays took part is what makes the test mean something, so
    bursts are repeated (a few at most) until both have sent a batch: which relay wins a
    burst depends on the scheduler, not on the code."""
    small = make_settings(relay_batch_size=3, log_level="DEBUG", **NO_RESCUE)
    relays = ("relay", "relay2")
    procs = NamedProcesses(small, logdir=tmp_path)
    try:
        procs.start(*relays, "worker")
        for name in relays:
            wait_procs(
                procs,
                lambda name=name: "relay started" in procs.log(name),
                timeout=30,
                what=f"{name} to start",
            )
        docs: list[Any] = []
        for burst in range(1, 6):
            # A burst: 40 purge events committed at once wake both relays together.
            new = [request(outbox, conn, "alice", body_of(1000 + i)).document.id for i in range(40)]
            for doc_id in new:
                outbox.delete(conn, owner_id="alice", document_id=doc_id)
            conn.commit()
            docs += new
            wait_procs(
                procs,
                lambda new=new: (
                    all_in(settings, new, DocumentStatus.DELETED) and outbox_idle(settings)
                ),
                timeout=60,
                what=f"burst {burst}: 40 deletes purged",
            )
            if _relays_that_dispatched(procs, relays) == set(relays):
                break
        assert _relays_that_dispatched(procs, relays) == set(relays), (
            f"one relay took every event of {burst} bursts\n{tails(procs)}"
        )
        events = all_events(settings)
        dispatched = [e for e in events if e["dispatched_at"] is not None]
        assert len(dispatched) == len(docs)
        assert {e["attempts"] for e in dispatched} == {1}, tails(procs)
        assert {e["rescues"] for e in events} == {0}
        assert {e["failures"] for e in events} == {0}
    finally:
        procs.stop_all()


def test_postgres_restart_while_processes_run(
    outbox: Outbox,
    settings: Settings,
    processes: Processes,
    embedded_stack: EmbeddedStack,
) -> None:
    processes.start("relay", "worker", "sweeper")
    with psycopg.connect(settings.database_url) as first:
        before = upload_many(outbox, first, "alice", 4)
    embedded_stack.postgres.restart()
    with psycopg.connect(settings.database_url) as second:
        after = upload_many(outbox, second, "alice", 4, size=5000)
    docs = before + after
    wait_procs(
        processes,
        lambda: all_in(settings, docs, DocumentStatus.AVAILABLE) and outbox_idle(settings),
        timeout=90,
        what="all documents available after a PostgreSQL restart",
    )
    assert_nothing_lost(settings, processes)
    assert_quota_consistent(settings, "alice", processes)
    for name in ("relay", "sweeper"):
        assert processes.procs[name].poll() is None, tails(processes)


def test_a_worker_outage_longer_than_the_rescue_budget_kills_nothing(
    outbox: Outbox, conn: Conn, make_settings: Any, tmp_path: Path
) -> None:
    """Issue 10's reproduction with real processes: relay and sweeper run, the workers are
    down for longer than max_failures x redispatch_after, then start: every document ends
    available and no event is dead (before, every in-flight event died)."""
    small = make_settings(
        redispatch_after_seconds=1.0, max_failures=3, sweeper_interval_seconds=0.2
    )
    processes = Processes(small, tmp_path)
    try:
        processes.start("relay", "sweeper")
        docs = upload_many(outbox, conn, "alice", 40)
        budget = (small.max_failures + 1) * small.redispatch_after_seconds
        # The outage lasts until the oldest dispatched event is older than the whole budget,
        # read from the database's clock (no sleep, no timing assumption).
        wait_procs(
            processes,
            lambda: _dispatched_for(small, budget + 1, len(docs)),
            timeout=60,
            what=f"every event dispatched for more than {budget + 1}s",
        )
        assert dead_events(small) == []
        processes.start("worker")
        wait_procs(
            processes,
            lambda: all_in(small, docs, DocumentStatus.AVAILABLE),
            timeout=120,
            what="every document available after the outage",
        )
        assert_nothing_lost(small, processes)
        assert {e["failures"] for e in all_events(small)} == {0}
        assert_quota_consistent(small, "alice", processes)
    finally:
        processes.stop_all()


def _dispatched_for(settings: Settings, seconds: float, n: int) -> bool:
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        row = c.execute(
            "SELECT count(*) FILTER (WHERE status = 'dispatched'),"
            " coalesce(extract(epoch FROM now() - min(dispatched_at)), 0) FROM s3outbox.events"
        ).fetchone()
    return row is not None and row[0] == n and row[1] > seconds


def test_an_attempt_over_the_actor_time_limit_is_a_failed_attempt_retried_later(
    outbox: Outbox, conn: Conn, make_settings: Any, settings: Settings, tmp_path: Path
) -> None:
    """A verify whose HeadObject outlasts ``actor_time_limit_seconds`` (the workers reach
    storage through a proxy that holds that one response back) is interrupted by Dramatiq's
    TimeLimit. The attempt is recorded as failed and retried after its backoff: not lost,
    and not left dispatched until a rescue (far away here) finds it."""
    from harness.faultproxy import FaultProxy, FaultRates

    held = 5.0  # well past the limit: TimeLimit checks once a second
    rates = FaultRates(
        http_500=0,
        http_503=0,
        drop=0,
        delay=0,
        delay_min_seconds=held,
        delay_max_seconds=held,
        stale_share=0,
    )
    with FaultProxy(settings.s3_endpoint_url, rates, seed=7) as proxy:
        slow = make_settings(
            s3_endpoint_url=proxy.url,
            actor_time_limit_seconds=1.0,
            redispatch_after_seconds=3600.0,
        )
        procs = Processes(slow, tmp_path)
        try:
            procs.start("relay", "worker")
            # A first document, so the worker has booted (its storage checks are done)
            # before the next storage request is held back.
            warm = upload(outbox, conn, "alice", body_of(2100)).document.id
            wait_procs(
                procs,
                lambda: all_in(settings, [warm], DocumentStatus.AVAILABLE),
                timeout=60,
                what="the worker booted and verifying",
            )
            proxy.force("delay")  # the workers' next storage request: this verify's HEAD
            ticket = upload(outbox, conn, "alice", body_of(2200))  # PUT straight to storage
            doc_id = ticket.document.id
            wait_procs(
                procs,
                lambda: all_in(settings, [doc_id], DocumentStatus.AVAILABLE),
                timeout=60,
                what="the document available after an interrupted attempt",
            )
        finally:
            procs.stop_all()
        assert proxy.faults()["delay"] == 1
    (event,) = [e for e in all_events(settings) if e["document_id"] == doc_id]
    assert (event["status"], event["attempts"], event["failures"], event["rescues"]) == (
        "done",
        2,
        1,
        0,
    ), event
    assert "TimeLimitExceeded" in event["last_error"], event
    worker_log = procs.log("worker")
    assert "Time limit exceeded" in worker_log, tails(procs)
    assert re.search(rf"event {event['id']} \(verify\) attempt 1 interrupted", worker_log)
    assert_quota_consistent(settings, "alice", procs)
