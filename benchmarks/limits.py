"""Part 1: the machine's limits in this run: PostgreSQL small transactions/s, HeadObject/s
and its CPU per call, Dramatiq no-op messages/s."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from benchmarks import peers as bench_peers
from benchmarks.config import Json
from benchmarks.context import BenchContext, sql
from benchmarks.documents import body, upload
from benchmarks.measure import summary
from outbox.presign import make_client


def _rate(window: float, threads: int, make_op: Callable[[], Callable[[], None]]) -> float:
    """Operations/s of ``threads`` loops over one window; each thread makes its own op."""
    ops = [make_op() for _ in range(threads)]
    counts = [0] * threads
    stop = threading.Event()
    start = threading.Barrier(threads + 1)

    def loop(i: int) -> None:
        op = ops[i]
        start.wait()
        n = 0
        while not stop.is_set():
            op()
            n += 1
        counts[i] = n

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.monotonic()
    time.sleep(window)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / (time.monotonic() - t0)


def limits(ctx: BenchContext) -> Json:
    """The machine's limits in this run."""
    cfg = ctx.config
    out: Json = {}
    conns: list[psycopg.Connection[Any]] = []

    insert = sql()["limits_row"]

    def pg_op() -> Callable[[], None]:
        conn = ctx.connect()
        conns.append(conn)

        def op() -> None:
            conn.execute(insert)

        return op

    for clients in (1, 4):
        out[f"pg_tx_per_s_{clients}_clients"] = summary(
            [_rate(cfg.window_seconds, clients, pg_op) for _ in range(cfg.rounds)]
        )
    for conn in conns:
        conn.close()
    key = f"bench-limits/{uuid.uuid4()}"
    upload(ctx, [key], [body()])
    client = make_client(ctx.settings, ctx.settings.s3_endpoint_url)
    from worker.storage import Storage

    lean = Storage(ctx.settings, lean_head=True)
    heads: dict[str, Callable[[], object]] = {
        # boto3's head_object, as the peers' users write it (and our workers did).
        "head_object": lambda: client.head_object(
            Bucket=ctx.settings.s3_bucket, Key=key, ChecksumMode="ENABLED"
        ),
        # The workers' lean client (worker/lean_head.py): the server's own ceiling.
        "lean_head_object": lambda: lean.head_object(key),
    }
    for name, call in heads.items():

        def head_op(call: Callable[[], object] = call) -> Callable[[], None]:
            def op() -> None:
                call()

            return op

        for threads in (1, 8):
            out[f"{name}_per_s_{threads}_threads"] = summary(
                [_rate(cfg.window_seconds, threads, head_op) for _ in range(cfg.rounds)]
            )
    # What one HeadObject costs the calling process, boto3's and the lean one, alternating:
    # the largest single item of a verify's CPU.
    calls = max(50, int(cfg.window_seconds * 250))
    spent = {name: 0.0 for name in heads}
    for _ in range(cfg.rounds):
        for name, call in heads.items():
            cpu0 = time.process_time()
            for _ in range(calls):
                call()
            spent[name] += time.process_time() - cpu0
    for name in heads:
        out[f"{name}_cpu_ms_per_call"] = round(1000 * spent[name] / (calls * cfg.rounds), 3)
    out["dramatiq_noop_per_s"] = dramatiq_noop(ctx)
    return out


def dramatiq_noop(ctx: BenchContext) -> Json:
    """No-op messages/s through Redis and a Dramatiq worker (max processes x threads)."""
    procs = max(ctx.config.processes)
    broker = bench_peers.make_peer_broker(ctx.settings.redis_url)
    client = broker.client
    msgs_key = f"{bench_peers.NAMESPACE}:{bench_peers.NOOP_QUEUE}.msgs"
    children = ctx.children()
    children.start(
        "dramatiq-noop",
        ctx.dramatiq_argv("benchmarks.peers", procs, [bench_peers.NOOP_QUEUE]),
    )
    count = max(200, int(ctx.config.window_seconds * 2000))
    rates: list[float] = []
    try:
        for r in range(ctx.config.rounds + 1):
            t0 = time.monotonic()
            for _ in range(count):
                broker.enqueue(bench_peers.message(bench_peers.NOOP_QUEUE, bench_peers.NOOP_ACTOR))
            deadline = time.monotonic() + 120
            while client.hlen(msgs_key) > 0:
                children.check()
                if time.monotonic() > deadline:
                    raise TimeoutError("dramatiq no-op messages not consumed")
                time.sleep(0.01)
            if r > 0:  # the first round warms the worker up
                rates.append(count / (time.monotonic() - t0))
    finally:
        children.stop_all()
        broker.close()
    return {**summary(rates), "processes": procs, "threads": ctx.config.threads}
