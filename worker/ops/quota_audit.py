"""Audit the quotas against the documents (invariant 4), and fix the drift with ``fix``.

For each owner, ``used_bytes`` must equal the sum of ``charged_bytes`` over their documents
and ``reserved_bytes`` the sum of their ``reserved_bytes``. Each document pays its size,
however many documents share its blob (the stored object): the report also shows the bytes
verified blobs hold against the bytes charged, the saving of sharing them. Quota rows are
read in keyset pages, with the sums, so memory does not grow with the number of owners.

A fix is one transaction per owner: lock the quota row (``FOR UPDATE``), recompute the sums
*after* the lock, then set both columns. Every writer of an owner's charges and reservations
(request_upload, confirm/verify, delete, purge, reconcile) updates the quota row in the same
transaction, so sums read under the lock cannot miscount a concurrent upload. A fix that
would make ``used + reserved`` exceed the limit is refused and reported instead of tripping
the ``quotas_bounds`` CHECK: the operator decides whether to raise the limit or remove
documents.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from outbox import queries
from outbox.settings import Settings
from worker.ops.progress import bar

log = logging.getLogger("s3outbox.quota_audit")

PAGE_SIZE = 1000
SAMPLE_LIMIT = 1000

Row = dict[str, Any]


@dataclass(frozen=True)
class QuotaDrift:
    """One owner whose quota row disagrees with their documents."""

    owner_id: str
    limit_bytes: int | None  # None: the owner has no quota row
    used_bytes: int | None
    reserved_bytes: int | None
    charged_sum: int
    reserved_sum: int
    action: str
    fixed: bool = False
    refused: bool = False

    @property
    def used_diff(self) -> int:
        """How far ``used_bytes`` is from the documents' charges (positive: too high)."""
        return (self.used_bytes or 0) - self.charged_sum

    @property
    def reserved_diff(self) -> int:
        """How far ``reserved_bytes`` is from the documents' reservations."""
        return (self.reserved_bytes or 0) - self.reserved_sum


@dataclass
class QuotaAuditReport:
    """What ``audit_quotas`` found and did. ``drift`` holds at most ``sample_limit`` owners;
    the counts are exact."""

    fixing: bool
    owners_checked: int = 0
    drift_count: int = 0
    drift: list[QuotaDrift] = field(default_factory=list)
    fixed: int = 0
    refused: int = 0
    sample_limit: int = SAMPLE_LIMIT
    #: Live blobs, the bytes verified ones hold (each content once) and the bytes charged
    #: (each document its size): charged - stored is what sharing blobs saves.
    blobs: int = 0
    stored_bytes: int = 0
    charged_bytes: int = 0

    @property
    def clean(self) -> bool:
        """No drift, or all of it fixed."""
        return self.drift_count == self.fixed

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values, with each owner's differences."""
        out = asdict(self)
        out["clean"] = self.clean
        out["drift"] = [
            {**asdict(d), "used_diff": d.used_diff, "reserved_diff": d.reserved_diff}
            for d in self.drift
        ]
        return out


def audit_quotas(
    settings: Settings,
    *,
    fix: bool = False,
    now: datetime | None = None,
    page_size: int = PAGE_SIZE,
    sample_limit: int = SAMPLE_LIMIT,
    progress: bool = False,
) -> QuotaAuditReport:
    """Compare every owner's quota row with the sums over their documents; with ``fix``,
    correct each drifted owner in its own transaction (see the module docstring). Owners
    whose documents hold bytes but who have no quota row get one with the default limit."""
    q = queries.load("worker.ops", "repair.sql")
    report = QuotaAuditReport(fixing=fix, sample_limit=sample_limit)
    with (
        psycopg.connect(settings.database_url, autocommit=True) as conn,
        conn.cursor(row_factory=dict_row) as cur,
    ):
        after = ""
        counter = bar(progress, "owners", "owner")
        while True:
            page = cur.execute(
                q["quota_audit_page"], {"after": after, "limit": page_size}
            ).fetchall()
            report.owners_checked += len(page)
            counter.update(len(page))
            for row in page:
                if (row["used_bytes"], row["reserved_bytes"]) != (
                    row["charged_sum"],
                    row["reserved_sum"],
                ):
                    _record(report, _fix_owner(conn, q, row, now) if fix else _proposal(row))
            if len(page) < page_size:
                break
            after = page[-1]["owner_id"]
        storage = cur.execute(q["quota_audit_storage"]).fetchone()
        assert storage is not None
        report.blobs = storage["blobs"]
        report.stored_bytes = storage["stored_bytes"]
        report.charged_bytes = storage["charged_bytes"]
        for row in cur.execute(q["quota_audit_missing_rows"]).fetchall():
            report.owners_checked += 1
            missing = {**row, "limit_bytes": None, "used_bytes": None, "reserved_bytes": None}
            drift = (
                _create_row(conn, q, missing, settings.default_quota_bytes, now)
                if fix
                else _proposal(missing, settings.default_quota_bytes)
            )
            _record(report, drift)
    log.info(
        "quota audit: %d owners, %d drifted, %d fixed, %d refused",
        report.owners_checked,
        report.drift_count,
        report.fixed,
        report.refused,
    )
    return report


def _record(report: QuotaAuditReport, drift: QuotaDrift | None) -> None:
    if drift is None:  # consistent once looked at under the lock
        return
    report.drift_count += 1
    report.fixed += drift.fixed
    report.refused += drift.refused
    if len(report.drift) < report.sample_limit:
        report.drift.append(drift)


def _drift(row: Row, action: str, *, fixed: bool = False, refused: bool = False) -> QuotaDrift:
    return QuotaDrift(
        owner_id=row["owner_id"],
        limit_bytes=row["limit_bytes"],
        used_bytes=row["used_bytes"],
        reserved_bytes=row["reserved_bytes"],
        charged_sum=row["charged_sum"],
        reserved_sum=row["reserved_sum"],
        action=action,
        fixed=fixed,
        refused=refused,
    )


def _over_limit(row: Row, limit: int) -> str | None:
    total = row["charged_sum"] + row["reserved_sum"]
    if total <= limit:
        return None
    return (
        f"not fixed: the documents hold {row['charged_sum']} charged + {row['reserved_sum']} "
        f"reserved = {total} bytes, above the limit of {limit}; writing that would break "
        "used + reserved <= limit (invariant 4, the quotas_bounds CHECK). Raise the owner's "
        f"limit to at least {total} (Outbox.set_limit) or delete documents, then run "
        "'s3-outbox quota audit --fix' again"
    )


def _proposal(row: Row, limit: int | None = None) -> QuotaDrift:
    refusal = _over_limit(row, limit if limit is not None else row["limit_bytes"])
    if refusal is not None:
        return _drift(row, refusal.replace("not fixed", "cannot be fixed", 1))
    if row["limit_bytes"] is None:
        return _drift(
            row,
            f"would create the quota row (limit {limit}) with used {row['charged_sum']}, "
            f"reserved {row['reserved_sum']}",
        )
    return _drift(
        row,
        f"would set used {row['used_bytes']} -> {row['charged_sum']}, "
        f"reserved {row['reserved_bytes']} -> {row['reserved_sum']}",
    )


def _fix_owner(
    conn: psycopg.Connection[Any], q: dict[str, str], seen: Row, now: datetime | None
) -> QuotaDrift | None:
    """One owner, one transaction: lock the quota row, recompute under the lock, write."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        quota = cur.execute(q["quota_audit_lock"], {"owner_id": seen["owner_id"]}).fetchone()
        if quota is None:
            return None
        # A new statement after the lock: sees every writer that committed before it.
        sums = cur.execute(q["quota_audit_sums"], {"owner_id": seen["owner_id"]}).fetchone()
        assert sums is not None
        row = {**quota, **sums}
        if (row["used_bytes"], row["reserved_bytes"]) == (row["charged_sum"], row["reserved_sum"]):
            return None
        refusal = _over_limit(row, row["limit_bytes"])
        if refusal is not None:
            log.warning("quota of %s: %s", row["owner_id"], refusal)
            return _drift(row, refusal, refused=True)
        done = cur.execute(
            q["quota_audit_fix"],
            {
                "owner_id": row["owner_id"],
                "used": row["charged_sum"],
                "reserved": row["reserved_sum"],
                "now": now,
            },
        ).fetchone()
    if done is None:  # cannot happen under the lock; reported rather than assumed
        return _drift(row, "not fixed: the quota row refused the update", refused=True)
    log.info(
        "quota of %s fixed: used %s -> %s, reserved %s -> %s",
        row["owner_id"],
        row["used_bytes"],
        row["charged_sum"],
        row["reserved_bytes"],
        row["reserved_sum"],
    )
    return _drift(
        row,
        f"fixed: used {row['used_bytes']} -> {row['charged_sum']}, "
        f"reserved {row['reserved_bytes']} -> {row['reserved_sum']}",
        fixed=True,
    )


def _create_row(
    conn: psycopg.Connection[Any], q: dict[str, str], seen: Row, limit: int, now: datetime | None
) -> QuotaDrift | None:
    """An owner with charged or reserved documents but no quota row: create it."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        sums = cur.execute(q["quota_audit_sums"], {"owner_id": seen["owner_id"]}).fetchone()
        assert sums is not None
        row = {**seen, **sums}
        refusal = _over_limit(row, limit)
        if refusal is not None:
            return _drift(row, refusal, refused=True)
        done = cur.execute(
            q["quota_audit_create_row"],
            {
                "owner_id": row["owner_id"],
                "limit": limit,
                "used": row["charged_sum"],
                "reserved": row["reserved_sum"],
                "now": now,
            },
        ).fetchone()
    if done is None:
        return _drift(row, "not fixed: a quota row appeared meanwhile; run again", refused=True)
    return _drift(
        row,
        f"fixed: quota row created (limit {limit}) with used {row['charged_sum']}, "
        f"reserved {row['reserved_sum']}",
        fixed=True,
    )


def format_report(report: QuotaAuditReport) -> str:
    """The audit as text for an operator."""
    mode = "fix" if report.fixing else "dry run"
    lines = [
        f"quota audit ({mode}): {report.owners_checked} owners checked, "
        f"{report.drift_count} drifted"
    ]
    for d in report.drift:
        if d.limit_bytes is None:
            lines.append(
                f"  {d.owner_id}: no quota row; documents hold charged {d.charged_sum}, "
                f"reserved {d.reserved_sum}"
            )
        else:
            lines.append(
                f"  {d.owner_id}: limit {d.limit_bytes}; used {d.used_bytes} vs charged "
                f"{d.charged_sum} ({d.used_diff:+d}); reserved {d.reserved_bytes} vs "
                f"{d.reserved_sum} ({d.reserved_diff:+d})"
            )
        lines.append(f"      -> {d.action}")
    if report.drift_count > len(report.drift):
        lines.append(f"  ... and {report.drift_count - len(report.drift)} more")
    lines.append(
        f"storage: {report.blobs} blobs; verified ones hold {report.stored_bytes} bytes for"
        f" {report.charged_bytes} bytes charged (shared blobs save"
        f" {report.charged_bytes - report.stored_bytes})"
    )
    if report.fixing:
        lines.append(f"fixed {report.fixed}, refused {report.refused}.")
    elif report.drift_count:
        lines.append("run again with --fix to correct them.")
    else:
        lines.append("every quota matches its documents.")
    return "\n".join(lines)
