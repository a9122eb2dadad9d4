"""Versioned schema migrations (procrastinate's ``sql/migrations`` style).

The migrations are the ordered files ``outbox/migrations/NNNN_name.sql``; the table
``s3outbox.schema_migrations`` records which ones a database has. ``schema.sql`` is what
applying all of them gives (a test checks that the catalogs are the same).

``migrate`` applies what is pending, each migration in its own transaction with a
``lock_timeout`` (retried a few times, then ``MigrationLocked``), under an advisory lock so
two deploys never migrate at once; when nothing is pending it takes no lock at all.
``require_current`` is what the workers and the relay call before they start.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from outbox import queries
from outbox.errors import MigrationLocked, SchemaOutOfDate

__all__ = [
    "Migration",
    "MigrationLocked",
    "SchemaOutOfDate",
    "SchemaStatus",
    "latest_version",
    "migrate",
    "migrations",
    "require_current",
    "schema_sql",
    "status",
]

log = logging.getLogger("s3outbox.migrate")
Conn = psycopg.Connection[Any]

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str = field(repr=False)  # a whole schema: too long for a log line or a test diff

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class SchemaStatus:
    """What a database has applied, against what this code ships."""

    applied: tuple[int, ...]
    available: tuple[Migration, ...]

    @property
    def current(self) -> int:
        """The highest version applied (0: none, or a database never migrated)."""
        return max(self.applied, default=0)

    @property
    def latest(self) -> int:
        return self.available[-1].version if self.available else 0

    @property
    def pending(self) -> list[Migration]:
        done = set(self.applied)
        return [m for m in self.available if m.version not in done]

    @property
    def up_to_date(self) -> bool:
        return not self.pending


@cache
def migrations() -> tuple[Migration, ...]:
    """Every migration shipped in the package, in version order."""
    found = []
    for entry in resources.files("outbox").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            sql = entry.read_text(encoding="utf-8")
            found.append(Migration(int(match.group(1)), match.group(2), sql))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps: {versions}")
    return tuple(found)


def latest_version() -> int:
    """The schema version this code needs."""
    return migrations()[-1].version


def schema_sql() -> str:
    """The whole current schema (``schema.sql``), as shipped inside the package."""
    return resources.files("outbox").joinpath("schema.sql").read_text(encoding="utf-8")


def _sql() -> dict[str, str]:
    return queries.load("outbox", "migrate.sql")


def _rows(conn: Conn, query: str) -> list[tuple[Any, ...]]:
    # Tuples whatever row factory the caller's connection has (a web app's may use dict_row).
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(query).fetchall()


def status(conn: Conn) -> SchemaStatus:
    """Which migrations the database has. Reads only (no lock beyond a plain SELECT)."""
    q = _sql()
    [(present,)] = _rows(conn, q["version_table_exists"])
    applied: tuple[int, ...] = ()
    if present:
        applied = tuple(r[0] for r in _rows(conn, q["applied_versions"]))
    return SchemaStatus(applied, migrations())


def require_current(conn: Conn) -> SchemaStatus:
    """The status, when the database has every migration this code needs.

    Raises:
        SchemaOutOfDate (503): a migration is pending; the message says what to run.
    """
    current = status(conn)
    if not current.up_to_date:
        pending = ", ".join(f"{m.version:04d}_{m.name}" for m in current.pending)
        raise SchemaOutOfDate(
            f"the database schema is at version {current.current}, this s3-outbox needs"
            f" {current.latest} (pending: {pending}): run `s3-outbox migrate`",
            current=current.current,
            required=current.latest,
        )
    return current


def migrate(
    conn: Conn, *, lock_timeout: float = 5.0, attempts: int = 5, retry_delay: float = 1.0
) -> list[Migration]:
    """Apply every pending migration; returns those applied (empty when up to date).

    On an autocommit connection each migration is its own transaction. On a connection in
    (or about to start) a transaction, as Alembic or Django hand over, everything happens
    inside the caller's transaction, each migration in a savepoint, and nothing is committed.

    Raises:
        MigrationLocked (503): a migration waited ``lock_timeout`` seconds for a table lock
            ``attempts`` times (a long transaction holds the table); that migration and the
            ones after it were not applied.
        ValueError: ``attempts`` is below 1.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    if status(conn).up_to_date:
        return []
    q = _sql()
    in_caller_tx = not conn.autocommit
    if in_caller_tx:
        conn.execute(q["lock_migrations_xact"])
    else:
        conn.execute(q["lock_migrations"])
    try:
        applied = []
        for migration in status(conn).pending:  # again: another run may have done it
            _apply(conn, migration, lock_timeout, attempts, retry_delay)
            applied.append(migration)
        return applied
    finally:
        if not in_caller_tx and not conn.closed:
            conn.execute(q["unlock_migrations"])


def _apply(
    conn: Conn, migration: Migration, lock_timeout: float, attempts: int, retry_delay: float
) -> None:
    q = _sql()
    timeout = f"{max(int(lock_timeout * 1000), 1)}ms"
    previous = None
    if not conn.autocommit:
        [(previous,)] = _rows(conn, q["get_lock_timeout"])
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute(q["set_lock_timeout"], {"timeout": timeout})
                conn.execute(q["create_schema"])
                conn.execute(q["create_version_table"])
                conn.execute(migration.sql)
                conn.execute(
                    q["record_version"],
                    {
                        "version": migration.version,
                        "name": migration.name,
                        "checksum": migration.checksum,
                    },
                )
            log.info("applied migration %04d_%s", migration.version, migration.name)
            break
        except psycopg.errors.LockNotAvailable:
            if attempt == attempts:
                raise MigrationLocked(
                    f"migration {migration.version:04d}_{migration.name} waited {timeout} for"
                    f" a lock {attempts} times: a long transaction holds the table; try again",
                    version=migration.version,
                ) from None
            log.warning(
                "migration %04d_%s: lock not available in %s, retrying (%d/%d)",
                migration.version,
                migration.name,
                timeout,
                attempt,
                attempts,
            )
            time.sleep(retry_delay * attempt)
        finally:
            if previous is not None:
                conn.execute(q["set_lock_timeout"], {"timeout": previous})
