"""The system under test: its servers, the run's settings, and its processes (relay,
Dramatiq workers, sweeper) in their own process groups."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from harness.chaos.config import ChaosConfig
from harness.chaos.multipart import PART_BYTES
from outbox import Settings
from outbox.settings import MIB
from worker.embedded import EmbeddedStack
from worker.servers import servers, settings_from
from worker.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def run_servers(
    data_dir: Path, stack: EmbeddedStack | None
) -> Iterator[tuple[Settings, EmbeddedStack | None]]:
    """Base settings of the servers to use, and the stack when its servers are ours."""
    if stack is not None:
        yield settings_from(stack.urls.env()), stack
        return
    with servers(data_dir / "servers") as (env, own):
        yield settings_from(env), own


def run_settings(base: Settings, config: ChaosConfig, token: str) -> Settings:
    """The run's settings: its own key prefix and queue, and short timings."""
    return Settings(
        **{
            **base.model_dump(),
            "key_prefix": f"chaos-{token}/",
            "queue_name": f"chaos{token}",
            "upload_url_ttl_seconds": config.upload_url_ttl_seconds,
            "verify_deadline_seconds": config.verify_deadline_seconds,
            "redispatch_after_seconds": config.redispatch_after_seconds,
            "actor_time_limit_seconds": config.actor_time_limit_seconds,
            "relay_poll_seconds": config.relay_poll_seconds,
            "sweeper_interval_seconds": config.sweeper_interval_seconds,
            "purge_grace_seconds": config.purge_grace_seconds,
            "max_upload_seconds": config.max_upload_seconds,
            "retry_base_seconds": config.retry_base_seconds,
            "retry_max_seconds": config.retry_max_seconds,
            "max_failures": config.max_failures,
            "db_lock_timeout_seconds": config.db_lock_timeout_seconds,
            "relay_max_in_flight": config.relay_max_in_flight,
            "worker_pool_size": config.worker_pool_size,
            "relay_metrics_port": 0,
            "sweeper_metrics_port": 0,
            "worker_metrics_port": 0,
            # Single PUTs are small; the multipart scenario's files are in 5 MiB parts.
            "max_upload_bytes": 16 * MIB,
            "multipart_threshold_bytes": PART_BYTES,
            "multipart_part_size_bytes": PART_BYTES,
        }
    )


def behind_proxy(real: Settings, proxy_url: str) -> Settings:
    """The workers' settings: storage through the proxy, URLs still signed for the real
    endpoint (the clients' uploads go straight to storage)."""
    return Settings(
        **{
            **real.model_dump(),
            "s3_endpoint_url": proxy_url,
            "s3_public_endpoint_url": real.s3_endpoint_url,
        }
    )


def supervisor(settings: Settings, logdir: Path) -> Supervisor:
    """The run's processes: their own process groups, logs in ``logdir``, the settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3OUTBOX_")}
    env.update(settings.to_env())
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    # Metrics are off (port 0), but worker processes still write multiprocess files:
    # keep them in the run's folder, not /tmp.
    prom = logdir / "prometheus"
    prom.mkdir(parents=True, exist_ok=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
    return Supervisor(env, logdir=logdir, cwd=ROOT)
