"""Orphan multipart uploads: uploads in progress under the prefix that no document still
uploading holds, older than a horizon. Shared by the sweeper's multipart walk
(``worker.maintenance.multipart_walk``) and ``s3-outbox reconcile``.

An upload is wanted only while a ``pending`` or ``uploaded`` document holds its id: a
completed upload is no longer listed, and any other (a document deleted, rejected or
expired, an upload that lost the worker's compare-and-set, one created by a worker that
crashed before its commit, a document that is available although a second upload was left
over) is invisible, billed storage. It is aborted once initiated longer ago than the horizon
(``Settings.orphan_horizon_seconds``): a younger one may belong to a worker that created it
and has not committed its id yet. Aborting is direct (no outbox event): no document holds
the upload, so no row can point at what it removes (invariant 3), and an abort is
idempotent.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from botocore.exceptions import BotoCoreError, ClientError
from psycopg.rows import dict_row

from outbox.constants import DocumentStatus
from worker.orphans import sql
from worker.storage import Storage, UploadInProgress

#: States in which a document still needs its multipart upload.
UPLOADING = frozenset({DocumentStatus.PENDING, DocumentStatus.UPLOADED})


@dataclass(frozen=True)
class OrphanUpload:
    """An upload in progress that no document still uploading holds, older than the horizon."""

    key: str
    upload_id: str
    initiated: datetime
    document_id: uuid.UUID | None  # the row of its key, if any
    document_status: str | None


@dataclass(frozen=True)
class UploadFindings:
    """The orphans among one listed page, and how many unheld uploads were too young."""

    orphans: list[OrphanUpload]
    young: int


def examine(
    conn: psycopg.Connection[Any], uploads: Sequence[UploadInProgress], cutoff: datetime
) -> UploadFindings:
    """The orphans among ``uploads``: those initiated at or before ``cutoff`` that no
    pending or uploaded document holds. One read, no locks."""
    if not uploads:
        return UploadFindings([], 0)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = {
            r["object_key"]: r
            for r in cur.execute(
                sql()["orphan_uploads_documents_by_keys"], {"keys": [u.key for u in uploads]}
            )
        }
    orphans: list[OrphanUpload] = []
    young = 0
    for upload in uploads:
        row = rows.get(upload.key)
        if row is not None and row["status"] in UPLOADING and row["upload_id"] == upload.upload_id:
            continue
        if upload.initiated > cutoff:
            young += 1
            continue
        orphans.append(
            OrphanUpload(
                key=upload.key,
                upload_id=upload.upload_id,
                initiated=upload.initiated,
                document_id=row["id"] if row is not None else None,
                document_status=row["status"] if row is not None else None,
            )
        )
    return UploadFindings(orphans, young)


def abort(storage: Storage, orphans: Sequence[OrphanUpload]) -> tuple[int, list[str]]:
    """Abort each orphan upload. Returns how many were aborted, and the errors of those
    storage refused (left for the next round)."""
    aborted, errors = 0, []
    for orphan in orphans:
        try:
            storage.abort_multipart(orphan.key, orphan.upload_id)
            aborted += 1
        except (ClientError, BotoCoreError) as exc:
            errors.append(f"{orphan.key} ({orphan.upload_id}): {exc}")
    return aborted, errors
