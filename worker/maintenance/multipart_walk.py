"""The multipart walk: invariant 7 for uploads in progress, without an operator.

In-progress multipart uploads are invisible in object listings and billed until aborted.
Each sweeper round lists them under ``key_prefix`` a bounded number of pages further
(ListMultipartUploads from the markers persisted in ``s3outbox.maintenance_cursors``,
``bucket_walk_pages_per_round`` pages of ``bucket_walk_page_size`` uploads, the bucket
walk's bounds), and aborts every orphan among them (``worker.orphan_uploads``: no pending or
uploaded document holds it, and it was initiated longer ago than
``settings.orphan_horizon_seconds``). When a pass reaches the last upload the cursor wraps
to the start and the pass is recorded, as the bucket walk does.

What it catches: an upload created by a worker that crashed before recording it, one whose
abort by a purge failed, or whatever else was left behind. Storage refusing the listing is
logged and counted, and never stops the sweeper's other jobs; the cursor stays.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from botocore.exceptions import BotoCoreError, ClientError

from outbox.settings import Settings
from worker import metrics
from worker.maintenance.job import StorageJob, sql
from worker.orphan_uploads import abort, examine
from worker.storage import UploadMarkers, unavailable

log = logging.getLogger("s3outbox.sweeper")


@dataclass(frozen=True)
class Page:
    """One page of the walk: uploads listed, orphans aborted, and whether it ended a pass."""

    uploads: int
    aborted: int
    pass_ended: bool


def cursor_name(settings: Settings) -> str:
    """The walk's row in ``s3outbox.maintenance_cursors``: one per bucket and prefix."""
    return f"multipart_walk:{settings.s3_bucket}/{settings.key_prefix}"


class MultipartWalk(StorageJob):
    """The sweeper job (``run_once`` returns the orphan uploads it aborted)."""

    name = "multipart_walk"

    def run_once(self, conn: psycopg.Connection[Any], now: datetime | None) -> int:
        """Walk up to ``bucket_walk_pages_per_round`` pages, stopping at the end of a pass.
        ``conn`` must be in autocommit mode."""
        aborted = 0
        for _ in range(self.settings.bucket_walk_pages_per_round):
            page = self.step(conn, now)
            if page is None:
                break
            aborted += page.aborted
            if page.pass_ended:
                break
        return aborted

    def step(self, conn: psycopg.Connection[Any], now: datetime | None) -> Page | None:
        """One page from the persisted cursor. None when storage refused the listing."""
        q = sql()
        name = cursor_name(self.settings)
        cursor = conn.execute(q["walk_cursor"], {"name": name, "now": now}).fetchone()
        assert cursor is not None
        position, _pass_started, listed_at = cursor
        markers = _markers(position)
        try:
            uploads, following = self.storage.list_uploads_page(
                self.settings.key_prefix, markers, self.settings.bucket_walk_page_size
            )
        except (ClientError, BotoCoreError) as exc:
            reason = unavailable(exc) or "error"
            metrics.MULTIPART_WALK_ERRORS.labels(reason).inc()
            log.warning("multipart walk: listing from %r failed (%s): %s", position, reason, exc)
            return None
        # The clock read before the listing: nothing listed is younger than it says.
        cutoff = listed_at - timedelta(seconds=self.settings.orphan_horizon_seconds)
        found = examine(conn, uploads, cutoff)
        aborted, errors = abort(self.storage, found.orphans)
        for error in errors:
            log.warning("multipart walk: could not abort %s", error)
        advanced = conn.execute(
            q["walk_advance"],
            {
                "name": name,
                "position": position,
                "next": json.dumps(following, sort_keys=True) if following else "",
                "finished": following is None,
                "listed_at": listed_at,
                "now": now,
            },
        ).fetchone()
        metrics.MULTIPART_WALK_UPLOADS.inc(len(uploads))
        metrics.MULTIPART_WALK_ABORTED.inc(aborted)
        pass_ended = advanced is not None and following is None
        if aborted:
            log.warning("multipart walk: aborted %d orphan multipart uploads", aborted)
        return Page(uploads=len(uploads), aborted=aborted, pass_ended=pass_ended)


def _markers(position: str) -> UploadMarkers:
    """The listing markers a cursor position holds ('' or unreadable: the start)."""
    if not position:
        return {}
    try:
        value = json.loads(position)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: str(v) for k, v in value.items() if k in ("KeyMarker", "UploadIdMarker") and v}
