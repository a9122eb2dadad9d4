"""The relay's claim (worker/relay.py): a message reaches Redis only after its claim committed,
a failed send puts its events back to pending, and inside a backlog a pick that starts after
the last batch still finds events that became due with an older position."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
import redis

from outbox import Outbox, Settings, queries
from tests.support.worker import confirm, held_messages, request
from worker import relay as relay_module
from worker.relay import Relay

Conn = psycopg.Connection[Any]
BODY = b"%PDF-1.7\n" + b"x" * 100


def _events(settings: Settings) -> dict[int, tuple[str, int, str | None]]:
    """Every event: id -> (status, attempts, message_id)."""
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        rows = c.execute("SELECT id, status, attempts, message_id FROM s3outbox.events").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _confirmed(outbox: Outbox, conn: Conn, n: int, owner: str = "alice") -> None:
    """``n`` confirmed documents (their verify events pending); no object is needed here."""
    for i in range(n):
        ticket = request(outbox, conn, owner, BODY + str(i).encode(), filename=f"f{i}.pdf")
        confirm(outbox, conn, owner, ticket.document.id)


class WatchingRelay(Relay):
    """A relay that records, at each send, what another session sees of the events whose
    messages it is about to send."""

    seen: list[dict[str, tuple[str, int]]]

    def _send(self, messages: list[tuple[str, bytes]]) -> None:
        ids = [message_id for message_id, _ in messages]
        with psycopg.connect(self.settings.database_url, autocommit=True) as other:
            rows = other.execute(
                "SELECT message_id, status, attempts FROM s3outbox.events"
                " WHERE message_id = ANY(%s)",
                (ids,),
            ).fetchall()
        self.seen.append({r[0]: (r[1], r[2]) for r in rows})
        super()._send(messages)


def test_a_message_is_sent_only_after_its_claim_committed(
    outbox: Outbox, conn: Conn, settings: Settings
) -> None:
    """A worker that gets a message must find its event dispatched with that attempt (else
    it drops the message as a stale copy and the event waits for a rescue): at send time
    another session already sees every event of the batch dispatched with its message id."""
    _confirmed(outbox, conn, 5)
    relay = WatchingRelay(settings.model_copy(update={"relay_events_per_message": 1}))
    relay.seen = []
    try:
        assert relay.run_once() == 5
    finally:
        relay.close()
    [seen] = relay.seen
    assert len(seen) == 5
    assert set(seen.values()) == {("dispatched", 1)}
    assert set(seen) == set(held_messages(settings))


class FailingRelay(Relay):
    """Sends the first message of each batch, then Redis fails."""

    def _send(self, messages: list[tuple[str, bytes]]) -> None:
        super()._send(messages[:1])
        raise redis.ConnectionError("Redis went away mid-batch")


def test_a_failed_send_puts_the_events_back_to_pending(
    outbox: Outbox, conn: Conn, settings: Settings, relay: Relay
) -> None:
    """The claim committed, then Redis failed: the events are pending again (the one message
    that reached Redis is now a stale copy of attempt 1), and the next claim sends them."""
    one = settings.model_copy(update={"relay_events_per_message": 1})
    _confirmed(outbox, conn, 3)
    failing = FailingRelay(one)
    try:
        with pytest.raises(redis.ConnectionError):
            failing.run_once()
    finally:
        failing.close()
    after_failure = _events(settings)
    assert {status for status, _, _ in after_failure.values()} == {"pending"}
    assert {attempts for _, attempts, _ in after_failure.values()} == {1}
    assert len(held_messages(settings)) == 1  # the stale copy
    assert relay.run_once() == 3
    resent = _events(settings)
    assert {(status, attempts) for status, attempts, _ in resent.values()} == {("dispatched", 2)}
    held = held_messages(settings)
    assert {mid for _, _, mid in resent.values()} <= set(held)
    assert len(held) == 4


def test_inside_a_backlog_a_pick_starts_after_the_last_batch_and_still_finds_late_events(
    outbox: Outbox, conn: Conn, settings: Settings, make_settings: Any
) -> None:
    """A full batch makes the next pick start after it (the index entries before it belong
    to claimed events). An event that commits late with an older position (its transaction
    began before the others) is still claimed, by the batch that ends the backlog."""
    small = settings.model_copy(update={"relay_batch_size": 3, "relay_poll_seconds": 3600.0})
    late_ticket = request(outbox, conn, "bob", BODY + b"late", filename="late.pdf")
    with psycopg.connect(settings.database_url) as late:
        # Its transaction begins first (the event's position is its start), commits last.
        outbox.confirm(late, owner_id="bob", document_id=late_ticket.document.id)
        _confirmed(outbox, conn, 5)
        relay = Relay(small)
        try:
            assert relay.run_once() == 3
            assert relay._floor is not None  # a backlog: the next pick starts after this batch
            late.commit()
            # The floored pick finds 2; the backlog ends there and the same batch takes the
            # late event from the start of the index (not a poll interval later).
            batches = [relay.run_once(), relay.run_once()]
        finally:
            relay.close()
    assert batches == [3, 0]
    assert {status for status, _, _ in _events(settings).values()} == {"dispatched"}


def _backdate_pending(settings: Settings, seconds: float) -> int:
    """Moves every pending event ``seconds`` back in the pending index: what a transaction
    that began that long ago and commits now leaves (or another relay's failed send)."""
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        return c.execute(
            "UPDATE s3outbox.events SET available_at = available_at - make_interval(secs => %s)"
            " WHERE status = 'pending'",
            (seconds,),
        ).rowcount


def test_outside_a_backlog_a_pick_starts_shortly_before_the_newest_claim(
    outbox: Outbox, conn: Conn, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside a backlog a pick starts LOOKBACK before the newest event the relay claimed,
    not at the start of the pending index (whose entries of claimed events are dead, and
    under a held xmin horizon each costs a visit to the heap). An event with an older
    position waits for the next walk from the start, one poll interval later (on the
    relay's clock, driven here)."""
    clock = [1000.0]
    monkeypatch.setattr(relay_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    relay = Relay(settings.model_copy(update={"relay_poll_seconds": 60.0}))
    try:
        _confirmed(outbox, conn, 1)
        assert relay.run_once() == 1  # the first pick walks from the start
        _confirmed(outbox, conn, 1, owner="bob")
        assert _backdate_pending(settings, 3600) == 1
        _confirmed(outbox, conn, 1, owner="carol")
        clock[0] += 30
        # From shortly before the newest claim: carol's event, not bob's an hour back.
        assert relay.run_once() == 1
        assert [s for s, _, _ in _events(settings).values()].count("pending") == 1
        clock[0] += 31  # relay_poll_seconds since the last walk from the start
        assert relay.run_once() == 1
    finally:
        relay.close()


class MarkFailingRelay(Relay):
    """Its claim fails after the pick: in SQL (the mark) or in Python (encoding)."""

    fail_in: str = "sql"

    def _messages(self, rows: list[tuple[Any, ...]]) -> Any:
        if self.fail_in == "python":
            raise RuntimeError("encoding failed")
        if self.fail_in == "sql":
            self._q = {**self._q, "mark_dispatched": "SELECT 1 / 0"}
        return super()._messages(rows)


@pytest.mark.parametrize("fail_in", ["sql", "python"])
def test_a_claim_that_fails_rolls_back_and_leaves_the_connection_usable(
    outbox: Outbox, conn: Conn, settings: Settings, fail_in: str
) -> None:
    """The claim's transaction is pipelined with its BEGIN and COMMIT: a failure inside it
    rolls it back (the events stay pending, their locks released, nothing is sent) and the
    relay's connection is outside any transaction, so its next claim works."""
    _confirmed(outbox, conn, 2)
    failing = MarkFailingRelay(settings)
    failing.fail_in = fail_in
    try:
        with pytest.raises((psycopg.errors.DivisionByZero, RuntimeError)):
            failing.run_once()
        claim_conn = failing._connection()
        assert claim_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with psycopg.connect(settings.database_url, autocommit=True) as other:
            unlocked = other.execute(
                "SELECT id FROM s3outbox.events WHERE status = 'pending' FOR UPDATE SKIP LOCKED"
            ).fetchall()
        assert len(unlocked) == 2
        assert {status for status, _, _ in _events(settings).values()} == {"pending"}
        assert held_messages(settings) == {}
        failing._q = queries.load("worker", "relay.sql")
        failing.fail_in = ""
        assert failing.run_once() == 2
    finally:
        failing.close()
    assert {status for status, _, _ in _events(settings).values()} == {"dispatched"}
