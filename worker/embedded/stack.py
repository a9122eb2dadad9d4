"""The three servers together: start, stop, and the S3OUTBOX_* environment that reaches them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from worker.embedded.postgres import DEFAULT_POSTGRES_PORT, PostgresServer
from worker.embedded.process import DevStackError, ManagedServer
from worker.embedded.seaweed import (
    DEFAULT_ACCESS_KEY,
    DEFAULT_BUCKET,
    DEFAULT_SECRET_KEY,
    SeaweedPorts,
    SeaweedServer,
)
from worker.embedded.valkey import DEFAULT_VALKEY_PORT, ValkeyServer

DEFAULT_DATA_DIR = Path(".data")


@dataclass(frozen=True)
class StackUrls:
    """How to reach the three servers; ``env()`` gives the S3OUTBOX_* variables."""

    database_url: str
    redis_url: str
    s3_endpoint_url: str
    access_key: str = DEFAULT_ACCESS_KEY
    secret_key: str = DEFAULT_SECRET_KEY
    bucket: str = DEFAULT_BUCKET
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        return {
            "S3OUTBOX_DATABASE_URL": self.database_url,
            "S3OUTBOX_REDIS_URL": self.redis_url,
            "S3OUTBOX_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "S3OUTBOX_S3_ACCESS_KEY_ID": self.access_key,
            "S3OUTBOX_S3_SECRET_ACCESS_KEY": self.secret_key,
            "S3OUTBOX_S3_BUCKET": self.bucket,
            "S3OUTBOX_S3_REGION": self.region,
        }


@dataclass(frozen=True)
class StackPorts:
    postgres: int
    valkey: int
    seaweed: SeaweedPorts = field(default_factory=SeaweedPorts.defaults)

    @classmethod
    def defaults(cls) -> StackPorts:
        """The fixed dev ports that match ``outbox.settings.Settings`` defaults."""
        return cls(DEFAULT_POSTGRES_PORT, DEFAULT_VALKEY_PORT, SeaweedPorts.defaults())


class EmbeddedStack:
    """PostgreSQL + Valkey + SeaweedFS in ``data_dir``; free ports unless ``ports`` is given."""

    def __init__(
        self,
        data_dir: Path,
        ports: StackPorts | None = None,
        *,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        bucket: str = DEFAULT_BUCKET,
        fsync: bool = False,
        start_timeout: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.postgres = PostgresServer(
            self.data_dir,
            ports.postgres if ports else None,
            fsync=fsync,
            start_timeout=start_timeout,
        )
        self.valkey = ValkeyServer(
            self.data_dir, ports.valkey if ports else None, start_timeout=start_timeout
        )
        self.seaweed = SeaweedServer(
            self.data_dir,
            ports.seaweed if ports else None,
            access_key=access_key,
            secret_key=secret_key,
            bucket=bucket,
            start_timeout=start_timeout,
        )

    @property
    def servers(self) -> list[ManagedServer]:
        return [self.postgres, self.valkey, self.seaweed]

    @property
    def urls(self) -> StackUrls:
        return StackUrls(
            database_url=self.postgres.url,
            redis_url=self.valkey.url,
            s3_endpoint_url=self.seaweed.url,
            access_key=self.seaweed.access_key,
            secret_key=self.seaweed.secret_key,
            bucket=self.seaweed.bucket,
            region=self.seaweed.region,
        )

    def pids(self) -> dict[str, int | None]:
        return {s.name: s.pid for s in self.servers}

    def start(self) -> StackUrls:
        """Start all three (launched together, then waited for); stop all on any failure."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            # weed is the slowest to come up: launch it first, then initdb/postgres.
            for server in (self.seaweed, self.valkey, self.postgres):
                server.launch()
            for server in (self.valkey, self.postgres, self.seaweed):
                server.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.urls

    def stop(self) -> None:
        errors: list[str] = []
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as exc:
                errors.append(f"{server.name}: {exc!r}")
        if errors:
            raise DevStackError("failed to stop: " + "; ".join(errors))

    def dead_servers(self) -> list[str]:
        return [s.name for s in self.servers if not s.running]

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_stack(data_dir: Path, ports: StackPorts | None = None) -> Iterator[EmbeddedStack]:
    """``with embedded_stack(tmp) as stack: ...`` - started, and stopped on exit."""
    stack = EmbeddedStack(data_dir, ports)
    with stack:
        yield stack
