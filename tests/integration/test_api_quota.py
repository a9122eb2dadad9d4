"""Quotas through the public API: QuotaExceeded, set_limit, invariant 4, and concurrent
requests from many connections that only some of which fit."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from outbox import DocumentStatus, InvalidInput, Outbox, QuotaBelowUsage, QuotaExceeded, Settings
from tests.support.api import body_of, quota_row, request, sha, snapshot, sql
from tests.support.core import put


def _invariant_4(settings: Settings, owner: str) -> tuple[int, int, int]:
    """Check invariant 4 for ``owner`` on committed data and return (limit, used, reserved)."""
    row = quota_row(settings, owner)
    assert row is not None
    limit, used, reserved = row
    assert used >= 0 and reserved >= 0
    assert used + reserved <= limit
    charged, pending = sql(
        settings,
        "SELECT coalesce(sum(charged_bytes), 0)::bigint, coalesce(sum(reserved_bytes), 0)::bigint"
        " FROM s3outbox.documents WHERE owner_id = %s",
        (owner,),
    )[0]
    assert used == charged
    assert reserved == pending
    return limit, used, reserved


def _in_threads(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` for i in range(n) in n threads released together; re-raise any error."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    if errors:
        raise errors[0]
    return results


# -- QuotaExceeded / set_limit -------------------------------------------------------------


def test_quota_exceeded_carries_the_figures_and_writes_nothing(outbox, conn, settings):
    outbox.set_limit(conn, owner_id="alice", limit_bytes=1000)
    request(outbox, conn, body_of(400))
    conn.commit()
    before = snapshot(settings)
    with pytest.raises(QuotaExceeded) as err:
        request(outbox, conn, body_of(601))
    exc = err.value
    assert exc.http_status == 413
    assert (exc.used, exc.reserved, exc.limit, exc.requested) == (0, 400, 1000, 601)
    assert exc.to_dict() == {
        "error": "quota_exceeded",
        "message": exc.message,
        "used": 0,
        "reserved": 400,
        "limit": 1000,
        "requested": 601,
    }
    conn.commit()
    assert snapshot(settings) == before
    # Exactly what is left still fits.
    request(outbox, conn, body_of(600))
    conn.commit()
    assert quota_row(settings, "alice") == (1000, 0, 1000)


def test_quota_exceeded_for_a_new_owner_leaves_no_quota_row(outbox, conn, make_settings):
    small = make_settings(default_quota_bytes=100)
    ob = Outbox(small)
    before = snapshot(small)
    with pytest.raises(QuotaExceeded) as err:
        request(ob, conn, body_of(101), owner="newcomer")
    assert (err.value.limit, err.value.used, err.value.reserved) == (100, 0, 0)
    conn.commit()
    assert snapshot(small) == before
    assert quota_row(small, "newcomer") is None


def test_zero_limit_refuses_everything(outbox, conn, settings):
    outbox.set_limit(conn, owner_id="alice", limit_bytes=0)
    conn.commit()
    with pytest.raises(QuotaExceeded):
        request(outbox, conn, body_of(1))
    conn.commit()
    assert quota_row(settings, "alice") == (0, 0, 0)


def test_set_limit_below_usage_is_refused_and_changes_nothing(outbox, conn, settings):
    outbox.set_limit(conn, owner_id="alice", limit_bytes=1000)
    request(outbox, conn, body_of(700))
    conn.commit()
    before = snapshot(settings)
    with pytest.raises(QuotaBelowUsage) as err:
        outbox.set_limit(conn, owner_id="alice", limit_bytes=699)
    assert err.value.http_status == 409
    assert err.value.details == {"used": 0, "reserved": 700, "limit": 699}
    conn.commit()
    assert snapshot(settings) == before
    # Exactly the usage is fine; the quota call agrees with the row.
    q = outbox.set_limit(conn, owner_id="alice", limit_bytes=700)
    conn.commit()
    assert (q.limit_bytes, q.used_bytes, q.reserved_bytes, q.free_bytes) == (700, 0, 700, 0)
    assert outbox.quota(conn, owner_id="alice") == q


def test_set_limit_for_a_new_owner_creates_the_row(outbox, conn, settings):
    q = outbox.set_limit(conn, owner_id="carol", limit_bytes=12345)
    conn.commit()
    assert (q.owner_id, q.limit_bytes, q.used_bytes, q.reserved_bytes) == ("carol", 12345, 0, 0)
    assert quota_row(settings, "carol") == (12345, 0, 0)


def test_quota_of_an_unknown_owner_is_the_default_and_writes_nothing(outbox, conn, settings):
    before = snapshot(settings)
    q = outbox.quota(conn, owner_id="nobody-yet")
    conn.commit()
    assert (q.owner_id, q.limit_bytes, q.used_bytes, q.reserved_bytes) == (
        "nobody-yet",
        settings.default_quota_bytes,
        0,
        0,
    )
    assert q.free_bytes == settings.default_quota_bytes
    assert snapshot(settings) == before


# -- invariant 4 through the lifecycle -----------------------------------------------------


def test_invariant_4_after_verify_and_after_delete_and_purge(outbox, conn, settings, inline_worker):
    outbox.set_limit(conn, owner_id="alice", limit_bytes=10_000)
    bodies = [body_of(n) for n in (1000, 2500, 333)]
    tickets = [request(outbox, conn, b) for b in bodies]
    conn.commit()
    assert _invariant_4(settings, "alice") == (10_000, 0, 3833)
    for t, b in zip(tickets, bodies, strict=True):
        assert put(t, b).status_code == 200
        outbox.confirm(conn, owner_id="alice", document_id=t.document.id)
    conn.commit()
    inline_worker.drain()
    assert _invariant_4(settings, "alice") == (10_000, 3833, 0)
    for t in tickets:
        assert outbox.get(conn, owner_id="alice", document_id=t.document.id).status == "available"

    # Delete one: still charged while deleting, released when purged.
    outbox.delete(conn, owner_id="alice", document_id=tickets[0].document.id)
    conn.commit()
    assert _invariant_4(settings, "alice") == (10_000, 3833, 0)
    inline_worker.drain()
    assert _invariant_4(settings, "alice") == (10_000, 2833, 0)

    # Delete the rest, twice each, and process every event twice: never below zero.
    for t in tickets:
        outbox.delete(conn, owner_id="alice", document_id=t.document.id)
        outbox.delete(conn, owner_id="alice", document_id=t.document.id)
    conn.commit()
    inline_worker.drain()
    for event_id, _topic in sql(settings, "SELECT id, topic FROM s3outbox.events"):
        inline_worker.processor.process(event_id, 1)
    assert _invariant_4(settings, "alice") == (10_000, 0, 0)
    statuses = {s for (s,) in sql(settings, "SELECT status FROM s3outbox.documents")}
    assert statuses == {DocumentStatus.DELETED.value}


def test_delete_of_uploaded_document_releases_its_reservation(
    outbox, conn, settings, inline_worker
):
    body = body_of(500)
    t = request(outbox, conn, body)
    conn.commit()
    assert put(t, body).status_code == 200
    outbox.confirm(conn, owner_id="alice", document_id=t.document.id)
    outbox.delete(conn, owner_id="alice", document_id=t.document.id)
    conn.commit()
    assert _invariant_4(settings, "alice")[1:] == (0, 0)
    inline_worker.drain()
    assert _invariant_4(settings, "alice")[1:] == (0, 0)
    assert outbox.get(conn, owner_id="alice", document_id=t.document.id).status == "deleted"


# -- concurrency ---------------------------------------------------------------------------


def _request_in_own_transaction(
    settings: Settings, outbox: Outbox, owner: str, body: bytes
) -> tuple[str, Any]:
    with psycopg.connect(settings.database_url) as c:
        try:
            ticket = request(outbox, c, body, owner=owner)
        except QuotaExceeded as exc:
            c.rollback()
            return "refused", exc
        c.commit()
        return "ok", ticket


def test_concurrent_equal_requests_admit_exactly_what_fits(outbox, settings):
    threads, per_thread, size, fits = 16, 4, 1000, 23
    outbox_limit = fits * size + size - 1  # room for 23 and a bit, never 24
    with psycopg.connect(settings.database_url) as c:
        outbox.set_limit(c, owner_id="crowd", limit_bytes=outbox_limit)
        c.commit()

    def work(i: int) -> list[tuple[str, Any]]:
        return [
            _request_in_own_transaction(settings, outbox, "crowd", body_of(size))
            for _ in range(per_thread)
        ]

    results = [r for rs in _in_threads(threads, work) for r in rs]
    ok = [r for kind, r in results if kind == "ok"]
    refused = [r for kind, r in results if kind == "refused"]
    assert len(ok) == fits
    assert len(refused) == threads * per_thread - fits
    assert len({t.document.id for t in ok}) == fits
    assert _invariant_4(settings, "crowd") == (outbox_limit, 0, fits * size)
    for exc in refused:
        assert exc.used + exc.reserved + exc.requested > exc.limit


def test_concurrent_random_requests_never_overcommit(outbox, settings):
    rng = random.Random(20240917)
    threads, per_thread, limit = 16, 5, 200_000
    sizes = [[rng.randint(1, 12_000) for _ in range(per_thread)] for _ in range(threads)]
    assert sum(map(sum, sizes)) > 2 * limit  # only some can fit
    with psycopg.connect(settings.database_url) as c:
        outbox.set_limit(c, owner_id="crowd", limit_bytes=limit)
        c.commit()

    def work(i: int) -> list[tuple[int, str, Any]]:
        out = []
        for n in sizes[i]:
            kind, result = _request_in_own_transaction(settings, outbox, "crowd", body_of(n))
            out.append((n, kind, result))
        return out

    results = [r for rs in _in_threads(threads, work) for r in rs]
    ok_sizes = [n for n, kind, _ in results if kind == "ok"]
    refused = [(n, exc) for n, kind, exc in results if kind == "refused"]
    assert ok_sizes and refused
    _, used, reserved = _invariant_4(settings, "crowd")
    assert used == 0
    assert reserved == sum(ok_sizes) <= limit
    declared = sql(
        settings,
        "SELECT coalesce(sum(declared_size), 0)::bigint, count(*) FROM s3outbox.documents"
        " WHERE owner_id = 'crowd' AND status = 'pending'",
    )[0]
    assert declared == (reserved, len(ok_sizes))
    # No false refusal: reservations only grew, so whatever was refused still cannot fit.
    for n, exc in refused:
        assert exc.requested == n
        assert exc.used + exc.reserved + n > limit
        assert reserved + n > limit


def test_concurrent_requests_of_the_same_content_make_one_document(outbox, settings):
    body = body_of(4321)
    n = 16

    def work(i: int) -> tuple[str, Any]:
        return _request_in_own_transaction(settings, outbox, "dup", body)

    results = _in_threads(n, work)
    assert all(kind == "ok" for kind, _ in results)
    tickets = [t for _, t in results]
    assert len({t.document.id for t in tickets}) == 1
    assert sum(not t.deduplicated for t in tickets) == 1
    assert all(t.url is not None for t in tickets)  # still pending: everyone gets a URL
    rows = sql(settings, "SELECT sha256, status FROM s3outbox.documents WHERE owner_id = 'dup'")
    assert rows == [(sha(body), "pending")]
    assert _invariant_4(settings, "dup")[1:] == (0, 4321)


def test_concurrent_first_requests_of_many_new_owners(outbox, settings):
    """Quota rows are created on first use; racing first requests must not fail."""
    n = 16

    def work(i: int) -> tuple[str, Any]:
        return _request_in_own_transaction(settings, outbox, f"new-{i % 4}", body_of(100))

    results = _in_threads(n, work)
    assert all(kind == "ok" for kind, _ in results)
    for k in range(4):
        assert _invariant_4(settings, f"new-{k}") == (settings.default_quota_bytes, 0, 400)


def test_concurrent_set_limit_and_requests_keep_invariant_4(outbox, settings):
    with psycopg.connect(settings.database_url) as c:
        outbox.set_limit(c, owner_id="race", limit_bytes=50_000)
        c.commit()
    limits = [10_000, 60_000, 20_000, 5_000, 40_000, 30_000, 15_000, 45_000]

    def work(i: int) -> list[str]:
        out = []
        with psycopg.connect(settings.database_url) as c:
            for j in range(6):
                try:
                    if i % 2:
                        outbox.set_limit(c, owner_id="race", limit_bytes=limits[(i + j) % 8])
                    else:
                        request(outbox, c, body_of(1000 + i), owner="race")
                    c.commit()
                    out.append("ok")
                except (QuotaExceeded, QuotaBelowUsage) as exc:
                    c.rollback()
                    out.append(type(exc).__name__)
        return out

    results = [r for rs in _in_threads(12, work) for r in rs]
    assert "ok" in results
    _invariant_4(settings, "race")


def test_set_limit_rejects_a_negative_limit_without_writing(outbox, conn, settings):
    before = snapshot(settings)
    with pytest.raises(InvalidInput):
        outbox.set_limit(conn, owner_id="alice", limit_bytes=-1)
    conn.commit()
    assert snapshot(settings) == before
