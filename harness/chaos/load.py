"""The load: client threads that take the run's items, paced over time, until none is left."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from harness.chaos.items import ItemResult
from harness.chaos.scenarios import deferred_step, do_item
from harness.chaos.state import ChaosRun


def client_thread(run: ChaosRun, tamper: Any) -> None:
    """Take items until none are left, then help with deferred deletes until none are left."""
    client = run.client()
    try:
        while True:
            deferred_step(run, client, force=False)
            item = run.next_item()
            if item is None:
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
            item.release_body()  # a background thread that needs it holds its own reference
            run.record(result)
        while deferred_step(run, client, force=True):
            pass
    finally:
        client.close()


def start_clients(run: ChaosRun, tamper: Any) -> list[threading.Thread]:
    """Start the run's client threads: the load starts now. ``tamper`` is an S3 client that
    overwrites objects behind the system's back."""
    run.load_started = time.monotonic()
    threads = [
        threading.Thread(target=client_thread, args=(run, tamper), name=f"chaos-client-{n}")
        for n in range(run.config.threads)
    ]
    for t in threads:
        t.start()
    return threads


def join_clients(
    run: ChaosRun, threads: list[threading.Thread], progress: Callable[[], None]
) -> None:
    """Wait until every client thread and every background thread they started ended,
    calling ``progress`` every 10 s meanwhile."""
    progress_at = time.monotonic()
    while any(t.is_alive() for t in threads) or run.background_alive():
        for t in threads:
            t.join(timeout=1.0)
        if not any(t.is_alive() for t in threads):
            time.sleep(0.5)  # polling the background threads' end
        if time.monotonic() - progress_at >= 10:
            progress_at = time.monotonic()
            progress()
