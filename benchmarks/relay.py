"""Part: the relay alone. A backlog of pending verify events (``relay_events``, 100,000 in a
full run) claimed and handed to Redis by 1 and 2 relay processes, no workers: events/s from
the commit that made them pending to the last one dispatched. Back-pressure is set out of
the way (``relay_max_in_flight`` high), as nothing finishes them."""

from __future__ import annotations

import statistics
import time

import redis

from benchmarks.config import CONTENT_TYPE, OWNER, OWNERS, Json
from benchmarks.context import BenchContext, say, sql
from benchmarks.measure import summary
from outbox.settings import Settings
from worker.broker import NAMESPACE
from worker.processes import command
from worker.supervisor import Supervisor

#: No back-pressure: nothing finishes the events of this part.
IN_FLIGHT = 1_000_000_000


def uploaded_documents(ctx: BenchContext, count: int) -> None:
    """``count`` uploaded documents (no objects behind them), their statistics fresh."""
    with ctx.connect() as conn:
        conn.execute(
            sql()["bulk_uploaded_documents"],
            {
                "owner": OWNER,
                "owners": OWNERS,
                "prefix": ctx.settings.key_prefix,
                "content_type": CONTENT_TYPE,
                "count": count,
            },
        )
        conn.execute(sql()["vacuum_analyze_documents"])


def clear_queue(settings: Settings) -> None:
    """Every message of the run's queue out of Redis (nobody consumes them here)."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        queue = f"{NAMESPACE}:{settings.queue_name}"
        client.delete(queue, f"{queue}.msgs")
    finally:
        client.close()


def dispatch_all(
    ctx: BenchContext, children: Supervisor, repeat: int = 1, timeout: float = 600
) -> tuple[int, float]:
    """Make a verify event pending for each uploaded document (``repeat`` times over) in one
    commit, and wait until the relays dispatched every one: (events, seconds from that
    commit to the last one dispatched)."""
    q = sql()
    with ctx.connect() as conn:
        conn.execute(q["truncate_events"])
        clear_queue(ctx.settings)
        events = conn.execute(q["verify_events_for_documents"], {"repeat": repeat}).rowcount
        committed = time.monotonic()
        deadline = committed + timeout
        while True:
            row = conn.execute(q["pending_events"]).fetchone()
            if row is not None and row[0] == 0:
                return events, time.monotonic() - committed
            children.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"relays left {row[0] if row else '?'} events pending")
            time.sleep(0.01)


def relay(ctx: BenchContext) -> Json:
    """Events/s one and two relays claim and hand to Redis, from a backlog."""
    cfg = ctx.config
    ctx.reset()
    uploaded_documents(ctx, cfg.relay_events)
    settings = ctx.settings.model_copy(update={"relay_max_in_flight": IN_FLIGHT})
    out: Json = {"events": cfg.relay_events}
    for relays in cfg.relay_counts:
        say(f"relay alone: {relays} relay(s), {cfg.relay_events} events")
        children = ctx.children(settings)
        for i in range(relays):
            children.start(f"relay-{i}", command("relay"))
        try:
            rates: list[float] = []
            cpus: list[Json] = []
            dispatch_all(ctx, children)  # warm up: imports, connections, LISTEN
            for _ in range(cfg.rounds):
                meter = ctx.cpu_meter("relays", children.pids())
                meter.start()
                events, seconds = dispatch_all(ctx, children)
                cpus.append(meter.stop())
                rates.append(events / seconds)
        finally:
            children.stop_all()
            clear_queue(ctx.settings)
        out[f"relays_{relays}"] = {
            "events_per_s": summary(rates, 0),
            "cpu_cores_busy": {k: statistics.median(c[k] for c in cpus) for k in cpus[0]},
        }
        say(f"  {out[f'relays_{relays}']['events_per_s']['median']} events/s")
    with ctx.connect() as conn:
        conn.execute(sql()["truncate_events"])
    return out
