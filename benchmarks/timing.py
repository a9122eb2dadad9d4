"""Offering a round's work and timing it: an open-loop pace, the wait until every row is
verified, and documents/s and latencies from the database clock."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

from benchmarks.context import BenchContext, sql
from worker.supervisor import Supervisor


class Rows(StrEnum):
    """Whose document rows a round waits for and times: s3-outbox's or the peers'."""

    OURS = "s3outbox.documents"
    PEERS = "s3bench.docs"


def _verified_query(rows: Rows) -> str:
    return sql()["verified_documents"] if rows is Rows.OURS else sql()["verified_peer_docs"]


def _timings_query(rows: Rows) -> str:
    return sql()["document_timings"] if rows is Rows.OURS else sql()["peer_doc_timings"]


def paced(items: Sequence[Any], rate: float, send: Callable[[Any], None]) -> None:
    """Open loop: send item i at t0 + i/rate (late ones go at once)."""
    t0 = time.monotonic()
    for i, item in enumerate(items):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        send(item)


def wait_finished(
    ctx: BenchContext,
    rows: Rows,
    count: int,
    timeout: float,
    children: Supervisor | None = None,
) -> None:
    """Until ``count`` rows are verified (available or rejected); fails early if one of
    ``children`` died."""
    deadline = time.monotonic() + timeout
    query = _verified_query(rows)
    with ctx.connect() as conn:
        while True:
            row = conn.execute(query).fetchone()
            done = int(row[0]) if row else 0
            if done >= count:
                return
            if children is not None:
                children.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done}/{count} rows of {rows.value} verified")
            # The figures come from the rows' own timestamps, not from this poll: a slow
            # poll costs nothing but a count of the whole table (PostgreSQL's CPU, which
            # the run measures) each time.
            time.sleep(0.25)


def timings(ctx: BenchContext, rows: Rows) -> tuple[float, list[float], int]:
    """(documents/s from first confirm to last verified, latencies in s, not available)."""
    with ctx.connect() as conn:
        found = conn.execute(_timings_query(rows)).fetchall()
    first = min(r[0] for r in found)
    last = max(r[1] for r in found)
    lat = [r[1] - r[0] for r in found]
    bad = sum(1 for r in found if r[2] != "available")
    return len(found) / max(last - first, 1e-6), lat, bad
