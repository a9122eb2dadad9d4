"""The load: client threads that take the run's items, paced over time, until none is left."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from harness.chaos.items import ItemResult, make_items
from harness.chaos.scenarios import deferred_step, do_item
from harness.chaos.state import ChaosRun


def client_thread(run: ChaosRun, tamper: Any) -> None:
    """Take items until none are left, then help with deferred deletes until none are left."""
    client = run.client()
    try:
        while True:
            deferred_step(run, client, force=False)
            try:
                item = run.work.get_nowait()
            except queue.Empty:
                break
            pause = run.start_at(item.index) - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing of the load, not synchronisation
            result = ItemResult(item)
            try:
                do_item(run, client, tamper, item, result)
                run.counters.inc(f"scenario:{item.scenario.value}")
            except Exception as exc:
                run.error(f"item {item.index} ({item.scenario.value}): {exc!r}")
                result.expected = None
                result.note = f"client error: {exc!r}"
            run.record(result)
        while deferred_step(run, client, force=True):
            pass
    finally:
        client.close()


def start_clients(run: ChaosRun, tamper: Any) -> list[threading.Thread]:
    """Queue the run's items and start its client threads: the load starts now.
    ``tamper`` is an S3 client that overwrites objects behind the system's back."""
    for item in make_items(run.config):
        run.work.put(item)
    run.load_started = time.monotonic()
    threads = [
        threading.Thread(target=client_thread, args=(run, tamper), name=f"chaos-client-{n}")
        for n in range(run.config.threads)
    ]
    for t in threads:
        t.start()
    return threads


def join_clients(threads: list[threading.Thread], progress: Callable[[], None]) -> None:
    """Wait until every client thread ended, calling ``progress`` every 10 s meanwhile."""
    progress_at = time.monotonic()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=1.0)
        if time.monotonic() - progress_at >= 10:
            progress_at = time.monotonic()
            progress()
