"""How figures are measured and summarised: medians over rounds, latency percentiles, CPU
busy per process tree, and the machine they were measured on."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from benchmarks.config import Json

#: One timed backlog: (documents/s, latencies in s, CPU cores busy per group).
Round = tuple[float, list[float], Json]


def summary(values: Sequence[float], digits: int = 1) -> Json:
    """Median, min and max of the rounds (and the rounds themselves)."""
    vals = [float(v) for v in values]
    return {
        "median": round(statistics.median(vals), digits),
        "min": round(min(vals), digits),
        "max": round(max(vals), digits),
        "rounds": [round(v, digits) for v in vals],
    }


def median_of(fig: Json) -> float:
    """The median of a ``summary``."""
    return float(fig["median"])


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(q / 100 * len(sorted_values) + 0.4999))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(rounds: list[list[float]]) -> Json:
    """p50/p95/p99 (ms) per round, summarised over rounds."""
    out: Json = {}
    for q in (50, 95, 99):
        out[f"p{q}_ms"] = summary([percentile(sorted(r), q) * 1000 for r in rounds])
    return out


def backlog_figures(rounds: Sequence[Round]) -> Json:
    """Throughput, latency and CPU of timed backlogs, summarised over their rounds."""
    return {
        "docs_per_s": summary([rate for rate, _, _ in rounds]),
        "saturation_latency": latency_summary([lat for _, lat, _ in rounds]),
        "cpu_cores_busy": {k: statistics.median(c[k] for _, _, c in rounds) for k in rounds[0][2]},
    }


class CpuMeter:
    """CPU seconds used by process trees (servers, workers) between start() and stop(), and
    by the whole machine ("machine": every process, other tenants of a shared host too)."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._start: dict[str, float] = {}
        self._machine = 0.0
        self._t0 = 0.0

    @staticmethod
    def _machine_busy() -> float:
        t = psutil.cpu_times()
        iowait = float(getattr(t, "iowait", 0.0))
        return float(sum(t)) - float(t.idle) - iowait

    @staticmethod
    def _tree_cpu(pids: list[int]) -> float:
        total = 0.0
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        t = proc.cpu_times()
                        # A child that exited (a closed connection's backend) is counted
                        # in its parent's children_* times once reaped, and only there.
                        total += t.user + t.system + t.children_user + t.children_system
        return total

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = {g: self._tree_cpu(p) for g, p in self.groups.items()}
        self._machine = self._machine_busy()

    def stop(self) -> Json:
        """Average cores busy per group over the interval."""
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        busy = {
            g: round((self._tree_cpu(p) - self._start.get(g, 0.0)) / elapsed, 2)
            for g, p in self.groups.items()
        }
        busy["machine"] = round((self._machine_busy() - self._machine) / elapsed, 2)
        return busy


def machine_info(servers: dict[str, str]) -> Json:
    """Where the figures were measured."""
    cpu_model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    versions: Json = {}
    for pkg in ("dramatiq", "psycopg", "boto3", "pgqueuer", "asyncpg", "procrastinate", "redis"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[pkg] = version(pkg)
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": cpu_model,
        "logical_cpus": psutil.cpu_count(logical=True),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in load],
        "servers": servers,
        "packages": versions,
    }
