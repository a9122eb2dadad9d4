"""Delivery that holds outside the harness (issue 10): an event becomes dead only through
attempts a worker started and that failed. Waiting in Redis, a lost message, a worker outage
or a backlog of any length never kills one; the relay keeps a bounded number in flight; a
copy of an old attempt stops before it costs a storage call; a lock held by a slow web
request fails the attempt (retried), it does not block a worker."""

from __future__ import annotations

from collections import Counter
from typing import Any

import psycopg
import pytest

from outbox import DocumentStatus, Outbox, Settings
from tests.support.core import dispatched_events
from tests.support.worker import (
    Background,
    after,
    body_of,
    db_now,
    deliver_held,
    doc_row,
    events_of,
    held_messages,
    lose_messages,
    upload,
    wait_blocked,
)
from worker.events import EventProcessor, Outcome
from worker.pool import make_pool
from worker.relay import Relay
from worker.storage import ObjectInfo, Storage
from worker.sweeper import Sweeper

Conn = psycopg.Connection[Any]


def event_rows(settings: Settings) -> list[dict[str, Any]]:
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        c.row_factory = psycopg.rows.dict_row
        return c.execute("SELECT * FROM s3outbox.events ORDER BY id").fetchall()


@pytest.fixture
def few(make_settings: Any, settings: Settings) -> Settings:
    """The issue's reproduction settings: a small rescue budget."""
    return make_settings(max_failures=3, relay_events_per_message=1)


@pytest.mark.parametrize("redis_loses_its_data", [False, True])
def test_a_worker_outage_longer_than_the_rescue_budget_kills_nothing(
    outbox: Outbox,
    conn: Conn,
    few: Settings,
    processor: EventProcessor,
    redis_loses_its_data: bool,
) -> None:
    """30 documents confirmed, relay and sweeper running, no worker for 4x max_failures x
    redispatch_after (the clock moves instead of the test waiting): no event is dead and no
    reservation is stuck; when the workers come back, every document ends available."""
    relay, sweeper = Relay(few), Sweeper(few)
    try:
        tickets = [upload(outbox, conn, "alice", body_of(1000 + i)) for i in range(30)]
        now = db_now(few)
        assert relay.run_once(now=now) == 30
        resent = 0
        for round_ in range(4 * few.max_failures):
            now = after(now, few.redispatch_after_seconds + 1)
            if redis_loses_its_data and round_ == 2:
                lose_messages(few)
            resent += sweeper.run_job("rescue_stale", now=now)
            relay.run_once(now=now)
        # Messages still waiting in Redis were never sent again; lost ones, once.
        assert resent == (30 if redis_loses_its_data else 0)
        assert {e["status"] for e in event_rows(few)} == {"dispatched"}
        assert len(held_messages(few)) == 30

        outcomes = deliver_held(few, processor, now=now)
        assert Counter(outcomes) == Counter({Outcome.DONE: 30})
        for ticket in tickets:
            assert doc_row(few, ticket.document.id)["status"] == DocumentStatus.AVAILABLE
        events = event_rows(few)
        assert {(e["status"], e["failures"]) for e in events} == {("done", 0)}
        assert {e["rescues"] for e in events} == ({1} if redis_loses_its_data else {0})
    finally:
        relay.close()
        sweeper.close()


def test_the_relay_keeps_at_most_max_in_flight_and_the_rest_waits_in_postgres(
    outbox: Outbox, conn: Conn, make_settings: Any, processor: EventProcessor
) -> None:
    """Back-pressure: a backlog waits in PostgreSQL (visible as lag), not in Redis."""
    capped = make_settings(relay_max_in_flight=5, relay_events_per_message=1)
    relay = Relay(capped)
    try:
        for i in range(12):
            upload(outbox, conn, "alice", body_of(800 + i))
        now = db_now(capped)
        assert relay.run_once(now=now) == 5
        assert relay.run_once(now=now) == 0  # no room
        assert len(dispatched_events(capped)) == 5
        assert len(held_messages(capped)) == 5
        deliver_held(capped, processor, now=now)  # 5 finish: room for 5 more
        assert relay.run_once(now=now) == 5
        deliver_held(capped, processor, now=now)
        assert relay.run_once(now=now) == 2
        deliver_held(capped, processor, now=now)
        assert {e["status"] for e in event_rows(capped)} == {"done"}
    finally:
        relay.close()


class CountingStorage(Storage):
    """The real storage, counting the HeadObject calls it makes."""

    heads = 0

    def head(self, key: str) -> ObjectInfo | None:
        type(self).heads += 1
        return super().head(key)


def test_a_copy_of_an_old_attempt_stops_before_any_storage_call(
    outbox: Outbox, conn: Conn, settings: Settings, relay: Relay
) -> None:
    """A lost message is sent again while its older copy is still queued (Redis came back
    with it): the old copy stops at the start, without a HeadObject (which is a full GET
    where storage keeps no checksum)."""
    ticket = upload(outbox, conn, "alice", body_of(3000))
    relay.run_once()
    ((event_id, first),) = dispatched_events(settings)
    old = dict(held_messages(settings))
    lose_messages(settings)
    later = after(db_now(settings), settings.redispatch_after_seconds + 1)
    assert relay.rescue(now=later) == 1
    relay.run_once(now=later)
    pool = make_pool(settings, max_size=2)
    try:
        counting = EventProcessor(settings, pool, CountingStorage(settings))
        CountingStorage.heads = 0
        ((message,),) = [list(old.values())]
        assert counting.process(*message.args, now=later, **message.kwargs) == Outcome.SKIPPED
        assert CountingStorage.heads == 0
        assert counting.process(event_id, first + 1, now=later) == Outcome.DONE
        assert CountingStorage.heads == 1
    finally:
        pool.close()
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.AVAILABLE


def test_a_web_request_holding_the_quota_row_fails_the_attempt_instead_of_blocking(
    outbox: Outbox, conn: Conn, make_settings: Any, settings: Settings, relay: Relay
) -> None:
    """A slow app transaction holds the owner's quota row: the worker's accepting statement
    gives up after db_lock_timeout_seconds (a retried failure, not a thread blocked without
    limit); once the app commits, the retry makes the document available."""
    bounded = make_settings(db_lock_timeout_seconds=0.3)
    ticket = upload(outbox, conn, "alice", body_of(2000))
    relay.run_once()
    ((event_id, attempt),) = dispatched_events(settings)
    pool = make_pool(bounded, max_size=2)
    try:
        processor = EventProcessor(bounded, pool, Storage(bounded))
        with psycopg.connect(settings.database_url) as app:
            app.execute("SELECT 1 FROM s3outbox.quotas WHERE owner_id = 'alice' FOR UPDATE")
            run = Background(lambda: processor.process(event_id, attempt))
            assert run.join(timeout=30) == Outcome.RETRY
            app.rollback()
        (event,) = events_of(settings, ticket.document.id)
        assert (event["status"], event["failures"]) == ("pending", 1)
        assert "lock" in event["last_error"].lower()
        retry_at = event["available_at"]
        relay.run_once(now=retry_at)
        ((event_id, attempt),) = dispatched_events(settings)
        assert processor.process(event_id, attempt, now=retry_at) == Outcome.DONE
    finally:
        pool.close()
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.AVAILABLE


def test_a_message_that_arrives_before_the_relays_commit_is_handled(
    outbox: Outbox, conn: Conn, settings: Settings, processor: EventProcessor
) -> None:
    """A worker that starts an attempt while the claim of its event is still uncommitted
    (the relay sends only after its commit, but a message of an earlier claim of the same
    attempt can arrive, say) waits for that commit and handles the event (before, it judged
    the row by a snapshot that still said pending, skipped it, and the event waited for a
    rescue)."""
    from outbox import queries

    ticket = upload(outbox, conn, "alice", body_of(1900))
    q = queries.load("worker", "relay.sql")
    with psycopg.connect(settings.database_url) as relay_tx:
        ((event_id, _topic, _doc, attempt, *_),) = relay_tx.execute(
            q["pick_events"],
            {
                "limit": 10,
                "now": None,
                "after_at": "-infinity",
                "after_id": 0,
                "exclude": [],
            },
        ).fetchall()
        relay_tx.execute(
            q["mark_dispatched"], {"ids": [event_id], "message_ids": ["m-1"], "now": None}
        )
        run = Background(lambda: processor.process(event_id, attempt))
        wait_blocked(settings, "%FROM s3outbox.events WHERE id = ANY%FOR UPDATE%")
        relay_tx.commit()
        assert run.join() == Outcome.DONE
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.AVAILABLE
