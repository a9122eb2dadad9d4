"""The thin connector layer: run the library's named queries in the caller's transaction."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from outbox import queries

Row = dict[str, Any]


def library_queries() -> dict[str, str]:
    return queries.load("outbox")


@contextlib.contextmanager
def atomic(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Cursor[Row]]:
    """A savepoint inside the caller's transaction, so a call that fails changes nothing and
    leaves the caller's transaction usable. Never commits or rolls back for the caller.

    With an autocommit connection, the block is its own transaction.
    """
    if not conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        # Open the caller's implicit transaction first; otherwise transaction() below would be
        # the outermost block and would COMMIT on exit.
        conn.execute("SELECT 1")
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        yield cur


@contextlib.contextmanager
def reading(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Cursor[Row]]:
    """A dict-row cursor for read-only calls (no savepoint needed)."""
    with conn.cursor(row_factory=dict_row) as cur:
        yield cur


@contextlib.contextmanager
def one_statement(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Cursor[Row]]:
    """A dict-row cursor for a call that is one statement in the caller's transaction and
    reports a refusal in its result rather than raising: no savepoint needed (two round trips
    saved), as the statement changes all or nothing. A database error in it (a lock or
    statement timeout, a deadlock) fails the caller's transaction, as any statement of theirs
    would.

    With an autocommit connection, the statement is its own transaction.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        yield cur
