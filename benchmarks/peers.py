"""The peers of ``make bench``: the same verify job on other task queues, same servers.

The job is the part of s3-outbox's verify that any design must do: read the document row,
HeadObject, compare size, SHA-256 and content type with what was declared, UPDATE the row.
It runs on

* **pgqueuer** (PostgreSQL queue, LISTEN/NOTIFY): ``python -m benchmarks.peers pgqueuer``;
* **procrastinate** (PostgreSQL queue, LISTEN/NOTIFY):
  ``python -m benchmarks.peers procrastinate``;
* **plain Dramatiq** (Redis), messages sent by the app itself with no outbox (the
  non-transactional baseline): ``dramatiq benchmarks.peers``; this module is also the
  Dramatiq no-op actor used to measure the broker's own limit.

Settings come from the same ``S3OUTBOX_*`` variables as the real workers. Rows live in
``s3bench.docs`` (``benchmarks/schema.sql``); objects are real ones in the bucket.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from psycopg_pool import ConnectionPool

from outbox import queries
from outbox.settings import Settings
from worker.storage import Storage
from worker.verification import Declared, mismatch

NAMESPACE = "s3bench"
NOOP_QUEUE = "bench_noop"
VERIFY_QUEUE = "bench_verify"
NOOP_ACTOR = "bench_noop"
VERIFY_ACTOR = "bench_verify"
PGQ_ENTRYPOINT = "bench_verify"
PROCRASTINATE_TASK = "bench_verify"
PROCRASTINATE_QUEUE = "bench_verify"


def _sql() -> dict[str, str]:
    return queries.load("benchmarks")


class PeerJob:
    """The verify job every peer runs: read the row, HeadObject, compare, UPDATE the row."""

    def __init__(self, settings: Settings, pool_size: int = 8) -> None:
        self.storage = Storage(settings)
        self.pool: ConnectionPool[Any] = ConnectionPool(
            settings.database_url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            open=True,
            name="s3bench-peer",
        )

    def verify(self, doc_id: str) -> str:
        """Verify one document; returns its new status ("available" or "rejected")."""
        with self.pool.connection() as conn:
            row = conn.execute(_sql()["peer_doc"], {"id": doc_id}).fetchone()
        if row is None or row[4] != "uploaded":
            return "skipped"
        info = self.storage.head(row[0])
        declared = Declared(row[1], row[2], row[3])
        problem = "missing" if info is None else mismatch(declared, info, None)
        status = "available" if problem is None else "rejected"
        with self.pool.connection() as conn:
            conn.execute(_sql()["verify_peer_doc"], {"status": status, "id": doc_id})
        return status

    def close(self) -> None:
        self.pool.close()


_job: PeerJob | None = None
_job_lock = threading.Lock()


def job(pool_size: int = 8) -> PeerJob:
    """This process's job (created on first use, after Dramatiq forks)."""
    global _job
    if _job is None:
        with _job_lock:
            if _job is None:
                _job = PeerJob(Settings(), pool_size)
    return _job


# -- plain Dramatiq ----------------------------------------------------------------------


def make_peer_broker(redis_url: str) -> RedisBroker:
    """Dramatiq as an app would use it: default middleware, its own namespace."""
    return RedisBroker(url=redis_url, namespace=NAMESPACE)  # type: ignore[no-untyped-call]


def message(queue_name: str, actor_name: str, *args: Any) -> dramatiq.Message[Any]:
    """A message for ``actor_name``, as an app that does not import the actor sends it."""
    return dramatiq.Message(
        queue_name=queue_name, actor_name=actor_name, args=args, kwargs={}, options={}
    )


broker = make_peer_broker(os.environ.get("S3OUTBOX_REDIS_URL", Settings().redis_url))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name=NOOP_ACTOR, queue_name=NOOP_QUEUE, max_retries=0)
def noop() -> None:
    """Does nothing: the broker's own cost per message."""


@dramatiq.actor(actor_name=VERIFY_ACTOR, queue_name=VERIFY_QUEUE, max_retries=3)
def verify(doc_id: str) -> None:
    """The verify job, sent by the app straight after its commit (no outbox)."""
    job().verify(doc_id)


# -- pgqueuer ------------------------------------------------------------------------------


async def run_pgqueuer(settings: Settings, concurrency: int) -> None:
    """A pgqueuer worker: ``concurrency`` jobs at a time, the job in a thread.

    * asyncpg, pgqueuer's own driver: its PsycopgDriver waits for NOTIFY in
      ``notifies(timeout=1.0)`` holding the connection's lock, so every dequeue and
      completion on that one connection waited up to 1 s (one batch per second: 9-24 docs/s).
    * ``concurrency`` threads for the jobs (asyncio's default pool has cpu_count + 4 = 6 here),
      as many picked jobs as Dramatiq prefetches (2 x threads), and the same 50 ms idle
      poll as our workers (``S3OUTBOX_WORKER_IDLE_POLL_SECONDS``), LISTEN/NOTIFY besides.
    """
    import asyncpg
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries

    conn = await asyncpg.connect(settings.database_url)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    peer = job(concurrency)

    @qm.entrypoint(PGQ_ENTRYPOINT)
    async def verify_job(item: Job) -> None:
        assert item.payload is not None
        await asyncio.to_thread(peer.verify, item.payload.decode())

    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(concurrency, thread_name_prefix="pgq-job"))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, qm.shutdown.set)
    await qm.run(
        batch_size=concurrency,
        max_concurrent_tasks=concurrency * 2,
        dequeue_timeout=timedelta(seconds=settings.worker_idle_poll_seconds),
    )


# -- procrastinate -------------------------------------------------------------------------


def procrastinate_app(settings: Settings, sync: bool = False) -> Any:
    """A procrastinate App on our database (sync connector for deferring from the app)."""
    import procrastinate

    connector: Any = (
        procrastinate.SyncPsycopgConnector(conninfo=settings.database_url)
        if sync
        else procrastinate.PsycopgConnector(conninfo=settings.database_url)
    )
    return procrastinate.App(connector=connector)


def run_procrastinate(settings: Settings, concurrency: int) -> None:
    """A procrastinate worker: ``concurrency`` jobs at a time, the job in a thread."""
    app = procrastinate_app(settings)
    peer = job(concurrency)

    @app.task(name=PROCRASTINATE_TASK, queue=PROCRASTINATE_QUEUE)  # type: ignore[untyped-decorator]
    async def verify_task(doc_id: str) -> None:
        await asyncio.to_thread(peer.verify, doc_id)

    async def work() -> None:
        # concurrency threads for the jobs, as for pgqueuer (the default pool has 6 here)
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(concurrency, thread_name_prefix="procrastinate-job")
        )
        async with app.open_async():
            await app.run_worker_async(
                queues=[PROCRASTINATE_QUEUE], concurrency=concurrency, wait=True
            )

    asyncio.run(work())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.peers pgqueuer|procrastinate --concurrency N``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers")
    parser.add_argument("peer", choices=["pgqueuer", "procrastinate"])
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    settings = Settings()
    if args.peer == "pgqueuer":
        asyncio.run(run_pgqueuer(settings, args.concurrency))
    else:
        run_procrastinate(settings, args.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
