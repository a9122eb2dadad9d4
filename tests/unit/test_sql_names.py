"""The SQL files and the Python constants spell the same names: statuses and topics in the
named queries and the schema's CHECK constraints, and the query names the code looks up.
(The installed catalog is checked against the same enums in tests/integration/test_schema.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from outbox import queries, schema
from outbox.constants import (
    NOTIFY_CHANNEL,
    BlobStatus,
    DocumentStatus,
    EventStatus,
    RequestOutcome,
    Topic,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "schema.sql"
# Every file of named queries, by component (procrastinate's queries.sql, one per component).
QUERY_FILES = sorted(
    path
    for package in ("outbox", "worker", "harness")
    for path in (ROOT / package).rglob("*.sql")
    if path.name != "schema.sql" and "migrations" not in path.parts
)
SQL_FILES = {str(p.relative_to(ROOT)): p for p in [*QUERY_FILES, SCHEMA]}
CODE = sorted(
    path for package in ("outbox", "worker", "harness") for path in (ROOT / package).rglob("*.py")
)
NAMES = (
    {s.value for s in DocumentStatus}
    | {s.value for s in EventStatus}
    | {t.value for t in Topic}
    | {s.value for s in BlobStatus}
    | {o.value for o in RequestOutcome}
)
# PostgreSQL settings a query sets by name (set_config), not names of ours.
PG_SETTINGS = {"lock_timeout", "statement_timeout"}
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
    if name in ("schema.sql", "outbox/queries.sql", "worker/events/queries.sql"):
        assert words, f"no quoted names found in {name}: the regex is broken"
    migration_names = {m.name for m in schema.migrations()}  # recorded in schema.sql
    unknown = words - NAMES - {NOTIFY_CHANNEL} - PG_SETTINGS - migration_names
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
        ("blobs", "status", BlobStatus),
    ],
)
def test_schema_checks_match_the_enums_exactly(table, column, enum):
    schema = _strip_comments(SCHEMA.read_text(encoding="utf-8"))
    assert _check_values(schema, table, column) == {m.value for m in enum}


def test_schema_defaults_are_constants():
    schema = _strip_comments(SCHEMA.read_text(encoding="utf-8"))
    defaults = set(re.findall(r"DEFAULT '([a-z_]+)'", schema))
    assert defaults == {DocumentStatus.PENDING.value, EventStatus.PENDING.value}


# -- named queries -------------------------------------------------------------------------

# self._q["name"], q["name"], ops_sql["name"], sql()["name"], queries.load(...)["name"]
LOOKUP = re.compile(r"(?:\b_q|\bq|_sql|\))\[\s*\"([a-z_][a-z0-9_]*)\"\s*\]")


def _defined() -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for path in QUERY_FILES:
        for name in queries.parse_queries(path.read_text(encoding="utf-8")):
            names.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return names


def _referenced() -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}
    for path in CODE:
        for name in LOOKUP.findall(path.read_text(encoding="utf-8")):
            refs.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return refs


def test_query_files_are_found():
    found = {str(p.relative_to(ROOT)) for p in QUERY_FILES}
    assert {"outbox/queries.sql", "worker/events/queries.sql", "worker/relay.sql"} <= found


def test_a_query_name_is_defined_once_across_all_files():
    twice = {name: files for name, files in _defined().items() if len(files) > 1}
    assert not twice, f"query names defined in more than one file: {twice}"


def test_every_referenced_query_exists():
    defined, refs = _defined(), _referenced()
    assert len(refs) >= 40, "found too few query lookups: the regex is broken"
    missing = {name: files for name, files in refs.items() if name not in defined}
    assert not missing, f"queries referenced but defined in no .sql file: {missing}"


@pytest.mark.parametrize("path", QUERY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_query_files_parse_without_duplicates_and_nothing_is_empty(path):
    text = path.read_text(encoding="utf-8")
    parsed = queries.parse_queries(text)  # raises on a duplicate name
    declared = re.findall(r"^--\s*name:\s*(\S+)\s*$", text, re.M)
    assert parsed and sorted(parsed) == sorted(declared)
    for name, body in parsed.items():
        assert _strip_comments(body).strip(), f"{path.name}:{name} is empty"
        assert ";" not in _strip_comments(body), f"{path.name}:{name} holds two statements"


def test_every_query_is_used():
    """A dead or misspelled query shows up here."""
    unused = set(_defined()) - set(_referenced())
    assert not unused, f"queries never used: {sorted(unused)}"


def test_wheel_code_uses_no_harness_query():
    """Test-only SQL lives in harness/, and the wheel's code never loads it."""
    for path in CODE:
        if path.parts[len(ROOT.parts)] in ("outbox", "worker"):
            assert '"harness"' not in path.read_text(encoding="utf-8"), path


# -- the schema file -----------------------------------------------------------------------


def test_top_level_schema_is_the_packaged_schema():
    top, packaged = ROOT / "schema.sql", ROOT / "outbox" / "schema.sql"
    # A symlink today; a copy would do as long as the bytes are the same.
    assert top.read_bytes() == packaged.read_bytes()
    assert schema.schema_sql() == packaged.read_text(encoding="utf-8")
