"""Costs that stay flat as data grows (issue 13): the events trigger notifies only when rows
were inserted, and an owner's list of live documents goes through the partial index that
holds no deleted row, in a custom plan and in a generic one (what a prepared statement
ends up with). Timings are never asserted: plans and counts are."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from outbox import Outbox, Settings, queries
from outbox.constants import NOTIFY_CHANNEL
from tests.support.util import wait_for

Conn = psycopg.Connection[Any]


@pytest.fixture
def listener(settings: Settings) -> Iterator[Conn]:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(NOTIFY_CHANNEL)))
        yield conn


def _insert_events(settings: Settings, statement: str, params: Any = None) -> None:
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(statement, params)
        conn.commit()


def _notifications_before_a_probe(listener: Conn, settings: Settings) -> int:
    """How many notifications arrive before a probe notification sent now. Notifications
    come in commit order: any sent by earlier commits arrive before the probe."""
    probe = uuid.uuid4().hex
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("NOTIFY {}, {}").format(
                pgsql.Identifier(NOTIFY_CHANNEL), pgsql.Literal(probe)
            )
        )
    got: list[str] = []

    def probed() -> bool:
        got.extend(n.payload for n in listener.notifies(timeout=0.2))
        return probe in got

    wait_for(probed, timeout=10)
    return got.index(probe)


def test_an_insert_of_no_row_notifies_nobody(listener: Conn, settings: Settings) -> None:
    _insert_events(
        settings,
        "INSERT INTO s3outbox.events (topic, document_id)"
        " SELECT 'purge', gen_random_uuid() WHERE false",
    )
    key = f"orphan/{uuid.uuid4()}"
    conflicting = (
        "INSERT INTO s3outbox.events (topic, document_id, object_key) VALUES ('purge', %s, %s)"
        " ON CONFLICT (object_key) WHERE object_key IS NOT NULL"
        " AND status IN ('pending', 'dispatched') DO NOTHING"
    )
    _insert_events(settings, conflicting, (uuid.uuid4(), key))  # inserts: one notification
    _insert_events(settings, conflicting, (uuid.uuid4(), key))  # conflicts: none
    # The first insert's notification only: nothing from the other two.
    assert _notifications_before_a_probe(listener, settings) == 1


def test_an_insert_of_many_rows_notifies_once(listener: Conn, settings: Settings) -> None:
    _insert_events(
        settings,
        "INSERT INTO s3outbox.events (topic, document_id)"
        " SELECT 'purge', gen_random_uuid() FROM generate_series(1, 50)",
    )
    assert _notifications_before_a_probe(listener, settings) == 1


def _plan_indexes(plan: Any) -> set[str]:
    """Every index a JSON plan scans."""
    found: set[str] = set()
    if isinstance(plan, dict):
        if "Index Name" in plan:
            found.add(plan["Index Name"])
        for value in plan.values():
            found |= _plan_indexes(value)
    elif isinstance(plan, list):
        for item in plan:
            found |= _plan_indexes(item)
    return found


@pytest.fixture
def heavy_deleter(settings: Settings) -> str:
    """An owner with 5,000 deleted documents and 60 live ones, analysed."""
    owner = f"deleter-{uuid.uuid4().hex[:8]}"
    # Each document with its own blob (deleted or verified, as its document).
    insert = (
        "WITH doc AS (SELECT %(owner)s || '/' || %(kind)s || i AS object_key,"
        " encode(sha256((%(owner)s || %(kind)s || i)::bytea), 'hex') AS sha256,"
        " now() - make_interval(secs => i) AS created_at FROM generate_series(1, %(n)s) i),"
        " blob AS (INSERT INTO s3outbox.blobs (object_key, size, sha256, content_type, status)"
        " SELECT object_key, 10, sha256, 'application/pdf', %(blob_status)s FROM doc)"
        " INSERT INTO s3outbox.documents (id, owner_id, object_key, filename, content_type,"
        " declared_size, sha256, status, upload_expires_at, created_at)"
        " SELECT gen_random_uuid(), %(owner)s, object_key, 'f.pdf', 'application/pdf', 10,"
        " sha256, %(status)s, now(), created_at FROM doc"
    )
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(
            insert,
            {"owner": owner, "kind": "d", "status": "deleted", "blob_status": "deleted", "n": 5000},
        )
        conn.execute(
            insert,
            {
                "owner": owner,
                "kind": "l",
                "status": "available",
                "blob_status": "verified",
                "n": 60,
            },
        )
        conn.execute("ANALYZE s3outbox.documents")
    return owner


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
def test_a_list_of_live_documents_uses_the_index_without_deleted_rows(
    settings: Settings, heavy_deleter: str, plan_cache_mode: str
) -> None:
    """EXPLAIN EXECUTE of the prepared query: a generic plan (what PostgreSQL may settle on
    for a statement psycopg prepared) must use the index as much as a custom one."""
    query = queries.load("outbox")["list_live_documents"]
    names = ["owner_id", "status", "after_created", "after_id", "limit"]
    for i, name in enumerate(names, 1):
        query = query.replace(f"%({name})s", f"${i}")
    assert "%(" not in query
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(pgsql.SQL("SET plan_cache_mode = {}").format(pgsql.Literal(plan_cache_mode)))
        conn.execute(
            pgsql.SQL("PREPARE live_page (text, text, timestamptz, uuid, bigint) AS {}").format(
                pgsql.SQL(query.strip().rstrip(";"))
            )
        )
        row = conn.execute(
            pgsql.SQL(
                "EXPLAIN (FORMAT JSON) EXECUTE live_page"
                " ({}, NULL, 'infinity', 'ffffffff-ffff-ffff-ffff-ffffffffffff', 51)"
            ).format(pgsql.Literal(heavy_deleter))
        ).fetchone()
    assert row is not None
    plan = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    assert "documents_owner_live_created" in _plan_indexes(plan)


def test_the_list_pages_through_live_documents_only(
    outbox: Outbox, conn: Conn, heavy_deleter: str
) -> None:
    seen: list[uuid.UUID] = []
    cursor = None
    while True:
        page = outbox.list(conn, owner_id=heavy_deleter, limit=25, cursor=cursor)
        seen += [d.id for d in page.items]
        assert all(d.status == "available" for d in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == len(set(seen)) == 60
    everything = outbox.list(conn, owner_id=heavy_deleter, limit=500, include_deleted=True)
    assert len(everything.items) == 500
    deleted = outbox.list(conn, owner_id=heavy_deleter, limit=10, status="deleted")
    assert [d.status for d in deleted.items] == ["deleted"] * 10


def _done_events(conn: Conn, n: int, topic: str = "purge") -> None:
    conn.execute(
        "INSERT INTO s3outbox.events (topic, document_id, status, finished_at)"
        " SELECT %s, gen_random_uuid(), 'done', now() FROM generate_series(1, %s)",
        (topic, n),
    )


def test_metric_counts_are_exact_up_to_the_cap(settings: Settings, heavy_deleter: str) -> None:
    """Below the cap every figure is the exact count, as `s3-outbox status` gives it."""
    from worker.ops import counts

    status_sql = queries.load("worker.ops", "status.sql")
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        _done_events(conn, 30, "verify")
        _done_events(conn, 20, "purge")
        conn.execute(
            "INSERT INTO s3outbox.events (topic, document_id, status)"
            " VALUES ('verify', gen_random_uuid(), 'dead'),"
            " ('expire', gen_random_uuid(), 'pending')"
        )
        exact_events = sorted(conn.execute(status_sql["event_counts"]).fetchall())
        exact_docs = sorted(conn.execute(status_sql["document_counts"]).fetchall())
        assert sorted(counts.event_counts(conn, cap=100)) == exact_events
        assert sorted(counts.document_counts(conn, cap=10_000)) == exact_docs
    assert ("verify", "done", 30) in exact_events and ("deleted", 5000) in exact_docs


def test_above_the_cap_a_metric_is_the_planner_estimate_not_a_count(
    settings: Settings, heavy_deleter: str
) -> None:
    """Above the cap, done events are the partial index's reltuples split by the topics'
    frequencies: 100 more rows inserted after the last ANALYZE do not show (a count would),
    and documents are reltuples times the state's frequency."""
    from worker.ops import counts

    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        _done_events(conn, 300, "verify")
        _done_events(conn, 100, "purge")
        conn.execute("ANALYZE s3outbox.events")
        _done_events(conn, 100, "verify")  # below the autovacuum thresholds: stays unseen
        conn.execute(
            "INSERT INTO s3outbox.events (topic, document_id, status)"
            " VALUES ('verify', gen_random_uuid(), 'dead')"
        )
        with conn.transaction():  # one snapshot: the catalog read below is the one used
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            events = {(t, s): n for t, s, n in counts.event_counts(conn, cap=50)}
            documents = dict(counts.document_counts(conn, cap=50))
            rows, freq = conn.execute(
                "SELECT c.reltuples, s.most_common_freqs[array_position("
                "s.most_common_vals::text::text[], 'deleted')]"
                " FROM pg_class c, pg_stats s WHERE c.oid = 's3outbox.documents'::regclass"
                " AND s.schemaname = 's3outbox' AND s.tablename = 'documents'"
                " AND s.attname = 'status'"
            ).fetchone() or (0, 0)
    assert events[("verify", "done")] == 300  # the estimate: the last 100 are not in it
    assert events[("purge", "done")] == 100
    assert events[("verify", "dead")] == 1  # exact, always
    assert documents["deleted"] == max(round(rows * freq), 5000)
    assert documents["available"] == 60  # below the cap: exact


def test_the_help_text_says_which_figures_are_estimates(settings: Settings) -> None:
    from worker.metrics import OutboxCollector

    helps = {f.name: f.documentation for f in OutboxCollector(settings).collect()}
    assert "estimate" in helps["s3outbox_events"] and "exact" in helps["s3outbox_events"]
    assert "estimate" in helps["s3outbox_documents"]
