"""Shared fixtures. Servers (``stack_urls``, ``stack``, ``embedded_stack``) come from
tests/servers.py and start once per session; everything here is per test and isolated:
tables are truncated, and each test gets its own object-key prefix and Dramatiq queue."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from outbox import Outbox, Settings, migrate
from outbox.models import UploadTicket
from tests.util import wait_for
from worker.devstack import StackUrls
from worker.handlers import EventProcessor, Outcome, make_pool
from worker.relay import Relay
from worker.storage import Storage

pytest_plugins = ["tests.servers"]

ROOT = Path(__file__).resolve().parent.parent

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


@pytest.fixture(scope="session")
def base_settings(stack_urls: StackUrls) -> Settings:
    settings = Settings(
        database_url=stack_urls.database_url,
        redis_url=stack_urls.redis_url,
        s3_endpoint_url=stack_urls.s3_endpoint_url,
        s3_access_key_id=stack_urls.access_key,
        s3_secret_access_key=stack_urls.secret_key,
        s3_bucket=stack_urls.bucket,
        s3_region=stack_urls.region,
        **TEST_OVERRIDES,
    )
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        migrate(conn)
    return settings


@pytest.fixture
def make_settings(base_settings: Settings) -> Callable[..., Settings]:
    """Settings for this test: its own key prefix and queue, plus any overrides."""
    token = uuid.uuid4().hex[:10]

    def make(**overrides: Any) -> Settings:
        values = {
            **base_settings.model_dump(),
            "key_prefix": f"test-{token}/",
            "queue_name": f"q{token}",
            **overrides,
        }
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings], clean_db: None) -> Settings:
    return make_settings()


@pytest.fixture
def clean_db(base_settings: Settings) -> None:
    with psycopg.connect(base_settings.database_url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE s3outbox.events, s3outbox.documents, s3outbox.quotas RESTART IDENTITY"
        )


@pytest.fixture
def conn(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    """A plain connection, as a web app has: not autocommit, the test commits."""
    with psycopg.connect(settings.database_url) as connection:
        yield connection


@pytest.fixture
def outbox(settings: Settings) -> Outbox:
    return Outbox(settings)


@pytest.fixture
def storage(settings: Settings) -> Storage:
    return Storage(settings)


@pytest.fixture
def processor(settings: Settings, storage: Storage) -> Iterator[EventProcessor]:
    pool = make_pool(settings, max_size=4)
    yield EventProcessor(settings, pool, storage)
    pool.close()


@pytest.fixture
def relay(settings: Settings) -> Iterator[Relay]:
    r = Relay(settings)
    yield r
    r.close()


def dispatched_events(settings: Settings, topic: str | None = None) -> list[tuple[int, int]]:
    """(id, attempt) of the events a relay has sent and nobody finished."""
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        rows = c.execute(
            "SELECT id, attempts FROM s3outbox.events WHERE status = 'dispatched'"
            " AND (%(topic)s::text IS NULL OR topic = %(topic)s::text) ORDER BY id",
            {"topic": topic},
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


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


@pytest.fixture
def inline_worker(settings: Settings, relay: Relay, processor: EventProcessor) -> InlineWorker:
    return InlineWorker(settings, relay, processor)


def sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def put(ticket: UploadTicket, body: bytes, **headers: str) -> requests.Response:
    """Upload as a browser would: an HTTP PUT to the presigned URL with its headers."""
    assert ticket.url is not None
    sent = {**ticket.headers, **headers}
    sent.pop("Content-Length", None)  # requests sets it from the body, as a browser does
    return requests.put(ticket.url, data=body, headers=sent, timeout=30)


@dataclass
class Processes:
    """relay, Dramatiq worker and sweeper as real child processes, stopped by PID."""

    settings: Settings
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logdir: Path = field(default_factory=Path)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("S3OUTBOX_")}
        env.update(settings_env(self.settings))
        env["PYTHONPATH"] = str(ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def command(self, name: str) -> list[str]:
        if name == "worker":
            return [
                sys.executable,
                "-m",
                "dramatiq",
                "worker.actors",
                "--processes",
                "1",
                "--threads",
                "4",
            ]
        return [sys.executable, "-m", "worker.cli", name]

    def start(self, *names: str) -> None:
        for name in names or ("relay", "worker", "sweeper"):
            log = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115
            self.procs[name] = subprocess.Popen(
                self.command(name),
                env=self.env(),
                cwd=ROOT,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def log(self, name: str) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def processes(settings: Settings, tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(settings, logdir=tmp_path)
    yield procs
    procs.stop_all()


def doc_status(settings: Settings, document_id: object) -> str | None:
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        row = c.execute(
            "SELECT status FROM s3outbox.documents WHERE id = %s", (document_id,)
        ).fetchone()
    return None if row is None else str(row[0])
