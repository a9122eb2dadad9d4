"""The database before any part runs: s3-outbox's schema, the bench's tables
(``benchmarks/schema.sql``), and the schemas of pgqueuer and procrastinate."""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

import psycopg

from benchmarks import peers as bench_peers
from benchmarks.context import BenchContext, sql
from outbox import migrate


def prepare(ctx: BenchContext) -> None:
    """Every schema the parts need, each applied only where missing."""
    with ctx.connect() as conn:
        migrate(conn)
        conn.execute(resources.files("benchmarks").joinpath("schema.sql").read_text("utf-8"))
    from pgqueuer.db import SyncPsycopgDriver

    with ctx.connect() as conn:
        if not _exists(conn, "public.pgqueuer"):
            _install_pgqueuer(ctx.settings.database_url)
        _ = SyncPsycopgDriver  # imported early: a missing extra fails before any timing
    app = bench_peers.procrastinate_app(ctx.settings, sync=True)
    with app.open():
        with ctx.connect() as conn:
            found = _exists(conn, "public.procrastinate_jobs")
        if not found:
            app.schema_manager.apply_schema()


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute(sql()["table_exists"], {"name": table}).fetchone()
    return row is not None and row[0] is not None


def _install_pgqueuer(dsn: str) -> None:
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    async def install() -> None:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            await Queries(PsycopgDriver(conn)).install()
        finally:
            await conn.close()

    asyncio.run(install())
