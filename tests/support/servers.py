"""Session fixtures giving tests real PostgreSQL, Redis and S3 servers.

The backend is chosen once per session:

1. ``S3OUTBOX_TEST_DATABASE_URL``, ``S3OUTBOX_TEST_REDIS_URL`` and ``S3OUTBOX_TEST_S3_ENDPOINT_URL``
   set (plus optional ``S3OUTBOX_TEST_S3_ACCESS_KEY_ID``, ``S3OUTBOX_TEST_S3_SECRET_ACCESS_KEY``,
   ``S3OUTBOX_TEST_S3_BUCKET``, ``S3OUTBOX_TEST_S3_REGION``): use those servers as they are.
2. ``S3OUTBOX_TEST_BACKEND=containers`` and a Docker engine answers: testcontainers
   (postgres:16-alpine, redis, minio).
3. Otherwise (the default): ``worker.embedded.EmbeddedStack`` in a temporary directory on free
   ports, started once and stopped by PID at the end of the session.

The fixtures that use this (``stack_urls``, ``stack``, ``embedded_stack``) are in conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from worker.embedded import (
    DEFAULT_ACCESS_KEY,
    DEFAULT_BUCKET,
    DEFAULT_SECRET_KEY,
    EmbeddedStack,
    StackUrls,
)

ENV_PREFIX = "S3OUTBOX_TEST_"


@dataclass
class ServerBackend:
    kind: str  # "env" | "containers" | "embedded"
    urls: StackUrls
    stack: EmbeddedStack | None = None


def _urls_from_env() -> StackUrls | None:
    names = ("DATABASE_URL", "REDIS_URL", "S3_ENDPOINT_URL")
    values = {n: os.environ.get(ENV_PREFIX + n, "") for n in names}
    if not all(values.values()):
        if any(values.values()):
            missing = [ENV_PREFIX + n for n, v in values.items() if not v]
            raise pytest.UsageError(f"incomplete test server settings: set {', '.join(missing)}")
        return None
    return StackUrls(
        database_url=values["DATABASE_URL"],
        redis_url=values["REDIS_URL"],
        s3_endpoint_url=values["S3_ENDPOINT_URL"],
        access_key=os.environ.get(ENV_PREFIX + "S3_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY),
        secret_key=os.environ.get(ENV_PREFIX + "S3_SECRET_ACCESS_KEY", DEFAULT_SECRET_KEY),
        bucket=os.environ.get(ENV_PREFIX + "S3_BUCKET", DEFAULT_BUCKET),
        region=os.environ.get(ENV_PREFIX + "S3_REGION", "us-east-1"),
    )


def docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _ensure_bucket(urls: StackUrls) -> bool:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client = boto3.client(
        "s3",
        endpoint_url=urls.s3_endpoint_url,
        aws_access_key_id=urls.access_key,
        aws_secret_access_key=urls.secret_key,
        region_name=urls.region,
        config=Config(s3={"addressing_style": "path"}),
    )
    try:
        client.head_bucket(Bucket=urls.bucket)
    except ClientError:
        client.create_bucket(Bucket=urls.bucket)
    return True


@contextlib.contextmanager
def _containers() -> Iterator[StackUrls]:
    from testcontainers.core.container import DockerContainer

    try:
        from testcontainers.postgres import PostgresContainer
        from testcontainers.redis import RedisContainer
    except ImportError:  # newer testcontainers layout
        from testcontainers.community.postgres import PostgresContainer
        from testcontainers.community.redis import RedisContainer

    access_key, secret_key = "minioadmin", "minioadmin"
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(PostgresContainer("postgres:16-alpine", driver=None))
        rd = stack.enter_context(RedisContainer("redis:7-alpine"))
        try:
            from testcontainers.minio import MinioContainer

            minio: DockerContainer = MinioContainer(
                "minio/minio:latest", access_key=access_key, secret_key=secret_key
            )
        except ImportError:  # the `minio` client package is missing: run the image directly
            minio = (
                DockerContainer("minio/minio:latest")
                .with_env("MINIO_ROOT_USER", access_key)
                .with_env("MINIO_ROOT_PASSWORD", secret_key)
                .with_command("server /data --address :9000")
                .with_exposed_ports(9000)
            )
        stack.enter_context(minio)
        s3_url = f"http://{minio.get_container_host_ip()}:{minio.get_exposed_port(9000)}"
        urls = StackUrls(
            database_url=pg.get_connection_url(driver=None),
            redis_url=f"redis://{rd.get_container_host_ip()}:{rd.get_exposed_port(6379)}/0",
            s3_endpoint_url=s3_url,
            access_key=access_key,
            secret_key=secret_key,
            bucket=DEFAULT_BUCKET,
        )
        from tests.support.util import wait_for

        wait_for(lambda: _ensure_bucket(urls), timeout=60, ignore=(Exception,))
        yield urls


@contextlib.contextmanager
def start_backend(tmp: Path) -> Iterator[ServerBackend]:
    """The session's servers (see the module docstring), stopped on exit."""
    urls = _urls_from_env()
    if urls is not None:
        yield ServerBackend("env", urls)
        return
    wanted = os.environ.get(ENV_PREFIX + "BACKEND", "embedded").strip().lower()
    if wanted == "containers":
        if docker_available():
            with _containers() as urls:
                yield ServerBackend("containers", urls)
            return
        print("S3OUTBOX_TEST_BACKEND=containers but no Docker engine: embedded", file=sys.stderr)
    elif wanted not in ("", "embedded"):
        raise pytest.UsageError(f"S3OUTBOX_TEST_BACKEND={wanted!r}: use embedded or containers")
    stack = EmbeddedStack(tmp)
    urls = stack.start()
    try:
        yield ServerBackend("embedded", urls, stack)
    finally:
        stack.stop()


@contextlib.contextmanager
def server_dir(label: str) -> Iterator[Path]:
    """A folder for embedded servers' data, outside pytest's temporary root: pytest makes its
    root private (0700) again at the start of every session, and as root PostgreSQL runs as
    another user, which would then lose access to files it still has to open when another
    pytest session starts on the same machine. Removed on exit."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=f"s3outbox-{label}-servers-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
