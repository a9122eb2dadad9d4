"""Faults of processes and servers, injected on a seeded random schedule (storage faults are
the proxy's, ``harness.faultproxy``)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter

from harness.chaos.config import ChaosConfig
from harness.faultproxy import FAULT_KINDS, FaultProxy
from worker.embedded import EmbeddedStack
from worker.supervisor import Supervisor

log = logging.getLogger("s3outbox.chaos")

PROCESS_FAULTS = ("kill_relay", "kill_worker", "kill_sweeper")
SERVER_FAULTS = ("restart_valkey", "restart_postgres")


class FaultScheduler:
    """Injects process and server faults on a seeded random schedule until told to stop.

    With ``ensure_every_fault`` the first faults are every kind once (in a seeded order),
    and the scheduler keeps going after the load until each kind has happened.
    """

    def __init__(
        self,
        config: ChaosConfig,
        procs: Supervisor,
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
        kinds = list(PROCESS_FAULTS)
        if stack is not None:
            kinds += SERVER_FAULTS
        self.kinds = [k for k in kinds if config.fault_weights.get(k, 0) > 0]
        self.todo = list(self.kinds) if config.ensure_every_fault else []
        self.rng.shuffle(self.todo)
        self._t0 = time.monotonic()

    def run(self) -> None:
        if self.config.ensure_every_fault:
            for kind in FAULT_KINDS:
                self.proxy.force(kind)
        while not self.stop_event.is_set():
            if self.load_done.is_set() and not self.todo:
                return
            # The schedule itself: wait between faults (not synchronisation).
            pause = self.rng.uniform(self.config.fault_min_seconds, self.config.fault_max_seconds)
            if self.stop_event.wait(pause) or not self.kinds:
                return
            kind = self.todo.pop() if self.todo else self._pick()
            try:
                self.inject(kind)
            except Exception as exc:  # a fault that failed to apply must not end the run
                self.errors.append(f"{kind}: {exc!r}")
                log.exception("fault %s failed", kind)

    def _pick(self) -> str:
        weights = [self.config.fault_weights[k] for k in self.kinds]
        return self.rng.choices(self.kinds, weights)[0]

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
            self.procs.restart(name)
        elif kind == "restart_valkey":
            assert self.stack is not None
            self.stack.valkey.restart(lose_data=True)
            self.counts[kind] += 1
        elif kind == "restart_postgres":
            assert self.stack is not None
            self.stack.postgres.restart(fast=True)
            self.counts[kind] += 1
        else:  # pragma: no cover - kinds are ours
            raise ValueError(kind)
