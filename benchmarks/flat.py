"""Part: costs that must stay flat as data grows (the issue's target 7), each beside its
baseline in the same run:

* a ``list`` page for an owner with ``list_deleted`` deleted documents (1M) against an owner
  with none;
* a metrics scrape (``OutboxCollector.collect``, what every relay and sweeper serves) with
  ``scrape_done`` finished events (10M) against an empty table, and what the exact count of
  the old scrape takes on that table;
* the relay's claim rate while a transaction holds the xmin horizon back for
  ``xmin_seconds`` (60 s), against the same churn without it, with the dead rows it leaves.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from benchmarks.config import CONTENT_TYPE, Json
from benchmarks.context import BenchContext, say, sql
from benchmarks.relay import IN_FLIGHT, clear_queue, uploaded_documents
from outbox import queries
from worker.processes import command

#: Pages (and scrapes) timed per round.
CALLS = 50
#: Live documents of each owner in the list figure.
LIVE = 200
#: The backlog the producer keeps pending in the xmin figure, in events per insert.
BACKLOG = 5_000


def _median_ms(call: Callable[[], object], calls: int = CALLS) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _ratio(big: list[float], small: list[float]) -> Json:
    b, s = statistics.median(big), statistics.median(small)
    return {
        "rounds_big": [round(x, 3) for x in big],
        "rounds_small": [round(x, 3) for x in small],
        "median_ms_big": round(b, 3),
        "median_ms_small": round(s, 3),
        "ratio": round(b / s, 3),
    }


def list_pages(ctx: BenchContext) -> Json:
    """A first list page (50) of an owner with many deleted documents and of one with none."""
    cfg = ctx.config
    ctx.reset()
    q = sql()
    heavy, light = "bench-deleter", "bench-keeper"
    say(f"list: {cfg.list_deleted} deleted documents of one owner")
    with ctx.connect() as conn:
        common = {"prefix": ctx.settings.key_prefix, "content_type": CONTENT_TYPE}
        # The worst case: the deleted documents are the newest (request, delete, again), so
        # a page walks past all of them unless the index holds none.
        conn.execute(
            q["bulk_owner_documents"],
            {**common, "owner": heavy, "status": "deleted", "count": cfg.list_deleted, "before": 0},
        )
        for owner in (heavy, light):
            conn.execute(
                q["bulk_owner_documents"],
                {
                    **common,
                    "owner": owner,
                    "status": "available",
                    "count": LIVE,
                    "before": cfg.list_deleted,
                },
            )
        conn.execute(q["vacuum_analyze_documents"])
    big: list[float] = []
    small: list[float] = []
    with ctx.connect() as conn:
        for _ in range(cfg.rounds):
            small.append(_median_ms(lambda: ctx.outbox.list(conn, owner_id=light, limit=50)))
            big.append(_median_ms(lambda: ctx.outbox.list(conn, owner_id=heavy, limit=50)))
    ctx.reset()
    return {"deleted": cfg.list_deleted, **_ratio(big, small)}


def scrapes(ctx: BenchContext) -> Json:
    """A metrics scrape on an empty outbox, then with ``scrape_done`` finished events."""
    from worker.metrics import OutboxCollector

    cfg = ctx.config
    ctx.reset()
    q = sql()
    collector = OutboxCollector(ctx.settings)

    def scrape() -> None:
        list(collector.collect())

    with ctx.connect() as conn:
        conn.execute(q["truncate_events"])
        conn.execute(q["vacuum_analyze_events"])
    small = [_median_ms(scrape, 20) for _ in range(cfg.rounds)]
    say(f"scrape: {cfg.scrape_done} done events")
    with ctx.connect() as conn:
        done, step = 0, 1_000_000
        while done < cfg.scrape_done:
            count = min(step, cfg.scrape_done - done)
            conn.execute(q["bulk_done_events"], {"count": count, "first": done})
            done += count
        conn.execute(q["vacuum_analyze_events"])
    big = [_median_ms(scrape, 20) for _ in range(cfg.rounds)]
    # What the scrape ran before: an exact count of every event by topic and state.
    exact = queries.load("worker.ops", "status.sql")["event_counts"]
    with ctx.connect() as conn:
        full_count_ms = _median_ms(lambda: conn.execute(exact).fetchall(), 3)
        conn.execute(q["truncate_events"])
    return {
        "done_events": cfg.scrape_done,
        **_ratio(big, small),
        "exact_count_ms_big": round(full_count_ms, 1),
    }


class _Churn:
    """What the relay's figure runs against: a producer that keeps a backlog of verify events
    pending, and a stand-in for the workers that marks dispatched events done (each event
    is updated twice, as in production). Neither walks an index of states: the producer
    tracks the backlog from the relay's own dispatched counter, the finisher goes by id, so
    what slows down under a held horizon is the relay alone.

    The counter is read from the relay's Prometheus multiprocess files, not its metrics
    endpoint: a scrape also runs the outbox collector's queries (the lag walks the pending
    index from its start), and the producer asking hundreds of times a second made the relay
    and PostgreSQL serve scrapes, slower and slower under a held horizon, while the backlog
    ran dry: the figure measured the bench's scrapes, not the relay's claims."""

    def __init__(self, ctx: BenchContext, metrics_dir: str) -> None:
        self.ctx = ctx
        self.metrics_dir = metrics_dir
        self.stop = threading.Event()
        self.inserted = 0
        self.base = 0
        self.errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._guard, args=(f,), daemon=True)
            for f in (self._produce, self._complete)
        ]

    def dispatched(self) -> int:
        """The relay's s3outbox_events_dispatched_total, all topics."""
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.metrics_dir)  # type: ignore[no-untyped-call]
        return int(
            sum(
                sample.value
                for metric in registry.collect()
                for sample in metric.samples
                if sample.name == "s3outbox_events_dispatched_total"
            )
        )

    def _guard(self, loop: Callable[[psycopg.Connection[Any]], None]) -> None:
        try:
            with self.ctx.connect() as conn:
                loop(conn)
        except BaseException as exc:  # reported by the caller
            self.errors.append(exc)

    def _produce(self, conn: psycopg.Connection[Any]) -> None:
        q = sql()
        while not self.stop.is_set():
            if self.inserted - (self.dispatched() - self.base) < BACKLOG:
                self.inserted += conn.execute(
                    q["verify_events_for_documents"], {"repeat": 1}
                ).rowcount
            else:
                time.sleep(0.005)

    def _complete(self, conn: psycopg.Connection[Any]) -> None:
        q = sql()
        after = 0
        while not self.stop.is_set():
            row = conn.execute(q["complete_dispatched"], {"after": after, "limit": 2000}).fetchone()
            done, after = (int(row[0]), int(row[1])) if row else (0, after)
            if done == 0:
                time.sleep(0.005)
            clear_queue(self.ctx.settings)

    def __enter__(self) -> _Churn:
        # The relay's counter runs across phases (one relay for them all): the backlog is
        # this phase's inserts less what it dispatched since this phase began. Without the
        # base, every phase after the first saw a huge dispatched count, inserted without
        # limit, and measured a backlog of millions (rounds fell from 38,000 to 3,500
        # claims/s, with or without the held horizon).
        self.base = self.dispatched()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=30)
        if self.errors:
            raise RuntimeError(f"churn failed: {self.errors[0]!r}")


def _claimed_per_s(ctx: BenchContext, metrics_dir: str, seconds: float, hold_xmin: bool) -> Json:
    """Events claimed per second by the running relay (its own counter) over ``seconds`` of
    churn, with or without a transaction holding the xmin horizon back; the dead rows and
    sizes at the end."""
    q = sql()
    holder = ctx.connect(autocommit=False)
    try:
        if hold_xmin:
            holder.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            holder.execute(q["hold_xmin"])  # takes the snapshot; held until rollback
        with ctx.connect() as conn, _Churn(ctx, metrics_dir) as churn:
            time.sleep(1.0)  # the backlog is there
            claimed0, t0 = churn.dispatched(), time.monotonic()
            time.sleep(seconds)
            claimed1, elapsed = churn.dispatched(), time.monotonic() - t0
            dead, size, pending_index = conn.execute(q["events_dead_tuples"]).fetchone() or (
                0,
                0,
                0,
            )
    finally:
        holder.rollback()
        holder.close()
    return {
        "claimed_per_s": round((claimed1 - claimed0) / elapsed),
        "dead_tuples": int(dead),
        "events_bytes": int(size),
        "pending_index_bytes": int(pending_index),
    }


def xmin_held(ctx: BenchContext) -> Json:
    """The relay's claim rate under churn, with and without a held xmin horizon."""
    from worker.embedded import free_ports

    cfg = ctx.config
    ctx.reset()
    uploaded_documents(ctx, BACKLOG)
    [port] = free_ports(1)
    settings = ctx.settings.model_copy(
        update={"relay_max_in_flight": IN_FLIGHT, "relay_metrics_port": port}
    )
    metrics_url = f"http://{settings.metrics_host}:{port}/metrics"
    children = ctx.children(settings)
    metrics_dir = children.env["PROMETHEUS_MULTIPROC_DIR"]
    children.start("relay-xmin", command("relay"))
    out: Json = {"seconds": cfg.xmin_seconds}
    try:
        deadline = time.monotonic() + 60
        while True:  # the relay is up: its metrics endpoint answers
            try:
                requests.get(metrics_url, timeout=5).raise_for_status()
                break
            except requests.RequestException:
                children.check()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        say(f"relay claims: {cfg.xmin_seconds:g} s of churn with and without a held xmin")
        # Each phase starts on an empty, vacuumed table (what one phase leaves does not count
        # against the next), and the rounds alternate which phase goes first, so a slow
        # stretch of the shared machine or a relay that warms up favours neither.
        phases = [("without", False), ("with_xmin_held", True)]
        rounds: dict[str, list[Json]] = {"without": [], "with_xmin_held": []}
        for i in range(cfg.rounds):
            for phase, hold in phases if i % 2 == 0 else phases[::-1]:
                with ctx.connect() as conn:
                    conn.execute(sql()["truncate_events"])
                    conn.execute(sql()["vacuum_analyze_events"])
                rounds[phase].append(
                    _claimed_per_s(ctx, metrics_dir, cfg.xmin_seconds, hold_xmin=hold)
                )
        children.check()
    finally:
        children.stop_all()
        clear_queue(ctx.settings)
    with ctx.connect() as conn:
        conn.execute(sql()["truncate_events"])
    for phase, results in rounds.items():
        rates = [r["claimed_per_s"] for r in results]
        # The median round's rate; the dead rows and sizes of the last round.
        out[phase] = {
            **results[-1],
            "claimed_per_s": round(statistics.median(rates)),
            "rounds": rates,
        }
    out["ratio"] = round(
        out["with_xmin_held"]["claimed_per_s"] / max(out["without"]["claimed_per_s"], 1), 3
    )
    return out


def flat(ctx: BenchContext) -> Json:
    """Each figure beside its baseline."""
    return {"list": list_pages(ctx), "scrape": scrapes(ctx), "xmin": xmin_held(ctx)}
