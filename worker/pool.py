"""The workers' PostgreSQL connection pool, and the two ways a handler uses it."""

from __future__ import annotations

import contextlib
import select
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from outbox.settings import Settings

Row = dict[str, Any]
Cursor = psycopg.Cursor[Row]


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


def timeouts_options(settings: Settings) -> str:
    """libpq ``options`` that bound every statement of a worker, relay or sweeper session:
    ``lock_timeout`` (a row held by a slow web request fails the attempt, retried later,
    instead of blocking a thread without limit) and ``statement_timeout``."""
    given = psycopg.conninfo.conninfo_to_dict(settings.database_url).get("options")
    parts = [str(given)] if given else []  # the URL's own options are kept
    if settings.db_lock_timeout_seconds:
        parts.append(f"-c lock_timeout={int(settings.db_lock_timeout_seconds * 1000)}")
    if settings.db_statement_timeout_seconds:
        parts.append(f"-c statement_timeout={int(settings.db_statement_timeout_seconds * 1000)}")
    return " ".join(parts)


#: A session whose every statement walks an index (the relay's): its statements are
#: prepared, and a plan cached while the events table was empty (a new install, a pruned
#: outbox) was a sequential scan, kept until autovacuum analysed the table, so a burst after
#: a quiet spell paid a walk of the whole table per claim. A statement with no index to walk
#: still runs (a disabled scan is only the planner's last resort).
INDEX_WALKS = "-c enable_seqscan=off"


def connect(settings: Settings, *, index_walks: bool = False) -> psycopg.Connection[Any]:
    """An autocommit connection with the session bounds (relay, sweeper); with
    ``index_walks``, sequential scans off (see :data:`INDEX_WALKS`)."""
    options = timeouts_options(settings)
    return psycopg.connect(
        settings.database_url,
        autocommit=True,
        connect_timeout=10,
        options=f"{options} {INDEX_WALKS}".strip() if index_walks else options,
    )


def make_pool(settings: Settings, max_size: int | None = None) -> ConnectionPool[Any]:
    """A connection pool whose connections are checked on checkout, so a PostgreSQL restart
    costs a reconnect, not a failed event. Every session has the statement bounds.

    It keeps all its connections (one per worker thread by default), opened in the
    background from the start: a pool that shrank in a quiet spell grew back one connection
    at a time in the next burst, while its threads waited."""
    size = max_size or settings.worker_pool_size
    return ConnectionPool(
        settings.database_url,
        min_size=size,
        max_size=size,
        kwargs={"autocommit": True, "options": timeouts_options(settings)},
        check=check_connection,
        open=True,
        name="s3outbox-worker",
    )


@contextlib.contextmanager
def transaction(pool: ConnectionPool[Any]) -> Iterator[Cursor]:
    """A pooled connection in one transaction, with a dict-row cursor."""
    with pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        yield cur


def read_one(pool: ConnectionPool[Any], query: str, params: Mapping[str, Any]) -> Row | None:
    """One row of a read-only query (autocommit, no transaction)."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        row: Row | None = cur.execute(query, params).fetchone()
        return row


def read_all(pool: ConnectionPool[Any], query: str, params: Mapping[str, Any]) -> list[Row]:
    """Every row of a read-only query (autocommit, no transaction)."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        rows: list[Row] = cur.execute(query, params).fetchall()
        return rows
