"""Check DESIGN.md's invariants against the database and a full listing of the bucket.

Used by tests, the chaos harness and operators. ``settled=True`` adds the checks that only
hold once the system is quiet (no event left unfinished, no orphan object or multipart upload
in progress that no document is uploading, nothing waiting).
Invariants 2 (download URLs) and 6 (idempotence) are properties of calls, not of state: tests
prove them; here their consequences show up as quota drift or bad charges.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from outbox import queries
from outbox.constants import LIVE_STATUSES
from outbox.presign import object_key
from outbox.settings import Settings
from worker.orphan_uploads import UPLOADING
from worker.storage import Storage
from worker.verification import (
    Declared,
    DeclaredParts,
    composite_sha256,
    mismatch,
    multipart_mismatch,
)

_UUID_TAIL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PAGE = 1000


@dataclass
class Check:
    name: str
    passed: bool
    problems: list[str] = field(default_factory=list)


@dataclass
class InvariantReport:
    checks: list[Check] = field(default_factory=list)
    documents: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    orphan_objects: list[str] = field(default_factory=list)
    quota_mismatches: int = 0
    lost_events: int = 0
    objects_listed: int = 0

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def add(self, name: str, problems: list[str]) -> None:
        self.checks.append(Check(name, not problems, problems[:50]))

    def summary(self) -> str:
        lines = [f"{'PASS' if c.passed else 'FAIL'}  {c.name}" for c in self.checks]
        for check in self.failures():
            lines.extend(f"      {p}" for p in check.problems[:10])
        return "\n".join(lines)


def check_invariants(
    settings: Settings,
    storage: Storage,
    *,
    settled: bool,
    now: datetime | None = None,
    verify_objects: bool = True,
) -> InvariantReport:
    """Every invariant that state can show. Objects are those under ``settings.key_prefix``."""
    q = {**queries.load("worker.ops", "status.sql"), **queries.load("harness", "invariants.sql")}
    report = InvariantReport()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        report.documents = dict(conn.execute(q["document_counts"]).fetchall())
        report.events = Counter()
        for _topic, status, n in conn.execute(q["event_counts"]).fetchall():
            report.events[status] += n
        report.events = dict(report.events)

        # 4: quotas.
        drift = conn.execute(q["invariant_quota_drift"]).fetchall()
        report.quota_mismatches = len(drift)
        report.add(
            "4 quota: 0 <= used, used + reserved <= limit, used = sum of charges",
            [
                f"owner {o}: limit {lim} used {u} reserved {r} (documents: charged {c},"
                f" reserved {rs})"
                for o, lim, u, r, c, rs in drift
            ]
            + [
                f"owner {o}: documents hold bytes but no quota row"
                for (o,) in conn.execute(q["invariant_documents_without_quota"]).fetchall()
            ],
        )
        # 1 + 4: charges and reservations sit on the right documents.
        bad = conn.execute(q["invariant_bad_charges"]).fetchall()
        report.add(
            "1/4 charges only on verified documents, reservations only on unverified ones",
            [
                f"document {i} {s}: charged {c} reserved {r} declared {d} verified {v}"
                for i, s, c, r, d, v in bad
            ],
        )

        # 8 and 7 (and 3 from the other side): walk the bucket page by page.
        orphans: list[str] = []
        bad_keys: list[str] = []
        paginator = storage.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(
            Bucket=settings.s3_bucket,
            Prefix=settings.key_prefix,
            PaginationConfig={"PageSize": _PAGE},
        ):
            keys = [obj["Key"] for obj in page.get("Contents", [])]
            report.objects_listed += len(keys)
            rows = {
                r[0]: r
                for r in conn.execute(q["invariant_documents_by_keys"], {"keys": keys}).fetchall()
            }
            for key in keys:
                tail = key[len(settings.key_prefix) :]
                if not _UUID_TAIL.fullmatch(tail):
                    bad_keys.append(key)
                row = rows.get(key)
                if row is None or row[2] not in LIVE_STATUSES:
                    orphans.append(key)
        report.orphan_objects = orphans
        report.add("8 object keys are server-made (prefix + UUID)", bad_keys)

        # 1 + 3: every available document's object is there and matches.
        problems: list[str] = []
        if verify_objects:
            after = uuid.UUID(int=0)
            while True:
                page_rows = conn.execute(
                    q["invariant_available_page"], {"after": after, "limit": _PAGE}
                ).fetchall()
                for doc_id, key, size, sha, ctype, part_count, digests in page_rows:
                    if key != object_key(settings, doc_id) and not key.endswith(str(doc_id)):
                        problems.append(f"document {doc_id}: key {key} is not its own")
                    info = storage.head(key)
                    if info is None:
                        problems.append(f"available document {doc_id}: object {key} missing")
                        continue
                    if part_count is not None:
                        why = (
                            multipart_mismatch(
                                DeclaredParts(size, composite_sha256(digests), ctype), info
                            )
                            if digests and len(digests) == part_count
                            else "its part digests are not recorded"
                        )
                    else:
                        why = mismatch(
                            Declared(size, sha, ctype),
                            info,
                            None if info.sha256_b64 else storage.sha256_hex(key, size),
                        )
                    if why:
                        problems.append(f"available document {doc_id}: {why}")
                if len(page_rows) < _PAGE:
                    break
                after = page_rows[-1][0]
        report.add("1/3 every available document's object exists and matches", problems)

        if settled:
            unfinished = conn.execute(q["invariant_unfinished_events"], {"now": now}).fetchall()
            report.lost_events = len(unfinished)
            report.add(
                "5 every due event ended done or dead",
                [
                    f"event {i} {t} {s} document {d} attempts {a} failures {f}: {e}"
                    for i, t, s, d, a, f, e in unfinished
                ],
            )
            waiting = conn.execute(q["invariant_unsettled_documents"], {"now": now}).fetchall()
            report.add(
                "5 no document left waiting (uploaded, deleting, expired pending)",
                [f"document {i} is {s}" for i, s in waiting],
            )
            report.add("7 no object without a live document row", orphans)
            report.add(
                "7 no multipart upload in progress without a document uploading it",
                _unheld_uploads(conn, q, settings, storage),
            )
    return report


def _unheld_uploads(
    conn: psycopg.Connection[Any], q: dict[str, str], settings: Settings, storage: Storage
) -> list[str]:
    """Uploads in progress under the prefix that no pending or uploaded document holds."""
    found: list[str] = []
    markers: dict[str, str] | None = {}
    while markers is not None:
        uploads, markers = storage.list_uploads_page(settings.key_prefix, markers, _PAGE)
        rows = {
            r[0]: r
            for r in conn.execute(
                q["invariant_uploads_by_keys"], {"keys": [u.key for u in uploads]}
            ).fetchall()
        }
        for upload in uploads:
            row = rows.get(upload.key)
            if row is None or row[1] not in UPLOADING or row[2] != upload.upload_id:
                status = "no row" if row is None else f"document {row[1]}"
                found.append(f"upload {upload.upload_id} of {upload.key} ({status})")
    return found


def summarize_counts(report: InvariantReport) -> dict[str, Any]:
    """Plain numbers for tables and JSON."""
    return {
        "documents": report.documents,
        "events": report.events,
        "orphan_objects": len(report.orphan_objects),
        "quota_mismatches": report.quota_mismatches,
        "lost_events": report.lost_events,
        "objects_listed": report.objects_listed,
        "checks_passed": sum(c.passed for c in report.checks),
        "checks_failed": sum(not c.passed for c in report.checks),
    }
