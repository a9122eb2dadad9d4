"""The bucket walk: the backstop of invariant 7 that needs no operator.

Each sweeper round lists the bucket under ``key_prefix`` a bounded number of pages further
(ListObjectsV2 with StartAfter = the cursor persisted in ``s3outbox.maintenance_cursors``,
``bucket_walk_pages_per_round`` pages of ``bucket_walk_page_size`` keys), and queues a purge
through the outbox for every orphan among them, as ``s3-outbox reconcile --apply`` does
(``worker.orphans``): no live document owns it, and it is older than
``settings.orphan_horizon_seconds``, which no in-flight upload can beat. When a pass reaches
the last key the cursor wraps to the start and the pass is recorded (start, end, duration),
so every key is seen at least once per pass, across sweeper restarts too.

Whatever a handler or a repair missed (a purge event that died, a PUT that outlived its
re-check, a bug) is found within a pass plus the horizon. Storage refusing the listing
(no ``s3:ListBucket``, an outage) is logged and counted, and never stops the sweeper's
other jobs; the cursor stays where it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from botocore.exceptions import BotoCoreError, ClientError

from worker import metrics
from worker.maintenance.job import StorageJob, sql
from worker.orphans import examine, queue_purges
from worker.storage import unavailable

log = logging.getLogger("s3outbox.sweeper")

#: The trace id of the purges the walk queues (their logs and rows say who asked).
TRACE_ID = "bucket-walk"


@dataclass(frozen=True)
class Page:
    """One page of the walk: keys listed, orphan purges queued, and whether it ended a pass
    (this sweeper wrapped the cursor)."""

    keys: int
    queued: int
    pass_ended: bool


class BucketWalk(StorageJob):
    """The sweeper job (``run_once`` returns the orphan purges it queued)."""

    name = "bucket_walk"

    def run_once(self, conn: psycopg.Connection[Any], now: datetime | None) -> int:
        """Walk up to ``bucket_walk_pages_per_round`` pages, stopping early at the end of a
        pass (the next round starts the next one). ``conn`` must be in autocommit mode."""
        queued = 0
        for _ in range(self.settings.bucket_walk_pages_per_round):
            page = self.step(conn, now)
            if page is None:
                break
            queued += page.queued
            if page.pass_ended:
                break
        return queued

    def step(self, conn: psycopg.Connection[Any], now: datetime | None) -> Page | None:
        """One page from the persisted cursor. None when storage refused the listing."""
        q = sql()
        name = self.settings.bucket_walk_cursor
        cursor = conn.execute(q["walk_cursor"], {"name": name, "now": now}).fetchone()
        if cursor is None:
            # Another sweeper created the row while this statement ran: its INSERT waited
            # for that one and did nothing, and its snapshot predates the row. Now it is there.
            cursor = conn.execute(q["walk_cursor"], {"name": name, "now": now}).fetchone()
        assert cursor is not None
        position, _pass_started, listed_at = cursor
        try:
            contents, more = self.storage.list_page(
                self.settings.key_prefix, position, self.settings.bucket_walk_page_size
            )
        except (ClientError, BotoCoreError) as exc:
            reason = unavailable(exc) or "error"
            metrics.BUCKET_WALK_ERRORS.labels(reason).inc()
            log.warning("bucket walk: listing after %r failed (%s): %s", position, reason, exc)
            return None
        # The clock read before the listing: nothing listed is younger than it says.
        cutoff = listed_at - timedelta(seconds=self.settings.orphan_horizon_seconds)
        found = examine(conn, contents, cutoff)
        queued = queue_purges(conn, found.orphans, trace_id=TRACE_ID, now=now)
        advanced = conn.execute(
            q["walk_advance"],
            {
                "name": name,
                "position": position,
                "next": contents[-1]["Key"] if more else "",
                "finished": not more,
                "listed_at": listed_at,
                "now": now,
            },
        ).fetchone()
        metrics.BUCKET_WALK_KEYS.inc(len(contents))
        metrics.BUCKET_WALK_ORPHANS.inc(len(queued))
        pass_ended = advanced is not None and not more
        if pass_ended:
            assert advanced is not None
            metrics.BUCKET_WALK_PASSES.inc()
            log.info("bucket walk: pass over %s done in %.0fs", name, advanced[0])
        if queued:
            log.warning("bucket walk: %d orphan objects, purges queued", len(queued))
        return Page(keys=len(contents), queued=len(queued), pass_ended=pass_ended)
