"""The installed schema: its constraints spell the enums, and schema.sql on a new database
is what `migrate` leaves (versioned migrations are tested in test_migrations.py)."""

from __future__ import annotations

import re
import uuid

import psycopg
from psycopg import sql as pgsql

from outbox import migrate, schema
from outbox.constants import NOTIFY_CHANNEL, BlobStatus, DocumentStatus, EventStatus, Topic

WORD = re.compile(r"'([a-z_]+)'")


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
        ("blobs", "status"): {s.value for s in BlobStatus},
    }


def test_schema_sql_on_a_new_database_is_up_to_date_and_works(base_settings):
    dbname = f"s3o_schema_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base_settings.database_url, autocommit=True) as admin:
        admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(dbname)))
        try:
            url = psycopg.conninfo.make_conninfo(base_settings.database_url, dbname=dbname)
            with psycopg.connect(url, autocommit=True) as c:
                c.execute(schema.schema_sql())  # as psql -f schema.sql would
                assert schema.status(c).up_to_date
                assert migrate(c) == []  # nothing to do
                tables = {
                    r[0]
                    for r in c.execute(
                        "SELECT tablename FROM pg_tables WHERE schemaname = 's3outbox'"
                    ).fetchall()
                }
                assert tables == {
                    "blobs",
                    "documents",
                    "document_parts",
                    "quotas",
                    "events",
                    "maintenance_cursors",
                    "schema_migrations",
                }
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
