"""``make bench`` (``python -m benchmarks``): every performance figure in one run, on one set
of servers.

1. The machine's limits, measured in the same run: PostgreSQL small transactions/s (1 and 4
   clients), HeadObject/s (1 and 8 threads), Dramatiq no-op messages/s.
2. s3-outbox end to end: documents/s from confirm to ``available`` (objects uploaded
   beforehand) for each document count and worker process count; confirm-to-available
   latency (p50/p95/p99) at a steady offered load and at saturation (a whole backlog at once).
3. The API side: request-upload and confirm in the caller's transaction, per second and per
   call, beside a bare single-row INSERT transaction; statements and outbox INSERTs per call.
4. The relay alone: events/s a backlog is claimed and handed to Redis, 1 and 2 relays.
5. NOTIFY at commit: commits/s at 8 clients with and without it.
6. Flat as data grows: a list page with 1M deleted documents, a metrics scrape with 10M
   done events, the relay's claims while a transaction holds the xmin horizon back.
7. Peers doing the same verify job on the same servers: pgqueuer, procrastinate, plain
   Dramatiq, each with boto3's HeadObject in the job and with ours.
8. Large files: a generated 6 GiB file (and a 1 GiB one) through the upload helper, 4 parts at
   a time, against boto3's own multipart upload of the same file (MB/s), and the
   confirm-to-available time of each (``--parts multipart``).

Every figure is the median of repeated rounds, with min and max. Times of documents come from
the database clock (``confirmed_at`` and ``verified_at``), so client and server agree.
Timings are reported, never asserted: the machine is shared and noisy, compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.api import api
from benchmarks.comparison import peers
from benchmarks.config import PARTS, BenchConfig, Json
from benchmarks.context import BenchContext, say
from benchmarks.end_to_end import end_to_end
from benchmarks.flat import flat
from benchmarks.limits import limits
from benchmarks.measure import machine_info
from benchmarks.multipart import multipart
from benchmarks.notify import notify
from benchmarks.prepare import prepare
from benchmarks.relay import relay
from benchmarks.servers import bench_servers
from benchmarks.table import table
from benchmarks.targets import targets

#: Each part of a run, by name.
STEPS: dict[str, Callable[[BenchContext], Json]] = {
    "limits": limits,
    "api": api,
    "relay": relay,
    "notify": notify,
    "flat": flat,
    "end_to_end": end_to_end,
    "peers": peers,
    "multipart": multipart,
}


def run(ctx: BenchContext, parts: Sequence[str] = PARTS) -> Json:
    """The schemas, then each part in order; the targets when every part ran."""
    prepare(ctx)
    results: Json = {}
    for i, part in enumerate(parts, 1):
        say(f"{i}/{len(parts)} {part}")
        results[part] = STEPS[part](ctx)
    if all(p in results for p in PARTS):
        results["targets"] = targets(results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (< 1 min)")
    parser.add_argument("--output", default=os.environ.get("BENCH_OUTPUT", "bench-results.json"))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--sizes", default=None, help="comma-separated document counts")
    parser.add_argument("--peer-size", type=int, default=None)
    parser.add_argument("--processes", default=None, help="comma-separated, e.g. 1,2")
    parser.add_argument(
        "--multipart-sizes", default=None, help="large files, MiB, comma-separated (1024,6144)"
    )
    parser.add_argument("--parts", default=",".join(PARTS), help="a subset of " + ",".join(PARTS))
    args = parser.parse_args(argv)
    config = BenchConfig.quick() if args.quick or os.environ.get("BENCH_QUICK") else BenchConfig()
    if args.rounds:
        config.rounds = args.rounds
    if args.sizes:
        config.sizes = tuple(int(s) for s in args.sizes.split(","))
    if args.processes:
        config.processes = tuple(int(s) for s in args.processes.split(","))
    if args.peer_size:
        config.peer_size = args.peer_size
    if args.multipart_sizes:
        config.multipart_sizes_mib = tuple(int(s) for s in args.multipart_sizes.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="s3outbox-bench-"))
    started = time.monotonic()
    try:
        with bench_servers(workdir) as (settings, pids, names):
            ctx = BenchContext(settings, config, workdir, pids)
            results: Json = {"machine": machine_info(names), "config": vars(config)}
            results.update(run(ctx, args.parts.split(",")))
            results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    Path(args.output).write_text(json.dumps(results, indent=2, default=str) + "\n")
    m = results["machine"]
    print(
        f"s3-outbox bench ({config.mode}), {m['date']}, {m['cpu']}, {m['logical_cpus']} CPUs,"
        f" {m['memory_gib']} GiB, load at start {m['load_average_at_start']}"
    )
    if "targets" in results:
        print(table(results))
    else:
        print(json.dumps({k: v for k, v in results.items() if k in PARTS}, indent=1))
    print(f"\nwritten to {args.output} in {results['elapsed_seconds']} s")
    return 0
