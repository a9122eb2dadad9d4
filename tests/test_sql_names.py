"""The SQL files and the Python constants spell the same names: statuses and topics in the
named queries and the schema's CHECK constraints, the query names the code looks up, and the
one schema file, which applies twice without error."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql as pgsql

from outbox import migrate, queries
from outbox.constants import NOTIFY_CHANNEL, DocumentStatus, EventStatus, Topic

ROOT = Path(__file__).resolve().parent.parent
SQL_FILES = {
    "outbox": ROOT / "outbox" / "queries.sql",
    "worker": ROOT / "worker" / "queries.sql",
    "schema": ROOT / "schema.sql",
}
NAMES = (
    {s.value for s in DocumentStatus} | {s.value for s in EventStatus} | {t.value for t in Topic}
)
# A quoted lower-case word: a status, a topic or a channel. Longer or mixed strings (messages,
# regular expressions) are not names.
WORD = re.compile(r"'([a-z_]+)'")


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in text.splitlines())


def _words(path: Path) -> set[str]:
    return set(WORD.findall(_strip_comments(path.read_text(encoding="utf-8"))))


# -- status and topic literals -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SQL_FILES))
def test_every_quoted_name_in_sql_is_a_constant(name):
    words = _words(SQL_FILES[name])
    assert words, f"no quoted names found in {name}: the regex is broken"
    unknown = words - NAMES - {NOTIFY_CHANNEL}
    assert not unknown, f"{SQL_FILES[name]} uses names that are no constant: {sorted(unknown)}"


def test_every_constant_is_used_in_sql():
    used = set().union(*(_words(p) for p in SQL_FILES.values()))
    missing = NAMES - used
    assert not missing, f"constants never spelled in SQL: {sorted(missing)}"


def _check_values(schema: str, table: str, column: str) -> set[str]:
    """The values of ``CHECK (column IN (...))`` in ``CREATE TABLE ... table (...)``."""
    start = schema.index(f"CREATE TABLE IF NOT EXISTS s3outbox.{table} (")
    end = schema.index("\n);", start)
    block = schema[start:end]
    match = re.search(rf"\b{column}\b[^,]*?CHECK \(\s*{column} IN \(([^)]*)\)", block, re.S)
    assert match, f"no CHECK ({column} IN ...) on s3outbox.{table}"
    return set(WORD.findall(match.group(1)))


@pytest.mark.parametrize(
    ("table", "column", "enum"),
    [
        ("documents", "status", DocumentStatus),
        ("events", "status", EventStatus),
        ("events", "topic", Topic),
    ],
)
def test_schema_checks_match_the_enums_exactly(table, column, enum):
    schema = _strip_comments(SQL_FILES["schema"].read_text(encoding="utf-8"))
    assert _check_values(schema, table, column) == {m.value for m in enum}


def test_schema_defaults_are_constants():
    schema = _strip_comments(SQL_FILES["schema"].read_text(encoding="utf-8"))
    defaults = set(re.findall(r"DEFAULT '([a-z_]+)'", schema))
    assert defaults == {DocumentStatus.PENDING.value, EventStatus.PENDING.value}


def test_the_check_constraints_in_the_database_match_the_enums(base_settings):
    """What is installed, not only the file: read the constraints back from the catalog."""
    with psycopg.connect(base_settings.database_url, autocommit=True) as c:
        rows = c.execute(
            "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE contype = 'c' AND connamespace = 's3outbox'::regnamespace"
        ).fetchall()
    found: dict[tuple[str, str], set[str]] = {}
    for table, definition in rows:
        m = re.search(r"\((\w+) = ANY \(ARRAY\[(.*)\]\)\)", definition)
        if m:
            found[(table.split(".")[-1], m.group(1))] = set(WORD.findall(m.group(2)))
    assert found == {
        ("documents", "status"): {s.value for s in DocumentStatus},
        ("events", "status"): {s.value for s in EventStatus},
        ("events", "topic"): {t.value for t in Topic},
    }


# -- named queries -------------------------------------------------------------------------

# self._q["name"], q["name"], queries.load("pkg")["name"], library_queries()["name"]
LOOKUP = re.compile(r"(?:\b_q|\bq|\))\[\s*\"([a-z_][a-z0-9_]*)\"\s*\]")
# Sweeper batch jobs name their query: super().__init__("job", "query", settings)
BATCH_JOB = re.compile(r"super\(\)\.__init__\(\s*\"[a-z_]+\",\s*\"([a-z_][a-z0-9_]*)\"")


def _referenced(package: str) -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}
    for path in sorted((ROOT / package).glob("*.py")):
        text = path.read_text(encoding="utf-8")
        for name in LOOKUP.findall(text) + BATCH_JOB.findall(text):
            refs.setdefault(name, []).append(path.name)
    return refs


@pytest.mark.parametrize("package", ["outbox", "worker"])
def test_every_referenced_query_exists(package):
    loaded = queries.load(package)
    refs = _referenced(package)
    assert len(refs) >= 5, f"found too few query lookups in {package}: the regex is broken"
    missing = {name: files for name, files in refs.items() if name not in loaded}
    assert not missing, f"queries referenced but not defined in {package}/queries.sql: {missing}"


def test_query_files_parse_without_duplicates_and_nothing_is_empty():
    for package in ("outbox", "worker"):
        text = SQL_FILES[package].read_text(encoding="utf-8")
        parsed = queries.parse_queries(text)  # raises on a duplicate name
        declared = re.findall(r"^--\s*name:\s*(\S+)\s*$", text, re.M)
        assert sorted(parsed) == sorted(declared)
        for name, body in parsed.items():
            assert _strip_comments(body).strip(), f"{package}:{name} is empty"
            assert ";" not in _strip_comments(body), f"{package}:{name} holds two statements"


def test_library_queries_are_only_used_by_name_in_the_library():
    """Every query of outbox/queries.sql is used by the library (a dead or misspelled one
    shows up here)."""
    unused = set(queries.load("outbox")) - set(_referenced("outbox"))
    assert not unused, f"outbox queries never used: {sorted(unused)}"


def test_worker_queries_are_all_used():
    unused = set(queries.load("worker")) - set(_referenced("worker"))
    assert not unused, f"worker queries never used: {sorted(unused)}"


# -- the schema file -----------------------------------------------------------------------


def test_top_level_schema_is_the_packaged_schema():
    top, packaged = ROOT / "schema.sql", ROOT / "outbox" / "schema.sql"
    # A symlink today; a copy would do as long as the bytes are the same.
    assert top.read_bytes() == packaged.read_bytes()
    assert queries.schema_sql() == packaged.read_text(encoding="utf-8")


def test_schema_applies_twice_to_a_fresh_database(base_settings):
    dbname = f"s3o_schema_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base_settings.database_url, autocommit=True) as admin:
        admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(dbname)))
        try:
            url = psycopg.conninfo.make_conninfo(base_settings.database_url, dbname=dbname)
            with psycopg.connect(url, autocommit=True) as c:
                text = SQL_FILES["schema"].read_text(encoding="utf-8")
                c.execute(text)  # as psql would
                c.execute(text)  # and again
                migrate(c)  # and through the library, twice
                migrate(c)
                tables = {
                    r[0]
                    for r in c.execute(
                        "SELECT tablename FROM pg_tables WHERE schemaname = 's3outbox'"
                    ).fetchall()
                }
                assert tables == {"documents", "quotas", "events"}
                triggers = c.execute(
                    "SELECT count(*) FROM pg_trigger WHERE tgname = 'events_notify'"
                ).fetchone()
                assert triggers == (1,)
                # The schema works: a row goes in and the NOTIFY trigger fires on commit.
                c.execute(f"LISTEN {NOTIFY_CHANNEL}")
                c.execute(
                    "INSERT INTO s3outbox.events (topic, document_id) VALUES (%s, %s)",
                    (Topic.PURGE.value, uuid.uuid4()),
                )
                notes = list(c.notifies(timeout=5, stop_after=1))
                assert [n.channel for n in notes] == [NOTIFY_CHANNEL]
        finally:
            admin.execute(
                pgsql.SQL("DROP DATABASE {} WITH (FORCE)").format(pgsql.Identifier(dbname))
            )
