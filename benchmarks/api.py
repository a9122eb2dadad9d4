"""Part 3: the API side: request-upload and confirm in the caller's transaction, per second
and per call, beside a bare single-row INSERT transaction; round trips and outbox INSERTs
per call; and the same at ``api_clients`` (8) client threads."""

from __future__ import annotations

import hashlib
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from benchmarks.clients import transactions_per_s
from benchmarks.config import CONTENT_TYPE, OWNER, Json
from benchmarks.context import BenchContext, say, sql
from benchmarks.documents import body
from benchmarks.measure import summary
from outbox.db import library_queries


def api(ctx: BenchContext) -> Json:
    """request_upload / confirm in the caller's transaction vs a bare INSERT transaction."""
    cfg = ctx.config
    n = cfg.api_calls
    bare: list[float] = []
    req: list[float] = []
    conf: list[float] = []
    alone: list[float] = []
    app_row = sql()["app_row"]
    for _ in range(cfg.rounds):
        ctx.reset()
        with ctx.connect(autocommit=False) as conn:
            t0 = time.perf_counter()
            for i in range(n):
                conn.execute(app_row, {"owner": OWNER, "note": f"row {i}"})
                conn.commit()
            bare.append(n / (time.perf_counter() - t0))
            size = len(body())
            digests = [hashlib.sha256(body()).hexdigest() for _ in range(2 * n)]
            ids: list[uuid.UUID] = []
            t0 = time.perf_counter()
            for i, digest in enumerate(digests[:n]):
                ticket = ctx.outbox.request_upload(
                    conn,
                    owner_id=f"{OWNER}-0",
                    filename=f"api-{i}.bin",
                    content_type=CONTENT_TYPE,
                    size=size,
                    sha256=digest,
                )
                conn.commit()
                ids.append(ticket.document.id)
            req.append(n / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for doc_id in ids:
                ctx.outbox.confirm(conn, owner_id=f"{OWNER}-0", document_id=doc_id)
                conn.commit()
            conf.append(n / (time.perf_counter() - t0))
            alone.append(_statement_alone(ctx, conn, digests[n:], size))
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
            # The database's share of request_upload: its one statement run directly.
            "request_upload_statement_tx": round(1000 / statistics.median(alone), 3),
        },
        "per_call": statements_per_call(ctx),
        "clients": concurrent(ctx),
    }


def _statement_alone(
    ctx: BenchContext, conn: psycopg.Connection[Any], digests: list[str], size: int
) -> float:
    """Transactions/s of request_upload's one statement sent directly (no validation, no
    signing, no result model): what the call costs the database and the wire."""
    statement = library_queries()["request_upload"]
    expires = datetime.now(UTC) + timedelta(hours=1)
    t0 = time.perf_counter()
    for i, digest in enumerate(digests):
        doc_id = uuid.uuid4()
        conn.execute(
            statement,
            {
                "owner_id": f"{OWNER}-1",
                "default_limit": ctx.settings.default_quota_bytes,
                "id": doc_id,
                "object_key": f"{ctx.settings.key_prefix}{doc_id}",
                "filename": f"alone-{i}.bin",
                "content_type": CONTENT_TYPE,
                "size": size,
                "sha256": digest,
                "expires_at": expires,
                "trace_id": None,
                "now": None,
            },
        ).fetchone()
        conn.commit()
    return len(digests) / (time.perf_counter() - t0)


def concurrent(ctx: BenchContext) -> Json:
    """Transactions/s of ``api_clients`` threads: bare INSERT transactions, then
    request_upload and confirm transactions (two per document, each its own transaction, one
    owner per thread as a web app's users are), in alternating phases of each round."""
    cfg = ctx.config
    app_row = sql()["app_row"]
    bare: list[float] = []
    calls: list[float] = []

    def insert(i: int, conn: psycopg.Connection[Any], n: int) -> int:
        conn.execute(app_row, {"owner": OWNER, "note": f"row {i}.{n}"})
        conn.commit()
        return 1

    def request_confirm(i: int, conn: psycopg.Connection[Any], n: int) -> int:
        owner = f"{OWNER}-c{i}"
        # A declared SHA-256 (the library never reads the body; nothing is uploaded here).
        digest = hashlib.sha256(f"{i}.{n}.{uuid.uuid4()}".encode()).hexdigest()
        ticket = ctx.outbox.request_upload(
            conn,
            owner_id=owner,
            filename=f"c{i}-{n}.bin",
            content_type=CONTENT_TYPE,
            size=1000,
            sha256=digest,
        )
        conn.commit()
        ctx.outbox.confirm(conn, owner_id=owner, document_id=ticket.document.id)
        conn.commit()
        return 2

    say(f"API at {cfg.api_clients} clients: bare INSERT vs request_upload + confirm")
    busy: dict[str, list[Json]] = {"bare": [], "calls": []}
    for _ in range(cfg.rounds):
        ctx.reset()
        for phase, step, out in (("bare", insert, bare), ("calls", request_confirm, calls)):
            # Which side is busy: the client process (its threads share one interpreter, as
            # a web app's threads do) or the servers.
            meter = ctx.cpu_meter("none", [])
            meter.start()
            cpu0, wall0 = time.process_time(), time.monotonic()
            out.append(transactions_per_s(ctx, cfg.api_clients, cfg.api_clients_seconds, step))
            cores = meter.stop()
            cores["client"] = round((time.process_time() - cpu0) / (time.monotonic() - wall0), 2)
            busy[phase].append({k: cores[k] for k in ("client", "postgres", "machine")})
            # CPU per transaction on each side: what a call costs beyond a bare INSERT.
            for side in ("client", "postgres"):
                busy[phase][-1][f"{side}_cpu_ms_per_tx"] = round(
                    1000 * cores[side] / max(out[-1], 1e-9), 3
                )
    a, b = summary(bare, 0), summary(calls, 0)
    return {
        "clients": cfg.api_clients,
        "bare_insert_tx_per_s": a,
        "request_upload_and_confirm_tx_per_s": b,
        "calls_over_bare": round(b["median"] / a["median"], 3),
        "cores_busy": {
            phase: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            for phase, rows in busy.items()
        },
    }


def statements_per_call(ctx: BenchContext) -> Json:
    """Round trips (from a libpq trace) and outbox rows each call adds, inside a caller's
    transaction already open (after its own INSERT): the call's own statements; the
    caller's BEGIN, INSERT and COMMIT are theirs."""
    ctx.reset()
    out: Json = {}
    trace = ctx.workdir / "libpq.trace"
    data = body()
    with ctx.connect(autocommit=False) as conn:

        def count(call: Callable[[], object]) -> Json:
            events0 = _count(conn, sql()["count_events"])
            docs0 = _count(conn, sql()["count_documents"])
            conn.commit()
            conn.execute(sql()["traced_app_row"])  # opens the caller's transaction
            with trace.open("w") as fh:
                conn.pgconn.trace(fh.fileno())
                call()
                conn.pgconn.untrace()
            conn.commit()
            text = trace.read_text()
            sent = [ln.split("\t") for ln in text.splitlines() if "\tF\t" in ln]
            # One statement = one simple Query, or one extended-protocol Sync.
            statements = sum(1 for p in sent if len(p) > 3 and p[3] in ("Query", "Sync"))
            return {
                "library_round_trips": statements,
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
