"""Part: what NOTIFY costs at commit. ``notify_clients`` clients (8) each commit one-event
transactions (an INSERT into the outbox, as a confirm makes) as fast as they can, with the
events trigger's NOTIFY and with the trigger disabled, in alternating rounds, while a relay
connection LISTENs. A NOTIFY takes a cluster-wide lock at commit, so notifying commits are
serialised."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from psycopg import sql as pgsql

from benchmarks.clients import transactions_per_s
from benchmarks.config import Json
from benchmarks.context import BenchContext, say, sql
from benchmarks.measure import summary
from outbox.constants import NOTIFY_CHANNEL


def _commits_per_s(ctx: BenchContext, clients: int, seconds: float) -> float:
    """Transactions/s of ``clients`` threads, each INSERT one event + COMMIT in a loop."""
    insert = sql()["notify_event_row"]

    def step(_: int, conn: psycopg.Connection[Any], __: int) -> int:
        conn.execute(insert)
        conn.commit()
        return 1

    return transactions_per_s(ctx, clients, seconds, step)


def _listen(ctx: BenchContext, stop: threading.Event) -> threading.Thread:
    """A relay's LISTEN connection, draining notifications until ``stop``."""
    conn: psycopg.Connection[Any] = ctx.connect()
    conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(NOTIFY_CHANNEL)))

    def drain() -> None:
        try:
            while not stop.is_set():
                for _ in conn.notifies(timeout=0.1):
                    pass
        finally:
            conn.close()

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    return thread


def notify(ctx: BenchContext) -> Json:
    """Commits/s at ``notify_clients`` clients with and without the trigger's NOTIFY."""
    cfg = ctx.config
    q = sql()
    stop = threading.Event()
    listener = _listen(ctx, stop)
    with_notify: list[float] = []
    without: list[float] = []
    say(f"NOTIFY at commit: {cfg.notify_clients} clients, with and without")
    try:
        with ctx.connect() as admin:
            for _ in range(cfg.rounds):
                admin.execute(q["truncate_events"])
                with_notify.append(_commits_per_s(ctx, cfg.notify_clients, cfg.notify_seconds))
                admin.execute(q["truncate_events"])
                admin.execute(q["disable_notify"])
                try:
                    without.append(_commits_per_s(ctx, cfg.notify_clients, cfg.notify_seconds))
                finally:
                    admin.execute(q["enable_notify"])
            admin.execute(q["truncate_events"])
    finally:
        stop.set()
        listener.join(timeout=5)
    a, b = summary(with_notify, 0), summary(without, 0)
    return {
        "clients": cfg.notify_clients,
        "commits_per_s_with_notify": a,
        "commits_per_s_without_notify": b,
        "with_over_without": round(a["median"] / b["median"], 3),
    }
