"""The outbox's rows by state for a metrics scrape, at a cost that does not grow with the
finished rows: exact where a state stays small, the planner's statistics where it does not.

Unfinished events (pending, dispatched) and dead ones are counted exactly through their
partial indexes. Finished events and documents of each state are counted exactly up to
``CAP`` rows (a bounded walk); above that the figure is PostgreSQL's estimate (``reltuples``
of the table or of the partial index of done events, refreshed by VACUUM and ANALYZE, times a
state's frequency in ``pg_stats``), never less than ``CAP`` + 1. ``s3-outbox status`` still
counts everything exactly (the operator asks for it; a scrape runs every few seconds in
every relay and sweeper)."""

from __future__ import annotations

from functools import cache
from typing import Any

import psycopg

from outbox import queries
from outbox.constants import BlobStatus, DocumentStatus, EventStatus

#: Above this many rows, a state's figure is an estimate.
CAP = 1_000


@cache
def _sql() -> dict[str, str]:
    return queries.load("worker.ops", "status.sql")


def event_counts(conn: psycopg.Connection[Any], cap: int = CAP) -> list[tuple[str, str, int]]:
    """(topic, status, count) of the events: pending, dispatched and dead exact, done exact
    up to ``cap`` and estimated above."""
    q = _sql()
    out = [(str(t), str(s), int(n)) for t, s, n in conn.execute(q["unfinished_event_counts"])]
    sample = {str(t): int(n) for t, n in conn.execute(q["done_event_sample"], {"cap": cap})}
    total = sum(sample.values())
    if total > cap:
        sample = _estimated_done(conn, sample, cap)
    out += [(topic, EventStatus.DONE.value, n) for topic, n in sorted(sample.items())]
    return out


def _estimated_done(
    conn: psycopg.Connection[Any], sample: dict[str, int], cap: int
) -> dict[str, int]:
    """The estimated finished events by topic, when more than ``cap`` are: the planner's
    total, split by the topics' frequencies (or by the sample's, before any ANALYZE)."""
    rows = conn.execute(_sql()["done_event_estimate"], {"column": "topic"}).fetchall()
    total = max(float(rows[0][0]) if rows else 0.0, cap + 1.0)
    freqs = {str(t): float(f) for _, t, f in rows if t is not None and f}
    if not freqs:
        freqs = {t: float(n) for t, n in sample.items()}
    scale = sum(freqs.values())
    return {t: max(round(total * f / scale), sample.get(t, 0)) for t, f in freqs.items()}


def document_counts(conn: psycopg.Connection[Any], cap: int = CAP) -> list[tuple[str, int]]:
    """(status, count) of the documents: exact up to ``cap`` per state, estimated above."""
    statuses = [s.value for s in DocumentStatus]
    q = _sql()
    return _state_counts(
        conn, (q["document_counts_capped"], q["document_estimates"]), statuses, cap
    )


def blob_counts(conn: psycopg.Connection[Any], cap: int = CAP) -> list[tuple[str, int]]:
    """(status, count) of the blobs, every state (0 included): exact up to ``cap`` per state,
    estimated above."""
    statuses = [s.value for s in BlobStatus]
    q = _sql()
    queries_ = (q["blob_counts_capped"], q["blob_estimates"])
    return _state_counts(conn, queries_, statuses, cap, keep_zero=True)


def _state_counts(
    conn: psycopg.Connection[Any],
    sql: tuple[str, str],
    statuses: list[str],
    cap: int,
    *,
    keep_zero: bool = False,
) -> list[tuple[str, int]]:
    """Rows by state, through ``sql``: the capped count's query and the estimate's."""
    capped, estimated = sql
    counted = {
        str(s): int(n)
        for s, n in conn.execute(capped, {"cap": cap, "statuses": statuses}).fetchall()
    }
    estimates: dict[str, float] = {}
    if any(n > cap for n in counted.values()):
        estimates = {str(s): float(e) for s, e in conn.execute(estimated, {"column": "status"})}
    return [
        (s, n if n <= cap else max(round(estimates.get(s, 0.0)), n))
        for s, n in counted.items()
        if n > 0 or keep_zero
    ]
