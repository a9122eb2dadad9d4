"""The migration files and schema.sql agree without a server: versions 1..n without gaps, no
file the runner would skip, and schema.sql records each version with its file's sha256.
(The catalogs are compared on a real server in tests/integration/test_migrations.py.)"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from outbox import schema

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = ROOT / "outbox" / "migrations"
# The rows of `INSERT INTO s3outbox.schema_migrations (version, name, checksum) VALUES ...`.
ROW = re.compile(r"\(\s*(\d+)\s*,\s*'([^']*)'\s*,\s*'([^']*)'\s*\)")


def recorded_in_schema_sql() -> list[tuple[int, str, str]]:
    text = (ROOT / "outbox" / "schema.sql").read_text(encoding="utf-8")
    insert = re.search(
        r"INSERT INTO s3outbox\.schema_migrations \(version, name, checksum\) VALUES(.*?);",
        text,
        re.S,
    )
    assert insert, "schema.sql records no migration"
    return [(int(v), n, c) for v, n, c in ROW.findall(insert.group(1))]


def test_every_file_of_the_migrations_folder_is_a_migration() -> None:
    """A misnamed file (``0002-add.sql``, ``2_add.sql``) would be skipped without a word."""
    files = sorted(p.name for p in MIGRATIONS_DIR.iterdir() if not p.name.startswith("__"))
    assert files == [f"{m.version:04d}_{m.name}.sql" for m in schema.migrations()]


def test_versions_are_one_to_n_without_gaps() -> None:
    versions = [m.version for m in schema.migrations()]
    assert versions == list(range(1, len(versions) + 1))
    assert schema.latest_version() == len(versions) >= 1


def test_schema_sql_records_each_migration_with_the_sha256_of_its_file() -> None:
    files = {
        m.version: MIGRATIONS_DIR / f"{m.version:04d}_{m.name}.sql" for m in schema.migrations()
    }
    expected = [
        (m.version, m.name, hashlib.sha256(files[m.version].read_bytes()).hexdigest())
        for m in schema.migrations()
    ]
    assert recorded_in_schema_sql() == expected
    assert [(m.version, m.name, m.checksum) for m in schema.migrations()] == expected


def test_status_lists_what_is_pending() -> None:
    everything = schema.migrations()
    none = schema.SchemaStatus((), everything)
    assert (none.current, none.latest, none.pending, none.up_to_date) == (
        0,
        len(everything),
        list(everything),
        False,
    )
    done = schema.SchemaStatus(tuple(m.version for m in everything), everything)
    assert (done.current, done.pending, done.up_to_date) == (len(everything), [], True)
    # A database migrated by newer code has a version this code does not know: not pending.
    newer = schema.SchemaStatus((*done.applied, len(everything) + 1), everything)
    assert newer.up_to_date and newer.current == len(everything) + 1


@pytest.mark.parametrize("migration", schema.migrations(), ids=lambda m: m.name)
def test_a_migration_does_not_manage_its_own_transaction(migration: schema.Migration) -> None:
    """``migrate`` wraps each one in a transaction (or a savepoint of the caller's): a COMMIT
    or BEGIN inside would break both."""
    code = "\n".join(line.split("--", 1)[0] for line in migration.sql.splitlines())
    assert not re.search(r"\b(BEGIN|COMMIT|ROLLBACK)\s*;", code, re.I)
