"""Event handling in-process against the real servers: idempotence, verification, deletes
racing verification, the sweeper's jobs, and failures with backoff, dead events and retry.

Time is driven with ``now=`` (relay, processor, sweeper), never with sleeps."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from outbox import DocumentStatus, Outbox, Settings
from outbox.constants import Topic
from tests.support.core import ROOT, InlineWorker, dispatched_events, put, settings_env
from tests.support.util import wait_for
from tests.support.worker import (
    ACCEPT_VERIFIED_MANY_SQL,
    ACCEPT_VERIFIED_SQL,
    LOCK_EVENT_SQL,
    START_ATTEMPTS_SQL,
    Background,
    after,
    blob_exists,
    body_of,
    charged_sum,
    confirm,
    db_now,
    doc_row,
    drain_at,
    events_of,
    lose_messages,
    query,
    quota_row,
    request,
    row_locked,
    s3_client,
    upload,
    wait_blocked,
)
from worker.events import EventProcessor, Outcome, lifecycle
from worker.pool import make_pool
from worker.relay import Relay
from worker.storage import Storage
from worker.sweeper import Sweeper

Conn = psycopg.Connection[Any]


def only_dispatched(settings: Settings, topic: str) -> tuple[int, int]:
    rows = dispatched_events(settings, topic)
    assert len(rows) == 1, rows
    return rows[0]


def assert_quota(settings: Settings, owner: str, used: int, reserved: int) -> None:
    q = quota_row(settings, owner)
    assert (q["used_bytes"], q["reserved_bytes"]) == (used, reserved), q
    assert q["used_bytes"] == charged_sum(settings, owner)


# -- the same event twice ----------------------------------------------------------------


def test_verify_delivered_twice_charges_once(
    outbox: Outbox, conn: Conn, settings: Settings, relay: Relay, processor: EventProcessor
):
    body = body_of(3000)
    ticket = upload(outbox, conn, "alice", body)
    relay.run_once()
    event_id, attempt = only_dispatched(settings, "verify")

    assert processor.process(event_id, attempt) == Outcome.DONE
    assert processor.process(event_id, attempt) == Outcome.SKIPPED
    doc = doc_row(settings, ticket.document.id)
    assert doc["status"] == DocumentStatus.AVAILABLE
    assert doc["charged_bytes"] == len(body)
    assert_quota(settings, "alice", len(body), 0)
    assert [e["status"] for e in events_of(settings, ticket.document.id)] == ["done"]


def test_verify_stale_attempt_after_redispatch_changes_nothing(
    outbox: Outbox, conn: Conn, settings: Settings, relay: Relay, processor: EventProcessor
):
    """The message of attempt 1 is lost (rescued and sent again as attempt 2); attempt 2 is
    handled, then the late attempt-1 message arrives: nothing changes."""
    body = body_of(2000)
    ticket = upload(outbox, conn, "alice", body)
    relay.run_once()
    event_id, first = only_dispatched(settings, "verify")
    later = after(db_now(settings), 60)
    lose_messages(settings)
    assert relay.rescue(now=later) == 1
    relay.run_once(now=later)
    assert only_dispatched(settings, "verify") == (event_id, first + 1)

    assert processor.process(event_id, first + 1, now=later) == Outcome.DONE
    assert processor.process(event_id, first, now=later) == Outcome.SKIPPED
    assert processor.process(event_id, first + 1, now=later) == Outcome.SKIPPED
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.AVAILABLE
    assert_quota(settings, "alice", len(body), 0)


def handle_directly(processor: EventProcessor, event_id: int, attempt: int) -> Outcome:
    """The verify handler of an event, past the start gate (which lets one attempt in)."""
    from worker.events import verify
    from worker.pool import read_one

    q = lifecycle.sql()
    event = read_one(processor.pool, q["read_event"], {"id": event_id})
    assert event is not None
    doc = read_one(processor.pool, q["read_document"], {"id": event["document_id"]})
    return verify.handle(processor.context, event, doc, attempt, None)


def test_a_duplicate_delivery_of_a_running_attempt_stops_at_the_start(
    outbox: Outbox, conn: Conn, settings: Settings, relay: Relay, processor: EventProcessor
):
    """Two deliveries of one message at once: one starts the attempt, the other stops before
    any storage call and charges no failure; the event ends done once."""
    body = body_of(4100)
    ticket = upload(outbox, conn, "alice", body)
    relay.run_once()
    event_id, attempt = only_dispatched(settings, "verify")
    with row_locked(settings, "events", event_id) as holder:
        runs = [Background(lambda: processor.process(event_id, attempt)) for _ in range(2)]
        wait_blocked(settings, START_ATTEMPTS_SQL, count=2)
        holder.rollback()
        outcomes = sorted(r.join() for r in runs)
    assert outcomes == sorted([Outcome.DONE, Outcome.SKIPPED])
    (event,) = events_of(settings, ticket.document.id)
    assert (event["status"], event["failures"], event["running"]) == ("done", 0, False)
    assert_quota(settings, "alice", len(body), 0)


def test_concurrent_duplicate_rejection_queues_one_purge(
    outbox: Outbox, conn: Conn, settings: Settings, relay: Relay, processor: EventProcessor
):
    """Two handlers of one verify event both HEAD the object, then race for the locks: one
    rejects and queues a purge, the other changes nothing."""
    body = body_of(1500)
    ticket = upload(outbox, conn, "alice", body)
    key = ticket.document.object_key
    other = body_of(1500)  # same size, other bytes: only the SHA-256 differs
    s3_client(settings).put_object(
        Bucket=settings.s3_bucket, Key=key, Body=other, ContentType="application/pdf"
    )
    relay.run_once()
    event_id, attempt = only_dispatched(settings, "verify")

    # Both handlers got past the start (a worker presumed dead and its redelivery, say):
    # drive the handler itself, so both look at storage and race in the final transaction.
    with row_locked(settings, "events", event_id) as holder:
        runs = [Background(lambda: handle_directly(processor, event_id, attempt)) for _ in range(2)]
        wait_blocked(settings, LOCK_EVENT_SQL, count=2)
        holder.rollback()
        outcomes = sorted(r.join() for r in runs)
    assert outcomes == sorted([Outcome.DONE, Outcome.SKIPPED])

    doc = doc_row(settings, ticket.document.id)
    assert doc["status"] == DocumentStatus.REJECTED
    assert "sha256" in (doc["reason"] or "")
    purges = events_of(settings, ticket.document.id, "purge")
    assert len(purges) == 1, purges
    assert_quota(settings, "alice", 0, 0)


def test_concurrent_duplicate_acceptance_charges_once(
    outbox: Outbox, conn: Conn, settings: Settings, relay: Relay, processor: EventProcessor
):
    body = body_of(4321)
    ticket = upload(outbox, conn, "alice", body)
    relay.run_once()
    event_id, attempt = only_dispatched(settings, "verify")
    with row_locked(settings, "events", event_id) as holder:
        runs = [Background(lambda: handle_directly(processor, event_id, attempt)) for _ in range(3)]
        wait_blocked(settings, ACCEPT_VERIFIED_SQL, count=3)
        holder.rollback()
        outcomes = [r.join() for r in runs]
    assert sorted(outcomes) == sorted([Outcome.DONE, Outcome.SKIPPED, Outcome.SKIPPED])
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.AVAILABLE
    assert_quota(settings, "alice", len(body), 0)
    assert events_of(settings, ticket.document.id, "purge") == []


def test_purge_delivered_twice_deletes_once(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    inline_worker: InlineWorker,
    relay: Relay,
    processor: EventProcessor,
):
    body = body_of(2500)
    ticket = upload(outbox, conn, "alice", body)
    inline_worker.drain()
    outbox.delete(conn, owner_id="alice", document_id=ticket.document.id)
    conn.commit()
    relay.run_once()
    event_id, attempt = only_dispatched(settings, "purge")
    assert processor.process(event_id, attempt) == Outcome.DONE
    assert processor.process(event_id, attempt) == Outcome.SKIPPED

    doc = doc_row(settings, ticket.document.id)
    assert doc["status"] == DocumentStatus.DELETED
    assert not blob_exists(settings, ticket.document.object_key)
    assert_quota(settings, "alice", 0, 0)
    purges = events_of(settings, ticket.document.id, "purge")
    # The handled purge and exactly one follow-up for when no PUT can land any more: the
    # upload URL's expiry + the longest upload + grace.
    assert [p["status"] for p in purges] == ["done", "pending"]
    landing = timedelta(seconds=settings.max_upload_seconds + settings.purge_grace_seconds)
    assert purges[1]["available_at"] == doc["upload_expires_at"] + landing


# -- verify ------------------------------------------------------------------------------


# -- the relay's hint: declared fields in the verify message ---------------------------------


def relay_hint(relay: Relay, event_id: int) -> dict[str, Any] | None:
    """The hint the relay put in the event's message, read back from Redis."""
    for message in sent_messages(relay):
        if message.args[0] == event_id:
            hint: dict[str, Any] | None = message.kwargs.get("hint")
            return hint
    raise AssertionError(f"no message for event {event_id}")


def test_verify_with_the_relays_hint_accepts_once(
    outbox: Outbox, conn: Conn, settings: Settings, relay: Relay, processor: EventProcessor
):
    body = body_of(2500)
    ticket = upload(outbox, conn, "alice", body)
    relay.run_once()
    event_id, attempt = only_dispatched(settings, "verify")
    hint = relay_hint(relay, event_id)
    doc = doc_row(settings, ticket.document.id)
    assert hint == {
        "document_id": str(doc["id"]),
        "trace_id": doc["trace_id"],
        "object_key": doc["object_key"],
        "declared_size": doc["declared_size"],
        "sha256": doc["sha256"],
        "content_type": doc["content_type"],
    }

    assert processor.process(event_id, attempt, hint=hint) == Outcome.DONE
    assert processor.process(event_id, attempt, hint=hint) == Outcome.SKIPPED
    assert processor.process(event_id, attempt) == Outcome.SKIPPED
    doc = doc_row(settings, ticket.document.id)
    assert (doc["status"], doc["charged_bytes"]) == (DocumentStatus.AVAILABLE, len(body))
    assert_quota(settings, "alice", len(body), 0)
    assert [e["status"] for e in events_of(settings, ticket.document.id)] == ["done"]


def test_a_hint_naming_another_document_or_object_cannot_accept(
    outbox: Outbox, conn: Conn, settings: Settings, relay: Relay, processor: EventProcessor
):
    """A wrong hint (stale, or forged into Redis) points the HEAD at a good object: the
    database still decides, so a bad upload is rejected and the good one is untouched."""
    good = body_of(1800)
    good_ticket = upload(outbox, conn, "alice", good)
    bad_ids = []
    for _ in range(2):
        bad = request(outbox, conn, "bob", body_of(1800))
        s3_client(settings).put_object(
            Bucket=settings.s3_bucket, Key=bad.document.object_key, Body=body_of(1800)
        )
        confirm(outbox, conn, "bob", bad.document.id)
        bad_ids.append(bad.document.id)
    relay.run_once()
    events = {e["document_id"]: e["id"] for e in query_verify_events(settings)}
    attempts = dict(dispatched_events(settings, "verify"))
    good_hint = relay_hint(relay, events[good_ticket.document.id])
    assert good_hint is not None
    forged = {**good_hint, "document_id": str(bad_ids[1])}

    # The good document's hint with a bad document's event; the good object's fields under
    # the other bad document's id. Both are handled the general way: rejected.
    for doc_id, hint in zip(bad_ids, (good_hint, forged), strict=True):
        event_id = events[doc_id]
        assert processor.process(event_id, attempts[event_id], hint=hint) == Outcome.DONE
        assert doc_row(settings, doc_id)["status"] == DocumentStatus.REJECTED
    assert doc_row(settings, good_ticket.document.id)["status"] == DocumentStatus.UPLOADED
    assert_quota(settings, "bob", 0, 0)
    assert_quota(settings, "alice", 0, len(good))


@pytest.mark.parametrize(
    "hint",
    [{}, {"object_key": None}, {"declared_size": "many", "document_id": "x"}, {"sha256": 1}],
)
def test_a_malformed_hint_is_ignored(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    relay: Relay,
    processor: EventProcessor,
    hint: dict[str, Any],
):
    body = body_of(900)
    ticket = upload(outbox, conn, "alice", body)
    relay.run_once()
    event_id, attempt = only_dispatched(settings, "verify")
    assert processor.process(event_id, attempt, hint=hint) == Outcome.DONE
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.AVAILABLE
    assert_quota(settings, "alice", len(body), 0)


def sent_messages(relay: Relay) -> list[Any]:
    """Every message the relay has put on the test's queue, decoded."""
    from dramatiq import Message

    broker: Any = relay.broker
    stored = broker.client.hgetall(f"{broker.namespace}:{relay.settings.queue_name}.msgs")
    return [Message.decode(data) for data in stored.values()]


def test_a_backlog_is_packed_and_every_event_is_handled_once(
    outbox: Outbox, conn: Conn, settings: Settings, relay: Relay, processor: EventProcessor
):
    """A batch of 2 x SPREAD_MESSAGES + 4 verify events claimed at once -> SPREAD_MESSAGES
    + 2 messages of 2 (spread over at least SPREAD_MESSAGES messages, not packed 8 to a
    message); handled, every document is available once and each event done once."""
    from worker.broker import VERIFY_MANY_ACTOR
    from worker.relay import SPREAD_MESSAGES

    count = 2 * SPREAD_MESSAGES + 4
    assert settings.relay_events_per_message > 2
    bodies = [body_of(700 + i) for i in range(count)]
    tickets = [upload(outbox, conn, f"owner-{i % 7}", b) for i, b in enumerate(bodies)]
    assert relay.run_once() == count
    messages = sent_messages(relay)
    assert {m.actor_name for m in messages} == {VERIFY_MANY_ACTOR}
    assert sorted(len(m.args[0]) for m in messages) == [2] * (SPREAD_MESSAGES + 2)
    items = [item for m in messages for item in m.args[0]]
    dispatched = dict(dispatched_events(settings, "verify"))
    assert sorted((i[0], i[1]) for i in items) == sorted(dispatched.items())
    assert all(i[2]["object_key"] for i in items)

    for m in messages:
        assert processor.process_many(m.args[0]) == [Outcome.DONE] * len(m.args[0])
    for m in messages[:3]:  # delivered again: nothing changes
        assert processor.process_many(m.args[0]) == [Outcome.SKIPPED] * len(m.args[0])
    for i, t in enumerate(tickets):
        doc = doc_row(settings, t.document.id)
        assert doc["status"] == DocumentStatus.AVAILABLE, doc
        assert doc["charged_bytes"] == len(bodies[i])
    for owner in {f"owner-{i % 7}" for i in range(count)}:
        q = quota_row(settings, owner)
        assert q["used_bytes"] == charged_sum(settings, owner) and q["reserved_bytes"] == 0


def test_packing_follows_the_backlog_and_never_takes_a_rescued_event(
    outbox: Outbox, conn: Conn, settings: Settings, relay: Relay, processor: EventProcessor
):
    """Small batches go one message per event until SPREAD_MESSAGES messages wait in Redis
    (the workers are behind); then even small batches are packed. A rescued event always
    gets a message of its own."""
    from worker.broker import ACTOR_NAMES, VERIFY_MANY_ACTOR
    from worker.relay import SPREAD_MESSAGES
    from worker.relay import Relay as RelayClass

    assert SPREAD_MESSAGES == 8  # the rounds below count on it
    tickets = [upload(outbox, conn, "alice", body_of(900 + i)) for i in range(70)]
    small = RelayClass(settings.model_copy(update={"relay_batch_size": 5}), relay.broker)
    try:
        while small.run_once():
            pass
    finally:
        small.close()
    messages = sent_messages(relay)
    singles = [m for m in messages if m.actor_name == ACTOR_NAMES[Topic.VERIFY]]
    packed = [m for m in messages if m.actor_name == VERIFY_MANY_ACTOR]
    # Rounds of 5 with 0 and 5 messages waiting: singles; then 10, 11, 12, ... waiting:
    # each round of 5 is one message.
    assert len(singles) == 10
    assert sorted(len(m.args[0]) for m in packed) == [5] * 12

    # Every message lost (never handled); the 70 events are rescued and sent again while
    # the queue still looks long: one message each all the same.
    relay.broker.client.delete(f"{relay.broker.namespace}:{settings.queue_name}.msgs")
    later = after(db_now(settings), settings.redispatch_after_seconds + 5)
    assert relay.rescue(now=later) == 70
    relay.run_once(now=later)
    resent = sent_messages(relay)
    assert len(resent) == 70
    assert {m.actor_name for m in resent} == {ACTOR_NAMES[Topic.VERIFY]}
    for m in resent:
        assert processor.process(*m.args, now=later, **m.kwargs) == Outcome.DONE
    assert all(
        doc_row(settings, t.document.id)["status"] == DocumentStatus.AVAILABLE for t in tickets
    )


def test_a_malformed_item_of_a_packed_message_is_skipped(
    outbox: Outbox, conn: Conn, settings: Settings, relay: Relay, processor: EventProcessor
):
    body = body_of(1000)
    ticket = upload(outbox, conn, "alice", body)
    relay.run_once()
    event_id, attempt = only_dispatched(settings, "verify")
    items: list[Any] = [["x", 1, None], [1], "abc", None, [event_id, attempt, "not a hint"]]
    assert processor.process_many(items) == [Outcome.DONE]
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.AVAILABLE


def as_packed(relay: Relay) -> list[list[Any]]:
    """The items of one packed message made of the messages the relay sent (one event each)."""
    return [[m.args[0], m.args[1], m.kwargs["hint"]] for m in sent_messages(relay)]


def test_a_packed_messages_matching_verifies_end_in_one_transaction_the_others_alone(
    outbox: Outbox, conn: Conn, settings: Settings, relay: Relay, processor: EventProcessor
):
    """Six matching documents of three owners (interleaved) are accepted by one statement:
    their rows carry one transaction id. A document never uploaded and one whose object is
    another body are not: each takes the general path alone (snoozed; rejected)."""
    owners = ["carol", "dave", "erin"]
    bodies = [body_of(1100 + i) for i in range(6)]
    good = [upload(outbox, conn, owners[i % 3], b).document.id for i, b in enumerate(bodies)]
    never = request(outbox, conn, "dave", body_of(1300)).document.id
    confirm(outbox, conn, "dave", never)
    other = request(outbox, conn, "erin", body_of(1400))
    s3_client(settings).put_object(
        Bucket=settings.s3_bucket, Key=other.document.object_key, Body=body_of(1400)
    )
    confirm(outbox, conn, "erin", other.document.id)
    assert relay.run_once() == 8
    items = as_packed(relay)
    events = {e["document_id"]: e["id"] for e in query_verify_events(settings)}

    outcomes = dict(zip((i[0] for i in items), processor.process_many(items), strict=True))
    assert {outcomes[events[d]] for d in good} == {Outcome.DONE}
    assert outcomes[events[never]] == Outcome.SNOOZED
    assert outcomes[events[other.document.id]] == Outcome.DONE
    transactions = query(
        settings,
        "SELECT id, xmin::text AS tx FROM s3outbox.documents WHERE id = ANY(%s)",
        ([*good, other.document.id],),
    )
    by_id = {r["id"]: r["tx"] for r in transactions}
    assert len({by_id[d] for d in good}) == 1, transactions
    assert by_id[other.document.id] != by_id[good[0]]
    assert doc_row(settings, other.document.id)["status"] == DocumentStatus.REJECTED
    assert doc_row(settings, never)["status"] == DocumentStatus.UPLOADED
    for i, doc_id in enumerate(good):
        doc = doc_row(settings, doc_id)
        assert (doc["status"], doc["charged_bytes"]) == (DocumentStatus.AVAILABLE, len(bodies[i]))
    assert_quota(settings, "carol", len(bodies[0]) + len(bodies[3]), 0)
    assert_quota(settings, "dave", len(bodies[1]) + len(bodies[4]), 1300)
    assert_quota(settings, "erin", len(bodies[2]) + len(bodies[5]), 0)
    # Delivered again: every event is finished, or (snoozed) on a later attempt.
    assert processor.process_many(items) == [Outcome.SKIPPED] * 8


def test_a_packed_accept_that_fails_leaves_each_event_to_its_own_path(
    outbox: Outbox, conn: Conn, make_settings: Any, settings: Settings, relay: Relay
):
    """A web request holds one owner's quota row: the packed message's one statement gives
    up after db_lock_timeout_seconds and changes nothing; then each event takes its own
    path: that owner's fails and is retried, the others are accepted."""
    bounded = make_settings(db_lock_timeout_seconds=0.3)
    alice = upload(outbox, conn, "alice", body_of(1500)).document.id
    bob = [upload(outbox, conn, "bob", body_of(1600 + i)).document.id for i in range(2)]
    assert relay.run_once() == 3
    items = as_packed(relay)
    events = {e["document_id"]: e["id"] for e in query_verify_events(settings)}
    pool = make_pool(bounded, max_size=2)
    try:
        processor = EventProcessor(bounded, pool, Storage(bounded))
        with psycopg.connect(settings.database_url) as app:
            app.execute("SELECT 1 FROM s3outbox.quotas WHERE owner_id = 'alice' FOR UPDATE")
            run = Background(lambda: processor.process_many(items))
            outcomes = dict(zip((i[0] for i in items), run.join(timeout=30), strict=True))
            app.rollback()
    finally:
        pool.close()
    assert outcomes[events[alice]] == Outcome.RETRY
    assert [outcomes[events[d]] for d in bob] == [Outcome.DONE, Outcome.DONE]
    (event,) = events_of(settings, alice)
    assert (event["status"], event["failures"]) == ("pending", 1)
    assert doc_row(settings, alice)["status"] == DocumentStatus.UPLOADED
    assert all(doc_row(settings, d)["status"] == DocumentStatus.AVAILABLE for d in bob)
    assert_quota(settings, "alice", 0, 1500)


def test_an_event_twice_in_a_packed_message_is_done_once(
    outbox: Outbox, conn: Conn, settings: Settings, relay: Relay, processor: EventProcessor
):
    """A message that names one event twice (forged, or a relay bug): its document is
    accepted and charged once, the event reported done once and skipped the second time."""
    bodies = [body_of(1900 + i) for i in range(2)]
    docs = [upload(outbox, conn, "alice", b).document.id for b in bodies]
    assert relay.run_once() == 2
    first, second = as_packed(relay)
    assert processor.process_many([first, second, first]) == [
        Outcome.DONE,
        Outcome.DONE,
        Outcome.SKIPPED,
    ]
    assert all(doc_row(settings, d)["status"] == DocumentStatus.AVAILABLE for d in docs)
    assert_quota(settings, "alice", sum(len(b) for b in bodies), 0)


def test_two_packed_messages_lock_their_owners_in_one_order(
    outbox: Outbox, conn: Conn, settings: Settings, relay: Relay, processor: EventProcessor
):
    """Message 1 holds owner a's then b's events, message 2 b's then a's (by event id). Each
    statement takes its documents in the order of their owners, so while the first waits
    (on a blob row another transaction holds) after locking a's quota row, the second
    waits for that row instead of locking b's: once the blob is released, both end in
    one transaction each (in event-id order the second held b, the first then waited for
    it, a deadlock: one statement rolled back, its events accepted one by one)."""
    docs = [upload(outbox, conn, o, body_of(1700 + i)).document.id for i, o in enumerate("abba")]
    assert relay.run_once() == 4
    items = {i[0]: i for i in as_packed(relay)}
    events = {e["document_id"]: e["id"] for e in query_verify_events(settings)}
    first = [items[events[docs[0]]], items[events[docs[1]]]]
    second = [items[events[docs[2]]], items[events[docs[3]]]]
    key = doc_row(settings, docs[0])["object_key"]
    with psycopg.connect(settings.database_url) as app:
        app.execute("SELECT 1 FROM s3outbox.blobs WHERE object_key = %s FOR UPDATE", (key,))
        one = Background(lambda: processor.process_many(first))
        wait_blocked(settings, ACCEPT_VERIFIED_MANY_SQL)
        two = Background(lambda: processor.process_many(second))
        wait_blocked(settings, ACCEPT_VERIFIED_MANY_SQL, count=2)
        app.rollback()
    assert one.join(timeout=30) == [Outcome.DONE] * 2
    assert two.join(timeout=30) == [Outcome.DONE] * 2
    rows = query(
        settings, "SELECT id, xmin::text AS tx FROM s3outbox.documents WHERE id = ANY(%s)", (docs,)
    )
    tx = {r["id"]: r["tx"] for r in rows}
    assert tx[docs[0]] == tx[docs[1]] != tx[docs[2]] == tx[docs[3]], rows
    assert_quota(settings, "a", len(body_of(1700)) + len(body_of(1703)), 0)


def query_verify_events(settings: Settings) -> list[dict[str, Any]]:
    from tests.support.worker import query

    return query(settings, "SELECT id, document_id FROM s3outbox.events WHERE topic = 'verify'")


@pytest.mark.parametrize(
    ("size", "reason"),
    [(0, "sha256 mismatch"), (-700, "size mismatch"), (900, "size mismatch")],
    ids=["same-length", "shorter", "longer"],
)
def test_verify_rejects_object_replaced_behind_our_back(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    inline_worker: InlineWorker,
    size: int,
    reason: str,
):
    body = body_of(2000)
    ticket = upload(outbox, conn, "alice", body, confirm=False)
    key = ticket.document.object_key
    assert blob_exists(settings, key)
    replaced = body_of(len(body) + size)
    s3_client(settings).put_object(
        Bucket=settings.s3_bucket, Key=key, Body=replaced, ContentType="application/pdf"
    )
    confirm(outbox, conn, "alice", ticket.document.id)
    assert quota_row(settings, "alice")["reserved_bytes"] == len(body)

    inline_worker.drain()
    doc = doc_row(settings, ticket.document.id)
    assert doc["status"] == DocumentStatus.REJECTED
    assert doc["reason"] and doc["reason"].startswith(reason), doc["reason"]
    assert doc["verified_size"] == len(replaced)
    assert_quota(settings, "alice", 0, 0)
    assert [e["status"] for e in events_of(settings, doc["id"], "purge")][:1] == ["done"]
    assert not blob_exists(settings, key)
    assert doc_row(settings, doc["id"])["purged_at"] is not None


def test_verify_rejects_replaced_object_with_its_own_valid_checksum(
    outbox: Outbox, conn: Conn, settings: Settings, inline_worker: InlineWorker
):
    """The replacement carries a correct checksum of ITS bytes: still not what was declared."""
    import base64
    import hashlib

    body = body_of(1200)
    ticket = upload(outbox, conn, "alice", body, confirm=False)
    other = body_of(1200)
    s3_client(settings).put_object(
        Bucket=settings.s3_bucket,
        Key=ticket.document.object_key,
        Body=other,
        ContentType="application/pdf",
        ChecksumSHA256=base64.b64encode(hashlib.sha256(other).digest()).decode(),
    )
    confirm(outbox, conn, "alice", ticket.document.id)
    inline_worker.drain()
    doc = doc_row(settings, ticket.document.id)
    assert doc["status"] == DocumentStatus.REJECTED
    assert "sha256 mismatch" in doc["reason"]
    assert not blob_exists(settings, ticket.document.object_key)
    assert_quota(settings, "alice", 0, 0)


def test_verify_rejects_wrong_content_type(
    outbox: Outbox, conn: Conn, settings: Settings, inline_worker: InlineWorker
):
    body = body_of(1000)
    ticket = upload(outbox, conn, "alice", body, confirm=False)
    # Same bytes (same size and hash), but stored as another type.
    s3_client(settings).put_object(
        Bucket=settings.s3_bucket,
        Key=ticket.document.object_key,
        Body=body,
        ContentType="text/html",
    )
    confirm(outbox, conn, "alice", ticket.document.id)
    inline_worker.drain()
    doc = doc_row(settings, ticket.document.id)
    assert doc["status"] == DocumentStatus.REJECTED
    assert "content type" in doc["reason"]
    assert_quota(settings, "alice", 0, 0)


def test_verify_missing_object_snoozes_then_rejects_after_deadline(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    relay: Relay,
    processor: EventProcessor,
    inline_worker: InlineWorker,
):
    body = body_of(1800)
    ticket = request(outbox, conn, "alice", body)
    confirm(outbox, conn, "alice", ticket.document.id)
    confirmed_at = doc_row(settings, ticket.document.id)["confirmed_at"]

    relay.run_once()
    event_id, attempt = only_dispatched(settings, "verify")
    early = after(confirmed_at, 1)
    assert processor.process(event_id, attempt, now=early) == Outcome.SNOOZED
    (event,) = events_of(settings, ticket.document.id)
    assert event["status"] == "pending"
    assert event["failures"] == 0
    assert early < event["available_at"] <= after(confirmed_at, settings.verify_deadline_seconds)
    assert "not visible" in (event["last_error"] or "")
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.UPLOADED
    # A late copy of the snoozed attempt cannot snooze it again or finish it.
    assert processor.process(event_id, attempt, now=early) != Outcome.DONE

    late = after(confirmed_at, settings.verify_deadline_seconds + 5)
    outcomes = drain_at(settings, relay, processor, late)
    assert Outcome.DONE in outcomes
    doc = doc_row(settings, ticket.document.id)
    assert doc["status"] == DocumentStatus.REJECTED
    assert "not found" in doc["reason"]
    assert_quota(settings, "alice", 0, 0)
    verify = events_of(settings, ticket.document.id, "verify")
    assert [(e["status"], e["failures"]) for e in verify] == [("done", 0)]
    assert [e["status"] for e in events_of(settings, doc["id"], "purge")][:1] == ["done"]

    # The client PUTs after the rejection with its still-valid URL: the follow-up purge
    # (after the URL expires and the longest upload) removes it.
    assert put(ticket, body).status_code == 200
    assert blob_exists(settings, ticket.document.object_key)
    landing = settings.max_upload_seconds + settings.purge_grace_seconds
    drain_at(settings, relay, processor, after(doc["upload_expires_at"], landing + 1))
    assert not blob_exists(settings, ticket.document.object_key)


def test_a_verify_held_back_past_the_deadline_still_gives_the_store_its_time(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    relay: Relay,
    processor: EventProcessor,
):
    """A backlog (or an outage) holds the first attempt back until after the verify
    deadline, and that attempt gets a stale 404 (the store shows the object late): the
    document is not rejected for it. The deadline counts from the first attempt that found
    the object missing; the object shows up within it and the document becomes available.
    Time is driven with ``now=``."""
    body = body_of(2345)
    ticket = request(outbox, conn, "alice", body)
    confirm(outbox, conn, "alice", ticket.document.id)
    confirmed_at = doc_row(settings, ticket.document.id)["confirmed_at"]
    first_look = after(confirmed_at, settings.verify_deadline_seconds + 600)

    assert relay.run_once(now=first_look) == 1
    event_id, attempt = only_dispatched(settings, "verify")
    assert processor.process(event_id, attempt, now=first_look) == Outcome.SNOOZED
    (event,) = events_of(settings, ticket.document.id)
    assert event["missing_since"] == first_look
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.UPLOADED

    # Still missing on the next attempt: snoozed again, the first look's time kept.
    second_look = event["available_at"]
    assert drain_at(settings, relay, processor, second_look) == [Outcome.SNOOZED]
    (event,) = events_of(settings, ticket.document.id)
    assert event["missing_since"] == first_look

    assert put(ticket, body).status_code == 200
    assert drain_at(settings, relay, processor, event["available_at"]) == [Outcome.DONE]
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.AVAILABLE
    assert_quota(settings, "alice", len(body), 0)


def test_verify_eventually_consistent_put_after_confirm(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    relay: Relay,
    processor: EventProcessor,
):
    """The confirm arrives before the object is visible (a store that is only eventually
    consistent, or a client that confirms too early): the verify snoozes; the object comes,
    and the next attempt, still before the verify deadline, makes the document available.
    Time is driven with ``now=``: nothing depends on how fast the test runs."""
    body = body_of(2222)
    ticket = request(outbox, conn, "alice", body)
    confirm(outbox, conn, "alice", ticket.document.id)
    confirmed_at = doc_row(settings, ticket.document.id)["confirmed_at"]
    deadline = after(confirmed_at, settings.verify_deadline_seconds)

    early = after(confirmed_at, 1)
    assert relay.run_once(now=early) == 1
    event_id, attempt = only_dispatched(settings, "verify")
    assert processor.process(event_id, attempt, now=early) == Outcome.SNOOZED
    (event,) = events_of(settings, ticket.document.id)
    retry_at = event["available_at"]
    assert early < retry_at < deadline
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.UPLOADED

    assert put(ticket, body).status_code == 200
    assert relay.run_once(now=early) == 0  # the snoozed event is not due yet
    assert drain_at(settings, relay, processor, retry_at) == [Outcome.DONE]
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.AVAILABLE
    (event,) = events_of(settings, ticket.document.id)
    assert (event["status"], event["attempts"], event["failures"]) == ("done", 2, 0)
    assert_quota(settings, "alice", len(body), 0)


def test_a_relay_driven_with_now_rescues_by_that_clock(
    outbox: Outbox, conn: Conn, make_settings: Any
):
    """A relay called with ``now=`` decides when its next rescue is due by that clock, not
    by the real one: a stale event waits until the rescue interval (a quarter of
    ``redispatch_after_seconds``) has passed since the last rescue, in ``now`` time."""
    slow = make_settings(redispatch_after_seconds=40.0)  # stale after 40 s; rescues every 10 s
    ticket = upload(outbox, conn, "alice", body_of(1500))
    relay = Relay(slow)
    try:
        t0 = db_now(slow)
        assert relay.run_once(now=t0) == 1  # sent; this first round also rescued (nothing)
        lose_messages(slow)  # so a rescue has something to send again

        def event() -> tuple[str, int, int]:
            (row,) = events_of(slow, ticket.document.id)
            return row["status"], row["attempts"], row["rescues"]

        assert relay.rescue(now=after(t0, 35)) == 0  # not stale yet: the last rescue is t0+35
        relay.run_once(now=after(t0, 41))  # stale, but 6 s after the last rescue
        assert event() == ("dispatched", 1, 0)
        relay.run_once(now=after(t0, 46))  # 11 s after it: rescued
        assert event() == ("pending", 1, 1)
        assert relay.run_once(now=after(t0, 46)) == 1  # and sent again
        assert event() == ("dispatched", 2, 1)
    finally:
        relay.close()


# -- deletes -----------------------------------------------------------------------------


def test_delete_while_verify_in_flight(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    relay: Relay,
    processor: EventProcessor,
    inline_worker: InlineWorker,
):
    """The verify handler has seen the (matching) object and waits for its locks; the delete
    commits meanwhile. The verify must change nothing; the purge finishes the delete."""
    body = body_of(3300)
    ticket = upload(outbox, conn, "alice", body)
    relay.run_once()
    event_id, attempt = only_dispatched(settings, "verify")
    hint = relay_hint(relay, event_id)

    # The worker started its attempt; its HEAD is done (the object matches) and it waits for
    # the event lock in its accepting statement.
    (event,) = lifecycle.start(processor.pool, settings, [(event_id, attempt)], None).values()
    with row_locked(settings, "events", event_id) as holder:
        run = Background(
            lambda: processor.handle_started(event, event_id, attempt, None, hint, 0.0)
        )
        wait_blocked(settings, ACCEPT_VERIFIED_SQL)
        outbox.delete(conn, owner_id="alice", document_id=ticket.document.id)
        conn.commit()
        holder.rollback()
        assert run.join() == Outcome.DONE

    doc = doc_row(settings, ticket.document.id)
    assert doc["status"] == DocumentStatus.DELETING
    assert doc["charged_bytes"] == 0
    assert_quota(settings, "alice", 0, 0)
    assert blob_exists(settings, ticket.document.object_key)  # not before the purge

    inline_worker.drain()
    doc = doc_row(settings, ticket.document.id)
    assert doc["status"] == DocumentStatus.DELETED
    assert not blob_exists(settings, ticket.document.object_key)
    assert_quota(settings, "alice", 0, 0)


def test_delete_pending_upload_releases_reservation(
    outbox: Outbox, conn: Conn, settings: Settings, inline_worker: InlineWorker
):
    body = body_of(5000)
    ticket = request(outbox, conn, "alice", body)
    assert_quota(settings, "alice", 0, len(body))
    outbox.delete(conn, owner_id="alice", document_id=ticket.document.id)
    conn.commit()
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.DELETING
    assert_quota(settings, "alice", 0, 0)
    inline_worker.drain()
    doc = doc_row(settings, ticket.document.id)
    assert doc["status"] == DocumentStatus.DELETED
    assert doc["purged_at"] is not None
    assert_quota(settings, "alice", 0, 0)


def test_late_put_after_delete_is_purged_after_url_expiry(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    relay: Relay,
    processor: EventProcessor,
    inline_worker: InlineWorker,
):
    body = body_of(2048)
    ticket = request(outbox, conn, "alice", body)
    key = ticket.document.object_key
    outbox.delete(conn, owner_id="alice", document_id=ticket.document.id)
    conn.commit()
    inline_worker.drain()
    doc = doc_row(settings, ticket.document.id)
    assert doc["status"] == DocumentStatus.DELETED

    # The client still holds a valid URL and uploads after the delete.
    assert put(ticket, body).status_code == 200
    assert blob_exists(settings, key)

    recheck = after(
        doc["upload_expires_at"], settings.max_upload_seconds + settings.purge_grace_seconds
    )
    # Before the follow-up is due nothing touches the late blob...
    drain_at(settings, relay, processor, recheck - timedelta(seconds=1))
    assert blob_exists(settings, key)
    # ...and after it, the follow-up purge removes it, without queueing another one.
    outcomes = drain_at(settings, relay, processor, recheck + timedelta(seconds=1))
    assert outcomes == [Outcome.DONE]
    assert not blob_exists(settings, key)
    assert doc_row(settings, doc["id"])["status"] == DocumentStatus.DELETED
    purges = events_of(settings, doc["id"], "purge")
    assert [p["status"] for p in purges] == ["done", "done"]
    assert_quota(settings, "alice", 0, 0)


# -- sweeper -----------------------------------------------------------------------------


@pytest.fixture
def sweeper(settings: Settings):
    s = Sweeper(settings)
    yield s
    s.close()


def test_lost_confirm_ends_available(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    sweeper: Sweeper,
    relay: Relay,
    processor: EventProcessor,
):
    body = body_of(3100)
    ticket = upload(outbox, conn, "alice", body, confirm=False)
    expires = doc_row(settings, ticket.document.id)["upload_expires_at"]
    grace = settings.purge_grace_seconds

    assert sweeper.run_job("expire_abandoned", now=after(expires, grace - 0.5)) == 0
    now = after(expires, grace + 1)
    assert sweeper.run_job("expire_abandoned", now=now) == 1
    assert sweeper.run_job("expire_abandoned", now=now) == 0  # one expire event only
    drain_at(settings, relay, processor, now)

    doc = doc_row(settings, ticket.document.id)
    assert doc["status"] == DocumentStatus.AVAILABLE
    assert doc["verified_size"] == len(body)
    assert_quota(settings, "alice", len(body), 0)
    assert blob_exists(settings, ticket.document.object_key)
    assert [e["status"] for e in events_of(settings, doc["id"])] == ["done"]


def test_abandoned_upload_expires(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    sweeper: Sweeper,
    relay: Relay,
    processor: EventProcessor,
):
    body = body_of(4000)
    ticket = request(outbox, conn, "alice", body)
    assert_quota(settings, "alice", 0, len(body))
    expires = doc_row(settings, ticket.document.id)["upload_expires_at"]
    now = after(expires, settings.purge_grace_seconds + 1)
    assert sweeper.run_job("expire_abandoned", now=now) == 1
    drain_at(settings, relay, processor, now)
    doc = doc_row(settings, ticket.document.id)
    assert doc["status"] == DocumentStatus.EXPIRED
    assert "no object" in doc["reason"]
    assert_quota(settings, "alice", 0, 0)


def test_abandoned_upload_with_wrong_object_expires_and_is_purged(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    sweeper: Sweeper,
    relay: Relay,
    processor: EventProcessor,
):
    body = body_of(4000)
    ticket = request(outbox, conn, "alice", body)
    key = ticket.document.object_key
    s3_client(settings).put_object(
        Bucket=settings.s3_bucket, Key=key, Body=body_of(3999), ContentType="application/pdf"
    )
    expires = doc_row(settings, ticket.document.id)["upload_expires_at"]
    now = after(expires, settings.purge_grace_seconds + 1)
    assert sweeper.run_job("expire_abandoned", now=now) == 1
    drain_at(settings, relay, processor, now)
    doc = doc_row(settings, ticket.document.id)
    assert doc["status"] == DocumentStatus.EXPIRED
    assert "size mismatch" in doc["reason"]
    assert not blob_exists(settings, key)
    assert_quota(settings, "alice", 0, 0)
    # The purge, and its re-check for a PUT that started before the URL expired.
    events = [(e["topic"], e["status"]) for e in events_of(settings, doc["id"])]
    assert events == [("expire", "done"), ("purge", "done"), ("purge", "pending")]


def test_expire_skips_upload_whose_url_was_refreshed(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    sweeper: Sweeper,
    relay: Relay,
    processor: EventProcessor,
):
    """The sweeper queued an expire, then the client asked again for the same content and
    got a fresh URL: the expire must leave the upload pending."""
    body = body_of(1000)
    ticket = request(outbox, conn, "alice", body)
    expires = doc_row(settings, ticket.document.id)["upload_expires_at"]
    now = after(expires, settings.purge_grace_seconds + 1)
    assert sweeper.run_job("expire_abandoned", now=now) == 1
    again = request(outbox, conn, "alice", body, now=now)
    assert again.document.id == ticket.document.id and again.url
    drain_at(settings, relay, processor, now)
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.PENDING
    assert_quota(settings, "alice", 0, len(body))


def test_prune_done_removes_only_old_done_events(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    sweeper: Sweeper,
    relay: Relay,
    processor: EventProcessor,
    inline_worker: InlineWorker,
):
    old = upload(outbox, conn, "alice", body_of(1000))
    inline_worker.drain()  # its verify event finishes now
    t0 = db_now(settings)
    newer = upload(outbox, conn, "alice", body_of(1001))
    drain_at(settings, relay, processor, after(t0, 2 * 86400))  # finishes two days later
    waiting = request(outbox, conn, "alice", body_of(1002))
    confirm(outbox, conn, "alice", waiting.document.id)  # a pending verify event

    retention = settings.done_retention_seconds
    assert sweeper.run_job("prune_done", now=after(t0, retention - 60)) == 0
    assert sweeper.run_job("prune_done", now=after(t0, retention + 60)) == 1
    assert events_of(settings, old.document.id) == []
    assert [e["status"] for e in events_of(settings, newer.document.id)] == ["done"]
    assert [e["status"] for e in events_of(settings, waiting.document.id)] == ["pending"]
    # Pending and dispatched events are never pruned, however old.
    relay.run_once()
    far = after(t0, 10 * retention)
    assert sweeper.run_job("prune_done", now=far) == 1
    assert [e["status"] for e in events_of(settings, waiting.document.id)] == ["dispatched"]


def test_rescue_stale_returns_dispatched_events_to_pending(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    sweeper: Sweeper,
    relay: Relay,
    processor: EventProcessor,
):
    ticket = upload(outbox, conn, "alice", body_of(1000))
    relay.run_once()
    event_id, attempt = only_dispatched(settings, "verify")
    (event,) = events_of(settings, ticket.document.id)
    stale_after = settings.redispatch_after_seconds
    later = after(event["dispatched_at"], stale_after + 1)
    # Still waiting in Redis (no worker took it): waiting is not lost, however long.
    assert sweeper.run_job("rescue_stale", now=after(later, 3600)) == 0
    lose_messages(settings)  # Redis restarted empty
    assert sweeper.run_job("rescue_stale", now=after(event["dispatched_at"], stale_after - 1)) == 0
    assert sweeper.run_job("rescue_stale", now=later) == 1
    (event,) = events_of(settings, ticket.document.id)
    assert (event["status"], event["attempts"], event["failures"]) == ("pending", 1, 0)
    assert event["available_at"] == later
    relay.run_once(now=later)
    assert only_dispatched(settings, "verify") == (event_id, attempt + 1)
    assert processor.process(event_id, attempt + 1, now=later) == Outcome.DONE
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.AVAILABLE


def test_an_event_whose_worker_dies_every_time_ends_dead(
    outbox: Outbox, conn: Conn, make_settings: Any, settings: Settings, relay: Relay
):
    """A worker starts the attempt and dies (SIGKILL, out of memory) before recording an
    outcome, every time: each start of an event still marked running counts as a failed
    attempt, and after max_failures of them the event is dead (never from a rescue)."""
    few = make_settings(max_failures=3)
    sweeper = Sweeper(few)
    pool = make_pool(few, max_size=2)
    try:
        ticket = upload(outbox, conn, "alice", body_of(1000))
        now = db_now(settings)
        for _ in range(3):
            relay.run_once(now=now)
            event_id, attempt = only_dispatched(settings, "verify")
            # The worker starts the attempt, then dies: nothing else is recorded.
            assert lifecycle.start(pool, few, [(event_id, attempt)], now)
            now = after(now, settings.redispatch_after_seconds + 1)
            sweeper.run_job("rescue_stale", now=now)
        relay.run_once(now=now)
        event_id, attempt = only_dispatched(settings, "verify")
        started = lifecycle.start(pool, few, [(event_id, attempt)], now)
        (event,) = events_of(settings, ticket.document.id)
        assert started[event_id]["status"] == "dead"
        assert (event["status"], event["failures"], event["rescues"]) == ("dead", 3, 3)
        assert "died before it finished" in event["last_error"]
    finally:
        sweeper.close()
        pool.close()


# -- failures ----------------------------------------------------------------------------

SECRET = "Sekr3t-" + os.urandom(8).hex()


@pytest.fixture
def refused_processor(make_settings: Any, settings: Settings):
    """A processor whose storage credentials are wrong: storage refuses every call (403)."""
    bad = make_settings(s3_secret_access_key=SECRET, max_failures=3)
    pool = make_pool(bad, max_size=2)
    yield EventProcessor(bad, pool, Storage(bad))
    pool.close()


@pytest.mark.parametrize("topic", ["verify", "purge"])
def test_storage_refusing_our_credentials_postpones_and_never_kills_the_event(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    relay: Relay,
    refused_processor: EventProcessor,
    inline_worker: InlineWorker,
    topic: str,
):
    """Credentials rotated wrongly, for longer than max_failures attempts: every attempt is
    postponed with a growing backoff, no failure is charged, nothing leaks a secret, and once
    storage takes our credentials again the event finishes."""
    body = body_of(1500)
    ticket = upload(outbox, conn, "alice", body)
    if topic == "purge":
        inline_worker.drain()
        outbox.delete(conn, owner_id="alice", document_id=ticket.document.id)
        conn.commit()
    doc_id = ticket.document.id
    now = db_now(settings)
    delays = []
    for _ in range(3 * refused_processor.settings.max_failures):
        relay.run_once(now=now)
        event_id, attempt = only_dispatched(settings, topic)
        assert refused_processor.process(event_id, attempt, now=now) == Outcome.POSTPONED
        (event,) = events_of(settings, doc_id, topic)
        assert (event["status"], event["failures"], event["running"]) == ("pending", 0, False)
        assert "access_denied" in event["last_error"]
        assert SECRET not in event["last_error"]
        assert "X-Amz-Signature=" not in event["last_error"]
        # A stale copy of the postponed attempt stops at the start.
        assert refused_processor.process(event_id, attempt, now=now) == Outcome.SKIPPED
        delays.append((event["available_at"] - now).total_seconds())
        now = event["available_at"]
    assert delays[-1] > delays[0]  # the backoff grows (up to retry_max_seconds)
    # The document did not move while storage refused us.
    expected = DocumentStatus.UPLOADED if topic == "verify" else DocumentStatus.DELETING
    assert doc_row(settings, doc_id)["status"] == expected

    # Storage takes the real credentials again.
    drain_at(settings, relay, inline_worker.processor, now)
    doc = doc_row(settings, doc_id)
    if topic == "verify":
        assert doc["status"] == DocumentStatus.AVAILABLE
        assert_quota(settings, "alice", len(body), 0)
    else:
        assert doc["status"] == DocumentStatus.DELETED
        assert not blob_exists(settings, ticket.document.object_key)
        assert_quota(settings, "alice", 0, 0)
    assert events_of(settings, doc_id, topic)[0]["status"] == "done"


def test_a_failing_event_retries_with_backoff_then_dead_then_cli_retry(
    make_settings: Any, settings: Settings, relay: Relay
):
    """An attempt that fails because of the event itself (here a purge naming a key outside
    the prefix, which the actor refuses) is retried with backoff, then dead; `s3-outbox events
    retry --dead` sends it back."""
    few = make_settings(max_failures=3)
    pool = make_pool(few, max_size=2)
    processor = EventProcessor(few, pool, Storage(few))
    doc_id = uuid.uuid4()
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        c.execute(
            "INSERT INTO s3outbox.events (topic, document_id, object_key) VALUES (%s, %s, %s)",
            (Topic.PURGE.value, doc_id, f"elsewhere/{doc_id}"),
        )
    try:
        now = db_now(settings)
        for failures in range(1, few.max_failures + 1):
            relay.run_once(now=now)
            event_id, attempt = only_dispatched(settings, "purge")
            outcome = processor.process(event_id, attempt, now=now)
            (event,) = events_of(settings, doc_id, "purge")
            assert event["failures"] == failures
            assert "refusing to purge" in event["last_error"]
            if failures < few.max_failures:
                assert outcome == Outcome.RETRY
                assert event["status"] == "pending"
                assert event["available_at"] > now
                # A stale copy of the failed attempt cannot count a second failure.
                assert processor.process(event_id, attempt, now=now) == Outcome.SKIPPED
                assert events_of(settings, doc_id, "purge")[0]["failures"] == failures
                now = event["available_at"]
            else:
                assert outcome == Outcome.DEAD
                assert event["status"] == "dead"
                assert event["finished_at"] is not None
    finally:
        pool.close()
    # Nothing picks up a dead event.
    assert relay.run_once(now=after(now, 3600)) == 0

    env = {k: v for k, v in os.environ.items() if not k.startswith("S3OUTBOX_")}
    env.update(settings_env(settings))
    env["PYTHONPATH"] = str(ROOT)
    cli = subprocess.run(
        [sys.executable, "-m", "worker.cli", "events", "retry", "--dead"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert "1 events back to pending" in cli.stdout
    retried = events_of(settings, doc_id, "purge")[0]
    # attempts is not reset: a message still in flight from before cannot pass for a new one.
    assert (retried["status"], retried["failures"], retried["rescues"]) == ("pending", 0, 0)
    assert retried["finished_at"] is None


def test_a_missing_bucket_is_postponed_not_a_missing_object(
    outbox: Outbox, conn: Conn, make_settings: Any, settings: Settings, relay: Relay
):
    """Workers pointed at a wrong bucket must not reject good uploads as "not found", and a
    configuration error is not the event's failure: it is postponed, with no failure charged,
    until the operator fixes it."""
    ticket = upload(outbox, conn, "alice", body_of(700))
    wrong = make_settings(s3_bucket="no-such-bucket-" + uuid.uuid4().hex[:8])
    pool = make_pool(wrong, max_size=2)
    try:
        relay.run_once()
        ((event_id, attempt),) = dispatched_events(settings, "verify")
        outcome = EventProcessor(wrong, pool, Storage(wrong)).process(event_id, attempt)
    finally:
        pool.close()
    assert outcome == Outcome.POSTPONED
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.UPLOADED
    (event,) = events_of(settings, ticket.document.id, "verify")
    assert "BucketMissing" in event["last_error"]
    assert (event["status"], event["failures"], event["running"]) == ("pending", 0, False)


def test_relay_pipeline_stores_messages_as_dramatiq_enqueue(relay: Relay) -> None:
    """The relay's one-pipeline send stores each message exactly as RedisBroker.enqueue, and
    the bodies it encodes without Message objects are what Message.encode gives."""
    from dramatiq import Message
    from dramatiq.common import current_millis

    broker: Any = relay.broker
    queue = f"pipeline-test-{uuid.uuid4().hex[:8]}"
    key = f"{broker.namespace}:{queue}"
    mine = Relay(relay.settings.model_copy(update={"queue_name": queue}), broker)
    stamp = current_millis()

    def message(i: int, options: dict[str, Any], **ids: Any) -> Message[Any]:
        return Message(
            queue_name=queue, actor_name="a", args=(i, 0), kwargs={}, options=options, **ids
        )

    try:
        theirs = broker.enqueue(message(0, {}))
        ids = [str(uuid.uuid4()) for _ in (1, 2, 3)]
        bodies = [
            mine._body("a", [i, 0], {}, mid, stamp) for i, mid in zip((1, 2, 3), ids, strict=True)
        ]
        encoded = [Message(**body).encode() for body in bodies]
        mine._send(list(zip(ids, encoded, strict=True)))
        for i, (mid, body) in enumerate(zip(ids, encoded, strict=True), 1):
            expected = message(
                i, {"redis_message_id": mid}, message_id=mid, message_timestamp=stamp
            ).encode()
            assert body == expected
        queued = [i.decode() for i in broker.client.lrange(key, 0, -1)]
        assert queued == [theirs.options["redis_message_id"], *ids]
        stored = broker.client.hgetall(f"{key}.msgs")
        assert stored[theirs.options["redis_message_id"].encode()] == theirs.encode()
        for mid, body in zip(ids, encoded, strict=True):
            assert stored[mid.encode()] == body
        shape = Message.decode(stored[queued[0].encode()]).asdict()
        ours = Message.decode(stored[queued[1].encode()]).asdict()
        assert set(ours) == set(shape)
        assert set(ours["options"]) == set(shape["options"]) == {"redis_message_id"}
    finally:
        broker.client.delete(key, f"{key}.msgs")


def test_pool_check_reconnects_after_backend_terminated(settings: Settings) -> None:
    """The quiet-socket check still catches a connection the server closed: the next
    checkout gets a working connection, not an error."""
    pool = make_pool(settings, max_size=1)
    try:
        with pool.connection() as c:
            pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        with psycopg.connect(settings.database_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_for(lambda: _socket_readable(pool), timeout=5)
        with pool.connection() as c:
            new_pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        assert new_pid != pid
    finally:
        pool.close()


def _socket_readable(pool: Any) -> bool:
    import select

    conn = pool._pool[0]
    return bool(select.select([conn.fileno()], [], [], 0)[0])


# -- verify: a quota that cannot take the upload -----------------------------------------------


@pytest.mark.parametrize("hinted", [True, False], ids=["relay-hint", "general-path"])
def test_verify_the_quota_cannot_take_is_rejected_over_quota_and_purged(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    relay: Relay,
    processor: EventProcessor,
    inline_worker: InlineWorker,
    hinted: bool,
):
    """No API path makes a verify's charge fail: a matching object has the declared size, the
    document reserved exactly that, and invariant 4 is a CHECK (set_limit, even raw SQL,
    cannot put the limit below used + reserved). So the state is planted with SQL, books kept
    consistent: A's reservation shrunk to 1,000 of its 3,000 bytes (the quota row with it)
    and the owner's limit lowered to 2,500, which used + reserved (2,000) still fits. Only
    the verify's charge can see that A does not: rejected "over quota", the 1,000 it held
    released, its blob purged; B, whose reservation is whole, is verified as usual."""
    a = upload(outbox, conn, "alice", body_of(3000))
    b = upload(outbox, conn, "alice", body_of(1000))
    assert_quota(settings, "alice", 0, 4000)
    query(
        settings,
        "UPDATE s3outbox.documents SET reserved_bytes = 1000 WHERE id = %s",
        (a.document.id,),
    )
    query(
        settings,
        "UPDATE s3outbox.quotas SET reserved_bytes = 2000, limit_bytes = 2500"
        " WHERE owner_id = 'alice'",
    )
    relay.run_once()
    (verify_a,) = events_of(settings, a.document.id, "verify")
    hint = relay_hint(relay, verify_a["id"]) if hinted else None
    assert processor.process(verify_a["id"], verify_a["attempts"], hint=hint) == Outcome.DONE

    doc = doc_row(settings, a.document.id)
    assert (doc["status"], doc["reason"]) == (DocumentStatus.REJECTED, "over quota")
    assert (doc["reserved_bytes"], doc["charged_bytes"]) == (0, 0)
    assert_quota(settings, "alice", 0, 1000)  # B's reservation, nothing of A's
    (purge,) = events_of(settings, a.document.id, "purge")
    assert purge["status"] == "pending"
    assert blob_exists(settings, a.document.object_key)  # deleted by the purge, not before

    inline_worker.drain()
    assert not blob_exists(settings, a.document.object_key)
    assert events_of(settings, a.document.id, "purge")[0]["status"] == "done"
    assert doc_row(settings, b.document.id)["status"] == DocumentStatus.AVAILABLE
    assert blob_exists(settings, b.document.object_key)
    assert_quota(settings, "alice", 1000, 0)
    assert quota_row(settings, "alice")["limit_bytes"] == 2500


# -- the relay wakes on NOTIFY -----------------------------------------------------------------


class WatchedRelay(Relay):
    """A relay that says when ``wait`` has chosen how long to sleep and starts listening."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.listening = threading.Event()
        self._in_wait = False

    def wait(self, stop: Any) -> None:
        self._in_wait = True
        try:
            super().wait(stop)
        finally:
            self._in_wait = False

    def _listener(self) -> Any:
        listen = super()._listener()
        if self._in_wait:
            self.listening.set()
        return listen


def test_a_commit_wakes_the_waiting_relay_long_before_its_poll(
    outbox: Outbox, conn: Conn, make_settings: Any, settings: Settings
):
    """With a 60 s poll and nothing due, the relay's wait would sleep 60 s: the confirm's
    commit (its NOTIFY) ends the wait at once, and the next round dispatches the event."""
    slow = make_settings(relay_poll_seconds=60.0)
    relay = WatchedRelay(slow)
    stop = threading.Event()
    try:
        assert relay.run_once() == 0
        assert query(settings, "SELECT count(*) AS n FROM s3outbox.events") == [{"n": 0}]
        waiting = Background(lambda: relay.wait(stop))
        assert relay.listening.wait(10), "the relay never started listening"
        ticket = upload(outbox, conn, "alice", body_of(1200))  # the confirm commits here
        waiting.join(timeout=10)  # a sixth of the poll interval: only the NOTIFY can do this
        assert relay.run_once() == 1
        (event,) = events_of(settings, ticket.document.id, "verify")
        assert (event["status"], event["attempts"]) == ("dispatched", 1)
    finally:
        stop.set()
        query(settings, "SELECT pg_notify('s3outbox_events', '')")  # a wait still running ends
        relay.close()
