"""The sweeper's bucket walk (worker/maintenance/bucket_walk.py), the backstop of invariant 7:
a rolling cursor over the keys under the prefix, persisted, a bounded number of pages per
round, orphan purges queued through the outbox and carried out by the real purge actor.

Real servers; the walk's clock is driven with ``now=`` (objects are "old" by moving the
clock past the horizon, never by waiting)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from outbox import DocumentStatus, Outbox, Settings
from tests.support.core import InlineWorker, put
from tests.support.repair import available, body_for, raw_put
from tests.support.worker import (
    Background,
    blob_exists,
    db_now,
    doc_row,
    drain_at,
    query,
    request,
    upload,
)
from worker.events import EventProcessor
from worker.maintenance.bucket_walk import TRACE_ID, BucketWalk
from worker.metrics import OutboxCollector
from worker.ops.status import render_status, status_report
from worker.pool import connect
from worker.relay import Relay
from worker.storage import Storage
from worker.sweeper import Sweeper

Conn = psycopg.Connection[Any]


@pytest.fixture
def walk_settings(settings: Settings, make_settings: Callable[..., Settings]):
    """The test's settings (same prefix and queue) with a walk of small pages."""

    def make(**overrides: Any) -> Settings:
        return make_settings(**{"key_prefix": settings.key_prefix, **overrides})

    return make


@pytest.fixture
def sweepers() -> Iterator[Callable[[Settings], Sweeper]]:
    made: list[Sweeper] = []

    def make(settings: Settings) -> Sweeper:
        made.append(Sweeper(settings))
        return made[-1]

    yield make
    for s in made:
        s.close()


def cursor(settings: Settings) -> dict[str, Any] | None:
    rows = query(
        settings,
        "SELECT * FROM s3outbox.maintenance_cursors WHERE name = %s",
        (settings.bucket_walk_cursor,),
    )
    return rows[0] if rows else None


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def stray_objects(settings: Settings, storage: Storage, n: int) -> list[str]:
    """``n`` objects no row names, sorted by key (the listing's order)."""
    keys = sorted(f"{settings.key_prefix}{uuid.uuid4()}" for _ in range(n))
    for key in keys:
        raw_put(storage, key)
    return keys


def key_purges(settings: Settings) -> dict[str, int]:
    rows = query(
        settings,
        "SELECT object_key, count(*) AS n FROM s3outbox.events WHERE object_key IS NOT NULL"
        " GROUP BY object_key",
    )
    return {r["object_key"]: r["n"] for r in rows}


def past_horizon(settings: Settings) -> datetime:
    """A clock at which every object put so far is older than the orphan horizon."""
    return db_now(settings) + timedelta(seconds=settings.orphan_horizon_seconds + 60)


# -- what is an orphan ----------------------------------------------------------------------


def test_old_orphans_are_queued_and_purged_young_and_live_objects_are_not(
    outbox: Outbox,
    conn: Conn,
    settings: Settings,
    storage: Storage,
    relay: Relay,
    processor: EventProcessor,
    inline_worker: InlineWorker,
    sweepers: Callable[[Settings], Sweeper],
):
    live = available(outbox, conn, inline_worker, "alice", body_for("live"))
    pending = upload(outbox, conn, "alice", body_for("pending"), confirm=False).document
    no_row, stray = f"{settings.key_prefix}{uuid.uuid4()}", f"{settings.key_prefix}stray.bin"
    raw_put(storage, no_row)
    raw_put(storage, stray)
    # A row no longer live: deleted, then a late PUT with its still-valid URL, and the purge
    # re-check that would have removed it died (a bug, an operator, a lost database row...).
    body = body_for("late")
    ticket = upload(outbox, conn, "bob", body)
    inline_worker.drain()
    outbox.delete(conn, owner_id="bob", document_id=ticket.document.id)
    conn.commit()
    inline_worker.drain()
    assert put(ticket, body).status_code == 200
    query(
        settings,
        "UPDATE s3outbox.events SET status = 'dead' WHERE document_id = %s AND status = 'pending'",
        (ticket.document.id,),
    )
    late = ticket.document.object_key
    assert doc_row(settings, ticket.document.id)["status"] == DocumentStatus.DELETED

    sweeper = sweepers(settings)
    # Young: nothing is queued, though a whole pass looked at every key.
    soon = db_now(settings) + timedelta(seconds=10)
    assert sweeper.run_job("bucket_walk", now=soon) == 0
    assert key_purges(settings) == {}
    walked = cursor(settings)
    assert walked is not None and walked["last_pass_finished_at"] == soon
    # Older than the horizon: the three orphans, each once; live objects are left alone.
    far = past_horizon(settings)
    assert sweeper.run_job("bucket_walk", now=far) == 3
    assert key_purges(settings) == {no_row: 1, stray: 1, late: 1}
    traces = query(settings, "SELECT trace_id FROM s3outbox.events WHERE object_key IS NOT NULL")
    assert {e["trace_id"] for e in traces} == {TRACE_ID}
    assert sweeper.run_job("bucket_walk", now=far) == 0  # already queued

    # The real purge actor carries them out.
    drain_at(settings, relay, processor, far)
    for key in (no_row, stray, late):
        assert not blob_exists(settings, key), key
    assert blob_exists(settings, live.object_key) and blob_exists(settings, pending.object_key)
    assert doc_row(settings, live.id)["status"] == DocumentStatus.AVAILABLE
    assert doc_row(settings, pending.id)["status"] == DocumentStatus.PENDING
    assert sweeper.run_job("bucket_walk", now=far) == 0


def test_the_horizon_is_derived_from_the_longest_url_and_upload(
    walk_settings: Callable[..., Settings], storage: Storage, sweepers
):
    short = {"upload_url_ttl_seconds": 600, "upload_url_max_ttl_seconds": 600}
    settings = walk_settings(**short, max_upload_seconds=300)
    assert settings.orphan_horizon_seconds == 600 + 300 + settings.purge_grace_seconds
    (key,) = stray_objects(settings, storage, 1)
    put_at = db_now(settings)
    sweeper = sweepers(settings)
    assert sweeper.run_job("bucket_walk", now=put_at + timedelta(seconds=880)) == 0
    assert sweeper.run_job("bucket_walk", now=put_at + timedelta(seconds=920)) == 1
    assert key_purges(settings) == {key: 1}

    raised = walk_settings(**short, max_upload_seconds=300, orphan_min_age_seconds=7200)
    assert raised.orphan_horizon_seconds == 7200


# -- the cursor ------------------------------------------------------------------------------


def test_the_cursor_persists_across_sweepers_wraps_and_records_each_pass(
    walk_settings: Callable[..., Settings], storage: Storage, sweepers
):
    settings = walk_settings(bucket_walk_page_size=2, bucket_walk_pages_per_round=1)
    keys = stray_objects(settings, storage, 5)
    seen, passes = (
        counter("s3outbox_bucket_walk_keys_total"),
        counter("s3outbox_bucket_walk_passes_total"),
    )
    t = db_now(settings)

    sweepers(settings).run_job("bucket_walk", now=t + timedelta(seconds=1))
    first = cursor(settings)
    assert first is not None
    assert (first["position"], first["pass_started_at"], first["last_pass_finished_at"]) == (
        keys[1],
        t + timedelta(seconds=1),
        None,
    )
    # A new sweeper (a restart) carries on where the last one stopped.
    sweepers(settings).run_job("bucket_walk", now=t + timedelta(seconds=2))
    assert cursor(settings)["position"] == keys[3]  # type: ignore[index]
    sweepers(settings).run_job("bucket_walk", now=t + timedelta(seconds=3))
    ended = cursor(settings)
    assert ended is not None
    assert (ended["position"], ended["pass_started_at"]) == ("", None)
    assert ended["last_pass_finished_at"] == t + timedelta(seconds=3)
    assert ended["last_pass_seconds"] == 2.0
    assert counter("s3outbox_bucket_walk_passes_total") == passes + 1
    # Wrapped: the next round starts the next pass from the first key.
    sweepers(settings).run_job("bucket_walk", now=t + timedelta(seconds=4))
    again = cursor(settings)
    assert again is not None
    assert (again["position"], again["pass_started_at"]) == (keys[1], t + timedelta(seconds=4))
    assert again["last_pass_finished_at"] == t + timedelta(seconds=3)
    assert counter("s3outbox_bucket_walk_keys_total") == seen + 2 + 2 + 1 + 2


def test_pages_per_round_are_bounded_and_a_round_stops_at_the_end_of_a_pass(
    walk_settings: Callable[..., Settings], storage: Storage, sweepers
):
    keys = stray_objects(walk_settings(), storage, 5)
    two = walk_settings(bucket_walk_page_size=2, bucket_walk_pages_per_round=2)
    seen = counter("s3outbox_bucket_walk_keys_total")
    passes = counter("s3outbox_bucket_walk_passes_total")
    sweeper = sweepers(two)
    sweeper.run_job("bucket_walk")
    assert cursor(two)["position"] == keys[3]  # type: ignore[index]
    assert counter("s3outbox_bucket_walk_keys_total") == seen + 4
    sweeper.run_job("bucket_walk")  # one page is left: the pass ends, the next waits
    assert cursor(two)["position"] == ""  # type: ignore[index]
    assert counter("s3outbox_bucket_walk_keys_total") == seen + 5

    many = walk_settings(bucket_walk_page_size=2, bucket_walk_pages_per_round=100)
    sweepers(many).run_job("bucket_walk")  # three pages: one whole pass, and no more
    walked = cursor(many)
    assert walked is not None and walked["position"] == ""
    assert counter("s3outbox_bucket_walk_keys_total") == seen + 10
    assert counter("s3outbox_bucket_walk_passes_total") == passes + 2

    off = walk_settings(bucket_walk_pages_per_round=0, key_prefix=f"off-{uuid.uuid4().hex}/")
    assert sweepers(off).run_job("bucket_walk") == 0
    assert cursor(off) is None


# -- concurrency -----------------------------------------------------------------------------


def test_two_sweepers_at_once_queue_one_purge_per_key(
    walk_settings: Callable[..., Settings], storage: Storage, sweepers
):
    settings = walk_settings(bucket_walk_page_size=3, bucket_walk_pages_per_round=10)
    keys = stray_objects(settings, storage, 14)
    far = past_horizon(settings)
    a, b = sweepers(settings), sweepers(settings)
    start = threading.Barrier(2)

    def walk(sweeper: Sweeper) -> int:
        start.wait(timeout=10)
        return sweeper.run_job("bucket_walk", now=far)

    queued = [Background(lambda s=s: walk(s)) for s in (a, b)]
    assert sum(q.join() for q in queued) == len(keys)
    assert key_purges(settings) == {k: 1 for k in keys}


class ListingHook(Storage):
    """Real storage; runs ``hook`` once, right after the next listing returns (before the
    walk examines that page and moves the cursor)."""

    def __init__(self, settings: Settings, hook: Callable[[], None]) -> None:
        super().__init__(settings)
        self.hook: Callable[[], None] | None = hook

    def list_page(
        self, prefix: str, start_after: str, max_keys: int
    ) -> tuple[list[dict[str, Any]], bool]:
        page = super().list_page(prefix, start_after, max_keys)
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return page


def test_a_sweeper_that_listed_a_page_another_one_walked_meanwhile_changes_nothing(
    walk_settings: Callable[..., Settings], storage: Storage
):
    """Sweeper A lists the first page; before it acts, sweeper B walks that page and the
    next. A's purges are already queued, and it cannot move the cursor back."""
    settings = walk_settings(bucket_walk_page_size=2, bucket_walk_pages_per_round=1)
    keys = stray_objects(settings, storage, 5)
    far = past_horizon(settings)
    b = BucketWalk(settings)
    with connect(settings) as conn_a, connect(settings) as conn_b:

        def b_walks_two_pages() -> None:
            b.step(conn_b, far)
            b.step(conn_b, far)

        a = BucketWalk(settings, ListingHook(settings, b_walks_two_pages))
        page = a.step(conn_a, far)
    assert page is not None and (page.keys, page.queued, page.pass_ended) == (2, 0, False)
    assert cursor(settings)["position"] == keys[3]  # type: ignore[index]
    assert key_purges(settings) == {k: 1 for k in keys[:4]}


# -- storage refusing the listing ----------------------------------------------------------


def test_a_refused_listing_is_counted_and_never_stops_the_sweepers_other_jobs(
    outbox: Outbox,
    conn: Conn,
    walk_settings: Callable[..., Settings],
    settings: Settings,
    sweepers,
):
    # Due for expiry: the sweeper's first job has work.
    request(
        outbox,
        conn,
        "alice",
        body_for("abandoned"),
        now=db_now(settings) - timedelta(hours=2),
    )
    refused = walk_settings(s3_secret_access_key="not-the-secret")
    errors = counter("s3outbox_bucket_walk_errors_total", reason="access_denied")
    assert sweepers(refused).run_once() == 1  # the expire event; the walk queued nothing
    assert counter("s3outbox_bucket_walk_errors_total", reason="access_denied") == errors + 1
    walked = cursor(refused)
    assert walked is not None
    assert (walked["position"], walked["pass_started_at"]) == ("", None)  # did not move
    assert query(settings, "SELECT topic FROM s3outbox.events") == [{"topic": "expire"}]


# -- what operators see ----------------------------------------------------------------------


def test_status_and_metrics_show_the_walk(
    walk_settings: Callable[..., Settings], storage: Storage, sweepers
):
    settings = walk_settings(bucket_walk_page_size=2, bucket_walk_pages_per_round=1)
    assert status_report(settings)["bucket_walk"] is None
    assert "BUCKET WALK: not started" in render_status(status_report(settings))
    keys = stray_objects(settings, storage, 3)
    sweeper = sweepers(settings)
    sweeper.run_job("bucket_walk")
    report = status_report(settings)["bucket_walk"]
    assert report["position"] == keys[1] and report["last_pass_finished_at"] is None
    assert "no pass completed yet" in render_status(status_report(settings))
    sweeper.run_job("bucket_walk")
    report = status_report(settings)["bucket_walk"]
    assert report["position"] == "" and report["last_pass_seconds"] >= 0
    assert report["period_seconds"] == settings.bucket_walk_period_seconds
    text = render_status(status_report(settings))
    assert "BUCKET WALK: at the start; last pass ended" in text and "OVERDUE" not in text

    samples = {
        s.name: s.value for family in OutboxCollector(settings).collect() for s in family.samples
    }
    assert 0 <= samples["s3outbox_bucket_walk_last_pass_age_seconds"] < 3600
    assert samples["s3outbox_bucket_walk_last_pass_seconds"] == report["last_pass_seconds"]
    assert samples["s3outbox_bucket_walk_period_seconds"] == settings.bucket_walk_period_seconds
