"""Reconcile the bucket with the document rows: find the drift, and repair it with ``apply``.

Three walks (the bucket's two listings, then the rows), each in bounded pages (memory does
not grow with the bucket or the table):

1. the bucket under ``key_prefix`` (ListObjectsV2, pages of ``page_size`` keys, one query per
   page): **orphan objects**, i.e. objects no live document owns, older than the horizon. A
   newer one may belong to an upload whose transaction has not committed yet (invariant 7
   allows it until the horizon). What an orphan is, and how its purge is queued, is
   ``worker.orphans``, which the sweeper's bucket walk shares; then the multipart uploads in
   progress under the prefix (ListMultipartUploads): **orphan uploads**, held by no pending
   or uploaded document, older than the horizon (``worker.orphan_uploads``, shared with the
   sweeper's multipart walk);
2. ``available`` documents (keyset pages, HeadObject each): **broken documents**, whose
   object is missing or differs in size, SHA-256 or content type (invariants 1 and 3);
3. documents in a transitional state (keyset pages): **stuck documents**, waiting for an
   event that no longer exists (lost, dead or pruned): ``uploaded`` past the verification
   deadline plus the redispatch delay without a verify event, ``deleting`` without a purge
   of the document, ``pending`` past expiry (plus grace and a sweeper round) without an
   expire event.

Nothing changes unless ``apply=True``. Then every repair goes through the outbox, so it is
logged, retried and idempotent like any other work:

- an orphan gets a purge event that names its key (``events.object_key``); the purge actor
  deletes the key only if no live document owns it then (invariant 3);
- an orphan upload is aborted at once (no document holds it, and an abort is idempotent);
- a broken document becomes ``rejected`` with a reason, its charge is released from its
  owner's quota (``used -= charged_bytes``) and its purge is queued;
- a stuck document gets its missing event again.

Each write is a compare-and-set made under the document's row lock (or, for orphan purges,
guarded by a unique index on unfinished purges per key), so a second run, or two runs at
once, queue nothing more.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from outbox import queries
from outbox.constants import BlobStatus, DocumentStatus, Topic
from outbox.settings import Settings
from worker.ops.progress import bar
from worker.orphan_uploads import abort as abort_uploads
from worker.orphan_uploads import examine as examine_uploads
from worker.orphans import Disposition, Orphan, examine, queue_purges
from worker.storage import ObjectInfo, Storage, UploadMarkers
from worker.verification import (
    Declared,
    DeclaredParts,
    composite_sha256,
    mismatch,
    multipart_mismatch,
)

log = logging.getLogger("s3outbox.reconcile")

DEFAULT_HORIZON_SECONDS = 3600.0
PAGE_SIZE = 1000
#: Findings kept in a report per kind (counts stay exact): bounded memory on a bad day.
SAMPLE_LIMIT = 1000
_HEAD_THREADS = 16

Row = dict[str, Any]
Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class OrphanObject:
    """An object no live document owns, older than the horizon."""

    key: str
    size: int
    last_modified: datetime
    document_id: uuid.UUID | None  # the (non-live) row that names this key, if any
    document_status: str | None
    action: str


@dataclass(frozen=True)
class OrphanUploadFinding:
    """A multipart upload in progress that no pending or uploaded document holds, older than
    the horizon (``worker.orphan_uploads``)."""

    key: str
    upload_id: str
    initiated: datetime
    document_id: uuid.UUID | None  # the row of its key, if any
    document_status: str | None
    action: str


@dataclass(frozen=True)
class BrokenDocument:
    """An ``available`` document whose object is missing or differs from the row."""

    document_id: uuid.UUID
    owner_id: str
    object_key: str
    problem: str
    charged_bytes: int
    action: str


@dataclass(frozen=True)
class StuckDocument:
    """A document waiting for an event that no longer exists."""

    document_id: uuid.UUID
    owner_id: str
    status: str
    since: datetime | None
    missing_event: str
    action: str


@dataclass
class ReconcileReport:
    """What ``reconcile`` found and did. Lists hold at most ``sample_limit`` items each; the
    ``*_count`` fields are exact."""

    applied: bool
    now: datetime
    horizon_seconds: float
    bucket: str
    key_prefix: str
    run_id: str
    sample_limit: int = SAMPLE_LIMIT
    objects_listed: int = 0
    young_unowned: int = 0  # unowned, but newer than the horizon: left alone
    orphan_count: int = 0
    orphans: list[OrphanObject] = field(default_factory=list)
    uploads_listed: int = 0
    young_unheld_uploads: int = 0  # held by no document, but newer than the horizon
    orphan_upload_count: int = 0
    orphan_uploads: list[OrphanUploadFinding] = field(default_factory=list)
    uploads_aborted: int = 0
    available_checked: int = 0
    broken_count: int = 0
    broken: list[BrokenDocument] = field(default_factory=list)
    unprovable_count: int = 0  # no stored checksum and the body was not read: left alone
    unprovable: list[BrokenDocument] = field(default_factory=list)
    stuck_count: int = 0
    stuck: list[StuckDocument] = field(default_factory=list)
    to_repair: int = 0  # findings that need a write (done with apply, else proposed)
    repaired: int = 0  # writes made (apply only)
    events_queued: int = 0
    documents_rejected: int = 0
    bytes_released: int = 0

    @property
    def clean(self) -> bool:
        """Nothing needs repairing (a purge already queued needs only the workers)."""
        return self.to_repair == 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (datetimes ISO 8601, UUIDs as strings)."""
        out: dict[str, Any] = _jsonable({**asdict(self), "clean": self.clean})
        return out

    def _keep(self, items: list[Any], item: Any) -> None:
        if len(items) < self.sample_limit:
            items.append(item)


def reconcile(
    settings: Settings,
    *,
    apply: bool = False,
    horizon: float = DEFAULT_HORIZON_SECONDS,
    now: datetime | None = None,
    storage: Storage | None = None,
    page_size: int = PAGE_SIZE,
    sample_limit: int = SAMPLE_LIMIT,
    progress: bool = False,
) -> ReconcileReport:
    """Compare the bucket (under ``settings.key_prefix``) with the document rows and report
    orphan objects, broken ``available`` documents and stuck documents. With ``apply``,
    queue the repairs (see the module docstring); running it again then changes nothing.

    ``now`` is the clock that decides what is old (default: the database's); ``horizon`` is
    how old, in seconds, an unowned object must be to count as an orphan. ``progress`` shows
    progress bars on a terminal.
    """
    if horizon < 0:
        raise ValueError("horizon must be >= 0 seconds")
    if not 1 <= page_size <= 1000:
        raise ValueError("page_size must be within 1..1000 (ListObjectsV2's maximum)")
    storage = storage or Storage(settings)
    # Its own queries, and the event-handling ones it shares with the workers (lock a
    # document, release a charge, queue an event).
    q = {
        **queries.load("worker.events"),
        **queries.load("outbox", "blobs.sql"),
        **queries.load("worker.ops", "repair.sql"),
    }
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        clock_row = conn.execute(q["reconcile_clock"], {"now": now}).fetchone()
        assert clock_row is not None
        run_id = uuid.uuid4().hex[:12]
        report = ReconcileReport(
            applied=apply,
            now=clock_row[0],
            horizon_seconds=horizon,
            bucket=settings.s3_bucket,
            key_prefix=settings.key_prefix,
            run_id=run_id,
            sample_limit=sample_limit,
        )
        walk = _Walk(settings, storage, conn, q, report, apply, page_size, progress)
        walk.orphans()
        walk.uploads()
        walk.broken()
        walk.stuck()
    log.info(
        "reconcile %s (%s): %d objects, %d orphans, %d broken, %d stuck; %d repairs made",
        run_id,
        "apply" if apply else "dry run",
        report.objects_listed,
        report.orphan_count,
        report.broken_count,
        report.stuck_count,
        report.repaired,
    )
    return report


@dataclass
class _Walk:
    settings: Settings
    storage: Storage
    conn: Conn
    q: dict[str, str]
    report: ReconcileReport
    apply: bool
    page_size: int
    progress: bool = False

    @property
    def trace_id(self) -> str:
        return f"reconcile-{self.report.run_id}"

    # -- 1. the bucket ---------------------------------------------------------------------

    def orphans(self) -> None:
        report = self.report
        cutoff = report.now - timedelta(seconds=report.horizon_seconds)
        paginator = self.storage.client.get_paginator("list_objects_v2")
        counter = bar(self.progress, "bucket objects", "obj")
        for page in paginator.paginate(
            Bucket=self.settings.s3_bucket,
            Prefix=self.settings.key_prefix,
            PaginationConfig={"PageSize": self.page_size},
        ):
            contents = page.get("Contents", [])
            if not contents:
                continue
            report.objects_listed += len(contents)
            counter.update(len(contents))
            found = examine(self.conn, contents, cutoff)
            report.young_unowned += found.young
            self._orphan_page(found.orphans)

    def _orphan_page(self, found: list[Orphan]) -> None:
        report = self.report
        needed = [o for o in found if o.disposition == Disposition.QUEUE]
        report.to_repair += len(needed)
        queued: set[str] = set()
        if self.apply:
            queued = queue_purges(self.conn, needed, trace_id=self.trace_id, now=report.now)
            report.events_queued += len(queued)
            report.repaired += len(queued)
            report.to_repair -= len(needed) - len(queued)  # another run queued them meanwhile
        for orphan in found:
            report.orphan_count += 1
            report._keep(
                report.orphans,
                OrphanObject(
                    key=orphan.key,
                    size=orphan.size,
                    last_modified=orphan.last_modified,
                    document_id=orphan.document_id,
                    document_status=orphan.document_status,
                    action=_orphan_action(orphan, self.apply, queued),
                ),
            )

    # -- 1b. multipart uploads in progress --------------------------------------------------

    def uploads(self) -> None:
        report = self.report
        cutoff = report.now - timedelta(seconds=report.horizon_seconds)
        counter = bar(self.progress, "multipart uploads", "upload")
        markers: UploadMarkers | None = {}
        while markers is not None:
            page, markers = self.storage.list_uploads_page(
                self.settings.key_prefix, markers, self.page_size
            )
            report.uploads_listed += len(page)
            counter.update(len(page))
            found = examine_uploads(self.conn, page, cutoff)
            report.young_unheld_uploads += found.young
            report.orphan_upload_count += len(found.orphans)
            report.to_repair += len(found.orphans)
            aborted: set[tuple[str, str]] = set()
            if self.apply:
                for orphan in found.orphans:
                    count, errors = abort_uploads(self.storage, [orphan])
                    if count:
                        aborted.add((orphan.key, orphan.upload_id))
                    for error in errors:
                        log.warning("reconcile: could not abort %s", error)
                report.repaired += len(aborted)
                report.uploads_aborted += len(aborted)
                report.to_repair -= len(aborted)
            for orphan in found.orphans:
                done = (orphan.key, orphan.upload_id) in aborted
                action = "aborted" if done else ("abort failed" if self.apply else "would abort")
                report._keep(
                    report.orphan_uploads,
                    OrphanUploadFinding(
                        key=orphan.key,
                        upload_id=orphan.upload_id,
                        initiated=orphan.initiated,
                        document_id=orphan.document_id,
                        document_status=orphan.document_status,
                        action=action,
                    ),
                )

    # -- 2. available documents, one blob at a time -----------------------------------------

    def broken(self) -> None:
        report = self.report
        with ThreadPoolExecutor(max_workers=_HEAD_THREADS) as pool:
            counter = bar(self.progress, "available documents", "doc")
            for page in self._pages(self.q["reconcile_available_blob_page"], {}, "object_key"):
                docs = sum(len(row["document_ids"]) for row in page)
                report.available_checked += docs
                counter.update(docs)
                checks = list(pool.map(self._check, page))
                for row, check in zip(page, checks, strict=True):
                    if check.unprovable:
                        report.unprovable_count += len(row["document_ids"])
                        for doc in _documents(row):
                            report._keep(
                                report.unprovable,
                                _broken(doc, check.problem or "", "left alone: cannot be proven"),
                            )
                    elif check.problem is not None:
                        self._broken_blob(row, check)

    def _broken_blob(self, row: Row, check: _Check) -> None:
        """A blob whose object is missing or differs: every available document that
        references it is broken (they all serve that object), each rejected with its charge
        released from its owner's quota, and the blob goes ``deleting`` (its object is
        purged by their purges)."""
        report = self.report
        docs = _documents(row)
        report.broken_count += len(docs)
        report.to_repair += len(docs)
        if not self.apply:
            for doc in docs:
                action = f"would reject, release {doc['charged_bytes']} bytes, queue a purge"
                report._keep(report.broken, _broken(doc, check.problem or "", action))
            return
        # Look once more right before acting: never reject on a single glance.
        again = self._check(row)
        if again.problem is None or again.unprovable:
            report.to_repair -= len(docs)
            for doc in docs:
                action = "skipped: the object matched when checked again"
                report._keep(report.broken, _broken(doc, check.problem or "", action))
            return
        problem = again.problem
        key = row["object_key"]
        rejected: dict[Any, int] = {}
        with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cur:
            # The owners' quota rows first (in owner order), then the documents (in id
            # order), then the blob: the order of every path (a delete or a worker locks them
            # so), so a repair cannot deadlock with them.
            cur.execute(self.q["reconcile_lock_quotas_of_blob"], {"key": key})
            for doc in cur.execute(self.q["reconcile_lock_available_of_blob"], {"key": key}):
                rejected[doc["id"]] = int(doc["charged_bytes"])
            for doc_id in rejected:
                self._reject(cur, doc_id, problem, again, report.now)
            cur.execute(self.q["lock_blob"], {"key": key})
            cur.execute(self.q["release_unreferenced_blob"], {"key": key, "now": report.now})
        for doc in docs:
            if doc["id"] not in rejected:
                report.to_repair -= 1
                action = "skipped: the document changed meanwhile"
                report._keep(report.broken, _broken(doc, problem, action))
                continue
            released = rejected[doc["id"]]
            report.repaired += 1
            report.documents_rejected += 1
            report.events_queued += 1
            report.bytes_released += released
            action = f"rejected, released {released} bytes, purge queued"
            report._keep(
                report.broken, _broken({**doc, "charged_bytes": released}, problem, action)
            )
            log.warning("document %s rejected by reconcile: %s", doc["id"], problem)

    def _reject(
        self, cur: psycopg.Cursor[Row], doc_id: Any, problem: str, check: _Check, now: datetime
    ) -> None:
        """One locked available document -> rejected, its charge released, its parts
        forgotten, its purge queued."""
        doc = cur.execute(
            self.q["reconcile_reject_available"],
            {
                "id": doc_id,
                "reason": f"reconcile: {problem}",
                "verified_size": check.info.size if check.info else None,
                "now": now,
            },
        ).fetchone()
        assert doc is not None  # locked and available
        if doc["charged_bytes"]:
            cur.execute(
                self.q["release_quota"],
                {
                    "owner_id": doc["owner_id"],
                    "charged": doc["charged_bytes"],
                    "reserved": 0,
                    "now": now,
                },
            )
        cur.execute(self.q["delete_parts"], {"id": doc_id})
        cur.execute(
            self.q["insert_event"],
            {
                "topic": Topic.PURGE.value,
                "document_id": doc_id,
                "trace_id": doc["trace_id"] or self.trace_id,
                "available_at": None,
                "now": now,
            },
        )

    def _check(self, row: Row) -> _Check:
        """HeadObject (and the full-read fallback, as verification does) against the blob the
        available documents reference (its size, SHA-256 and the type it was uploaded with); a
        multipart blob's composite checksum against its document's recorded part digests. A
        blob that is not ``verified`` is broken as it is."""
        key = row["object_key"]
        size = int(row["declared_size"])
        if row["blob_status"] != BlobStatus.VERIFIED:
            return _Check(f"its blob is {row['blob_status']}, not verified", None, False)
        info = self.storage.head(key)
        if info is None:
            return _Check("object missing from storage", None, False)
        if row["part_count"] is not None:
            digests = row["part_digests"] or []
            if len(digests) != row["part_count"]:
                return _Check("the part digests of this document are not recorded", info, True)
            if info.composite_sha256 is None and info.sha256_b64 is None and info.size == size:
                return _Check("storage kept no composite checksum of the parts", info, True)
            parts = DeclaredParts(size, composite_sha256(digests), row["content_type"])
            return _Check(multipart_mismatch(parts, info), info, False)
        computed = None
        if info.sha256_b64 is None and info.size == size:
            if not self.settings.verify_full_read_fallback:
                return _Check("storage kept no SHA-256 checksum", info, True)
            computed = self.storage.sha256_hex(key, size)
            if computed is None:
                return _Check("the body could not be read to hash it", info, True)
        declared = Declared(size, row["sha256"], row["content_type"])
        return _Check(mismatch(declared, info, computed), info, False)

    # -- 3. stuck documents ----------------------------------------------------------------

    def stuck(self) -> None:
        settings = self.settings
        params = {
            "now": self.report.now,
            "uploaded_after": settings.verify_deadline_seconds + settings.redispatch_after_seconds,
            "pending_after": settings.purge_grace_seconds + settings.sweeper_interval_seconds,
        }
        for page in self._pages(self.q["reconcile_stuck_page"], params):
            for row in page:
                self._stuck_document(row, params)

    def _stuck_document(self, row: Row, params: Row) -> None:
        report = self.report
        report.stuck_count += 1
        report.to_repair += 1
        topic = row["topic"]
        action = f"would queue {topic}"
        if self.apply:
            action = self._requeue(row, params)
        report._keep(
            report.stuck,
            StuckDocument(
                document_id=row["id"],
                owner_id=row["owner_id"],
                status=row["status"],
                since=row["since"],
                missing_event=topic,
                action=action,
            ),
        )

    def _requeue(self, row: Row, params: Row) -> str:
        """Queue a stuck document's missing event under its row lock (compare-and-set)."""
        report = self.report
        topic = row["topic"]
        with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cur:
            doc = cur.execute(self.q["lock_document"], {"id": row["id"]}).fetchone()
            still = doc is not None and doc["status"] == row["status"]
            if still and doc is not None and doc["status"] == DocumentStatus.PENDING:
                # A fresh upload URL may have been issued meanwhile.
                due = report.now - timedelta(seconds=float(params["pending_after"]))
                still = doc["upload_expires_at"] <= due
            inserted = None
            if still:
                # A new statement after the lock: it sees every event committed before it.
                inserted = cur.execute(
                    self.q["reconcile_requeue_event"],
                    {
                        "topic": topic,
                        "id": row["id"],
                        "trace_id": row["trace_id"] or self.trace_id,
                        "now": report.now,
                    },
                ).fetchone()
            if inserted is not None and topic == Topic.EXPIRE:
                cur.execute(
                    self.q["reconcile_mark_expire_requested"], {"id": row["id"], "now": report.now}
                )
        if inserted is None:
            report.to_repair -= 1
            return "skipped: the document changed meanwhile"
        report.repaired += 1
        report.events_queued += 1
        return f"{topic} queued"

    # -- helpers ---------------------------------------------------------------------------

    def _pages(self, query: str, params: Row, column: str = "id") -> Iterator[list[Row]]:
        """Keyset pages (by document id, or ``column``) of a query taking ``after`` and
        ``limit``."""
        after: Any = uuid.UUID(int=0) if column == "id" else ""
        while True:
            with self.conn.cursor(row_factory=dict_row) as cur:
                page = cur.execute(
                    query, {**params, "after": after, "limit": self.page_size}
                ).fetchall()
            if page:
                yield page
            if len(page) < self.page_size:
                return
            after = page[-1][column]


@dataclass(frozen=True)
class _Check:
    problem: str | None
    info: ObjectInfo | None
    unprovable: bool


def _documents(row: Row) -> list[Row]:
    """The available documents of a blob page row, one row each."""
    return [
        {"id": doc_id, "owner_id": owner, "object_key": row["object_key"], "charged_bytes": charged}
        for doc_id, owner, charged in zip(
            row["document_ids"], row["owner_ids"], row["charged"], strict=True
        )
    ]


def _broken(row: Row, problem: str, action: str) -> BrokenDocument:
    return BrokenDocument(
        document_id=row["id"],
        owner_id=row["owner_id"],
        object_key=row["object_key"],
        problem=problem,
        charged_bytes=int(row["charged_bytes"]),
        action=action,
    )


def _orphan_action(orphan: Orphan, applied: bool, queued: set[str]) -> str:
    if orphan.disposition == Disposition.DOCUMENT:
        return "left to the purge of its deleting document"
    if orphan.disposition == Disposition.QUEUED:
        return "purge already queued"
    if not applied:
        return "would queue a purge"
    return "purge queued" if orphan.key in queued else "purge already queued"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def format_report(report: ReconcileReport) -> str:
    """The report as text for an operator."""
    mode = "apply" if report.applied else "dry run"
    lines = [
        f"reconcile ({mode}) of s3://{report.bucket}/{report.key_prefix} at "
        f"{report.now.isoformat(timespec='seconds')}, horizon {report.horizon_seconds:g}s",
        f"objects listed: {report.objects_listed}; unowned but newer than the horizon "
        f"(left alone): {report.young_unowned}",
        "",
        f"orphan objects: {report.orphan_count}",
    ]
    lines += [
        f"  {o.key}  {o.size} B  modified {o.last_modified.isoformat(timespec='seconds')}  "
        f"{'no row' if o.document_id is None else f'document {o.document_id} {o.document_status}'}"
        f"  -> {o.action}"
        for o in report.orphans
    ]
    lines += _more(report.orphan_count, len(report.orphans))
    lines.append(
        f"orphan multipart uploads: {report.orphan_upload_count} (of {report.uploads_listed}"
        f" in progress; {report.young_unheld_uploads} unheld but newer than the horizon)"
    )
    lines += [
        f"  {u.key} upload {u.upload_id}  initiated {u.initiated.isoformat(timespec='seconds')}"
        f"  {_holder(u.document_id, u.document_status)}  -> {u.action}"
        for u in report.orphan_uploads
    ]
    lines += _more(report.orphan_upload_count, len(report.orphan_uploads))
    lines.append(
        f"broken available documents: {report.broken_count} (of {report.available_checked})"
    )
    lines += [
        f"  {b.document_id} owner {b.owner_id} {b.object_key}: {b.problem}  -> {b.action}"
        for b in report.broken
    ]
    lines += _more(report.broken_count, len(report.broken))
    if report.unprovable_count:
        lines.append(f"unprovable available documents: {report.unprovable_count}")
        lines += [f"  {b.document_id} {b.object_key}: {b.problem}" for b in report.unprovable]
        lines += _more(report.unprovable_count, len(report.unprovable))
    lines.append(f"stuck documents: {report.stuck_count}")
    lines += [
        f"  {s.document_id} owner {s.owner_id} {s.status} since "
        f"{s.since.isoformat(timespec='seconds') if s.since else '?'}: no unfinished "
        f"{s.missing_event} event  -> {s.action}"
        for s in report.stuck
    ]
    lines += _more(report.stuck_count, len(report.stuck))
    lines.append("")
    if report.applied:
        lines.append(
            f"applied: {report.repaired} repairs; {report.events_queued} events queued, "
            f"{report.documents_rejected} documents rejected, {report.bytes_released} bytes "
            f"released, {report.uploads_aborted} multipart uploads aborted. The workers carry"
            " out the queued purges, verifies and expiries."
        )
    elif report.clean:
        lines.append("nothing to repair.")
    else:
        lines.append(f"{report.to_repair} repairs needed: run again with --apply to make them.")
    return "\n".join(lines)


def _holder(document_id: uuid.UUID | None, status: str | None) -> str:
    return "no row" if document_id is None else f"document {document_id} {status}"


def _more(count: int, shown: int) -> list[str]:
    return [f"  ... and {count - shown} more"] if count > shown else []
