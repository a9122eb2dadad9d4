"""The usual calls cost one statement in the caller's transaction (issue 13, "an API as cheap
as a row"): counted from a libpq trace of the caller's connection, not timed. A request that
meets content the owner already has takes the general path (a savepoint), and says so."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from outbox import DocumentStatus, Outbox, QuotaExceeded
from tests.support.api import body_of, request


def _statements(conn: psycopg.Connection[Any], tmp_path: Path, call: Callable[[], Any]) -> int:
    """The statements ``call`` sends inside an open transaction: one simple Query or one
    extended-protocol Sync each (what a round trip to the server is)."""
    conn.execute("SELECT 1")  # the caller's transaction is open, as after its own writes
    trace = tmp_path / "libpq.trace"
    with trace.open("w") as fh:
        conn.pgconn.trace(fh.fileno())
        try:
            call()
        finally:
            conn.pgconn.untrace()
    sent = [line.split("\t") for line in trace.read_text().splitlines() if "\tF\t" in line]
    return sum(1 for fields in sent if len(fields) > 3 and fields[3] in ("Query", "Sync"))


def test_request_and_confirm_of_new_content_are_one_statement_each(outbox: Outbox, conn, tmp_path):
    data = body_of(300)
    tickets: list[Any] = []
    assert _statements(conn, tmp_path, lambda: tickets.append(request(outbox, conn, data))) == 1
    conn.commit()
    doc_id = tickets[0].document.id
    confirm = lambda: outbox.confirm(conn, owner_id="alice", document_id=doc_id)  # noqa: E731
    assert _statements(conn, tmp_path, confirm) == 1
    conn.commit()
    assert outbox.get(conn, owner_id="alice", document_id=doc_id).status == (
        DocumentStatus.UPLOADED
    )


def test_a_refused_request_is_one_statement_and_writes_nothing(outbox: Outbox, conn, tmp_path):
    outbox.set_limit(conn, owner_id="alice", limit_bytes=100)
    conn.commit()
    refused: list[QuotaExceeded] = []

    def call() -> None:
        try:
            request(outbox, conn, body_of(300))
        except QuotaExceeded as exc:
            refused.append(exc)

    assert _statements(conn, tmp_path, call) == 1
    assert refused and refused[0].to_dict()["limit"] == 100
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert conn.execute("SELECT count(*) FROM s3outbox.documents").fetchone() == (0,)


def test_the_same_content_again_takes_the_general_path(outbox: Outbox, conn, tmp_path):
    data = body_of(300)
    first = request(outbox, conn, data)
    conn.commit()
    again: list[Any] = []
    # The one statement finds the owner's content, then the savepoint path answers: the
    # retry gets its own document back.
    assert _statements(conn, tmp_path, lambda: again.append(request(outbox, conn, data))) > 1
    assert again[0].deduplicated and again[0].document.id == first.document.id
