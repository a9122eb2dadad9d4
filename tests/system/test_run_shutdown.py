"""``s3-outbox run`` stops on the first Ctrl-C or SIGTERM, whenever it comes (servers starting,
migrations, processes starting, the demo, running), within a bounded time, and nothing it
started outlives it, not even when it is killed with SIGKILL (parent-death signal)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from tests.support.core import ROOT
from tests.support.util import wait_for

pytestmark = pytest.mark.slow

TOKEN_VARIABLE = "S3OUTBOX_TEST_RUN_TOKEN"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_run(tmp: Path, token: str, *, demo: bool) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3OUTBOX_")}
    env.update(
        {
            TOKEN_VARIABLE: token,
            "PYTHONPATH": str(ROOT),
            "S3OUTBOX_RELAY_METRICS_PORT": "0",
            "S3OUTBOX_SWEEPER_METRICS_PORT": "0",
            "S3OUTBOX_WORKER_METRICS_PORT": "0",
            "S3OUTBOX_API_PORT": str(free_port()),
        }
    )
    argv = [sys.executable, "-m", "worker.cli", "run", "--free-ports", "--data-dir", str(tmp)]
    if not demo:
        argv.append("--no-demo")
    log = (tmp.parent / f"{tmp.name}.log").open("ab")
    return subprocess.Popen(argv, env=env, cwd=tmp.parent, stdout=log, stderr=log)


def leftovers(token: str, exclude: int) -> list[str]:
    """Processes that carry the run's token in their environment (everything it started)."""
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        if proc.pid == exclude:
            continue
        try:
            if proc.environ().get(TOKEN_VARIABLE) == token and proc.status() != "zombie":
                found.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def started_processes(token: str, exclude: int) -> int:
    return len(leftovers(token, exclude))


@pytest.mark.parametrize("seed", range(6))
def test_run_stops_on_a_signal_at_any_moment_and_leaves_nothing(
    servers_tmp: Path, seed: int
) -> None:
    rng = random.Random(seed)
    token = uuid.uuid4().hex
    data = servers_tmp / "data"
    run = start_run(data, token, demo=rng.random() < 0.5)
    try:
        # A random moment: while servers start, migrations run, processes start, the demo
        # runs, or once everything runs. (The moment is the experiment, not a wait.)
        moment = rng.uniform(0.0, 12.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.wait(timeout=moment)  # returns early only if `run` ended on its own (a bug)
        assert run.poll() is None, (data.parent / "data.log").read_text()[-3000:]
        kind = rng.choice([signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
        run.send_signal(kind)
        if kind != signal.SIGKILL and rng.random() < 0.4:
            run.send_signal(kind)  # an impatient second Ctrl-C must not break the stop
        code = run.wait(timeout=90)
        log = (data.parent / "data.log").read_text(errors="replace")
        if kind != signal.SIGKILL:
            # 0 once `run` listens for signals (before it starts anything); a signal that
            # lands while Python is still importing takes its default action (130 or -N),
            # and then nothing was started yet either.
            assert code in (0, 130, -int(kind)), log[-3000:]
            if code != 0:
                assert "starting embedded" not in log, log[-3000:]
        wait_for(
            lambda: not leftovers(token, run.pid),
            timeout=60,
            message=f"nothing left running after {kind.name} at {moment:.1f}s",
        )
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for line in leftovers(token, run.pid):
            os.kill(int(line.split()[0]), signal.SIGKILL)


def test_run_killed_with_sigkill_once_everything_runs_leaves_nothing(servers_tmp: Path) -> None:
    """Killed outright once every process and server is up: the parent-death signal takes
    them all down (before, they kept running against servers that were gone)."""
    token = uuid.uuid4().hex
    run = start_run(servers_tmp / "data", token, demo=False)
    try:
        # servers (3) + relay, worker (parent + 2 processes + metrics fork), sweeper, web
        wait_for(lambda: started_processes(token, run.pid) >= 8, timeout=90, interval=0.2)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        wait_for(lambda: not leftovers(token, run.pid), timeout=60, message="nothing left")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for line in leftovers(token, run.pid):
            os.kill(int(line.split()[0]), signal.SIGKILL)
