"""Part 4: the same verify job on pgqueuer, procrastinate and plain Dramatiq
(``benchmarks.peers``), beside s3-outbox, on the same servers."""

from __future__ import annotations

import hashlib
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks import peers as bench_peers
from benchmarks.config import CONFIRM_CHUNK, CONTENT_TYPE, Json
from benchmarks.context import BenchContext, say, sql
from benchmarks.documents import body, upload
from benchmarks.end_to_end import outbox_round, start_outbox
from benchmarks.enqueue import Send, peer_sender
from benchmarks.measure import Round, backlog_figures, latency_summary
from benchmarks.timing import Rows, paced, timings, wait_finished
from worker.supervisor import Supervisor

PEERS = ("pgqueuer", "procrastinate", "dramatiq")


@dataclass
class Obj:
    """An uploaded object, ready to be declared by a document row."""

    key: str
    size: int
    sha256: str


def peer_objects(ctx: BenchContext, count: int) -> list[Obj]:
    bodies = [body() for _ in range(count)]
    keys = [f"bench-peers/{uuid.uuid4()}" for _ in range(count)]
    upload(ctx, keys, bodies)
    return [
        Obj(k, len(b), hashlib.sha256(b).hexdigest()) for k, b in zip(keys, bodies, strict=True)
    ]


def peer_rows(ctx: BenchContext, objs: list[Obj]) -> list[str]:
    """Fresh ``uploaded`` rows for the objects; returns their ids."""
    ctx.reset()
    ids = [str(uuid.uuid4()) for _ in objs]
    with ctx.connect() as conn, conn.cursor() as cur:
        cur.executemany(
            sql()["insert_peer_doc"],
            [
                {
                    "id": i,
                    "key": o.key,
                    "size": o.size,
                    "sha256": o.sha256,
                    "content_type": CONTENT_TYPE,
                }
                for i, o in zip(ids, objs, strict=True)
            ],
        )
    return ids


def start_peer(ctx: BenchContext, peer: str, processes: int, head: str = "boto3") -> Supervisor:
    """The peer's workers; their job's HeadObject is boto3's ``head_object`` (``head``
    "boto3", as the peer's users write it) or our lean client ("lean")."""
    children = ctx.children(ctx.settings.model_copy(update={"s3_lean_head": head == "lean"}))
    if peer == "dramatiq":
        children.start(
            "peer-dramatiq",
            ctx.dramatiq_argv("benchmarks.peers", processes, [bench_peers.VERIFY_QUEUE]),
        )
    else:
        for i in range(processes):
            children.start(
                f"peer-{peer}-{i}",
                [
                    sys.executable,
                    "-m",
                    "benchmarks.peers",
                    peer,
                    "--concurrency",
                    str(ctx.config.threads),
                ],
            )
    return children


def peers(ctx: BenchContext) -> Json:
    """The same verify job on pgqueuer, procrastinate and plain Dramatiq, beside s3-outbox.

    Interleaved: each round runs every system once (s3-outbox included, on the same
    document count), in an order that rotates from round to round, so that a slow phase of
    a shared machine hits every system alike instead of whichever ran then. Each round
    starts the system's processes, warms them up, times one backlog, and stops them.
    """
    cfg = ctx.config
    objs = peer_objects(ctx, max(cfg.peer_size, int(cfg.steady_rate * cfg.steady_seconds)))
    # Each peer with each HeadObject client: boto3's (as its users write the job) and ours.
    systems = [("s3-outbox", "lean"), *((p, h) for p in PEERS for h in cfg.peer_heads)]
    runs: dict[tuple[str, str, int], list[Round]] = {}
    for procs in cfg.processes:
        for r in range(cfg.rounds):
            k = r % len(systems)
            order = systems[k:] + systems[:k]
            names = ", ".join(f"{p} ({h})" for p, h in order)
            say(f"peers round {r + 1}/{cfg.rounds}, {procs} process(es): {names}")
            for system, head in order:
                one = (
                    _ours_at_peer_size(ctx, procs)
                    if system == "s3-outbox"
                    else _peer_round(ctx, system, procs, objs, head)
                )
                runs.setdefault((system, head, procs), []).append(one)
    out: Json = {"throughput": [], "ours": [], "latency": []}
    for (system, head, procs), rounds in runs.items():
        entry: Json = {
            "documents": cfg.peer_size,
            "processes": procs,
            "threads": cfg.threads,
            "head": head,
            **backlog_figures(rounds),
        }
        if system == "s3-outbox":
            out["ours"].append(entry)
        else:
            out["throughput"].append({"peer": system, **entry})
        say(f"  {system} ({head}) {procs}p: {entry['docs_per_s']['median']} docs/s")
    for peer in PEERS:
        out["latency"].append(_peer_steady(ctx, peer, max(cfg.processes), objs))
    return out


def _ours_at_peer_size(ctx: BenchContext, procs: int) -> Round:
    children = start_outbox(ctx, procs)
    try:
        return outbox_round(ctx, ctx.config.peer_size, children)
    finally:
        children.stop_all()


def _peer_round(
    ctx: BenchContext, peer: str, procs: int, objs: list[Obj], head: str = "boto3"
) -> Round:
    """One timed backlog of ``peer_size`` documents on a freshly started peer."""
    children = start_peer(ctx, peer, procs, head)
    send, close = peer_sender(ctx, peer)
    try:
        _peer_warm_up(ctx, send, objs, children)
        ids = peer_rows(ctx, objs[: ctx.config.peer_size])
        meter = ctx.cpu_meter(peer, children.pids())
        meter.start()
        for start in range(0, len(ids), CONFIRM_CHUNK):
            send(ids[start : start + CONFIRM_CHUNK])
        wait_finished(ctx, Rows.PEERS, len(ids), 60 + len(ids) / 5, children)
        cpu = meter.stop()
        rate, lat, bad = timings(ctx, Rows.PEERS)
        if bad:
            raise RuntimeError(f"{peer}: {bad} documents not available")
        return rate, lat, cpu
    finally:
        close()
        children.stop_all()


def _peer_warm_up(ctx: BenchContext, send: Send, objs: list[Obj], children: Supervisor) -> None:
    ids = peer_rows(ctx, objs[:20])
    send(ids)
    wait_finished(ctx, Rows.PEERS, 20, 120, children)


def _peer_steady(ctx: BenchContext, peer: str, procs: int, objs: list[Obj]) -> Json:
    """Latency at the steady offered load, ``rounds`` times, on one started peer."""
    cfg = ctx.config
    say(f"peer {peer} steady latency at {cfg.steady_rate:.0f}/s, {procs} process(es)")
    children = start_peer(ctx, peer, procs)
    send, close = peer_sender(ctx, peer)
    try:
        _peer_warm_up(ctx, send, objs, children)
        steady: list[list[float]] = []
        n = int(cfg.steady_rate * cfg.steady_seconds)
        for _ in range(cfg.rounds):
            ids = peer_rows(ctx, objs[:n])
            paced(ids, cfg.steady_rate, _one_at_a_time(send))
            wait_finished(ctx, Rows.PEERS, n, 120, children)
            steady.append(timings(ctx, Rows.PEERS)[1])
        return {
            "peer": peer,
            "processes": procs,
            "offered_per_s": cfg.steady_rate,
            "steady": latency_summary(steady),
        }
    finally:
        close()
        children.stop_all()


def _one_at_a_time(send: Send) -> Callable[[str], None]:
    return lambda doc_id: send([doc_id])
