"""The loop protocol every background service shares (relay, sweeper): start, run once,
wait, and stop gracefully on SIGTERM/SIGINT after the current iteration."""

from __future__ import annotations

import logging
import signal
import threading
from datetime import datetime
from typing import Protocol

import psycopg
import redis

log = logging.getLogger("s3outbox.service")

# Errors that mean "a server is briefly unreachable": back off and try again, never exit.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.errors.AdminShutdown,
    redis.ConnectionError,
    redis.TimeoutError,
    ConnectionError,
    TimeoutError,
)


class Service(Protocol):
    """A background service: ``run_once`` does one bounded unit of work."""

    name: str

    def run_once(self, now: datetime | None = None) -> int:
        """Do one round of work; return how many rows it handled."""
        ...

    def wait(self, stop: threading.Event) -> None:
        """Block until the next round is due or ``stop`` is set."""
        ...

    def reset(self) -> None:
        """Drop connections after a transient error, so the next round reconnects."""
        ...

    def close(self) -> None: ...


class Runner:
    """Runs a service until stopped. Transient errors back off exponentially, up to 30 s."""

    def __init__(self, service: Service, stop: threading.Event | None = None) -> None:
        self.service = service
        self.stop = stop or threading.Event()

    def install_signal_handlers(self) -> None:
        def _stop(signum: int, _frame: object) -> None:
            log.info("%s: got signal %s, stopping after this round", self.service.name, signum)
            self.stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def run_forever(self) -> None:
        log.info("%s started", self.service.name)
        delay = 0.5
        try:
            while not self.stop.is_set():
                try:
                    self.service.run_once()
                    delay = 0.5
                    self.service.wait(self.stop)
                except TRANSIENT_ERRORS as exc:
                    log.warning("%s: %s; retrying in %.1fs", self.service.name, exc, delay)
                    self.service.reset()
                    self.stop.wait(delay)
                    delay = min(delay * 2, 30.0)
        finally:
            self.service.close()
            log.info("%s stopped", self.service.name)
