"""Throw-away databases on the session's PostgreSQL server, for tests that need an empty
or deliberately old schema (migrations): created empty, dropped WITH (FORCE) afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql


@contextmanager
def throwaway_database(server_url: str, prefix: str = "s3o_tmp") -> Iterator[str]:
    """An empty database on ``server_url``'s server; yields its connection URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(server_url, dbname=name)
    finally:
        # FORCE: a test that failed half-way may leave a session (or a child process) behind.
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
