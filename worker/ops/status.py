"""What the operator CLI shows: ``s3-outbox status``, ``events show`` and ``events retry``.

Each command has a function that reads (or changes) the database and returns plain,
JSON-ready data, and a function that renders that data as aligned text tables. The CLI in
``worker.cli`` only parses arguments and picks ``--json`` or the table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import IsolationLevel
from psycopg.rows import dict_row

from outbox import queries
from outbox.constants import DocumentStatus, EventStatus, Topic
from outbox.settings import Settings

#: How many dead events and quota owners ``status`` lists.
DEAD_LIMIT = 20
QUOTA_LIMIT = 10
#: Serialization failures tolerated by ``retry_events`` before it gives up.
RETRY_ATTEMPTS = 5


def _ops_sql() -> dict[str, str]:
    """The operator queries (``worker/ops/status.sql``)."""
    return queries.load("worker.ops", "status.sql")


def _jsonable(value: Any) -> Any:
    """A database value as JSON can hold it: times as ISO 8601, UUIDs as text."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    return value


# -- status --------------------------------------------------------------------------------


def status_report(settings: Settings) -> dict[str, Any]:
    """Backlog by topic and state, lag (overall and per topic), dead events with their last
    errors and the owners using the most of their quota.

    Keys: ``events`` (topic, status, count), ``documents`` (status -> count),
    ``oldest_pending_seconds``, ``oldest_dispatched_seconds``, ``lag_by_topic``, ``dead``,
    ``quotas`` (owner_id, limit, used, reserved, percent), ``quota_totals`` and
    ``bucket_walk`` (where the sweeper's walk is and when it last completed a pass; None
    before it first ran).
    """
    q = ops_sql = _ops_sql()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        # One snapshot, so the tables agree with each other.
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            events = conn.execute(q["event_counts"]).fetchall()
            docs = conn.execute(q["document_counts"]).fetchall()
            lag = conn.execute(q["event_lag"]).fetchone()
            by_topic = conn.execute(ops_sql["lag_by_topic"]).fetchall()
            dead = conn.execute(q["dead_events"], {"limit": DEAD_LIMIT}).fetchall()
            top = conn.execute(q["quota_top"], {"limit": QUOTA_LIMIT}).fetchall()
            totals = conn.execute(ops_sql["quota_totals"]).fetchone()
            walk = conn.execute(
                q["bucket_walk_progress"], {"name": settings.bucket_walk_cursor}
            ).fetchone()
    assert lag is not None and totals is not None
    return {
        "events": [{"topic": t, "status": s, "count": n} for t, s, n in events],
        "documents": {s: n for s, n in docs},
        "oldest_pending_seconds": round(lag[0], 3),
        "oldest_dispatched_seconds": round(lag[1], 3),
        "oldest_in_flight_seconds": round(lag[2], 3),
        "oldest_unverified_seconds": round(lag[3], 3),
        "lag_by_topic": [
            {
                "topic": t,
                "oldest_pending_seconds": round(p, 3),
                "oldest_dispatched_seconds": round(d, 3),
                "scheduled": s,
            }
            for t, p, d, s in by_topic
        ],
        "dead": [
            {
                "id": i,
                "topic": t,
                "document_id": str(d),
                "attempts": a,
                "failures": f,
                "last_error": e,
                "finished_at": _jsonable(fin),
            }
            for i, t, d, a, f, e, fin in dead
        ],
        "quotas": [
            {
                "owner_id": o,
                "limit": lim,
                "used": u,
                "reserved": r,
                "percent": round(100.0 * (u + r) / lim, 1) if lim else None,
            }
            for o, lim, u, r in top
        ],
        "quota_totals": {
            "used": totals[0],
            "reserved": totals[1],
            "limit": totals[2],
            "owners": totals[3],
            "owners_above_90_percent": totals[4],
        },
        "bucket_walk": None
        if walk is None
        else {
            "position": walk[0],
            "pass_started_at": _jsonable(walk[1]),
            "last_pass_finished_at": _jsonable(walk[2]),
            "last_pass_seconds": walk[3],
            "last_pass_age_seconds": round(walk[4], 3),
            "period_seconds": settings.bucket_walk_period_seconds,
        },
    }


def render_status(report: dict[str, Any]) -> str:
    """``status_report`` as aligned tables."""
    out: list[str] = []

    docs = report["documents"]
    doc_states = [s.value for s in DocumentStatus]
    out.append("DOCUMENTS")
    out.append(table(doc_states, [[docs.get(s, 0) for s in doc_states]]))

    counts: dict[tuple[str, str], int] = {
        (r["topic"], r["status"]): r["count"] for r in report["events"]
    }
    lag = {r["topic"]: r for r in report["lag_by_topic"]}
    topics = [t.value for t in Topic]
    topics += sorted({t for t, _ in counts} - set(topics))
    states = [s.value for s in EventStatus]
    rows: list[list[object]] = []
    for topic in topics:
        topic_lag = lag.get(topic, {})
        rows.append(
            [topic]
            + [counts.get((topic, s), 0) for s in states]
            + [
                topic_lag.get("scheduled", 0),
                seconds(topic_lag.get("oldest_pending_seconds", 0.0)),
                seconds(topic_lag.get("oldest_dispatched_seconds", 0.0)),
            ]
        )
    rows.append(
        ["total"]
        + [sum(counts.get((t, s), 0) for t in topics) for s in states]
        + [
            sum(r.get("scheduled", 0) for r in lag.values()),
            seconds(report["oldest_pending_seconds"]),
            seconds(report["oldest_dispatched_seconds"]),
        ]
    )
    out.append("")
    out.append("EVENTS (pending includes scheduled: waiting for a backoff or a recheck)")
    out.append(table(["topic", *states, "scheduled", "oldest pending", "oldest dispatched"], rows))

    out.append("")
    dead = report["dead"]
    if dead:
        out.append(
            f"DEAD EVENTS (newest {len(dead)}; `s3-outbox events retry --dead` sends them again)"
        )
        out.append(
            table(
                ["id", "topic", "document", "attempts", "failures", "finished", "last error"],
                [
                    [
                        d["id"],
                        d["topic"],
                        d["document_id"],
                        d["attempts"],
                        d["failures"],
                        (d["finished_at"] or "")[:19],
                        shorten(d["last_error"] or "", 80),
                    ]
                    for d in dead
                ],
            )
        )
    else:
        out.append("DEAD EVENTS: none")

    out.append("")
    totals = report["quota_totals"]
    out.append(
        f"QUOTAS ({totals['owners']} owners, {totals['owners_above_90_percent']} at 90% or more;"
        f" total used {human_bytes(totals['used'])}, reserved {human_bytes(totals['reserved'])},"
        f" limit {human_bytes(totals['limit'])})"
    )
    if report["quotas"]:
        out.append(
            table(
                ["owner", "used", "reserved", "limit", "use"],
                [
                    [
                        quota["owner_id"],
                        human_bytes(quota["used"]),
                        human_bytes(quota["reserved"]),
                        human_bytes(quota["limit"]),
                        "-" if quota["percent"] is None else f"{quota['percent']:.1f}%",
                    ]
                    for quota in report["quotas"]
                ],
            )
        )
    out.append("")
    out.append(render_walk(report["bucket_walk"]))
    return "\n".join(out)


def render_walk(walk: dict[str, Any] | None) -> str:
    """One line on the sweeper's bucket walk."""
    if walk is None:
        return "BUCKET WALK: not started (the sweeper walks the bucket for orphan objects)"
    where = f"after {walk['position']}" if walk["position"] else "at the start"
    if walk["last_pass_finished_at"] is None:
        last = f"no pass completed yet ({seconds(walk['last_pass_age_seconds'])} since it began)"
    else:
        last = (
            f"last pass ended {seconds(walk['last_pass_age_seconds'])} ago and took "
            f"{seconds(walk['last_pass_seconds'] or 0.0)}"
        )
    overdue = walk["last_pass_age_seconds"] > walk["period_seconds"]
    return f"BUCKET WALK: {where}; {last}{' (OVERDUE)' if overdue else ''}"


# -- events show ---------------------------------------------------------------------------


def event_detail(settings: Settings, event_id: int) -> dict[str, Any] | None:
    """One event row, its document (or None when the row is gone) and the document's other
    events; None when there is no such event."""
    q, ops_sql = queries.load("worker.events"), _ops_sql()
    with (
        psycopg.connect(settings.database_url, autocommit=True) as conn,
        conn.cursor(row_factory=dict_row) as cur,
    ):
        event = cur.execute(q["read_event"], {"id": event_id}).fetchone()
        if event is None:
            return None
        document = cur.execute(q["read_document"], {"id": event["document_id"]}).fetchone()
        siblings = cur.execute(
            ops_sql["document_events"], {"document_id": event["document_id"]}
        ).fetchall()
    return {
        "event": {k: _jsonable(v) for k, v in event.items()},
        "document": None if document is None else {k: _jsonable(v) for k, v in document.items()},
        "document_events": [{k: _jsonable(v) for k, v in row.items()} for row in siblings],
    }


#: Document columns ``events show`` prints, in this order (all of them go to ``--json``).
DOCUMENT_FIELDS = (
    "id",
    "status",
    "owner_id",
    "filename",
    "content_type",
    "declared_size",
    "verified_size",
    "reserved_bytes",
    "charged_bytes",
    "reason",
    "object_key",
    "created_at",
    "confirmed_at",
    "verified_at",
    "upload_expires_at",
    "delete_requested_at",
    "purged_at",
)


def render_event(detail: dict[str, Any]) -> str:
    """``event_detail`` as ``name: value`` blocks and a table of the document's events."""
    event = detail["event"]
    out = [f"EVENT {event['id']}"]
    out.append(fields([(k, v) for k, v in event.items() if k != "last_error"]))
    out.append("")
    out.append(f"last error: {event['last_error'] or '-'}")
    out.append("")
    doc = detail["document"]
    if doc is None:
        out.append(f"DOCUMENT {event['document_id']}: no row (never existed or removed)")
    else:
        out.append(f"DOCUMENT {doc['id']}: {doc['status']}")
        out.append(fields([(k, doc.get(k)) for k in DOCUMENT_FIELDS if k != "id"]))
    others = detail["document_events"]
    if others:
        out.append("")
        out.append("EVENTS OF THIS DOCUMENT")
        out.append(
            table(
                ["id", "topic", "status", "attempts", "failures", "created", "finished"],
                [
                    [
                        ("*" if e["id"] == event["id"] else "") + str(e["id"]),
                        e["topic"],
                        e["status"],
                        e["attempts"],
                        e["failures"],
                        (e["created_at"] or "")[:19],
                        (e["finished_at"] or "")[:19],
                    ]
                    for e in others
                ],
            )
        )
    return "\n".join(out)


# -- events retry --------------------------------------------------------------------------


def retry_events(
    settings: Settings, *, statuses: Sequence[str], topic: str | None, event_id: int | None
) -> list[dict[str, Any]]:
    """Send events back to pending (failures and rescues reset) and return what was done:
    one dict per event with its state before (``status``, ``failures``, ``last_error``).

    The candidates are read and locked, then updated, in one REPEATABLE READ transaction, so
    the report is exactly the set of events that changed.
    """
    q = ops_sql = _ops_sql()
    params = {"statuses": list(statuses), "topic": topic, "id": event_id}
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            try:
                with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                    before = cur.execute(ops_sql["retry_candidates"], params).fetchall()
                    changed = {r["id"] for r in cur.execute(q["retry_events"], params).fetchall()}
                break
            except psycopg.errors.SerializationFailure:
                if attempt == RETRY_ATTEMPTS:
                    raise
    return [{k: _jsonable(v) for k, v in row.items()} for row in before if row["id"] in changed]


def render_retry(retried: list[dict[str, Any]]) -> str:
    """One line per retried event, then the count (``N events back to pending``)."""
    out = []
    for row in retried:
        error = shorten(row["last_error"] or "-", 100)
        out.append(
            f"event {row['id']} ({row['topic']}, document {row['document_id']}):"
            f" {row['status']} -> pending, failures {row['failures']} -> 0; last error: {error}"
        )
    out.append(f"{len(retried)} events back to pending")
    return "\n".join(out)


# -- formatting ----------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An aligned text table, indented by two spaces: quantities right-aligned, text
    left-aligned, columns two spaces apart."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [bool(rows) and all(_is_quantity(r[i]) for r in rows) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append(("  " + "  ".join(parts)).rstrip())
    return "\n".join(lines)


_QUANTITY = re.compile(r"^-?\d[\d.]*(\s?(B|KiB|MiB|GiB|TiB)|%|s|m\d\ds|h\d\dm)?$")


def _is_quantity(value: object) -> bool:
    """A number, or text that reads as one (``12.3s``, ``1.5 KiB``, ``95.0%``)."""
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and (value == "-" or bool(_QUANTITY.match(value)))


def fields(pairs: Sequence[tuple[str, object]]) -> str:
    """``name: value`` lines with the values aligned."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"  {k + ':':<{width + 1}} {'-' if v is None else v}" for k, v in pairs)


def shorten(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters (newlines folded, an ellipsis when cut)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def seconds(value: float) -> str:
    """A lag as ``0s``, ``12.3s``, ``4m05s`` or ``2h03m``."""
    if value < 60:
        return f"{value:.1f}s" if value else "0s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def human_bytes(n: int) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``2.0 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
