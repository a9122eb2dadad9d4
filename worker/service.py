"""The loop protocol every background service shares (relay, sweeper): start, run once,
wait, and stop gracefully on SIGTERM/SIGINT after the current round."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

import psycopg
import redis

from outbox import schema
from outbox.settings import Settings

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


class Stop(Protocol):
    """What a service's ``wait`` is given: a ``StopFlag`` (or a ``threading.Event``)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class StopFlag:
    """ "Stop now", safe to set from a signal handler.

    ``threading.Event.set()`` takes the lock that ``Event.wait()`` holds, so a handler that
    runs while the main thread waits on the same event hangs forever. Here ``set`` only
    assigns a bool and writes a byte to a pipe (no lock), and ``wait`` sleeps in
    ``select()`` on that pipe, so it wakes at once.
    """

    def __init__(self) -> None:
        self._set = False
        self.signum: int | None = None
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def set(self, signum: int | None = None) -> None:
        if signum is not None and self.signum is None:
            self.signum = signum
        self._set = True
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write, b"x")

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until set or ``timeout`` seconds passed; returns whether it is set."""
        if not self._set:
            with contextlib.suppress(InterruptedError, ValueError, OSError):
                select.select([self._read], [], [], timeout)
        return self._set

    def install(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Set this flag on each of ``signals`` (main thread only)."""
        for sig in signals:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.set(signum)

    def close(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


class Service(Protocol):
    """A background service: ``run_once`` does one bounded unit of work."""

    name: str

    def run_once(self, now: datetime | None = None) -> int:
        """Do one round of work; return how many rows it handled."""
        ...

    def wait(self, stop: Stop) -> None:
        """Block until the next round is due or ``stop`` is set."""
        ...

    def reset(self) -> None:
        """Drop connections after a transient error, so the next round reconnects."""
        ...

    def close(self) -> None: ...


class Runner:
    """Runs a service until stopped. Transient errors back off exponentially, up to 30 s."""

    def __init__(self, service: Service, stop: StopFlag | None = None) -> None:
        self.service = service
        self.stop = stop or StopFlag()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the loop after the current round (the handler only records)."""
        self.stop.install()

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
            if self.stop.signum is not None:
                log.info("%s: got signal %s", self.service.name, self.stop.signum)
            log.info("%s stopped", self.service.name)


def wait_for_schema(settings: Settings, stop: Stop) -> bool:
    """Before a service starts: wait (backing off) until PostgreSQL answers, then refuse to
    run on an older schema. False when stopped while waiting.

    Raises:
        SchemaOutOfDate: a migration is pending (run ``s3-outbox migrate``).
    """
    delay = 0.5
    while not stop.is_set():
        try:
            with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=10) as c:
                schema.require_current(c)
            return True
        except TRANSIENT_ERRORS as exc:
            log.warning("waiting for PostgreSQL: %s; retrying in %.1fs", exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, 30.0)
    return False
