"""Figures of a run while its load goes on, once a minute: documents per second started and
finished, faults so far, dead events, documents lost, rows still waiting, and the RSS of
every process (what a soak shows about memory)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from harness.chaos.processes import ChaosProcesses
from harness.chaos.state import ChaosRun
from outbox import queries

#: A document in a transitional state this long with no unfinished event is lost.
LOST_AFTER_SECONDS = 60.0
_MIB = 1024 * 1024


@dataclass
class Figures:
    """One sample: ``minute`` 0 is the load's start; None: PostgreSQL was away."""

    minute: int
    elapsed_seconds: float
    started: int
    started_per_second: float
    finished: int | None
    finished_per_second: float | None
    #: Faults so far: the scheduler's (kills, restarts, outages, 403 windows), and the
    #: storage responses the proxy spoiled (errors, drops, delays, stale 404s, 403s).
    faults: int
    storage_faults: int
    dead: int | None
    lost: int | None
    waiting: int | None
    #: MiB by process name (a Dramatiq run: its largest worker process).
    rss_mib: dict[str, float] = field(default_factory=dict)
    #: Seconds since each process started (a fault restarts it).
    age_seconds: dict[str, float] = field(default_factory=dict)
    #: "end" for the sample taken when the load ended.
    label: str = ""

    def line(self) -> str:
        def n(value: int | None) -> str:
            return "?" if value is None else str(value)

        rate = "?" if self.finished_per_second is None else f"{self.finished_per_second:.1f}"
        rss = " ".join(f"{k} {v:.0f}" for k, v in self.rss_mib.items())
        when = self.label or f"minute {self.minute}"
        return (
            f"{when}: documents {self.started} started "
            f"({self.started_per_second:.1f}/s), {n(self.finished)} finished ({rate}/s); "
            f"faults {self.faults} (+{self.storage_faults} storage responses); "
            f"events dead {n(self.dead)}; documents lost {n(self.lost)}; "
            f"waiting {n(self.waiting)}; RSS MiB {rss}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Monitor:
    """Samples the run every ``interval`` seconds while the load goes on (``run`` in its own
    thread until ``stop`` is set), prints each sample with ``say``, and keeps them."""

    def __init__(
        self,
        run: ChaosRun,
        procs: ChaosProcesses,
        faults: Callable[[], tuple[int, int]],
        say: Callable[[str], None],
        interval: float = 60.0,
    ) -> None:
        self.run_state = run
        self.procs = procs
        self.faults = faults
        self.say = say
        self.interval = interval
        self.samples: list[Figures] = []
        self.stop = threading.Event()
        self._t0 = 0.0

    def run(self) -> None:
        self._t0 = time.monotonic()
        self.sample()
        minute = 0
        while True:
            due = self._t0 + (minute + 1) * self.interval
            if self.stop.wait(max(due - time.monotonic(), 0.0)):  # the figures' schedule
                return
            minute += 1
            self.say(self.sample(minute).line())

    def sample(self, minute: int = 0, label: str = "") -> Figures:
        elapsed = time.monotonic() - self._t0
        previous = self.samples[-1] if self.samples else None
        span = elapsed - previous.elapsed_seconds if previous else 0.0
        started = self.run_state.started
        db = self._database()
        finished = db["finished"] if db else None
        # Finished per second since the last sample that could read the database.
        known = [f for f in self.samples if f.finished is not None]
        finished_rate = None
        if finished is not None and known:
            since = elapsed - known[-1].elapsed_seconds
            finished_rate = (finished - (known[-1].finished or 0)) / since if since > 0 else 0.0
        faults, storage_faults = self.faults()
        rss = {name: max(sizes) / _MIB for name, sizes in self.procs.rss().items() if sizes}
        figures = Figures(
            minute=minute,
            elapsed_seconds=round(elapsed, 1),
            started=started,
            started_per_second=(started - previous.started) / span if previous and span else 0.0,
            finished=finished,
            finished_per_second=finished_rate,
            faults=faults,
            storage_faults=storage_faults,
            dead=db["dead"] if db else None,
            lost=db["lost"] if db else None,
            waiting=db["waiting"] if db else None,
            rss_mib=rss,
            age_seconds={k: round(v, 1) for k, v in self.procs.ages().items()},
            label=label,
        )
        self.samples.append(figures)
        return figures

    def _database(self) -> dict[str, int] | None:
        try:
            with psycopg.connect(
                self.run_state.settings.database_url, autocommit=True, connect_timeout=5
            ) as conn:
                row = conn.execute(
                    queries.load("harness.chaos")["chaos_figures"],
                    {"margin": LOST_AFTER_SECONDS},
                ).fetchone()
        except psycopg.Error:
            return None
        if row is None:
            return None
        return {"finished": row[0], "dead": row[1], "lost": row[2], "waiting": row[3]}
