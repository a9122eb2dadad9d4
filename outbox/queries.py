"""Named SQL queries loaded from ``.sql`` files (procrastinate's ``queries.sql`` style).

A file holds blocks that start with ``-- name: <query_name>``; the lines after it, up to the
next name, are the query. Parameters are psycopg named placeholders (``%(name)s``); nothing
is ever formatted into the SQL text.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$")


def parse_queries(text: str) -> dict[str, str]:
    """Split a named-queries file into ``{name: sql}``. Raises ValueError on a duplicate name."""
    queries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = _NAME.match(line.strip())
        if match:
            name = match.group(1)
            if name in queries:
                raise ValueError(f"duplicate query name: {name}")
            current = queries[name] = []
        elif current is not None:
            current.append(line)
    # The text comes from our own package files, never from input: it is literal SQL.
    return {name: "\n".join(lines).strip().rstrip(";") for name, lines in queries.items()}


@cache
def load(package: str, filename: str = "queries.sql") -> dict[str, str]:
    """The named queries of a package's SQL file, loaded once."""
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    return parse_queries(text)


def one_query(*statements: str) -> str:
    """Named queries joined into one query string, to be sent as one simple query with
    client-side binding (``psycopg.ClientCursor``): one round trip, one implicit transaction
    on an autocommit connection, each statement with its own snapshot. Only literal SQL from
    our files goes in; parameters are bound by psycopg, never formatted here."""
    return ";\n".join(s.rstrip().rstrip(";") for s in statements)
