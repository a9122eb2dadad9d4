"""The run's processes (relay, Dramatiq workers, sweeper, and in a soak the witnesses) on
the one supervisor: started, killed, stopped, frozen; whether each has booted since its
last start (from its log); and the memory (RSS) of each."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import psutil

from harness.chaos.config import ChaosConfig
from worker.processes import command
from worker.supervisor import Supervisor

#: What a process writes once it has booted (a worker process: after its storage check).
_BOOTED = {
    "relay": "relay started",
    "worker": "Worker process is ready for action.",
    "sweeper": "sweeper started",
}
#: Processes that no process fault kills; an outage freezes the worker witness.
WITNESSES = ("relay-witness", "worker-witness")


def kind(name: str) -> str:
    """``relay``, ``worker`` or ``sweeper`` for a process name (witnesses included)."""
    return name.removesuffix("-witness")


class ChaosProcesses:
    """Named processes of the run on ``procs``, each started by this object."""

    def __init__(self, procs: Supervisor, config: ChaosConfig, logdir: Path) -> None:
        self.procs = procs
        self.config = config
        self.logdir = logdir
        self.names = ["relay", "worker", "sweeper"]
        if config.witnesses:
            self.names += list(WITNESSES)
        self._offsets: dict[str, int] = {}
        self._booted: set[str] = set()

    def _argv(self, name: str) -> list[str]:
        processes = self.config.worker_processes if name == "worker" else 1
        return command(kind(name), processes=processes, threads=self.config.worker_threads)

    def _processes(self, name: str) -> int:
        """How many processes of ``name`` write the boot line."""
        return self.config.worker_processes if name == "worker" else 1

    # -- starting and stopping -----------------------------------------------------------

    def start(self, name: str) -> None:
        """Start ``name`` (a no-op while it runs), noting where its log goes on from."""
        if self.procs.pid(name) is not None:
            return
        path = self.logdir / f"{name}.log"
        self._offsets[name] = path.stat().st_size if path.exists() else 0
        self._booted.discard(name)
        self.procs.start(name, self._argv(name))

    def start_missing(self) -> list[str]:
        """Start every process of the run that is not running; returns their names."""
        started = [name for name in self.names if self.procs.pid(name) is None]
        for name in started:
            self.start(name)
        return started

    def kill(self, name: str) -> None:
        """SIGKILL ``name``'s process group (waits until it is gone)."""
        self.procs.kill(name)

    def stop(self, name: str) -> None:
        """SIGTERM, as a deploy stops it (SIGKILL after the supervisor's stop timeout)."""
        self.procs.stop(name)

    def freeze(self, name: str) -> None:
        """SIGSTOP ``name``'s process group: it keeps its memory and does nothing."""
        self.procs.kill(name, signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        self.procs.kill(name, signal.SIGCONT)

    # -- looking -------------------------------------------------------------------------

    def running(self, name: str) -> bool:
        return self.procs.pid(name) is not None

    def booted(self, name: str) -> bool:
        """Has ``name`` booted since its last start (True when it is not running: nothing of
        it can be booting)? Read from its log: the boot line, once per process."""
        if name in self._booted or self.procs.pid(name) is None:
            return True
        path = self.logdir / f"{name}.log"
        with contextlib.suppress(OSError), path.open("rb") as log:
            log.seek(self._offsets.get(name, 0))
            text = log.read().decode(errors="replace")
            if text.count(_BOOTED[kind(name)]) >= self._processes(name):
                self._booted.add(name)
                return True
        return False

    def wait_booted(self, timeout: float) -> bool:
        """Wait (bounded) until every running process has booted; False on timeout."""
        deadline = time.monotonic() + timeout
        while not all(self.booted(name) for name in self.names):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)  # polling the processes' logs for their boot lines
        return True

    def rss(self) -> dict[str, list[int]]:
        """Resident memory (bytes) of each running process, by name: a Dramatiq run's worker
        processes (its parent only forks and waits: left out); every other one alone."""
        found: dict[str, list[int]] = {}
        for name in self.names:
            pid = self.procs.pid(name)
            if pid is None:
                continue
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(pid)
                members = parent.children(recursive=True) if kind(name) == "worker" else [parent]
                found[name] = [p.memory_info().rss for p in members]
        return found

    def ages(self) -> dict[str, float]:
        """Seconds since each running process (the group's leader) started."""
        found: dict[str, float] = {}
        for name in self.names:
            pid = self.procs.pid(name)
            if pid is None:
                continue
            with contextlib.suppress(psutil.Error):
                found[name] = max(0.0, time.time() - psutil.Process(pid).create_time())
        return found
