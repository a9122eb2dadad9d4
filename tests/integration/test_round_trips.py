"""Round trips to PostgreSQL on the steady path (one confirm at a time): the relay's claim
and a worker's start of an attempt. Each round trip wakes two processes; on a busy machine
they are most of the confirm-to-available latency that is not the work itself."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import psycopg

from outbox import Outbox, Settings
from tests.support.worker import confirm, request
from worker.events import lifecycle
from worker.pool import make_pool
from worker.relay import Relay

BODY = b"%PDF-1.7\n" + b"r" * 100


def _round_trips(trace: Path) -> int:
    """Times the client sent something, then read the server's answer before it sent more:
    in a libpq trace, each run of frontend (F) messages followed by a backend (B) one."""
    sides = [p[1] for p in (ln.split("\t") for ln in trace.read_text().splitlines()) if len(p) > 3]
    return sum(1 for a, b in itertools.pairwise(sides) if (a, b) == ("F", "B"))


def _summary(trace: Path) -> str:
    """The trace's messages, side and type, one a line (shown when a count is off)."""
    rows = (ln.split("\t") for ln in trace.read_text().splitlines())
    return "\n".join(f"{p[1]} {p[3]}" for p in rows if len(p) > 3)


def _traced(conn: psycopg.Connection[Any], path: Path) -> Any:
    fh = path.open("w")
    conn.pgconn.trace(fh.fileno())
    return fh


def _confirmed(settings: Settings, outbox: Outbox) -> None:
    with psycopg.connect(settings.database_url) as conn:
        ticket = request(outbox, conn, "alice", BODY)
        confirm(outbox, conn, "alice", ticket.document.id)


def test_the_relay_claims_one_event_in_three_round_trips(
    settings: Settings, outbox: Outbox, tmp_path: Path
) -> None:
    # Its rescues an hour apart: the first run's is the only one.
    relay = Relay(settings.model_copy(update={"redispatch_after_seconds": 4 * 3600.0}))
    try:
        relay.run_once()  # connects, LISTENs and runs its first rescue
        _confirmed(settings, outbox)
        trace = tmp_path / "relay.trace"
        conn = relay._connection()
        with _traced(conn, trace):
            # BEGIN + room, pick, mark + COMMIT
            assert relay.run_once() == 1
            conn.pgconn.untrace()
    finally:
        relay.close()
    assert _round_trips(trace) == 3, _summary(trace)


def test_a_worker_starts_an_attempt_in_one_round_trip(
    settings: Settings, outbox: Outbox, relay: Relay, tmp_path: Path
) -> None:
    _confirmed(settings, outbox)
    assert relay.run_once() == 1
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT id, attempts FROM s3outbox.events").fetchone()
    assert row is not None
    pool = make_pool(settings, max_size=1)
    trace = tmp_path / "start.trace"
    try:
        with pool.connection() as conn:
            fh = _traced(conn, trace)
        with fh:
            started = lifecycle.start(pool, settings, [(row[0], row[1])], None)
            with pool.connection() as conn:
                conn.pgconn.untrace()
    finally:
        pool.close()
    assert set(started) == {row[0]}
    assert started[row[0]]["status"] == "dispatched"
    assert _round_trips(trace) == 1, _summary(trace)
