"""One chaos run from start to end (see the package's docstring): servers and processes up,
the load under faults, then settling, the invariants and each scenario's expected end."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO

import psycopg

from harness.chaos.config import ChaosConfig
from harness.chaos.faults import FaultScheduler
from harness.chaos.items import ItemResult
from harness.chaos.load import join_clients, start_clients
from harness.chaos.monitor import Monitor
from harness.chaos.processes import ChaosProcesses
from harness.chaos.report import ChaosResult, format_table
from harness.chaos.state import ChaosRun
from harness.chaos.system import behind_proxy, run_servers, run_settings, supervisor
from harness.faultproxy import FaultProxy
from harness.invariants import check_invariants
from outbox import Settings, migrate, queries
from outbox.presign import make_client
from worker.embedded import EmbeddedStack
from worker.storage import ensure_bucket

Say = Callable[[str], None]


def _sql() -> dict[str, str]:
    return queries.load("harness.chaos")


def run_chaos(
    config: ChaosConfig,
    *,
    stack: EmbeddedStack | None = None,
    out: IO[str] | None = None,
) -> ChaosResult:
    """Run the whole chaos experiment and return what it found (see ``harness.chaos``).

    ``stack``: servers to use (and to restart as faults); otherwise embedded ones are
    started for the run, or the ones S3OUTBOX_* names are used without server faults.
    """
    out = out or sys.stdout

    def say(text: str) -> None:
        print(f"[chaos {time.monotonic() - t0:6.1f}s] {text}", file=out, flush=True)

    t0 = time.monotonic()
    own_dir = config.data_dir is None
    data_dir = Path(config.data_dir or tempfile.mkdtemp(prefix="s3o-chaos-")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    result = ChaosResult(config=config, data_dir=str(data_dir))
    token = uuid.uuid4().hex[:8]
    with run_servers(data_dir, stack) as (base, servers):
        amount = (
            f"{config.documents} documents"
            if config.duration_minutes is None
            else f"a soak of {config.duration_minutes:g} minutes"
        )
        say(
            f"servers: {'embedded' if servers is not None else 'given'}; seed {config.seed}, "
            f"{amount}, {config.threads} client threads"
        )
        real = run_settings(base, config, token)
        ensure_bucket(real)
        with psycopg.connect(real.database_url, autocommit=True) as conn:
            migrate(conn)
        proxy = FaultProxy(real.s3_endpoint_url, config.storage, seed=config.seed).start()
        logdir = data_dir / "logs"
        logdir.mkdir(exist_ok=True)
        supervised = supervisor(behind_proxy(real, proxy.url), logdir)
        procs = ChaosProcesses(supervised, config, logdir)
        load_done = threading.Event()
        scheduler = FaultScheduler(config, procs, servers, proxy, load_done)
        run = ChaosRun(config, real)
        monitor = Monitor(
            run, procs, lambda: _fault_sums(scheduler, proxy), say, config.figures_seconds
        )
        try:
            _limit_quota_owners(run)
            procs.start_missing()
            # The load starts once they are ready, so its first items meet working processes.
            booted = procs.wait_booted(60.0)
            say(
                f"processes {'started' if booted else 'started (still booting after 60s)'};"
                f" storage proxy {proxy.url} -> {real.s3_endpoint_url}"
            )
            _load_under_faults(run, scheduler, monitor, result, say)
            proxy.enabled = False
            # Restore anything down: servers first, then processes.
            if servers is not None:
                for server in servers.servers:
                    if not server.running:
                        server.start()
            if restarted := procs.start_missing():
                say(f"restarted {', '.join(restarted)}")
            settle_start = time.monotonic()
            say("faults stopped; waiting for the system to settle")
            result.settled = _wait_settled(
                real, config.settle_timeout_seconds, config.settle_max_seconds, say
            )
            result.settle_seconds = time.monotonic() - settle_start
            say("checking invariants")
            check_start = time.monotonic()
            result.report = check_invariants(real, settled=True)
            result.expectation_failures = _check_expectations(real, run.results)
            result.event_stats = _event_stats(real)
            result.check_seconds = time.monotonic() - check_start
        finally:
            scheduler.stop_event.set()
            monitor.stop.set()
            load_done.set()
            supervised.stop_all()
            proxy.stop()
        result.faults = _faults(scheduler, proxy)
        result.outages = [round(s, 1) for s in scheduler.outages]
        result.figures = [f.to_dict() for f in monitor.samples]
        result.clients = dict(sorted(run.counters.c.items()))
        result.scenarios = dict(Counter(r.item.scenario.value for r in run.results if not r.extra))
        result.errors = run.errors + scheduler.errors
    result.elapsed_seconds = time.monotonic() - t0
    if own_dir and not config.keep_data and result.ok:
        shutil.rmtree(data_dir, ignore_errors=True)
        result.data_dir = ""
    return result


def _faults(scheduler: FaultScheduler, proxy: FaultProxy) -> dict[str, int]:
    """Faults injected so far, by kind: the scheduler's, then the proxy's (``storage_*``)."""
    faults = {k: scheduler.counts.get(k, 0) for k in scheduler.kinds}
    faults.update({f"storage_{k}": v for k, v in proxy.faults().items()})
    return faults


def _fault_sums(scheduler: FaultScheduler, proxy: FaultProxy) -> tuple[int, int]:
    """Faults so far: the scheduler's, and the storage responses the proxy spoiled."""
    return sum(scheduler.counts.values()), sum(proxy.faults().values())


def _event_stats(settings: Settings) -> dict[str, int]:
    """What the events went through: failed attempts, the most of one event, lock timeouts
    and 403s seen (lower bounds), rescues, dead events."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        cur = conn.execute(_sql()["chaos_failure_stats"])
        row = cur.fetchone()
        names = [d.name for d in cur.description or []]
    return dict(zip(names, row or (), strict=True))


def _limit_quota_owners(run: ChaosRun) -> None:
    """The owners of the over-quota scenario get their small limit."""
    with psycopg.connect(run.settings.database_url) as conn:
        for i in range(run.config.quota_owners):
            run.outbox.set_limit(
                conn, owner_id=f"chaos-quota-{i}", limit_bytes=run.config.quota_limit_bytes
            )
        conn.commit()


def _load_under_faults(
    run: ChaosRun, scheduler: FaultScheduler, monitor: Monitor, result: ChaosResult, say: Say
) -> None:
    """The client threads' load while the scheduler injects faults and the monitor prints
    its figures every minute; returns when the load is done and the scheduler stopped."""
    config, settings = run.config, run.settings
    threads = start_clients(run, make_client(settings, settings.s3_endpoint_url))
    watcher_monitor = threading.Thread(target=monitor.run, name="chaos-monitor", daemon=True)
    watcher_monitor.start()
    total = "" if config.duration_minutes is not None else f"/{config.documents}"

    def watch_load() -> None:
        join_clients(
            run,
            threads,
            lambda: say(
                f"load: {len(run.results)}{total} documents, faults {dict(scheduler.counts)}"
            ),
        )
        result.load_seconds = time.monotonic() - run.load_started
        say(f"load finished in {result.load_seconds:.1f}s")
        scheduler.load_done.set()
        if not scheduler.todo:
            scheduler.stop_event.set()

    watcher = threading.Thread(target=watch_load, name="chaos-load", daemon=True)
    watcher.start()
    # Faults run in the main thread: servers it restarts get the parent-death signal
    # (worker.supervisor sets it only for children of the main thread).
    scheduler.run()
    watcher.join()
    monitor.stop.set()
    watcher_monitor.join()
    # The last figures: the end of the load (memory at its end included).
    say(monitor.sample(len(monitor.samples), label="end").line())


def _unsettled(settings: Settings) -> int | None:
    """Documents in a transitional state plus unfinished events (None: database away)."""
    try:
        with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5) as c:
            row = c.execute(_sql()["chaos_unsettled"]).fetchone()
    except psycopg.Error:
        return None
    return None if row is None else int(row[0])


def _waiting(settings: Settings) -> str:
    """What is still waiting, by kind, with the latest due time of each."""
    try:
        with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5) as c:
            rows = c.execute(_sql()["chaos_waiting"]).fetchall()
    except psycopg.Error:
        return "database away"
    return "; ".join(
        f"{what}: {n}" + ("" if due_in is None else f", last due {due_in:+.0f}s")
        for what, n, due_in in rows
    )


def _wait_settled(settings: Settings, stall: float, longest: float, say: Say) -> bool:
    """Poll until no document is in a transitional state and no event is unfinished
    (including events scheduled for later, e.g. the purge re-check after a URL expires).
    False when nothing settled for ``stall`` seconds, or after ``longest`` seconds: a soak's
    backlog that keeps draining is waited for, a system that stopped moving is not."""
    start = time.monotonic()
    progress_at, fewest = start, None
    last_report = 0.0
    while True:
        left = _unsettled(settings)
        if left == 0:
            return True
        now = time.monotonic()
        if left is not None and (fewest is None or left < fewest):
            progress_at, fewest = now, left
        if now - progress_at >= stall or now - start >= longest:
            say(
                f"not settled after {now - start:.0f}s ({now - progress_at:.0f}s without"
                f" progress): {left} rows still waiting ({_waiting(settings)})"
            )
            return False
        if now - last_report >= 10:
            say(f"settling: {left} documents/events still waiting ({_waiting(settings)})")
            last_report = now
        time.sleep(0.5)  # polling interval of the settle condition


def _check_expectations(settings: Settings, results: list[ItemResult]) -> list[str]:
    """Each document against what its scenario must have ended as."""
    ids = [r.document_id for r in results if r.document_id is not None]
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        rows = c.execute(_sql()["chaos_document_outcomes"], {"ids": ids}).fetchall()
    status = {r[0]: (r[1], r[2]) for r in rows}
    failures = []
    for r in results:
        if r.document_id is None or r.expected is None:
            continue
        got, reason = status.get(r.document_id, ("missing", None))
        wrong_reason = (
            r.expected_reason is not None
            and r.expected_reason.lower() not in (reason or "").lower()
        )
        if got != r.expected or wrong_reason:
            failures.append(
                f"{r.item.scenario.value} item {r.item.index} document {r.document_id}: "
                f"expected {r.expected.value}"
                + (f" naming {r.expected_reason}" if r.expected_reason else "")
                + f", got {got}"
                + (f" ({reason})" if reason else "")
            )
    return failures


def main_chaos(
    documents: int | None = None,
    seed: int | None = None,
    threads: int | None = None,
    json_path: str | None = None,
    keep_data: bool = False,
    duration_minutes: float | None = None,
) -> int:
    """The full run (or, with ``duration_minutes``, a soak); prints the table; 0 only if
    nothing broke."""
    # The library logs every call at INFO: thousands of lines that would bury the table.
    logging.getLogger("s3outbox.api").setLevel(logging.WARNING)
    config = ChaosConfig(keep_data=keep_data)
    if documents is not None:
        config.documents = documents
    if duration_minutes is not None:
        config.duration_minutes = duration_minutes
        # A relay and a worker no process fault kills: their memory over the whole soak.
        config.witnesses = True
    if seed is not None:
        config.seed = seed
    if threads is not None:
        config.threads = threads
    result = run_chaos(config)
    print(format_table(result), flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return 0 if result.ok else 1
