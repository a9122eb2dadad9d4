"""Dramatiq actors: one per outbox topic. Run them with the ordinary Dramatiq CLI::

    dramatiq worker.actors --processes 2 --threads 8

Each message carries (event_id, attempt), and a verify message also the document's declared
fields as a hint; the actor reads or re-checks everything in PostgreSQL, does the work, and
marks the event done in the same transaction as its writes.
"""

from __future__ import annotations

import os
import tempfile

# Metrics of all worker processes are merged through prometheus_client's multiprocess mode.
# The directory is per Dramatiq run: worker processes and the metrics fork share the parent.
# This must happen before anything imports prometheus_client.
os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR",
    os.path.join(tempfile.gettempdir(), f"s3outbox-prom-{os.getppid()}"),
)
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

import logging  # noqa: E402
import threading  # noqa: E402
from typing import Any  # noqa: E402

import dramatiq  # noqa: E402
import psycopg  # noqa: E402
from dramatiq.middleware import Middleware  # noqa: E402

from outbox import schema  # noqa: E402
from outbox.constants import Topic  # noqa: E402
from outbox.logs import configure as configure_logging  # noqa: E402
from outbox.settings import Settings  # noqa: E402
from worker import metrics, permissions  # noqa: E402
from worker.broker import ACTOR_NAMES, VERIFY_MANY_ACTOR, make_broker  # noqa: E402
from worker.events import EventProcessor  # noqa: E402
from worker.pool import make_pool  # noqa: E402
from worker.storage import Storage  # noqa: E402

log = logging.getLogger("s3outbox.actors")
settings = Settings()
_processor: EventProcessor | None = None
_lock = threading.Lock()


def processor() -> EventProcessor:
    """This process's event processor, created on first use (after Dramatiq forks)."""
    global _processor
    if _processor is None:
        with _lock:
            if _processor is None:
                _processor = EventProcessor(settings, make_pool(settings), Storage(settings))
    return _processor


def check_schema() -> None:
    """Refuse to work on a database older than this code (a clear error, then the worker
    process exits and Dramatiq stops the others). A database that cannot be reached now is
    not a reason to stop: an outage is survived, and the next boot checks again."""
    try:
        with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=10) as conn:
            schema.require_current(conn)
    except psycopg.OperationalError as exc:
        log.warning("could not check the schema version (database unreachable): %s", exc)
    except schema.SchemaOutOfDate as exc:
        log.critical("%s", exc.message)
        raise SystemExit(2) from None


def check_storage() -> None:
    """Refuse to work with storage credentials under which a missing object does not answer
    404 (``worker.permissions``): a clear error naming the permission, then the worker
    process exits and Dramatiq stops the others. Storage unreachable now is not a reason to
    stop (logged; the outage is survived)."""
    try:
        permissions.check_access(Storage(settings))
    except permissions.StorageAccessRefused as exc:
        log.critical("%s", exc)
        raise SystemExit(2) from None


def serve_worker_metrics() -> int:
    """Dramatiq fork function: one metrics endpoint for all worker processes of this run."""
    metrics.serve_multiprocess(settings, settings.worker_metrics_port)
    return 0


class WorkerSetup(Middleware):
    """Logging per process, idle polling, the metrics fork, and metrics clean-up."""

    @property
    def forks(self) -> list[Any]:
        return [serve_worker_metrics] if settings.worker_metrics_port else []

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        configure_logging(settings.log_level, settings.log_json)
        check_schema()
        check_storage()
        # The storage client and the pool's connections now, not in the first message: a
        # process's first burst would otherwise pay for them (CPU and waits), under load.
        processor()

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # An idle Redis consumer waits up to worker_timeout (1 s by default) between fetches.
        # The relay's wake (worker.wakeup) ends that wait when it sends; this bounds the
        # latency when a wake is lost.
        worker.worker_timeout = int(settings.worker_idle_poll_seconds * 1000)
        # While its prefetch buffer is full the consumer sleeps (up to worker_timeout) instead
        # of waiting for an ack; with Dramatiq's 2 per thread, threads then sat idle for 31%
        # of a backlog. Unacked messages of a killed process are re-sent anyway.
        worker.queue_prefetch = settings.worker_prefetch_per_thread * worker.worker_threads

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
        if _processor is not None:
            _processor.pool.close()


broker = make_broker(settings)
broker.add_middleware(WorkerSetup())
dramatiq.set_broker(broker)

_ACTOR_OPTIONS: dict[str, Any] = {
    # No Retries middleware on this broker: retries live in the outbox table, where they
    # survive Redis losing its data.
    "queue_name": settings.queue_name,
    "time_limit": int(settings.actor_time_limit_seconds * 1000),
}


@dramatiq.actor(actor_name=ACTOR_NAMES[Topic.VERIFY], **_ACTOR_OPTIONS)
def verify(event_id: int, attempt: int, hint: dict[str, Any] | None = None) -> None:
    """Check an uploaded object (HeadObject) and make its document available or rejected.
    ``hint``: the document's declared fields, as the relay read them (checked again)."""
    processor().process(event_id, attempt, hint=hint)


@dramatiq.actor(actor_name=VERIFY_MANY_ACTOR, **_ACTOR_OPTIONS)
def verify_many(events: list[list[Any]]) -> None:
    """Several verify events of a backlog, ``[event_id, attempt, hint]`` each: those whose
    object matches accepted in one statement, every other one alone, in its own transaction."""
    processor().process_many(events)


@dramatiq.actor(actor_name=ACTOR_NAMES[Topic.EXPIRE], **_ACTOR_OPTIONS)
def expire(event_id: int, attempt: int) -> None:
    """Finish an upload whose URL expired unconfirmed: available if the object matches."""
    processor().process(event_id, attempt)


@dramatiq.actor(actor_name=ACTOR_NAMES[Topic.PURGE], **_ACTOR_OPTIONS)
def purge(event_id: int, attempt: int) -> None:
    """Delete the object of a document that is no longer live."""
    processor().process(event_id, attempt)


@dramatiq.actor(actor_name=ACTOR_NAMES[Topic.MULTIPART_CREATE], **_ACTOR_OPTIONS)
def multipart_create(event_id: int, attempt: int) -> None:
    """Create the multipart upload of a pending multipart document and record its id."""
    processor().process(event_id, attempt)


@dramatiq.actor(actor_name=ACTOR_NAMES[Topic.DEDUP], **_ACTOR_OPTIONS)
def dedup(event_id: int, attempt: int) -> None:
    """Across owners: move a just verified blob's documents to the verified blob that already
    held the same content, and purge the duplicate object."""
    processor().process(event_id, attempt)
