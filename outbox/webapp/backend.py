"""What the HTTP layer needs from the library: one ``Outbox`` and a connection pool, and a
transaction per request that commits before the response is sent."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from outbox.api import Outbox
from outbox.settings import Settings


class Backend:
    """The library and a psycopg pool, shared by every request of one app.

    Give it a ``pool`` to share the web app's own pool; otherwise it creates one (open it with
    ``open()``, which the app's lifespan does, and ``close()`` it at shutdown). A request that
    waits longer than ``pool_timeout`` seconds for a connection gets 503.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        outbox: Outbox | None = None,
        pool: ConnectionPool[Any] | None = None,
        pool_size: int = 10,
        pool_timeout: float = 10.0,
    ) -> None:
        self.outbox = outbox or Outbox(settings)
        self.settings = self.outbox.settings
        self._pool = pool
        self._own_pool = pool is None
        self._pool_size = pool_size
        self._pool_timeout = pool_timeout
        self._lock = threading.Lock()

    @property
    def pool(self) -> ConnectionPool[Any]:
        """The pool; created and opened on first use if the lifespan did not run."""
        if self._pool is None:
            self.open()
        assert self._pool is not None
        return self._pool

    def open(self) -> None:
        """Create and open the pool (no-op when it exists). Does not wait for PostgreSQL: a
        request made while it is down gets 503, and the pool reconnects by itself."""
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.settings.database_url,
                    min_size=1,
                    max_size=self._pool_size,
                    check=ConnectionPool.check_connection,
                    open=False,
                    name="s3outbox-api",
                    timeout=self._pool_timeout,
                )
                self._pool.open(wait=False)

    def close(self) -> None:
        """Close the pool if this backend created it."""
        with self._lock:
            if self._own_pool and self._pool is not None:
                self._pool.close()
                self._pool = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in one transaction: committed when the block ends normally,
        rolled back when it raises. Endpoints leave the block before they return, so a client
        never sees a response for work that is not committed."""
        with self.pool.connection() as conn, conn.transaction():
            yield conn
