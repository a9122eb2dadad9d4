"""Fixtures only (helpers live in tests/support). Servers start once per session; everything
else is per test and isolated: tables are truncated, and each test gets its own object-key
prefix and Dramatiq queue."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from outbox import Outbox, Settings, migrate
from tests.support.core import TEST_OVERRIDES, InlineWorker, Processes
from tests.support.require import missing
from tests.support.servers import ServerBackend, server_dir, start_backend
from worker.embedded import EmbeddedStack, StackUrls
from worker.events import EventProcessor
from worker.pool import make_pool
from worker.relay import Relay
from worker.storage import Storage

# -- servers (once per session) --------------------------------------------------------------


@pytest.fixture(scope="session")
def server_backend() -> Iterator[ServerBackend]:
    with server_dir("session") as tmp, start_backend(tmp) as backend:
        yield backend


@pytest.fixture
def servers_tmp() -> Iterator[Path]:
    """A folder for a test's own embedded servers (see ``server_dir``)."""
    with server_dir("test") as tmp:
        yield tmp


@pytest.fixture(scope="session")
def stack_urls(server_backend: ServerBackend) -> StackUrls:
    """URLs and credentials of the session's PostgreSQL, Redis and S3 servers."""
    return server_backend.urls


@pytest.fixture(scope="session")
def stack(server_backend: ServerBackend) -> EmbeddedStack | None:
    """The EmbeddedStack (to restart/kill servers), or None when servers are not ours."""
    return server_backend.stack


@pytest.fixture
def embedded_stack(server_backend: ServerBackend) -> Iterator[EmbeddedStack]:
    """The EmbeddedStack; skips the test (fails under CI) when the servers are not ours.

    After the test, any server the test left stopped or killed is started again (same ports),
    so one chaos test cannot break the next.
    """
    stack = server_backend.stack
    if stack is None:
        missing(f"needs the embedded servers (backend is {server_backend.kind})")
    yield stack
    for server in stack.servers:
        if not server.running:
            server.start()


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


# -- per test ----------------------------------------------------------------------------


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
def clean_db(base_settings: Settings) -> None:
    with psycopg.connect(base_settings.database_url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE s3outbox.events, s3outbox.documents, s3outbox.quotas,"
            " s3outbox.document_parts, s3outbox.blobs RESTART IDENTITY"
        )


@pytest.fixture
def settings(make_settings: Callable[..., Settings], clean_db: None) -> Settings:
    return make_settings()


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


@pytest.fixture
def inline_worker(settings: Settings, relay: Relay, processor: EventProcessor) -> InlineWorker:
    return InlineWorker(settings, relay, processor)


@pytest.fixture
def processes(settings: Settings, tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(settings, tmp_path)
    yield procs
    procs.stop_all()
