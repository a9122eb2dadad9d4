"""A call's cost does not depend on the planner's statistics (issue 13, migrations 0009-10).

After a quiet spell the statistics say the tables are small and `verified` is rare; a burst
then grows them before autovacuum analyses them again. A session that cached its plans
while the tables were small must still find every row through a key: the accept of one
document reads a handful of rows, whatever the tables hold. The counters of
``pg_stat_user_tables`` say what a call read (a plan is not visible inside a function).

Statistics that have not seen an owner yet estimate one row for it, as for a primary key: a
call that names a document and its owner must still find the document by its key, not walk
the owner's documents."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from outbox import Outbox, Settings
from worker.pool import connect

Conn = psycopg.Connection[Any]
TABLES = ("events", "documents", "blobs")
OWNER = "stale-stats"

#: `n` documents' ids, keys and contents, `tag` in their keys.
DOCS = """
WITH doc AS (
    SELECT gen_random_uuid() AS id, %(tag)s || '/' || i AS object_key,
           encode(sha256((%(tag)s || i)::bytea), 'hex') AS sha256
    FROM generate_series(1, %(n)s) i
)"""

#: Uploaded documents, each with its blob (uploading) and its verify event (pending).
UPLOADED = (
    DOCS
    + """, blob AS (
    INSERT INTO s3outbox.blobs (object_key, size, sha256, content_type, status)
    SELECT object_key, 10, sha256, 'application/pdf', 'uploading' FROM doc
), document AS (
    INSERT INTO s3outbox.documents (id, owner_id, object_key, filename, content_type,
        declared_size, sha256, status, reserved_bytes, upload_expires_at, confirmed_at)
    SELECT id, %(owner)s, object_key, 'f.pdf', 'application/pdf', 10, sha256, 'uploaded', 10,
           now(), now()
    FROM doc
)
INSERT INTO s3outbox.events (topic, document_id)
SELECT 'verify', id FROM doc
RETURNING id, document_id
"""
)

#: What a burst leaves behind: verified blobs, available documents, done events.
FINISHED = (
    DOCS
    + """, blob AS (
    INSERT INTO s3outbox.blobs (object_key, size, sha256, content_type, status)
    SELECT object_key, 10, sha256, 'application/pdf', 'verified' FROM doc
), document AS (
    INSERT INTO s3outbox.documents (id, owner_id, object_key, filename, content_type,
        declared_size, sha256, status, verified_size, charged_bytes, upload_expires_at)
    SELECT id, %(owner)s, object_key, 'f.pdf', 'application/pdf', 10, sha256, 'available',
           10, 10, now()
    FROM doc
)
INSERT INTO s3outbox.events (topic, document_id, status)
SELECT 'verify', id, 'done' FROM doc
"""
)

ACCEPT = """
SELECT s3outbox.accept_verified(e.id, d.id, d.object_key, d.declared_size, d.sha256,
                                d.content_type, d.declared_size, NULL, true)
FROM s3outbox.events e JOIN s3outbox.documents d ON d.id = e.document_id
WHERE e.id = %s
"""


@pytest.fixture
def quiet_tables(settings: Settings) -> Iterator[Conn]:
    """Tables analysed while small, autovacuum kept off them until the test ends (so the
    statistics stay those of the quiet spell); an autocommit connection."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO s3outbox.quotas (owner_id, limit_bytes, reserved_bytes)"
            " VALUES (%s, 1000000000, 1000000)",
            (OWNER,),
        )
        for table in TABLES:
            conn.execute(f"ALTER TABLE s3outbox.{table} SET (autovacuum_enabled = false)")
        try:
            yield conn
        finally:
            for table in TABLES:
                conn.execute(f"ALTER TABLE s3outbox.{table} RESET (autovacuum_enabled)")


def _reads(observer: Conn) -> dict[str, tuple[int, int]]:
    """(sequential scans, heap rows fetched through an index) of each table so far."""
    observer.execute("SELECT pg_stat_clear_snapshot()")
    rows = observer.execute(
        "SELECT relname, seq_scan, coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables"
        " WHERE schemaname = 's3outbox' AND relname = ANY(%s)",
        (list(TABLES),),
    ).fetchall()
    return {name: (int(seq), int(fetched)) for name, seq, fetched in rows}


def _flush(worker: Conn) -> None:
    """The worker session's counters into the shared statistics: a forced flush happens as
    the session goes idle, before the server answers."""
    worker.execute("SELECT pg_stat_force_next_flush()")


def test_an_accept_after_a_burst_reads_a_few_rows_with_plans_cached_while_quiet(
    settings: Settings, quiet_tables: Conn
) -> None:
    conn = quiet_tables
    quiet = conn.execute(UPLOADED, {"tag": "quiet", "n": 12, "owner": OWNER}).fetchall()
    for table in TABLES:
        conn.execute(f"ANALYZE s3outbox.{table}")

    with connect(settings) as worker:
        # More than five calls: the session settles on its cached (generic) plans.
        for event_id, _doc in quiet[:10]:
            assert worker.execute(ACCEPT, (event_id,)).fetchone() == (event_id,)

        conn.execute(FINISHED, {"tag": "burst", "n": 20000, "owner": OWNER})
        target = conn.execute(UPLOADED, {"tag": "late", "n": 1, "owner": OWNER}).fetchone()
        assert target is not None

        _flush(worker)
        before = _reads(conn)
        assert worker.execute(ACCEPT, (target[0],)).fetchone() == (target[0],)
        _flush(worker)
        after = _reads(conn)

    scans = {t: after[t][0] - before[t][0] for t in TABLES}
    fetched = {t: after[t][1] - before[t][1] for t in TABLES}
    # The ACCEPT's own join finds the event and the document once each, through keys too.
    assert scans == {t: 0 for t in TABLES}, f"sequential scans after the burst: {scans}"
    assert all(n < 50 for n in fetched.values()), f"rows read through an index: {fetched}"
    status = conn.execute(
        "SELECT status FROM s3outbox.documents WHERE id = %s", (target[1],)
    ).fetchone()
    assert status == ("available",)


def test_the_relay_session_walks_indexes_only(settings: Settings) -> None:
    with connect(settings, index_walks=True) as relay, connect(settings) as other:
        assert relay.execute("SHOW enable_seqscan").fetchone() == ("off",)
        assert other.execute("SHOW enable_seqscan").fetchone() == ("on",)
        # A statement with no index to walk still runs.
        assert relay.execute("SELECT count(*) FROM s3outbox.events").fetchone() is not None


#: Documents of one owner in a state without a verified object (`pending` or `waiting`), each
#: with its own blob (uploading) and its reservation.
RESERVED = (
    DOCS
    + """, blob AS (
    INSERT INTO s3outbox.blobs (object_key, size, sha256, content_type, status)
    SELECT object_key, 10, sha256, 'application/pdf', 'uploading' FROM doc
)
INSERT INTO s3outbox.documents (id, owner_id, object_key, filename, content_type,
    declared_size, sha256, status, reserved_bytes, upload_expires_at)
SELECT id, %(owner)s, object_key, 'f.pdf', 'application/pdf', 10, sha256, %(status)s, 10,
       now() + interval '1 hour'
FROM doc
RETURNING id
"""
)


def _owner_the_statistics_have_not_seen(conn: Conn, owner: str, reserved: int) -> str:
    """Statistics made from another owner's 12 documents, then ``owner``'s quota row (with
    ``reserved`` bytes reserved, for the documents the test adds): ``owner``."""
    conn.execute(RESERVED, {"tag": "quiet", "n": 12, "owner": OWNER, "status": "pending"})
    for table in TABLES:
        conn.execute(f"ANALYZE s3outbox.{table}")
    conn.execute(
        "INSERT INTO s3outbox.quotas (owner_id, limit_bytes, reserved_bytes)"
        " VALUES (%s, 1000000000, %s)",
        (owner, reserved),
    )
    return owner


def test_a_confirm_and_a_delete_find_the_document_by_its_key_for_an_owner_unknown_to_the_statistics(
    settings: Settings, quiet_tables: Conn, outbox: Outbox
) -> None:
    """A confirm or a delete names the document and its owner. Statistics that have not
    seen the owner yet (a new owner, or any owner before the first ANALYZE) estimate one
    row for either; the owner's index must not be chosen then, or each call walks every
    live document of that owner."""
    conn = quiet_tables
    newcomer = _owner_the_statistics_have_not_seen(conn, "stale-stats-newcomer", 30000)
    new = {"tag": "new", "n": 3000, "owner": newcomer, "status": "pending"}
    ids = [row[0] for row in conn.execute(RESERVED, new)]

    fetched: dict[str, int] = {}
    with psycopg.connect(settings.database_url) as app:
        calls: dict[str, Callable[[], object]] = {
            "confirm": lambda: outbox.confirm(app, owner_id=newcomer, document_id=ids[0]),
            "delete": lambda: outbox.delete(app, owner_id=newcomer, document_id=ids[1]),
        }
        for name, call in calls.items():
            _flush(app)
            app.commit()
            before = _reads(conn)
            call()
            app.commit()
            _flush(app)
            app.commit()
            fetched[name] = _reads(conn)["documents"][1] - before["documents"][1]

    assert all(n < 50 for n in fetched.values()), f"documents read through an index: {fetched}"
    states = conn.execute(
        "SELECT status FROM s3outbox.documents WHERE id = ANY(%s) ORDER BY status", (ids[:2],)
    ).fetchall()
    assert states == [("deleting",), ("uploaded",)]


def test_an_accept_with_waiting_documents_of_an_owner_unknown_to_the_statistics(
    settings: Settings, quiet_tables: Conn
) -> None:
    """The documents waiting on a blob are taken from the loop that locks the blob's
    documents (through its key) and updated by id: a verify with two waiting documents reads
    a handful of rows, not every waiting document through the status index, nor the owner's
    documents through its indexes (migration 0010)."""
    conn = quiet_tables
    newcomer = _owner_the_statistics_have_not_seen(conn, "stale-stats-waiting", 30030)
    # Many documents waiting on other blobs (`waiting` looks rare to the statistics).
    conn.execute(RESERVED, {"tag": "many", "n": 3000, "owner": newcomer, "status": "waiting"})
    target = conn.execute(UPLOADED, {"tag": "shared", "n": 1, "owner": newcomer}).fetchone()
    assert target is not None
    waiting = [
        row[0]
        for row in conn.execute(
            "INSERT INTO s3outbox.documents (id, owner_id, object_key, filename, content_type,"
            " declared_size, sha256, status, reserved_bytes, upload_expires_at)"
            " SELECT gen_random_uuid(), d.owner_id, d.object_key, 'copy.pdf', d.content_type,"
            " d.declared_size, d.sha256, 'waiting', 10, now()"
            " FROM s3outbox.documents d, generate_series(1, 2) WHERE d.id = %s RETURNING id",
            (target[1],),
        )
    ]

    with connect(settings) as worker:
        _flush(worker)
        before = _reads(conn)
        assert worker.execute(ACCEPT, (target[0],)).fetchone() == (target[0],)
        _flush(worker)
        after = _reads(conn)

    fetched = after["documents"][1] - before["documents"][1]
    assert fetched < 50, f"documents read through an index: {fetched}"
    states = conn.execute(
        "SELECT status FROM s3outbox.documents WHERE id = ANY(%s)", ([target[1], *waiting],)
    ).fetchall()
    assert states == [("available",)] * 3
    quota = conn.execute(
        "SELECT used_bytes, reserved_bytes FROM s3outbox.quotas WHERE owner_id = %s", (newcomer,)
    ).fetchone()
    assert quota == (30, 30000)
