"""What every part of a bench run shares: the servers' settings, the configuration, the
work folder, the servers' PIDs, and the database, storage and process helpers over them."""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.config import OWNER, OWNERS, BenchConfig
from benchmarks.measure import CpuMeter
from outbox import Outbox, queries
from outbox.presign import make_client
from outbox.settings import Settings
from worker.supervisor import Supervisor

ROOT = Path(__file__).resolve().parent.parent


def say(text: str) -> None:
    """Progress, on stderr (stdout is the table)."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


def sql() -> dict[str, str]:
    """The bench's named queries (``benchmarks/queries.sql``)."""
    return queries.load("benchmarks")


@dataclass
class BenchContext:
    """One run: the servers, the settings, the configuration."""

    settings: Settings
    config: BenchConfig
    workdir: Path
    server_pids: dict[str, int]

    def __post_init__(self) -> None:
        self.s3 = make_client(self.settings, self.settings.s3_endpoint_url)
        self.outbox = Outbox(self.settings)

    def connect(self, autocommit: bool = True) -> psycopg.Connection[Any]:
        return psycopg.connect(self.settings.database_url, autocommit=autocommit)

    def reset(self) -> None:
        """No documents, events or peer rows; every bench owner with an unlimited quota."""
        with self.connect() as conn:
            conn.execute(sql()["reset_tables"])
            conn.execute(
                sql()["reset_quotas"], {"owner": OWNER, "limit": 1 << 50, "owners": OWNERS}
            )

    def children(self, settings: Settings | None = None) -> Supervisor:
        """Processes the bench starts (ours or a peer's), logs in the work folder, stopped
        by PID; with ``settings`` (the run's by default) in their environment."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("S3OUTBOX_")}
        env.update((settings or self.settings).to_env())
        env["PYTHONPATH"] = str(ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.workdir / f"prom-{uuid.uuid4().hex[:8]}")
        Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
        return Supervisor(env, logdir=self.workdir, cwd=ROOT)

    def dramatiq_argv(self, module: str, processes: int, queues: list[str]) -> list[str]:
        """A Dramatiq worker of ``module``'s actors, with the configured threads."""
        return [
            sys.executable,
            "-m",
            "dramatiq",
            module,
            "--processes",
            str(processes),
            "--threads",
            str(self.config.threads),
            "--queues",
            *queues,
        ]

    def cpu_meter(self, name: str, pids: list[int]) -> CpuMeter:
        """A meter of the servers and of the process trees ``pids`` (as ``name``)."""
        return CpuMeter({**{k: [v] for k, v in self.server_pids.items()}, name: pids})
