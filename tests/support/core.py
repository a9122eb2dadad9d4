"""What most tests share: test settings, an in-thread worker, uploads over HTTP, and the
real processes of a deployment on the one supervisor (``worker.supervisor``)."""

from __future__ import annotations

import hashlib
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests

from outbox import Settings
from outbox.models import UploadTicket
from tests.support.util import wait_for
from worker.events import EventProcessor, Outcome
from worker.processes import command
from worker.relay import Relay
from worker.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[2]

# Short timings so tests finish fast; each test may override with make_settings(...).
TEST_OVERRIDES: dict[str, Any] = {
    "verify_deadline_seconds": 3.0,
    "retry_base_seconds": 0.05,
    "retry_max_seconds": 0.5,
    "redispatch_after_seconds": 3.0,
    "relay_poll_seconds": 0.2,
    "sweeper_interval_seconds": 0.5,
    "purge_grace_seconds": 1.0,
    "relay_metrics_port": 0,
    "sweeper_metrics_port": 0,
    "worker_metrics_port": 0,
    "max_upload_bytes": 10 * 1024 * 1024,
}


def settings_env(settings: Settings) -> dict[str, str]:
    """The S3OUTBOX_* environment that reproduces ``settings`` in a child process."""
    return settings.to_env()


def child_env(settings: Settings) -> dict[str, str]:
    """The whole environment of a child process running with ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3OUTBOX_")}
    env.update(settings.to_env())
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def put(ticket: UploadTicket, body: bytes, **headers: str) -> requests.Response:
    """Upload as a browser would: an HTTP PUT to the presigned URL with its headers."""
    assert ticket.url is not None
    sent = {**ticket.headers, **headers}
    sent.pop("Content-Length", None)  # requests sets it from the body, as a browser does
    return requests.put(ticket.url, data=body, headers=sent, timeout=30)


def dispatched_events(settings: Settings, topic: str | None = None) -> list[tuple[int, int]]:
    """(id, attempt) of the events a relay has sent and nobody finished."""
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        rows = c.execute(
            "SELECT id, attempts FROM s3outbox.events WHERE status = 'dispatched'"
            " AND (%(topic)s::text IS NULL OR topic = %(topic)s::text) ORDER BY id",
            {"topic": topic},
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def doc_status(settings: Settings, document_id: object) -> str | None:
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        row = c.execute(
            "SELECT status FROM s3outbox.documents WHERE id = %s", (document_id,)
        ).fetchone()
    return None if row is None else str(row[0])


@dataclass
class InlineWorker:
    """Relay + event processor in the test's own thread: deterministic, no broker consumer.
    (Messages still go to the real Redis; the per-test queue is never consumed.)"""

    settings: Settings
    relay: Relay
    processor: EventProcessor
    outcomes: list[Outcome] = field(default_factory=list)

    def step(self, topic: str | None = None) -> int:
        """Dispatch what is due, then handle every dispatched event once."""
        self.relay.run_once()
        events = dispatched_events(self.settings, topic)
        for event_id, attempt in events:
            self.outcomes.append(self.processor.process(event_id, attempt))
        return len(events)

    def drain(self, timeout: float = 15.0) -> None:
        """Step until no event is pending or dispatched (snoozed ones wait until due)."""

        def settled() -> bool:
            self.step()
            with psycopg.connect(self.settings.database_url, autocommit=True) as c:
                row = c.execute(
                    "SELECT count(*) FROM s3outbox.events WHERE status IN ('pending','dispatched')"
                    " AND available_at <= now()"
                ).fetchone()
            return row is not None and row[0] == 0

        wait_for(settled, timeout=timeout, interval=0.02, message="the outbox to drain")


class Processes(Supervisor):
    """relay, a Dramatiq worker (1 process x 4 threads) and sweeper as real child processes
    with the test's settings, logs in the test's folder, stopped by PID."""

    def __init__(self, settings: Settings, logdir: Path) -> None:
        super().__init__(child_env(settings), logdir=logdir, cwd=ROOT)
        self.settings = settings

    def command(self, name: str) -> list[str]:
        return command(name, processes=1, threads=4)

    def start(self, *names: str) -> None:  # type: ignore[override]
        for name in names or ("relay", "worker", "sweeper"):
            super().start(name, self.command(name))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal ``name``'s process group and wait for it to exit."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop(self, name: str) -> None:
        super().stop(name)
        self.procs.pop(name, None)
