"""Part 2: s3-outbox end to end: documents/s from confirm to ``available`` (objects uploaded
beforehand) per document count and worker process count, and confirm-to-available latency at
saturation (a whole backlog at once) and at a steady offered load."""

from __future__ import annotations

import uuid

from benchmarks.config import Json
from benchmarks.context import BenchContext, say
from benchmarks.documents import confirm_all, prepare_documents
from benchmarks.measure import Round, backlog_figures, latency_summary
from benchmarks.timing import Rows, paced, timings, wait_finished
from worker.processes import command
from worker.supervisor import Supervisor


def start_outbox(ctx: BenchContext, processes: int) -> Supervisor:
    """The relay and a Dramatiq worker of ``processes`` processes, warmed up."""
    children = ctx.children()
    children.start("relay", command("relay"))
    children.start(
        f"worker-{processes}p",
        ctx.dramatiq_argv("worker.actors", processes, [ctx.settings.queue_name]),
    )
    # Warm up: connections, pools and imports, before anything is timed.
    ctx.reset()
    ids = prepare_documents(ctx, 20)
    confirm_all(ctx, ids)
    wait_finished(ctx, Rows.OURS, 20, 120, children)
    return children


def outbox_round(ctx: BenchContext, count: int, children: Supervisor) -> Round:
    """One timed backlog of ``count`` documents confirmed at once."""
    ctx.reset()
    ids = prepare_documents(ctx, count)
    meter = ctx.cpu_meter("s3-outbox", children.pids())
    meter.start()
    confirm_all(ctx, ids)
    wait_finished(ctx, Rows.OURS, count, 60 + count / 5, children)
    cpu = meter.stop()
    rate, lat, bad = timings(ctx, Rows.OURS)
    if bad:
        raise RuntimeError(f"{bad} documents did not become available")
    return rate, lat, cpu


def outbox_steady(ctx: BenchContext, children: Supervisor) -> list[float]:
    """Latencies of documents confirmed one by one at the steady offered rate."""
    cfg = ctx.config
    ctx.reset()
    ids = prepare_documents(ctx, int(cfg.steady_rate * cfg.steady_seconds))
    with ctx.connect(autocommit=False) as conn:

        def send(item: tuple[str, uuid.UUID]) -> None:
            ctx.outbox.confirm(conn, owner_id=item[0], document_id=item[1])
            conn.commit()

        paced(ids, cfg.steady_rate, send)
    wait_finished(ctx, Rows.OURS, len(ids), 120, children)
    return timings(ctx, Rows.OURS)[1]


def end_to_end(ctx: BenchContext) -> Json:
    cfg = ctx.config
    out: Json = {"throughput": [], "latency": []}
    for procs in cfg.processes:
        say(f"s3-outbox with {procs} worker process(es) x {cfg.threads} threads")
        children = start_outbox(ctx, procs)
        try:
            for count in cfg.sizes:
                rounds = [outbox_round(ctx, count, children) for _ in range(cfg.rounds)]
                figures = backlog_figures(rounds)
                out["throughput"].append(
                    {"documents": count, "processes": procs, "threads": cfg.threads, **figures}
                )
                say(f"  {count} docs: {figures['docs_per_s']['median']} docs/s")
            steady = [outbox_steady(ctx, children) for _ in range(cfg.rounds)]
            out["latency"].append(
                {
                    "processes": procs,
                    "offered_per_s": cfg.steady_rate,
                    "steady": latency_summary(steady),
                }
            )
        finally:
            children.stop_all()
    return out
