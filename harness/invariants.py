"""Check DESIGN.md's invariants against the database and a full listing of the bucket.

Used by tests, the chaos harness and operators. ``settled=True`` adds the checks that only
hold once the system is quiet (no event left unfinished, no orphan object or multipart upload
in progress that no document is uploading, nothing waiting).

Stated for documents and blobs (issue 12): a document references a blob (a stored object);
a blob is live (uploading, verified) exactly while a live document references it; every
available document's blob is verified and its object matches the document's declared size
and SHA-256 and the type the blob was uploaded with; no object without a live reference
beyond the horizon; quota = the sum of the documents' charges (each document pays its size,
however many share the bytes).
Invariants 2 (download URLs) and 6 (idempotence) are properties of calls, not of state: tests
prove them; here their consequences show up as quota drift or bad charges.

The judge is independent of what it judges: it talks to storage with a boto3 client of its own
(built with botocore, not with ``outbox.presign.make_client`` or ``worker.storage``), spells
the key rule itself, and compares size, SHA-256 and content type with its own code, so a bug
in the worker's verification cannot hide itself. tests/harness/test_invariants.py plants each
violation and shows that its check fails.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import botocore.session
import psycopg
from botocore.config import Config
from botocore.exceptions import ClientError

from outbox import queries
from outbox.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# A canonical UUID as ``str(uuid.UUID(...))`` spells it: lower-case, 8-4-4-4-12.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PAGE = 1000
_UPLOAD_MARKERS = (("KeyMarker", "NextKeyMarker"), ("UploadIdMarker", "NextUploadIdMarker"))
# HeadObject fields that change how a client treats the response, which the service never
# sets on an upload (it signs Content-Type only): invariant 1, "no response-affecting
# metadata that the service did not set".
_RESPONSE_METADATA = (
    "ContentEncoding",
    "ContentDisposition",
    "ContentLanguage",
    "CacheControl",
    "Expires",
    "ExpiresString",
    "WebsiteRedirectLocation",
)


class CheckName(StrEnum):
    """The checks of a report, by the invariant(s) they stand for."""

    QUOTA = "4 quota: 0 <= used, used + reserved <= limit, used = sum of charges"
    CHARGES = "1/4 charges only on verified documents, reservations only on unverified ones"
    KEYS = "8 object keys are server-made: prefix + the UUID of the document that uploaded it"
    BLOBS = "1/3/7 a blob is live exactly while a live document references it"
    OBJECTS = "1/3 every available document's blob object exists and matches"
    METADATA = "1 no available object carries response-affecting metadata"
    EVENTS = "5 every due event ended done or dead"
    WAITING = "5 no document left waiting (uploaded, deleting, expired pending)"
    ORPHANS = "7 no object without a live document row"
    UPLOADS = "7 no multipart upload in progress without a document uploading it"


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

    def failed(self) -> set[str]:
        """The names of the checks that failed."""
        return {c.name for c in self.failures()}

    def check(self, name: str) -> Check:
        """The check called ``name``. Raises KeyError when this report did not run it."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def add(self, name: str, problems: list[str]) -> None:
        self.checks.append(Check(name, not problems, problems[:50]))

    def summary(self) -> str:
        lines = [f"{'PASS' if c.passed else 'FAIL'}  {c.name}" for c in self.checks]
        for check in self.failures():
            lines.extend(f"      {p}" for p in check.problems[:10])
        return "\n".join(lines)


def judge_client(settings: Settings) -> S3Client:
    """The judge's own S3 client for ``settings.s3_endpoint_url``, built with botocore.

    Build it once and pass it to :func:`check_invariants` when checking often (a client costs
    tens of milliseconds to build).
    """
    client: S3Client = botocore.session.get_session().create_client(  # type: ignore[assignment]
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key.get_secret_value(),
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": settings.s3_addressing_style},
            retries={"mode": "standard", "max_attempts": 3},
            # A plain GET: the judge hashes the body itself.
            response_checksum_validation="when_required",
        ),
    )
    return client


def check_invariants(
    settings: Settings,
    client: S3Client | None = None,
    *,
    settled: bool,
    now: datetime | None = None,
    verify_objects: bool = True,
) -> InvariantReport:
    """Every invariant that state can show. Objects are those under ``settings.key_prefix``;
    the database is the whole of it (the judge assumes the database belongs to ``settings``).

    ``client`` is a boto3 S3 client (default: :func:`judge_client`); ``now`` is the clock of
    the settled checks (default: the database's). ``verify_objects=False`` skips looking at
    each available document's object. Raises TypeError when ``client`` is not an S3 client
    (a ``worker.storage.Storage`` is not: the judge does not use the code it judges).
    """
    if client is None:
        client = judge_client(settings)
    elif not all(hasattr(client, m) for m in ("head_object", "get_paginator", "list_parts")):
        raise TypeError(f"check_invariants takes a boto3 S3 client, not {type(client).__name__}")
    q = queries.load("harness", "invariants.sql")
    report = InvariantReport()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        report.documents = dict(conn.execute(q["invariant_document_counts"]).fetchall())
        events: Counter[str] = Counter()
        for status, n in conn.execute(q["invariant_event_counts"]).fetchall():
            events[status] += n
        report.events = dict(events)

        # 4: quotas.
        drift = conn.execute(q["invariant_quota_drift"]).fetchall()
        report.quota_mismatches = len(drift)
        report.add(
            CheckName.QUOTA,
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
            CheckName.CHARGES,
            [
                f"document {i} {s}: charged {c} reserved {r} declared {d} verified {v}"
                for i, s, c, r, d, v in bad
            ],
        )

        # 8 from the database: each blob's key is the prefix + the id of the document that
        # uploaded it; a document uploading a blob holds its own id's key.
        prefix = {"prefix": settings.key_prefix}
        bad_keys = [
            f"blob {key!r} ({status}): not the prefix + the id of a document"
            for key, status in conn.execute(q["invariant_blob_keys"], prefix).fetchall()
        ] + [
            f"document {doc_id} ({status}): key {key!r} is not {settings.key_prefix}{doc_id}"
            " or names no blob"
            for doc_id, status, key in conn.execute(q["invariant_document_keys"], prefix)
        ]
        # 1, 3 and 7 from the database: blobs live exactly while live documents reference them.
        report.add(CheckName.BLOBS, _blob_problems(conn, q))
        # 8 and 7 (and 3 from the other side): walk the bucket page by page.
        orphans: list[str] = []
        for keys in _listed_keys(client, settings):
            report.objects_listed += len(keys)
            live = {r[0] for r in conn.execute(q["invariant_live_keys"], {"keys": keys})}
            for key in keys:
                if not _CANONICAL_UUID.fullmatch(key[len(settings.key_prefix) :]):
                    bad_keys.append(f"object {key!r} is not the prefix + a lower-case UUID")
                if key not in live:
                    orphans.append(key)
        report.orphan_objects = orphans
        report.add(CheckName.KEYS, bad_keys)

        # 1 + 3: every available document's blob object is there and matches.
        problems: list[str] = []
        metadata: list[str] = []
        if verify_objects:
            after = ""
            while True:
                page_rows = conn.execute(
                    q["invariant_verified_blob_page"], {"after": after, "limit": _PAGE}
                ).fetchall()
                for key, size, sha, ctype, docs, part_count, digests in page_rows:
                    who = f"available document{'s' if len(docs) > 1 else ''} {', '.join(docs)}"
                    head = _head(client, settings.s3_bucket, key)
                    if head is None:
                        problems.append(f"{who}: object {key} missing")
                        continue
                    if sha is not None:
                        why = _mismatch(client, settings.s3_bucket, key, head, size, sha, ctype)
                    else:
                        why = _multipart_mismatch(key, head, size, ctype, part_count, digests)
                    if why:
                        problems.append(f"{who}: {why}")
                    extra = {f: head[f] for f in _RESPONSE_METADATA if head.get(f)}
                    if extra:
                        metadata.append(f"{who}: {key} carries {extra}")
                if len(page_rows) < _PAGE:
                    break
                after = page_rows[-1][0]
        report.add(CheckName.OBJECTS, problems)
        report.add(CheckName.METADATA, metadata)

        if settled:
            unfinished = conn.execute(q["invariant_unfinished_events"], {"now": now}).fetchall()
            report.lost_events = len(unfinished)
            report.add(
                CheckName.EVENTS,
                [
                    f"event {i} {t} {s} document {d} attempts {a} failures {f}: {e}"
                    for i, t, s, d, a, f, e in unfinished
                ],
            )
            waiting = conn.execute(q["invariant_unsettled_documents"], {"now": now}).fetchall()
            purging = conn.execute(q["invariant_blobs_deleting"]).fetchall()
            report.add(
                CheckName.WAITING,
                [f"document {i} is {s}" for i, s in waiting]
                + [f"blob {key} is deleting" for (key,) in purging],
            )
            report.add(CheckName.ORPHANS, orphans)
            report.add(CheckName.UPLOADS, _unheld_uploads(conn, q, client, settings))
    return report


def _blob_problems(conn: psycopg.Connection[Any], q: dict[str, str]) -> list[str]:
    """Blobs live without a live reference or referenced while not live, documents on a blob
    in the wrong state, and documents that declare other content than their blob's."""
    problems = [
        f"blob {key} is {status} with {live} live documents referencing it"
        for key, status, live in conn.execute(q["invariant_blob_liveness"]).fetchall()
    ]
    problems += [
        f"document {doc_id} is {status} on blob {key} ({blob_status}"
        + (", no document uploading it" if status == "waiting" and not uploading else "")
        + ")"
        for doc_id, status, key, blob_status, uploading in conn.execute(
            q["invariant_documents_on_wrong_blobs"]
        ).fetchall()
    ]
    problems += [
        f"document {doc_id} declares {size} bytes, SHA-256 {sha}; its blob {key} holds"
        f" {blob_size} bytes, {blob_sha}"
        for doc_id, size, sha, key, blob_size, blob_sha in conn.execute(
            q["invariant_documents_unlike_blobs"]
        ).fetchall()
    ]
    return problems


def _listed_keys(client: S3Client, settings: Settings) -> Iterator[list[str]]:
    """Every key under the prefix, one page (list) at a time."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(
        Bucket=settings.s3_bucket,
        Prefix=settings.key_prefix,
        PaginationConfig={"PageSize": _PAGE},
    ):
        yield [obj["Key"] for obj in page.get("Contents", [])]


def _head(client: S3Client, bucket: str, key: str) -> dict[str, Any] | None:
    """HeadObject with the stored checksum, or None when the object is missing."""
    try:
        return dict(client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"))
    except ClientError as exc:
        if _missing(exc):
            return None
        raise


def _mismatch(
    client: S3Client,
    bucket: str,
    key: str,
    head: dict[str, Any],
    size: int,
    sha256_hex: str,
    content_type: str,
) -> str | None:
    """Why the object is not what its row declares, or None when it is."""
    stored_size = int(head["ContentLength"])
    if stored_size != size:
        return f"{key}: {stored_size} bytes stored, {size} declared"
    checksum = head.get("ChecksumSHA256")
    if checksum and "-" not in checksum:
        if checksum != base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii"):
            return f"{key}: stored SHA-256 {checksum} is not the declared {sha256_hex}"
    else:
        # No whole-object SHA-256 stored (or a multipart composite, "...-N"): hash the body.
        digest = _sha256_of_body(client, bucket, key)
        if digest is None:
            return f"{key}: vanished while being read"
        if digest != sha256_hex:
            return f"{key}: body hashes to {digest}, declared {sha256_hex}"
    stored_type = str(head.get("ContentType") or "").split(";")[0].strip().lower()
    if stored_type != content_type:
        return f"{key}: stored content type {stored_type!r}, declared {content_type!r}"
    return None


def _sha256_of_body(client: S3Client, bucket: str, key: str) -> str | None:
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        if _missing(exc):
            return None
        raise
    digest = hashlib.sha256()
    try:
        for chunk in body.iter_chunks(chunk_size=1024 * 1024):
            digest.update(chunk)
    finally:
        body.close()
    return digest.hexdigest()


def _missing(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code"))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"404", "NoSuchKey", "NotFound"} or status == 404


def _multipart_mismatch(
    key: str,
    head: dict[str, Any],
    size: int,
    content_type: str,
    part_count: int,
    digests: list[str] | None,
) -> str | None:
    """Why an object completed from parts is not what its row declares: its size, its type,
    and its composite SHA-256 (S3's "...-N": base64(SHA-256 of the raw part digests in part
    order)), computed here from the part digests the row recorded."""
    stored_size = int(head["ContentLength"])
    if stored_size != size:
        return f"{key}: {stored_size} bytes stored, {size} declared"
    if not digests or len(digests) != part_count:
        return f"{key}: {part_count} parts declared, {len(digests or [])} digests recorded"
    joined = b"".join(bytes.fromhex(d) for d in digests)
    expected = base64.b64encode(hashlib.sha256(joined).digest()).decode("ascii")
    expected = f"{expected}-{part_count}"
    if head.get("ChecksumSHA256") != expected:
        return f"{key}: stored checksum {head.get('ChecksumSHA256')}, parts make {expected}"
    stored_type = str(head.get("ContentType") or "").split(";")[0].strip().lower()
    if stored_type != content_type:
        return f"{key}: stored content type {stored_type!r}, declared {content_type!r}"
    return None


def _unheld_uploads(
    conn: psycopg.Connection[Any], q: dict[str, str], client: S3Client, settings: Settings
) -> list[str]:
    """Multipart uploads in progress under the prefix that no pending or uploaded document
    holds (invariant 7 covers uploads in progress: they are invisible, billed storage)."""
    found: list[str] = []
    markers: dict[str, str] = {}
    while True:
        resp = client.list_multipart_uploads(
            Bucket=settings.s3_bucket, Prefix=settings.key_prefix, MaxUploads=_PAGE, **markers
        )
        uploads = [(str(u["Key"]), str(u["UploadId"])) for u in resp.get("Uploads", [])]
        rows = {
            r[0]: r
            for r in conn.execute(
                q["invariant_uploads_by_keys"], {"keys": [k for k, _ in uploads]}
            ).fetchall()
        }
        for key, upload_id in uploads:
            row = rows.get(key)
            if row is None or upload_id not in (row[1] or []):
                status = "no row" if row is None else f"documents {', '.join(sorted(row[2]))}"
                found.append(f"upload {upload_id} of {key} ({status})")
        following = {
            name: str(resp[field])
            for name, field in (
                ("KeyMarker", "NextKeyMarker"),
                ("UploadIdMarker", "NextUploadIdMarker"),
            )
            if resp.get(field)
        }
        # Stores page differently (SeaweedFS by upload id only): follow whatever moves on.
        if not resp.get("IsTruncated") or not following or following == markers:
            return found
        markers = following


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
