"""Faults of processes and servers, injected on a seeded random schedule (storage faults are
the proxy's, ``harness.faultproxy``; the scheduler opens its 403 windows)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter

from harness.chaos.config import ChaosConfig
from harness.chaos.processes import ChaosProcesses
from harness.faultproxy import DENY_KIND, FAULT_KINDS, FaultProxy
from worker.embedded import EmbeddedStack

log = logging.getLogger("s3outbox.chaos")

PROCESS_FAULTS = ("kill_relay", "kill_worker", "kill_sweeper")
SERVER_FAULTS = ("restart_valkey", "restart_postgres")
#: Faults that last: every worker stopped for longer than the rescue budget; a window in
#: which storage answers 403 to the workers' object requests.
LASTING_FAULTS = ("worker_outage", "storage_403")
#: Processes that check their storage credentials when they start: a 403 window opens only
#: once each has booted (a 403 then stops it on purpose: ``worker.permissions``).
_CHECK_STORAGE_AT_BOOT = ("worker", "worker-witness", "sweeper")
#: The longest a 403 window waits for those processes to boot before it gives up (for now).
_BOOT_WAIT_SECONDS = 60.0


class FaultScheduler:
    """Injects process and server faults on a seeded random schedule until told to stop.

    With ``ensure_every_fault`` the first faults are every kind once (in a seeded order),
    and the scheduler keeps going after the load until each kind has happened. A worker
    outage does not hold the schedule up: other faults go on meanwhile (none that would
    start a worker), and the workers start again when it is over; the scheduler never ends
    in the middle of one.
    """

    def __init__(
        self,
        config: ChaosConfig,
        procs: ChaosProcesses,
        stack: EmbeddedStack | None,
        proxy: FaultProxy,
        load_done: threading.Event,
    ) -> None:
        self.config = config
        self.procs = procs
        self.stack = stack
        self.proxy = proxy
        self.load_done = load_done
        self.stop_event = threading.Event()
        self.rng = random.Random(f"{config.seed}:faults")
        self.counts: Counter[str] = Counter()
        self.timeline: list[tuple[float, str]] = []
        self.errors: list[str] = []
        #: How long each worker outage lasted (seconds, from the workers gone to restarted).
        self.outages: list[float] = []
        kinds = list(PROCESS_FAULTS)
        if stack is not None:
            kinds += SERVER_FAULTS
        kinds += LASTING_FAULTS
        self.kinds = [k for k in kinds if config.fault_weights.get(k, 0) > 0]
        self.todo = list(self.kinds) if config.ensure_every_fault else []
        self.rng.shuffle(self.todo)
        self._t0 = time.monotonic()
        self._outage_started: float | None = None
        self._outage_ends: float | None = None

    def run(self) -> None:
        if self.config.ensure_every_fault:
            for kind in FAULT_KINDS:
                self.proxy.force(kind)
        try:
            self._schedule()
        finally:
            self._end_outage(wait=not self.stop_event.is_set())

    def _schedule(self) -> None:
        while not self.stop_event.is_set():
            if self.load_done.is_set() and not self.todo:
                return
            # The schedule itself: wait between faults (not synchronisation).
            pause = self.rng.uniform(self.config.fault_min_seconds, self.config.fault_max_seconds)
            if self._outage_ends is not None:
                pause = min(pause, max(self._outage_ends - time.monotonic(), 0.0))
            if self.stop_event.wait(pause) or not self.kinds:
                return
            if self._outage_ends is not None and time.monotonic() >= self._outage_ends:
                self._end_outage(wait=False)
                continue
            kind = self._next()
            try:
                self.inject(kind)
            except Exception as exc:  # a fault that failed to apply must not end the run
                self.errors.append(f"{kind}: {exc!r}")
                log.exception("fault %s failed", kind)

    def _allowed(self, kind: str) -> bool:
        """During an outage, no fault that would start a worker or needs one running."""
        return self._outage_ends is None or kind not in (
            "kill_worker",
            "worker_outage",
            "storage_403",
        )

    def _next(self) -> str:
        for i in range(len(self.todo) - 1, -1, -1):
            if self._allowed(self.todo[i]):
                return self.todo.pop(i)
        kinds = [k for k in self.kinds if self._allowed(k)]
        weights = [self.config.fault_weights[k] for k in kinds]
        return self.rng.choices(kinds, weights)[0]

    def inject(self, kind: str) -> None:
        self.timeline.append((round(time.monotonic() - self._t0, 1), kind))
        log.info("chaos: %s", kind)
        if kind in PROCESS_FAULTS:
            name = kind.removeprefix("kill_")
            self.procs.kill(name)
            self.counts[kind] += 1
            self.stop_event.wait(
                self.rng.uniform(
                    self.config.restart_delay_min_seconds, self.config.restart_delay_max_seconds
                )
            )
            self.procs.start(name)
        elif kind == "restart_valkey":
            assert self.stack is not None
            self.stack.valkey.restart(lose_data=True)
            self.counts[kind] += 1
        elif kind == "restart_postgres":
            assert self.stack is not None
            self.stack.postgres.restart(fast=True)
            self.counts[kind] += 1
        elif kind == "worker_outage":
            self._start_outage()
        elif kind == "storage_403":
            self._deny_storage()
        else:  # pragma: no cover - kinds are ours
            raise ValueError(kind)

    # -- a worker outage longer than the rescue budget -------------------------------------

    def _start_outage(self) -> None:
        """Every worker stops (SIGTERM, as a deploy does; the witness is frozen, since its
        memory is what it measures) while relay, sweeper and load go on."""
        if "worker-witness" in self.procs.names:
            self.procs.freeze("worker-witness")
        self.procs.stop("worker")
        self._outage_started = time.monotonic()
        self._outage_ends = self._outage_started + self.config.outage_seconds
        self.counts["worker_outage"] += 1
        log.info("chaos: workers down for %.1fs", self.config.outage_seconds)

    def _end_outage(self, *, wait: bool) -> None:
        """Start the workers again; with ``wait``, only once the outage has lasted its time."""
        if self._outage_ends is None or self._outage_started is None:
            return
        if wait:
            self.stop_event.wait(max(self._outage_ends - time.monotonic(), 0.0))
        self.outages.append(time.monotonic() - self._outage_started)
        self._outage_started = self._outage_ends = None
        if "worker-witness" in self.procs.names:
            self.procs.thaw("worker-witness")
        self.procs.start("worker")

    # -- storage answering 403 -------------------------------------------------------------

    def _deny_storage(self) -> None:
        """A window of 403s for the workers' object requests, opened once every process that
        checks its credentials at boot runs and has booted; the schedule waits for its end,
        so no process starts during it. It lasts ``storage_403_seconds``, longer (up to three
        times that) until a worker's request got a 403. Not booted within a minute: tried
        again later."""
        give_up = time.monotonic() + _BOOT_WAIT_SECONDS
        names = [n for n in _CHECK_STORAGE_AT_BOOT if n in self.procs.names]
        while not all(self.procs.running(n) and self.procs.booted(n) for n in names):
            if time.monotonic() > give_up:
                log.warning("chaos: storage_403 put off: processes not running or booting")
                self.todo.insert(0, "storage_403")
                return
            if self.stop_event.wait(0.5):  # polling the processes' logs for their boot
                return
        seconds = self.config.storage_403_seconds
        before = self.proxy.faults()[DENY_KIND]
        ends = time.monotonic() + seconds
        self.proxy.deny(3 * seconds)
        self.counts["storage_403"] += 1
        self.stop_event.wait(seconds)  # the window itself
        while self.proxy.faults()[DENY_KIND] == before and time.monotonic() < ends + 2 * seconds:
            if self.stop_event.wait(0.2):  # polling the proxy for a first 403
                break
        self.proxy.deny(0)
