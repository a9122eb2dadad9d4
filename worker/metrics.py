"""Prometheus metrics. Each process serves them on its own port (127.0.0.1 by default).

Relay and sweeper also export the outbox's state straight from the database at scrape time:
rows by state (estimated above a cap, worker.ops.counts) and the lag (age of the oldest
pending and oldest dispatched event).
Dramatiq worker processes run in prometheus_client's multiprocess mode (see worker.actors).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from outbox import queries
from outbox.settings import Settings
from worker.ops import counts

log = logging.getLogger("s3outbox.metrics")

EVENTS_DISPATCHED = Counter(
    "s3outbox_events_dispatched_total", "Events sent to the broker by a relay.", ["topic"]
)
EVENTS_REDISPATCHED = Counter(
    "s3outbox_events_redispatched_total",
    "Dispatched events found unfinished after redispatch_after_seconds and sent again.",
    ["topic"],
)
EVENTS_DONE = Counter("s3outbox_events_done_total", "Events handled to completion.", ["topic"])
EVENTS_RETRIED = Counter(
    "s3outbox_events_retried_total", "Failed attempts that will be retried.", ["topic"]
)
EVENTS_SNOOZED = Counter(
    "s3outbox_events_snoozed_total",
    "Verifications postponed because the object was not visible yet.",
    ["topic"],
)
EVENTS_POSTPONED = Counter(
    "s3outbox_events_postponed_total",
    "Attempts put off because storage was unavailable (not failures), by reason.",
    ["topic", "reason"],
)
EVENTS_DEAD = Counter(
    "s3outbox_events_dead_total", "Events that failed their last attempt.", ["topic"]
)
DOCUMENT_OUTCOMES = Counter(
    "s3outbox_document_transitions_total", "Document state changes made by workers.", ["status"]
)
ACTOR_DURATION = Histogram(
    "s3outbox_actor_duration_seconds",
    "Time to handle one event, storage calls included.",
    ["topic", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
SWEEPS = Counter("s3outbox_sweeper_rows_total", "Rows handled by sweeper jobs.", ["job"])
RELAY_BATCHES = Counter("s3outbox_relay_batches_total", "Claim batches run by a relay.")
BUCKET_WALK_KEYS = Counter(
    "s3outbox_bucket_walk_keys_total", "Object keys the sweeper's bucket walk listed."
)
BUCKET_WALK_ORPHANS = Counter(
    "s3outbox_bucket_walk_orphans_queued_total",
    "Purges of orphan objects (no live document, older than the horizon) the walk queued.",
)
BUCKET_WALK_PASSES = Counter(
    "s3outbox_bucket_walk_passes_total", "Passes of the bucket walk completed (every key seen)."
)
BUCKET_WALK_ERRORS = Counter(
    "s3outbox_bucket_walk_errors_total",
    "Bucket listings that failed (e.g. access_denied: no s3:ListBucket), by reason.",
    ["reason"],
)
MULTIPART_WALK_UPLOADS = Counter(
    "s3outbox_multipart_walk_uploads_total",
    "Multipart uploads in progress the sweeper's multipart walk listed.",
)
MULTIPART_WALK_ABORTED = Counter(
    "s3outbox_multipart_walk_aborted_total",
    "Orphan multipart uploads (no document uploading holds them, older than the horizon)"
    " the walk aborted.",
)
MULTIPART_WALK_ERRORS = Counter(
    "s3outbox_multipart_walk_errors_total",
    "Listings of multipart uploads that failed (e.g. access_denied: no"
    " s3:ListBucketMultipartUploads), by reason.",
    ["reason"],
)


class OutboxCollector(Collector):
    """Reads the outbox's state from PostgreSQL at scrape time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._q = queries.load("worker.ops", "status.sql")

    def collect(self) -> Iterable[Metric]:
        events = GaugeMetricFamily(
            "s3outbox_events",
            "Outbox events by topic and state. pending, dispatched and dead are exact; done is"
            f" exact up to {counts.CAP} and above that PostgreSQL's estimate (planner"
            " statistics, refreshed by VACUUM and ANALYZE).",
            labels=["topic", "status"],
        )
        documents = GaugeMetricFamily(
            "s3outbox_documents",
            f"Documents by state: exact up to {counts.CAP} per state, above that PostgreSQL's"
            " estimate (planner statistics, refreshed by VACUUM and ANALYZE).",
            labels=["status"],
        )
        pending_age = GaugeMetricFamily(
            "s3outbox_oldest_pending_event_age_seconds",
            "Age of the oldest due pending event: how long the relay is behind.",
        )
        dispatched_age = GaugeMetricFamily(
            "s3outbox_oldest_dispatched_event_age_seconds",
            "Age of the oldest dispatched, unfinished event: how long the workers are behind.",
        )
        in_flight_age = GaugeMetricFamily(
            "s3outbox_oldest_in_flight_event_age_seconds",
            "Age since creation of the oldest dispatched event (sending it again keeps it).",
        )
        unverified_age = GaugeMetricFamily(
            "s3outbox_oldest_unverified_document_age_seconds",
            "Age since confirm of the oldest uploaded document not verified yet: the workers'"
            " lag as users see it.",
        )
        walk_age = GaugeMetricFamily(
            "s3outbox_bucket_walk_last_pass_age_seconds",
            "Time since the bucket walk last completed a pass over every key (since its first"
            " pass began, before one completed).",
        )
        walk_seconds = GaugeMetricFamily(
            "s3outbox_bucket_walk_last_pass_seconds", "How long the last completed pass took."
        )
        walk_period = GaugeMetricFamily(
            "s3outbox_bucket_walk_period_seconds",
            "S3OUTBOX_BUCKET_WALK_PERIOD_SECONDS: a pass is overdue when the last one is older.",
        )
        up = GaugeMetricFamily("s3outbox_database_up", "1 when the last scrape read the database.")
        quota_bytes = GaugeMetricFamily(
            "s3outbox_quota_bytes",
            "Quota bytes summed over all owners, by kind: used, reserved, limit.",
            labels=["kind"],
        )
        blobs = GaugeMetricFamily(
            "s3outbox_blobs",
            "Blobs (stored objects, each shared by the documents of its content) by state:"
            f" exact up to {counts.CAP} per state, above that PostgreSQL's estimate.",
            labels=["status"],
        )
        storage_bytes = GaugeMetricFamily(
            "s3outbox_storage_bytes",
            "Bytes of verified blobs (stored: each content once) and bytes charged to owners"
            " (charged: each document its size); charged - stored is what sharing saves.",
            labels=["kind"],
        )
        quota_owners = GaugeMetricFamily("s3outbox_quota_owners", "Owners with a quota row.")
        quota_full = GaugeMetricFamily(
            "s3outbox_quota_owners_above_90_percent",
            "Owners whose used + reserved bytes are 90% or more of their (non-zero) limit.",
        )
        try:
            with psycopg.connect(self.settings.database_url, connect_timeout=5) as conn:
                # Estimates above a cap, never a count of every finished row: a scrape must
                # cost the same with days of retention (counts.py).
                for topic, status, n in counts.event_counts(conn):
                    events.add_metric([topic, status], n)
                for status, n in counts.document_counts(conn):
                    documents.add_metric([status], n)
                lag = conn.execute(self._q["event_lag"]).fetchone()
                assert lag is not None
                pending_age.add_metric([], lag[0])
                dispatched_age.add_metric([], lag[1])
                in_flight_age.add_metric([], lag[2])
                unverified_age.add_metric([], lag[3])
                totals = conn.execute(self._q["quota_totals"]).fetchone()
                assert totals is not None
                for kind, value in zip(("used", "reserved", "limit"), totals[:3], strict=True):
                    quota_bytes.add_metric([kind], value)
                quota_owners.add_metric([], totals[3])
                quota_full.add_metric([], totals[4])
                for status, n in counts.blob_counts(conn):  # every state, 0 included
                    blobs.add_metric([status], n)
                stored = conn.execute(self._q["storage_bytes"]).fetchone()
                assert stored is not None
                storage_bytes.add_metric(["stored"], stored[0])
                storage_bytes.add_metric(["charged"], stored[1])
                walk = conn.execute(
                    self._q["bucket_walk_progress"], {"name": self.settings.bucket_walk_cursor}
                ).fetchone()
                if walk is not None:  # no row: the walk never ran (or is turned off)
                    walk_age.add_metric([], walk[4])
                    if walk[3] is not None:
                        walk_seconds.add_metric([], walk[3])
                walk_period.add_metric([], self.settings.bucket_walk_period_seconds)
            up.add_metric([], 1)
        except (psycopg.Error, OSError) as exc:
            log.warning("metrics could not read the database: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        yield from (events, documents, pending_age, dispatched_age, in_flight_age, unverified_age)
        yield up
        yield from (quota_bytes, quota_owners, quota_full, blobs, storage_bytes)
        yield from (walk_age, walk_seconds, walk_period)


def serve(settings: Settings, port: int, *, with_database: bool) -> Any:
    """Serve this process's metrics on ``settings.metrics_host:port`` (0 disables)."""
    if port == 0:
        return None
    if with_database:
        REGISTRY.register(OutboxCollector(settings))
    server, _thread = start_http_server(port, addr=settings.metrics_host)
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)
    return server


def serve_multiprocess(settings: Settings, port: int) -> None:
    """Serve the metrics of all Dramatiq worker processes (multiprocess mode). Blocks."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import multiprocess
    from prometheus_client.exposition import make_wsgi_app

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """No access log line per scrape."""

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
        registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"]
    )
    httpd = make_server(
        settings.metrics_host, port, make_wsgi_app(registry), handler_class=QuietHandler
    )
    log.info("worker metrics on http://%s:%d/metrics", settings.metrics_host, port)
    # Requests are served in a thread, and the main thread only waits: Dramatiq's SIGTERM
    # handler (sys.exit) then ends the process here, never inside a request being served
    # (that printed a traceback of a half-written response at every shutdown).
    thread = threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True)
    thread.start()
    thread.join()
