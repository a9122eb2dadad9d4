"""Versioned migrations (outbox/schema.py) on throw-away databases of the session's server.

- schema.sql and "every migration" give the same catalog (a readable diff when they do not);
- every earlier schema upgrades with its data: the unversioned schema.sql of each release
  before migrations (snapshots from git history in legacy_schemas/<commit>.sql) and each
  versioned state 1..N;
- ``migrate`` takes no lock when up to date, serialises concurrent runs, gives up with
  ``MigrationLocked`` behind a long transaction, and inside a caller's transaction (Alembic,
  Django) commits nothing;
- the CLI (``migrate``, ``--check``) and the processes (relay, sweeper, Dramatiq workers)
  as real subprocesses: the processes refuse to start on an older schema;
- the Django migration of examples/django_app, run by Django's own ``migrate`` command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from outbox import MigrationLocked, Outbox, Settings, migrate, queries, schema
from outbox.constants import BlobStatus, DocumentStatus, EventStatus, Topic
from outbox.schema import Migration
from tests.support import catalog
from tests.support.core import ROOT, child_env, sha256_hex
from tests.support.databases import throwaway_database
from tests.support.util import wait_for
from worker.processes import command

Conn = psycopg.Connection[Any]

LEGACY = Path(__file__).with_name("legacy_schemas")
# The unversioned releases: `git log --follow -- outbox/schema.sql` before migrations existed.
LEGACY_COMMITS = ["5576fa9", "f7bb338", "5ac120e", "d79ffa0"]
MIGRATIONS = schema.migrations()
VERSIONS = [m.version for m in MIGRATIONS]
MIGRATE_SQL = queries.load("outbox", "migrate.sql")
# How long a call that should not wait may take before the test calls it stuck.
PROMPT = 15.0
# The topics of the first release: every version's CHECK allows them (seed writes them all).
FIRST_TOPICS = (Topic.VERIFY, Topic.PURGE, Topic.EXPIRE)


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def new_db(base_settings: Settings) -> Iterator[str]:
    """An empty database; its URL."""
    with throwaway_database(base_settings.database_url, "s3o_mig") as url:
        yield url


@pytest.fixture
def migrated_db(new_db: str) -> str:
    with psycopg.connect(new_db, autocommit=True) as c:
        migrate(c)
    return new_db


@pytest.fixture(scope="module")
def expected(base_settings: Settings) -> dict[str, list[str]]:
    """The catalog schema.sql gives a new database, with and without column positions."""
    with (
        throwaway_database(base_settings.database_url, "s3o_expected") as url,
        psycopg.connect(url, autocommit=True) as c,
    ):
        c.execute(schema.schema_sql())  # as `psql -f schema.sql` would
        return {"strict": catalog.dump(c), "any_order": catalog.dump(c, column_order=False)}


def connect(url: str) -> Conn:
    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def applied_rows(url: str) -> list[tuple[int, str, str]]:
    with connect(url) as c:
        rows = c.execute(
            "SELECT version, name, checksum FROM s3outbox.schema_migrations ORDER BY version"
        ).fetchall()
    return [(int(v), str(n), str(s)) for v, n, s in rows]


def recorded(migrations: tuple[Migration, ...] | list[Migration]) -> list[tuple[int, str, str]]:
    return [(m.version, m.name, m.checksum) for m in migrations]


def advisory_locks(conn: Conn) -> list[bool]:
    """Whether each advisory lock of this database is granted (the migrate lock is the only
    advisory lock anything takes here)."""
    rows = conn.execute(
        "SELECT granted FROM pg_locks WHERE locktype = 'advisory'"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchall()
    return [bool(r[0]) for r in rows]


def has_column(conn: Conn, table: str, column: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM information_schema.columns"
        " WHERE table_schema = 's3outbox' AND table_name = %s AND column_name = %s",
        (table, column),
    ).fetchone()
    return row == (1,)


@dataclass
class Outcome:
    result: Any = None
    error: BaseException | None = None


def start_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, Outcome]:
    outcome = Outcome()

    def run() -> None:
        try:
            outcome.result = fn()
        except BaseException as exc:
            outcome.error = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def run_process(argv: list[str], env: dict[str, str], timeout: float = 90) -> tuple[int, str]:
    """Run a command in its own process group; (exit code, stdout + stderr). On timeout the
    whole group is killed (a Dramatiq worker has children) and the test fails."""
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(argv)} still running after {timeout}s:\n{out}")
    return proc.returncode, out


# -- data of every state, written with the columns of the first release ----------------------

SIZE = 100
#: The document states of the first release (``waiting`` came with blobs, in 0006).
SEED_STATUSES = [s for s in DocumentStatus if s != DocumentStatus.WAITING]
#: The events ``seed`` writes: every topic of the first release in every state.
SEED_EVENTS = [(topic, status) for topic in FIRST_TOPICS for status in EventStatus]


def seed_doc_id(i: int) -> str:
    return f"00000000-0000-4000-8000-{i + 1:012d}"


def seed_event_doc(n: int) -> str:
    return seed_doc_id(n % len(SEED_STATUSES))


def expected_blob_status(i: int, status: DocumentStatus) -> BlobStatus:
    """What migration 0006 makes of the blob of seeded document ``i``: uploading while it
    uploads, verified when available, deleting while a purge of it is due, deleted after."""
    if status in (DocumentStatus.PENDING, DocumentStatus.UPLOADED):
        return BlobStatus.UPLOADING
    if status == DocumentStatus.AVAILABLE:
        return BlobStatus.VERIFIED
    purge_due = any(
        topic == Topic.PURGE
        and state in (EventStatus.PENDING, EventStatus.DISPATCHED)
        and seed_event_doc(n) == seed_doc_id(i)
        for n, (topic, state) in enumerate(SEED_EVENTS)
    )
    if status == DocumentStatus.DELETING or purge_due:
        return BlobStatus.DELETING
    return BlobStatus.DELETED


def has_blobs(conn: Conn) -> bool:
    row = conn.execute("SELECT to_regclass('s3outbox.blobs') IS NOT NULL").fetchone()
    return row == (True,)


def seed(conn: Conn) -> None:
    """Documents in every state of the first release, events of every topic in every state,
    two quotas, written with only the columns of the first release (5576fa9), which every
    version has. A version that has blobs gets each document's blob as 0006 would make it."""
    charged = {DocumentStatus.AVAILABLE, DocumentStatus.DELETING}
    reserved = {DocumentStatus.PENDING, DocumentStatus.UPLOADED}
    blobs = has_blobs(conn)
    docs = []
    for i, status in enumerate(SEED_STATUSES):
        doc_id = seed_doc_id(i)
        docs.append(doc_id)
        key = f"legacy/{doc_id}"
        if blobs:
            conn.execute(
                "INSERT INTO s3outbox.blobs (object_key, size, sha256, content_type, status)"
                " VALUES (%s, %s, %s, 'text/plain', %s)",
                (key, SIZE, sha256_hex(status.value.encode()), expected_blob_status(i, status)),
            )
        conn.execute(
            "INSERT INTO s3outbox.documents (id, owner_id, object_key, filename, content_type,"
            " declared_size, sha256, status, verified_size, reserved_bytes, charged_bytes,"
            " reason, upload_expires_at)"
            " VALUES (%s, 'alice', %s, %s, 'text/plain', %s, %s, %s, %s, %s, %s, %s,"
            " '2030-01-01T00:00:00Z')",
            (
                doc_id,
                key,
                f"{status.value}.txt",
                SIZE,
                sha256_hex(status.value.encode()),
                status.value,
                SIZE if status in charged else None,
                SIZE if status in reserved else 0,
                SIZE if status in charged else 0,
                "size mismatch" if status == DocumentStatus.REJECTED else None,
            ),
        )
    conn.execute(
        "INSERT INTO s3outbox.quotas (owner_id, limit_bytes, used_bytes, reserved_bytes)"
        " VALUES ('alice', 10000, %s, %s), ('bob', 500, 0, 0)",
        (SIZE * len(charged), SIZE * len(reserved)),
    )
    for n, (topic, status) in enumerate(SEED_EVENTS):
        conn.execute(
            "INSERT INTO s3outbox.events (topic, document_id, status, attempts, failures,"
            " last_error, trace_id) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (topic.value, seed_event_doc(n), status.value, n % 3, n % 2, f"error {n}", f"t{n}"),
        )


def data(conn: Conn) -> dict[str, list[tuple[Any, ...]]]:
    """The rows ``seed`` wrote, read back through the same (first release's) columns."""
    return {
        "quotas": conn.execute(
            "SELECT owner_id, limit_bytes, used_bytes, reserved_bytes, created_at, updated_at"
            " FROM s3outbox.quotas ORDER BY owner_id"
        ).fetchall(),
        "documents": conn.execute(
            "SELECT id, owner_id, object_key, filename, content_type, declared_size, sha256,"
            " status, verified_size, reserved_bytes, charged_bytes, reason, upload_expires_at,"
            " created_at, updated_at FROM s3outbox.documents ORDER BY id"
        ).fetchall(),
        "events": conn.execute(
            "SELECT id, topic, document_id, status, attempts, failures, available_at,"
            " last_error, trace_id, created_at FROM s3outbox.events ORDER BY id"
        ).fetchall(),
    }


def check_upgraded(url: str, before: dict[str, list[tuple[Any, ...]]], settings: Settings) -> None:
    """After ``migrate``: the rows are unchanged, the columns added later hold their defaults,
    the identity goes on, and the library works on the database."""
    with connect(url) as c:
        assert data(c) == before
        assert len(before["documents"]) == len(SEED_STATUSES)
        assert len(before["events"]) == len(SEED_EVENTS)
        check_blobs(c)
        assert c.execute("SELECT DISTINCT rescues, object_key FROM s3outbox.events").fetchall() == [
            (0, None)
        ]
        row = c.execute(
            "INSERT INTO s3outbox.events (topic, document_id) VALUES ('purge', %s) RETURNING id",
            (before["documents"][0][0],),
        ).fetchone()
        assert row is not None and row[0] == len(before["events"]) + 1
        assert schema.status(c).up_to_date
    outbox = Outbox(settings.model_copy(update={"database_url": url}))
    with psycopg.connect(url) as c:
        ticket = outbox.request_upload(
            c,
            owner_id="bob",
            filename="after-upgrade.txt",
            content_type="text/plain",
            size=10,
            sha256=sha256_hex(b"0123456789"),
        )
        doc = outbox.confirm(c, owner_id="bob", document_id=ticket.document.id)
        c.commit()
        assert doc.status == DocumentStatus.UPLOADED
        assert outbox.quota(c, owner_id="bob").reserved_bytes == 10


def check_blobs(conn: Conn) -> None:
    """Each seeded document references its own blob, which holds its declared size, SHA-256
    and type, in the state 0006 gives it (``expected_blob_status``)."""
    rows = conn.execute(
        "SELECT d.id::text, d.status, b.object_key = d.object_key, b.size, b.sha256 = d.sha256,"
        " b.content_type, b.status FROM s3outbox.documents d"
        " JOIN s3outbox.blobs b ON b.object_key = d.object_key ORDER BY d.id"
    ).fetchall()
    assert rows == [
        (
            seed_doc_id(i),
            status.value,
            True,
            SIZE,
            True,
            "text/plain",
            expected_blob_status(i, status).value,
        )
        for i, status in enumerate(SEED_STATUSES)
    ]
    count = conn.execute("SELECT count(*) FROM s3outbox.blobs").fetchone()
    assert count == (len(SEED_STATUSES),)


# -- schema.sql == every migration ----------------------------------------------------------


def test_every_migration_gives_the_catalog_of_schema_sql(
    new_db: str, expected: dict[str, list[str]]
) -> None:
    with connect(new_db) as c:
        assert [m.version for m in migrate(c)] == VERSIONS
        catalog.assert_same(expected["strict"], catalog.dump(c), ("schema.sql", "migrations"))
    # The dump is not vacuous: it holds what a migration would change.
    dump = expected["strict"]
    assert [line for line in dump if line.startswith("migration ")] == [
        f"migration {m.version:04d}_{m.name}: {m.checksum}" for m in MIGRATIONS
    ]
    for needle in (
        "relation documents: kind r",
        "relation events_id_seq: kind S",
        "column events #1 id: bigint NOT NULL GENERATED ALWAYS AS IDENTITY",
        "column documents #8 status: text NOT NULL DEFAULT 'pending'::text",
        "constraint quotas.quotas_bounds (c): CHECK (",
        "index documents_one_uploader: CREATE UNIQUE INDEX",
        "constraint documents.documents_object_key_fkey (f): FOREIGN KEY (object_key)",
        "function s3outbox.accept_verified(bigint,uuid,text,bigint,text,text,bigint,timestamp",
        "trigger events.events_notify: CREATE TRIGGER events_notify AFTER INSERT",
    ):
        assert any(line.startswith(needle) for line in dump), needle


# Changes a migration could make and schema.sql forget (or the reverse): each must show.
FORGOTTEN = {
    "a column": ("ALTER TABLE s3outbox.events ADD COLUMN forgotten integer", "forgotten"),
    "nullability": (
        "ALTER TABLE s3outbox.documents ALTER COLUMN filename DROP NOT NULL",
        "column documents #4 filename: text",
    ),
    "a default": (
        "ALTER TABLE s3outbox.quotas ALTER COLUMN limit_bytes SET DEFAULT 0",
        "limit_bytes: bigint NOT NULL DEFAULT 0",
    ),
    "a type": (
        "ALTER TABLE s3outbox.events ALTER COLUMN attempts TYPE bigint",
        "attempts: bigint",
    ),
    "a constraint": (
        "ALTER TABLE s3outbox.documents DROP CONSTRAINT documents_declared_size_check",
        "documents_declared_size_check",
    ),
    "an index": (
        "DROP INDEX s3outbox.events_dead;"
        " CREATE INDEX events_dead ON s3outbox.events (id, topic) WHERE status = 'dead'",
        "(id, topic)",
    ),
    "a function body": (
        "CREATE OR REPLACE FUNCTION s3outbox.notify_event() RETURNS trigger"
        " LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('elsewhere', ''); RETURN NULL; END; $$",
        "elsewhere",
    ),
    "a trigger": ("DROP TRIGGER events_notify ON s3outbox.events", "events_notify"),
    "a recorded checksum": (
        "UPDATE s3outbox.schema_migrations SET checksum = 'edited' WHERE version = 1",
        "edited",
    ),
}


def test_the_catalog_dump_shows_what_schema_sql_forgot(
    new_db: str, expected: dict[str, list[str]]
) -> None:
    """Each change, made in a transaction that is rolled back, fails the comparison with a
    diff that shows it."""
    with psycopg.connect(new_db) as c:
        c.execute(schema.schema_sql())
        c.commit()
        for what, (change, shown) in FORGOTTEN.items():
            c.execute(change)
            with pytest.raises(AssertionError) as failed:
                catalog.assert_same(expected["strict"], catalog.dump(c), ("schema.sql", "db"))
            c.rollback()
            diff = [ln for ln in str(failed.value).splitlines() if ln[:1] in "+-"]
            assert any(shown in ln for ln in diff), f"{what}: {failed.value}"
        catalog.assert_same(expected["strict"], catalog.dump(c), ("schema.sql", "db"))


# -- upgrades ------------------------------------------------------------------------------


def test_the_legacy_snapshots_are_the_releases_before_migrations() -> None:
    """The fixtures are the files of git history, one per unversioned release."""
    assert sorted(p.stem for p in LEGACY.glob("*.sql")) == sorted(LEGACY_COMMITS)
    for commit in LEGACY_COMMITS:
        text = (LEGACY / f"{commit}.sql").read_text(encoding="utf-8")
        assert "schema_migrations" not in text and "CREATE TABLE IF NOT EXISTS s3outbox" in text


@pytest.mark.parametrize("commit", LEGACY_COMMITS)
def test_an_unversioned_schema_upgrades_with_its_data(
    commit: str, new_db: str, expected: dict[str, list[str]], base_settings: Settings
) -> None:
    with connect(new_db) as c:
        c.execute((LEGACY / f"{commit}.sql").read_text(encoding="utf-8"))
        seed(c)
        before = data(c)
        state = schema.status(c)
        assert (state.current, state.pending) == (0, list(MIGRATIONS))
        assert [m.version for m in migrate(c)] == VERSIONS
        # Columns a release added with ALTER TABLE sit last there; nothing depends on order.
        catalog.assert_same(
            expected["any_order"],
            catalog.dump(c, column_order=False),
            ("schema.sql", f"{commit} + migrate"),
        )
    assert applied_rows(new_db) == recorded(MIGRATIONS)
    check_upgraded(new_db, before, base_settings)


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"from-{v:04d}")
def test_each_version_upgrades_with_its_data(
    version: int,
    new_db: str,
    expected: dict[str, list[str]],
    base_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with connect(new_db) as c:
        with monkeypatch.context() as m:
            m.setattr(schema, "migrations", lambda: MIGRATIONS[:version])
            assert [x.version for x in migrate(c)] == VERSIONS[:version]
        seed(c)
        before = data(c)
        assert [x.version for x in migrate(c)] == VERSIONS[version:]
        catalog.assert_same(expected["strict"], catalog.dump(c), ("schema.sql", f"{version}+"))
    assert applied_rows(new_db) == recorded(MIGRATIONS)
    check_upgraded(new_db, before, base_settings)


# -- locks ---------------------------------------------------------------------------------


def test_an_up_to_date_migrate_takes_no_lock(migrated_db: str) -> None:
    """Another session holds the migrate lock and ACCESS EXCLUSIVE on the outbox table (a
    deploy mid-migration): an up-to-date migrate still returns at once, applying nothing."""
    with psycopg.connect(migrated_db) as holder, connect(migrated_db) as c:
        holder.execute(MIGRATE_SQL["lock_migrations"])
        holder.execute("LOCK TABLE s3outbox.events IN ACCESS EXCLUSIVE MODE")
        thread, outcome = start_thread(lambda: migrate(c))
        thread.join(PROMPT)
        stuck = thread.is_alive()
        holder.rollback()
        holder.execute(MIGRATE_SQL["unlock_migrations"])
        thread.join(PROMPT)
        assert not stuck, "an up-to-date migrate waited for a lock"
        assert outcome.error is None and outcome.result == []
        assert advisory_locks(c) == []


def test_two_migrate_at_once_apply_each_migration_once(new_db: str) -> None:
    """Both runs pass the "anything pending?" check and queue on the migrate lock (held by
    the test until both wait), so they really overlap."""
    with psycopg.connect(new_db, autocommit=True) as gate:
        gate.execute(MIGRATE_SQL["lock_migrations"])
        runs = []
        for _ in range(2):
            conn = connect(new_db)
            runs.append((conn, *start_thread(lambda conn=conn: migrate(conn))))
        wait_for(
            lambda: advisory_locks(gate).count(False) == 2,
            timeout=PROMPT,
            message="both runs waiting on the migrate lock",
        )
        gate.execute(MIGRATE_SQL["unlock_migrations"])
        for conn, thread, _ in runs:
            thread.join(60)
            assert not thread.is_alive()
            conn.close()
    outcomes = [outcome for _, _, outcome in runs]
    assert [o.error for o in outcomes] == [None, None]
    applied = sorted(m.version for o in outcomes for m in o.result)
    assert applied == VERSIONS  # each once, by one run or the other
    assert applied_rows(new_db) == recorded(MIGRATIONS)


TEST_ONLY = Migration(
    len(MIGRATIONS) + 1,
    "test_only_alter_events",
    "ALTER TABLE s3outbox.events ADD COLUMN test_only integer;\n",
)


def test_a_migration_behind_a_long_transaction_gives_up_then_finishes(
    migrated_db: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(schema, "migrations", lambda: (*MIGRATIONS, TEST_ONLY))
    with psycopg.connect(migrated_db) as holder, connect(migrated_db) as c:
        holder.execute("SELECT count(*) FROM s3outbox.events")  # ACCESS SHARE until rollback
        with (
            caplog.at_level("WARNING", logger="s3outbox.migrate"),
            pytest.raises(MigrationLocked) as locked,
        ):
            migrate(c, lock_timeout=0.2, attempts=2, retry_delay=0)
        assert locked.value.http_status == 503
        assert locked.value.details == {"version": TEST_ONLY.version}
        assert "retrying (1/2)" in caplog.text  # two attempts, not one
        assert schema.status(c).pending == [TEST_ONLY]
        assert not has_column(c, "events", "test_only")
        assert advisory_locks(c) == []  # the migrate lock was released
        assert c.execute("SHOW lock_timeout").fetchone() == ("0",)

        # In a caller's transaction the same failure leaves that transaction usable.
        with psycopg.connect(migrated_db) as caller:
            caller.execute("SET LOCAL lock_timeout = '7s'")
            with pytest.raises(MigrationLocked):
                migrate(caller, lock_timeout=0.2, attempts=1, retry_delay=0)
            assert caller.execute("SHOW lock_timeout").fetchone() == ("7s",)
            assert not has_column(caller, "events", "test_only")
            caller.rollback()

        holder.rollback()
        assert migrate(c, lock_timeout=0.2, attempts=2, retry_delay=0) == [TEST_ONLY]
        assert has_column(c, "events", "test_only")
    assert applied_rows(migrated_db) == recorded([*MIGRATIONS, TEST_ONLY])


def test_attempts_below_one_is_refused(migrated_db: str) -> None:
    with connect(migrated_db) as c, pytest.raises(ValueError, match="attempts"):
        migrate(c, attempts=0)


# -- inside the caller's transaction --------------------------------------------------------


def test_migrate_in_the_callers_transaction_commits_nothing(new_db: str) -> None:
    """As Alembic and Django hand over their connection: not autocommit, in a transaction
    (and with the row factory a web app may use)."""
    with psycopg.connect(new_db, row_factory=dict_row) as conn, connect(new_db) as other:
        conn.execute("SET lock_timeout = '3s'")  # the caller's own setting, in its transaction
        assert [m.version for m in migrate(conn)] == VERSIONS
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert conn.execute("SHOW lock_timeout").fetchone() == {"lock_timeout": "3s"}
        assert schema.status(conn).up_to_date  # visible inside the transaction
        # Not committed: another session sees nothing; the migrate lock lasts as long.
        assert other.execute("SELECT to_regnamespace('s3outbox')").fetchone() == (None,)
        assert advisory_locks(other) == [True]
        conn.rollback()
        assert other.execute("SELECT to_regnamespace('s3outbox')").fetchone() == (None,)
        assert advisory_locks(other) == []

        assert [m.version for m in migrate(conn)] == VERSIONS
        conn.commit()
        assert schema.status(other).up_to_date
        assert migrate(conn) == []


# -- the CLI and the processes -----------------------------------------------------------


def cli(settings: Settings, *args: str) -> tuple[int, str]:
    return run_process([sys.executable, "-m", "worker.cli", *args], child_env(settings))


def test_cli_migrate_check_then_migrate(
    new_db: str, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(database_url=new_db)
    names = [f"{m.version:04d}_{m.name}" for m in MIGRATIONS]

    code, out = cli(settings, "migrate", "--check")
    assert code == 1, out
    assert [ln for ln in out.splitlines() if ln.startswith("pending: ")] == [
        f"pending: {n}" for n in names
    ]
    assert f"schema version 0 of {VERSIONS[-1]}" in out
    with connect(new_db) as c:
        assert c.execute("SELECT to_regnamespace('s3outbox')").fetchone() == (None,)

    code, out = cli(settings, "migrate", "--lock-timeout", "2")
    assert code == 0, out
    assert [ln for ln in out.splitlines() if ln.startswith("applied: ")] == [
        f"applied: {n}" for n in names
    ]
    assert f"schema version {VERSIONS[-1]}: up to date" in out
    assert applied_rows(new_db) == recorded(MIGRATIONS)

    code, out = cli(settings, "migrate", "--check")
    assert code == 0, out
    assert "pending:" not in out and f"schema version {VERSIONS[-1]} of {VERSIONS[-1]}" in out
    code, out = cli(settings, "migrate")
    assert code == 0 and "applied:" not in out, out


@pytest.fixture
def outdated_db(new_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A database one migration behind this code: every migration but the latest applied."""
    with connect(new_db) as c, monkeypatch.context() as m:
        m.setattr(schema, "migrations", lambda: MIGRATIONS[:-1])
        assert [x.version for x in migrate(c)] == VERSIONS[:-1]
    return new_db


@pytest.mark.parametrize("service", ["relay", "sweeper"])
def test_relay_and_sweeper_refuse_an_older_schema(
    service: str, outdated_db: str, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(database_url=outdated_db)
    code, out = cli(settings, service)
    assert code == 2, out
    assert "s3-outbox migrate" in out and f"needs {VERSIONS[-1]}" in out
    if service == "relay":  # and once migrated, it starts
        assert cli(settings, "migrate")[0] == 0
        code, out = cli(settings, "relay", "--once")
        assert code == 0 and "relay: 0 rows" in out, out


def test_dramatiq_workers_refuse_an_older_schema(
    outdated_db: str, make_settings: Callable[..., Settings]
) -> None:
    """The worker process's boot check stops Dramatiq as a whole (not only that process):
    Dramatiq's main process sees a worker exit while running and shuts the rest down."""
    settings = make_settings(database_url=outdated_db)
    code, out = run_process(command("worker", processes=2, threads=1), child_env(settings))
    assert code != 0, out
    assert "s3-outbox migrate" in out, out


# -- the Django example's migration ------------------------------------------------------------


def test_django_migration_runs_outbox_migrate_in_djangos_transaction(
    new_db: str, make_settings: Callable[..., Settings], expected: dict[str, list[str]]
) -> None:
    pytest.importorskip("django", reason="django not installed (pip install -e '.[test]')")
    env = child_env(make_settings(database_url=new_db))
    django_migrate = [sys.executable, "-m", "django", "migrate", "--no-color"]
    env["DJANGO_SETTINGS_MODULE"] = "examples.django_app.settings"

    code, out = run_process(django_migrate, env)
    assert code == 0, out
    assert "Applying django_app.0001_s3outbox... OK" in out
    with connect(new_db) as c:
        catalog.assert_same(expected["strict"], catalog.dump(c), ("schema.sql", "django"))
        rows = c.execute("SELECT app, name FROM django_migrations").fetchall()
        assert rows == [("django_app", "0001_s3outbox")]

    code, out = run_process(django_migrate, env)
    assert code == 0 and "No migrations to apply" in out, out
