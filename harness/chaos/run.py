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
from harness.chaos.report import ChaosResult, format_table
from harness.chaos.state import ChaosRun
from harness.chaos.system import (
    behind_proxy,
    run_servers,
    run_settings,
    start_processes,
    supervisor,
)
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
        say(
            f"servers: {'embedded' if servers is not None else 'given'}; seed {config.seed}, "
            f"{config.documents} documents, {config.threads} client threads"
        )
        real = run_settings(base, config, token)
        ensure_bucket(real)
        with psycopg.connect(real.database_url, autocommit=True) as conn:
            migrate(conn)
        proxy = FaultProxy(real.s3_endpoint_url, config.storage, seed=config.seed).start()
        logdir = data_dir / "logs"
        logdir.mkdir(exist_ok=True)
        procs = supervisor(behind_proxy(real, proxy.url), logdir)
        load_done = threading.Event()
        scheduler = FaultScheduler(config, procs, servers, proxy, load_done)
        run = ChaosRun(config, real)
        try:
            _limit_quota_owners(run)
            start_processes(procs, config)
            say(f"processes started; storage proxy {proxy.url} -> {real.s3_endpoint_url}")
            _load_under_faults(run, scheduler, result, say)
            proxy.enabled = False
            # Restore anything down: servers first, then processes.
            if servers is not None:
                for server in servers.servers:
                    if not server.running:
                        server.start()
            if restarted := start_processes(procs, config):
                say(f"restarted {', '.join(restarted)}")
            settle_start = time.monotonic()
            say("faults stopped; waiting for the system to settle")
            result.settled = _wait_settled(real, config.settle_timeout_seconds, say)
            result.settle_seconds = time.monotonic() - settle_start
            say("checking invariants")
            check_start = time.monotonic()
            result.report = check_invariants(real, settled=True)
            result.expectation_failures = _check_expectations(real, run.results)
            result.check_seconds = time.monotonic() - check_start
        finally:
            scheduler.stop_event.set()
            load_done.set()
            procs.stop_all()
            proxy.stop()
        faults = {k: scheduler.counts.get(k, 0) for k in scheduler.kinds}
        faults.update({f"storage_{k}": v for k, v in proxy.faults().items()})
        result.faults = faults
        result.clients = dict(sorted(run.counters.c.items()))
        result.scenarios = dict(Counter(r.item.scenario.value for r in run.results if not r.extra))
        result.errors = run.errors + scheduler.errors
    result.elapsed_seconds = time.monotonic() - t0
    if own_dir and not config.keep_data and result.ok:
        shutil.rmtree(data_dir, ignore_errors=True)
        result.data_dir = ""
    return result


def _limit_quota_owners(run: ChaosRun) -> None:
    """The owners of the over-quota scenario get their small limit."""
    with psycopg.connect(run.settings.database_url) as conn:
        for i in range(run.config.quota_owners):
            run.outbox.set_limit(
                conn, owner_id=f"chaos-quota-{i}", limit_bytes=run.config.quota_limit_bytes
            )
        conn.commit()


def _load_under_faults(
    run: ChaosRun, scheduler: FaultScheduler, result: ChaosResult, say: Say
) -> None:
    """The client threads' load while the scheduler injects faults; returns when the load is
    done and the scheduler stopped."""
    config, settings = run.config, run.settings
    threads = start_clients(run, make_client(settings, settings.s3_endpoint_url))

    def watch_load() -> None:
        join_clients(
            threads,
            lambda: say(
                f"load: {len(run.results)}/{config.documents} documents, "
                f"faults {dict(scheduler.counts)}"
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


def _unsettled(settings: Settings) -> int | None:
    """Documents in a transitional state plus unfinished events (None: database away)."""
    try:
        with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5) as c:
            row = c.execute(_sql()["chaos_unsettled"]).fetchone()
    except psycopg.Error:
        return None
    return None if row is None else int(row[0])


def _wait_settled(settings: Settings, timeout: float, say: Say) -> bool:
    """Poll until no document is in a transitional state and no event is unfinished
    (including events scheduled for later, e.g. the purge re-check after a URL expires)."""
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        left = _unsettled(settings)
        if left == 0:
            return True
        now = time.monotonic()
        if now >= deadline:
            say(f"not settled after {timeout:.0f}s: {left} rows still waiting")
            return False
        if now - last_report >= 10:
            say(f"settling: {left} documents/events still waiting")
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
        if got != r.expected:
            failures.append(
                f"{r.item.scenario.value} item {r.item.index} document {r.document_id}: "
                f"expected {r.expected.value}, got {got}" + (f" ({reason})" if reason else "")
            )
    return failures


def main_chaos(
    documents: int | None = None,
    seed: int | None = None,
    threads: int | None = None,
    json_path: str | None = None,
    keep_data: bool = False,
) -> int:
    """The full run; prints the table; 0 only if nothing broke."""
    # The library logs every call at INFO: thousands of lines that would bury the table.
    logging.getLogger("s3outbox.api").setLevel(logging.WARNING)
    config = ChaosConfig(keep_data=keep_data)
    if documents is not None:
        config.documents = documents
    if seed is not None:
        config.seed = seed
    if threads is not None:
        config.threads = threads
    result = run_chaos(config)
    print(format_table(result), flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return 0 if result.ok else 1
