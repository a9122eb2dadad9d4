"""The ``s3outbox`` schema of a database as sorted text lines, to compare two databases.

``dump`` lists tables, columns (type, nullability, default, identity), constraints, indexes,
sequences, types, functions, triggers and the ``schema_migrations`` rows; ``assert_same``
fails with a unified diff of two dumps, so a migration that forgot schema.sql (or the
reverse) reads as the lines that differ.
"""

from __future__ import annotations

import difflib
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from outbox import queries

Conn = psycopg.Connection[Any]


def _rows(conn: Conn, name: str) -> list[tuple[Any, ...]]:
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(queries.load("tests.support", "catalog.sql")[name]).fetchall()


def _column(row: tuple[Any, ...], *, with_position: bool) -> str:
    table, position, name, type_, not_null, default, identity, generated, collation = row
    where = f"{table} #{position} {name}" if with_position else f"{table} {name}"
    text = f"column {where}: {type_}"
    if collation:
        text += f" COLLATE {collation}"
    if not_null:
        text += " NOT NULL"
    if default is not None:
        text += " GENERATED ALWAYS AS" if generated else " DEFAULT"
        text += f" {default}"
    if identity:
        text += " GENERATED " + {"a": "ALWAYS", "d": "BY DEFAULT"}[identity] + " AS IDENTITY"
    return text


def dump(conn: Conn, *, column_order: bool = True) -> list[str]:
    """The catalog of the ``s3outbox`` schema, one object per line (a function: its lines).

    ``column_order=False`` leaves out the columns' positions: a database that gained a column
    with ``ALTER TABLE ... ADD COLUMN`` has it last, where a new one has it where the
    ``CREATE TABLE`` says, and nothing of s3-outbox depends on the order.
    """
    lines: list[str] = []
    relations = _rows(conn, "relations")
    for name, kind, persistence, options in relations:
        lines.append(f"relation {name}: kind {kind}, persistence {persistence}, options {options}")
    columns = [_column(r, with_position=column_order) for r in _rows(conn, "columns")]
    lines.extend(columns if column_order else sorted(columns))
    for table, name, kind, definition in _rows(conn, "constraints"):
        lines.append(f"constraint {table}.{name} ({kind}): {definition}")
    for name, definition in _rows(conn, "indexes"):
        lines.append(f"index {name}: {definition}")
    for name, type_, start, step, low, high, cycle, cache in _rows(conn, "sequences"):
        lines.append(
            f"sequence {name}: {type_} start {start} increment {step} min {low} max {high}"
            f" cycle {cycle} cache {cache}"
        )
    for name, kind, detail in _rows(conn, "types"):
        lines.append(f"type {name} ({kind}): {detail}")
    for signature, definition in _rows(conn, "functions"):
        lines.append(f"function {signature}:")
        lines.extend(f"    | {line}" for line in definition.rstrip().splitlines())
    for table, name, definition in _rows(conn, "triggers"):
        lines.append(f"trigger {table}.{name}: {definition}")
    if any(name == "schema_migrations" for name, *_ in relations):
        for version, name, checksum in _rows(conn, "migration_rows"):
            lines.append(f"migration {version:04d}_{name}: {checksum}")
    return lines


def assert_same(expected: list[str], actual: list[str], what: tuple[str, str]) -> None:
    """Fail with a unified diff (``what`` names the two sides) when the dumps differ."""
    if expected == actual:
        return
    diff = "\n".join(
        difflib.unified_diff(expected, actual, fromfile=what[0], tofile=what[1], lineterm="")
    )
    raise AssertionError(f"the s3outbox catalogs differ ({what[0]} vs {what[1]}):\n{diff}")
