"""One process supervisor for everything that starts s3-outbox's processes: ``s3-outbox run``,
the chaos run, the benchmark and the tests.

Each child runs in its own process group (so a Dramatiq parent and its worker processes
are killed together), is owned by PID, gets a parent-death signal on Linux (it does not outlive
the supervising process, even after a SIGKILL), and logs to ``<logdir>/<name>.log`` or, with
no logdir, to our stdout with its name in front of each line.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

_PR_SET_PDEATHSIG = 1


def parent_death_preexec(sig: signal.Signals) -> Callable[[], None] | None:
    """A Popen ``preexec_fn`` that makes the child get ``sig`` when its parent dies (Linux).

    The kernel sends the signal when the *thread* that forked the child exits, not the
    process: a child started from a short-lived thread would be stopped as soon as that
    thread ends. Only the main thread lives as long as the process, so only children
    forked from it get the signal (others rely on their process group being stopped).
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return preexec


def _pump(name: str, stream: IO[bytes]) -> None:
    for raw in iter(stream.readline, b""):
        print(f"{name:>8} | {raw.decode(errors='replace').rstrip()}", flush=True)


class Supervisor:
    """Named child processes, each in its own process group, stopped by PID.

    ``env`` is the whole environment of every child; ``logdir`` None pumps their output to
    stdout. Thread-safe: a fault injector may kill and restart while a client thread reads.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        logdir: Path | None = None,
        cwd: Path | None = None,
        stop_timeout: float = 20.0,
    ) -> None:
        self.env = dict(env)
        self.logdir = logdir
        self.cwd = cwd
        self.stop_timeout = stop_timeout
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.commands: dict[str, list[str]] = {}
        self._lock = threading.RLock()

    # -- starting ------------------------------------------------------------------------

    def start(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` as ``name`` (a no-op while ``name`` is running)."""
        with self._lock:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                return proc
            self.commands[name] = list(argv)
            if self.logdir is not None:
                self.logdir.mkdir(parents=True, exist_ok=True)
                with (self.logdir / f"{name}.log").open("ab") as out:
                    proc = self._popen(argv, out)
            else:
                proc = self._popen(argv, subprocess.PIPE)
                assert proc.stdout is not None
                threading.Thread(target=_pump, args=(name, proc.stdout), daemon=True).start()
            self.procs[name] = proc
            return proc

    def _popen(self, argv: Sequence[str], out: IO[bytes] | int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
            preexec_fn=parent_death_preexec(signal.SIGTERM),
        )

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start ``name`` again with the command it last ran."""
        return self.start(name, self.commands[name])

    def ensure_running(self) -> list[str]:
        """Start again every child that exited; returns their names."""
        with self._lock:
            dead = self.dead()
            for name in dead:
                self.restart(name)
            return dead

    # -- looking -------------------------------------------------------------------------

    def pid(self, name: str) -> int | None:
        proc = self.procs.get(name)
        return proc.pid if proc is not None and proc.poll() is None else None

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.poll() is None]

    def dead(self) -> list[str]:
        """Names of the children that exited."""
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def check(self) -> None:
        """Raise RuntimeError (with the log's tail) when a child exited."""
        for name in self.dead():
            code = self.procs[name].returncode
            raise RuntimeError(f"{name} exited with {code}:\n{self.log(name)[-3000:]}")

    def log(self, name: str) -> str:
        """What ``name`` wrote so far (with a logdir), else ''."""
        if self.logdir is None:
            return ""
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- stopping ------------------------------------------------------------------------

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to ``name``'s process group; wait for it when it is SIGKILL."""
        with self._lock:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            if sig == signal.SIGKILL:
                proc.wait(timeout=30)

    def stop(self, name: str) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout``."""
        self.stop_all([name])

    def stop_all(self, names: Sequence[str] | None = None) -> None:
        """Stop ``names`` (default: every child) together: SIGTERM to each child, wait up to
        ``stop_timeout`` in all, SIGKILL what is left (a SIGKILLed Dramatiq parent can leave
        worker processes behind in its group, so each group is SIGKILLed at the end).

        SIGTERM goes to the child alone, not to its group: a Dramatiq parent passes it on to
        its worker processes, and a worker process that gets a second SIGTERM while stopping
        exits at once ("Killing worker process"), its messages in hand cut off. Sent to the
        group, every worker process got two, so no stop was ever graceful."""
        with self._lock:
            chosen = [self.procs[n] for n in (names if names is not None else list(self.procs))]
            for proc in chosen:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            for proc in chosen:
                try:
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            for proc in chosen:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
