"""Part 3: the API side: request-upload and confirm in the caller's transaction, per second
and per call, beside a bare single-row INSERT transaction; round trips and outbox INSERTs
per call."""

from __future__ import annotations

import hashlib
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from benchmarks.config import CONTENT_TYPE, OWNER, Json
from benchmarks.context import BenchContext, sql
from benchmarks.documents import body
from benchmarks.measure import summary


def api(ctx: BenchContext) -> Json:
    """request_upload / confirm in the caller's transaction vs a bare INSERT transaction."""
    cfg = ctx.config
    n = cfg.api_calls
    bare: list[float] = []
    req: list[float] = []
    conf: list[float] = []
    app_row = sql()["app_row"]
    for _ in range(cfg.rounds):
        ctx.reset()
        with ctx.connect(autocommit=False) as conn:
            t0 = time.perf_counter()
            for i in range(n):
                conn.execute(app_row, {"owner": OWNER, "note": f"row {i}"})
                conn.commit()
            bare.append(n / (time.perf_counter() - t0))
            bodies = [body() for _ in range(n)]
            ids: list[uuid.UUID] = []
            t0 = time.perf_counter()
            for i, data in enumerate(bodies):
                ticket = ctx.outbox.request_upload(
                    conn,
                    owner_id=f"{OWNER}-0",
                    filename=f"api-{i}.bin",
                    content_type=CONTENT_TYPE,
                    size=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                )
                conn.commit()
                ids.append(ticket.document.id)
            req.append(n / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for doc_id in ids:
                ctx.outbox.confirm(conn, owner_id=f"{OWNER}-0", document_id=doc_id)
                conn.commit()
            conf.append(n / (time.perf_counter() - t0))
    both = [1 / (1 / r + 1 / c) for r, c in zip(req, conf, strict=True)]
    return {
        "bare_insert_tx_per_s": summary(bare),
        "request_upload_tx_per_s": summary(req),
        "confirm_tx_per_s": summary(conf),
        "request_upload_plus_confirm_per_s": summary(both),
        "ms_per_call": {
            "bare_insert_tx": round(1000 / statistics.median(bare), 3),
            "request_upload_tx": round(1000 / statistics.median(req), 3),
            "confirm_tx": round(1000 / statistics.median(conf), 3),
        },
        "per_call": statements_per_call(ctx),
    }


def statements_per_call(ctx: BenchContext) -> Json:
    """Round trips (from a libpq trace) and outbox rows each call adds, in one caller's
    transaction: an app INSERT, then the library call, then COMMIT."""
    ctx.reset()
    out: Json = {}
    trace = ctx.workdir / "libpq.trace"
    data = body()
    with ctx.connect(autocommit=False) as conn:

        def count(call: Callable[[], object]) -> Json:
            events0 = _count(conn, sql()["count_events"])
            docs0 = _count(conn, sql()["count_documents"])
            conn.commit()
            with trace.open("w") as fh:
                conn.pgconn.trace(fh.fileno())
                conn.execute(sql()["traced_app_row"])
                call()
                conn.commit()
                conn.pgconn.untrace()
            text = trace.read_text()
            sent = [ln.split("\t") for ln in text.splitlines() if "\tF\t" in ln]
            # One statement = one simple Query, or one extended-protocol Sync.
            statements = sum(1 for p in sent if len(p) > 3 and p[3] in ("Query", "Sync"))
            return {
                "round_trips_with_app_insert_and_commit": statements,
                "library_round_trips": statements - 2,
                "outbox_event_inserts": _count(conn, sql()["count_events"]) - events0,
                "document_inserts": _count(conn, sql()["count_documents"]) - docs0,
            }

        tickets: list[Any] = []

        def request() -> None:
            tickets.append(
                ctx.outbox.request_upload(
                    conn,
                    owner_id=f"{OWNER}-0",
                    filename="count.bin",
                    content_type=CONTENT_TYPE,
                    size=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                )
            )

        out["request_upload"] = count(request)
        out["confirm"] = count(
            lambda: ctx.outbox.confirm(
                conn, owner_id=f"{OWNER}-0", document_id=tickets[0].document.id
            )
        )
    return out


def _count(conn: psycopg.Connection[Any], query: str) -> int:
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0
