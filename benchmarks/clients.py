"""Concurrent clients for a fixed time: ``clients`` threads, each on its own connection (not
autocommit, as a web app's), run one step in a loop; transactions per second of them all."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from benchmarks.context import BenchContext

#: One step of a client: thread index, connection, step count -> transactions it committed.
Step = Callable[[int, psycopg.Connection[Any], int], int]


def transactions_per_s(ctx: BenchContext, clients: int, seconds: float, step: Step) -> float:
    """Transactions/s of ``clients`` threads running ``step`` for ``seconds`` (all start
    together; a step in flight at the end finishes and counts)."""
    conns = [ctx.connect(autocommit=False) for _ in range(clients)]
    counts = [0] * clients
    errors: list[BaseException] = []
    stop = threading.Event()
    start = threading.Barrier(clients + 1)

    def loop(i: int) -> None:
        conn, n, done = conns[i], 0, 0
        start.wait()
        try:
            while not stop.is_set():
                done += step(i, conn, n)
                n += 1
        except BaseException as exc:  # reported by the caller: a failed client is no figure
            errors.append(exc)
            stop.set()
        counts[i] = done

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    try:
        for t in threads:
            t.start()
        start.wait()
        t0 = time.monotonic()
        stop.wait(seconds)
        stop.set()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return sum(counts) / (time.monotonic() - t0)
    finally:
        for conn in conns:
            conn.close()
